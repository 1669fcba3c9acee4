"""The Prometheus assets in deploy/prometheus/: rules checked and unit-tested by the real promtool, alerts tied to
real dashboard panels, every queried metric a real one, the PrometheusRule wrapper generated from the rules.

promtool comes from Debian's prometheus package (deploy/ci/observability_tools.sh installs it). Without it these
tests skip, except under CI (the CI variable set), where a missing tool is a failure: a green run must mean the
rules were checked.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy import load_module
from tests.deploy import promtool as find_promtool

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
RULES = PROM / "rules.yml"
UNIT_TESTS = PROM / "tests" / "rules_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "turnout.json"
REAL_SCRAPE = PROM / "tests" / "ray_2.60_scrape.prom"
# What the PodMonitor's scrape adds to every series (the operator's endpoint label is dropped).
SCRAPE_LABELS = {"container", "instance", "job", "namespace", "pod", "ray_io_cluster", "ray_io_node_type"}


metric_names = load_module("turnout_deploy_metric_names", PROM / "metric_names.py")
prometheusrule = load_module("turnout_deploy_prometheusrule", PROM / "prometheusrule.py")


@pytest.fixture(scope="module")
def promtool() -> str:
    return find_promtool()


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=ROOT)


def _rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def _alerts() -> dict[str, dict]:
    return {rule["alert"]: rule for rule in _rules() if "alert" in rule}


# ------------------------------------------------------------------------------------------------ promtool


def test_rules_pass_promtool_check(promtool):
    result = _run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


@pytest.mark.parametrize("broken, message", [
    ({"record": "turnout:broken", "expr": "sum by (router (rate(ray_turnout_decisions_total[5m]))"}, "parse error"),
    ({"alert": "Broken", "expr": "vector(1)", "for": "ten minutes"}, "not a valid duration"),
    ({"alert": "Broken", "expr": "vector(1)", "annotations": {"summary": "{{ $value | nosuchfunc }}"}},
     'function "nosuchfunc" not defined'),
])
def test_a_broken_rule_file_fails_the_check(promtool, tmp_path, broken, message):
    document = yaml.safe_load(RULES.read_text())
    document["groups"][0]["rules"].append(broken)
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    result = _run(promtool, "check", "rules", str(path))
    assert result.returncode != 0, result.stdout
    assert message in result.stdout + result.stderr, result.stdout + result.stderr


def test_alert_unit_tests_pass(promtool):
    result = _run(promtool, "test", "rules", str(UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_a_wrong_expectation_fails_the_unit_tests(promtool, tmp_path):
    """The unit tests can fail: an alert expected where none fires is reported with the alert's name."""
    document = yaml.safe_load(UNIT_TESTS.read_text())
    document["rule_files"] = [str(RULES)]
    case = next(t for test in document["tests"] for t in test.get("alert_rule_test", []) if not t.get("exp_alerts"))
    case["exp_alerts"] = [{"exp_labels": {"severity": "warning"}}]
    path = tmp_path / "rules_test.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    result = _run(promtool, "test", "rules", str(path))
    assert result.returncode != 0, result.stdout
    assert case["alertname"] in result.stdout + result.stderr


def test_every_alert_is_unit_tested_firing_and_not_firing():
    cases: dict[str, set[bool]] = {}
    for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    missing = {name: {True, False} - cases.get(name, set()) for name in _alerts()}
    assert not {k: v for k, v in missing.items() if v}, "alerts without a firing (True) or quiet (False) case"


