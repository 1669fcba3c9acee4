"""Design choices made on the dev benchmarks (DESIGN §3): tier fitting and count, training sources, tie rule and
SW's γ.

For every variant the SW router is rebuilt in memory from the cached embeddings and scored on the four dev
benchmarks (each for its own strong/weak pair) and on the obvious-prompts check (models/obvious.py, for the
served pair); the paper's three benchmarks are never read here. Writes one JSON with every figure:

    python -m loadtest.dev_choices --out benchmarks/dev_choices.json
    python -m loadtest.dev_choices --source-sets alpaca-pass-fail --tier-weightings correctness \
        --ties half weak drop --gammas 1000 10000 100000 --out benchmarks/dev_ties.json
    python -m loadtest.dev_choices --source-sets alpaca-pass-fail --tier-weightings correctness \
        --n-tiers 5 10 20 30 40 --gammas 1000 10000 100000 --out benchmarks/dev_tiers.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

TIER_WEIGHTINGS = ("battles", "sources", "correctness")
CORRECTNESS = ("routerdc", "routerbench", "mmlu-pro", "faithful-cot", "theoremqa")
SOURCE_SETS = {
    "alpaca-pass-fail": ("alpaca-eval-1", *CORRECTNESS),  # AlpacaEval-1 as pass/fail against its baseline
    "alpaca-raw": ("alpaca-eval-1-raw", *CORRECTNESS),  # AlpacaEval-1 as the judge's model-vs-baseline battles
    "no-alpaca": CORRECTNESS,
}
GAMMAS = (10.0, 100.0, 1e3, 1e4, 1e5)


def sw_routers(td, embedder, pairs: list[tuple[str, str]], ties: str = "half") -> dict:
    """SW routers over td's battles for each pair (one in-memory index); None for a pair that shares a tier."""
    from index.store import VectorStore
    from models import bradley_terry
    from models.sw_ranking import SWRankingRouter

    prompts, counts = bradley_terry.prompt_tier_counts(td.battles, td.tiers, td.n_tiers, ties)
    vectors = embedder.embed(list(prompts))
    store = VectorStore.build(vectors, embedder=embedder.name)
    routers = {}
    for strong, weak in pairs:
        ok = strong in td.tiers and weak in td.tiers and td.tiers[strong] != td.tiers[weak]
        # Battle-weighted counts over every tier: the SW these choices were made with (the prompt weighting and
        # tier window came after them, `loadtest.dev_sw_variants`), so the committed rows stay reproducible.
        routers[(strong, weak)] = SWRankingRouter(store, counts, vectors.astype(np.float64).sum(axis=0), td.tiers,
                                                  embedder, strong=strong, weak=weak, tier_window=None,
                                                  difficulty_k=0) if ok else None
    return routers


def main(argv: list[str] | None = None) -> None:
    from index.embedder import load_embedder
    from models import bradley_terry
    from models import data as training
    from models.benchmarks import DEV_BENCHMARKS, evaluation_prompts, load_benchmark
    from models.base import DEFAULT_STRONG, DEFAULT_WEAK
    from models.metrics import summarize
    from models.obvious import auc, load_obvious
    from index.paths import artifacts_dir, data_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/dev_choices.json"))
    parser.add_argument("--gammas", type=float, nargs="+", default=list(GAMMAS))
    parser.add_argument("--tier-weightings", nargs="+", default=list(TIER_WEIGHTINGS))
    parser.add_argument("--source-sets", nargs="+", default=list(SOURCE_SETS))
    parser.add_argument("--ties", nargs="+", default=["half"], choices=bradley_terry.TIE_RULES)
    parser.add_argument("--n-tiers", nargs="+", type=int, default=[training.N_TIERS])
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
    for sources, weighting, n_tiers in itertools.product(args.source_sets, args.tier_weightings, args.n_tiers):
        td = training.build(data, eval_prompts, lambda t, what: embedder.embed(t), sources=SOURCE_SETS[sources],
                            tier_weighting=weighting, n_tiers=n_tiers)
        pairs = [(b.strong_model, b.weak_model) for b in benches.values()] + [(DEFAULT_STRONG, DEFAULT_WEAK)]
        for ties in args.ties:
            routers = sw_routers(td, embedder, pairs, ties)
            for gamma in args.gammas:
                row = {"sources": sources, "tier_weighting": weighting, "n_tiers": n_tiers, "ties": ties, "gamma": gamma,
                       "apgr": {}}
                for router in filter(None, routers.values()):
                    router.gamma = gamma
                for name, bench in benches.items():
                    router = routers[(bench.strong_model, bench.weak_model)]
                    row["apgr"][name] = None if router is None else summarize(router.score(bench.prompts), bench.strong, bench.weak)["apgr"]
                router = routers[(DEFAULT_STRONG, DEFAULT_WEAK)]
                if router is not None:
                    p = router.score(obvious["prompt"].tolist())
                    row["obvious_auc"] = auc(p, hard)
                    row["obvious_auc_balanced"] = auc(p[balanced], hard[balanced])
                log.info("%s", row)
                results.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = "python -m loadtest.dev_choices " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.write_text(json.dumps({"command": command, "rows": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
