"""Live proof of the observability assets: a real Prometheus scrapes a real `turnout serve` under load and faults.

Both run in a network namespace of their own with only `lo` (DESIGN §6: Ray binds the machine's interface
address otherwise): the test builds tiny artifacts (hash-64 embedder, as tests/serve does), creates the namespace
and runs `scenario()` there, in a child process (`python -m tests.deploy.test_live_metrics WORKDIR`). The child

- starts the Debian `prometheus` server (scrape every 2 s, rules evaluated every 1 s) on deploy/prometheus/rules.yml
  itself, unchanged: the fault alerts are asserted `pending` (an expression true now; the real `for:` durations
  of 10-15 minutes would only delay `firing`), and every rate window is a range Prometheus fills at once;
- starts `turnout serve` (Ray reporting metrics every second, the ingress re-setting its gauges every 0.5 s)
  with mf, sw_ranking, length and `slow` (below: a backend that takes 0.6 s a call), the embedding deployment
  autoscaled (1..1 replicas, so that Serve exports its autoscaling series), routing.max_in_flight 8 and a 1 s
  routing budget; the strong upstream is a port where nothing listens, the weak one tests/serve's fake upstream;
- sends a bounded loopback load: normal /v1/route and /v1/chat/completions traffic (streamed too), then bursts
  of 32 concurrent requests to the slow router (overload: 503 router_overloaded at the door; requests queued past
  their deadline are dropped by the embedding deployment and time out), then an upstream outage (the weak
  upstream stops: chat answers 502 upstream_unavailable), then nothing for 70 s;
- asks Prometheus' HTTP API: every query of every panel of deploy/grafana/turnout.json over the run, with the
  dashboard variables set to "All" as Grafana would (`.*`, `$__rate_interval` by Grafana's formula), every rule's
  health and every recording rule's series, the alerts, and the controller gauges over the idle minute.

The test then judges: every panel query returns finite data (PANELS_WITHOUT_DATA lists those that cannot here,
each with its reason), every recording rule has a series, every rule evaluates without error, the fault alerts
are pending or firing and the alerts about missing metrics or replicas are quiet, and ray_turnout_threshold,
ray_turnout_strong_ratio and ray_turnout_strong_ratio_target were in every scrape of the idle minute for every
router (Ray drops a gauge about two report intervals after its last set; the ingress re-sets them).

Needs root for `ip netns` and the prometheus binary (deploy/ci/observability_tools.sh): without them this skips,
and fails under CI. About 3-4 minutes on 2 cores.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from models.base import Router
from models.registry import RouterEntry

ROOT = Path(__file__).resolve().parents[2]
MODULE = "tests.deploy.test_live_metrics"  # run with -m in the namespace; replicas import the slow router from it
DASHBOARD = ROOT / "deploy" / "grafana" / "turnout.json"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
INSTALL = "deploy/ci/observability_tools.sh"

SCRAPE_S = 2  # Prometheus' scrape interval; Ray reports every second (RAY_metrics_report_interval_ms)
EVALUATION_S = 1
STEP_S = 2  # the range queries' step, as Grafana would pick for a short time range
# Grafana's $__rate_interval: max($__interval + scrape interval, 4 x scrape interval), the data source's scrape
# interval set to Prometheus' own.
RATE_INTERVAL = f"{max(STEP_S + SCRAPE_S, 4 * SCRAPE_S)}s"
IDLE_S = 70  # no traffic at all for this long before the gauges are checked
IDLE_WINDOW_S = 60  # the gauges must be in every scrape of the last minute of it
SLOW_CALL_S = 0.6  # one call of the slow router (it blocks the embedding replica meanwhile)
ROUTERS = ["mf", "sw_ranking", "length", "slow"]

# (panel title, query refId) -> why it cannot have data in this test.
PANELS_WITHOUT_DATA = {
    ("Classifier GPU utilisation", "A"): "no GPU here, and the causal_llm classifier (vLLM) is not deployed",
    ("Classifier GPU utilisation", "B"): "no GPU here: Ray exports node GPU metrics only for nodes with GPUs",
    ("Classifier GPU memory", "A"): "no GPU here, and the causal_llm classifier (vLLM) is not deployed",
    ("Classifier GPU memory", "B"): "no GPU here: Ray exports node GPU metrics only for nodes with GPUs",
    ("Shadow calls and spend", "B"): "the strong upstream is down on purpose, so every shadow call (always to the "
                                     "strong side here: chats are served weak) fails and none is billed",
}
# recording rule -> why it cannot have a series in this test (none: every rule is reached).
RULES_WITHOUT_DATA: dict[str, str] = {}
# dashboard variable -> why its query lists nothing here.
VARIABLES_WITHOUT_VALUES = {
    "cluster": "ray_io_cluster comes from the PodMonitor; outside Kubernetes no series has it (All, `.*`, "
               "matches its absence)",
}
FAULT_ALERTS = {
    "TurnoutHighErrorRatio": "overload 503s, routing timeouts, upstream 502s",
    "TurnoutHighFallbackRatio": "the strong upstream is unreachable; routing overload/timeouts on chat",
    "TurnoutOverloaded": "bursts over routing.max_in_flight",
    "TurnoutRequestsDropped": "requests queued past their deadline behind the slow router",
    "TurnoutRouteLatencyOverBudget": "the slow router answers /v1/route in 0.6 s or more",
    "TurnoutOverlayNotLoaded": "a corrupted overlay version is promoted while the service runs",
}
QUIET_ALERTS = {"TurnoutMetricsAbsent", "TurnoutIngressMetricsMissing", "TurnoutReplicasBelowTarget",
                "TurnoutCaptureDropping",
                "TurnoutReplicasFlapping"}
GAUGES = ("ray_turnout_threshold", "ray_turnout_strong_ratio", "ray_turnout_strong_ratio_target")


class SlowRouter(Router):
    """A backend that needs SLOW_CALL_S for any batch: the fault that queues requests past their deadline."""

    name = "slow"

    def _score(self, prompts: list[str]) -> np.ndarray:
        time.sleep(SLOW_CALL_S)
        return np.array([(sum(map(ord, p)) % 100) / 100 for p in prompts])


SLOW = RouterEntry(f"{MODULE}:SlowRouter", "embedding")


# ------------------------------------------------------------------------------------------------- the test


def test_live_metrics(tmp_path, capsys):
    import pytest

    from tests.deploy import missing

    start = time.perf_counter()
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        missing(f"the prometheus server is not installed (Debian package prometheus): run `sh {INSTALL}` as root")
    pytest.importorskip("ray.serve")
    netns = f"turnout-live-{os.getpid()}"
    created = subprocess.run(["ip", "netns", "add", netns], capture_output=True, text=True) \
        if shutil.which("ip") else None
    if created is None or created.returncode != 0:
        missing(f"`ip netns add` is not available ({created.stderr.strip() if created else 'no ip command'}): "
                "run as root on a machine with iproute2")
    try:
        subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True)
        _artifacts(tmp_path)
        log = tmp_path / "scenario.log"
        with log.open("w") as out:
            command = ["ip", "netns", "exec", netns, sys.executable, "-m", MODULE, str(tmp_path)]
            child = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
            try:
                child.wait(timeout=480)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
    finally:
        _remove_netns(netns)
    results_file = tmp_path / "results.json"
    assert results_file.is_file(), f"the scenario wrote no results:\n{_tail(log)}"
    results = json.loads(results_file.read_text())
    assert not results.get("error"), f"{results['error']}\n{_tail(log)}"
    _judge(results)
    with capsys.disabled():
        timings = ", ".join(f"{k} {v:.0f}s" for k, v in results["timings"].items())
        print(f"\nlive metrics proof: {time.perf_counter() - start:.0f}s ({timings})")


def _judge(results: dict) -> None:
    counts = Counter({tuple(k.split(" ")): v for k, v in results["traffic"].items()})

    def seen(**match) -> int:
        keys = ("kind", "router", "status", "code")
        return sum(n for key, n in counts.items() if all(key[keys.index(k)] == v for k, v in match.items()))

    # The load did what it was meant to: normal answers, and each injected fault answered as designed.
    for router in ("mf", "sw_ranking", "length"):  # 60 each, 4 at a time (a slow machine may miss the budget)
        assert seen(kind="route", router=router, status="200") >= 54, results["traffic"]
        assert not seen(kind="route", router=router, code="router_overloaded"), results["traffic"]
    assert seen(kind="chat", status="200", code="ok") > 0, results["traffic"]
    assert seen(kind="chat", status="200", code="upstream_unreachable") > 0, results["traffic"]
    assert seen(kind="route", router="slow", status="200") >= 3, results["traffic"]
    assert seen(kind="route", router="slow", status="503", code="router_overloaded") > 0, results["traffic"]
    assert seen(kind="route", router="slow", code="router_timeout") > 0, results["traffic"]
    assert seen(kind="chat", status="502", code="upstream_unavailable") > 0, results["traffic"]

    # (d) after an idle minute every controller gauge is still exported, and was in every scrape of that minute
    # (checked first: a gauge gone would also empty turnout:strong_ratio_target below, saying less).
    # the broken overlay: still ready (nothing changed in what serves), and /readyz says which version failed and why
    status, ready = results["readyz"]
    assert status == 200 and ready["overlay"]["version"] is None, ready
    assert ready["overlay"]["failed"]["version"] == "v-broken" and "corrupted" in ready["overlay"]["failed"]["reason"], ready
    idle = results["idle"]
    assert all(v == 0 for v in idle["increase"].values()), f"traffic during the idle minute: {idle['increase']}"
    expected = IDLE_WINDOW_S / SCRAPE_S
    for gauge in GAUGES:
        per_router = idle["gauges"][gauge]
        assert set(per_router) == set(ROUTERS), (gauge, per_router)
        thin = {r: n for r, n in per_router.items() if n < 0.8 * expected}
        assert not thin, f"{gauge} missing from scrapes of the idle minute ({expected:.0f} expected): {thin}"

    # (a) every panel query returns finite data over the run.
    empty = [f"{p['title']} [{p['ref']}]: {p['error'] or 'no finite sample'}: {p['query']}"
             for p in results["panels"] if not p["finite"] and (p["title"], p["ref"]) not in PANELS_WITHOUT_DATA]
    assert not empty, "panel queries without data:\n" + "\n".join(empty)
    unknown = set(PANELS_WITHOUT_DATA) - {(p["title"], p["ref"]) for p in results["panels"]}
    assert not unknown, f"allowlisted panel queries that the dashboard does not have: {unknown}"
    for name, values in results["variables"].items():
        if name not in VARIABLES_WITHOUT_VALUES:
            assert values, f"dashboard variable {name} lists nothing"
    assert set(results["variables"]["router"]) == set(ROUTERS), results["variables"]

    # (b) every rule evaluates; every recording rule has a series now.
    broken = [f"{r['name']}: {r['health']} {r['lastError']}" for r in results["rules"] if r["health"] != "ok"]
    assert not broken, "rules that do not evaluate:\n" + "\n".join(broken)
    recorded = [r for r in results["rules"] if r["type"] == "recording"]
    assert len(recorded) == len({r["name"] for r in recorded}) > 10, recorded
    empty = [r["name"] for r in recorded if not r["finite"] and r["name"] not in RULES_WITHOUT_DATA]
    assert not empty, f"recording rules without a finite series: {empty}"
    series = {r["name"]: r["series"] for r in recorded}
    # Values the deployment fixes: one healthy replica per deployment, the configured target per router.
    healthy = {s["deployment"]: s["value"] for s in series["turnout:healthy_replicas"]}
    assert healthy == {"IngressDeployment": 1.0, "EmbeddingDeployment": 1.0}, healthy
    targets = {s["router"]: s["value"] for s in series["turnout:strong_ratio_target"]}
    assert targets == dict.fromkeys(ROUTERS, 0.5), targets
    (ratio,) = series["turnout:server_error_ratio:ratio_rate5m"]
    assert 0.05 < ratio["value"] < 1, ratio

    # (c) the fault alerts are pending or firing; those about missing metrics or replicas are quiet.
    active = {a["name"] for a in results["alerts"] if a["state"] in ("pending", "firing")}
    assert set(FAULT_ALERTS) <= active, (sorted(set(FAULT_ALERTS) - active), results["alerts"])
    assert not QUIET_ALERTS & active, (sorted(QUIET_ALERTS & active), results["alerts"])


def _artifacts(work: Path) -> None:
    """sw_ranking and mf on synthetic battles with the hash-64 embedder (as tests/serve/conftest.py)."""
    from index.embedder import HashEmbedder
    from models import matrix_factorization as mf
    from models import sw_ranking
    from tests.models.test_sw_ranking import _training_data
    from tests.serve.conftest import REFERENCE_PROMPTS

    embedder = HashEmbedder(64)
    sw_ranking.train(_training_data(), embedder, work / "home" / "routers")
    tiny = mf.MFConfig(dim=8, epochs=10, batch_size=256, lr=3e-2, weight_decay=0.0, seed=0)
    mf.train(_training_data(n_battles=2000), embedder, work / "home" / "routers", tiny, progress=False)
    (work / "reference.txt").write_text("\n".join(REFERENCE_PROMPTS) + "\n")


def _remove_netns(netns: str) -> None:
    """Stop whatever still runs in the namespace (only this test's processes are there), then remove it."""
    pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    subprocess.run(["ip", "netns", "del", netns], capture_output=True)


def _tail(path: Path, lines: int = 80) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""


# -------------------------------------------------------------------------- the scenario, inside the netns


def scenario(work: Path) -> dict:
    """Prometheus + `turnout serve` + load, then every query; returns what the test judges."""
    from tests.serve.fakes import FakeUpstream, free_port

    timings, t = {}, time.monotonic()
    prom_port, http_port, metrics_port, nobody = free_port(), free_port(), free_port(), free_port()
    prom = f"http://127.0.0.1:{prom_port}"
    processes = []
    upstream = FakeUpstream().__enter__()
    try:
        processes.append(_start_prometheus(work, prom_port, metrics_port))
        config = _serve_config(work, http_port, f"http://127.0.0.1:{nobody}/v1", upstream.base_url)
        serve, lines = _start_serve(work, config, metrics_port)
        processes.append(serve)
        _wait_for(lambda: _query(prom, "ray_turnout_threshold"), 60, "Prometheus to scrape the ingress' gauges")
        timings["start"] = time.monotonic() - t
        _promote_broken_overlay(work / "home")
        t, t0 = time.monotonic(), time.time()
        traffic = _traffic(f"http://127.0.0.1:{http_port}", upstream)
        timings["load"] = time.monotonic() - t
        import httpx

        ready = httpx.get(f"http://127.0.0.1:{http_port}/readyz", timeout=10)
        time.sleep(IDLE_S)
        t, end = time.monotonic(), time.time()
        results = {"traffic": traffic, "readyz": [ready.status_code, ready.json()], **_observe(prom, t0, end),
                   "timings": timings}
        timings["queries"] = time.monotonic() - t
        return results
    finally:
        upstream.__exit__(None, None, None)
        for process in reversed(processes):
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


def _promote_broken_overlay(home: Path) -> None:
    """A corrupted overlay version made current under the running service: its replicas keep serving without one
    and count the failure (TurnoutOverlayNotLoaded)."""
    version = home / "overlays" / "v-broken"
    version.mkdir(parents=True)
    (version / "manifest.json").write_text("{ cut short")
    (home / "overlays" / "CURRENT").write_text("v-broken\n")


def _start_prometheus(work: Path, port: int, metrics_port: int) -> subprocess.Popen:
    import yaml

    config = work / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": f"{SCRAPE_S}s", "scrape_timeout": f"{SCRAPE_S}s",
                   "evaluation_interval": f"{EVALUATION_S}s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "ray", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
    }))
    log = (work / "prometheus.log").open("w")
    return subprocess.Popen([shutil.which("prometheus"), f"--config.file={config}",
                             f"--storage.tsdb.path={work / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
                             "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT)


def _serve_config(work: Path, http_port: int, strong_url: str, weak_url: str) -> Path:
    import yaml

    from serve.config import EMBEDDING, default_document
    from tests.serve.conftest import app_args

    args = app_args(work / "home", work / "reference.txt", strong_url, weak_url)
    args["routers"].update(enabled=ROUTERS, default="mf", extra={"slow": f"{MODULE}:SLOW"})
    args["routing"].update(max_in_flight=8, timeout_s=1.0)
    # most of the load is /v1/route: it feeds the controllers (and so their strong-ratio gauges) only when told to
    args["routing"]["controller"]["learn_from_route"] = True
    args["embedding"].update(max_batch_size=1)  # the slow router's requests queue one call each
    # the learning loop's series: every routed request captured, a shadow call for every chat, overlays polled often
    args["capture"].update(enabled=True, dir=str(work / "capture"), rotate_s=1.0, shadow_rate=1.0,
                           shadow_budget_usd=1.0)
    for side in ("strong", "weak"):
        args["upstreams"][side].update(price_input_usd_per_mtok=1.0, price_output_usd_per_mtok=2.0)
    args["routers"]["overlay_poll_s"] = 1.0
    document = default_document()
    document["applications"][0].update(args=args, deployments=[
        {"name": EMBEDDING, "autoscaling_config": {"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 4}},
    ])
    document["http_options"]["port"] = http_port
    path = work / "serve.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _start_serve(work: Path, config: Path, metrics_port: int) -> tuple[subprocess.Popen, list[str]]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # Ray keeps a gauge in its export for 2 report intervals after its last set. Reporting every second (for a
    # test of minutes), every periodic re-set must come faster than the defaults, which suit the default 10 s:
    # the ingress' controller gauges (5 s), Serve's replica-health gauge (10 s), the node/process reporter (5 s).
    env.update(PYTHONUNBUFFERED="1", RAY_metrics_report_interval_ms="1000", TURNOUT_GAUGE_REFRESH_S="0.5",
               RAY_SERVE_STATUS_GAUGE_REPORT_INTERVAL_S="0.5", REPORTER_UPDATE_INTERVAL_MS="1000")
    process = subprocess.Popen([sys.executable, "-m", "serve.cli", "serve", "--config", str(config),
                                "--metrics-port", str(metrics_port)], cwd=ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    ready = threading.Event()
    log = (work / "serve.log").open("w")

    def pump():
        for line in process.stdout:
            log.write(line)
            log.flush()
            lines.append(line)
            if "turnout is serving at" in line:
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 240
    while not ready.wait(0.5):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("turnout serve did not come up:\n" + "".join(lines[-40:]))
    return process, lines


def _traffic(base: str, upstream) -> dict[str, int]:
    """The load, phase by phase; returns 'kind router status code' -> count (code: the error code, the
    fallback reasons of a chat answer, or ok)."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    counts: Counter = Counter()
    lock = threading.Lock()
    client = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=64))

    def call(kind: str, router: str, body: dict) -> None:
        path = "/v1/route" if kind == "route" else "/v1/chat/completions"
        try:
            response = client.post(base + path, json=body)
            if response.status_code >= 400:
                code = response.json()["error"]["code"]
            else:
                code = response.headers.get("x-turnout-fallback") or "ok"
            key = f"{kind} {router} {response.status_code} {code.replace(',', '+')}"
        except httpx.HTTPError as exc:
            key = f"{kind} {router} transport {type(exc).__name__}"
        with lock:
            counts[key] += 1

    def route(router: str, i: int):
        return lambda: call("route", router, {"prompt": f"question {i} about topic {i * 7 % 13}", "router": router})

    def chat(model: str, i: int, stream: bool = False):
        router = model.removeprefix("router-").split("-")[0] if model != "turnout" else "mf"
        body = {"model": model, "stream": stream,
                "messages": [{"role": "user", "content": f"please answer question {i} on {i * 3 % 17}"}]}
        return lambda: call("chat", router, body)

    def run(calls, workers: int) -> None:
        with ThreadPoolExecutor(workers) as pool:
            for future in [pool.submit(c) for c in calls]:
                future.result()

    # Normal traffic, well inside max_in_flight: routes, chats sent to the weak side (a threshold of 1 in the
    # model name), default-routed chats (those decided strong fall back: nothing listens on the strong port).
    normal = []
    for i in range(60):
        normal += [route("mf", i), route("sw_ranking", i), route("length", i), chat("router-length-1", i),
                   chat("turnout", i)]
    normal += [chat("router-mf-1", i, stream=True) for i in range(4)]
    run(normal, 4)
    run([route("slow", i) for i in range(3)], 1)  # the slow router alone: answered, slowly
    # Overload: 32 at once against max_in_flight 8; the 8 admitted queue behind the slow router, 0.6 s each,
    # past the 1 s budget: the embedding deployment drops those whose deadline passed, the ingress times out.
    for burst in range(3):
        run([route("slow", 100 * burst + i) for i in range(24)] + [chat("router-slow", i) for i in range(8)], 32)
        time.sleep(1.0)
    # Upstream outage: the weak upstream stops too; chat calls find no upstream at all.
    upstream.__exit__(None, None, None)
    run([chat("router-length-1", i) for i in range(8)] + [chat("turnout", i) for i in range(4)], 4)
    client.close()
    return dict(counts)


def _observe(prom: str, start: float, end: float) -> dict:
    """Everything the test judges, from Prometheus' HTTP API."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = []
    for panel in _dashboard_panels(dashboard):
        for target in panel.get("targets", []):
            query = _grafana_expr(target["expr"], dashboard)
            try:
                result = _api(prom, "query_range", query=query, start=start, end=end, step=STEP_S)["result"]
                error = None
            except RuntimeError as exc:
                result, error = [], str(exc)
            panels.append({"title": panel["title"], "ref": target["refId"], "query": query, "error": error,
                           "series": [s["metric"] for s in result],
                           "finite": sum(_finite(v) for s in result for _, v in s["values"])})
    variables = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"])
            variables[variable["name"]] = _api(prom, f"label/{match.group(2)}/values",
                                               **{"match[]": _grafana_expr(match.group(1), dashboard)})
    rules = []
    for group in _api(prom, "rules")["groups"]:
        for rule in group["rules"]:
            entry = {"group": group["name"], "name": rule["name"], "type": rule["type"], "health": rule["health"],
                     "lastError": rule.get("lastError", "")}
            if rule["type"] == "recording":
                result = _query(prom, rule["name"])
                entry.update(series=[{**s["metric"], "value": float(s["value"][1])} for s in result],
                             finite=sum(_finite(s["value"][1]) for s in result))
            rules.append(entry)
    alerts = [{"name": a["labels"]["alertname"], "state": a["state"], "labels": a["labels"], "value": a.get("value")}
              for a in _api(prom, "alerts")["alerts"]]
    window = f"{IDLE_WINDOW_S}s"
    idle = {
        "increase": {name: sum(float(s["value"][1]) for s in _query(prom, f"increase({name}[{window}])"))
                     for name in ("ray_turnout_request_latency_ms_count", "ray_turnout_errors_total",
                                  "ray_turnout_decisions_total")},
        # Samples per router over the last minute (a range selection skips the staleness markers that a
        # series leaving the export gets).
        "gauges": {gauge: {s["metric"]["router"]: float(s["value"][1])
                           for s in _query(prom, f"max by (router) (count_over_time({gauge}[{window}]))")}
                   for gauge in GAUGES},
    }
    return {"panels": panels, "variables": variables, "rules": rules, "alerts": alerts, "idle": idle}


def _dashboard_panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out += [panel] + panel.get("panels", [])
    return [p for p in out if p.get("type") != "row"]


def _grafana_expr(expr: str, dashboard: dict) -> str:
    """The query Grafana sends with every variable at All: its allValue (`.*`), and $__rate_interval."""
    values = {v["name"]: v.get("allValue") or ".*" for v in dashboard["templating"]["list"] if v["type"] == "query"}
    expr = expr.replace("$__rate_interval", RATE_INTERVAL)
    expr = re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), expr)
    assert "$" not in expr, expr
    return expr


def _finite(value) -> bool:
    return math.isfinite(float(value))


def _api(prom: str, path: str, **params):
    import httpx

    response = httpx.get(f"{prom}/api/v1/{path}", params=params, timeout=30)
    body = response.json()
    if body.get("status") != "success":
        raise RuntimeError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
    return body["data"]


def _query(prom: str, query: str) -> list[dict]:
    return _api(prom, "query", query=query)["result"]


def _wait_for(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(1.0)
    raise RuntimeError(f"timed out waiting for {what}")


if __name__ == "__main__":
    import traceback

    workdir = Path(sys.argv[1])
    try:
        outcome = scenario(workdir)
    except Exception:  # noqa: BLE001 - reported to the test, which fails with it
        outcome = {"error": traceback.format_exc()}
    (workdir / "results.json").write_text(json.dumps(outcome, indent=1))