def _series_labels(text: str) -> tuple[str, dict[str, str]]:
    name, _, body = text.partition("{")
    return name.strip(), dict(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"', body))


def _unit_test_series() -> list[tuple[str, str, dict[str, str]]]:
    """(test name, metric name, labels) of every input series of the unit tests."""
    out = []
    for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        out += [(test["name"], *_series_labels(item["series"])) for item in test["input_series"]]
    return out


def test_unit_test_series_carry_the_labels_of_a_real_ray_scrape():
    """Each input series has exactly the label names a real Ray 2.60 scrape gives that kind of series
    (tests/ray_2.60_scrape.prom), plus the PodMonitor's. turnout's metrics are compared with the probe metrics
    of the capture: a ray.serve.metrics metric recorded in a Serve replica, like them."""
    captured = {}
    for line in REAL_SCRAPE.read_text().splitlines():
        if line and not line.startswith("#"):
            name, labels = _series_labels(line)
            captured[name] = set(labels)
    replica_metric = captured["ray_probe_decisions_total"] - {"router", "model"}
    turnout = metric_names.turnout_exported()
    for test, name, labels in _unit_test_series():
        own = set(labels) - SCRAPE_LABELS
        if name in turnout:
            expected = replica_metric | set(turnout[name].tags) | ({"le"} if name.endswith("_bucket") else set())
        else:
            assert name in captured, f"{test}: {name} is not in the real scrape; add it there first"
            expected = captured[name]
        assert own == expected, (test, name, sorted(own ^ expected))
        assert SCRAPE_LABELS <= set(labels), (test, name, sorted(SCRAPE_LABELS - set(labels)))


def test_unit_tests_include_replica_restarts():
    """Some series come from two processes in turn (a restart changes WorkerId, and a replica's id)."""
    by_identity: dict[tuple, set[str]] = {}
    process_labels = {"WorkerId", "replica", "pod", "instance", "NodeAddress"}
    for test, name, labels in _unit_test_series():
        if "WorkerId" not in labels:  # node metrics: per node, not per process
            continue
        identity = tuple(sorted((k, v) for k, v in labels.items() if k not in process_labels))
        by_identity.setdefault((test, name, identity), set()).add(labels["WorkerId"])
    restarted_tests = {key[0] for key, workers in by_identity.items() if len(workers) > 1}
    assert len(restarted_tests) >= 5, restarted_tests


def test_the_real_scrape_names_only_metrics_the_scan_knows():
    """The Ray metric names found in Ray's source include every Serve/node/process series of the real scrape."""
    known = set(metric_names.ray_exported())
    names = {_series_labels(line)[0] for line in REAL_SCRAPE.read_text().splitlines()
             if line.startswith(("ray_serve_", "ray_node_", "ray_component_"))}
    assert names and names <= known, names - known


# ------------------------------------------------------------------------------------------- rule content


def test_every_alert_has_summary_description_and_a_real_dashboard_panel():
    dashboard = json.loads(DASHBOARD.read_text())
    titles = {p["title"] for p in dashboard["panels"] if p.get("type") != "row"}
    for name, alert in _alerts().items():
        annotations = alert.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description"), name
        assert annotations.get("dashboard_panel") in titles, (name, annotations.get("dashboard_panel"))
        assert alert.get("labels", {}).get("severity") in {"warning", "critical"}, name


def test_rules_query_only_metrics_that_exist():
    """Every name is a turnout metric (serve/metrics.py through exported()), a Ray metric defined in the
    installed Ray, or a series recorded by these rules."""
    known = set(metric_names.turnout_exported()) | set(metric_names.ray_exported())
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    for rule in _rules():
        names = metric_names.metric_names(rule["expr"])
        assert names, rule
        unknown = names - known - recorded
        assert not unknown, (rule.get("record") or rule.get("alert"), unknown)


def test_the_name_parser_finds_metrics_not_labels():
    expr = ('sum by (ray_io_cluster, router) (rate({__name__=~"ray_a_total|ray_b_count", ray_io_cluster=~"x"}[5m]))'
            ' / on (ray_io_cluster) group_left () ray_c{ray_io_cluster="y"} + turnout:rule:rate5m')
    assert metric_names.metric_names(expr) == {"ray_a_total", "ray_b_count", "ray_c", "turnout:rule:rate5m"}
    assert metric_names.metric_names('label_values(ray_d{application=~"$a"}, ray_io_cluster)') == {"ray_d"}


def test_histogram_names_are_scraped_with_suffixes_only():
    """A histogram's bare name is never a series; a counter ends in _total (the variable-query trap)."""
    exported = metric_names.turnout_exported()
    assert "ray_turnout_request_latency_ms" not in exported
    assert {"ray_turnout_request_latency_ms_bucket", "ray_turnout_decisions_total"} <= set(exported)
    ray = metric_names.ray_exported()
    assert "ray_serve_deployment_request_counter_total" in ray and "ray_serve_deployment_request_counter" not in ray


def test_rules_aggregate_away_worker_and_never_average_latency_from_sums():
    text = "\n".join(rule["expr"] for rule in _rules())
    assert "WorkerId" not in text
    assert "_sum" not in text  # latency comes from buckets, not rate(_sum) / rate(_count)
    for clause in re.findall(r"\bby\s*\(([^)]*)\)", text):
        labels = {label.strip() for label in clause.split(",")}
        assert "ray_io_cluster" in labels, clause  # a second cluster (an upgrade in progress) stays separate
    for rule in _rules():
        if "histogram_quantile" in rule["expr"]:
            assert re.search(r"histogram_quantile\([0-9.]+,\s*sum by \([^)]*\ble\b", rule["expr"]), rule


# -------------------------------------------------------------------------------------------- manifests


def test_prometheusrule_is_generated_from_the_rules():
    committed = (PROM / "prometheusrule.yaml").read_text()
    assert committed == prometheusrule.render(), "run: python deploy/prometheus/prometheusrule.py"
    document = yaml.safe_load(committed)
    assert (document["apiVersion"], document["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert document["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_podmonitor_scrapes_head_and_workers_with_the_cluster_label():
    monitor = yaml.safe_load((PROM / "podmonitor.yaml").read_text())
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    selector = monitor["spec"]["selector"]
    node_types = [e for e in selector["matchExpressions"] if e["key"] == "ray.io/node-type"]
    assert node_types and set(node_types[0]["values"]) == {"head", "worker"}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    relabel = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"] if "targetLabel" in r}
    assert relabel["ray_io_cluster"] == ["__meta_kubernetes_pod_label_ray_io_cluster"]
    # The operator's own endpoint="<port>" target label would push turnout's endpoint label to exported_endpoint.
    assert {"action": "labeldrop", "regex": "endpoint"} in endpoint["relabelings"]


def _pod_templates(node):
    """(group, pod template) of every head and worker group in a RayService or RayCluster document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "headGroupSpec" and isinstance(value, dict) and "template" in value:
                yield "head", value["template"]
            elif key == "workerGroupSpecs" and isinstance(value, list):
                for group in value:
                    if isinstance(group, dict) and "template" in group:
                        yield group.get("groupName", "worker"), group["template"]
            else:
                yield from _pod_templates(value)
    elif isinstance(node, list):
        for item in node:
            yield from _pod_templates(item)


def test_podmonitor_selects_the_pods_deploy_k8s_defines():
    """The PodMonitor's labels are on every Ray pod template in deploy/k8s (KubeRay sets the ray.io/ ones), and
    each template's Ray container names port 8080 `metrics`."""
    k8s = ROOT / "deploy" / "k8s"
    if not k8s.is_dir():
        pytest.skip("deploy/k8s is not there yet")
    selector = yaml.safe_load((PROM / "podmonitor.yaml").read_text())["spec"]["selector"]["matchLabels"]
    ours = {k: v for k, v in selector.items() if not k.startswith("ray.io/")}
    checked = 0
    for path in sorted(k8s.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            for group, template in _pod_templates(document):
                labels = (template.get("metadata") or {}).get("labels")
                if labels is None:  # a patch that leaves the base's template labels alone
                    continue
                assert ours.items() <= labels.items(), (path.name, group, labels)
                containers = (template.get("spec") or {}).get("containers") or []
                if containers and "ports" in containers[0]:
                    ports = {p.get("name"): p.get("containerPort") for p in containers[0]["ports"]}
                    assert ports.get("metrics") == 8080, (path.name, group, ports)
                checked += 1
    assert checked, "no Ray pod template found under deploy/k8s"


def test_readme_lists_every_turnout_series():
    readme = (PROM / "README.md").read_text()
    missing = [name for name in metric_names.turnout_exported() if f"`{name}`" not in readme]
    assert not missing, "refresh the table: python deploy/prometheus/metric_names.py"
