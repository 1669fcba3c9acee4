"""turnout's exact SW ranking next to RouteLLM's own SW code (PyPI routellm==0.2.0), on the same data.

    python -m loadtest.routellm_compare [--venv DIR] [--queries N] [--out benchmarks/routellm_compare.json]

Both sides get the same inputs, exported from turnout's artifacts: every battle whose two models have a tier
(artifacts/data), the tier table, and the MiniLM vectors of the training prompts (the SW artifact's index) and
of a seeded sample of evaluation prompts (GSM8K, MT-Bench turn 1, MMLU, interleaved; embedding cache). Both use
RouteLLM's γ = 10, so what is compared is the fit, not turnout's choice of γ. The pair is the default
gpt-4-1106-preview (strong) vs Mixtral-8x7B-Instruct (weak).

RouteLLM runs in its own venv (default artifacts/routellm-venv), installed with `--no-deps` plus the only
packages its SW code imports: numpy, pandas, scikit-learn (below 1.10, which drops the `penalty=None` it passes)
and openai (its utils module builds a client at import; no request is ever sent). Its router module also
imports torch, transformers and datasets for the other routers and its constructor downloads Arena data from
Hugging Face, so the worker takes the source of its `Router` and `SWRankingRouter` classes from the installed
routers.py and executes those two class bodies unchanged, next to the package's own
`compute_elo_mle_with_tie`. The instance skips `__init__` and is handed what `__init__` would have left:
battles with tiers in place of model names, one embedding row per battle, the tier table. The one stand-in is
the embedding client, which returns our MiniLM vector for the prompt; the similarities, weights, the
logistic-regression fit and the win rate are their code on our arrays.

Why the two differ with same-tier battles in. RouteLLM builds its design matrix with one column per tier and
writes, for each battle row, +ln10 into the column of model_a's tier and then -ln10 into the column of model_b's
tier. When both models share a tier, the two writes hit the same cell and the second one wins: the row is left
with a single -ln10 entry. With no intercept, that row says "this tier against a player whose rating is fixed
at 0", so every same-tier battle becomes a game against a fixed anchor rather than carrying no information
about the gap between tiers. Those games pull each tier that has them toward the anchor, by an amount that
depends on the query's weights, so p_strong moves. turnout follows the paper's method instead: a same-tier
battle says nothing about tier ratings and is left out of the fit (`models.bradley_terry.tier_battles`). So the
script compares twice: RouteLLM on all tiered battles, and RouteLLM with the same-tier battles removed, which
should match turnout up to the fits' tolerances (turnout has a 1e-2 ridge and Newton steps, RouteLLM an
unpenalised L-BFGS).

RouteLLM refits over every battle per query (seconds each on this machine), so its side is scored and timed on
the first `--queries` of the sample (the JSON says how many); turnout is timed on the whole sample, one query at
a time and in batches. Writes one JSON and prints a short table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

ROUTELLM_VERSION = "0.2.0"
# What routellm/routers/similarity_weighted/utils.py and the SW router class import, and nothing else: the
# package's declared deps (torch, transformers, datasets, litellm) serve its other routers and its downloads.
VENV_DEPS = ("numpy", "pandas", "scikit-learn<1.10", "openai")
ROUTELLM_GAMMA = 10.0  # RouteLLM's weights are 10·10^(S/max S) = 10^(1 + S/max S)
WINNERS = ("model_a", "model_b", "tie")  # winner codes in the export
BENCHES = ("gsm8k", "mt-bench", "mmlu")
# utils.py builds an OpenAI client at import, which needs some key; the worker never sends a request.
PLACEHOLDER_KEY = "sk-unused-offline"


# ------------------------------------------------------------------------------------------ pure helpers


def rankdata(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (what Spearman's rho needs)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    # Every run of equal values shares the mean of the ranks it spans.
    uniq, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    if len(uniq) < len(values):
        sums = np.bincount(inverse, weights=ranks)
        ranks = (sums / counts)[inverse]
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation; NaN when either side is constant or there are fewer than two points."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    if len(x) < 2:
        return float("nan")
    rx, ry = rankdata(x) - (len(x) + 1) / 2, rankdata(y) - (len(y) + 1) / 2
    denom = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def agreement(ours: np.ndarray, theirs: np.ndarray) -> dict[str, float]:
    """How close two p_strong vectors over the same queries are."""
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    diff = np.abs(ours - theirs)
    return {"queries": int(len(ours)), "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "spearman": spearman(ours, theirs)}


def cross_tier(tier_a: np.ndarray, tier_b: np.ndarray) -> np.ndarray:
    """Mask of battles between models of different tiers: the ones left when same-tier battles are removed."""
    return np.asarray(tier_a) != np.asarray(tier_b)


def interleave(groups: list[list[str]]) -> list[str]:
    """Round-robin over the groups, dropping repeats, so any prefix mixes every group."""
    out, seen = [], set()
    for i in range(max((len(g) for g in groups), default=0)):
        for group in groups:
            if i < len(group) and group[i] not in seen:
                seen.add(group[i])
                out.append(group[i])
    return out


def _summary(seconds: list[float] | np.ndarray, scale: float = 1.0) -> dict[str, float]:
    values = np.asarray(seconds, dtype=np.float64) * scale
    return {"p50": float(np.percentile(values, 50)), "p90": float(np.percentile(values, 90)),
            "mean": float(values.mean())}


def _spread(p: np.ndarray) -> dict[str, float]:
    p = np.asarray(p, dtype=np.float64)
    return {"min": float(p.min()), "max": float(p.max()), "mean": float(p.mean()), "std": float(p.std())}


# ----------------------------------------------------------------------------------- turnout's side


def export(home: Path, data: Path, out: Path, pool: int, seed: int) -> tuple[object, dict]:
    """Write the battles, tiers and vectors both sides use to `out` (.npz); return turnout's exact SW router
    (γ = RouteLLM's) and a description of the data."""
    import pandas as pd

    from index.embedder import DEFAULT_EMBEDDER, load_embedder
    from index.errors import ArtifactError
    from models import bradley_terry
    from models import data as training
    from models.base import DEFAULT_STRONG, DEFAULT_WEAK
    from models.benchmarks import load_benchmark
    from models.sw_ranking import SWRankingRouter

    td = training.load(home / "data")
    # The paper's fit, which is what RouteLLM computes: every tier in it (served: the pair's window only).
    router = SWRankingRouter.from_artifacts(home / "routers", gamma=ROUTELLM_GAMMA, k=None, tier_window=None, difficulty_k=0)
    if router.tiers != td.tiers:
        raise ArtifactError("the SW artifact's tiers differ from artifacts/data; "
                            "rebuild with `turnout train sw_ranking`")
    n_tiers = router.counts.shape[1]
    # The artifact's index holds the sorted unique prompts of the cross-tier battles; rebuilding the counts from
    # the battles table both checks that the artifact belongs to this table and gives the prompt order.
    prompts, counts = bradley_terry.prompt_tier_counts(td.battles, td.tiers, n_tiers)
    if len(prompts) != router.store.ntotal or not np.allclose(bradley_terry.equal_prompt_weight(counts), router.counts):
        raise ArtifactError("the SW artifact does not match artifacts/data; rebuild with `turnout train sw_ranking`")
    # RouteLLM weighs each battle, not each prompt: compare with the unscaled counts.
    router.counts, router.total = counts.astype(np.float32), counts.sum(axis=0)

    battles = td.battles
    tier_a, tier_b = battles["model_a"].map(td.tiers), battles["model_b"].map(td.tiers)
    keep = (tier_a.notna() & tier_b.notna()).to_numpy()
    battles = battles.loc[keep]
    battle_prompts = battles["prompt"].to_numpy()
    prompt_index = pd.Index(prompts).get_indexer(battle_prompts)
    vectors = np.asarray(router.store.vectors(), dtype=np.float32)  # the vectors turnout's exact scan uses
    embedder = load_embedder(DEFAULT_EMBEDDER, cache_dir=home / "embeddings", models_dir=home / "embedders")
    # A prompt whose only tiered battles are same-tier ones is not in the SW index; RouteLLM needs its vector.
    missing = prompt_index < 0
    extra = pd.unique(battle_prompts[missing])
    if len(extra):
        log.info("embedding %d prompts that only have same-tier battles", len(extra))
        prompt_index[missing] = len(prompts) + pd.Index(extra).get_indexer(battle_prompts[missing])
        vectors = np.concatenate([vectors, embedder.embed(list(extra))])

    groups = [load_benchmark(name, data).prompts for name in BENCHES]
    rng = np.random.default_rng(seed)
    groups = [[g[i] for i in rng.permutation(len(g))] for g in groups]  # a seeded sample of each benchmark
    queries = interleave(groups)[:pool]
    query_vectors = embedder.embed(queries)

    a = tier_a.to_numpy()[keep].astype(np.int64)
    b = tier_b.to_numpy()[keep].astype(np.int64)
    winner = battles["winner"].map({w: i for i, w in enumerate(WINNERS)}).to_numpy().astype(np.int8)
    np.savez(out, tier_a=a, tier_b=b, winner=winner, prompt_index=prompt_index.astype(np.int64),
             prompt_vectors=vectors, query_vectors=query_vectors, queries=np.array(queries, dtype=str),
             tiers=np.array(json.dumps(td.tiers)), strong=np.array(DEFAULT_STRONG), weak=np.array(DEFAULT_WEAK))
    same = int((~cross_tier(a, b)).sum())
    info = {"data_hash": td.report.get("data_hash", ""), "tiered_battles": int(len(a)), "same_tier_battles": same,
            "cross_tier_battles": int(len(a)) - same, "training_prompts": int(len(vectors)), "n_tiers": int(n_tiers),
            "strong": DEFAULT_STRONG, "weak": DEFAULT_WEAK, "strong_tier": int(td.tiers[DEFAULT_STRONG]),
            "weak_tier": int(td.tiers[DEFAULT_WEAK])}
    return router, {"info": info, "queries": queries, "query_vectors": query_vectors}


def time_turnout(router, query_vectors: np.ndarray, batch_size: int = 64, repeats: int = 3) -> dict:
    """turnout's p_strong for every query, with per-query latency and batched throughput."""
    router.batch_size = batch_size
    router.score_embeddings(query_vectors[:batch_size])  # warm-up: BLAS threads, page faults
    single = []
    for row in query_vectors:
        started = time.perf_counter()
        router.score_embeddings(row[None])
        single.append(time.perf_counter() - started)
    batched = []
    for _ in range(repeats):
        started = time.perf_counter()
        p_strong = router.score_embeddings(query_vectors)
        batched.append(time.perf_counter() - started)
    return {"p_strong": p_strong, "per_query_ms": _summary(single, 1000.0),
            "batched_queries_per_s": float(len(query_vectors) / np.median(batched)), "batch_size": batch_size,
            "queries_timed": int(len(query_vectors)), "l2": router.l2, "n_steps": router.n_steps}


# -------------------------------------------------------------------------------------------- the venv


def _venv_ready(python: Path) -> bool:
    probe = ("import importlib.metadata as m, routellm.routers.similarity_weighted.utils, sklearn; "
             f"assert m.version('routellm') == {ROUTELLM_VERSION!r}")
    if not python.is_file():
        return False
    done = subprocess.run([str(python), "-c", probe], env={**os.environ, "OPENAI_API_KEY": PLACEHOLDER_KEY},
                          capture_output=True, text=True)
    if done.returncode:
        log.info("venv at %s is not usable yet: %s", python.parent.parent, (done.stderr.strip().splitlines() or ["?"])[-1])
    return done.returncode == 0


def ensure_venv(venv: Path) -> Path:
    """The venv's python, creating the venv with routellm (no deps) and the light deps of its SW code if needed."""
    python = venv / "bin" / "python"
    if _venv_ready(python):
        return python
    log.info("creating %s with routellm==%s (--no-deps) and %s", venv, ROUTELLM_VERSION, ", ".join(VENV_DEPS))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run(pip + ["--no-deps", f"routellm=={ROUTELLM_VERSION}"], check=True)
    subprocess.run(pip + list(VENV_DEPS), check=True)
    if not _venv_ready(python):
        raise RuntimeError(f"routellm venv at {venv} still does not import its SW code")
    return python


# ---------------------------------------------------------------------- RouteLLM's side (inside the venv)


class _ClientStandIn:
    """Answers `client.embeddings.create(input=[prompt], model=...)` with our MiniLM vector for that prompt."""

    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table
        self.embeddings = self  # the client's `embeddings` resource: only `create` is called

    def create(self, input: list[str], model: str):  # noqa: A002 - the OpenAI client's keyword
        from types import SimpleNamespace

        return SimpleNamespace(data=[SimpleNamespace(embedding=self.table[input[0]])])


def _routellm_sw_class(client: object) -> type:
    """RouteLLM's `SWRankingRouter`, its class body executed as shipped, without the imports of routers.py
    (torch, transformers, datasets), which only its other routers and its constructor's downloads use."""
    import abc
    import ast

    import routellm.routers.similarity_weighted.utils as sw_utils

    path = Path(sw_utils.__file__).resolve().parents[1] / "routers.py"
    tree = ast.parse(path.read_text())
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name in ("Router", "SWRankingRouter")]
    if len(classes) != 2:
        raise RuntimeError(f"{path}: Router/SWRankingRouter not found; is this routellm {ROUTELLM_VERSION}?")
    namespace = {"__name__": "routellm_sw", "abc": abc, "np": np, "OPENAI_CLIENT": client, "NAME_TO_CLS": {},
                 "compute_elo_mle_with_tie": sw_utils.compute_elo_mle_with_tie}
    # Compiled under their file name, so a traceback points into their source.
    exec(compile(ast.Module(body=classes, type_ignores=[]), str(path), "exec"), namespace)
    return namespace["SWRankingRouter"]


