"""HTTP load generator for the route endpoint: closed-loop clients, latency percentiles and throughput.

    python -m loadtest.http_load --url http://127.0.0.1:8000 --router sw_ranking --clients 1 32 \\
        --duration 20 --out benchmarks/serving.json

Each client sends `POST /v1/route` with a prompt drawn from the evaluation sets (MT-Bench turn 1, MMLU, GSM8K),
waits for the answer and sends the next one. Latency is measured at the client, so it includes HTTP, the Ray
Serve proxy and every deployment hop. Non-200 answers count as errors and are reported, never dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np


async def _client(session, url: str, body: dict, prompts: list[str], stop_at: float, seed: int,
                  latencies: list[float], errors: list[int], honour_retry_after: bool = False) -> None:
    rng = np.random.default_rng(seed)
    while time.perf_counter() < stop_at:
        payload = {**body, "prompt": prompts[int(rng.integers(len(prompts)))]}
        start = time.perf_counter()
        async with session.post(url, json=payload) as response:
            await response.read()
            status, retry_after = response.status, response.headers.get("retry-after")
        elapsed = time.perf_counter() - start
        if status == 200:
            latencies.append(elapsed)
        else:
            errors.append(status)
            if honour_retry_after and retry_after:
                await asyncio.sleep(min(float(retry_after), max(0.0, stop_at - time.perf_counter())))


async def run_level(url: str, router: str, prompts: list[str], clients: int, duration: float, warmup: float,
                    honour_retry_after: bool = False) -> dict:
    # aiohttp: the generator shares this machine's cores with the service, so it must be cheap per request;
    # `client_cpu_share` reports what it took (recorded per level in benchmarks/serving*.json).
    import aiohttp

    body = {"router": router}
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        # Warm-up: connections, replica caches, first exact-scan load; not measured.
        await asyncio.gather(*(_client(session, url, body, prompts, time.perf_counter() + warmup, i, [], [])
                               for i in range(clients)))
        latencies: list[float] = []
        errors: list[int] = []
        cpu_start, start = time.process_time(), time.perf_counter()
        await asyncio.gather(*(_client(session, url, body, prompts, start + duration, 1000 + i, latencies, errors,
                                       honour_retry_after) for i in range(clients)))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    ms = np.asarray(latencies) * 1000.0
    return {
        "router": router, "clients": clients, "honour_retry_after": honour_retry_after,
        "requests": len(latencies), "errors": len(errors),
        "error_codes": {str(c): errors.count(c) for c in sorted(set(errors))}, "seconds": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 1),
        "errors_per_s": round(len(errors) / wall, 1),
        **{f"p{q}_ms": round(float(np.percentile(ms, q)), 1) if len(ms) else None for q in (50, 90, 99)},
        "client_cpu_share": round(cpu / wall, 3),  # of one core: what the generator took from the service
    }


def main(argv: list[str] | None = None) -> int:
    from models.benchmarks import PAPER_BENCHMARKS, load_benchmark
    from index.paths import data_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--router", nargs="+", default=["sw_ranking", "mf"])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured per (router, clients) level")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--honour-retry-after", action="store_true",
                        help="after a 503 with Retry-After, wait that long (as a well-behaved client does); "
                        "without it every client retries at once, the worst case")
    parser.add_argument("--data-dir")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)

    data = data_dir(args.data_dir)
    prompts = [p for b in PAPER_BENCHMARKS for p in load_benchmark(b, data).prompts]
    url = args.url.rstrip("/") + "/v1/route"
    levels = []
    for router in args.router:
        for clients in args.clients:
            level = asyncio.run(run_level(url, router, prompts, clients, args.duration, args.warmup,
                                          args.honour_retry_after))
            print(json.dumps(level), flush=True)
            levels.append(level)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": date.today().isoformat(),
              "url": url, "duration_s": args.duration, "levels": levels}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
