"""Blends of the served routers and prompt length on the obvious-prompt files (issue 22, session 7).

    python -m loadtest.obvious_blend grid --out benchmarks/issue22_session7/blends_dev.json
    python -m loadtest.obvious_blend read models/obvious_prompts_heldout5.jsonl \
        --blend benchmarks/issue22_session7/preregistered_blend.json --out benchmarks/issue22_session7/obvious_heldout5.json

No single router reaches the per-router targets on every obvious file; this asks whether a fixed blend of them does.
A blend's score is sum_r w_r * z_r: each router's logit(p_strong) and log(1 + prompt characters), standardised by
their mean and spread over the four dev benchmarks' prompts. `grid` scores sw_ranking, bert and causal_llm (the
classifiers' scores come from the evaluation cache, `models.evaluation.CachedScores`) on the dev benchmarks and the
dev obvious files (`models.obvious.CHECK_PATHS`) and tries every weight in {0, 0.5, 1} per router and
{0, 0.25, 0.5, 1} for length: dev APGR per benchmark, AUC whole and length-balanced per file, and the worst margin
to the per-router targets over the files. `read` scores one held-out file once with every router, mf, length,
random and the blend fixed before it (its weights and standardisation in `--blend`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

ROUTERS = ("sw_ranking", "bert", "causal_llm")
LENGTH = "log1p_chars"
ROUTER_WEIGHTS = (0.0, 0.5, 1.0)
LENGTH_WEIGHTS = (0.0, 0.25, 0.5, 1.0)


def logit(p_strong: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p_strong, dtype=float), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def features(scores: dict[str, np.ndarray], prompts: list[str]) -> dict[str, np.ndarray]:
    """Each blended router's logit(p_strong) from its `scores` on `prompts`, and the prompts' log length."""
    return {**{name: logit(scores[name]) for name in ROUTERS}, LENGTH: np.log1p([len(p) for p in prompts])}


def scored(routers: dict, prompts: list[str]) -> dict[str, np.ndarray]:
    return {name: router.score(prompts) for name, router in routers.items()}


def blend(weights: dict[str, float], standardisation: dict[str, list[float]],
          feats: dict[str, np.ndarray]) -> np.ndarray:
    return sum(w * (feats[n] - standardisation[n][0]) / standardisation[n][1] for n, w in weights.items() if w)


def default_pair(routers_for) -> dict:
    """The routers `models.evaluation.routers_by_pair` builds for the default pair, the obvious files' pair."""
    from models.base import DEFAULT_STRONG, DEFAULT_WEAK
    from models.benchmarks import Benchmark

    return routers_for(Benchmark("obvious", [], np.empty(0), np.empty(0), DEFAULT_STRONG, DEFAULT_WEAK))


def grid(ws) -> dict:
    from models.benchmarks import DEV_BENCHMARKS, load_benchmark
    from models.evaluation import routers_by_pair
    from models.metrics import summarize
    from models.obvious import CHECK_PATHS, file_aucs, load_obvious, worst_margin

    routers_for, _ = routers_by_pair(list(ROUTERS), ws, {})
    benches = {}
    for name in DEV_BENCHMARKS:  # each for its own pair; a classifier trained for another is scored for its own
        bench = load_benchmark(name, ws.data())
        benches[name] = (bench, features(scored(routers_for(bench), bench.prompts), bench.prompts))
    standardisation = {n: [float(np.mean(pool)), float(np.std(pool))]
                       for n in (*ROUTERS, LENGTH) for pool in [np.concatenate([f[n] for _, f in benches.values()])]}
    routers = default_pair(routers_for)
    files = {}
    for path in CHECK_PATHS:
        frame = load_obvious(path)
        prompts = frame["prompt"].tolist()
        files[path.name] = (frame, features(scored(routers, prompts), prompts))
    rows = []
    for values in itertools.product(*[ROUTER_WEIGHTS] * len(ROUTERS), LENGTH_WEIGHTS):
        weights = dict(zip((*ROUTERS, LENGTH), values))
        if not any(weights[n] for n in ROUTERS):
            continue
        apgr = {name: summarize(1 / (1 + np.exp(-blend(weights, standardisation, f))), b.strong, b.weak)["apgr"]
                for name, (b, f) in benches.items()}
        obvious = {name: file_aucs(blend(weights, standardisation, f), frame) for name, (frame, f) in files.items()}
        rows.append({"weights": {n: w for n, w in weights.items() if w}, "dev_apgr": apgr, "obvious": obvious,
                     "worst_margin": worst_margin(obvious)})
    rows.sort(key=lambda r: -r["worst_margin"])
    return {"standardisation": standardisation, "rows": rows}


def read(ws, path: Path, preregistered: dict) -> dict:
    from models.evaluation import routers_by_pair
    from models.obvious import LENGTH as LENGTH_ROUTER, load_obvious, obvious_report, paired_p_greater
    from models.random_router import RandomRouter

    frame = load_obvious(path)
    prompts, is_hard, balanced = frame["prompt"].tolist(), frame["is_hard"].to_numpy(), frame["balanced"].to_numpy()
    scores = scored(default_pair(routers_by_pair([*ROUTERS, "mf"], ws, {})[0]), prompts)
    scores["blend (pre-registered)"] = blend(preregistered["weights"], preregistered["standardisation"],
                                             features(scores, prompts))
    scores["random"] = RandomRouter(0).score(prompts)
    entries = obvious_report({name: _Scored(name, prompts, p) for name, p in scores.items()}, path, n_bootstrap=1000)
    keys = ("auc", "auc_ci95", "auc_balanced", "auc_balanced_ci95", "n", "n_balanced")
    report = {name: {k: e[k] for k in keys} for name, e in entries.items()}
    length = np.array([len(p) for p in prompts], dtype=float)
    for name, p in scores.items():  # paired: whole file against length and random, balanced subset against random
        report[name]["p_gt_length"] = paired_p_greater(p, length, is_hard)
        report[name]["p_gt_random"] = paired_p_greater(p, scores["random"], is_hard)
        report[name]["p_gt_random_balanced"] = paired_p_greater(p[balanced], scores["random"][balanced],
                                                                is_hard[balanced])
    report[LENGTH_ROUTER]["p_gt_random"] = paired_p_greater(length, scores["random"], is_hard)
    return {path.name: report}


class _Scored:
    """Scores already computed for one prompt list, in the shape `obvious_report` takes a router."""

    def __init__(self, name: str, prompts: list[str], p_strong: np.ndarray):
        self.name, self.prompts, self.p_strong = name, prompts, p_strong

    def score(self, prompts: list[str]) -> np.ndarray:
        if list(prompts) != self.prompts:
            raise ValueError(f"{self.name}: scored for other prompts")
        return self.p_strong


def main(argv: list[str] | None = None) -> int:
    from models import pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("grid", "read"))
    parser.add_argument("file", nargs="?", help="read: the obvious-prompt file to score once")
    parser.add_argument("--blend", help="read: the blend fixed before the read (weights, standardisation)")
    parser.add_argument("--home")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "read" and not (args.file and args.blend):
        parser.error("read needs FILE and --blend")
    ws = pipeline.workspace(args.home)
    if args.command == "grid":
        report = grid(ws)
        for row in report["rows"][:8]:
            print(f"{row['worst_margin']:+.3f}", json.dumps(row["weights"]), flush=True)
    else:
        report = read(ws, Path(args.file), json.loads(Path(args.blend).read_text()))
        for name, e in next(iter(report.values())).items():
            print(f"{name:26s} {e['auc']:.3f} {e['auc_balanced']:.3f}", flush=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
