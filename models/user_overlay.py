"""Your own labels on top of a public router: a kernel fit of the user's outcomes with the router's p_strong as prior.

RouteLLM's routers gain on MMLU and GSM8K once in-domain labelled prompts join the Arena battles (arXiv 2406.18665,
section 5). Added to turnout's public battles as one more source, a few hundred of a user's labels barely move a
router (BENCHMARKS.md, 'Learning loop'). Here they count for the traffic they came from instead: for a prompt q
with unit embedding e_q,

    p(q) = (sum_i w_i(q) y_i + kappa * p_public(q)) / (sum_i w_i(q) + kappa),   w_i(q) = exp(beta * (e_q . e_i - 1))

where y_i is the user's outcome on labelled prompt i (1: the strong model's answer was better, 0: the weak
model's, 0.5: a tie; the mean when a prompt has several labels) and p_public the served router's own p_strong. It
is the posterior mean of a kernel-weighted Beta model whose prior is the public router, worth `kappa` labels:
near the user's labelled prompts their outcomes decide, far from them the public router does. `beta` (how local)
and `kappa` (how much the public router counts) are chosen for each router by cross-validation on the user's own
labels (`fit`: K folds over labelled prompts, how much the held-out folds' predictions gain by routing); kappa =
infinity, the public router alone, is always a candidate, so labels that do not help leave routing as it was.
The prior may also be p_public recalibrated with the prompt's length on the labels (`fit_prior`), a candidate the
same cross-validation weighs: on many sources difficulty follows length, which a router trained elsewhere misses.

Where the labels grade each model's answer (correctness in [0, 1], what `turnout label --grader gold` writes), y
hides how hard a prompt is: both models right and both wrong are the same tie, and on most traffic ties are most
labels (BENCHMARKS.md, issue 22's diagnosis). The cross-validation then also weighs the difficulty target: y_i
replaced by the weak model's failure 1 - s_weak(i) (issue 22's classifier label, here observed rather than fitted),
blended with the router's p_strong and length recalibrated to that target. Every candidate is judged by how well it
routes the held-out folds' real outcomes y.

An overlay is a versioned artifact (`save`, `load`): the labelled prompts' embeddings and outcomes, the pair it was
fitted for, the embedder, and per router (beta, kappa) with their cross-validation table.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from index.errors import ArtifactError, ConfigError

# Candidates for the cross-validation, fixed before any measurement (BENCHMARKS.md, 'Learning loop').
BETAS = (5.0, 10.0, 20.0, 40.0)
KAPPAS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, math.inf)
FOLDS = 5
MIN_DECISIVE = 10  # labelled prompts where one model was better, needed before the overlay can move anything
# What the kernel averages: the pair's outcome y, or the weak model's failure (`Outcomes.weak_failure`).
TARGETS = ("pair", "difficulty")


@dataclass
class Outcomes:
    """The user's per-prompt outcomes for one pair."""

    prompts: list[str]
    y: np.ndarray  # in [0, 1]: 1 strong better, 0 weak better, 0.5 tie
    strong: str
    weak: str
    # 1 - the weak model's score per prompt where every labelled prompt has one in [0, 1] (graded answers), else None
    weak_failure: np.ndarray | None = None


def outcomes(user_files: list, strong: str, weak: str) -> Outcomes:
    """Per-prompt outcomes between `strong` and `weak` from user label files (models.user_data.UserData: scores
    become battles there, by the higher score); prompts without a battle between the two are left out."""
    import pandas as pd

    battles = pd.concat([u.battles for u in user_files], ignore_index=True) if user_files else pd.DataFrame()
    if battles.empty:
        raise ConfigError("the label files hold no battle")
    pair = battles[((battles["model_a"] == strong) & (battles["model_b"] == weak))
                   | ((battles["model_a"] == weak) & (battles["model_b"] == strong))]
    if pair.empty:
        models = sorted(set(battles["model_a"]) | set(battles["model_b"]))
        raise ConfigError(f"no label compares {strong} with {weak}; the labels' models: {', '.join(models[:20])}")
    strong_side = np.where(pair["model_a"] == strong, "model_a", "model_b")
    y = np.where(pair["winner"].to_numpy() == "tie", 0.5, (pair["winner"].to_numpy() == strong_side).astype(float))
    means = pd.Series(y, index=pair["prompt"].to_numpy()).groupby(level=0, sort=True).mean()
    return Outcomes(means.index.tolist(), means.to_numpy(dtype=np.float64), strong, weak,
                    _weak_failure(user_files, weak, means.index))


