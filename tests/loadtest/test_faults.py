"""loadtest.faults and loadtest.soak without Ray: lost-request accounting, recovery time, billing, metrics and
argument checks."""

import pytest

from index.errors import ConfigError
from loadtest import faults, soak
from loadtest.faults import NO_ANSWER, Record

DOCUMENTED = {"router_timeout": {503}, "router_overloaded": {503}, "upstream_failed": {502}}


def _r(sent, latency=0.05, status=200, code=None, endpoint=faults.ROUTE, **kw):
    return Record(endpoint, sent, sent + latency, status, code, **kw)


def test_outcome_ok_documented_error_or_lost():
    assert faults.outcome(_r(0), DOCUMENTED) == "ok"
    assert faults.outcome(_r(0, status=503, code="router_timeout"), DOCUMENTED) == "error"
    # documented code, but not with this status; no turnout body at all; no answer
    assert faults.outcome(_r(0, status=500, code="router_timeout"), DOCUMENTED) == "lost"
    assert faults.outcome(_r(0, status=500), DOCUMENTED) == "lost"
    assert faults.outcome(_r(0, status=NO_ANSWER, code="ServerDisconnectedError"), DOCUMENTED) == "lost"


def test_account_splits_lost_by_when_they_were_sent():
    kill = 10.0
    records = [
        _r(1.0), _r(9.0, status=NO_ANSWER, code="TimeoutError", latency=0.5),  # given up before the kill
        _r(9.8, status=500, latency=0.5),  # in flight at the kill, lost
        _r(9.9, latency=0.5),  # in flight at the kill, answered
        _r(10.5, status=503, code="router_timeout", retry_after=False),  # documented: an error seen
        _r(11.0, status=503, code="router_overloaded", retry_after=True),
        _r(12.0, status=NO_ANSWER, code="ClientOSError"),  # lost after the kill
        _r(13.0, fallback="router_unavailable", endpoint=faults.CHAT),
    ]
    got = faults.account(records, kill, DOCUMENTED)
    assert (got["sent"], got["ok"], got["errors"], got["lost"]) == (8, 3, 2, 3)
    assert (got["in_flight_at_kill"], got["lost_in_flight"], got["lost_after_kill"], got["lost_before_kill"]) == (
        2, 1, 1, 1)
    assert got["errors_with_retry_after"] == 1 and got["fallbacks"] == 1
    assert got["by_code"] == {"0 ClientOSError": 1, "0 TimeoutError": 1, "500 -": 1, "503 router_overloaded": 1,
                              "503 router_timeout": 1}
    assert got["lost_by_code"] == {"0 ClientOSError": 1, "0 TimeoutError": 1, "500 -": 1}


def test_lost_examples_show_bodies_that_are_not_turnout_errors():
    records = [_r(11.0, status=500, detail="Internal Server Error"), _r(12.0, status=500, detail="Internal Server Error")]
    assert faults.account(records, 10.0, DOCUMENTED)["lost_examples"] == ["500 -: Internal Server Error"]


def test_requests_go_to_the_last_kill_before_their_answer():
    kills = [15.0, 50.0]
    early, during, spanning, late = _r(1.0), _r(20.0), _r(49.0, latency=3.0, status=500), _r(60.0)
    first, second = faults.by_kill([early, during, spanning, late], kills)
    assert first == [early, during] and second == [spanning, late]
    # the request in flight at the second kill is counted there as in flight, not as lost after the first
    assert faults.account(second, 50.0, DOCUMENTED)["lost_in_flight"] == 1
    assert faults.by_kill([early], []) == []


def test_documented_codes_read_from_the_readme():
    codes = faults.documented_codes()
    assert codes["router_overloaded"] == {503} and codes["upstream_failed"] == {502}
    assert 404 in codes["not_found"] and 405 in codes["method_not_allowed"]


def _steady(start, end, latency, per_s=10, status=200, code=None):
    return [_r(start + i / per_s, latency, status, code) for i in range(int((end - start) * per_s))]


