"""SW's per-batch scoring with the difficulty's neighbours taken from the similarity scan the win matrices already
do, against a second index search for them (how it scored before), interleaved in one process.

    OMP_NUM_THREADS=1 python -m loadtest.sw_scan [--rounds 5] --out benchmarks/sw_scan.json

The served sw_ranking artifact scores the dev benchmarks' prompts (cached embeddings) in batches of 1, 8 and 32 (a
replica's batch sizes), both ways in each round, alternating which goes first; the median of the rounds' ms per
prompt. One thread, as a replica's embedding deployment runs by default on this machine. Both ways give the same
p_strong (tests/models/test_sw_ranking.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np


def two_searches(router, batch: np.ndarray) -> np.ndarray:
    """p_strong as it was scored before: the win matrices, then a separate index search for the difficulty."""
    from models import irt

    p = np.clip(router.pair_p_strong(router.win_matrices(batch)), 1e-12, 1 - 1e-12)
    return irt.pair_p_strong(router.ability_weak, np.log(p) - np.log1p(-p), router.query_difficulty(batch))


def main(argv: list[str] | None = None) -> int:
    from models import pipeline
    from models.benchmarks import DEV_BENCHMARKS, load_benchmark

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--out", default="benchmarks/sw_scan.json")
    args = parser.parse_args(argv)
    ws = pipeline.workspace(args.home)
    prompts = [p for b in DEV_BENCHMARKS for p in load_benchmark(b, ws.data()).prompts]
    rng = np.random.default_rng(0)
    sample = [prompts[i] for i in rng.permutation(len(prompts))[:args.prompts]]
    queries = np.asarray(ws.embedder.embed(sample), dtype=np.float32)
    router = pipeline.load(ws, "sw_ranking", build_missing=False)
    ways = {"two searches": lambda b: two_searches(router, b), "one scan": router.score_embeddings}
    np.testing.assert_allclose(ways["one scan"](queries[:64]), ways["two searches"](queries[:64]), rtol=1e-6)
    timings: dict[str, dict[str, list[float]]] = {str(b): {w: [] for w in ways} for b in (1, 8, 32)}
    for r in range(args.rounds):
        for size, per_way in timings.items():
            order = list(ways) if r % 2 == 0 else list(ways)[::-1]
            for way in order:
                start = time.perf_counter()
                for i in range(0, len(queries), int(size)):
                    ways[way](queries[i: i + int(size)])
                per_way[way].append((time.perf_counter() - start) * 1000.0 / len(queries))
    result = {"command": "python -m loadtest.sw_scan " + " ".join(argv or []), "date": date.today().isoformat(),
              "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "prompts": len(queries),
              "index_prompts": router.store.ntotal, "difficulty_k": router.difficulty_k, "rounds": args.rounds,
              "ms_per_prompt_median": {size: {w: round(float(np.median(v)), 3) for w, v in per_way.items()}
                                       for size, per_way in timings.items()},
              "ms_per_prompt_rounds": {size: {w: [round(x, 3) for x in v] for w, v in per_way.items()}
                                       for size, per_way in timings.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["ms_per_prompt_median"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
