"""Design choices made on the dev benchmarks (DESIGN §3): tier fitting, training sources and SW's γ.

For every variant the SW router is rebuilt in memory from the cached embeddings and scored on the four dev
benchmarks (each for its own strong/weak pair) and on the obvious-prompts check (models/obvious.py, for the
served pair); the paper's three benchmarks are never read here. Writes one JSON with every figure:

    python -m loadtest.dev_choices --out benchmarks/dev_choices.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

TIER_WEIGHTINGS = ("battles", "sources", "correctness")
SOURCE_SETS = {
    "all": ("alpaca-eval-1", "routerdc", "routerbench", "mmlu-pro", "faithful-cot", "theoremqa"),
    "no-alpaca": ("routerdc", "routerbench", "mmlu-pro", "faithful-cot", "theoremqa"),
}
GAMMAS = (10.0, 100.0, 1e3, 1e4, 1e5)


def sw_router(td, embedder, strong: str, weak: str, gamma: float):
    """An SW router over td's battles, index in memory; None when the pair shares a tier or has none."""
    from index.store import VectorStore
    from models import bradley_terry
    from models.sw_ranking import SWRankingRouter

    if strong not in td.tiers or weak not in td.tiers or td.tiers[strong] == td.tiers[weak]:
        return None
    prompts, counts = bradley_terry.prompt_tier_counts(td.battles, td.tiers, td.n_tiers)
    vectors = embedder.embed(list(prompts))
    store = VectorStore.build(vectors, embedder=embedder.name)
    return SWRankingRouter(store, counts, vectors.astype(np.float64).sum(axis=0), td.tiers, embedder,
                           strong=strong, weak=weak, gamma=gamma)


def main(argv: list[str] | None = None) -> None:
    from index.embedder import load_embedder
    from models import data as training
    from models.benchmarks import DEV_BENCHMARKS, evaluation_prompts, load_benchmark
    from models.base import DEFAULT_STRONG, DEFAULT_WEAK
    from models.metrics import summarize
    from models.obvious import auc, load_obvious
    from models.paths import artifacts_dir, data_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/dev_choices.json"))
    parser.add_argument("--gammas", type=float, nargs="+", default=list(GAMMAS))
    parser.add_argument("--tier-weightings", nargs="+", default=list(TIER_WEIGHTINGS))
    parser.add_argument("--source-sets", nargs="+", default=list(SOURCE_SETS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    data = data_dir(None)
    embedder = load_embedder("minilm", cache_dir=artifacts_dir(None) / "embeddings")
    benches = {name: load_benchmark(name, data) for name in DEV_BENCHMARKS}
    obvious = load_obvious()
    hard = obvious["is_hard"].to_numpy()
    balanced = obvious["balanced"].to_numpy(dtype=bool)
    eval_prompts = sorted(evaluation_prompts(data))
    results = []
    for sources, weighting in itertools.product(args.source_sets, args.tier_weightings):
        td = training.build(data, eval_prompts, lambda t: embedder.embed(t), sources=SOURCE_SETS[sources],
                            tier_weighting=weighting)
        for gamma in args.gammas:
            row = {"sources": sources, "tier_weighting": weighting, "gamma": gamma, "apgr": {}}
            for name, bench in benches.items():
                router = sw_router(td, embedder, bench.strong_model, bench.weak_model, gamma)
                row["apgr"][name] = None if router is None else summarize(router.score(bench.prompts), bench.strong, bench.weak)["apgr"]
            router = sw_router(td, embedder, DEFAULT_STRONG, DEFAULT_WEAK, gamma)
            if router is not None:
                p = router.score(obvious["prompt"].tolist())
                row["obvious_auc"] = auc(p, hard)
                row["obvious_auc_balanced"] = auc(p[balanced], hard[balanced])
            log.info("%s", row)
            results.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