def test_recovery_after_an_outage_and_slow_seconds():
    kill = 20.0
    records = (_steady(0, 20, 0.10) + _steady(20, 25, 0.01, status=503, code="router_timeout")
               + _steady(25, 28, 0.40) + _steady(28, 40, 0.11))
    samples = ([{"t": t, "deployments": {"E": [{"replica_id": "a", "state": "RUNNING"}]}} for t in (19.5, 20.5)]
               + [{"t": 21.0, "deployments": {"E": [{"replica_id": "b", "state": "STARTING"}]}},
                  {"t": 26.4, "deployments": {"E": [{"replica_id": "b", "state": "RUNNING"}],
                                              "I": [{"replica_id": "i", "state": "RUNNING"}]}}])
    got = faults.recovery(records, samples, kill, 40.0, "a", baseline_s=10, hold=5, rate_tolerance=0.02,
                          p50_tolerance=1.5)
    assert got["baseline"]["success_rate"] == 1.0 and got["baseline"]["p50_ms"] == pytest.approx(100.0)
    assert got["seconds"][0]["success_rate"] == 0.0 and got["seconds"][5]["p50_ms"] == pytest.approx(400.0)
    # 26-31 s together: 20 slow answers and 30 fast ones, a p50 of 110 ms; 25-30 s: a p50 of 400 ms
    assert got["traffic_recovered_s"] == 6
    assert got["replicas_recovered_s"] == pytest.approx(6.4)
    assert got["full_recovery_s"] == pytest.approx(6.4)  # the replicas came last


def test_recovery_waits_for_the_replicas_and_needs_a_hold():
    kill = 10.0
    records = _steady(0, 10, 0.1) + _steady(10, 13, 0.1) + _steady(13, 14, 0.1, status=NO_ANSWER) + _steady(14, 16, 0.1)
    running = [{"replica_id": "new", "state": "RUNNING"}]
    samples = [{"t": 12.0, "deployments": {"E": [{"replica_id": "old", "state": "RUNNING"}]}},  # not noticed yet
               {"t": 30.5, "deployments": {"E": running}}]
    got = faults.recovery(records, samples, kill, 16.0, "old", 10, 3, 0.02, 1.5)
    assert got["traffic_recovered_s"] == 0  # 10-13 s healthy: the replicas decide here
    assert got["replicas_recovered_s"] == pytest.approx(20.5) and got["full_recovery_s"] == pytest.approx(20.5)
    # from 13 s the three seconds together have a third lost: not healthy, and no later window fits before 16 s
    assert faults.traffic_recovered_s(records, 13.0, 16.0, got["baseline"], 3, 0.02, 1.5) is None


def test_a_saturated_service_recovers_on_its_mean_not_on_every_second():
    """Half the requests time out before and after the kill, unevenly from second to second: pooled over the hold
    the rate is the baseline's, although most single seconds are below it."""
    def swinging(start, end):
        out = []
        for second in range(start, end):
            ok = 8 if second % 2 else 2  # 80 % and 20 %: 50 % on average
            out += [_r(second + i / 10, 0.1, 200 if i < ok else 503, None if i < ok else "router_timeout")
                    for i in range(10)]
        return out
    kill = 20.0
    records = swinging(0, 20) + _steady(20, 23, 0.01, status=503, code="router_timeout") + swinging(23, 40)
    baseline = faults.window_stats(r for r in records if 10 <= r.sent < 20)
    assert baseline["success_rate"] == pytest.approx(0.5)
    assert faults.traffic_recovered_s(records, kill, 40.0, baseline, 4, 0.02, 1.5) == 3


