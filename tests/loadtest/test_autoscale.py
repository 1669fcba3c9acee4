"""loadtest.autoscale without Ray: the load plan, the per-second timeline, the summary and argument checks."""

import pytest

from index.errors import ConfigError
from loadtest import autoscale
from loadtest.autoscale import NO_ANSWER, LoadPlan, parse_args, summarise, timeline

PLAN = LoadPlan(idle_s=10, ramp_s=10, hold_s=30, cool_s=40, peak=32, floor=1)


def _sample(t, running, starting=0, stopping=0, target=None):
    return {"t": t, "running": running, "starting": starting, "stopping": stopping,
            "target": running + starting if target is None else target, "busy_cores": 1.5}


# 1 replica until 16 s, a second one starting at 14 s and running at 18 s, a third at 24 s; after the drop (50 s)
# two stop at 62 s and the deployment is back at one replica.
SAMPLES = ([_sample(t, 1) for t in range(0, 14)] + [_sample(t, 1, starting=1) for t in range(14, 18)]
           + [_sample(t, 2, starting=1) for t in range(18, 24)] + [_sample(t, 3) for t in range(24, 62)]
           + [_sample(62, 1, stopping=2), _sample(63, 1, stopping=2)] + [_sample(t, 1) for t in range(64, 75)])


def test_plan_phases_and_clients():
    assert [PLAN.phase(t) for t in (0, 9.9, 10, 19.9, 20, 49.9, 50, 89)] == [
        "idle", "idle", "ramp", "ramp", "hold", "hold", "cool", "cool"]
    assert PLAN.clients(0) == 1 and PLAN.clients(10) == 1 and PLAN.clients(10.01) == 2
    assert PLAN.clients(15) == 1 + 16 and PLAN.clients(19.99) == 32 and PLAN.clients(20) == 32
    assert PLAN.clients(50) == 1 and PLAN.end_at == 90
    ramp = [PLAN.clients(10 + i / 10) for i in range(100)]
    assert ramp == sorted(ramp) and max(ramp) == 32  # monotone up to the peak, never beyond


def test_timeline_buckets_answers_errors_and_replicas():
    events = [(0.2, 0.010, 200), (0.7, 0.030, 200), (0.9, 0.020, 503, "router_overloaded"), (1.5, 2.0, NO_ANSWER),
              (15.1, 0.5, 200)] + [(21.0 + i / 100, 0.001 * (i + 1), 200) for i in range(100)]
    rows = timeline(events, SAMPLES, PLAN, 70)
    assert len(rows) == 70 and [r["t"] for r in rows[:3]] == [0, 1, 2]
    first = rows[0]
    assert (first["requests"], first["errors"], first["error_codes"]) == (2, 1, {"503": 1})
    assert first["p50_ms"] == pytest.approx(20.0) and first["clients"] == 1 and first["phase"] == "idle"
    assert rows[1]["error_codes"] == {"0": 1} and rows[1]["requests"] == 0 and rows[1]["p50_ms"] is None
    # the state at the end of each second: second 13 ends with the sample at 14 s (one starting)
    assert (rows[13]["replicas"], rows[13]["starting"], rows[13]["target"]) == (1, 1, 2)
    assert rows[21]["requests"] == 100 and rows[21]["p50_ms"] == pytest.approx(50.5) and rows[21]["p99_ms"] >= 99
    assert rows[30]["replicas"] == 3 and rows[30]["clients"] == 32 and rows[30]["phase"] == "hold"
    assert rows[61]["replicas"] == 1 and rows[61]["stopping"] == 2 and rows[69]["replicas"] == 1


def test_timeline_before_the_first_sample_has_no_replica_figures():
    rows = timeline([], [_sample(2.5, 1)], PLAN, 4)
    assert [r["replicas"] for r in rows] == [None, None, 1, 1]


