"""The turnout Grafana dashboard, built in code with grafana-foundation-sdk (its Grafana 11.6 build).

`python deploy/grafana/dashboard.py --out deploy/grafana/turnout.json` writes the committed JSON; the tests
regenerate it and compare, so the JSON is never edited by hand. Metric names come from serve/metrics.py
(`exported()`: the names Prometheus sees), Ray Serve's and Ray's node metrics are named as Ray 2.60 exports them.

Every query aggregates by what it shows (router, endpoint, stage, deployment, ...) and never by WorkerId or
replica, which change when a replica restarts: a restart then continues a line instead of starting a new one.
Latency panels are quantiles of the histogram buckets (`histogram_quantile` over `rate(_bucket)`), never a mean
from `rate(_sum)`. Template variables list label values of `ray_turnout_threshold`, the gauge every ingress
replica re-sets for every enabled router, so the lists are complete before any traffic; each has an "All"
option whose value `.*` also matches a series without the label (no ray_io_cluster outside Kubernetes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from anywhere: serve/ is importable from the repository root
    sys.path.insert(0, str(ROOT))

from serve.config import CLASSIFIER, EMBEDDING, INGRESS  # noqa: E402
from serve.metrics import (  # noqa: E402
    CAPTURE_RECORDS,
    DECISIONS,
    DROPPED,
    ERRORS,
    FALLBACKS,
    OVERLAY_FAILED,
    REQUEST_LATENCY,
    SHADOW_CALLS,
    SHADOW_SPEND,
    STAGE_LATENCY,
    STRONG_RATIO,
    THRESHOLD,
    exported,
)

UID = "turnout-routing"
TITLE = "turnout: routing service"
OUT = Path(__file__).resolve().parent / "turnout.json"
# The recording rule that carries the configured strong-call share (deploy/prometheus/rules.yml).
STRONG_RATIO_TARGET_RULE = "turnout:strong_ratio_target"
DEPLOYMENTS = "|".join((INGRESS, EMBEDDING, CLASSIFIER))
# `$__rate_interval` is at least four scrape intervals, so rate() always has two samples to work with.
RATE = "$__rate_interval"

# Label filters per kind of series, bound to the template variables.
CLUSTER = 'ray_io_cluster=~"$cluster"'
APP = f'{CLUSTER}, application=~"$application"'
ROUTER = f'{APP}, router=~"$router"'
SERVE = f'{APP}, deployment=~"{DEPLOYMENTS}"'
# Ray names a replica's worker process (the Component label of its resource metrics) ray::ServeReplica:<app>:<dep>.
REPLICA_PROCS = f'{CLUSTER}, Component=~"ray::ServeReplica:$application:.*"'
CLASSIFIER_PROCS = f'{CLUSTER}, Component=~"ray::ServeReplica:$application:{CLASSIFIER}"'


def _sdk():
    """The SDK modules, imported when a dashboard is built (it is a dev dependency, not the service's)."""
    from grafana_foundation_sdk.builders import common, dashboard, prometheus, timeseries
    from grafana_foundation_sdk.models import common as common_models
    from grafana_foundation_sdk.models import dashboard as dashboard_models

    return common, dashboard, prometheus, timeseries, common_models, dashboard_models


def quantiles(metric: str, by: str, selector: str, legend: str, qs=(0.5, 0.9, 0.99)) -> list[tuple[str, str]]:
    """(expr, legend) per quantile of a turnout histogram, from its buckets."""
    bucket = exported(metric, "_bucket")
    return [(f"histogram_quantile({q}, sum by (le, {by}) (rate({bucket}{{{selector}}}[{RATE}])))",
             f"p{round(q * 100)} {legend}") for q in qs]


def panels() -> list[tuple[str, list[dict]]]:
    """(row title, [panel spec]) in dashboard order. A spec: title, description, unit, targets [(expr, legend)]."""
    decisions, errors, fallbacks = exported(DECISIONS), exported(ERRORS), exported(FALLBACKS)
    requests = exported(REQUEST_LATENCY, "_count")
    # Serve's controller reports each replica 1 (healthy) or 0. The inner max counts a replica once while an old
    # and a new controller process both still export it (a controller restart changes WorkerId, not replica).
    healthy = f"sum by (deployment) (max by (deployment, replica) (ray_serve_deployment_replica_healthy{{{SERVE}}}))"
    return [
        ("Traffic and latency", [
            dict(title="Request rate per router and endpoint", unit="reqps",
                 description="Requests answered by the ingress per second (/v1/route and /v1/chat/completions).",
                 targets=[(f"sum by (router, endpoint) (rate({requests}{{{ROUTER}}}[{RATE}]))",
                           "{{router}} {{endpoint}}")]),
            dict(title="Route latency p50 / p90 / p99", unit="ms",
                 description="End-to-end latency at the ingress per router and endpoint, from the histogram buckets. "
                             "Chat completions include the upstream's generation.",
                 targets=quantiles(REQUEST_LATENCY, "router, endpoint", ROUTER, "{{router}} {{endpoint}}")),
            dict(title="Stage latency p50 / p99", unit="ms",
                 description="Latency of each request stage (embed, search, classify, decide, upstream) per router.",
                 targets=quantiles(STAGE_LATENCY, "stage, router", ROUTER, "{{stage}} {{router}}", qs=(0.5, 0.99))),
        ]),
        ("Routing decisions", [
            dict(title="Decisions per router (strong / weak)", unit="ops", stack=True,
                 description="Routing decisions per second by router and chosen model.",
                 targets=[(f"sum by (router, model) (rate({decisions}{{{ROUTER}}}[{RATE}]))",
                           "{{router}} {{model}}")]),
            dict(title="Realised strong ratio vs target", unit="percentunit",
                 description="Share of decisions that chose the strong model: from the decision counters (all "
                             "replicas), the controllers' own windows (mean over ingress replicas), and the target "
                             "(routing.strong_ratio, recorded by the turnout:strong_ratio_target rule).",
                 targets=[
                     # `or 0 * ...`: a router that never chose strong has no model="strong" series; show 0.
                     (f'(sum by (router) (rate({decisions}{{{ROUTER}, model="strong"}}[{RATE}])) '
                      f"or 0 * sum by (router) (rate({decisions}{{{ROUTER}}}[{RATE}]))) "
                      f"/ sum by (router) (rate({decisions}{{{ROUTER}}}[{RATE}]))", "realised {{router}}"),
                     (f"avg by (router) ({exported(STRONG_RATIO)}{{{ROUTER}}})", "controller window {{router}}"),
                     (f"max by (router) ({STRONG_RATIO_TARGET_RULE}{{{ROUTER}}})", "target {{router}}"),
                 ]),
            dict(title="Threshold per router", unit="none",
                 description="The p_strong threshold each router's controller applies now (p_strong >= threshold: "
                             "strong), mean over ingress replicas.",
                 targets=[(f"avg by (router) ({exported(THRESHOLD)}{{{ROUTER}}})", "{{router}}")]),
        ]),
        ("Errors and fallbacks", [
            dict(title="Errors by reason", unit="reqps",
                 description="Requests answered with an error, per endpoint and reason.",
                 targets=[(f"sum by (endpoint, reason) (rate({errors}{{{APP}}}[{RATE}]))", "{{endpoint}} {{reason}}")]),
            dict(title="Fallbacks by reason", unit="reqps",
                 description="Chat calls not sent where the router decided, per reason and where they went.",
                 targets=[(f"sum by (reason, model) (rate({fallbacks}{{{APP}}}[{RATE}]))", "{{reason}} -> {{model}}")]),
            dict(title="Dropped and overloaded requests", unit="reqps",
                 description="Queued requests a backend skipped because their deadline had passed, and requests "
                             "refused for overload (503 on /v1/route, the fallback model on chat).",
                 targets=[
                     (f"sum by (component) (rate({exported(DROPPED)}{{{APP}}}[{RATE}]))", "dropped in {{component}}"),
                     (f'sum(rate({errors}{{{APP}, reason="router_overloaded"}}[{RATE}]))', "refused: /v1/route 503"),
                     (f'sum(rate({fallbacks}{{{APP}, reason="router_overloaded"}}[{RATE}]))', "refused: chat fallback"),
                 ]),
        ]),
        ("Learning loop", [
            dict(title="Capture records by outcome", unit="ops",
                 description="Captured records per second by table (requests, answers, feedback) and outcome: "
                             "written, or dropped (queue full, write failed) without holding up any request.",
                 targets=[(f"sum by (table, outcome) (rate({exported(CAPTURE_RECORDS)}{{{APP}}}[{RATE}]))",
                           "{{table}} {{outcome}}")]),
            dict(title="Shadow calls and spend", unit="ops",
                 description="Shadow calls of the model not chosen per second, by outcome (called, failed, skipped "
                             "for the budget or the in-flight cap), and their spend in USD per hour.",
                 targets=[
                     (f"sum by (model, outcome) (rate({exported(SHADOW_CALLS)}{{{APP}}}[{RATE}]))",
                      "{{model}} {{outcome}}"),
                     (f"sum by (model) (rate({exported(SHADOW_SPEND)}{{{APP}}}[{RATE}])) * 3600",
                      "USD per hour, {{model}}"),
                 ]),
            dict(title="Overlay load failures", unit="none",
                 description="Embedding replicas that could not load the promoted overlay version and serve the "
                             "previous one (/v1/routers says which version and why).",
                 targets=[(f"sum({exported(OVERLAY_FAILED)}{{{APP}}})", "replicas on an older version")]),
        ]),
        ("Replicas and queues", [
            dict(title="Replicas: healthy vs autoscaling target", unit="none",
                 description="Healthy replicas per deployment, the replica count Serve is moving to, and the "
                             "autoscaling policy's raw decision before min/max replicas.",
                 targets=[
                     (healthy, "healthy {{deployment}}"),
                     (f"max by (deployment) (ray_serve_autoscaling_target_replicas{{{SERVE}}})",
                      "target {{deployment}}"),
                     (f"max by (deployment) (ray_serve_autoscaling_desired_replicas{{{SERVE}}})",
                      "autoscaler decision {{deployment}}"),
                 ]),
            dict(title="Ongoing requests per replica vs autoscaling target", unit="none",
                 description="Requests the autoscaler sees per healthy replica, against the deployment's "
                             "target_ongoing_requests.",
                 targets=[
                     (f"max by (deployment) (ray_serve_autoscaling_total_requests{{{SERVE}}}) / {healthy}",
                      "ongoing per replica {{deployment}}"),
                     (f"max by (deployment) (ray_serve_autoscaling_target_ongoing_requests{{{SERVE}}})",
                      "target {{deployment}}"),
                 ]),
            dict(title="Queue lengths", unit="none",
                 description="Requests waiting for a replica at the callers' handles, requests being processed in "
                             "the replicas, and requests in flight at the HTTP proxies.",
                 targets=[
                     (f"sum by (deployment) (ray_serve_deployment_queued_queries{{{SERVE}}})", "queued {{deployment}}"),
                     (f"sum by (deployment) (ray_serve_replica_processing_queries{{{SERVE}}})",
                      "processing {{deployment}}"),
                     (f"sum(ray_serve_num_ongoing_http_requests{{{CLUSTER}}})", "HTTP proxies"),
                 ]),
        ]),
        ("CPU and memory", [
            dict(title="Replica CPU", unit="none",
                 description="CPU cores used by each replica's worker process.",
                 targets=[(f"sum by (Component) (ray_component_cpu_percentage{{{REPLICA_PROCS}}}) / 100",
                           "{{Component}}")]),
            dict(title="Replica memory", unit="bytes",
                 description="Resident memory of each replica's worker process.",
                 targets=[(f"sum by (Component) (ray_component_rss_bytes{{{REPLICA_PROCS}}})", "{{Component}}")]),
            dict(title="Node CPU and memory", unit="percentunit",
                 description="CPU utilisation and memory in use per Ray node (pod).",
                 targets=[
                     (f"avg by (instance) (ray_node_cpu_utilization{{{CLUSTER}}}) / 100", "CPU {{instance}}"),
                     (f"sum by (instance) (ray_node_mem_used{{{CLUSTER}}}) "
                      f"/ sum by (instance) (ray_node_mem_total{{{CLUSTER}}})", "memory {{instance}}"),
                 ]),
        ]),
        ("GPU (classifier)", [
            dict(title="Classifier GPU utilisation", unit="percentunit",
                 description="GPU use of the classifier replicas' processes, and of each GPU on the nodes.",
                 targets=[
                     (f"sum by (Component, GpuIndex) (ray_component_gpu_percentage{{{CLASSIFIER_PROCS}}}) / 100",
                      "{{Component}} GPU {{GpuIndex}}"),
                     (f"avg by (instance, GpuIndex) (ray_node_gpus_utilization{{{CLUSTER}}}) / 100",
                      "node {{instance}} GPU {{GpuIndex}}"),
                 ]),
            dict(title="Classifier GPU memory", unit="bytes",
                 description="GPU memory held by the classifier replicas' processes (weights and KV cache), and "
                             "in use on each GPU (Ray reports both in MB).",
                 targets=[
                     (f"sum by (Component, GpuIndex) (ray_component_gpu_memory_mb{{{CLASSIFIER_PROCS}}}) * 1024 * 1024",
                      "{{Component}} GPU {{GpuIndex}}"),
                     (f"sum by (instance, GpuIndex) (ray_node_gram_used{{{CLUSTER}}}) * 1024 * 1024",
                      "node {{instance}} GPU {{GpuIndex}}"),
                 ]),
        ]),
    ]


def build():
    """The dashboard as the SDK's model object."""
    common, dashboard, prometheus, timeseries, common_models, dashboard_models = _sdk()
    datasource = dashboard_models.DataSourceRef(type_val="prometheus", uid="${datasource}")

    def query_variable(name: str, label: str, query: str):
        # A plain string query: Grafana's Prometheus data source reads it as a label_values() query, and the
        # 11.6 schema types the object form as a map of objects, which the editor's own object would not fit.
        return (dashboard.QueryVariable(name).label(label).datasource(datasource)
                .query(query)
                .refresh(dashboard_models.VariableRefresh.ON_TIME_RANGE_CHANGED)
                .sort(dashboard_models.VariableSort.ALPHABETICAL_ASC)
                .multi(True).include_all(True).all_value(".*"))

    threshold = exported(THRESHOLD)
    builder = (
        dashboard.Dashboard(TITLE).uid(UID)
        .description("Routing decisions, latency, errors and capacity of the turnout Ray Serve application.")
        .tags(["turnout", "ray-serve"])
        .refresh("30s").time("now-1h", "now").timezone("browser")
        .tooltip(dashboard_models.DashboardCursorSync.CROSSHAIR)
        .with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(query_variable("cluster", "Ray cluster", f"label_values({threshold}, ray_io_cluster)"))
        .with_variable(query_variable("application", "Application",
                                      f"label_values({threshold}{{{CLUSTER}}}, application)"))
        .with_variable(query_variable("router", "Router", f"label_values({threshold}{{{APP}}}, router)"))
    )
    panel_id = 0
    for row_title, specs in panels():
        panel_id += 1
        builder = builder.with_row(dashboard.Row(row_title).id(panel_id))
        for spec in specs:
            panel_id += 1
            panel = (timeseries.Panel().id(panel_id).title(spec["title"]).description(spec["description"])
                     .datasource(datasource).unit(spec["unit"]).span(8).height(8)
                     .line_width(1).fill_opacity(10)
                     .legend(common.VizLegendOptions().display_mode(common_models.LegendDisplayMode.LIST)
                             .placement(common_models.LegendPlacement.BOTTOM).show_legend(True))
                     .tooltip(common.VizTooltipOptions().mode(common_models.TooltipDisplayMode.MULTI)
                              .sort(common_models.SortOrder.DESCENDING)))
            if spec.get("stack"):
                panel = panel.stacking(common.StackingConfig().mode(common_models.StackingMode.NORMAL))
            for ref, (expr, legend) in zip("ABCDEFGH", spec["targets"]):
                panel = panel.with_target(prometheus.Dataquery().ref_id(ref).expr(expr).legend_format(legend)
                                          .range())
            builder = builder.with_panel(panel)
    return builder.build()


def render() -> str:
    """The dashboard JSON as committed: sorted keys, two-space indent, trailing newline."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    return JSONEncoder(sort_keys=True, indent=2).encode(build()) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the turnout Grafana dashboard JSON.")
    parser.add_argument("--out", type=Path, default=OUT, help="output file (default: deploy/grafana/turnout.json)")
    args = parser.parse_args(argv)
    args.out.write_text(render())


if __name__ == "__main__":
    main()
