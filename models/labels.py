"""Classifier labels from battles: per-prompt outcome distributions for the routed strong/weak pair.

The classifier routers (bert, causal_llm) never see model names: they learn, from the prompt alone, how the
strong model's tier fares against the weak model's tier (RouteLLM, arXiv 2406.18665, §4.1, groups models into
tiers for this). Most prompts here were never answered by both tiers, so each prompt's label is inferred from
all of its battles between models of different tiers, the way the SW router infers it for a query from its
neighbours:

    1. per-prompt tier win counts C_p (ties half a win each way; battles inside one tier dropped);
    2. a Bradley–Terry fit over tiers on C_p + a prior of `prior_battles` pseudo-battles shaped like the global
       win matrix (so a prompt with few or one-sided battles stays near the global strength gap);
    3. q_p = σ(ξ_strong − ξ_weak): the probability that the strong tier beats the weak tier on this prompt.

The target over (strong wins, tie, weak wins) is ((1 − ν)·q_p, ν, (1 − ν)·(1 − q_p)), where ν is the tie share of
all labelled battles: one global number, because per-prompt tie shares mostly tell the sources apart (correctness
data ties whenever both models are right; AlpacaEval almost never ties), and a probe trained on them ranked
MT-Bench below random. Both routers report p_strong = P(strong) + P(tie)/2 = ν/2 + (1 − ν)·q_p, which ranks
prompts by q_p.

Neighbour-averaged labels (`classifier_outcomes`, the classifiers' default since issue 22). A prompt's label says
something about the pair only when some of its battles involve the pair's tiers; for the default pair most
correctness sources have none, and their labels all sit at the prior. Per prompt, the label is then nearly
constant (the most a classifier could gain over predicting the mean is a hundredth of a nat), and the classifiers
fitted noise. So each prompt's q is replaced by the mean q of its `k` nearest training prompts (by the served
embedder) among the informative ones: the averaging over neighbours that the SW router does per query, done once
on the training side, which a classifier can then learn as a smooth function of the text. With `stretch`, the
averaged q are replaced by their ranks spread over [STRETCH, 1 − STRETCH], so the differences the classifier must
learn are not a few thousandths of a probability; only the ranking matters to routing (thresholds are calibrated
on the ranking, models/calibration.py). Measured and chosen on dev data: BENCHMARKS.md, 'Why the classifiers
routed backwards'.

Difficulty labels (`label_source: difficulty`, `difficulty_outcomes`). Battles hide how hard a prompt is: on
correctness data "both right" and "both wrong" are one tie (models/irt.py). The Rasch fit over every model's scores
gives each prompt a difficulty b and the weak model an ability θ_weak, and the label is q = P(the weak model's
answer is wrong) = 1 − σ(θ_weak − b), with no ties: "will the weak answer do?", the routing question itself, asked
of every model's answers to the prompt instead of the few battles between the pair's tiers. It ranks prompts by
difficulty alone; prompts without correctness scores have none and are left out.

An earlier version read every battle from its stronger-tier side and averaged over all tier pairs. That label
is pair-agnostic and dominated by whichever pairs a source holds (AlpacaEval-1 is every model against
text-davinci-003); with it both classifiers ranked MT-Bench below random. Comparisons (linear probes,
`python -m loadtest.label_probe`, and the fine-tuned routers) are in BENCHMARKS.md.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models import bradley_terry, irt
from index.errors import ArtifactError, ConfigError

log = logging.getLogger(__name__)

OUTCOMES = ("strong", "tie", "weak")
LABEL_SOURCES = ("battles", "difficulty")


def prompt_outcomes(battles: pd.DataFrame, tiers: dict[str, int], strong: str, weak: str,
                    prior_battles: float = 20.0) -> pd.DataFrame:
    """One row per prompt: prompt, strong, tie, weak (summing to 1), n (labelled battles); the module docstring."""
    check_pair(tiers, strong, weak)
    n_tiers = max(tiers.values()) + 1
    prompts, counts = bradley_terry.prompt_tier_counts(battles, tiers, n_tiers)
    if not len(prompts):
        raise ConfigError("no battle between models of different tiers: nothing to label")
    total = counts.sum(axis=0)
    prior = total * (prior_battles / total.sum())
    xi = bradley_terry.fit(counts + prior[None], l2=1e-2, n_steps=12)
    q = 1.0 / (1.0 + np.exp(-(xi[:, tiers[strong]] - xi[:, tiers[weak]])))
    n = counts.sum(axis=(1, 2))
    labelled, _, _ = bradley_terry.tier_battles(battles, tiers)
    tie = float(np.mean(battles["winner"].to_numpy()[labelled] == "tie"))
    return pd.DataFrame({"prompt": prompts, "strong": (1.0 - tie) * q, "tie": np.full(len(q), tie),
                         "weak": (1.0 - tie) * (1.0 - q), "n": np.round(n).astype(int)})


def difficulty_outcomes(td: Any, strong: str, weak: str) -> pd.DataFrame:
    """`prompt_outcomes`' columns from the Rasch fit: q = P(weak model wrong), no ties (module docstring)."""
    check_pair(td.tiers, strong, weak)
    rasch = irt.fit(td.scores)
    if weak not in rasch.ability.index:
        raise ConfigError(f"weak model {weak!r} has no correctness data to fit its ability on; difficulty labels "
                          "need it (label_source: battles does not)")
    q = 1.0 - irt.sigmoid(float(rasch.ability[weak]) - rasch.difficulty.to_numpy())
    answers = td.scores.groupby("prompt").size().reindex(rasch.difficulty.index).to_numpy()
    return pd.DataFrame({"prompt": rasch.difficulty.index.to_numpy(dtype=object), "strong": q, "tie": 0.0,
                         "weak": 1.0 - q, "n": answers.astype(int)})


