"""Autoscaling shown: Ray Serve scaling the embedding deployment up and back down under a bounded loopback load.

    python -m loadtest.autoscale --out benchmarks/autoscale.json --plot benchmarks/autoscale.png

The real service, started in this process as `turnout serve --config FILE` starts it (`serve.launch.configure` and
`serve_forever`), from a config overlay that changes one thing the way a user would: Ray's own `deployments:`
override of `EmbeddingDeployment` with an `autoscaling_config` (min_replicas 1, max_replicas N,
target_ongoing_requests, upscale/downscale delays shortened so that a run takes minutes). The overlay is written
into the JSON as it was used, ready for `turnout serve --config`.

Closed-loop clients on 127.0.0.1 only send `POST /v1/route` with prompts from the paper's benchmarks, in four
phases: idle (`--floor` clients, default 1, so that there is a baseline latency; 0 for no traffic), a linear ramp to
`--peak` clients, hold, and cool (`--floor` clients again). Once a second a sampler reads the deployment's replica
states from `serve.status()`, its target replica count from the controller, the machine's busy cores (/proc/stat)
and how many of them this run's processes took (this one and its children: clients, Ray, every replica), so that
other work sharing the machine shows. Every answer is kept with its status code (0: no HTTP answer), the error
code of its body and its client-side latency.

Bounded in time: the cool phase ends `--settle` seconds after the deployment is back at min_replicas (at the
latest after `--cool`), and start-up plus load never exceed `--max-run-s` (a slow start-up shortens the cool
phase; the summary says so); the shutdown follows.

The reaction time includes how often Ray's handles push their request counts to the controller
(RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S, an environment setting outside the config file, left at
Ray's default here) and a new replica's start-up (MiniLM, the FAISS index, the routers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import socket
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from index.errors import ConfigError
from loadtest.report_cli import RunError, run_report

DEPLOYMENT = "EmbeddingDeployment"
MIN_REPLICAS = 1
INGRESS_CPUS = 0.5  # serve.config.DEPLOYMENT_DEFAULTS: what the ingress reserves beside the embedding replicas
RAY_METRICS_INTERVAL_S = 10.0  # AutoscalingConfig's default (deprecated field, still checked against)
NO_ANSWER = 0  # status recorded for a request that got no HTTP answer (connection error, client timeout)


@dataclass(frozen=True)
class LoadPlan:
    """Clients over time: idle (floor) -> linear ramp (floor -> peak) -> hold (peak) -> cool (floor)."""

    idle_s: float
    ramp_s: float
    hold_s: float
    cool_s: float
    peak: int
    floor: int

    @property
    def ramp_at(self) -> float:
        return self.idle_s

    @property
    def hold_at(self) -> float:
        return self.idle_s + self.ramp_s

    @property
    def drop_at(self) -> float:
        return self.idle_s + self.ramp_s + self.hold_s

    @property
    def end_at(self) -> float:
        return self.drop_at + self.cool_s

    def phase(self, t: float) -> str:
        if t < self.ramp_at:
            return "idle"
        if t < self.hold_at:
            return "ramp"
        if t < self.drop_at:
            return "hold"
        return "cool"

    def clients(self, t: float) -> int:
        phase = self.phase(t)
        if phase == "ramp":
            # ceil: the first client joins as soon as the ramp starts, the last one a step before the hold
            share = (t - self.ramp_at) / self.ramp_s
            return min(self.peak, self.floor + math.ceil((self.peak - self.floor) * share))
        return self.peak if phase == "hold" else self.floor


def autoscaling_config(max_replicas: int, target: float, upscale_delay_s: float, downscale_delay_s: float,
                       look_back_s: float) -> dict[str, Any]:
    """The EmbeddingDeployment's `autoscaling_config` for the benchmark (Ray's field names)."""
    return {"min_replicas": MIN_REPLICAS, "max_replicas": max_replicas, "target_ongoing_requests": target,
            "upscale_delay_s": upscale_delay_s, "downscale_delay_s": downscale_delay_s,
            "look_back_period_s": look_back_s}


def overlay_yaml(scaling: dict[str, Any], router: str) -> str:
    """A config overlay (as deploy/causal.yaml is one): every default kept, Ray's override of one deployment added."""
    import yaml

    document = {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": 8000},  # the port is replaced by a free one at start
        "applications": [{
            "name": "turnout", "route_prefix": "/", "import_path": "serve.app:build_app",
            "logging_config": {"enable_access_log": False},
            "args": {"routers": {"default": router}} if router != "sw_ranking" else {},
            "deployments": [{"name": DEPLOYMENT, "autoscaling_config": scaling}],
        }],
    }
    head = ("# turnout with an autoscaled embedding deployment (written by loadtest/autoscale.py; "
            "`turnout serve --config FILE` runs it)\n")
    return head + yaml.safe_dump(document, sort_keys=False)