def test_summary_scale_up_down_and_errors():
    events = ([(t + 0.5, 0.05, 200) for t in range(0, 90)]
              + [(30.2, 1.0, 503, "router_timeout"), (30.4, 1.0, 503, None), (31.0, 3.0, 0, "ServerDisconnectedError")])
    summary = summarise(events, SAMPLES, PLAN, min_replicas=1, max_replicas=3, ended_at=75.0)
    assert summary["max_replicas_reached"] == 3
    assert summary["first_upscale_decision_s"] == 4.0  # ramp at 10 s, the target raised at 14 s
    assert summary["first_upscale_s"] == 8.0  # two running at 18 s
    assert summary["time_to_max_s"] == 14.0  # three running at 24 s
    assert summary["replicas_at_drop"] == 3 and summary["time_to_scale_down_s"] == 12.0  # drop 50 s, one at 62 s
    assert summary["scale_down_decision_s"] == 12.0
    assert [(c["from"], c["to"]) for c in summary["replica_changes"]] == [(1, 2), (2, 3), (3, 1)]
    assert summary["downscales_under_load"] == 0 and summary["upscales_after_drop"] == 0
    assert summary["replicas_started_after_drop"] == 0
    assert summary["errors"] == 3 and summary["error_codes"] == {"0": 1, "503": 2} and summary["requests"] == 93
    assert summary["error_reasons"] == {"0 ServerDisconnectedError": 1, "503": 1, "503 router_timeout": 1}
    phases = summary["phases"]
    assert set(phases) == {"idle", "ramp", "hold", "cool"}
    assert phases["hold"]["errors"] == 3 and phases["hold"]["requests"] == 30 and phases["hold"]["seconds"] == 30
    assert phases["cool"]["seconds"] == 25  # the run ended at 75 s, before the plan's 90 s
    assert phases["idle"]["requests_per_s"] == pytest.approx(1.0)
    # the whole hold (20-50 s) ran at three replicas except its first 4 s at two
    by = summary["hold_by_replicas"]
    assert set(by) == {"2", "3"} and by["2"]["seconds"] == 4 and by["3"]["seconds"] == 26
    assert by["2"]["requests"] + by["3"]["requests"] == 30 and by["2"]["errors"] + by["3"]["errors"] == 3
    assert summary["cores"] == {"machine_busy_mean": 1.5, "this_run_mean": None, "other_work_mean": None}
    shared = summarise([], [{**sample, "run_cores": 1.0} for sample in SAMPLES], PLAN, 1, 3, 75.0)
    assert shared["cores"] == {"machine_busy_mean": 1.5, "this_run_mean": 1.0, "other_work_mean": 0.5}


def test_summary_counts_flapping_and_never_scaling():
    # up at 20 s, down under load at 30 s, up at 35 s; after the drop (50 s): down at 55, up at 60, down at 63
    flapping = ([_sample(t, 1) for t in range(0, 20)] + [_sample(t, 2) for t in range(20, 30)]
                + [_sample(t, 1) for t in range(30, 35)] + [_sample(t, 2) for t in range(35, 55)]
                + [_sample(t, 1) for t in range(55, 60)] + [_sample(t, 2) for t in range(60, 63)]
                + [_sample(t, 1) for t in range(63, 70)])
    summary = summarise([], flapping, PLAN, 1, 3, 70.0)
    assert summary["max_replicas_reached"] == 2 and summary["downscales_under_load"] == 1
    assert summary["upscales_after_drop"] == 1 and summary["replicas_at_drop"] == 2
    assert summary["time_to_scale_down_s"] == 5.0 and summary["errors"] == 0  # the first time back at one
    assert summary["scale_down_decision_s"] == 5.0 and summary["first_upscale_decision_s"] == 10.0
    assert len(summary["replica_changes"]) == 6

    # a third replica asked for at 40 s that only runs at 55 s, after the drop: a slow start, not flapping
    slow = ([_sample(t, 1) for t in range(0, 25)] + [_sample(t, 2) for t in range(25, 40)]
            + [_sample(t, 2, starting=1) for t in range(40, 55)] + [_sample(t, 3, target=1) for t in range(55, 60)]
            + [_sample(t, 1, stopping=2) for t in range(60, 62)] + [_sample(t, 1) for t in range(62, 70)])
    late = summarise([], slow, PLAN, 1, 3, 70.0)
    assert late["upscales_after_drop"] == 0 and late["replicas_started_after_drop"] == 1
    assert late["max_replicas_reached"] == 3 and late["time_to_max_s"] == 45.0 and late["replicas_at_drop"] == 2
    assert late["scale_down_decision_s"] == 5.0 and late["time_to_scale_down_s"] == 10.0
    assert [(c["from"], c["to"]) for c in late["target_changes"]] == [(1, 2), (2, 3), (3, 1)]

    flat = summarise([], [_sample(t, 1) for t in range(70)], PLAN, 1, 3, 70.0)
    assert flat["max_replicas_reached"] == 1 and flat["replica_changes"] == []
    assert flat["first_upscale_s"] is None and flat["time_to_max_s"] is None and flat["time_to_scale_down_s"] is None
    assert flat["first_upscale_decision_s"] is None and flat["scale_down_decision_s"] is None

    # without the controller's target (its call failed) the decisions are unknown, the replica figures still there
    blind = summarise([], [{**sample, "target": None} for sample in SAMPLES], PLAN, 1, 3, 75.0)
    assert blind["first_upscale_decision_s"] is None and blind["scale_down_decision_s"] is None
    assert blind["time_to_max_s"] == 14.0


