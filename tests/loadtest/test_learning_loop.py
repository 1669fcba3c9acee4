"""loadtest.learning_loop's summary: a run's records in the issue's shape, and its plot."""

import json

from loadtest.learning_loop import main


def _record(bench):
    row = {"labels": 100, "apgr": 0.6, "interval": [0.5, 0.7], "p_gt_length": 0.97, "p_gt_before": 0.99}
    return {"command": "python -m loadtest.learning_loop", "date": "2026-12-07", "benchmarks": [{
        "benchmark": bench, "strong": "s", "weak": "w", "held_out": 40, "length": {"apgr": 0.55},
        "routers": {"sw_ranking": {"before": {"apgr": 0.5, "interval": [0.4, 0.6], "p_gt_length": 0.2},
                                   "curve": [row, {**row, "labels": 300, "apgr": 0.65}]},
                    "mf": {"before": {"apgr": 0.1, "interval": [0, 0.2], "p_gt_length": 0.0}, "curve": []}}}]}


def test_summarise_writes_the_issue_shape_and_a_plot(tmp_path, capsys):
    runs = []
    for bench in ("gsm8k", "mmlu"):
        runs.append(tmp_path / f"{bench}.json")
        runs[-1].write_text(json.dumps(_record(bench)))
    out = tmp_path / "learning_loop.json"
    assert main(["--summarise", *map(str, runs), "--out", str(out)]) == 0
    shaped = json.loads(out.read_text())
    assert list(shaped) == ["gsm8k", "mmlu"]
    assert shaped["gsm8k"]["before"] == {"apgr": 0.5, "apgr_ci95": [0.4, 0.6], "p_gt_length": 0.2, "length_apgr": 0.55}
    assert shaped["mmlu"]["curve"][1] == {"n_labels": 300, "apgr": 0.65, "apgr_ci95": [0.5, 0.7], "p_gt_length": 0.97,
                                          "p_gt_before": 0.99, "length_apgr": 0.55}
    assert out.with_suffix(".png").stat().st_size > 10_000