# ------------------------------------------------------------------------------------------ arguments


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        raise ConfigError(f"{self.prog}: {message}")


def parse_args(argv: list[str] | None = None, cpus: int | None = None) -> argparse.Namespace:
    """Parse and check the arguments; ConfigError (one line) when they cannot make a sensible run.

    `cpus`: the CPUs Ray will see (default: this machine's), so that max_replicas is checked against what fits.
    """
    parser = _Parser(prog="python -m loadtest.autoscale", description=__doc__.splitlines()[0])
    parser.add_argument("--max-replicas", type=int, default=3,
                        help="autoscaling max_replicas of the embedding deployment")
    parser.add_argument("--target-ongoing", type=float, default=8.0,
                        help="autoscaling target_ongoing_requests per replica")
    parser.add_argument("--upscale-delay", type=float, default=3.0, help="autoscaling upscale_delay_s")
    parser.add_argument("--downscale-delay", type=float, default=15.0, help="autoscaling downscale_delay_s")
    parser.add_argument("--look-back", type=float, default=12.0,
                        help=f"autoscaling look_back_period_s (above Ray's metrics_interval_s, "
                        f"{RAY_METRICS_INTERVAL_S:g} s)")
    parser.add_argument("--peak", type=int, default=32, help="concurrent clients at the top of the ramp")
    parser.add_argument("--floor", type=int, default=1, help="clients in the idle and cool phases (0: no traffic)")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds at the floor before the ramp")
    parser.add_argument("--ramp", type=float, default=20.0, help="seconds of the linear ramp to the peak")
    parser.add_argument("--hold", type=float, default=60.0, help="seconds at the peak")
    parser.add_argument("--cool", type=float, default=90.0, help="most seconds at the floor after the drop")
    parser.add_argument("--settle", type=float, default=10.0,
                        help="the cool phase ends this long after the deployment is back at min_replicas")
    parser.add_argument("--max-run-s", type=float, default=225.0,
                        help="start-up plus load stop after this many seconds (the shutdown follows)")
    parser.add_argument("--router", default="sw_ranking", help="router named in every request (embedding backend)")
    parser.add_argument("--sample-s", type=float, default=1.0, help="seconds between replica samples")
    parser.add_argument("--data-dir", help="shared data folder (prompts of the paper's benchmarks)")
    parser.add_argument("--home", help="artifact folder (default: $TURNOUT_HOME, else <repo>/artifacts)")
    parser.add_argument("--out", default="benchmarks/autoscale.json")
    parser.add_argument("--plot", help="write the timeline as a PNG here")
    args = parser.parse_args(argv)

    positive = {"--max-replicas": args.max_replicas, "--peak": args.peak, "--target-ongoing": args.target_ongoing,
                "--ramp": args.ramp, "--hold": args.hold, "--cool": args.cool, "--look-back": args.look_back,
                "--sample-s": args.sample_s, "--max-run-s": args.max_run_s}
    for flag, value in positive.items():
        if not value > 0:
            parser.error(f"{flag} must be > 0, got {value}")
    for flag, value in {"--floor": args.floor, "--idle": args.idle, "--settle": args.settle,
                        "--upscale-delay": args.upscale_delay, "--downscale-delay": args.downscale_delay}.items():
        if value < 0:
            parser.error(f"{flag} must be >= 0, got {value}")
    if args.look_back <= RAY_METRICS_INTERVAL_S:
        # Ray warns today and means to refuse it in a later release
        parser.error(f"--look-back must be above Ray's metrics_interval_s ({RAY_METRICS_INTERVAL_S:g} s), "
                     f"got {args.look_back:g}")
    if args.max_replicas < 2:
        parser.error(f"--max-replicas {args.max_replicas} leaves nothing to scale: min_replicas is 1")
    if args.floor >= args.peak:
        parser.error(f"--floor {args.floor} must be below --peak {args.peak}")
    if args.peak > 256:
        parser.error(f"--peak {args.peak}: at most 256 clients (the load is meant to stay bounded)")
    scaled = embedding_routers()
    if args.router not in scaled:
        # any other router is answered in the ingress and never reaches the deployment that scales
        parser.error(f"--router {args.router!r} is not scored by {DEPLOYMENT}; the default config's are {scaled}")
    load_s = args.idle + args.ramp + args.hold
    if load_s >= args.max_run_s:
        parser.error(f"--idle + --ramp + --hold ({load_s:g} s) leave no cool phase within "
                     f"--max-run-s {args.max_run_s:g}")
    cpus = (os.cpu_count() or 1) if cpus is None else cpus
    # Ray places a replica only where its CPUs are free: past this, the extra replicas would wait forever.
    need = INGRESS_CPUS + args.max_replicas * embedding_cpus()
    if need > cpus:
        parser.error(f"--max-replicas {args.max_replicas} needs {need:g} CPUs (ingress {INGRESS_CPUS:g} + "
                     f"{embedding_cpus():g} per embedding replica); Ray sees {cpus} here")
    return args