def _weak_failure(user_files: list, weak: str, prompts) -> np.ndarray | None:
    """1 - the weak model's mean score on each of `prompts`, or None unless every one has a score in [0, 1]."""
    import pandas as pd

    scores = pd.concat([u.scores for u in user_files], ignore_index=True)
    scores = scores[scores["model"] == weak]
    if scores.empty:
        return None
    score = scores.groupby("prompt")["score"].mean().reindex(prompts).to_numpy(dtype=np.float64)
    return 1.0 - score if np.all((score >= 0) & (score <= 1)) else None  # NaN (a prompt without one) fails too


def split(labels: Outcomes, share: float) -> tuple[Outcomes, Any]:
    """(fit, held out): `share` of the labelled prompts held out as a Benchmark (strong scores y, weak 1 - y). The
    side is a hash of the prompt, so a prompt stays on its side as the labels grow from one retrain to the next."""
    from models.benchmarks import Benchmark

    if not 0 < share < 1:
        raise ConfigError(f"--holdout-share must be between 0 and 1, got {share}")
    cut = share * 2**64
    held = np.array([int.from_bytes(hashlib.sha256(p.encode()).digest()[:8], "big") < cut for p in labels.prompts])
    if held.all() or not held.any():
        raise ConfigError(f"{len(labels.prompts)} labelled prompts leave none on one side of a {share} holdout share")
    prompts = np.array(labels.prompts, dtype=object)
    failure = labels.weak_failure
    fit_part = Outcomes(prompts[~held].tolist(), labels.y[~held], labels.strong, labels.weak,
                        None if failure is None else failure[~held])
    bench = Benchmark("holdout-share", prompts[held].tolist(), labels.y[held], 1.0 - labels.y[held],
                      labels.strong, labels.weak)
    return fit_part, bench


def adjusted(p_public: np.ndarray, queries: np.ndarray, vectors: np.ndarray, y: np.ndarray, beta: float,
             kappa: float) -> np.ndarray:
    """The overlay's p_strong for unit-norm `queries` (B, d) given the labelled prompts' `vectors` (N, d)."""
    p_public = np.asarray(p_public, dtype=np.float64)
    if math.isinf(kappa) or len(vectors) == 0:
        return p_public
    weights = np.exp(beta * (queries.astype(np.float32) @ vectors.astype(np.float32).T - 1.0)).astype(np.float64)
    return (weights @ y + kappa * p_public) / (weights.sum(axis=1) + kappa)


def ranking_auc(p: np.ndarray, y: np.ndarray) -> float:
    """P(p ranks a prompt the strong model won above one the weak model won), ties in p counting half
    (models.obvious.auc over the decisive prompts); nan when either kind is missing."""
    from models.obvious import auc

    decisive = y != 0.5
    won = y[decisive] > 0.5
    return auc(p[decisive], won) if won.any() and not won.all() else float("nan")


def routing_gain(p: np.ndarray, y: np.ndarray) -> float:
    """How much routing by `p` gains over random routing, on prompts with outcomes `y`: a prompt sent to the strong
    model gains 2y - 1 (one model right: +1 or -1; a tie: 0), and this is the area between the call-share curve of
    that gain and random's straight line (APGR's numerator, in gain per prompt, without its division by the whole
    gap, which makes APGR erratic when the two models are close on the labelled prompts). Tied scores share their
    rank: a constant p gains exactly nothing."""
    from scipy.stats import rankdata

    n = len(y)
    ranks = rankdata(-np.asarray(p, dtype=np.float64))  # 1 = routed to strong first; ties: their mean rank
    return float(np.sum((2.0 * y - 1.0) * ((n + 1) / 2.0 - ranks)) / n ** 2)


