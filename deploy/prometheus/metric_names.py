"""Which metric names exist, as Prometheus sees them, and which ones a PromQL expression uses.

The rules, the dashboard and their tests check every name they query against two sources:

- turnout's own metrics: `serve.metrics.ServeMetrics` is created with stand-ins for Ray's metric classes, so
  the kind (counter, gauge, histogram) and tags of each metric come from the code that records it, and the
  exported names follow from Ray's rules (`exported()`: `ray_` in front; a histogram is scraped as
  `_bucket`/`_sum`/`_count`, never under its bare name; a counter ends in `_total`);
- Ray's metrics: the definitions in the installed Ray's Serve and dashboard-agent source (Serve's replica,
  router, proxy and controller metrics; the node and per-process CPU/memory/GPU metrics), with the same rules.

`python deploy/prometheus/metric_names.py` prints turnout's metrics as a Markdown table (deploy/prometheus/README.md).
"""

from __future__ import annotations

import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Ray-side folders that define the metrics turnout's rules and dashboards may use.
RAY_SOURCES = ("serve", "dashboard")
# Serve defines its proxy metrics once per protocol (`f"serve_num_{protocol_name}_requests"`).
RAY_NAME_PLACEHOLDERS = {"protocol_name": ("http", "grpc")}
_DEFINITION = re.compile(r'\b(Counter|Gauge|Histogram)\(\s*(?:name\s*=\s*)?f?["\']([A-Za-z0-9_{}]+)["\']')


@dataclass(frozen=True)
class Metric:
    kind: str  # counter | gauge | histogram
    name: str  # as defined, without Ray's prefix
    tags: tuple[str, ...] = ()

    def suffixes(self) -> tuple[str, ...]:
        """What Ray's exporter appends to the name, per series it scrapes for this metric."""
        if self.kind == "histogram":
            return ("_bucket", "_sum", "_count")
        if self.kind == "counter" and not self.name.endswith("_total"):
            return ("_total",)
        return ("",)


def turnout_metrics() -> list[Metric]:
    """The metrics a replica creates, read off `ServeMetrics()` built with recording stand-ins for Ray's classes."""
    created: list[Metric] = []

    def stand_in(kind: str):
        class _Recorder:
            def __init__(self, name: str, description: str = "", boundaries=None, tag_keys=()):
                created.append(Metric(kind, name, tuple(tag_keys or ())))
        return _Recorder

    fake = types.ModuleType("ray.serve.metrics")
    fake.Counter, fake.Gauge, fake.Histogram = stand_in("counter"), stand_in("gauge"), stand_in("histogram")
    from serve.metrics import ServeMetrics

    with mock.patch.dict(sys.modules, {"ray.serve.metrics": fake}):
        ServeMetrics()
    return created


def turnout_exported() -> dict[str, Metric]:
    """exported series name -> its turnout metric."""
    from serve.metrics import exported

    return {exported(m.name, suffix): m for m in turnout_metrics() for suffix in m.suffixes()}


def ray_metrics(ray_dir: Path | None = None) -> list[Metric]:
    """Metrics defined in the installed Ray's Serve and dashboard source (tests excluded)."""
    if ray_dir is None:
        import importlib.util

        spec = importlib.util.find_spec("ray")  # the package's folder, without importing Ray
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("ray is not installed: the Ray metric names come from its source")
        ray_dir = Path(list(spec.submodule_search_locations)[0])
    found: dict[str, Metric] = {}
    for sub in RAY_SOURCES:
        for path in sorted((ray_dir / sub).rglob("*.py")):
            if "tests" in path.parts:
                continue
            for kind, name in _DEFINITION.findall(path.read_text(errors="ignore")):
                for expanded in _expand(name):
                    found.setdefault(expanded, Metric(kind.lower(), expanded))
    return list(found.values())


def _expand(name: str) -> list[str]:
    names = [name]
    for placeholder, values in RAY_NAME_PLACEHOLDERS.items():
        names = [n.replace("{" + placeholder + "}", v) for n in names for v in values] if any(
            "{" + placeholder + "}" in n for n in names) else names
    return [n for n in names if "{" not in n]


def ray_exported(ray_dir: Path | None = None) -> dict[str, Metric]:
    return {f"ray_{m.name}{suffix}": m for m in ray_metrics(ray_dir) for suffix in m.suffixes()}


# --------------------------------------------------------------------------------------------- PromQL names

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NAME_MATCHER = re.compile(r'__name__\s*=~?\s*"([^"]*)"')
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_LABEL_VALUES = re.compile(r"label_values\(\s*([^,{()]+(?:\{[^}]*\})?)\s*,\s*[A-Za-z_]+\s*\)")
_IDENT = re.compile(r"(?<![A-Za-z0-9_:$])([A-Za-z_:][A-Za-z0-9_:]*)")


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression (or a Grafana label_values() query) reads: Ray-exported names (`ray_...`)
    and recording-rule names (with a colon), including those in a `__name__=~"a|b"` matcher. Rough by design:
    label matchers, grouping clauses and strings are removed first, so label names are never taken for metrics."""
    names = {alt for m in _NAME_MATCHER.findall(expr) for alt in m.split("|") if alt}
    expr = _LABEL_VALUES.sub(lambda m: m.group(1), expr)  # keep the metric, drop the label argument
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers, strings inside them included
    expr = _STRING.sub(" ", expr)
    expr = _LABEL_LISTS.sub(" ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range and subquery durations
    for ident in _IDENT.findall(expr):
        if ident.startswith("ray_") or ":" in ident:
            names.add(ident)
    return names


def markdown_table() -> str:
    rows = ["| series (as Prometheus sees it) | kind | labels (plus Ray's) |", "| --- | --- | --- |"]
    from serve.metrics import exported

    for metric in turnout_metrics():
        series = " ".join(f"`{exported(metric.name, suffix)}`" for suffix in metric.suffixes())
        rows.append(f"| {series} | {metric.kind} | {', '.join(metric.tags)} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.stdout.write(markdown_table() + "\n")