def run_routellm(npz: Path, out: Path, n_queries: int) -> None:
    """Score the first n_queries with RouteLLM's SW router, on all tiered battles and without same-tier ones."""
    import importlib.metadata as metadata
    import warnings

    import pandas as pd

    with np.load(npz) as arrays:
        data = {key: arrays[key] for key in arrays.files}
    queries = [str(q) for q in data["queries"][:n_queries]]
    table = dict(zip(queries, data["query_vectors"][:n_queries]))
    cls = _routellm_sw_class(_ClientStandIn(table))
    tiers = json.loads(str(data["tiers"]))
    result = {"versions": {name: metadata.version(name) for name in ("routellm", "scikit-learn", "pandas", "numpy")},
              "variants": {}}
    for variant in ("all_battles", "same_tier_removed"):
        rows = np.arange(len(data["tier_a"]))
        if variant == "same_tier_removed":
            rows = np.flatnonzero(cross_tier(data["tier_a"], data["tier_b"]))
        router = cls.__new__(cls)  # __init__ downloads Arena battles and embeddings; we set what it would leave
        router.strong_model, router.weak_model = str(data["strong"]), str(data["weak"])
        router.model2tier = tiers
        router.embedding_model = "text-embedding-3-small"  # only passed to the stand-in client
        router.arena_df = pd.DataFrame({"model_a": data["tier_a"][rows], "model_b": data["tier_b"][rows],
                                        "winner": np.asarray(WINNERS, dtype=object)[data["winner"][rows]]})
        router.arena_conv_embedding = data["prompt_vectors"][data["prompt_index"][rows]]  # one row per battle
        p_strong, seconds, not_converged = [], [], 0
        for i, query in enumerate(queries):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                started = time.perf_counter()
                p_strong.append(float(router.calculate_strong_win_rate(query)))
                seconds.append(time.perf_counter() - started)
            not_converged += any("converge" in str(w.message).lower() for w in caught)
            log.info("routellm %s: query %d/%d p_strong %.4f in %.1f s",
                     variant, i + 1, len(queries), p_strong[-1], seconds[-1])
        result["variants"][variant] = {"battles": int(len(rows)), "p_strong": p_strong, "seconds": seconds,
                                       "fits_not_converged": int(not_converged)}
        del router
    out.write_text(json.dumps(result))


