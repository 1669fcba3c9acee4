"""Metric names, defined once: the deployments record them and the dashboards and alerts query them.

They go through `ray.serve.metrics`, so every replica's values reach Ray's Prometheus export port
(`ray.init(_metrics_export_port=...)`, scraped at `/metrics`), tagged by Ray with application, deployment and
replica. A plain prometheus_client metric would stay inside its replica process. Ray prefixes every name with
`ray_` in the export (a Histogram adds `_bucket`/`_sum`/`_count`): `turnout_decisions_total` is scraped as
`ray_turnout_decisions_total`. `ray` is imported when a `ServeMetrics` is created, never at import.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

PROMETHEUS_PREFIX = "ray_"  # what Ray's exporter puts in front of every name below

REQUEST_LATENCY = "turnout_request_latency_ms"  # Histogram{endpoint, router}: ingress, end to end
STAGE_LATENCY = "turnout_stage_latency_ms"  # Histogram{stage, router}: one step of a request
DECISIONS = "turnout_decisions_total"  # Counter{router, model}: model is strong | weak
STRONG_RATIO = "turnout_strong_ratio"  # Gauge{router}: share of strong decisions over the controller window
STRONG_RATIO_TARGET = "turnout_strong_ratio_target"  # Gauge{router}: the share the controller holds (none if fixed)
THRESHOLD = "turnout_threshold"  # Gauge{router}: the threshold the router's controller applies now
ERRORS = "turnout_errors_total"  # Counter{endpoint, reason}: requests answered with an error
FALLBACKS = "turnout_fallbacks_total"  # Counter{reason, model}: calls sent somewhere other than the decision
DROPPED = "turnout_dropped_total"  # Counter{component}: queued requests skipped because their deadline passed
CAPTURE_RECORDS = "turnout_capture_records_total"  # Counter{table, outcome}: written | dropped_queue_full | dropped_write_failed
SHADOW_CALLS = "turnout_shadow_calls_total"  # Counter{model, outcome}: called | failed | skipped_budget | skipped_busy
OVERLAY_FAILED = "turnout_overlay_load_failed"  # Gauge: 1 while a replica could not load the promoted overlay version
SHADOW_SPEND = "turnout_shadow_spend_usd_total"  # Counter{model}: what shadow calls cost, from the upstreams' prices

STAGES = ("embed", "search", "classify", "decide", "upstream")
# ms; dense where the latency targets are (route p50 <= 25 ms, causal <= 100 ms), sparse for upstream generation.
LATENCY_BOUNDARIES_MS = [0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 25, 30, 40, 50, 75, 100, 150, 200, 300, 500, 750,
                         1000, 2000, 5000, 10000, 30000, 60000]


class ServeMetrics:
    """The metric objects of one replica. Create it inside the replica (`__init__`), never at module level."""

    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Gauge, Histogram

        self.request_latency = Histogram(
            REQUEST_LATENCY, description="HTTP request latency at the ingress, ms",
            boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("endpoint", "router"))
        self.stage_latency = Histogram(
            STAGE_LATENCY, description=f"latency of one request stage ({', '.join(STAGES)}), ms",
            boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("stage", "router"))
        self.decisions = Counter(
            DECISIONS, description="routing decisions by router and chosen model (strong|weak)",
            tag_keys=("router", "model"))
        self.strong_ratio = Gauge(
            STRONG_RATIO, description="share of strong decisions over the controller window", tag_keys=("router",))
        self.strong_ratio_target = Gauge(
            STRONG_RATIO_TARGET, description="strong-call share the router's controller holds (routing.strong_ratio, "
            "live through user_config); absent for routers with a fixed threshold", tag_keys=("router",))
        self.threshold = Gauge(
            THRESHOLD, description="current p_strong threshold (p_strong >= threshold -> strong)", tag_keys=("router",))
        self.errors = Counter(
            ERRORS, description="requests answered with an error, by reason", tag_keys=("endpoint", "reason"))
        self.fallbacks = Counter(
            FALLBACKS, description="calls not sent where the router decided, by reason and by where they went",
            tag_keys=("reason", "model"))
        self.dropped_requests = Counter(
            DROPPED, description="queued requests dropped unprocessed because their caller's deadline had passed",
            tag_keys=("component",))

        self.capture_records = Counter(
            CAPTURE_RECORDS, description="captured records by table and outcome (written, or dropped: the request "
            "itself is never held up)", tag_keys=("table", "outcome"))
        self.shadow_calls = Counter(
            SHADOW_CALLS, description="shadow calls of the model not chosen, by model and outcome",
            tag_keys=("model", "outcome"))
        self.shadow_spend = Counter(
            SHADOW_SPEND, description="USD spent on shadow calls, from the upstreams' token prices", tag_keys=("model",))

        self.overlay_load_failed = Gauge(
            OVERLAY_FAILED, description="1 while this embedding replica could not load the promoted overlay version "
            "(the previous one keeps serving), else 0")

    def stage(self, stage: str, router: str, ms: float) -> None:
        self.stage_latency.observe(ms, tags={"stage": stage, "router": router})

    @contextmanager
    def timed(self, stage: str, router: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage(stage, router, (time.perf_counter() - start) * 1000.0)

    def request(self, endpoint: str, router: str, ms: float) -> None:
        self.request_latency.observe(ms, tags={"endpoint": endpoint, "router": router})

    def decision(self, router: str, model: str) -> None:
        self.decisions.inc(tags={"router": router, "model": model})

    def controller(self, router: str, threshold: float, realised_ratio: float | None,
                   target: float | None = None) -> None:
        self.threshold.set(threshold, tags={"router": router})
        if realised_ratio is not None:
            self.strong_ratio.set(realised_ratio, tags={"router": router})
        if target is not None:
            self.strong_ratio_target.set(target, tags={"router": router})

    def error(self, endpoint: str, reason: str) -> None:
        self.errors.inc(tags={"endpoint": endpoint, "reason": reason})

    def fallback(self, reason: str, model: str) -> None:
        self.fallbacks.inc(tags={"reason": reason, "model": model})

    def capture_record(self, table: str, outcome: str, count: int = 1) -> None:
        self.capture_records.inc(count, tags={"table": table, "outcome": outcome})

    def shadow(self, outcome: str, model: str, usd: float | None = None) -> None:
        self.shadow_calls.inc(tags={"model": model, "outcome": outcome})
        if usd:
            self.shadow_spend.inc(usd, tags={"model": model})

    def overlay_failed(self, failed: bool) -> None:
        self.overlay_load_failed.set(1.0 if failed else 0.0)

    def dropped(self, component: str, count: int = 1) -> None:
        self.dropped_requests.inc(count, tags={"component": component})


def exported(name: str, suffix: str = "") -> str:
    """The name Prometheus sees: `exported(DECISIONS)` -> 'ray_turnout_decisions_total'."""
    return f"{PROMETHEUS_PREFIX}{name}{suffix}"


def parse_prometheus(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples of a Prometheus text exposition: name -> [(labels, value)]. Enough for tests and health checks."""
    import re

    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    line_re = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
    label_re = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = line_re.match(line)
        if not match:
            continue
        name, labels, value = match.groups()
        try:
            number = float(value)
        except ValueError:
            continue
        samples.setdefault(name, []).append((dict(label_re.findall(labels or "")), number))
    return samples

