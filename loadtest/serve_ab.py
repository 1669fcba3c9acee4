"""A/B of whole services over HTTP, interleaved: latency, throughput and CPU per routed request, next to MiniLM.

    python -m loadtest.serve_ab --variant new="turnout serve --port {port}" \\
        --variant old="PYTHONPATH=/tmp/old python -m serve.cli serve --port {port} --home /tmp/home-old" \\
        --router sw_ranking mf --clients 1 32 --rounds 3 --duration 15 --out benchmarks/serving_ab.json

This machine's speed drifts by tens of percent within an hour, so a figure from one start compared with a figure
from another start an hour later says little. Here every round starts each variant in turn (order alternating
between rounds), waits for /readyz, measures every (router, clients) level with `loadtest.http_load`'s closed-loop
clients, and stops it again; the report gives per-round figures and their medians.

Per level:
- latency percentiles and requests/s at the client (HTTP, the Serve proxy and every deployment hop included);
- service CPU per request: the machine's busy CPU time over the level (/proc/stat, all cores) minus the load
  generator's own, divided by the answered requests. It charges every process of the service (proxy, replicas,
  Ray's own daemons) and nothing of the generator; whatever else runs on the machine counts too, so run it idle;
- the same split by process: CPU ms per answered request of each process in the variant's session (Ray's workers
  and daemons stay in the session `turnout serve` starts), named by role (a Serve deployment, the HTTP proxy, the
  Serve controller, raylet, GCS, ...), so a change can be traced to the hop that pays for it;
- MiniLM's own single-prompt time, measured in this process between the levels on the same prompts: the floor
  that a request which embeds its prompt once cannot go below.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import time
from datetime import date
from pathlib import Path

import numpy as np


def busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (user, nice, system, irq, softirq, steal) since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def process_role(cmdline: str, comm: str) -> str:
    """What a process of the service is: the Serve deployment a replica runs, Ray's proxy/controller, or its
    executable's name (raylet, gcs_server, the driver's python)."""
    if cmdline.startswith("ray::ServeReplica:"):
        return cmdline.split()[0].split(":")[-1]  # ray::ServeReplica:<app>:<Deployment>
    if cmdline.startswith("ray::"):
        return cmdline.split()[0].removeprefix("ray::")
    return comm


def session_cpu(session: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of every live process in `session`, summed by `process_role`."""
    tick = os.sysconf("SC_CLK_TCK")
    cpu: dict[str, float] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone since the listing
            continue
        comm, fields = stat[stat.index("(") + 1: stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) != session:  # fields[3]: the session id (field 6 of /proc/<pid>/stat)
            continue
        role = process_role(cmdline, comm)
        cpu[role] = cpu.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return cpu