def test_recovery_never_and_empty_seconds():
    baseline = faults.window_stats(_steady(0, 5, 0.1))
    seconds = faults.seconds_after([], 5.0, 8.0)
    assert [s["requests"] for s in seconds] == [0, 0, 0]
    assert faults.traffic_recovered_s([], 5.0, 8.0, baseline, 1, 0.02, 1.5) is None  # no request: not healthy
    assert faults.replicas_recovered_s([], 5.0, "x") is None
    with pytest.raises(ValueError):
        faults.traffic_recovered_s([], 5.0, 8.0, baseline, 0, 0.02, 1.5)
    empty = faults.recovery([], [], 5.0, 8.0, "x", 5, 1, 0.02, 1.5)
    assert empty["full_recovery_s"] is None and empty["baseline"]["p50_ms"] is None


def test_billed_twice_only_after_a_failover_that_was_not_allowed():
    seen = {"strong": [{"id": "a", "answer": 503, "at": 1.0}, {"id": "b", "answer": 200, "at": 1.0},
                       {"id": "c", "answer": "reset after one chunk", "at": 1.0}, {"id": "d", "answer": 502, "at": 1}],
            "weak": [{"id": "a", "answer": 200, "at": 2.0}, {"id": "c", "answer": 200, "at": 2.0},
                     {"id": "e", "answer": 200, "at": 2.0}, {"id": "d", "answer": 200, "at": 2.0}]}
    # a: 503 before a body, then weak (allowed); e: only weak (strong unreachable); c: strong had sent a chunk;
    # d: a 502, which a load balancer may answer after its backend generated, so never a reason to go elsewhere
    assert faults.billed_twice(seen) == ["c", "d"]
    assert faults.billed_twice({"strong": [{"id": "x", "answer": 200, "at": 1}, {"id": "x", "answer": 200, "at": 2}],
                                "weak": []}) == ["x"]


def test_metrics_summed_over_ray_labels_and_deltas():
    text = """# HELP ray_turnout_errors_total requests answered with an error, by reason
# TYPE ray_turnout_errors_total counter
ray_turnout_errors_total{WorkerId="w1",endpoint="/v1/chat/completions",reason="upstream_500",replica="r1"} 2.0
ray_turnout_errors_total{WorkerId="w2",endpoint="/v1/chat/completions",reason="upstream_500",replica="r2"} 1.0
# HELP ray_turnout_fallbacks_total calls sent elsewhere
# TYPE ray_turnout_fallbacks_total counter
ray_turnout_fallbacks_total{WorkerId="w1",model="weak",reason="upstream_unreachable"} 4.0
# HELP ray_turnout_decisions_total decisions
# TYPE ray_turnout_decisions_total counter
ray_turnout_decisions_total{WorkerId="w1",model="weak",router="mf"} 9.0
"""
    parsed = faults.parse_metrics(text)
    errors = ("ray_turnout_errors_total", (("endpoint", "/v1/chat/completions"), ("reason", "upstream_500")))
    assert parsed[errors] == 3.0 and len(parsed) == 2
    before = {errors: 3.0}
    moved = faults.metric_deltas(before, parsed)
    assert moved == [{"series": "ray_turnout_fallbacks_total", "model": "weak", "reason": "upstream_unreachable",
                      "delta": 4.0}]


def test_kill_order_backends_first_ingress_last():
    bound = ["EmbeddingDeployment", "ClassifierDeployment", "IngressDeployment"]
    assert faults.kill_order(bound, None) == bound
    assert faults.kill_order(["IngressDeployment", "EmbeddingDeployment"], ["ingress"]) == ["IngressDeployment"]


@pytest.mark.parametrize("argv, fragment", [
    (["--clients", "0"], "--clients must be >= 1"),
    (["--clients", "250", "--chat-clients", "10"], "at most 256"),
    (["--slow", "2", "--upstream-timeout", "3"], "must be above --upstream-timeout"),
    (["--p50-tolerance", "0.9"], "below 1"),
    (["--kill", "proxy"], "unknown deployment"),
    (["--skip-kills", "--skip-upstream"], "nothing to run"),
    (["--config", "/nonexistent.yaml"], "no such file"),
    (["--classifier-clients", "40"], "more than --clients"),
    (["--kill-with", "nuke"], "invalid choice"),
])
def test_faults_arguments_one_line_exit_2(argv, fragment, capsys):
    with pytest.raises(ConfigError, match=fragment):
        faults.parse_args(argv)
    assert faults.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and fragment.split()[0] in err


