"""Scoring-throughput benchmark for the embedding routers (SW ranking, MF) on this machine.

    python -m loadtest.scoring [--home DIR] [--batch 256] [--out benchmarks/speed.json]

It scores the MMLU+GSM8K+MT-Bench evaluation prompts and reports, per router, the prompts/s of the routing step
on precomputed embeddings (FAISS search + weighted BT fit for SW, one dot product for MF) and, separately, of
MiniLM embedding itself (uncached), since a live request pays both.
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


def _rate(fn, items: np.ndarray, batch: int, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(items), batch):
            fn(items[i: i + batch])
        best = min(best, time.perf_counter() - start)
    return len(items) / best


def main(argv: list[str] | None = None) -> int:
    from index.embedder import MiniLMEmbedder
    from models import pipeline
    from models.benchmarks import PAPER_BENCHMARKS, load_benchmark

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home")
    parser.add_argument("--data-dir")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--out", default="benchmarks/speed.json")
    args = parser.parse_args(argv)

    ws = pipeline.workspace(args.home, args.data_dir)
    data, embedder = ws.data(), ws.embedder
    prompts = [p for b in PAPER_BENCHMARKS for p in load_benchmark(b, data).prompts]
    queries = embedder.embed(prompts)  # cached: the routing step is what is timed below
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": date.today().isoformat(),
              "prompts": len(prompts), "batch": args.batch, "routers": {}}
    for name in ("sw_ranking", "mf"):
        router = pipeline.load(ws, name, build_missing=False)
        entry = {"prompts_per_s_from_embeddings": round(_rate(router.score_embeddings, queries, args.batch), 1)}
        if name == "sw_ranking":
            entry.update(index_prompts=router.store.ntotal, index_battles=router.store.manifest.get("battles"), k=router.k)
        result["routers"][name] = entry
    raw = MiniLMEmbedder()
    sample = np.asarray(prompts[:512], dtype=object)
    raw.embed(list(sample[:8]))  # load the model outside the timing
    result["minilm_prompts_per_s"] = {str(b): round(_rate(lambda x: raw.embed(list(x), batch_size=b), sample, b, 1), 1) for b in (1, 32)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
