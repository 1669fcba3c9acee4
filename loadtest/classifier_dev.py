"""Train a classifier router under several label settings and score each on dev data only.

    python -m loadtest.classifier_dev --router bert --variants "0,false" "128,false" "128,true" \
        --options '{"epochs": 1}' --out benchmarks/classifier_dev_bert.json

A variant is "label_neighbours,label_stretch[,label_source]" (models/labels.py, `classifier_outcomes`). Each is
trained into its own folder under --work and scored on the four dev benchmarks (APGR with a 95 % bootstrap interval, each benchmark
read for the default pair, as `turnout eval` scores a classifier trained for it) and on the dev obvious-prompt files
(AUC, whole and length-balanced): the committed one and the later ones already read once. Never the paper's
benchmarks or the never-chosen-on obvious file (models/obvious.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

def main(argv: list[str] | None = None) -> int:
    from index.paths import data_dir
    from models import pipeline
    from models.benchmarks import DEV_BENCHMARKS, load_benchmark
    from models.metrics import bootstrap_curves, p_greater, percentile_interval, summarize
    from models.obvious import OBVIOUS_HELDOUT2_PATH, OBVIOUS_HELDOUT_PATH, OBVIOUS_PATH, obvious_report
    from models.registry import entry

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--router", required=True, choices=("bert", "causal_llm"))
    parser.add_argument("--variants", nargs="+", required=True)
    parser.add_argument("--options", default="{}", help="JSON: trainer options shared by every variant")
    parser.add_argument("--home")
    parser.add_argument("--work", default="/tmp/classifier_dev")
    parser.add_argument("--out", required=True)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    ws = pipeline.workspace(args.home)
    td = pipeline.training_data(ws)
    benches = [load_benchmark(name, data_dir(None)) for name in DEV_BENCHMARKS]
    spec = entry(args.router)
    report = {"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
              "command": " ".join(["python -m loadtest.classifier_dev", *argv]), "variants": {}}
    for variant in args.variants:
        neighbours, stretch, *source = variant.split(",")
        options = {**json.loads(args.options), "label_neighbours": int(neighbours),
                   "label_stretch": stretch.strip().lower() == "true", "label_source": (source or ["battles"])[0]}
        config = pipeline.trainer_config(args.router, options, ws.home)
        root = Path(args.work) / variant.replace(",", "_")
        started = time.perf_counter()
        spec.trainer_function()(td, ws.embedder, root, config, progress=True)
        router = spec.router_class().from_artifacts(root)
        entry_ = {"train_seconds": round(time.perf_counter() - started, 1),
                  "meta": json.loads((root / args.router / "meta.json").read_text())["validation"]}
        for bench in benches:
            scores = router.score(bench.prompts)
            apgr = float(summarize(scores, bench.strong, bench.weak)["apgr"])
            lengths = np.array([len(p) for p in bench.prompts], dtype=np.float64)
            boot = bootstrap_curves([scores, lengths], bench.strong, bench.weak, n_resamples=1000, seed=0)
            entry_[bench.name] = {"apgr": round(apgr, 4),
                                  "ci95": [round(v, 4) for v in percentile_interval(boot.apgr[0])],
                                  "p_above_random": round(p_greater(boot.apgr[0], boot.random_apgr), 3),
                                  "p_above_length": round(p_greater(boot.apgr[0], boot.apgr[1]), 3)}
        for path in (OBVIOUS_PATH, OBVIOUS_HELDOUT_PATH, OBVIOUS_HELDOUT2_PATH):
            obvious = obvious_report({args.router: router}, path, n_bootstrap=200)[args.router]
            entry_[f"{path.stem}_auc"] = [round(obvious["auc"], 3), round(obvious["auc_balanced"], 3)]
        report["variants"][variant] = entry_
        print(variant, json.dumps(entry_), flush=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
