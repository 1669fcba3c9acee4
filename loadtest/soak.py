"""Soak: a long closed-loop load on /v1/route, with the memory of every Serve and Ray process over time.

    python -m loadtest.soak --minutes 10 --clients 16 --out benchmarks/soak.json

The real service (the embedded default, or `--config FILE`) is started in this process as `turnout serve` starts
it (`loadtest.faults.Service`: `serve.launch.configure` and `serve_forever`), its upstreams on the fake OpenAI
server of `loadtest.faults` (unused by /v1/route, there so that the config is complete and offline). `--clients`
closed-loop clients on 127.0.0.1 send `POST /v1/route` with prompts from the paper's benchmarks for `--minutes`.

Every `--sample-s` seconds (and at the start and the end) the resident set size (RSS, psutil) of each process of
this run's Ray is read: the replicas (ingress, embedding, classifier if deployed), the Serve proxy and controller,
the raylet and the GCS, and Ray's other helpers; processes are found among this process's descendants and named
by their process title (`ray::ServeReplica:<app>:<deployment>`, `ray::ProxyActor`, ...), so that another Ray on
the same machine is never counted. Per minute: requests, p50/p99 latency at the client, errors by status and
code. The summary: RSS growth per process (first to last sample; `restarted` when the pid changed), the p99 drift
(last minute against the first) and the error count.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from loadtest.report_cli import main_printing_summary
from loadtest.faults import ROUTE, Record, _Parser, error_key

MAX_MINUTES = 120.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the arguments; ConfigError (one line) when they cannot make a sensible, bounded run."""
    parser = _Parser(prog="python -m loadtest.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of load")
    parser.add_argument("--clients", type=int, default=16, help="closed-loop clients on /v1/route")
    parser.add_argument("--sample-s", type=float, default=30.0, help="seconds between RSS samples")
    parser.add_argument("--router", default="sw_ranking", help="router every request asks for")
    parser.add_argument("--config", help="serve config file (default: the embedded default)")
    parser.add_argument("--data-dir", help="shared data folder (prompts of the paper's benchmarks)")
    parser.add_argument("--home", help="artifact folder (default: $TURNOUT_HOME, else <repo>/artifacts)")
    parser.add_argument("--out", default="benchmarks/soak.json")
    args = parser.parse_args(argv)
    if not args.minutes > 0:
        parser.error(f"--minutes must be > 0, got {args.minutes:g}")
    if args.minutes > MAX_MINUTES:
        parser.error(f"--minutes {args.minutes:g}: at most {MAX_MINUTES:g} (the run is meant to stay bounded)")
    if not 1 <= args.clients <= 256:
        parser.error(f"--clients must be in 1..256, got {args.clients}")
    if not args.sample_s > 0:
        parser.error(f"--sample-s must be > 0, got {args.sample_s:g}")
    if args.sample_s > args.minutes * 60:
        parser.error(f"--sample-s {args.sample_s:g} is longer than the run: no sample between start and end")
    if args.config and not Path(args.config).is_file():
        parser.error(f"--config: no such file: {args.config}")
    return args


# ------------------------------------------------------------------------------------------ processes


ROLES = {"ray::ProxyActor": "proxy", "ray::ServeController": "controller", "ray::IDLE": "idle_worker",
         "ray::DashboardAgent": "dashboard_agent", "ray::RuntimeEnvAgent": "runtime_env_agent"}
REPLICA_ROLES = {"IngressDeployment": "ingress", "EmbeddingDeployment": "embedding",
                 "ClassifierDeployment": "classifier"}
BINARY_ROLES = {"raylet": "raylet", "gcs_server": "gcs"}


def role(cmdline: str, name: str) -> str | None:
    """What a process of this run's Ray is, from its command line (Ray sets worker titles) and name; None if
    it is none of Ray's."""
    head = cmdline.split(" ")[0] if cmdline else ""
    # a worker's title names the method it runs at the moment too: ray::ProxyActor.receive_asgi_messages
    actor = head.split(".")[0] if head.startswith("ray::") else head
    if actor.startswith("ray::ServeReplica:"):
        deployment = actor.rsplit(":", 1)[-1]
        return REPLICA_ROLES.get(deployment, f"replica:{deployment}")
    if actor in ROLES:
        return ROLES[actor]
    if name in BINARY_ROLES:
        return BINARY_ROLES[name]
    if actor.startswith("ray::"):
        return actor.removeprefix("ray::")
    for module in ("log_monitor", "dashboard/agent", "runtime_env/agent", "monitor.py"):
        if module in cmdline and "ray" in cmdline:
            return module.split("/")[0].removesuffix(".py")
    return None


def ray_processes(root: int) -> dict[str, list[Any]]:
    """role -> psutil processes among `root`'s descendants."""
    import psutil

    found: dict[str, list[Any]] = {}
    try:
        children = psutil.Process(root).children(recursive=True)
    except psutil.Error:
        return found
    for process in children:
        try:
            cmdline = " ".join(process.cmdline())
            name = process.name()
        except psutil.Error:
            continue
        kind = role(cmdline, name)
        if kind is not None:
            found.setdefault(kind, []).append(process)
    return found


