"""`evaluate` and its outputs (models/evaluation.py) on a synthetic benchmark: no models, no shared data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.base import Router
from models.benchmarks import Benchmark
from index.errors import ConfigError
from models.evaluation import LENGTH_LABEL, RANDOM_LABEL, evaluate, format_table, quality_summary, write_results
from models.length_router import LengthRouter
from models.metrics import summarize

OLD_KEYS = {"apgr", "cpt50", "cpt80", "apgr_dense"}
NEW_KEYS = {"apgr_ci95", "p_gt_length", "p_gt_random"}


class TableRouter(Router):
    """p_strong looked up per prompt: any ranking a test needs, without a model."""

    name = "table"

    def __init__(self, p_strong: dict[str, float]) -> None:
        self.p_strong = p_strong

    def _score(self, prompts: list[str]) -> np.ndarray:
        return np.array([self.p_strong[p] for p in prompts])


@pytest.fixture(scope="module")
def bench() -> Benchmark:
    """Longer prompts are harder for the weak model, so the length baseline is better than random."""
    rng = np.random.default_rng(0)
    n = 600
    chars = rng.integers(20, 2000, n)
    difficulty = chars / 2000
    weak = (rng.random(n) < 0.85 - 0.5 * difficulty).astype(float)
    strong = np.maximum(weak, rng.random(n) < 0.7 * difficulty).astype(float)
    prompts = [f"{i:04d} " + "x" * int(c) for i, c in enumerate(chars)]
    return Benchmark(name="synthetic", prompts=prompts, strong=strong, weak=weak)


@pytest.fixture(scope="module")
def routers(bench: Benchmark) -> dict[str, Router]:
    gain = bench.strong - bench.weak
    rng = np.random.default_rng(1)
    oracle_like = gain + 1e-3 * rng.random(len(gain))
    return {
        "oracle_like": TableRouter(dict(zip(bench.prompts, (oracle_like + 1) / 3))),
        "length": LengthRouter(),
        "noise": TableRouter(dict(zip(bench.prompts, rng.random(len(gain))))),
    }


@pytest.fixture(scope="module")
def results(routers, bench, tmp_path_factory) -> dict:
    return evaluate(routers, [bench], None, tmp_path_factory.mktemp("eval"), bootstrap=300, seed=2)


def test_every_router_carries_an_interval_and_paired_probabilities(results, bench):
    entry = results["synthetic"]
    assert entry["bootstrap"] == {"n": 300, "seed": 2, "skipped": 0}
    for name, summary in entry["routers"].items():
        low, high = summary["apgr_ci95"]
        assert low < summary["apgr"] < high, name
        assert 0.0 <= summary["p_gt_length"] <= 1.0 and 0.0 <= summary["p_gt_random"] <= 1.0
        assert summary["n_bootstrap"] == 300 and summary["n_bootstrap_skipped"] == 0
        assert len(summary["curve_band"]["low"]) == len(summary["curve"]["strong_share"])
    routers = entry["routers"]
    assert routers["oracle_like"]["p_gt_random"] == 1.0 and routers["oracle_like"]["p_gt_length"] == 1.0
    assert routers["oracle_like"]["apgr_ci95"][0] > entry["random"]["apgr_ci95"][1]
    # The length router is the length baseline: every resample ties.
    assert routers["length"]["p_gt_length"] == 0.5
    assert routers["length"]["apgr"] == entry["length"]["apgr"]
    assert routers["length"]["p_gt_random"] > 0.95
    # The references: random and length get their interval too.
    assert entry["random"]["apgr_ci95"][0] < 0.5 < entry["random"]["apgr_ci95"][1]
    assert entry["length"]["apgr_ci95"] == routers["length"]["apgr_ci95"]


def test_length_baseline_is_computed_without_a_length_router(bench):
    noise = {"noise": TableRouter(dict(zip(bench.prompts, np.random.default_rng(3).random(len(bench)))))}
    entry = evaluate(noise, [bench], None, bootstrap=100)["synthetic"]
    expected = summarize(LengthRouter().score(bench.prompts), bench.strong, bench.weak)["apgr"]
    assert entry["length"]["apgr"] == pytest.approx(expected)
    assert entry["routers"]["noise"]["p_gt_length"] < 0.5
    assert LENGTH_LABEL in format_table({"synthetic": entry})


def test_quality_summary_keeps_its_shape_and_adds_the_intervals(results):
    compact = quality_summary(results)["synthetic"]
    assert set(compact) >= {"routers", "random_10_runs", "oracle", "strong", "weak", "n"}
    for summary in compact["routers"].values():
        assert set(summary) == OLD_KEYS | NEW_KEYS
    assert set(compact["random_10_runs"]) == OLD_KEYS | {"apgr_ci95"}
    assert set(compact["oracle"]) == OLD_KEYS
    assert set(compact["length_baseline"]) == OLD_KEYS | {"apgr_ci95", "p_gt_random"}


def test_bootstrap_zero_omits_the_intervals(routers, bench):
    results = evaluate(routers, [bench], None, bootstrap=0)
    entry = results["synthetic"]
    assert "bootstrap" not in entry
    for summary in [*entry["routers"].values(), entry["random"], entry["length"]]:
        assert not (NEW_KEYS | {"n_bootstrap", "curve_band"}) & set(summary)
    for summary in quality_summary(results)["synthetic"]["routers"].values():
        assert set(summary) == OLD_KEYS
    assert "[" not in format_table(results).splitlines()[2]


@pytest.mark.parametrize("bad", [-1, 2.5, True, "100"])
def test_bootstrap_must_be_a_non_negative_integer(routers, bench, bad):
    with pytest.raises(ConfigError, match="bootstrap"):
        evaluate(routers, [bench], None, bootstrap=bad)


def test_table_shows_the_interval_and_probabilities(results):
    table = format_table(results)
    header = table.splitlines()[0]
    assert "APGR [95% CI]" in header and "P>length" in header and "P>random" in header
    low, high = results["synthetic"]["routers"]["oracle_like"]["apgr_ci95"]
    row = next(line for line in table.splitlines() if line.startswith("synthetic  oracle_like"))
    assert f"[{low:.3f}, {high:.3f}]" in row and "1.000" in row
    random_row = next(line for line in table.splitlines() if RANDOM_LABEL in line)
    assert "[" in random_row
    assert LENGTH_LABEL not in table  # `length` is an evaluated router here, its row is the baseline
    assert "300 prompt resamples" in table


def test_outputs_are_written_as_json_and_png(results, routers, bench, tmp_path):
    evaluate(routers, [bench], None, tmp_path, bootstrap=50)
    assert (tmp_path / "synthetic.png").stat().st_size > 0
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["synthetic"]["routers"]["noise"]["apgr_ci95"][0] is not None
    path = write_results(quality_summary(results), tmp_path / "quality.json")
    assert json.loads(path.read_text())["synthetic"]["routers"]["length"]["p_gt_length"] == 0.5


def test_classifier_scores_are_cached_per_checkpoint_and_pair(tmp_path):
    """A second evaluation reads a classifier's scores from <home>/cache/scores instead of recomputing them; a
    retrained checkpoint (new meta file) or another pair is another cache. sw_ranking-like routers are not wrapped."""
    from types import SimpleNamespace

    from models.evaluation import CachedScores, _cached_scores

    calls = []

    class Counting(TableRouter):
        name = "bert"

        def _score(self, prompts):
            calls.append(list(prompts))
            return super()._score(prompts)

    prompts = ["a", "bb", "a", "ccc"]
    inner = Counting({"a": 0.25, "bb": 0.5, "ccc": 0.125})
    ws = SimpleNamespace(home=tmp_path, routers=tmp_path / "routers")
    (ws.routers / "bert").mkdir(parents=True)
    (ws.routers / "bert" / "meta.json").write_text('{"data_hash": "1"}')
    first = _cached_scores(ws, "bert", inner, "s", "w", {})
    assert isinstance(first, CachedScores)
    assert first.score(prompts).tolist() == [0.25, 0.5, 0.25, 0.125] and calls == [["a", "bb", "ccc"]]
    again = _cached_scores(ws, "bert", inner, "s", "w", {})  # a new process would build it the same way
    assert again.score(prompts).tolist() == [0.25, 0.5, 0.25, 0.125] and len(calls) == 1
    _cached_scores(ws, "bert", inner, "s", "other-weak", {}).score(["a"])
    (ws.routers / "bert" / "meta.json").write_text('{"data_hash": "2"}')
    _cached_scores(ws, "bert", inner, "s", "w", {}).score(["a"])
    assert calls[1:] == [["a"], ["a"]]
    assert _cached_scores(ws, "length", inner, "s", "w", {}) is inner
