"""Scoring throughput of the classifier routers (causal_llm through vLLM's classify runner, bert) on this machine.

    python -m loadtest.causal_speed [--router causal_llm] [--backend vllm] [--dtype float32|bfloat16] [--n 256]
        [--out benchmarks/causal_speed.json]

Prompts are the evaluation prompts (GSM8K, MT-Bench turn 1, MMLU), interleaved and cut to the first `--n`.
Batch 1: p50/p90 latency per request. Batch 32: prompts/s over the same prompts. One warm-up batch first.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    from models.benchmarks import load_benchmark
    from index.paths import artifacts_dir, data_dir
    from models.registry import router_class

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--router", default="causal_llm", choices=["causal_llm", "bert"])
    parser.add_argument("--backend", default="vllm", help="causal_llm: vllm or transformers")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="causal_llm: engine dtype (bfloat16 is fast where the CPU has AVX512-BF16/AMX)")
    parser.add_argument("--home")
    parser.add_argument("--data-dir")
    parser.add_argument("--n", type=int, default=256, help="prompts per measurement")
    parser.add_argument("--out", default="benchmarks/causal_speed.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    home, data = artifacts_dir(args.home), data_dir(args.data_dir)
    benches = [load_benchmark(b, data).prompts for b in ("gsm8k", "mt-bench", "mmlu")]
    prompts = [p for group in zip(*[b[: args.n] for b in benches if len(b) >= 1]) for p in group]
    prompts = (prompts + [p for b in benches for p in b])[: args.n]
    options = {"backend": args.backend, "dtype": args.dtype} if args.router == "causal_llm" else {}
    started = time.perf_counter()
    router = router_class(args.router).from_artifacts(home / "routers", batch_size=32, **options)
    load_s = time.perf_counter() - started
    router.score(prompts[:32])  # warm-up

    latencies = []
    for p in prompts:
        t = time.perf_counter()
        router.score([p])
        latencies.append(time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(0, len(prompts), 32):
        router.score(prompts[i: i + 32])
    batch32_s = time.perf_counter() - t
    lat = np.array(latencies) * 1000
    result = {
        "router": args.router, "backend": getattr(router, "backend", "torch"), "dtype": options.get("dtype"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "torch_threads": _threads(), "date": date.today().isoformat(), "prompts": len(prompts), "load_s": round(load_s, 1),
        "batch1_ms": {"p50": round(float(np.percentile(lat, 50)), 1), "p90": round(float(np.percentile(lat, 90)), 1),
                      "mean": round(float(lat.mean()), 1)},
        "batch32_prompts_per_s": round(len(prompts) / batch32_s, 1),
        "truncated": getattr(router, "truncated", None),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    key = f"{args.router}/{result['backend']}" + ("/bfloat16" if options.get("dtype") == "bfloat16" else "")
    previous[key] = result
    out.write_text(json.dumps(previous, indent=1) + "\n")
    log.info("%s", json.dumps(result))
    return 0


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    raise SystemExit(main())
