"""Fault injection on the real service: replica kills under load, and upstream faults behind /v1/chat/completions.

    python -m loadtest.faults --out benchmarks/faults.json [--config deploy/causal.yaml]

The service is started in this process as `turnout serve [--config FILE]` starts it (`serve.launch.configure` and
`serve_forever`), with its two upstreams pointed at a fake OpenAI server of this module (one process per side, on
127.0.0.1) and their read timeout shortened (`--upstream-timeout`) so that a slow upstream shows within a run.
All traffic goes to 127.0.0.1; every phase is bounded in time (`--max-run-s` for the whole run).

Replica kills. Closed-loop clients (`--clients` on `POST /v1/route`, `--chat-clients` on
`POST /v1/chat/completions`) run through the whole phase. After `--warmup` + `--baseline` seconds one replica of
each deployment in turn (backends first, the ingress last) is killed, with `ray.kill(handle, no_restart=False)` or
SIGKILL of its process (`--kill-with`); Serve's controller starts a replacement. A sampler reads every replica's
state from the controller twice a second. Per kill:

- requests sent in the kill's window, answered 2xx, and errors by status and body `code`;
- lost requests: no answer at all (connection error, client timeout) or an answer README's Errors table does not
  document (e.g. the Serve proxy's own plain-text 500). Those sent before the kill and answered after it were in
  flight when it happened and are counted apart from those sent after it, whose goal is 0. A documented error
  (a 503 `router_timeout` or `router_overloaded` while the replacement starts) is an error seen, not a loss;
- time to full recovery: the later of (a) the first second after the kill from which `--hold` consecutive
  seconds of requests (by send time) have the baseline's success rate (within `--rate-tolerance`) and a p50
  latency within `--p50-tolerance` times the baseline's, and (b) the first sample in which the killed replica is
  gone and every replica of every deployment is RUNNING. The baseline is the `--baseline` seconds before the kill.

Upstream faults, with the load stopped, `--per-fault` requests each, routed to the strong side (model
`router-length-0`: threshold 0, so every request goes strong). The fake upstream picks its misbehaviour from the
request's `metadata.fault` (forwarded by the ingress: the run adds `metadata` to `api.forward_fields`, and turns
`upstreams.fallback_on_503` on so that the failover path is exercised) and records each request it
receives with its `metadata.id`, so that a request answered by both sides is found. Each fault reports what the
client saw (status, body `code`, `x-turnout-*` headers, what a stream delivered) and the
`ray_turnout_errors_total` / `ray_turnout_fallbacks_total` series that moved on Ray's metrics port. Checked for
each: no request reached both upstreams unless the first could not have generated anything (it was unreachable,
or answered 503 before a body with fallback_on_503: `serve.ingress._send`'s rule).

Ray's metrics report interval is shortened to 1 s for the run (RAY_metrics_report_interval_ms) so that counters
can be read after each fault.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

from index.errors import ConfigError
from loadtest.report_cli import RunError, run_report

NO_ANSWER = 0  # status recorded for a request that got no HTTP answer (connection error, client timeout)
CLIENT_TIMEOUT_S = 30.0  # a request unanswered this long is lost
ROUTE, CHAT = "/v1/route", "/v1/chat/completions"
STRONG_MODEL = "router-length-0"  # threshold 0: every call goes to the strong upstream, the one faults are put on
UNAVAILABLE_STATUS = (503,)  # serve.ingress with upstreams.fallback_on_503: retried elsewhere only after a 503
SHORT = {"IngressDeployment": "ingress", "EmbeddingDeployment": "embedding", "ClassifierDeployment": "classifier"}
README = Path(__file__).resolve().parents[1] / "README.md"


# ------------------------------------------------------------------------------------------ accounting


@dataclass
class Record:
    """One request as the client saw it; times in seconds since the run's t0."""

    endpoint: str
    sent: float
    done: float
    status: int  # NO_ANSWER when no HTTP answer came
    code: str | None = None  # the error body's `code`, the client exception's name for NO_ANSWER
    retry_after: bool = False
    fallback: str | None = None  # x-turnout-fallback
    detail: str | None = None  # the start of an error body that is not turnout's (e.g. the Serve proxy's own)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def latency(self) -> float:
        return self.done - self.sent


def documented_codes(readme: Path = README) -> dict[str, set[int]]:
    """README's Errors table: code -> the statuses it is listed with (the serve tests read it the same way)."""
    codes: dict[str, set[int]] = {}
    for line in readme.read_text().splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) == 3 and cells[0][:1].isdigit():
            for code in re.findall(r"`([a-z_]+)`", cells[1]):
                codes.setdefault(code, set()).update(int(s) for s in re.findall(r"\d{3}", cells[0]))
    return codes


def outcome(record: Record, documented: dict[str, set[int]]) -> str:
    """'ok' (2xx), 'error' (an error README documents, with that status) or 'lost' (no answer, or any other)."""
    if record.ok:
        return "ok"
    if record.status != NO_ANSWER and record.status in documented.get(record.code or "", ()):
        return "error"
    return "lost"


def error_key(record: Record) -> str:
    """'503 router_timeout', '500 -' (a body without a turnout code), '0 ClientOSError' (no answer)."""
    return f"{record.status} {record.code or '-'}"