def embedding_routers() -> list[str]:
    """The default config's routers that the embedding deployment scores."""
    from serve.config import TurnoutConfig

    return TurnoutConfig().embedding_routers


def embedding_cpus() -> float:
    """CPUs one embedding replica reserves (its default Ray options; the overlay does not change them)."""
    from serve.config import DEPLOYMENT_DEFAULTS, EMBEDDING

    return float(DEPLOYMENT_DEFAULTS[EMBEDDING]["ray_actor_options"]["num_cpus"])


# ---------------------------------------------------------------------------------- timeline, summary


def _percentile_ms(latencies: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.asarray(latencies) * 1000.0, q)), 1) if latencies else None


def _state_at(samples: list[dict], t: float) -> dict | None:
    """The last sample taken at or before t (the deployment's state as then last seen)."""
    last = None
    for sample in samples:
        if sample["t"] > t:
            break
        last = sample
    return last


def timeline(events: list[tuple], samples: list[dict], plan: LoadPlan,
             seconds: int) -> list[dict]:
    """One row per second of the load: clients asked for, replicas at the end of the second, answers, errors by
    status code and latency percentiles of the requests that finished in it.

    events: (finish time s since the load started, latency s, HTTP status or NO_ANSWER[, error code]);
    samples: sorted by `t`.
    """
    ok: dict[int, list[float]] = {}
    bad: dict[int, dict[str, int]] = {}
    for t_done, latency, status, *_ in events:
        s = int(t_done)
        if status == 200:
            ok.setdefault(s, []).append(latency)
        else:
            codes = bad.setdefault(s, {})
            codes[str(status)] = codes.get(str(status), 0) + 1
    rows = []
    for s in range(seconds):
        state = _state_at(samples, s + 1) or {}
        latencies = ok.get(s, [])
        rows.append({
            "t": s, "phase": plan.phase(s), "clients": plan.clients(s),
            "replicas": state.get("running"), "starting": state.get("starting"),
            "stopping": state.get("stopping"), "target": state.get("target"),
            "requests": len(latencies), "errors": sum(bad.get(s, {}).values()), "error_codes": bad.get(s, {}),
            "p50_ms": _percentile_ms(latencies, 50), "p99_ms": _percentile_ms(latencies, 99),
            "busy_cores": state.get("busy_cores"), "run_cores": state.get("run_cores"),
        })
    return rows


