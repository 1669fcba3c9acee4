"""A live overlay swap and rollback under load (issue 23): failed requests, latency and memory around each.

    python -m loadtest.overlay_swap --out benchmarks/overlay_swap.json

The real service (the embedded default, or `--config FILE`) starts as `turnout serve` starts it
(`loadtest.faults.Service`), with overlay version A promoted. `--clients` closed-loop clients on 127.0.0.1 send
`POST /v1/route` to sw_ranking; after `--phase-s` seconds version B is promoted (the swap), after another
`--phase-s` A again (the rollback), and the run ends `--phase-s` later. A and B are fitted here, before the
service starts, from two halves of the mmlu-pro-dev prompts (gpt-4o vs Mixtral correctness, the gold grader's
outcome) over the served sw_ranking and mf, as `turnout retrain` fits them. `/v1/routers` is polled to time when
the service reports each new version, and the RSS of every Ray process is sampled (loadtest.soak).
Per phase: requests, failed requests by code, p50/p99 at the client; around each promotion: p99 in the phase before
against the first 30 s after it.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import numpy as np

from loadtest.faults import ROUTE, _Parser, error_key
from loadtest.report_cli import main_printing_summary

EMBEDDING_ROLE = "embedding"  # loadtest.soak's name for the embedding replica's processes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from index.errors import ConfigError

    parser = _Parser(prog="python -m loadtest.overlay_swap", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="serve config (default: the embedded one)")
    parser.add_argument("--home")
    parser.add_argument("--data-dir")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--phase-s", type=float, default=60.0)
    parser.add_argument("--out", default="benchmarks/overlay_swap.json")
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= 256 or not 10 <= args.phase_s <= 600:
        raise ConfigError("--clients must be 1..256 and --phase-s 10..600")
    return args


def fit_versions(config, on_status) -> tuple[str, str]:
    """Overlay versions A and B over the served routers, from the two halves of mmlu-pro-dev."""
    from loadtest.learning_loop import outcome
    from models import user_overlay
    from models.benchmarks import load_benchmark
    from serve.artifacts import overlay_routers

    ws, routers = overlay_routers(config, [n for n in config.routers.enabled if n in ("sw_ranking", "mf")], on_status)
    bench = load_benchmark("mmlu-pro-dev", ws.data())
    y = outcome(bench.strong, bench.weak)
    half = len(bench) // 2
    versions = []
    for part in (slice(0, half), slice(half, None)):
        labels = user_overlay.Outcomes(bench.prompts[part], y[part], bench.strong_model, bench.weak_model)
        overlay = user_overlay.fit_overlay(routers, ws.embedder, labels,
                                          (config.routers.strong_model, config.routers.weak_model))
        versions.append(overlay.save(user_overlay.overlays_dir(ws.home), {"labels": ["mmlu-pro-dev half"]}).name)
        time.sleep(1.1)  # versions are named by the second
    return versions[0], versions[1]


class VersionWatch(threading.Thread):
    """Polls /v1/routers: when each overlay version was first reported."""

    def __init__(self, url: str, t0: float):
        super().__init__(daemon=True, name="version-watch")
        self.url, self.t0 = url, t0
        self.seen: list[dict[str, Any]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        import httpx

        last = None
        while not self.halt.wait(0.25):
            try:
                version = (httpx.get(f"{self.url}/v1/routers", timeout=5).json().get("overlay") or {}).get("version")
            except (httpx.HTTPError, ValueError):
                continue
            if version != last:
                self.seen.append({"t": round(time.monotonic() - self.t0, 2), "version": version})
                last = version


def phase_stats(records, start: float, end: float) -> dict[str, Any]:
    chosen = [r for r in records if start <= r.sent < end]
    latencies = np.array([r.latency for r in chosen if r.ok]) * 1000.0
    errors = Counter(error_key(r) for r in chosen if not r.ok)
    return {"from_s": start, "to_s": end, "requests": len(chosen), "failed": sum(errors.values()),
            "errors": dict(errors), "p50_ms": float(np.percentile(latencies, 50)) if len(latencies) else None,
            "p99_ms": float(np.percentile(latencies, 99)) if len(latencies) else None}


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    from loadtest.faults import FakeUpstreams, Load, Service, load_prompts, machine, route_body, service_document
    from loadtest.soak import RssSampler
    from models import user_overlay
    from serve.artifacts import home_dir

    report: dict[str, Any] = {"command": command, "machine": machine(),
                              "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    prompts = load_prompts(args.data_dir)
    with FakeUpstreams(slow_s=1.0) as upstreams:
        text = service_document(args.config, {side: upstreams.url(side) for side in ("strong", "weak")}, None)
        service = Service(text, args.home, args.data_dir)
        config = service.served.config
        home = home_dir(config)
        version_a, version_b = fit_versions(config, lambda line: None)
        user_overlay.promote(home, version_a)
        report["versions"] = {"a": version_a, "b": version_b}
        try:
            report["startup_s"] = round(service.start(900.0), 1)
            t0 = time.monotonic()
            sampler = RssSampler(os.getpid(), t0, 2.0)
            sampler.sample()
            sampler.start()
            watch = VersionWatch(service.url, t0)
            watch.start()
            load = Load(service.url, t0, [(ROUTE, route_body(prompts, "sw_ranking"))] * args.clients)
            load.start()
            promotions = []
            for version in (version_b, version_a):
                time.sleep(max(0.0, t0 + args.phase_s * (len(promotions) + 1) - time.monotonic()))
                user_overlay.promote(home, version)
                promotions.append({"t": round(time.monotonic() - t0, 2), "version": version})
            time.sleep(max(0.0, t0 + args.phase_s * 3 - time.monotonic()))
            load.stop()
            for thread in (sampler, watch):
                thread.halt.set()
                thread.join(timeout=30)
            sampler.sample()
        finally:
            service.stop()
    records = sorted(load.records, key=lambda r: r.sent)
    swap, rollback = (p["t"] for p in promotions)
    phases = {"before": phase_stats(records, 0.0, swap), "after_swap": phase_stats(records, swap, rollback),
              "after_rollback": phase_stats(records, rollback, args.phase_s * 3)}
    first_30s = {"after_swap": phase_stats(records, swap, swap + 30.0),
                 "after_rollback": phase_stats(records, rollback, rollback + 30.0)}
    embedding_rss = [{"t": s["t"], "mb": s["processes"].get(EMBEDDING_ROLE, {}).get("rss_mb")} for s in sampler.samples]
    report.update({
        "clients": args.clients, "phase_s": args.phase_s, "promotions": promotions, "reported": watch.seen,
        "phases": phases, "first_30s": first_30s, "rss_samples": sampler.samples, "embedding_rss": embedding_rss,
        "summary": {"requests": len(records), "failed": sum(not r.ok for r in records),
                    "p99_before_ms": phases["before"]["p99_ms"],
                    "p99_first_30s_after_swap_ms": first_30s["after_swap"]["p99_ms"],
                    "p99_first_30s_after_rollback_ms": first_30s["after_rollback"]["p99_ms"],
                    "reported_after_s": [round(next((s["t"] for s in watch.seen if s["version"] == p["version"]
                                                     and s["t"] >= p["t"]), float("nan")) - p["t"], 2)
                                         for p in promotions]},
    })
    return report


def main(argv: list[str] | None = None) -> int:
    return main_printing_summary("overlay_swap", parse_args, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