def account(records: Iterable[Record], kill_s: float, documented: dict[str, set[int]]) -> dict[str, Any]:
    """Sent / answered 2xx / errors / lost for the requests of one kill's window.

    in_flight_at_kill: sent before the kill and answered (or given up) after it. lost_in_flight: the lost among
    them; lost_after_kill: lost among those sent after it (the goal is 0); lost_before_kill: lost among those
    sent and given up before it (a problem of the baseline, not of the kill).
    """
    records = list(records)
    result: dict[str, Any] = {"sent": len(records), "ok": 0, "errors": 0, "lost": 0, "in_flight_at_kill": 0,
                              "lost_in_flight": 0, "lost_after_kill": 0, "lost_before_kill": 0,
                              "errors_with_retry_after": 0, "fallbacks": 0}
    by_code: Counter = Counter()
    lost_by_code: Counter = Counter()
    for r in records:
        kind = outcome(r, documented)
        in_flight = r.sent < kill_s <= r.done
        result["in_flight_at_kill"] += in_flight
        result["fallbacks"] += bool(r.fallback)
        if kind == "ok":
            result["ok"] += 1
            continue
        by_code[error_key(r)] += 1
        if kind == "error":
            result["errors"] += 1
            result["errors_with_retry_after"] += r.retry_after
            continue
        result["lost"] += 1
        lost_by_code[error_key(r)] += 1
        if in_flight:
            result["lost_in_flight"] += 1
        elif r.sent >= kill_s:
            result["lost_after_kill"] += 1
        else:
            result["lost_before_kill"] += 1
    result["by_code"] = dict(sorted(by_code.items()))
    result["lost_by_code"] = dict(sorted(lost_by_code.items()))
    result["lost_examples"] = sorted({f"{error_key(r)}: {r.detail}" for r in records
                                      if outcome(r, documented) == "lost" and r.detail})[:5]
    return result


def by_kill(records: Iterable[Record], kills_s: list[float]) -> list[list[Record]]:
    """Each request goes to the last kill before its answer (the first kill also takes those answered before
    it): a request sent while one replacement started and answered after the next kill was in flight at that
    next kill, and is counted there."""
    groups: list[list[Record]] = [[] for _ in kills_s]
    if not kills_s:
        return groups
    for r in records:
        i = 0
        for j, kill in enumerate(kills_s):
            if kill <= r.done:
                i = j
        groups[i].append(r)
    return groups


def _p50(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0


def window_stats(records: Iterable[Record]) -> dict[str, Any]:
    """Requests, success rate and p50 latency (ms, of the 2xx answers) of a set of requests."""
    records = list(records)
    ok = [r.latency for r in records if r.ok]
    p50 = _p50(ok)
    return {"requests": len(records), "success_rate": len(ok) / len(records) if records else None,
            "p50_ms": p50 * 1000.0 if p50 is not None else None}


def seconds_after(records: Iterable[Record], start: float, end: float) -> list[dict[str, Any]]:
    """Per whole second from `start` (by send time) up to `end`: window_stats of the requests sent in it."""
    n = max(0, int(math.ceil(end - start)))
    buckets: list[list[Record]] = [[] for _ in range(n)]
    for r in records:
        i = int(math.floor(r.sent - start))
        if 0 <= i < n:
            buckets[i].append(r)
    return [{"t": i, **window_stats(b)} for i, b in enumerate(buckets)]


def healthy(second: dict[str, Any], baseline: dict[str, Any], rate_tolerance: float, p50_tolerance: float) -> bool:
    """A second as good as the baseline: some requests, success rate within `rate_tolerance` of the baseline's,
    p50 at most `p50_tolerance` times the baseline's."""
    if not second["requests"] or second["success_rate"] is None or second["p50_ms"] is None:
        return False
    if baseline["success_rate"] is None or baseline["p50_ms"] is None:
        return False
    return (second["success_rate"] >= baseline["success_rate"] - rate_tolerance
            and second["p50_ms"] <= baseline["p50_ms"] * p50_tolerance)


def traffic_recovered_s(records: list[Record], kill_s: float, end_s: float, baseline: dict[str, Any], hold: int,
                        rate_tolerance: float, p50_tolerance: float) -> int | None:
    """The first whole second after the kill from which the requests sent in the next `hold` seconds, taken
    together, are healthy; None if never before `end_s`. Pooled rather than second by second: a saturated
    service's success rate swings by tens of points from one second to the next around the same mean."""
    if hold < 1:
        raise ValueError(f"hold must be >= 1, got {hold}")
    for i in range(int(math.ceil(end_s - kill_s)) - hold + 1):
        start = kill_s + i
        window = [r for r in records if start <= r.sent < start + hold]
        if healthy(window_stats(window), baseline, rate_tolerance, p50_tolerance):
            return i
    return None


def replicas_recovered_s(samples: list[dict[str, Any]], kill_s: float, killed: str) -> float | None:
    """Seconds after the kill of the first sample in which the killed replica is gone and every replica of every
    deployment is RUNNING (samples: {"t", "deployments": {name: [{"replica_id", "state"}, ...]}}); None if never."""
    for sample in samples:
        if sample["t"] < kill_s:
            continue
        replicas = [r for reps in sample["deployments"].values() for r in reps]
        if not replicas or any(r["replica_id"] == killed for r in replicas):
            continue
        if all(r["state"] == "RUNNING" for r in replicas):
            return round(sample["t"] - kill_s, 2)
    return None


def recovery(records: list[Record], samples: list[dict[str, Any]], kill_s: float, end_s: float, killed: str,
             baseline_s: float, hold: int, rate_tolerance: float, p50_tolerance: float) -> dict[str, Any]:
    """Baseline, per-second figures after the kill and the recovery times (seconds after the kill)."""
    baseline = window_stats(r for r in records if kill_s - baseline_s <= r.sent < kill_s)
    seconds = seconds_after(records, kill_s, end_s)
    traffic = traffic_recovered_s(records, kill_s, end_s, baseline, hold, rate_tolerance, p50_tolerance)
    replicas = replicas_recovered_s(samples, kill_s, killed)
    full = None if traffic is None or replicas is None else max(float(traffic), replicas)
    return {"baseline": baseline, "traffic_recovered_s": traffic, "replicas_recovered_s": replicas,
            "full_recovery_s": full, "seconds": seconds}


def billed_twice(seen: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Request ids that reached both upstreams although the first one may have generated something.

    seen: side -> the fake upstream's records ({"id", "answer", ...}). A request may reach the second side only
    when the first answered 503 before any body (`answer` is that status): it reached the first side
    only if it was received there, so an unreachable first side leaves no record and needs no exception.
    """
    firsts: dict[str, list[dict[str, Any]]] = {}
    for side, entries in seen.items():
        for entry in entries:
            if entry.get("id"):
                firsts.setdefault(entry["id"], []).append({**entry, "side": side})
    twice = []
    for rid, entries in firsts.items():
        sides = {e["side"] for e in entries}
        if len(entries) < 2:
            continue
        if len(sides) < 2 or not all(str(e.get("answer")) in {str(s) for s in UNAVAILABLE_STATUS}
                                     for e in sorted(entries, key=lambda e: e["at"])[:-1]):
            twice.append(rid)
    return sorted(twice)


def metric_deltas(before: dict[tuple, float], after: dict[tuple, float]) -> list[dict[str, Any]]:
    """The series whose value moved: [{"series", labels..., "delta"}] (keys as `parse_metrics` makes them)."""
    moved = []
    for key in sorted(set(before) | set(after)):
        delta = after.get(key, 0.0) - before.get(key, 0.0)
        if abs(delta) > 1e-9:
            name, labels = key
            moved.append({"series": name, **dict(labels), "delta": round(delta, 3)})
    return moved


TURNOUT_LABELS = ("endpoint", "reason", "model", "router")  # ours; Ray adds WorkerId, replica, ... (summed over)


def parse_metrics(text: str, names: tuple[str, ...] = ("ray_turnout_errors_total", "ray_turnout_fallbacks_total")
                  ) -> dict[tuple, float]:
    """Prometheus text -> {(series, ((label, value), ...)): value}, summed over Ray's own labels (a replica
    restart changes WorkerId: the sum is what a `sum by (reason)` query sees)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name not in names:
                continue
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k in TURNOUT_LABELS))
            key = (sample.name, labels)
            out[key] = out.get(key, 0.0) + float(sample.value)
    return out