STRETCH = 0.05


def informative_prompts(battles: pd.DataFrame, tiers: dict[str, int], prompts: Any, strong: str, weak: str) -> np.ndarray:
    """Mask over `prompts`: those with at least one battle in which a model of the strong or the weak tier fought."""
    pair_tiers = {tiers[strong], tiers[weak]}
    touching = battles["model_a"].map(tiers).isin(pair_tiers) | battles["model_b"].map(tiers).isin(pair_tiers)
    return pd.Series(prompts).isin(set(battles["prompt"][touching])).to_numpy()


def neighbour_mean(x: np.ndarray, y: np.ndarray, k: int, pool: np.ndarray | None = None, chunk: int = 2048) -> np.ndarray:
    """Mean of y over each row's k most similar other rows among `pool` (a mask; all rows by default), by cosine
    on unit vectors, the row itself left out."""
    pool_idx = np.arange(len(x)) if pool is None else np.flatnonzero(pool)
    k = min(k, len(pool_idx) - 1)
    if k < 1:
        raise ConfigError(f"neighbour-averaged labels need at least 2 informative prompts, got {len(pool_idx)}")
    out = np.empty(len(x))
    for start in range(0, len(x), chunk):
        sims = x[start: start + chunk] @ x[pool_idx].T
        rows, cols = np.nonzero(pool_idx[None, :] == np.arange(start, start + len(sims))[:, None])
        sims[rows, cols] = -np.inf
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        out[start: start + chunk] = y[pool_idx[top]].mean(axis=1)
    return out


