"""The live strong-ratio controller: exact sliding quantiles, offline start, convergence after a traffic shift."""

import numpy as np
import pytest

from models.calibration import threshold_for_ratio
from index.errors import ConfigError
from serve.controller import ScoreWindow, StrongRatioController


def test_window_quantile_matches_offline_rule_as_it_slides():
    rng = np.random.default_rng(0)
    values = rng.random(700).round(2)  # rounding makes ties, which the rule must treat like the offline one
    window = ScoreWindow(200)
    for i, v in enumerate(values):
        window.add(v)
        if i % 37 == 0:
            recent = values[max(0, i - 199): i + 1]
            for ratio in (0.0, 0.1, 0.5, 0.73, 1.0):
                assert window.threshold_for(ratio) == threshold_for_ratio(recent, ratio)
    assert len(window) == 200


def test_seeded_window_starts_at_the_offline_calibration():
    reference = np.random.default_rng(1).beta(2, 5, 5000)
    controller = StrongRatioController(strong_ratio=0.3, window=1000, reference=reference)
    # 1000 evenly spaced order statistics of 5000: the starting threshold is the offline one to within a step
    assert abs(controller.threshold - threshold_for_ratio(reference, 0.3)) < 0.005
    assert controller.realised_ratio is None and controller.window.n_seed == 1000


def test_shifted_traffic_converges_to_the_target_ratio():
    """Calibrated on one distribution, live traffic moves to a much 'harder' one: the fixed offline threshold
    sends most calls to the strong model, the controller brings the realised share back to the target."""
    rng = np.random.default_rng(2)
    target, window = 0.3, 1000
    reference = rng.beta(2, 5, 5000)
    offline = threshold_for_ratio(reference, target)
    controller = StrongRatioController(strong_ratio=target, window=window, reference=reference)

    before = rng.beta(2, 5, 3000)
    strong, _ = controller.decide(before)
    assert abs(strong[-window:].mean() - target) <= 0.03  # no shift yet: on target from the first call

    shifted = np.clip(rng.beta(5, 2, 6000) * 0.8 + 0.15, 0, 1)  # scores shift up and change shape
    strong, used = controller.decide(shifted)
    fixed_share = (shifted >= offline).mean()
    assert fixed_share > 0.8  # what the offline threshold alone would have done
    # after one window the controller's threshold has moved up to the new distribution's quantile ...
    assert used[-1] > offline + 0.3
    assert abs(used[-1] - threshold_for_ratio(shifted[-window:], target)) < 0.02
    # ... and the realised share over the following windows is back within ±3 points of the target
    for start in range(2 * window, len(shifted) - window + 1, window):
        assert abs(strong[start: start + window].mean() - target) <= 0.03, start
    assert abs(controller.realised_ratio - target) <= 0.03
    assert controller.window.n_seed == 0  # the reference has been pushed out by live traffic


def test_unseeded_controller_holds_its_start_until_min_live():
    controller = StrongRatioController(strong_ratio=0.5, window=200, initial_threshold=0.9, min_live=50)
    rng = np.random.default_rng(3)
    _, used = controller.decide(rng.random(49))
    assert np.all(used == 0.9)
    controller.decide(rng.random(400))
    assert abs(controller.threshold - 0.5) < 0.1 and abs(controller.realised_ratio - 0.5) <= 0.07


def test_fixed_threshold_still_reports_realised_ratio_and_quantiles():
    controller = StrongRatioController(threshold=0.8, window=100)
    strong, used = controller.decide(np.linspace(0, 1, 100, endpoint=False))
    assert np.all(used == 0.8) and controller.threshold == 0.8
    assert controller.realised_ratio == pytest.approx(0.2)
    assert controller.threshold_for(0.5) == pytest.approx(0.5)
    # a request's own threshold is used for its call and still counted
    strong, used = controller.decide([0.6], threshold=0.5)
    assert strong[0] and used[0] == 0.5 and controller.realised_ratio == pytest.approx(0.21)
    assert controller.state()["mode"] == "fixed"


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one"),
    ({"strong_ratio": 0.3, "threshold": 0.5}, "exactly one"),
    ({"strong_ratio": 1.3, "reference": [0.1]}, "strong_ratio must be in [0, 1]"),
    ({"threshold": -0.1}, "threshold must be in [0, 1]"),
    ({"strong_ratio": 0.3}, "needs reference scores or an initial threshold"),
])
def test_bad_settings_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        StrongRatioController(**kwargs)


def test_empty_window_quantile_is_an_error():
    with pytest.raises(ConfigError, match="no scores seen yet"):
        StrongRatioController(threshold=0.5).threshold_for(0.3)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_scores_never_enter_the_window(value):
    from index.errors import ScoringError
    from serve.controller import StrongRatioController

    controller = StrongRatioController(strong_ratio=0.5, window=10, reference=np.linspace(0, 1, 10))
    before = controller.state()
    with pytest.raises(ScoringError, match="not a finite number"):
        controller.decide([value])
    assert controller.state() == before  # nothing recorded: the sorted window stays sorted
    strong, used = controller.decide([0.95])
    assert strong[0] and np.isfinite(used[0])


def test_a_router_producing_nan_is_an_error_at_the_source():
    from index.errors import ScoringError
    from models.base import Router

    class Broken(Router):
        name = "broken"

        def _score(self, prompts):
            return np.array([0.5, float("nan")])

    with pytest.raises(ScoringError, match="router broken produced 1 non-finite"):
        Broken().score(["a", "b"])  # np.clip alone would have passed the NaN through


def test_one_owner_holds_at_most_its_share_and_the_threshold_stays_in_the_bound():
    """A burst from one key, all its scores at one extreme, against others' traffic: the key never holds more than
    floor(c * n) of the window, others' scores are never pushed out by it, and the threshold for share r stays
    between the others' quantiles at 1 - r/(1 - c) and 1 - (r - c)/(1 - c) (serve/controller.py)."""
    rng = np.random.default_rng(4)
    r, c, n = 0.3, 0.2, 500
    for extreme in (0.0, 1.0):
        controller = StrongRatioController(strong_ratio=r, window=n, reference=rng.random(n), max_key_share=c)
        for i, value in enumerate(rng.beta(2, 5, 600)):
            controller.observe(value, False, f"tenant-{i % 7}")
        others_before = sorted(v for v, who in controller.window._fifo if who != "attacker")
        for _ in range(5000):
            controller.observe(extreme, extreme >= controller.threshold, "attacker")
        assert controller.window.owned("attacker") == int(c * n)
        others = sorted(v for v, who in controller.window._fifo if who != "attacker")
        assert len(others) == n - int(c * n) and set(others) <= set(others_before)
        low = threshold_for_ratio(np.array(others), r / (1 - c))
        high = threshold_for_ratio(np.array(others), (r - c) / (1 - c))
        assert low <= controller.threshold <= high, (extreme, low, controller.threshold, high)
        # the same burst without the cap takes the whole window
        uncapped = StrongRatioController(strong_ratio=r, window=n, reference=rng.random(n))
        for _ in range(n):
            uncapped.observe(extreme, False, "attacker")
        assert uncapped.threshold == extreme