# ------------------------------------------------------------------------------------------ arguments


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        raise ConfigError(f"{self.prog}: {message}")


KILL_METHODS = ("ray", "sigkill")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the arguments; ConfigError (one line) when they cannot make a sensible, bounded run."""
    parser = _Parser(prog="python -m loadtest.faults", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="serve config file (default: the embedded default); e.g. deploy/causal.yaml")
    parser.add_argument("--clients", type=int, default=32, help="closed-loop clients on /v1/route")
    parser.add_argument("--chat-clients", type=int, default=4, help="closed-loop clients on /v1/chat/completions")
    parser.add_argument("--classifier-clients", type=int, default=8,
                        help="of --clients, how many ask for causal_llm when the classifier is deployed")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of load before the first baseline")
    parser.add_argument("--baseline", type=float, default=20.0, help="seconds before each kill its baseline covers")
    parser.add_argument("--max-recovery", type=float, default=180.0,
                        help="most seconds to wait after a kill for the replacement replica")
    parser.add_argument("--hold", type=int, default=5,
                        help="seconds of requests, taken together, that must be healthy to count as recovered")
    parser.add_argument("--rate-tolerance", type=float, default=0.05,
                        help="healthy: a success rate at least the baseline's minus this")
    parser.add_argument("--p50-tolerance", type=float, default=1.5,
                        help="healthy: a p50 latency at most this times the baseline's")
    parser.add_argument("--kill", nargs="+", metavar="DEPLOYMENT",
                        help="deployments to kill one replica of (ingress, embedding, classifier; default: every "
                        "one the config binds, ingress last)")
    parser.add_argument("--kill-with", choices=KILL_METHODS, default="ray",
                        help="ray: ray.kill(handle, no_restart=False); sigkill: SIGKILL to the replica's process")
    parser.add_argument("--skip-kills", action="store_true")
    parser.add_argument("--skip-upstream", action="store_true")
    parser.add_argument("--per-fault", type=int, default=3, help="requests per upstream fault")
    parser.add_argument("--upstream-timeout", type=float, default=3.0, help="upstreams.*.timeout_s for the run")
    parser.add_argument("--slow", type=float, default=5.0, help="seconds the slow upstream stays silent")
    parser.add_argument("--max-run-s", type=float, default=1200.0, help="the whole run stops after this long")
    parser.add_argument("--router", default="sw_ranking", help="router the /v1/route clients ask for")
    parser.add_argument("--data-dir", help="shared data folder (prompts of the paper's benchmarks)")
    parser.add_argument("--home", help="artifact folder (default: $TURNOUT_HOME, else <repo>/artifacts)")
    parser.add_argument("--out", default="benchmarks/faults.json")
    args = parser.parse_args(argv)

    for flag in ("clients", "per_fault", "hold"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    for flag in ("chat_clients", "classifier_clients"):
        if getattr(args, flag) < 0:
            parser.error(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")
    if args.clients + args.chat_clients > 256:
        parser.error(f"--clients + --chat-clients is {args.clients + args.chat_clients}: at most 256 (the load is "
                     "meant to stay bounded)")
    if args.classifier_clients > args.clients:
        parser.error(f"--classifier-clients {args.classifier_clients} is more than --clients {args.clients}")
    for flag in ("baseline", "max_recovery", "upstream_timeout", "slow", "max_run_s", "p50_tolerance"):
        if not getattr(args, flag) > 0:
            parser.error(f"--{flag.replace('_', '-')} must be > 0, got {getattr(args, flag)}")
    if args.warmup < 0 or args.rate_tolerance < 0:
        parser.error("--warmup and --rate-tolerance must be >= 0")
    if args.p50_tolerance < 1:
        parser.error(f"--p50-tolerance {args.p50_tolerance} is below 1: the baseline itself would not count as healthy")
    if args.slow <= args.upstream_timeout:
        parser.error(f"--slow {args.slow:g} must be above --upstream-timeout {args.upstream_timeout:g}, or the slow "
                     "upstream is not slow")
    if args.hold >= args.max_recovery:
        parser.error(f"--hold {args.hold} leaves nothing of --max-recovery {args.max_recovery:g}")
    if args.kill:
        unknown = sorted(set(args.kill) - set(SHORT.values()))
        if unknown:
            parser.error(f"--kill: unknown deployment(s) {unknown}; known: {sorted(SHORT.values())}")
    if args.skip_kills and args.skip_upstream:
        parser.error("--skip-kills and --skip-upstream together leave nothing to run")
    if args.config and not Path(args.config).is_file():
        parser.error(f"--config: no such file: {args.config}")
    return args


# ------------------------------------------------------------------------------------------ fake upstream


FAULTS = ("none", "slow", "slow_stream", "500", "429", "502", "503", "reset_stream", "reset_body", "gzip")


def serve_fake(side: str, port: int, slow_s: float) -> None:
    """An OpenAI-compatible fake upstream on 127.0.0.1:`port` (run in its own process). The request's
    `metadata.fault` picks what it does (FAULTS); GET /_seen lists the requests it received."""
    import gzip
    import struct

    from aiohttp import web

    seen: list[dict] = []
    pieces = ["Hel", "lo", "!"]

    def event(piece: str) -> bytes:
        chunk = {"id": "c1", "object": "chat.completion.chunk", "model": side,
                 "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
        return f"data: {json.dumps(chunk)}\n\n".encode()

    def completion() -> bytes:
        return json.dumps({"id": "c1", "object": "chat.completion", "model": side,
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer from {side}"},
                                        "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}}).encode()

    def reset(request) -> None:
        # SO_LINGER 0: close() sends an RST, what a crashed upstream or a middlebox dropping the flow looks like
        sock = request.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        request.transport.abort()

    async def chat(request):
        try:
            return await answer(request)
        except ConnectionError:  # the ingress gave up (read timeout) while this answer was still being written
            return web.Response(status=499)

    async def answer(request):
        body = await request.json()
        meta = body.get("metadata") or {}
        # the fault is put on one side only (`on`, default strong): the other side answers normally, as a
        # failover target does
        fault = meta.get("fault", "none") if meta.get("on", "strong") == side else "none"
        entry = {"id": meta.get("id"), "fault": fault, "stream": bool(body.get("stream")), "at": time.time(),
                 "answer": None}
        seen.append(entry)
        stream = bool(body.get("stream"))
        if fault in ("500", "429", "502", "503"):
            entry["answer"] = int(fault)
            headers = {"retry-after": "7"} if fault == "429" else {}
            return web.json_response({"error": {"message": f"upstream says {fault}", "type": "upstream"}},
                                     status=int(fault), headers=headers)
        if fault == "slow":
            await asyncio.sleep(slow_s)
        if fault == "gzip":
            raw = b"".join(event(p) for p in pieces) + b"data: [DONE]\n\n" if stream else completion()
            packed = gzip.compress(raw)
            entry["answer"] = "200 gzip"
            if not stream:
                return web.Response(body=packed, headers={"content-type": "application/json",
                                                          "content-encoding": "gzip"})
            response = web.StreamResponse(headers={"content-type": "text/event-stream", "content-encoding": "gzip"})
            await response.prepare(request)
            await response.write(packed[: len(packed) // 2])
            await asyncio.sleep(0.05)
            await response.write(packed[len(packed) // 2:])
            await response.write_eof()
            return response
        if fault == "reset_body":
            entry["answer"] = "reset after part of the body"
            data = completion()
            response = web.StreamResponse(headers={"content-type": "application/json",
                                                   "content-length": str(len(data))})
            await response.prepare(request)
            await response.write(data[: len(data) // 2])
            await asyncio.sleep(0.1)
            reset(request)
            return response
        if stream:
            response = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await response.prepare(request)
            for i, piece in enumerate(pieces):
                await response.write(event(piece))
                if i == 0 and fault == "reset_stream":
                    entry["answer"] = "reset after one chunk"
                    await asyncio.sleep(0.1)
                    reset(request)
                    return response
                if i == 0 and fault == "slow_stream":
                    entry["answer"] = "silent after one chunk"
                    await asyncio.sleep(slow_s)
                await asyncio.sleep(0.02)
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            entry["answer"] = entry["answer"] or 200
            return response
        entry["answer"] = 200
        return web.Response(body=completion(), content_type="application/json")

    async def listing(request):
        return web.json_response(seen)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/_seen", listing)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, handle_signals=True)


class FakeUpstreams:
    """Both sides' fake upstreams, one process each; `down(side)` stops one (its port refuses connections)."""

    def __init__(self, slow_s: float):
        self.slow_s = slow_s
        self.ports = {side: free_port() for side in ("strong", "weak")}
        self.processes: dict[str, Any] = {}
        self.history: dict[str, list[dict]] = {"strong": [], "weak": []}  # records of stopped processes

    def url(self, side: str) -> str:
        return f"http://127.0.0.1:{self.ports[side]}/v1"

    def up(self, side: str) -> None:
        import multiprocessing

        process = multiprocessing.get_context("spawn").Process(
            target=serve_fake, args=(side, self.ports[side], self.slow_s), name=f"fake-{side}", daemon=True)
        process.start()
        self.processes[side] = process
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.ports[side]), timeout=1):
                    return
            except OSError:
                if not process.is_alive():
                    raise RunError(f"the fake {side} upstream exited with {process.exitcode}") from None
                time.sleep(0.1)
        raise RunError(f"the fake {side} upstream did not start")

    def down(self, side: str) -> None:
        self.history[side] += self.seen_now(side)
        process = self.processes.pop(side)
        process.kill()
        process.join(timeout=10)

    def seen_now(self, side: str) -> list[dict]:
        import httpx

        if side not in self.processes:
            return []
        return httpx.get(f"http://127.0.0.1:{self.ports[side]}/_seen", timeout=10).json()

    def seen(self) -> dict[str, list[dict]]:
        return {side: self.history[side] + self.seen_now(side) for side in ("strong", "weak")}

    def __enter__(self) -> FakeUpstreams:
        for side in self.ports:
            self.up(side)
        return self

    def __exit__(self, *exc) -> None:
        for side in list(self.processes):
            process = self.processes.pop(side)
            process.kill()
            process.join(timeout=10)