def rss_sample(root: int, t: float) -> dict[str, Any]:
    """{"t", "processes": {role: {"rss_mb", "pids"}}}: RSS summed over the processes of each role."""
    import psutil

    out: dict[str, dict[str, Any]] = {}
    for kind, processes in ray_processes(root).items():
        total, pids = 0, []
        for process in processes:
            try:
                total += process.memory_info().rss
                pids.append(process.pid)
            except psutil.Error:
                continue
        if pids:
            out[kind] = {"rss_mb": round(total / 2**20, 1), "pids": sorted(pids)}
    return {"t": round(t, 1), "processes": out}


def rss_growth(samples: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per role: RSS at its first and last sample, growth (MB and %), the maximum, and whether its pids changed
    (a restarted process starts small again: its growth is not a leak's)."""
    roles: dict[str, list[dict[str, Any]]] = {}
    for sample in samples:
        for kind, entry in sample["processes"].items():
            roles.setdefault(kind, []).append(entry)
    growth = {}
    for kind, entries in roles.items():
        start, end = entries[0]["rss_mb"], entries[-1]["rss_mb"]
        growth[kind] = {"start_mb": start, "end_mb": end, "growth_mb": round(end - start, 1),
                        "growth_pct": round((end - start) / start * 100.0, 1) if start else None,
                        "max_mb": max(e["rss_mb"] for e in entries),
                        "restarted": len({tuple(e["pids"]) for e in entries}) > 1}
    return growth


# ------------------------------------------------------------------------------------------ latency


def per_minute(records: list[Record], minutes: int) -> list[dict[str, Any]]:
    """Per minute of the run (by answer time; the last minute takes the answers that came after the end):
    requests, answered 2xx, p50/p99 of their latency, errors by status and code."""
    import numpy as np

    buckets: list[list[Record]] = [[] for _ in range(max(1, minutes))]
    for r in records:
        buckets[min(int(r.done // 60), len(buckets) - 1)].append(r)
    rows = []
    for i, bucket in enumerate(buckets):
        ms = np.asarray([r.latency for r in bucket if r.ok]) * 1000.0
        errors = Counter(error_key(r) for r in bucket if not r.ok)
        rows.append({"minute": i, "requests": len(bucket), "ok": int(len(ms)),
                     "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
                     "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
                     "errors": sum(errors.values()), "error_codes": dict(sorted(errors.items()))})
    return rows


def p99_drift(minutes: list[dict[str, Any]]) -> dict[str, Any]:
    """The last minute's p99 against the first's."""
    first, last = minutes[0]["p99_ms"], minutes[-1]["p99_ms"]
    ratio = round(last / first, 3) if first and last is not None else None
    return {"first_minute_p99_ms": first, "last_minute_p99_ms": last, "ratio": ratio}


# ------------------------------------------------------------------------------------------ run


class RssSampler(threading.Thread):
    def __init__(self, root: int, t0: float, interval: float):
        super().__init__(daemon=True, name="rss-sampler")
        self.root, self.t0, self.interval = root, t0, interval
        self.samples: list[dict[str, Any]] = []
        self.halt = threading.Event()

    def sample(self) -> None:
        self.samples.append(rss_sample(self.root, time.monotonic() - self.t0))

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            self.sample()


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    from ray import __version__ as ray_version

    from loadtest.faults import FakeUpstreams, Load, Service, load_prompts, machine, route_body, service_document

    begun = time.monotonic()
    load_start = [round(x, 2) for x in os.getloadavg()]
    prompts = load_prompts(args.data_dir)
    report: dict[str, Any] = {"command": command, "machine": machine(),
                              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "ray": ray_version,
                              "load_average": {"start": load_start}}
    with FakeUpstreams(slow_s=1.0) as upstreams:
        text = service_document(args.config, {side: upstreams.url(side) for side in ("strong", "weak")}, None)
        service = Service(text, args.home, args.data_dir)
        report["config"] = {"file": args.config or "embedded default", "router": args.router,
                            "deployments": service.served.config.deployments(), "clients": args.clients,
                            "minutes": args.minutes, "sample_s": args.sample_s}
        try:
            report["startup_s"] = round(service.start(600.0), 1)
            t0 = time.monotonic()
            sampler = RssSampler(os.getpid(), t0, args.sample_s)
            sampler.sample()
            sampler.start()
            load = Load(service.url, t0, [(ROUTE, route_body(prompts, args.router))] * args.clients)
            load.start()
            load_avg = []
            end = t0 + args.minutes * 60.0
            while time.monotonic() < end:
                time.sleep(min(30.0, max(0.0, end - time.monotonic())))
                load_avg.append({"t": round(time.monotonic() - t0), "load": [round(x, 2) for x in os.getloadavg()]})
            load.stop()
            sampler.halt.set()
            sampler.join(timeout=30)
            sampler.sample()  # the end, after the last answers
        finally:
            service.stop()
    minutes = int(round(args.minutes)) or 1
    records = sorted(load.records, key=lambda r: r.sent)
    rows = per_minute(records, minutes)
    errors = Counter(error_key(r) for r in records if not r.ok)
    samples = sampler.samples
    report.update({
        "load_average": {"start": load_start, "during": load_avg, "end": [round(x, 2) for x in os.getloadavg()]},
        "per_minute": rows, "rss_samples": samples,
        "summary": {"requests": len(records), "ok": sum(r.ok for r in records), "errors": sum(errors.values()),
                    "error_codes": dict(sorted(errors.items())), "rss_growth": rss_growth(samples),
                    "p99_drift": p99_drift(rows)},
        "run_s": round(time.monotonic() - begun, 1),
    })
    return report


def main(argv: list[str] | None = None) -> int:
    return main_printing_summary("soak", parse_args, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