# ------------------------------------------------------------------------------------------------ main


def _table(result: dict) -> str:
    agree, speed = result["agreement"], result["speed"]
    lines = ["| comparison | queries | max abs diff | mean abs diff | Spearman |", "|---|---|---|---|---|"]
    for key, label in (("all_battles", "turnout vs RouteLLM, all tiered battles"),
                       ("same_tier_removed", "turnout vs RouteLLM, same-tier battles removed"),
                       ("routellm_all_vs_removed", "RouteLLM all vs RouteLLM same-tier removed")):
        a = agree[key]
        lines.append(f"| {label} | {a['queries']} | {a['max_abs_diff']:.2g} | {a['mean_abs_diff']:.2g} | {a['spearman']:.3f} |")
    r, t = speed["routellm"], speed["turnout"]
    lines += ["", "| speed | figure |", "|---|---|",
              f"| RouteLLM, per query, all battles (p50, {r['queries_timed']} queries) | {r['all_battles_s']['p50']:.2f} s |",
              f"| RouteLLM, per query, same-tier removed (p50) | {r['same_tier_removed_s']['p50']:.2f} s |",
              f"| turnout exact, per query (p50, {t['queries_timed']} queries) | {t['per_query_ms']['p50']:.2f} ms |",
              f"| turnout exact, batches of {t['batch_size']} | {t['batched_queries_per_s']:.0f} queries/s |"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, help="venv for routellm (default: <artifacts>/routellm-venv)")
    parser.add_argument("--queries", type=int, default=16, help="queries RouteLLM scores (seconds each, twice)")
    parser.add_argument("--pool", type=int, default=256, help="queries turnout scores and is timed on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--home", help="artifacts folder (default: $TURNOUT_HOME or <repo>/artifacts)")
    parser.add_argument("--data-dir")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/routellm_compare.json"))
    parser.add_argument("--worker-in", type=Path, help=argparse.SUPPRESS)  # inside the venv: RouteLLM's side
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.worker_in:
        run_routellm(args.worker_in, args.worker_out, args.queries)
        return 0

    from index.paths import artifacts_dir, data_dir

    if not 2 <= args.queries <= args.pool:
        parser.error("need 2 <= --queries <= --pool")
    home, data = artifacts_dir(args.home), data_dir(args.data_dir)
    python = ensure_venv(args.venv or home / "routellm-venv")
    load_before = os.getloadavg()[0]  # timings on a shared 2-core machine mean little without it
    with tempfile.TemporaryDirectory(prefix="routellm-compare-") as tmp:
        npz, theirs_json = Path(tmp) / "export.npz", Path(tmp) / "routellm.json"
        started = time.perf_counter()
        router, exported = export(home, data, npz, args.pool, args.seed)
        log.info("exported %s in %.0f s", exported["info"], time.perf_counter() - started)
        ours = time_turnout(router, exported["query_vectors"])
        del router  # the worker needs the memory more
        log.info("RouteLLM on %d queries, twice (all battles, same-tier removed)", args.queries)
        subprocess.run([str(python), str(Path(__file__).resolve()), "--worker-in", str(npz), "--worker-out",
                        str(theirs_json), "--queries", str(args.queries)],
                       env={**os.environ, "OPENAI_API_KEY": PLACEHOLDER_KEY}, check=True)
        theirs = json.loads(theirs_json.read_text())

    n = args.queries
    p_ours = ours["p_strong"][:n]
    p_all = np.array(theirs["variants"]["all_battles"]["p_strong"])
    p_cross = np.array(theirs["variants"]["same_tier_removed"]["p_strong"])
    result = {
        "command": "python -m loadtest.routellm_compare " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU used",
        "load_average_1min": {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)},
        "data": exported["info"], "gamma": ROUTELLM_GAMMA,
        "queries": {"source": "seeded sample of " + ", ".join(BENCHES) + " prompts (MT-Bench turn 1), interleaved",
                    "pool": len(exported["queries"]), "compared": n,
                    "note": "RouteLLM's side is scored and timed on the first `compared` queries only"},
        "turnout": {"mode": "exact (k=None)", "l2": ours["l2"], "n_steps": ours["n_steps"]},
        "routellm": {**theirs["versions"], "fits_not_converged": {k: v["fits_not_converged"] for k, v in theirs["variants"].items()},
                     "battles": {k: v["battles"] for k, v in theirs["variants"].items()}},
        "agreement": {"all_battles": agreement(p_ours, p_all), "same_tier_removed": agreement(p_ours, p_cross),
                      "routellm_all_vs_removed": agreement(p_all, p_cross)},
        "p_strong_spread": {"turnout": _spread(p_ours), "routellm_all_battles": _spread(p_all),
                            "routellm_same_tier_removed": _spread(p_cross)},
        "speed": {"routellm": {"queries_timed": n, "all_battles_s": _summary(theirs["variants"]["all_battles"]["seconds"]),
                               "same_tier_removed_s": _summary(theirs["variants"]["same_tier_removed"]["seconds"])},
                  "turnout": {k: v for k, v in ours.items() if k not in ("p_strong", "l2", "n_steps")}},
        "per_query": [{"prompt": q[:80], "turnout": float(a), "routellm_all_battles": float(b),
                       "routellm_same_tier_removed": float(c)}
                      for q, a, b, c in zip(exported["queries"][:n], p_ours, p_all, p_cross)],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(_table(result))
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