# ------------------------------------------------------------------------------------------ the service


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> dict[str, Any]:
    """What ran the measurement; the load average says how much else did (the cores are shared)."""
    import psutil

    return {"description": f"{platform.machine()}, {os.cpu_count()} cores, "
                           f"{psutil.virtual_memory().total / 2**30:.0f} GiB, shared with other work",
            "cpus": os.cpu_count(), "python": platform.python_version()}


def service_document(config: str | None, upstreams: dict[str, str], timeout_s: float | None) -> str:
    """The serve config as YAML: the file (or the embedded default) with the upstreams pointed at `upstreams`
    (side -> base_url), no upstream API keys, the read timeout set to `timeout_s` when given, `metadata` forwarded
    (the fake upstream's instructions) and a 503 failed over."""
    import yaml

    from serve.config import OPENAI_CHAT_FIELDS, default_document, load_serve_file

    served = load_serve_file(path=config) if config else None
    document = json.loads(json.dumps(served.document if served else default_document()))
    index = served.app_index if served else 0
    app = document["applications"][index]
    args = app.setdefault("args", {}) or {}
    app["args"] = args
    ups = args.setdefault("upstreams", {})
    ups["fallback_on_503"] = True
    args.setdefault("api", {})["forward_fields"] = [*OPENAI_CHAT_FIELDS, "metadata"]
    for side, url in upstreams.items():
        entry = ups.setdefault(side, {})
        entry.update(base_url=url, model=side, api_key_env=None)
        if timeout_s is not None:
            entry["timeout_s"] = timeout_s
    return yaml.safe_dump(document, sort_keys=False)


