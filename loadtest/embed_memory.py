"""RSS and time of the MiniLM embedder under varied input shapes, for several token-padding multiples.

    python -m loadtest.embed_memory --pad 1 16 32 --calls 400 --out benchmarks/embed_memory.json

Each padding multiple runs in a fresh interpreter (memory is per process), one thread, the same seeded random
batches (1-8 prompts of 1-120 words, as the embedding deployment's micro-batches come): `--pad 1` is no padding.
Prints and records RSS growth over the first warm-up call every 100 calls, and the mean time per call.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import date
from pathlib import Path

WORDS = ("the quick brown fox jumps over a lazy dog while solving integrals of rational functions and writing "
         "a short poem about trains").split()


def run_one(pad: int, calls: int, seed: int = 0) -> dict:
    """In this process: embed `calls` random batches with PAD_TOKENS = pad; RSS growth and ms per call."""
    import random
    import time

    import psutil

    import index.embedder as embedder_module

    embedder_module.PAD_TOKENS = pad
    embedder = embedder_module.load_embedder("minilm")
    embedder.embed(["warm up"])
    rng, process = random.Random(seed), psutil.Process()
    rss0, spent, growth = process.memory_info().rss, 0.0, {}
    for i in range(1, calls + 1):
        batch = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 120))) for _ in range(rng.randint(1, 8))]
        start = time.perf_counter()
        embedder.embed(batch, batch_size=8)
        spent += time.perf_counter() - start
        if i % 100 == 0 or i == calls:
            growth[i] = round((process.memory_info().rss - rss0) / 2**20, 1)
    return {"pad": pad, "calls": calls, "rss_growth_mb": growth, "ms_per_call": round(spent / calls * 1000.0, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pad", type=int, nargs="+", default=[1, 16, 32])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # the child process' mode
    args = parser.parse_args(argv)
    if any(p < 1 for p in args.pad) or args.calls < 1:
        parser.error("--pad values and --calls must be at least 1")
    if args.one:
        print(json.dumps(run_one(args.pad[0], args.calls)))
        return 0
    runs = []
    for pad in args.pad:
        child = subprocess.run([sys.executable, "-m", "loadtest.embed_memory", "--one", "--pad", str(pad),
                                "--calls", str(args.calls)], capture_output=True, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
        if child.returncode != 0:
            print(f"pad {pad}: the child failed: {child.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            return 1
        runs.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(runs[-1], flush=True)
    if args.out:
        out = {"command": "python -m loadtest.embed_memory " + " ".join(argv if argv is not None else sys.argv[1:]),
               "machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": date.today().isoformat(),
               "load_average": os.getloadavg(), "runs": runs}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