def test_faults_defaults():
    args = faults.parse_args([])
    assert (args.clients, args.chat_clients, args.kill_with, args.out) == (32, 4, "ray", "benchmarks/faults.json")


# ------------------------------------------------------------------------------------------------ soak


@pytest.mark.parametrize("argv, fragment", [
    (["--minutes", "0"], "--minutes must be > 0"),
    (["--minutes", "500"], "at most"),
    (["--clients", "0"], "--clients must be in"),
    (["--sample-s", "0"], "--sample-s must be > 0"),
    (["--minutes", "0.5", "--sample-s", "60"], "no sample"),
])
def test_soak_arguments_one_line_exit_2(argv, fragment, capsys):
    with pytest.raises(ConfigError, match=fragment):
        soak.parse_args(argv)
    assert soak.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_soak_roles_of_ray_processes():
    assert soak.role("ray::ServeReplica:turnout:IngressDeployment", "python") == "ingress"
    assert soak.role("ray::ServeReplica:turnout:EmbeddingDeployment ", "python") == "embedding"
    assert soak.role("ray::ProxyActor", "python") == "proxy"
    assert soak.role("ray::ProxyActor.receive_asgi_messages", "python") == "proxy"
    assert soak.role("ray::ServeReplica:turnout:IngressDeployment.handle_request", "python") == "ingress"
    assert soak.role("ray::ServeController", "python") == "controller"
    assert soak.role("/x/ray/core/src/ray/raylet/raylet --raylet_socket_name=...", "raylet") == "raylet"
    assert soak.role("/x/ray/core/src/ray/gcs/gcs_server --gcs_server_port=1", "gcs_server") == "gcs"
    assert soak.role("ray::IDLE", "python") == "idle_worker"
    assert soak.role("python -m something", "python") is None


def test_soak_per_minute_and_summary():
    records = ([_r(5 + i * 0.1, 0.1) for i in range(500)]  # minute 0 (5-55 s): p50 100 ms
               + [_r(65 + i * 0.1, 0.2) for i in range(500)]  # minute 1: 200 ms
               + [_r(70.0, status=503, code="router_overloaded"), _r(71.0, status=NO_ANSWER, code="TimeoutError")])
    minutes = soak.per_minute(records, 2)
    assert [m["minute"] for m in minutes] == [0, 1]
    assert minutes[0]["p50_ms"] == pytest.approx(100.0) and minutes[1]["p50_ms"] == pytest.approx(200.0)
    assert minutes[1]["errors"] == 2 and minutes[1]["error_codes"] == {"0 TimeoutError": 1,
                                                                        "503 router_overloaded": 1}
    rss = [{"t": 0, "processes": {"ingress": {"rss_mb": 200.0, "pids": [1]}, "gcs": {"rss_mb": 50.0, "pids": [2]}}},
           {"t": 30, "processes": {"ingress": {"rss_mb": 230.0, "pids": [1]}, "gcs": {"rss_mb": 50.0, "pids": [2]}}},
           {"t": 60, "processes": {"ingress": {"rss_mb": 260.0, "pids": [3]}}}]
    growth = soak.rss_growth(rss)
    assert growth["ingress"] == {"start_mb": 200.0, "end_mb": 260.0, "growth_mb": 60.0, "growth_pct": 30.0,
                                 "max_mb": 260.0, "restarted": True}
    assert growth["gcs"]["end_mb"] == 50.0 and growth["gcs"]["growth_mb"] == 0.0 and not growth["gcs"]["restarted"]
    drift = soak.p99_drift(minutes)
    assert drift["first_minute_p99_ms"] == minutes[0]["p99_ms"] and drift["last_minute_p99_ms"] == minutes[1]["p99_ms"]
    assert drift["ratio"] == pytest.approx(minutes[1]["p99_ms"] / minutes[0]["p99_ms"], rel=1e-3)