class Service:
    """The real service, started as `turnout serve --config FILE` starts it, in a thread of this process."""

    def __init__(self, yaml_text: str, home: str | None, data_dir: str | None):
        from serve.launch import configure

        self.port, self.metrics_port = free_port(), free_port()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "faults.yaml"
            path.write_text(yaml_text)
            self.served = configure(str(path), home=home, data_dir=data_dir, port=self.port)
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.status_lines: list[str] = []
        self.failure: list[BaseException] = []
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, timeout_s: float) -> float:
        """Start and wait for /readyz; returns the start-up seconds."""
        import httpx

        from serve.launch import serve_forever

        # Counters reach the metrics port once per report interval (Ray's default 10 s): 1 s lets a fault's
        # counters be read right after it. Read by every Ray process from the environment at start.
        os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")
        os.environ.setdefault("TURNOUT_GAUGE_REFRESH_S", "0.5")

        def target() -> None:
            try:
                serve_forever(self.served, metrics_port=self.metrics_port, on_status=self.status_lines.append,
                              stop=self.stop_event)
            except BaseException as exc:  # noqa: BLE001  (handed to the main thread)
                self.failure.append(exc)

        begun = time.monotonic()
        self.thread = threading.Thread(target=target, name="turnout-serve", daemon=True)
        self.thread.start()
        while time.monotonic() - begun < timeout_s:
            if self.failure:
                from index.errors import TurnoutError

                if isinstance(self.failure[0], TurnoutError):  # a config or artifact problem: main's one line
                    raise self.failure[0]
                # Ray itself failed to start (e.g. its node timed out on an overloaded machine)
                first = (str(self.failure[0]).strip().splitlines() or [""])[0]
                raise RunError(f"the service did not start: {type(self.failure[0]).__name__}: {first}")
            if not self.thread.is_alive():
                raise RunError("the service stopped before it was ready")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return time.monotonic() - begun
            except httpx.TransportError:
                pass
            time.sleep(1.0)
        raise RunError(f"the service was not ready within {timeout_s:.0f}s")

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout=120)

    def scrape(self) -> dict[tuple, float]:
        import httpx

        return parse_metrics(httpx.get(self.metrics_url, timeout=10).text)

    def settled_metrics(self, previous: dict[tuple, float] | None = None, wait_s: float = 3.0,
                        max_s: float = 20.0) -> dict[tuple, float]:
        """The counters once they stop moving: at least `wait_s` (a few report intervals), two equal scrapes."""
        time.sleep(wait_s)
        last, deadline = self.scrape(), time.monotonic() + max_s
        while time.monotonic() < deadline:
            time.sleep(1.5)
            now = self.scrape()
            if now == last:
                return now
            last = now
        return last


def replica_details(app: str) -> dict[str, list[dict[str, Any]]]:
    """deployment -> [{"replica_id", "state", "pid", "actor_name"}] from the Serve controller."""
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    deployments = details["applications"][app]["deployments"]
    return {name: [{"replica_id": r["replica_id"], "state": str(getattr(r["state"], "value", r["state"])),
                    "pid": r.get("pid"),
                    "actor_name": r.get("actor_name")} for r in d.get("replicas", [])]
            for name, d in deployments.items()}


class Sampler(threading.Thread):
    """Replica states of every deployment, every `interval` seconds, with times since `t0`."""

    def __init__(self, app: str, t0: float, interval: float = 0.5):
        super().__init__(daemon=True, name="replica-sampler")
        self.app, self.t0, self.interval = app, t0, interval
        self.samples: list[dict[str, Any]] = []
        self.halt = threading.Event()
        self.errors: Counter = Counter()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                deployments = replica_details(self.app)
                self.samples.append({"t": round(time.monotonic() - self.t0, 3), "deployments": deployments})
            except Exception as exc:  # noqa: BLE001  (a missed sample, counted; the run goes on)
                self.errors[type(exc).__name__] += 1
            self.halt.wait(self.interval)

    def latest(self) -> dict[str, Any] | None:
        return self.samples[-1] if self.samples else None