def classifier_outcomes(td: Any, embedder: Any, strong: str, weak: str, neighbours: int, stretch: bool,
                        source: str = "battles") -> pd.DataFrame:
    """The classifiers' training rows: `prompt_outcomes` (or with `source` "difficulty", `difficulty_outcomes`), with
    q averaged over `neighbours` informative neighbours (0: each prompt's own label) and, with `stretch`, spread by
    rank (the module docstring)."""
    if source not in LABEL_SOURCES:
        raise ConfigError(f"unknown label source {source!r}; known: {', '.join(LABEL_SOURCES)}")
    battles = source == "battles"
    rows = prompt_outcomes(td.battles, td.tiers, strong, weak) if battles else difficulty_outcomes(td, strong, weak)
    if neighbours <= 0 and not stretch:
        return rows
    tie = rows["tie"].to_numpy()
    q = rows["strong"].to_numpy() / (1.0 - tie)
    if neighbours > 0:
        if embedder is None:
            raise ConfigError("neighbour-averaged labels need the embedder; set label_neighbours to 0 to train on "
                              "each prompt's own label")
        x = embedder.embed(rows["prompt"].tolist(), progress=True, what="labelled prompts for neighbour-averaged labels")
        pool = informative_prompts(td.battles, td.tiers, rows["prompt"], strong, weak) if battles else None
        q = neighbour_mean(np.asarray(x, dtype=np.float32), q, neighbours, pool)
    if stretch:
        ranks = pd.Series(q).rank(method="average").to_numpy()
        q = STRETCH + (1 - 2 * STRETCH) * (ranks - 1) / max(1, len(q) - 1)
    return rows.assign(strong=(1.0 - tie) * q, weak=(1.0 - tie) * (1.0 - q))


def split_prompts(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation row indices over `n` prompts (the split is by prompt, never by battle)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction)) if n > 1 else 0
    if val_fraction > 0 and n > 1:
        n_val = max(1, n_val)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def p_strong_from_outcomes(probs: np.ndarray) -> np.ndarray:
    """(N, 3) probabilities over OUTCOMES -> p_strong = P(strong) + P(tie)/2."""
    probs = np.asarray(probs, dtype=np.float64)
    return probs[:, 0] + 0.5 * probs[:, 1]


def read_meta(folder: Path, name: str, strong: str, weak: str) -> dict:
    """meta.json of a classifier checkpoint, checked against the strong/weak pair it is asked to route."""
    try:
        meta = json.loads((Path(folder) / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{name} artifact at {folder} is missing or corrupted ({type(exc).__name__}); "
                            f"run `turnout train {name}`") from exc
    tiers, trained = meta.get("tiers") or {}, meta.get("pair")
    if not tiers or not trained:
        raise ArtifactError(f"{name} checkpoint at {folder} has no strong/weak pair in meta.json (trained before "
                            f"labels were pair-specific); run `turnout train {name}`")
    check_pair(tiers, strong, weak)
    if [tiers[strong], tiers[weak]] != trained["tiers"]:
        raise ConfigError(f"{name} was trained for tiers {trained['tiers']} ({trained['strong']} vs {trained['weak']}); "
                          f"{strong} vs {weak} are tiers {[tiers[strong], tiers[weak]]}: run `turnout train {name} "
                          f"--strong {strong} --weak {weak}`")
    return meta


def check_pair(tiers: dict[str, int], strong: str, weak: str) -> None:
    """Labels need `strong` in a stronger tier than `weak` (tier 0 is the strongest)."""
    for role, model in (("strong", strong), ("weak", weak)):
        if model not in tiers:
            raise ConfigError(f"{role} model {model!r} has no tier in the classifier's training data ({len(tiers)} models)")
    if tiers[strong] >= tiers[weak]:
        raise ConfigError(f"strong model {strong!r} (tier {tiers[strong]}) is not in a stronger tier than weak model "
                          f"{weak!r} (tier {tiers[weak]})")


def write_checkpoint(folder: Path, model: Any, tokenizer: Any, meta: dict) -> Path:
    """Save a fine-tuned Hugging Face classifier router atomically: weights, tokenizer, then meta.json."""
    from index.paths import atomic_dir

    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    return folder


def checkpoint_meta(name: str, base: str, config: Any, report: Any, max_length: int, n_train: int, n_val: int,
                    td: Any, **extra: Any) -> dict:
    """meta.json of a classifier checkpoint: what was trained, on what, and how the run went (models/finetune.py)."""
    return {"router": name, "base": base, "max_length": max_length, "config": asdict(config), **report.meta(),
            "prompts": {"train": int(n_train), "validation": int(n_val)},
            "tiers": dict(td.tiers), "data_hash": td.report.get("data_hash", ""),
            "pair": {"strong": config.strong, "weak": config.weak,
                     "tiers": [td.tiers[config.strong], td.tiers[config.weak]]}, **extra}