def _first(samples: list[dict], after: float, test) -> float | None:
    return next((s["t"] - after for s in samples if s["t"] >= after and test(s)), None)


def _stats(latencies: list[float], errors: int, seconds: float) -> dict:
    return {"requests": len(latencies), "errors": errors, "seconds": round(seconds, 1),
            "requests_per_s": round(len(latencies) / seconds, 1) if seconds else None,
            "p50_ms": _percentile_ms(latencies, 50), "p99_ms": _percentile_ms(latencies, 99)}


def _changes(samples: list[dict], key: str) -> list[dict]:
    return [{"t": round(b["t"], 1), "from": a[key], "to": b[key]}
            for a, b in zip(samples, samples[1:]) if a[key] != b[key]]


def summarise(events: list[tuple], samples: list[dict], plan: LoadPlan, min_replicas: int,
              max_replicas: int, ended_at: float) -> dict:
    """What the run showed: the replicas reached, how long scaling up and back down took, changes against the load
    (flapping), errors, and latency/throughput per phase and at the peak per replica count.

    Times are in seconds from the phase change that should cause them (ramp start, drop) to the first sample
    showing the result; None when it never happened within the run.
    """
    running = [s["running"] for s in samples]
    reached = max(running) if running else None
    changes = _changes(samples, "running")
    at_drop = _state_at(samples, plan.drop_at)
    scaled = reached is not None and reached > min_replicas
    targeted = [s for s in samples if s.get("target") is not None]
    target_at_drop = _state_at(targeted, plan.drop_at)
    # Flapping is read from the controller's decisions where they are known: a replica that was asked for under
    # load and finishes starting after the drop is a slow start, not a decision against the load.
    decisions = _changes(targeted, "target") if targeted else changes
    under_load = [c for c in decisions if plan.ramp_at <= c["t"] < plan.drop_at and c["to"] < c["from"]]
    after_drop = [c for c in decisions if c["t"] >= plan.drop_at and c["to"] > c["from"]]
    summary: dict[str, Any] = {
        "min_replicas": min_replicas, "max_replicas": max_replicas, "max_replicas_reached": reached,
        # the controller's decision (its target replica count) comes first, the replica's start-up after it
        "first_upscale_decision_s": _first(targeted, plan.ramp_at, lambda s: s["target"] > min_replicas),
        "first_upscale_s": _first(samples, plan.ramp_at, lambda s: s["running"] > min_replicas) if scaled else None,
        "time_to_max_s": _first(samples, plan.ramp_at, lambda s: s["running"] == reached) if scaled else None,
        "replicas_at_drop": at_drop["running"] if at_drop else None,
        # only meaningful when there was something to scale down at the drop
        "time_to_scale_down_s": (_first(samples, plan.drop_at, lambda s: s["running"] <= min_replicas
                                        and not s.get("starting"))
                                 if at_drop and at_drop["running"] > min_replicas else None),
        "scale_down_decision_s": (_first(targeted, plan.drop_at, lambda s: s["target"] <= min_replicas)
                                  if target_at_drop and target_at_drop["target"] > min_replicas else None),
        "replica_changes": changes, "target_changes": _changes(targeted, "target"),
        "downscales_under_load": len(under_load), "upscales_after_drop": len(after_drop),
        "replicas_started_after_drop": sum(c["to"] - c["from"] for c in changes
                                           if c["t"] >= plan.drop_at and c["to"] > c["from"]),
    }
    for key in ("first_upscale_decision_s", "first_upscale_s", "time_to_max_s", "time_to_scale_down_s",
                "scale_down_decision_s"):
        if summary[key] is not None:
            summary[key] = round(summary[key], 1)
    codes: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for _, _, status, *rest in events:
        if status != 200:
            codes[str(status)] = codes.get(str(status), 0) + 1
            reason = f"{status} {rest[0]}" if rest and rest[0] else str(status)
            reasons[reason] = reasons.get(reason, 0) + 1
    summary["errors"] = sum(codes.values())
    summary["error_codes"] = dict(sorted(codes.items()))
    summary["error_reasons"] = dict(sorted(reasons.items()))
    summary["requests"] = len(events)

    bounds = {"idle": (0.0, plan.ramp_at), "ramp": (plan.ramp_at, plan.hold_at), "hold": (plan.hold_at, plan.drop_at),
              "cool": (plan.drop_at, min(plan.end_at, ended_at))}
    phases = {}
    for name, (lo, hi) in bounds.items():
        hi = min(hi, ended_at)
        if hi <= lo:
            continue
        inside = [e for e in events if lo <= e[0] < hi]
        phases[name] = _stats([e[1] for e in inside if e[2] == 200], sum(e[2] != 200 for e in inside), hi - lo)
    summary["phases"] = phases

    # At the peak, per running replica count: does another replica help on this machine?
    by_replicas: dict[int, tuple[list[float], int, float]] = {}
    lo, hi = plan.hold_at, min(plan.drop_at, ended_at)
    edges = [lo] + [s["t"] for s in samples if lo < s["t"] < hi] + [hi]
    for a, b in zip(edges, edges[1:]):
        state = _state_at(samples, a)
        if state is None:
            continue
        lat, errs, secs = by_replicas.get(state["running"], ([], 0, 0.0))
        inside = [e for e in events if a <= e[0] < b]
        lat = lat + [e[1] for e in inside if e[2] == 200]
        by_replicas[state["running"]] = (lat, errs + sum(e[2] != 200 for e in inside), secs + (b - a))
    summary["hold_by_replicas"] = {str(n): _stats(lat, errs, secs)
                                   for n, (lat, errs, secs) in sorted(by_replicas.items())}

    # How busy the machine was, and how much of that was this run: the rest is other work sharing the cores.
    def mean(key: str) -> float | None:
        values = [s[key] for s in samples if s.get(key) is not None]
        return round(float(np.mean(values)), 2) if values else None

    busy, ours = mean("busy_cores"), mean("run_cores")
    summary["cores"] = {"machine_busy_mean": busy, "this_run_mean": ours,
                        "other_work_mean": round(max(0.0, busy - ours), 2) if busy is not None and ours is not None
                        else None}
    return summary