def kill_replica(replica: dict[str, Any], method: str) -> None:
    """Kill one replica: ray.kill of its actor handle (Serve's controller replaces it), or SIGKILL of its pid."""
    import ray

    from ray.serve._private.constants import SERVE_NAMESPACE

    if method == "sigkill":
        os.kill(int(replica["pid"]), signal.SIGKILL)
        return
    handle = ray.get_actor(replica["actor_name"], namespace=SERVE_NAMESPACE)
    ray.kill(handle, no_restart=False)


# ------------------------------------------------------------------------------------------ load


def _error_code(raw: bytes) -> str | None:
    """The `error.code` of a turnout error body, None for any other body."""
    try:
        return str(json.loads(raw)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


def load_prompts(data: str | None) -> list[str]:
    from index.paths import data_dir
    from models.benchmarks import PAPER_BENCHMARKS, load_benchmark

    return [p for b in PAPER_BENCHMARKS for p in load_benchmark(b, data_dir(data)).prompts]


async def closed_loop(session, url: str, make_body: Callable[[int], dict], endpoint: str, t0: float,
                      stop: asyncio.Event, records: list[Record], seed: int) -> None:
    """One client: send, wait for the whole answer, record it, send the next. After an error it waits the
    Retry-After it was given (at most 1 s), else 0.2 s, as a well-behaved client does, instead of spinning."""
    import random

    import aiohttp

    rng = random.Random(seed)
    while not stop.is_set():
        body = make_body(rng.randrange(1 << 30))
        sent = time.monotonic() - t0
        status, code, retry_after, fallback, detail = NO_ANSWER, None, False, None, None
        try:
            async with session.post(url, json=body) as response:
                raw = await response.read()
                status = response.status
                retry_after = "retry-after" in response.headers
                fallback = response.headers.get("x-turnout-fallback")
                if status >= 300:
                    code = _error_code(raw)
                    detail = None if code else raw[:100].decode("utf-8", "replace")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            code = type(exc).__name__
        record = Record(endpoint, sent, time.monotonic() - t0, status, code, retry_after, fallback, detail)
        records.append(record)
        if not record.ok:
            try:
                await asyncio.wait_for(stop.wait(), 1.0 if retry_after else 0.2)
            except asyncio.TimeoutError:
                pass


def route_body(prompts: list[str], router: str) -> Callable[[int], dict]:
    return lambda i: {"prompt": prompts[i % len(prompts)], "router": router}


def chat_body(prompts: list[str]) -> Callable[[int], dict]:
    return lambda i: {"model": "turnout", "messages": [{"role": "user", "content": prompts[i % len(prompts)]}],
                      "metadata": {"fault": "none", "id": f"load-{i}"}}


class Load:
    """Closed-loop clients on /v1/route and /v1/chat/completions in a background event loop."""

    def __init__(self, url: str, t0: float, clients: list[tuple[str, Callable[[int], dict]]]):
        self.url, self.t0, self.clients = url, t0, clients
        self.records: list[Record] = []
        self.loop = asyncio.new_event_loop()
        self.stop_event: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, name="load", daemon=True)
        self.ready = threading.Event()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        import aiohttp

        self.stop_event = asyncio.Event()
        connector = aiohttp.TCPConnector(limit=len(self.clients))
        timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            self.ready.set()
            await asyncio.gather(*(closed_loop(session, f"{self.url}{endpoint}", body, endpoint, self.t0,
                                               self.stop_event, self.records, 1000 + i)
                                   for i, (endpoint, body) in enumerate(self.clients)))

    def start(self) -> None:
        self.thread.start()
        self.ready.wait(30)

    def stop(self) -> None:
        """Stop sending; the requests in flight finish (at most the client timeout)."""
        if self.stop_event is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(timeout=CLIENT_TIMEOUT_S + 10)


# ------------------------------------------------------------------------------------------ kills


def kill_order(bound: list[str], wanted: list[str] | None) -> list[str]:
    """Deployments to kill, by their Serve names: backends first, the ingress (the front door) last."""
    names = [n for n in bound if n != "IngressDeployment"] + [n for n in bound if n == "IngressDeployment"]
    if wanted is not None:
        names = [n for n in names if SHORT[n] in wanted]
    return names