def start(command: str, port: int, timeout_s: float = 300.0) -> subprocess.Popen:
    """Start one variant's service (its own process group) and wait until /readyz answers 200."""
    import httpx

    process = subprocess.Popen(command.format(port=port), shell=True, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{command!r} exited with {process.returncode} before it was ready")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(1.0)
    stop(process)
    raise RuntimeError(f"{command!r} was not ready within {timeout_s:.0f}s")


def stop(process: subprocess.Popen) -> None:
    """SIGINT to the group (what Ctrl-C sends: turnout serve shuts Ray down), SIGKILL if it lingers."""
    try:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass
    time.sleep(3.0)  # Ray's daemons exit after the driver: let them go before the next variant starts


def minilm_ms(embedder, prompts: list[str], n: int = 100) -> float:
    """Median ms of one single-prompt MiniLM embedding over `n` prompts."""
    times = []
    for prompt in prompts[:n]:
        t0 = time.perf_counter()
        embedder.embed([prompt])
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(np.median(times))


def measure(url: str, router: str, prompts: list[str], clients: int, duration: float, warmup: float,
            session: int | None = None) -> dict:
    from loadtest.http_load import run_level

    # run_level warms up first; busy time is read around the whole call and the warm-up share removed by rate
    per_process0 = session_cpu(session) if session is not None else {}
    busy0, cpu0, t0 = busy_seconds(), time.process_time(), time.perf_counter()
    level = asyncio.run(run_level(url, router, prompts, clients, duration, warmup))
    busy, own, wall = busy_seconds() - busy0, time.process_time() - cpu0, time.perf_counter() - t0
    per_process = session_cpu(session) if session is not None else {}
    answered_per_s = level["requests"] / level["seconds"] if level["seconds"] else 0.0
    # requests in the warm-up ran at about the measured rate: charge the CPU over all of them
    total = answered_per_s * wall
    level["service_cpu_ms_per_request"] = round((busy - own) / total * 1000.0, 2) if total else None
    level["service_cpu_cores"] = round((busy - own) / wall, 2)
    if total and per_process:
        spent = {role: seconds - per_process0.get(role, 0.0) for role, seconds in per_process.items()}
        level["process_cpu_ms_per_request"] = {role: round(seconds / total * 1000.0, 2)
                                               for role, seconds in sorted(spent.items(), key=lambda kv: -kv[1])
                                               if seconds > 0}
    return level


def main(argv: list[str] | None = None) -> int:
    from index.embedder import load_embedder
    from index.paths import data_dir
    from models.benchmarks import PAPER_BENCHMARKS, load_benchmark

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", required=True, metavar="NAME=COMMAND",
                        help="a service command with {port} where its HTTP port goes; give two or more")
    parser.add_argument("--router", nargs="+", default=["sw_ranking", "mf"])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--data-dir")
    parser.add_argument("--out", default="benchmarks/serving_ab.json")
    args = parser.parse_args(argv)
    variants = dict(v.split("=", 1) for v in args.variant)
    if len(variants) < 2 or any(not c.strip() for c in variants.values()):
        parser.error("give at least two --variant NAME=COMMAND")

    data = data_dir(args.data_dir)
    prompts = [p for b in PAPER_BENCHMARKS for p in load_benchmark(b, data).prompts]
    rng = np.random.default_rng(0)
    sample = [prompts[i] for i in rng.choice(len(prompts), size=100, replace=False)]
    embedder = load_embedder("minilm")
    embedder.embed(["warm-up"])
    url = f"http://127.0.0.1:{args.port}/v1/route"
    rounds = []
    for r in range(args.rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        result: dict = {"round": r, "order": order, "variants": {}}
        for name in order:
            process = start(variants[name], args.port)
            try:
                levels = []
                for router in args.router:
                    for clients in args.clients:
                        level = measure(url, router, prompts, clients, args.duration, args.warmup,
                                        session=process.pid)  # start_new_session: its pid is the session id
                        level["minilm_ms"] = round(minilm_ms(embedder, sample), 2)
                        levels.append(level)
                        print(json.dumps({"round": r, "variant": name, **level}), flush=True)
            finally:
                stop(process)
            result["variants"][name] = levels
        rounds.append(result)
    summary = {}
    for name in variants:
        for router in args.router:
            for clients in args.clients:
                rows = [lv for rd in rounds for lv in rd["variants"][name]
                        if lv["router"] == router and lv["clients"] == clients]
                keys = ("requests_per_s", "p50_ms", "p90_ms", "p99_ms", "service_cpu_ms_per_request", "minilm_ms")
                entry = {k: round(float(np.median([row[k] for row in rows])), 2) for k in keys}
                entry["p50_over_minilm"] = round(float(np.median([row["p50_ms"] / row["minilm_ms"] for row in rows])), 2)
                entry["errors"] = int(sum(row["errors"] for row in rows))
                summary[f"{name} {router} {clients}"] = entry
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": date.today().isoformat(),
           "variants": variants, "duration_s": args.duration, "rounds": rounds, "median": summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    for key, entry in summary.items():
        print(key, entry)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