# ---------------------------------------------------------------------------------------------- the run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown CPU")
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {"description": f"{platform.machine()}, {os.cpu_count()} cores, {model}, {pages / 2**30:.0f} GiB",
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds (user + system) of `root` and its live descendants: with a local Ray started by this process,
    the load generator, the driver, Ray's daemons and every replica. What the machine spent beyond that went to
    other work on it."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # the command name (field 2) may hold spaces and parentheses: split after its closing ')'
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone between listing and reading
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    inside = {root}
    changed = True
    while changed:
        changed = False
        for pid, parent in parents.items():
            if parent in inside and pid not in inside:
                inside.add(pid)
                changed = True
    return sum(cpu.get(pid, 0.0) for pid in inside)


class _Sampler(threading.Thread):
    """Reads the deployment's replica states every `interval` seconds (serve.status(), plus the controller's
    target), the machine's busy cores over the interval and the share of them this run's processes took."""

    def __init__(self, app: str, interval: float, t0: float):
        super().__init__(daemon=True)
        self.app, self.interval, self.t0 = app, interval, t0
        self.samples: list[dict] = []
        self.halt = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        from ray import serve
        from ray.serve.context import _get_global_client

        from loadtest.serve_ab import busy_seconds

        busy, tree, wall = busy_seconds(), tree_cpu_seconds(os.getpid()), time.monotonic()
        while not self.halt.is_set():
            try:
                deployment = serve.status().applications[self.app].deployments[DEPLOYMENT]
                states = {str(getattr(k, "value", k)): v for k, v in deployment.replica_states.items()}
                target = None
                try:  # the controller's view (what the dashboard shows); the replica states above are the API's
                    details = _get_global_client().get_serve_details()
                    target = details["applications"][self.app]["deployments"][DEPLOYMENT]["target_num_replicas"]
                except Exception:  # noqa: BLE001  (a private call: missing it costs one column, not the run)
                    pass
                now_busy, now_tree, now = busy_seconds(), tree_cpu_seconds(os.getpid()), time.monotonic()
                # a replica that stopped takes its CPU time with it: a negative step is not "other work"
                ours = max(0.0, now_tree - tree) / (now - wall) if now > wall else None
                self.samples.append({
                    "t": round(now - self.t0, 3), "running": states.get("RUNNING", 0),
                    "starting": states.get("STARTING", 0) + states.get("UPDATING", 0) + states.get("RECOVERING", 0),
                    "stopping": states.get("STOPPING", 0), "target": target,
                    "status": str(getattr(deployment.status, "value", deployment.status)),
                    "busy_cores": round((now_busy - busy) / (now - wall), 2) if now > wall else None,
                    "run_cores": round(ours, 2) if ours is not None else None,
                })
                busy, tree, wall = now_busy, now_tree, now
            except Exception as exc:  # noqa: BLE001  (recorded, and the run still ends on time)
                self.error = f"{type(exc).__name__}: {exc}"
            self.halt.wait(self.interval)

    def latest(self) -> dict | None:
        return self.samples[-1] if self.samples else None


def _error_code(raw: bytes) -> str | None:
    """The stable `error.code` of a turnout error body (serve/ingress.py), None for any other body."""
    try:
        return str(json.loads(raw)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


async def _drive(url: str, body: dict, prompts: list[str], plan: LoadPlan, t0: float, stop_at: float,
                 sampler: _Sampler, settle_s: float, events: list) -> tuple[float, str]:
    """Run the clients the plan asks for; return when the load ended (s since t0) and why: 'plan' (its end),
    'settled' (back at min_replicas for settle_s in the cool phase) or 'max_run_s' (the run's bound)."""
    import aiohttp

    target = [0]
    done = asyncio.Event()

    async def client(index: int, session: aiohttp.ClientSession) -> None:
        rng = np.random.default_rng(index)
        while not done.is_set() and index < target[0]:
            payload = {**body, "prompt": prompts[int(rng.integers(len(prompts)))]}
            start = time.monotonic()
            reason = None
            try:
                async with session.post(url, json=payload) as response:
                    raw = await response.read()
                    status = response.status
                if status != 200:
                    reason = _error_code(raw)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                status, reason = NO_ANSWER, type(exc).__name__
            end = time.monotonic()
            events.append((end - t0, end - start, status, reason))

    connector = aiohttp.TCPConnector(limit=plan.peak)
    tasks: dict[int, asyncio.Task] = {}
    settled_since, reason = None, "plan"
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        while True:
            now = time.monotonic()
            t = now - t0
            if t >= plan.end_at or now >= stop_at:
                reason = "plan" if t >= plan.end_at else "max_run_s"
                break
            if plan.phase(t) == "cool":
                state = sampler.latest()
                at_min = state is not None and state["t"] >= plan.drop_at and state["running"] <= MIN_REPLICAS \
                    and not state["starting"] and not state["stopping"]
                settled_since = (settled_since or t) if at_min else None
                if settled_since is not None and t - settled_since >= settle_s:
                    reason = "settled"
                    break
            target[0] = plan.clients(t)
            for index in range(target[0]):
                if index not in tasks or tasks[index].done():
                    tasks[index] = asyncio.create_task(client(index, session))
            await asyncio.sleep(0.1)
        ended = time.monotonic() - t0
        done.set()
        target[0] = 0
        await asyncio.gather(*tasks.values())  # the requests in flight finish (client timeout 30 s)
    return ended, reason


def _start(served, status_lines: list[str], stop: threading.Event) -> tuple[threading.Thread, list]:
    from serve.launch import serve_forever

    failure: list = []

    def target() -> None:
        try:
            serve_forever(served, metrics_port=_free_port(), on_status=status_lines.append, stop=stop)
        except BaseException as exc:  # noqa: BLE001  (handed to the main thread)
            failure.append(exc)

    thread = threading.Thread(target=target, name="turnout-serve", daemon=True)
    thread.start()
    return thread, failure


def _wait_ready(port: int, thread: threading.Thread, failure: list, deadline: float) -> None:
    import httpx

    while time.monotonic() < deadline:
        if failure:
            raise failure[0]
        if not thread.is_alive():
            raise RunError("the service stopped before it was ready")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1.0)
    raise RunError("the service was not ready within --max-run-s")


def plot(rows: list[dict], plan: LoadPlan, summary: dict, path: str | Path, title: str) -> None:
    """Replicas and clients, latency p50/p99, answers and errors per second, the phases shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t"] for r in rows]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 8), sharex=True, dpi=90)
    for ax in (ax1, ax2, ax3):
        ax.axvspan(plan.ramp_at, plan.hold_at, color="tab:orange", alpha=0.08, lw=0)
        ax.axvspan(plan.hold_at, plan.drop_at, color="tab:red", alpha=0.08, lw=0)
        ax.grid(alpha=0.3)
    replicas = [r["replicas"] if r["replicas"] is not None else np.nan for r in rows]
    target = [r["target"] if r["target"] is not None else np.nan for r in rows]
    ax1.step(t, replicas, where="post", color="tab:blue", lw=2, label="running replicas")
    ax1.step(t, target, where="post", color="tab:blue", lw=1, ls="--", label="target replicas (controller)")
    ax1.set_ylabel("embedding replicas")
    ax1.set_ylim(0, summary["max_replicas"] + 0.5)
    ax1b = ax1.twinx()
    ax1b.step(t, [r["clients"] for r in rows], where="post", color="tab:gray", lw=1, label="clients")
    ax1b.set_ylabel("clients")
    lines = ax1.get_legend_handles_labels()[0] + ax1b.get_legend_handles_labels()[0]
    ax1.legend(lines, [ln.get_label() for ln in lines], loc="center right", fontsize=8)
    ax1.set_title(title, fontsize=10)

    nan = lambda v: np.nan if v is None else v  # noqa: E731
    ax2.plot(t, [nan(r["p50_ms"]) for r in rows], label="p50", color="tab:green")
    ax2.plot(t, [nan(r["p99_ms"]) for r in rows], label="p99", color="tab:purple")
    ax2.set_ylabel("latency per second (ms)")
    ax2.set_yscale("log")
    ax2.legend(loc="upper right", fontsize=8)

    ax3.bar(t, [r["requests"] for r in rows], width=1.0, align="edge", color="tab:cyan", label="answered (200)")
    ax3.bar(t, [r["errors"] for r in rows], width=1.0, align="edge", color="tab:red",
            bottom=[r["requests"] for r in rows], label="errors")
    ax3.set_ylabel("requests per second")
    ax3.set_xlabel("seconds since the load started (shaded: ramp, hold)")
    ax3b = ax3.twinx()
    ax3b.plot(t, [nan(r["busy_cores"]) for r in rows], color="black", lw=1, label="machine busy cores")
    ax3b.plot(t, [nan(r.get("run_cores")) for r in rows], color="black", lw=1, ls=":",
              label="of which this run (service + clients)")
    ax3b.set_ylabel("busy cores (whole machine)")
    ax3b.set_ylim(0, (os.cpu_count() or 1) + 0.2)
    lines = ax3.get_legend_handles_labels()[0] + ax3b.get_legend_handles_labels()[0]
    ax3.legend(lines, [ln.get_label() for ln in lines], loc="upper right", fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def run(args: argparse.Namespace, command: str) -> dict:
    """Start the service with the autoscaling overlay, drive the plan, and return the report."""
    from ray import __version__ as ray_version

    from index.paths import data_dir
    from models.benchmarks import PAPER_BENCHMARKS, load_benchmark
    from serve.config import APP_NAME
    from serve.launch import configure

    begun = time.monotonic()
    stop_at = begun + args.max_run_s
    plan = LoadPlan(args.idle, args.ramp, args.hold, args.cool, args.peak, args.floor)
    scaling = autoscaling_config(args.max_replicas, args.target_ongoing, args.upscale_delay, args.downscale_delay,
                                 args.look_back)
    text = overlay_yaml(scaling, args.router)
    prompts = [p for b in PAPER_BENCHMARKS for p in load_benchmark(b, data_dir(args.data_dir)).prompts]
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "autoscale.yaml"
        path.write_text(text)
        served = configure(str(path), home=args.home, data_dir=args.data_dir, port=port)
    machine = _machine()
    status_lines: list[str] = []
    stop = threading.Event()
    thread, failure = _start(served, status_lines, stop)
    sampler = None
    try:
        _wait_ready(port, thread, failure, stop_at)
        startup_s = time.monotonic() - begun
        if stop_at - time.monotonic() < plan.drop_at + args.settle:
            raise RunError(f"start-up took {startup_s:.0f} s, leaving too little of --max-run-s for the load")
        t0 = time.monotonic()
        sampler = _Sampler(APP_NAME, args.sample_s, t0)
        sampler.start()
        events: list[tuple] = []
        cpu0 = time.process_time()
        ended, reason = asyncio.run(_drive(f"http://127.0.0.1:{port}/v1/route", {"router": args.router}, prompts, plan,
                                   t0, stop_at, sampler, args.settle, events))
        own_cpu = time.process_time() - cpu0
        sampler.halt.set()
        sampler.join(timeout=10)
    finally:
        if sampler is not None:
            sampler.halt.set()
        stop.set()
        thread.join(timeout=120)
    samples = sorted(sampler.samples, key=lambda s: s["t"])
    rows = timeline(events, samples, plan, int(math.ceil(ended)))
    summary = summarise(events, samples, plan, MIN_REPLICAS, args.max_replicas, ended)
    summary.update({"startup_s": round(startup_s, 1), "load_s": round(ended, 1),
                    "load_ended_by": reason, "cool_truncated": reason == "max_run_s",
                    # this process: the clients, the sampler and Ray's driver, all sharing the cores with the service
                    "generator_cpu_cores": round(own_cpu / ended, 2) if ended else None,
                    "sampler_error": sampler.error})
    return {
        "command": command, "machine": machine, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "ray": ray_version, "python": platform.python_version(),
        "config": {"yaml": text, "router": args.router,
                   # what the running deployment got: the defaults with the file's override applied, as Ray merges
                   "embedding_deployment": next(d for d in served.filled()["applications"][served.app_index]
                                                ["deployments"] if d["name"] == DEPLOYMENT)},
        "plan": {**asdict(plan), "settle_s": args.settle, "max_run_s": args.max_run_s, "sample_s": args.sample_s,
                 "prompts": len(prompts), "url": "http://127.0.0.1:<free port>/v1/route"},
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()], "service_status": status_lines,
        "summary": summary, "timeline": rows, "samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    code, args, report = run_report("autoscale", parse_args, run, argv)
    if report is None:
        return code
    if args.plot:
        s = report["summary"]
        title = (f"EmbeddingDeployment autoscaling (min 1, max {args.max_replicas}, target {args.target_ongoing:g} "
                 f"ongoing), {args.floor} -> {args.peak} -> {args.floor} clients, router {args.router}\n"
                 f"{report['machine']['description']}, {report['date'][:10]}")
        plot(report["timeline"], LoadPlan(**{k: report["plan"][k] for k in
                                             ("idle_s", "ramp_s", "hold_s", "cool_s", "peak", "floor")}), s, args.plot,
             title)
    sys.stdout.write(json.dumps({k: v for k, v in report["summary"].items()
                                 if k not in ("replica_changes", "target_changes")}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