def run_kills(service: Service, args: argparse.Namespace, prompts: list[str], deadline: float) -> dict[str, Any]:
    from serve.config import APP_NAME

    config = service.served.config
    documented = documented_codes()
    bound = config.deployments()
    order = kill_order(bound, args.kill)
    classifier = "causal_llm" in config.classifier_routers
    clients: list[tuple[str, Callable[[int], dict]]] = []
    for i in range(args.clients):
        router = "causal_llm" if classifier and i < args.classifier_clients else args.router
        clients.append((ROUTE, route_body(prompts, router)))
    clients += [(CHAT, chat_body(prompts))] * args.chat_clients
    t0 = time.monotonic()
    sampler = Sampler(APP_NAME, t0)
    sampler.start()
    load = Load(service.url, t0, clients)
    load.start()
    kills: list[dict[str, Any]] = []
    try:
        next_kill = args.warmup + args.baseline
        for name in order:
            while time.monotonic() - t0 < next_kill:
                time.sleep(0.2)
            latest = sampler.latest() or {"deployments": {}}
            running = [r for r in latest["deployments"].get(name, []) if r["state"] == "RUNNING"]
            if not running:
                kills.append({"deployment": name, "skipped": "no RUNNING replica to kill"})
                continue
            victim = running[0]
            kill_s = time.monotonic() - t0
            kill_replica(victim, args.kill_with)
            load_avg = os.getloadavg()
            # wait for the replacement, then one more baseline (healthy seconds after it, and the next kill's baseline)
            limit = kill_s + args.max_recovery
            recovered = None
            while time.monotonic() - t0 < limit and time.monotonic() < deadline:
                recovered = replicas_recovered_s(sampler.samples[-4:], kill_s, victim["replica_id"])
                if recovered is not None:
                    break
                time.sleep(0.5)
            # then the next kill's baseline, and `hold` seconds more for the traffic's recovery to show
            settle_until = time.monotonic() - t0 + args.baseline + args.hold
            while time.monotonic() - t0 < settle_until and time.monotonic() < deadline:
                time.sleep(0.2)
            kills.append({"deployment": name, "method": args.kill_with, "replica_id": victim["replica_id"],
                          "pid": victim["pid"], "kill_s": round(kill_s, 2), "load_average_at_kill": load_avg,
                          "replicas_recovered_in_wait": recovered})
            next_kill = time.monotonic() - t0
            if time.monotonic() >= deadline:
                break
    finally:
        load.stop()
        sampler.halt.set()
        sampler.join(timeout=10)
    end = time.monotonic() - t0
    records = sorted(load.records, key=lambda r: r.sent)
    done = [k for k in kills if "kill_s" in k]
    route = [r for r in records if r.endpoint == ROUTE]
    for kill, window in zip(done, by_kill(records, [k["kill_s"] for k in done])):
        # a kill's recovery is looked for up to the next kill (whose baseline is the tail of this stretch)
        following = [k["kill_s"] for k in done if k["kill_s"] > kill["kill_s"]]
        kill["window_end_s"] = round(following[0] if following else end, 2)
        kill["requests"] = {"all": account(window, kill["kill_s"], documented),
                            **{ep: account([r for r in window if r.endpoint == ep], kill["kill_s"], documented)
                               for ep in (ROUTE, CHAT)}}
        kill["recovery"] = recovery(route, sampler.samples, kill["kill_s"], kill["window_end_s"], kill["replica_id"],
                                    args.baseline, args.hold, args.rate_tolerance, args.p50_tolerance)
        full = kill["recovery"]["full_recovery_s"]
        kill["goals"] = {"lost_after_kill_is_0": kill["requests"]["all"]["lost_after_kill"] == 0,
                         "recovery_under_30s": full is not None and full < 30.0}
    return {"order": order, "clients": {"route": args.clients, "chat": args.chat_clients,
                                        "route_causal_llm": args.classifier_clients if classifier else 0},
            "duration_s": round(end, 1), "sampler_errors": dict(sampler.errors), "kills": kills,
            "overall": account(records, math.inf, documented),
            # every request, to recompute the figures another way: endpoint, sent (s), latency (ms), status, code
            "records_columns": ["endpoint", "sent_s", "latency_ms", "status", "code"],
            "records": [[r.endpoint, round(r.sent, 3), round(r.latency * 1000.0, 1), r.status, r.code]
                        for r in records]}


# ------------------------------------------------------------------------------------------ upstream faults


@dataclass
class Fault:
    name: str
    fault: str  # metadata.fault for the strong upstream
    stream: bool = False
    down: tuple[str, ...] = ()  # upstream sides stopped for it
    expect: str = ""  # what serve.ingress should do, for the report


UPSTREAM_FAULTS = (
    Fault("slow", "slow", expect="read timeout after the request was sent: 502, never retried on weak"),
    Fault("slow_stream", "slow_stream", True, expect="silent mid-stream past timeout_s: the stream ends with an "
          "upstream_stream_cut event"),
    Fault("error_500", "500", expect="passed through as 500, not retried"),
    Fault("error_429", "429", expect="passed through as 429, not retried"),
    Fault("error_502", "502", expect="passed through as 502, not retried (a gateway's 502 may follow a generation)"),
    Fault("error_503", "503", expect="503 before a body, fallback_on_503: failover to weak (allowed twice)"),
    Fault("reset_mid_stream", "reset_stream", True, expect="200, one chunk, then an upstream_stream_cut event"),
    Fault("reset_mid_body", "reset_body", expect="502 upstream_failed, not retried"),
    Fault("gzip", "gzip", expect="gzip bytes passed through with Content-Encoding"),
    Fault("gzip_stream", "gzip", True, expect="gzip stream passed through with Content-Encoding"),
    Fault("strong_unreachable", "none", down=("strong",), expect="connect refused: failover to weak"),
    Fault("strong_unreachable_stream", "none", True, down=("strong",), expect="connect refused: failover to weak"),
    Fault("both_unreachable", "none", down=("strong", "weak"), expect="502 upstream_unavailable"),
)


def chat_once(url: str, fault: Fault, rid: str, timeout_s: float) -> dict[str, Any]:
    """One chat completion as a client sees it: status, code, headers, and for a stream what it delivered."""
    import httpx

    body = {"model": STRONG_MODEL, "messages": [{"role": "user", "content": "Prove that 17 is prime."}],
            "stream": fault.stream, "metadata": {"fault": fault.fault, "id": rid}}
    seen: dict[str, Any] = {"id": rid}
    try:
        with httpx.Client(timeout=timeout_s) as client, client.stream("POST", f"{url}{CHAT}", json=body) as response:
            seen["status"] = response.status_code
            seen["headers"] = {k: v for k, v in response.headers.items()
                               if k.startswith("x-turnout") or k in ("content-encoding", "content-type",
                                                                     "retry-after")}
            try:
                data = b"".join(response.iter_bytes())  # decoded (gzip) as a client library would
                seen["body_read"] = "complete"
            except httpx.HTTPError as exc:
                data, seen["body_read"] = b"", f"failed: {type(exc).__name__}"
    except httpx.HTTPError as exc:
        return {**seen, "status": NO_ANSWER, "client_error": type(exc).__name__}
    text = data.decode("utf-8", "replace")
    if fault.stream and seen["status"] < 300:
        events = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
        errors = [_error_code(e.encode()) for e in events if _error_code(e.encode())]
        seen.update(events=len(events), done="[DONE]" in events, error_events=errors)
    else:
        seen["code"] = _error_code(data)
        try:
            seen["json"] = isinstance(json.loads(text), dict)
        except ValueError:
            seen["json"] = False
    return seen