# one_se was chosen over max on the dev settings: nearly the same mean gain, a third of the losses (BENCHMARKS.md).
RULES = ("max", "one_se")
# The prior the labels are blended with: the router's p_strong as it is, or recalibrated on the labels together
# with the prompt's length (`fit_prior`), which on many sources carries what the public router misses.
PRIORS = ("router", "router+length")


def log_length(prompts: list[str]) -> np.ndarray:
    return np.log1p(np.fromiter((len(p) for p in prompts), dtype=np.float64, count=len(prompts)))


def fit_prior(p_public: np.ndarray, log_len: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """A logistic map of (logit p_public, log length), standardised, fitted to the outcomes (a tie counts half to
    each side) with scikit-learn's L2-regularised logistic regression."""
    from sklearn.linear_model import LogisticRegression

    x = _prior_features(p_public, log_len)
    mean, sd = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = (x - mean) / sd
    target = np.concatenate([np.ones(len(y)), np.zeros(len(y))])
    weight = np.concatenate([y, 1.0 - y])
    keep = weight > 0
    model = LogisticRegression(C=1.0).fit(np.vstack([z, z])[keep], target[keep], sample_weight=weight[keep])
    return {"kind": "router+length", "mean": mean.tolist(), "sd": sd.tolist(), "coef": model.coef_[0].tolist(),
            "intercept": float(model.intercept_[0])}


def prior_p(prior: dict[str, Any] | None, p_public: np.ndarray, log_len: np.ndarray | None) -> np.ndarray:
    """The prior's p_strong: the router's own without a fitted prior."""
    p_public = np.asarray(p_public, dtype=np.float64)
    if prior is None:
        return p_public
    z = (_prior_features(p_public, log_len) - np.asarray(prior["mean"])) / np.asarray(prior["sd"])
    return 1.0 / (1.0 + np.exp(-(z @ np.asarray(prior["coef"]) + prior["intercept"])))


def _prior_features(p_public: np.ndarray, log_len: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p_public, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.column_stack([np.log(p / (1 - p)), np.asarray(log_len, dtype=np.float64)])


def fit(vectors: np.ndarray, y: np.ndarray, p_public: np.ndarray, betas=BETAS, kappas=KAPPAS, folds: int = FOLDS,
        seed: int = 0, rule: str = "one_se", log_len: np.ndarray | None = None,
        weak_failure: np.ndarray | None = None) -> dict[str, Any]:
    """(target, prior, beta, kappa) by K-fold cross-validation over the labelled prompts: each fold's prompts are
    predicted from the other folds' outcomes and their own prior p_strong (the prior itself fitted on the other
    folds), and the candidate whose predictions route best (`routing_gain` of the real outcomes y, the mean over the
    folds) wins; ties go to the larger kappa, then the router's own prior (the public router, unless the labels beat
    it), then the pair target. With rule one_se, the candidate first in that order of caution (then the smallest
    beta) whose gain is within one standard error (over the folds) of the best: the usual guard against picking a
    candidate that only won by chance. The length prior is a candidate only with `log_len`, the difficulty target
    (always over the length prior, fitted to that target) only with both `log_len` and `weak_failure`. Returns
    target, prior (None: the router's own), beta, kappa, cv_gain, cv_auc and the table."""
    decisive = int((y != 0.5).sum())
    if decisive < MIN_DECISIVE:
        raise ConfigError(f"{decisive} labelled prompts have a winner; the overlay needs at least {MIN_DECISIVE}")
    if rule not in RULES:
        raise ConfigError(f"unknown rule {rule!r}; known: {', '.join(RULES)}")
    fold_of = np.random.default_rng(seed).permutation(len(y)) % folds
    candidates = [("pair", kind) for kind in (PRIORS[:1] if log_len is None else PRIORS)]
    if log_len is not None and weak_failure is not None and _both_ways(weak_failure):
        candidates.append(("difficulty", "router+length"))
    table = []
    for target, kind in candidates:
        values = _target_values(target, y, weak_failure)
        base = np.empty(len(y))  # each fold's prior, fitted without it
        for k in range(folds):
            held, kept = fold_of == k, fold_of != k
            prior = fit_prior(p_public[kept], log_len[kept], values[kept]) if kind != "router" else None
            base[held] = prior_p(prior, p_public[held], None if log_len is None else log_len[held])
        for beta in betas:
            for kappa in kappas:
                predicted = np.empty(len(y))
                for k in range(folds):
                    held, kept = fold_of == k, fold_of != k
                    predicted[held] = adjusted(base[held], vectors[held], vectors[kept], values[kept], beta, kappa)
                # per fold, then averaged: a fold's prior has its own intercept, which pooled ranks would mix in
                per_fold = [routing_gain(predicted[fold_of == k], y[fold_of == k]) for k in range(folds)]
                table.append({"target": target, "prior": kind, "beta": beta, "kappa": kappa,
                              "cv_gain": float(np.mean(per_fold)),
                              "cv_gain_se": float(np.std(per_fold, ddof=1) / np.sqrt(folds)),
                              "cv_auc": ranking_auc(predicted, y)})

    def caution(row):
        return row["kappa"], row["prior"] == "router", row["target"] == "pair", -row["beta"]

    best = max(table, key=lambda row: (round(row["cv_gain"], 12), *caution(row)))
    if rule == "one_se":
        best = max((row for row in table if row["cv_gain"] >= best["cv_gain"] - best["cv_gain_se"]), key=caution)
    prior = (fit_prior(p_public, log_len, _target_values(best["target"], y, weak_failure))
             if best["prior"] != "router" else None)
    return {**best, "prior": prior, "folds": folds, "rule": rule, "table": table}


def _both_ways(values: np.ndarray) -> bool:
    """Enough labels on each side (the weak model right on some, wrong on others) for a logistic prior."""
    return int((values > 0).sum()) >= MIN_DECISIVE and int((values < 1).sum()) >= MIN_DECISIVE


def _target_values(target: str, y: np.ndarray, weak_failure: np.ndarray | None) -> np.ndarray:
    """What the kernel averages for `target`: the outcomes y, or the weak model's failures."""
    if target not in TARGETS:
        raise ArtifactError(f"unknown overlay target {target!r}; known: {', '.join(TARGETS)}")
    if target == "pair":
        return y
    if weak_failure is None:
        raise ArtifactError("the difficulty target needs the labels' weak-model failures, which are missing")
    return weak_failure


def predict(params: dict[str, Any], p_public: np.ndarray, queries: np.ndarray, prompts: list[str] | None,
            vectors: np.ndarray, y: np.ndarray, weak_failure: np.ndarray | None = None) -> np.ndarray:
    """A fitted router's p_strong (`fit`'s target, prior, beta, kappa) for `queries`, their prompts (for a length
    prior) and the labelled prompts' `vectors`, outcomes `y` and weak-model failures (for the difficulty target)."""
    prior = params.get("prior")
    if prior is not None and prompts is None:
        raise ValueError("a length prior needs the prompts")
    values = _target_values(params.get("target", "pair"), y, weak_failure)  # older overlays: pair
    base = prior_p(prior, p_public, log_length(prompts) if prior is not None else None)
    return adjusted(base, queries, vectors, values, params["beta"], params["kappa"])


# ------------------------------------------------------------------------------------------------ artifact


@dataclass
class UserOverlay:
    """A fitted overlay: the labelled prompts, their outcomes, and each router's (beta, kappa)."""

    vectors: np.ndarray
    y: np.ndarray
    strong: str  # the labels' pair
    weak: str
    embedder: str
    routers: dict[str, dict[str, Any]]  # name -> {"beta", "kappa", "cv_gain", ...}
    router_pair: tuple[str, str]  # the pair the routers scored as prior (a service's routers.strong/weak_model)
    weak_failure: np.ndarray | None = None  # Outcomes.weak_failure, for routers fitted on the difficulty target
    version: str = ""
    manifest: dict[str, Any] = field(default_factory=dict)

    def adjust(self, router: str, p_public: np.ndarray, queries: np.ndarray, prompts: list[str]) -> np.ndarray:
        params = self.routers.get(router)
        if params is None:
            return np.asarray(p_public, dtype=np.float64)
        return predict(params, p_public, queries, prompts, self.vectors, self.y, self.weak_failure)

    def save(self, root: Path, extra: dict[str, Any] | None = None) -> Path:
        """Write a new version folder under `root` (never over an existing one); returns it."""
        from index.paths import atomic_dir

        digest = hashlib.sha256(self.vectors.tobytes() + self.y.tobytes()).hexdigest()[:8]
        self.version = time.strftime("v%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{digest}"
        folder = Path(root) / self.version
        if folder.exists():
            raise ConfigError(f"overlay version {self.version} exists already")
        self.manifest = {"version": self.version, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                         "strong": self.strong, "weak": self.weak, "router_pair": list(self.router_pair),
                         "embedder": self.embedder,
                         "labelled_prompts": len(self.y), "routers": self.routers, **(extra or {})}
        with atomic_dir(folder) as tmp:
            np.save(tmp / "vectors.npy", self.vectors.astype(np.float32))
            np.save(tmp / "y.npy", self.y.astype(np.float64))
            if self.weak_failure is not None:
                np.save(tmp / "weak_failure.npy", self.weak_failure.astype(np.float64))
            (tmp / "manifest.json").write_text(json.dumps(self.manifest, indent=1, default=_plain))
        return folder

    @classmethod
    def load(cls, folder: Path) -> UserOverlay:
        folder = Path(folder)
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
            vectors, y = np.load(folder / "vectors.npy"), np.load(folder / "y.npy")
            routers = {name: {**params, "kappa": float(params["kappa"])}
                       for name, params in manifest["routers"].items()}
            needs_failure = any(params.get("target") == "difficulty" for params in routers.values())
            failure = np.load(folder / "weak_failure.npy") if needs_failure else None
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"overlay {folder.name} is missing or corrupted ({type(exc).__name__}); promote "
                                "another version or retrain") from None
        if len(vectors) != len(y) or (failure is not None and len(failure) != len(y)):
            raise ArtifactError(f"overlay {folder.name} is inconsistent ({len(vectors)} vectors, {len(y)} outcomes)")
        return cls(vectors, y, manifest["strong"], manifest["weak"], manifest["embedder"], routers,
                   tuple(manifest["router_pair"]), failure, manifest["version"], manifest)


def _plain(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value).__name__)


# ------------------------------------------------------------------------------------------------ versions

CURRENT = "CURRENT"  # the promoted version's name, in <home>/overlays/CURRENT


def overlays_dir(home: Path) -> Path:
    return Path(home) / "overlays"


def versions(home: Path) -> list[str]:
    root = overlays_dir(home)
    return sorted(p.name for p in root.iterdir() if (p / "manifest.json").is_file()) if root.is_dir() else []


def current_version(home: Path) -> str | None:
    path = overlays_dir(home) / CURRENT
    try:
        name = path.read_text().strip()
    except FileNotFoundError:
        return None
    return name or None


def promote(home: Path, version: str | None) -> None:
    """Make `version` the served overlay (None: none); atomic, so a reader sees the old or the new name."""
    root = overlays_dir(home)
    if version is not None and version not in versions(home):
        known = ", ".join(versions(home)) or "none"
        raise ConfigError(f"no overlay version {version!r} under {root}; known: {known}")
    root.mkdir(parents=True, exist_ok=True)
    partial = root / f".{CURRENT}.partial"
    partial.write_text((version or "") + "\n")
    partial.replace(root / CURRENT)


def load_current(home: Path) -> UserOverlay | None:
    version = current_version(home)
    return UserOverlay.load(overlays_dir(home) / version) if version else None


def served_overlay(home: Path, embedder: str, strong_model: str, weak_model: str) -> UserOverlay | None:
    """The promoted overlay for a service, checked against what it serves: the embedder its vectors came from and
    the routers' pair it was fitted over (ArtifactError naming the fix otherwise)."""
    overlay = load_current(home)
    if overlay is None:
        return None
    if overlay.embedder != embedder:
        raise ArtifactError(f"overlay {overlay.version} was fitted with the {overlay.embedder} embedder, this service "
                            f"embeds with {embedder}: run `turnout retrain` again, or `turnout promote none`")
    if overlay.router_pair != (strong_model, weak_model):
        raise ArtifactError(f"overlay {overlay.version} was fitted over routers for {list(overlay.router_pair)}, this "
                            "service routes "
                            f"{strong_model} vs {weak_model}: run `turnout retrain` again, or `turnout promote none`")
    return overlay


# ------------------------------------------------------------------------------------------------ retraining


def fit_overlay(routers: dict[str, Any], embedder, labels: Outcomes, router_pair: tuple[str, str],
                seed: int = 0) -> UserOverlay:
    """An overlay for `routers` (name -> a router with score_embeddings for `router_pair`): the labelled prompts
    embedded once with `embedder`, then (beta, kappa) cross-validated per router against its own p_strong."""
    vectors = np.asarray(embedder.embed(labels.prompts, progress=True, what="labelled prompts"), dtype=np.float32)
    params = {}
    for name, router in routers.items():
        result = fit(vectors, labels.y, np.asarray(router.score_embeddings(vectors)), seed=seed,
                     log_len=log_length(labels.prompts), weak_failure=labels.weak_failure)
        params[name] = {k: result[k] for k in ("target", "prior", "beta", "kappa", "cv_gain", "cv_auc", "folds")} | {
            "cv_table": result["table"]}
    return UserOverlay(vectors, labels.y, labels.strong, labels.weak, embedder.name, params, tuple(router_pair),
                       labels.weak_failure)


def compare(new: UserOverlay, current: UserOverlay | None, routers: dict[str, Any], embedder, bench,
            n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """New against current (or the public router where there is none) on a held-out benchmark, per router:
    APGR with 95 % bootstrap intervals on the same prompt resamples, for the new and current versions, prompt length
    and random, and the paired P(new > each)."""
    from models.length_router import LengthRouter
    from models.metrics import bootstrap_curves, p_greater, percentile_interval, summarize

    queries = np.asarray(embedder.embed(bench.prompts, progress=True, what="held-out prompts"), dtype=np.float32)
    length = np.asarray(LengthRouter().score(bench.prompts))
    out = {}
    for name, router in routers.items():
        public = np.asarray(router.score_embeddings(queries))
        now = current.adjust(name, public, queries, bench.prompts) if current is not None else public
        scores = {"new": new.adjust(name, public, queries, bench.prompts), "current": now, "length": length}
        curves = bootstrap_curves(list(scores.values()), bench.strong, bench.weak, n_resamples, seed=seed)
        apgr = dict(zip(scores, curves.apgr))
        apgr["random"] = curves.random_apgr
        point = {k: summarize(p, bench.strong, bench.weak)["apgr"] for k, p in scores.items()}
        point["random"] = _random_apgr(bench)
        out[name] = {"apgr": point,
                     "interval": {k: percentile_interval(v) for k, v in apgr.items()},
                     "p_new_gt": {k: p_greater(apgr["new"], apgr[k]) for k in ("current", "length", "random")}}
    return {"benchmark": bench.name, "prompts": len(bench), "strong": bench.strong_model, "weak": bench.weak_model,
            "current": current.version if current is not None else None, "resamples": n_resamples, "routers": out}


def _random_apgr(bench) -> float:
    from models.metrics import apgr, random_curve

    share, quality = random_curve(bench.strong, bench.weak)
    return apgr(share, quality, bench.strong.mean(), bench.weak.mean())
