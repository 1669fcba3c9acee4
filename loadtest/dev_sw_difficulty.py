"""Choose the SW router's difficulty neighbourhood on dev data (issue 22, models/sw_ranking.py "Difficulty").

    python -m loadtest.dev_sw_difficulty [--k 0 16 64 256] --out benchmarks/dev_sw_difficulty.json

Scores the served sw_ranking artifact (nothing is retrained) with each `difficulty_k` in --k (0: the paper's
p_strong) on the four dev benchmarks, each for its own pair, with a 95 % bootstrap interval and paired P(> k = 0),
P(> length) and P(> random) from the same resamples, and on the two dev obvious-prompt files (the committed one and
the first held-out one, read once at the end of issue 22's first round and a dev file since). Never the paper's
benchmarks or `obvious_prompts_heldout2.jsonl`. After the choice, `--bench mt-bench mmlu gsm8k --no-obvious` reports
the same paired comparison on the paper's benchmarks (`benchmarks/sw_difficulty_paper.json`), never to choose on.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import date
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from index.paths import data_dir
    from models import pipeline
    from models.benchmarks import DEV_BENCHMARKS, load_benchmark
    from models.metrics import bootstrap_curves, p_greater, percentile_interval, summarize
    from models.obvious import OBVIOUS_HELDOUT_PATH, OBVIOUS_PATH, obvious_report
    from models.sw_ranking import SWRankingRouter

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[0, 16, 64, 256])
    parser.add_argument("--home")
    parser.add_argument("--bench", nargs="+", default=list(DEV_BENCHMARKS))
    parser.add_argument("--no-obvious", action="store_true")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--out", required=True)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    ws = pipeline.workspace(args.home)
    report: dict = {"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
                    "command": " ".join(["python -m loadtest.dev_sw_difficulty", *argv]), "benchmarks": {}, "obvious": {}}

    def router(k: int, strong: str | None = None, weak: str | None = None) -> SWRankingRouter:
        pair = {"strong": strong, "weak": weak} if strong else {}
        return SWRankingRouter.from_artifacts(ws.routers, embedder=ws.embedder, difficulty_k=k, **pair)

    for name in args.bench:
        bench = load_benchmark(name, data_dir(None))
        vectors = np.asarray(ws.embedder.embed(list(bench.prompts), what=f"{name} prompts"), dtype=np.float32)
        scores = [router(k, bench.strong_model, bench.weak_model).score_embeddings(vectors) for k in args.k]
        lengths = np.array([len(p) for p in bench.prompts], dtype=np.float64)
        boot = bootstrap_curves([*scores, lengths], bench.strong, bench.weak, n_resamples=args.bootstrap, seed=0)
        rows = {}
        for i, k in enumerate(args.k):
            rows[f"k={k}"] = {"apgr": round(float(summarize(scores[i], bench.strong, bench.weak)["apgr"]), 4),
                              "ci95": [round(v, 4) for v in percentile_interval(boot.apgr[i])],
                              "p_above_k0": round(p_greater(boot.apgr[i], boot.apgr[0]), 3),
                              "p_above_length": round(p_greater(boot.apgr[i], boot.apgr[-1]), 3),
                              "p_above_random": round(p_greater(boot.apgr[i], boot.random_apgr), 3)}
        report["benchmarks"][name] = {"pair": [bench.strong_model, bench.weak_model], "prompts": len(bench.prompts), **rows}
        print(name, json.dumps(rows), flush=True)
    for path in () if args.no_obvious else (OBVIOUS_PATH, OBVIOUS_HELDOUT_PATH):
        entries = obvious_report({f"k={k}": router(k) for k in args.k}, path, n_bootstrap=args.bootstrap)
        report["obvious"][path.name] = {name: {key: entries[name][key] for key in ("auc", "auc_ci95", "auc_balanced",
                                                                                  "auc_balanced_ci95")}
                                        for name in entries}
        print(path.name, json.dumps({n: [round(e["auc"], 3), round(e["auc_balanced"], 3)] for n, e in entries.items()}))
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