def summarise_answers(answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Distinct outcomes of one fault's requests, with how many requests had each."""
    keys = Counter()
    for a in answers:
        view = {k: a.get(k) for k in ("status", "code", "client_error", "body_read", "events", "done", "json")
                if a.get(k) is not None}
        if a.get("error_events"):
            view["error_events"] = a["error_events"]
        view.update({k: v for k, v in (a.get("headers") or {}).items() if k != "content-type"})
        keys[json.dumps(view, sort_keys=True)] += 1
    return [{"requests": n, **json.loads(k)} for k, n in keys.most_common()]


def run_upstream_faults(service: Service, upstreams: FakeUpstreams, args: argparse.Namespace,
                        deadline: float) -> list[dict[str, Any]]:
    from concurrent.futures import ThreadPoolExecutor

    results = []
    for fault in UPSTREAM_FAULTS:
        if time.monotonic() > deadline:
            results.append({"fault": fault.name, "skipped": "--max-run-s reached"})
            continue
        for side in fault.down:
            upstreams.down(side)
        try:
            before_seen = {side: len(v) for side, v in upstreams.seen().items()}
            before = service.settled_metrics(wait_s=0.0, max_s=10.0)
            ids = [f"{fault.name}-{i}" for i in range(args.per_fault)]
            t = time.monotonic()
            with ThreadPoolExecutor(len(ids)) as pool:
                answers = list(pool.map(lambda rid: chat_once(service.url, fault, rid, 60.0), ids))
            elapsed = time.monotonic() - t
            after = service.settled_metrics()
            seen = {side: [e for e in entries[before_seen[side]:] if e.get("id") in ids]
                    for side, entries in upstreams.seen().items()}
        finally:
            for side in fault.down:
                upstreams.up(side)
        twice = billed_twice(seen)
        results.append({
            "fault": fault.name, "upstream_fault": fault.fault, "stream": fault.stream,
            "down": list(fault.down), "expected": fault.expect, "requests": len(ids), "seconds": round(elapsed, 2),
            "client_saw": summarise_answers(answers),
            "upstream_received": {side: Counter(str(e["answer"]) for e in entries) for side, entries in seen.items()},
            "metrics_moved": metric_deltas(before, after),
            "billed_twice": twice, "ok_no_double_billing": not twice,
        })
    return results


# ------------------------------------------------------------------------------------------ main


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    from ray import __version__ as ray_version

    begun = time.monotonic()
    deadline = begun + args.max_run_s
    load_start = os.getloadavg()
    prompts = load_prompts(args.data_dir)
    report: dict[str, Any] = {"command": command, "machine": machine(),
                              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "ray": ray_version,
                              "load_average": {"start": [round(x, 2) for x in load_start]}}
    with FakeUpstreams(args.slow) as upstreams:
        text = service_document(args.config, {side: upstreams.url(side) for side in ("strong", "weak")},
                                args.upstream_timeout)
        service = Service(text, args.home, args.data_dir)
        config = service.served.config
        report["config"] = {"file": args.config or "embedded default", "routers": config.routers.enabled,
                            "default_router": config.routers.default, "deployments": config.deployments(),
                            "upstream_timeout_s": args.upstream_timeout, "slow_upstream_s": args.slow,
                            "routing_timeout_s": config.routing.timeout_s,
                            "fallback_model": config.routing.fallback_model}
        try:
            report["startup_s"] = round(service.start(min(600.0, args.max_run_s)), 1)
            if not args.skip_kills:
                report["replica_kills"] = run_kills(service, args, prompts, deadline)
                report["load_average"]["after_kills"] = [round(x, 2) for x in os.getloadavg()]
            if not args.skip_upstream:
                report["upstream_faults"] = run_upstream_faults(service, upstreams, args, deadline)
        finally:
            service.stop()
        report["service_status"] = service.status_lines
    report["load_average"]["end"] = [round(x, 2) for x in os.getloadavg()]
    report["run_s"] = round(time.monotonic() - begun, 1)
    report["summary"] = summary(report)
    return report


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The figures the RELIABILITY.md tables show."""
    out: dict[str, Any] = {}
    for kill in (report.get("replica_kills") or {}).get("kills", []):
        if "requests" not in kill:
            out[SHORT.get(kill["deployment"], kill["deployment"])] = {"skipped": kill.get("skipped")}
            continue
        everything, rec = kill["requests"]["all"], kill["recovery"]
        out[SHORT[kill["deployment"]]] = {
            "sent": everything["sent"], "ok": everything["ok"], "errors": everything["by_code"],
            "lost_in_flight": everything["lost_in_flight"], "lost_after_kill": everything["lost_after_kill"],
            "chat_fallbacks": kill["requests"][CHAT]["fallbacks"],
            "baseline_p50_ms": rec["baseline"]["p50_ms"], "traffic_recovered_s": rec["traffic_recovered_s"],
            "replicas_recovered_s": rec["replicas_recovered_s"], "full_recovery_s": rec["full_recovery_s"],
            **kill["goals"]}
    faults = report.get("upstream_faults") or []
    if faults:
        out["upstream_faults_no_double_billing"] = all(f.get("ok_no_double_billing", True) for f in faults)
    return out


def main(argv: list[str] | None = None) -> int:
    code, _, report = run_report("faults", parse_args, run, argv, default=_jsonable)
    if report is None:
        return code
    sys.stdout.write(json.dumps(report["summary"], default=_jsonable) + "\n")
    return 0 if report["summary"].get("upstream_faults_no_double_billing", True) else 1


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


if __name__ == "__main__":
    raise SystemExit(main())