def test_defaults_fit_the_four_minute_bound_on_two_cpus():
    args = parse_args([], cpus=2)
    assert args.max_replicas == 3 and args.peak == 32 and args.floor == 1
    assert args.max_run_s <= 230 and args.idle + args.ramp + args.hold + args.cool < args.max_run_s
    scaling = autoscale.autoscaling_config(args.max_replicas, args.target_ongoing, args.upscale_delay,
                                           args.downscale_delay, args.look_back)
    assert scaling["min_replicas"] == 1 and scaling["max_replicas"] == 3


def test_overlay_is_a_valid_serve_config_with_the_override():
    pytest.importorskip("ray.serve")
    from serve.config import load_serve_file

    scaling = autoscale.autoscaling_config(3, 8.0, 3.0, 15.0, 12.0)
    served = load_serve_file(text=autoscale.overlay_yaml(scaling, "sw_ranking"))
    assert served.config.routers.default == "sw_ranking"
    embedding = next(d for d in served.filled()["applications"][0]["deployments"] if d["name"] == autoscale.DEPLOYMENT)
    assert embedding["autoscaling_config"] == scaling and "num_replicas" not in embedding
    assert embedding["max_ongoing_requests"] == 32  # the defaults stay: only the scaling is overridden
    assert load_serve_file(text=autoscale.overlay_yaml(scaling, "length")).config.routers.default == "length"


@pytest.mark.parametrize("argv, words", [
    (["--max-replicas", "1"], "nothing to scale"),
    (["--max-replicas", "4"], "needs 2.5 CPUs"),
    (["--floor", "32"], "must be below --peak"),
    (["--peak", "0"], "--peak must be > 0"),
    (["--idle", "-1"], "--idle must be >= 0"),
    (["--look-back", "5"], "metrics_interval_s"),
    (["--hold", "300"], "leave no cool phase"),
    (["--peak", "1000"], "at most 256"),
    (["--ramp", "soon"], "invalid float value"),
    (["--router", "length"], "is not scored by EmbeddingDeployment"),
    (["--frobnicate"], "unrecognized arguments"),
])
def test_bad_arguments_are_one_line(argv, words):
    with pytest.raises(ConfigError, match=words) as info:
        parse_args(argv, cpus=2)
    assert "\n" not in str(info.value)


def test_main_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "autoscale.json"
    assert autoscale.main(["--max-replicas", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--max-replicas" in err and not out.exists()


def test_tree_cpu_counts_this_process_and_its_children():
    import os
    import subprocess
    import sys
    import time

    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                              "while time.process_time() - t < 1.0: pass\ntime.sleep(30)"])
    try:
        before = autoscale.tree_cpu_seconds(os.getpid())
        deadline = time.monotonic() + 20
        while autoscale.tree_cpu_seconds(os.getpid()) - before < 0.3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert autoscale.tree_cpu_seconds(os.getpid()) - before >= 0.3  # the child's busy loop counts
        assert autoscale.tree_cpu_seconds(child.pid) <= autoscale.tree_cpu_seconds(os.getpid())
    finally:
        child.kill()
        child.wait()


def test_error_code_read_from_a_turnout_error_body():
    body = b'{"error": {"message": "m", "type": "t", "code": "router_timeout"}}'
    assert autoscale._error_code(body) == "router_timeout"
    assert autoscale._error_code(b"<html>bad gateway</html>") is None and autoscale._error_code(b'{"a": 1}') is None


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    rows = timeline([(t + 0.5, 0.05, 200) for t in range(70)] + [(30.5, 1.0, 503)], SAMPLES, PLAN, 70)
    summary = summarise([], SAMPLES, PLAN, 1, 3, 70.0)
    path = tmp_path / "autoscale.png"
    autoscale.plot(rows, PLAN, summary, path, "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
