"""RouteLLM metrics on hand-computed cases (models/metrics.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from index.errors import InputError
from models.metrics import (
    apgr,
    auc,
    bootstrap_curves,
    cpt,
    curve_band,
    curve_points,
    curves_apgr,
    dense_sweep,
    oracle_curve,
    p_greater,
    percentile_interval,
    pgr,
    qcut_curve,
    qcut_thresholds,
    random_curve,
    summarize,
    weighted_qcut_curves,
)

# Ten items ranked by p_strong = 0.05, 0.15, ..., 0.95. Weak is right on items 0-5 (0.6); strong also on 8 and 9
# (0.8), so the whole gain sits on the two items with the highest p_strong.
P_UP = 0.05 + 0.1 * np.arange(10)
WEAK = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0], dtype=float)
STRONG = np.array([1, 1, 1, 1, 1, 1, 0, 0, 1, 1], dtype=float)
SHARES = np.linspace(0.0, 1.0, 11)


def test_qcut_edges_by_hand_and_equal_to_pandas():
    # Edge i is the linear-interpolation quantile at rank 0.9·i: 0.05 + 0.09·i.
    edges = qcut_thresholds(P_UP)
    np.testing.assert_allclose(edges, 0.05 + 0.09 * np.arange(11))
    p = np.random.default_rng(1).random(1001)
    np.testing.assert_array_equal(qcut_thresholds(p), pd.qcut(p, 10, retbins=True)[1])


def test_points_first_edge_all_strong_last_edge_none():
    share, quality = qcut_curve(P_UP, STRONG, WEAK)
    # Edge i selects the 10 - i items above it; the last edge (the max score) uses `>` and selects none.
    np.testing.assert_allclose(share, SHARES)
    np.testing.assert_allclose(quality, [0.6, 0.7] + [0.8] * 9)
    assert (share[0], quality[0]) == (0.0, WEAK.mean())
    assert (share[-1], quality[-1]) == (1.0, STRONG.mean())


@pytest.mark.parametrize(
    ("p_strong", "quality", "area", "expected_apgr", "cpt50", "cpt80"),
    [
        # perfect ranking: both gains bought with the first 20% of strong calls
        (P_UP, [0.6, 0.7] + [0.8] * 9, 0.78, 0.9, 0.1, 0.16),
        # inverted ranking: the gains come last
        (P_UP[::-1], [0.6] * 9 + [0.7, 0.8], 0.62, 0.1, 0.9, 0.96),
        # all tied: only the 100% and 0% points exist, joined by the straight line of a random tie-break
        (np.full(10, 0.5), None, 0.70, 0.5, 0.5, 0.8),
    ],
    ids=["perfect", "inverted", "ties"],
)
def test_auc_apgr_cpt_by_hand(p_strong, quality, area, expected_apgr, cpt50, cpt80):
    share, got = qcut_curve(p_strong, STRONG, WEAK)
    if quality is None:
        np.testing.assert_allclose(share, [0.0, 1.0])
        np.testing.assert_allclose(got, [0.6, 0.8])
    else:
        np.testing.assert_allclose(got, quality)
    assert auc(share, got) == pytest.approx(area)
    assert apgr(share, got, 0.8, 0.6) == pytest.approx(expected_apgr)
    assert cpt(0.5, share, got, 0.8, 0.6) == pytest.approx(cpt50)
    assert cpt(0.8, share, got, 0.8, 0.6) == pytest.approx(cpt80)


def test_duplicate_edges_keep_every_distinct_operating_point():
    p = np.array([0.1] * 10 + [0.5] * 5 + [0.9] * 5)
    with pytest.raises(ValueError):
        pd.qcut(p, 10, retbins=True)  # what RouteLLM calls: it would stop here
    edges = qcut_thresholds(p)
    np.testing.assert_allclose(edges, [0.1] * 5 + [0.3, 0.5, 0.5, 0.9, 0.9, 0.9])
    ones, zeros = np.ones(20), np.zeros(20)
    share, quality = curve_points(p, ones, zeros, edges)
    # `>= 0.9` (25%) survives; pd.qcut(duplicates="drop") would keep only 0.9 as the `>` edge and lose it.
    np.testing.assert_allclose(share, [0.0, 0.25, 0.5, 1.0])
    np.testing.assert_allclose(quality, share)


def test_auc_matches_numpy_trapezoid():
    x, y = np.sort(np.random.default_rng(2).random(50)), np.random.default_rng(3).random(50)
    assert auc(x, y) == pytest.approx(float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2)))
    assert auc([0.0, 1.0], [0.0, 1.0]) == pytest.approx(0.5)


def test_pgr_edge_cases():
    assert pgr(0.6, 0.8, 0.6) == pytest.approx(0.0)
    assert pgr(0.8, 0.8, 0.6) == pytest.approx(1.0)
    assert pgr(0.9, 0.8, 0.6) == pytest.approx(1.5)
    assert pgr(0.5, 0.8, 0.6) == pytest.approx(-0.5)
    np.testing.assert_allclose(pgr(np.array([0.6, 0.7]), 0.8, 0.6), [0.0, 0.5])
    # A weak model that beats the strong one still gives a defined (sign-flipped) gap.
    assert pgr(0.7, 0.6, 0.8) == pytest.approx(0.5)
    with pytest.raises(InputError, match="undefined"):
        pgr(0.7, 0.7, 0.7)


def test_apgr_of_reference_lines():
    assert apgr(SHARES, np.full(11, 0.6), 0.8, 0.6) == pytest.approx(0.0)
    assert apgr(SHARES, np.full(11, 0.8), 0.8, 0.6) == pytest.approx(1.0)
    assert apgr(SHARES, 0.6 + 0.2 * SHARES, 0.8, 0.6) == pytest.approx(0.5)
    with pytest.raises(InputError):
        apgr(np.array([0.5]), np.array([0.7]), 0.8, 0.6)


def test_cpt_is_routellm_interp_on_rising_curves_and_first_crossing_otherwise():
    rng = np.random.default_rng(4)
    share = np.linspace(0, 1, 11)
    quality = 0.6 + 0.2 * np.sort(rng.random(11))
    quality[0], quality[-1] = 0.6, 0.8
    for x in (0.2, 0.5, 0.8):
        assert cpt(x, share, quality, 0.8, 0.6) == pytest.approx(np.interp(0.6 + x * 0.2, quality, share))
    bumpy = np.array([0.6, 0.75, 0.65, 0.8])
    assert cpt(0.5, np.array([0, 0.2, 0.6, 1.0]), bumpy, 0.8, 0.6) == pytest.approx(0.2 * 0.1 / 0.15)
    assert np.isnan(cpt(1.5, share, quality, 0.8, 0.6))


def test_random_baseline_apgr_is_one_half():
    rng = np.random.default_rng(5)
    weak = (rng.random(20_000) < 0.65).astype(float)
    strong = np.maximum(weak, rng.random(20_000) < 0.4).astype(float)
    share, quality = random_curve(strong, weak)
    # Every run has the same 11 shares (distinct scores), so averaging by position is RouteLLM's group-by-share.
    np.testing.assert_allclose(share, qcut_curve(rng.random(20_000), strong, weak)[0])
    assert apgr(share, quality, strong.mean(), weak.mean()) == pytest.approx(0.5, abs=0.02)
    np.testing.assert_array_equal(quality, random_curve(strong, weak)[1])  # seeded


def test_oracle_by_hand():
    strong, weak = np.array([1.0, 1.0, 0.0, 0.0]), np.array([0.0, 1.0, 1.0, 0.0])
    shares = np.array([0.0, 0.125, 0.25, 0.5, 0.75, 1.0])
    # gains sorted: +1, 0, 0, -1. Exactly c·N strong calls: the -1 item is forced in at 100% ...
    np.testing.assert_allclose(oracle_curve(strong, weak, shares)[1], [0.5, 0.625, 0.75, 0.75, 0.75, 0.5])
    # ... RouteLLM's variant leaves spare calls idle.
    idle = [0.5, 0.625, 0.75, 0.75, 0.75, 0.75]
    np.testing.assert_allclose(oracle_curve(strong, weak, shares, at_most=True)[1], idle)
    np.testing.assert_allclose(oracle_curve(STRONG, WEAK), (SHARES, [0.6, 0.7] + [0.8] * 9))


def test_oracle_at_most_is_routellm_correctness_formula():
    rng = np.random.default_rng(6)
    weak, strong = (rng.random(997) < 0.6).astype(float), (rng.random(997) < 0.8).astype(float)
    helpful = np.sum((weak == 0) & (strong == 1))
    expected = [(weak.sum() + min(c * 997, helpful)) / 997 for c in SHARES]
    np.testing.assert_allclose(oracle_curve(strong, weak, at_most=True)[1], expected)


@pytest.mark.parametrize("judge", [False, True], ids=["correctness", "judge-score"])
def test_oracle_bounds_every_router(judge):
    rng = np.random.default_rng(7)
    n = 300
    if judge:
        strong, weak = rng.integers(1, 11, n).astype(float), rng.integers(1, 11, n).astype(float)
    else:
        weak, strong = (rng.random(n) < 0.6).astype(float), (rng.random(n) < 0.8).astype(float)
    perfect = strong - weak + 1e-6 * rng.random(n)  # the oracle's own ranking
    for p in [rng.random(n), perfect, -perfect, np.round(rng.random(n), 1)]:
        share, quality = dense_sweep(p, strong, weak, n=None)
        assert np.all(quality <= oracle_curve(strong, weak, share)[1] + 1e-12)
        exact = apgr(*oracle_curve(strong, weak, np.arange(n + 1) / n), strong.mean(), weak.mean())
        assert apgr(*qcut_curve(p, strong, weak), strong.mean(), weak.mean()) <= exact + 1e-12
    share, quality = dense_sweep(perfect, strong, weak, n=None)
    np.testing.assert_allclose(quality, oracle_curve(strong, weak, share)[1])


def test_dense_sweep():
    share, quality = dense_sweep(np.full(10, 0.5), STRONG, WEAK, n=None)
    np.testing.assert_allclose(share, [0.0, 1.0])
    share, _ = dense_sweep(P_UP, STRONG, WEAK, n=None)
    np.testing.assert_allclose(share, SHARES)  # one point per distinct score, plus 0%
    rng = np.random.default_rng(8)
    p = rng.random(5000)
    strong, weak = (rng.random(5000) < 0.6 + 0.3 * p).astype(float), (rng.random(5000) < 0.6).astype(float)
    assert len(dense_sweep(p, strong, weak)[0]) == 101
    exact = apgr(*dense_sweep(p, strong, weak, n=None), strong.mean(), weak.mean())
    assert apgr(*dense_sweep(p, strong, weak), strong.mean(), weak.mean()) == pytest.approx(exact, abs=0.01)


def test_summarize_keys_and_validation():
    summary = summarize(P_UP, STRONG, WEAK)
    assert summary["apgr"] == pytest.approx(0.9)
    assert summary["cpt50"] == pytest.approx(0.1) and summary["cpt80"] == pytest.approx(0.16)
    assert summary["apgr_dense"] == pytest.approx(0.9)
    assert set(summary) == {"apgr", "cpt50", "cpt80", "apgr_dense", "curve", "dense_curve"}
    assert summary["curve"]["strong_share"] == pytest.approx(list(SHARES))
    with pytest.raises(InputError):
        summarize(P_UP[:5], STRONG, WEAK)
    with pytest.raises(InputError):
        summarize(np.full(10, np.nan), STRONG, WEAK)


# --- prompt bootstrap -------------------------------------------------------------------------------------------


def _synthetic(rng, n, judge=False):
    """Quality arrays of a strong/weak pair: 0/1 correctness or 1-10 judge scores averaged over two turns."""
    if judge:
        return rng.integers(1, 11, (2, n)).mean(axis=0), rng.integers(1, 11, (2, n)).mean(axis=0)
    weak = (rng.random(n) < 0.6).astype(float)
    return np.maximum(weak, rng.random(n) < 0.5).astype(float), weak


def _tied_scores(rng, n):
    """Scores with many ties (rounded to 0-2 decimals), the case where qcut edges repeat."""
    return np.round(rng.random(n), int(rng.integers(0, 3)))


@pytest.mark.parametrize("judge", [False, True], ids=["correctness", "judge-score"])
def test_weighted_curve_with_unit_weights_is_the_paper_protocol(judge):
    rng = np.random.default_rng(10)
    for n in [*range(2, 40), 101, 997]:
        strong, weak = _synthetic(rng, n, judge)
        if strong.mean() == weak.mean():
            continue
        for p in (rng.random(n), _tied_scores(rng, n)):
            share, quality = weighted_qcut_curves(p, strong, weak, np.ones(n, dtype=int))
            expected = qcut_curve(p, strong, weak)
            # The same points, repeated ones kept (they select the same items).
            unique, index = np.unique(share[0], return_index=True)
            np.testing.assert_allclose(unique, expected[0], rtol=0, atol=1e-12)
            np.testing.assert_allclose(quality[0, index], expected[1], rtol=0, atol=1e-12)
            got = curves_apgr(share, quality, strong.mean(), weak.mean())[0]
            assert got == pytest.approx(summarize(p, strong, weak)["apgr"], abs=1e-12)


@pytest.mark.parametrize("judge", [False, True], ids=["correctness", "judge-score"])
def test_weighted_resample_is_summarize_on_the_repeated_arrays(judge):
    # Small n hits the cases where an edge falls exactly on an order statistic (pandas' one-ulp nudge of the
    # quantile levels decides `>=` there) and where repeated draws make edges repeat (np.quantile fallback).
    rng = np.random.default_rng(11)
    compared = 0
    for n in [*range(3, 45), 200]:
        strong, weak = _synthetic(rng, n, judge)
        p = _tied_scores(rng, n) if n % 2 else rng.random(n)
        counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(8)])
        share, quality = weighted_qcut_curves(p, strong, weak, counts)
        for row, count in enumerate(counts):
            rs, rw, rp = np.repeat(strong, count), np.repeat(weak, count), np.repeat(p, count)
            if rs.mean() == rw.mean():
                assert np.isnan(curves_apgr(share[row], quality[row], rs.mean(), rw.mean())[0])
                continue
            got = curves_apgr(share[row], quality[row], rs.mean(), rw.mean())[0]
            assert got == pytest.approx(summarize(rp, rs, rw)["apgr"], abs=1e-9)
            compared += 1
    assert compared > 250


def test_weighted_curve_validation():
    with pytest.raises(InputError, match="shape"):
        weighted_qcut_curves(P_UP, STRONG, WEAK, np.ones(9, dtype=int))
    with pytest.raises(InputError, match="same positive number"):
        weighted_qcut_curves(P_UP, STRONG, WEAK, np.array([[1] * 10, [2] * 10]))
    with pytest.raises(InputError, match="whole numbers"):
        weighted_qcut_curves(P_UP, STRONG, WEAK, np.full(10, 0.5))


def _bench(n=2000, seed=12):
    """0/1 quality where the strong model's gain rises with a hidden difficulty that scores can see."""
    rng = np.random.default_rng(seed)
    difficulty = rng.random(n)
    weak = (rng.random(n) < 0.8 - 0.4 * difficulty).astype(float)
    strong = np.maximum(weak, rng.random(n) < 0.6 * difficulty).astype(float)
    return rng, difficulty, strong, weak


def test_oracle_ranked_router_beats_random_on_every_resample():
    rng, _, strong, weak = _bench()
    oracle_like = strong - weak + 1e-3 * rng.random(len(strong))
    boot = bootstrap_curves([oracle_like], strong, weak, 300)
    assert p_greater(boot.apgr[0], boot.random_apgr) == 1.0
    assert percentile_interval(boot.apgr[0])[0] > percentile_interval(boot.random_apgr)[1]


def test_a_router_identical_to_the_baseline_is_a_coin_flip():
    rng, difficulty, strong, weak = _bench()
    length_like = np.round(difficulty, 2)
    boot = bootstrap_curves([length_like, length_like.copy()], strong, weak, 200)
    np.testing.assert_array_equal(boot.apgr[0], boot.apgr[1])  # same draws for every router: paired
    assert p_greater(boot.apgr[0], boot.apgr[1]) == 0.5


def test_interval_contains_the_point_estimate_and_random_centres_on_one_half():
    rng, difficulty, strong, weak = _bench()
    scores = [difficulty + 0.5 * rng.random(len(strong)), rng.random(len(strong)), np.round(difficulty, 1)]
    boot = bootstrap_curves(scores, strong, weak, 400, seed=3)
    assert boot.n_skipped == 0 and boot.apgr.shape == (3, 400)
    for p, values in zip(scores, boot.apgr):
        low, high = percentile_interval(values)
        assert low < summarize(p, strong, weak)["apgr"] < high
        assert high - low < 0.2
    # Given any resample the random router's expected APGR is exactly 1/2; what varies is its own draws.
    assert np.mean(boot.random_apgr) == pytest.approx(0.5, abs=0.005)
    assert p_greater(boot.apgr[0], boot.random_apgr) > 0.95


def test_random_reference_is_random_curve_on_the_resamples():
    # Same distribution as running random_curve (10 runs of U(0, 1) scores, qcut per run) on each resample.
    rng = np.random.default_rng(13)
    n = 60
    strong, weak = _synthetic(rng, n)
    boot = bootstrap_curves([rng.random(n)], strong, weak, 2000, seed=4)
    np.testing.assert_array_equal(boot.random_share, random_curve(strong, weak)[0])
    explicit = []
    for i in range(120):  # pd.qcut per run makes the explicit version slow; 120 resamples pin the SD to ~7 %
        draw = rng.integers(0, n, n)
        rs, rw = strong[draw], weak[draw]
        if rs.mean() != rw.mean():
            explicit.append(apgr(*random_curve(rs, rw, seed=i), rs.mean(), rw.mean()))
    ours = boot.random_apgr[np.isfinite(boot.random_apgr)]
    assert np.mean(ours) == pytest.approx(np.mean(explicit), abs=4 * np.std(explicit) / np.sqrt(len(explicit)))
    # A wrong number of averaged runs (1 instead of 10) would move the SD by a factor of ~3.
    assert np.std(ours) == pytest.approx(np.std(explicit), rel=0.2)


def test_degenerate_resamples_are_skipped_and_counted():
    # Items 0 and 2 have opposite gains: a resample drawing them equally often has no strong-weak gap.
    strong, weak = np.array([1.0, 0.0, 0.0, 1.0]), np.array([0.0, 0.0, 1.0, 0.0])
    boot = bootstrap_curves([np.array([0.9, 0.5, 0.1, 0.7])], strong, weak, 500, seed=5)
    assert 0 < boot.n_skipped < 500
    assert np.all(np.isnan(boot.apgr[0][boot.skipped])) and np.all(np.isfinite(boot.apgr[0][~boot.skipped]))
    assert np.all(np.isnan(boot.random_apgr[boot.skipped]))
    assert all(np.isfinite(percentile_interval(boot.apgr[0])))


def test_bootstrap_is_seeded_and_validated():
    _, difficulty, strong, weak = _bench(300)
    first, again = (bootstrap_curves([difficulty], strong, weak, 50, seed=6) for _ in range(2))
    np.testing.assert_array_equal(first.apgr, again.apgr)
    np.testing.assert_array_equal(first.random_apgr, again.random_apgr)
    assert not np.array_equal(first.apgr, bootstrap_curves([difficulty], strong, weak, 50, seed=7).apgr)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="n_resamples"):
            bootstrap_curves([difficulty], strong, weak, bad)
    with pytest.raises(InputError):
        bootstrap_curves([difficulty[:-1]], strong, weak, 10)


def test_p_greater_and_interval_helpers():
    assert p_greater(np.array([1.0, 2.0, 3.0, np.nan]), np.array([0.0, 2.0, 4.0, 1.0])) == pytest.approx(0.5)
    assert p_greater(np.array([1.0, 1.0]), np.array([0.0, 1.0])) == pytest.approx(0.75)
    assert np.isnan(p_greater(np.array([np.nan]), np.array([1.0])))
    with pytest.raises(InputError):
        p_greater(np.zeros(2), np.zeros(3))
    assert percentile_interval(np.arange(1001.0)) == pytest.approx([25.0, 975.0])
    assert all(np.isnan(percentile_interval(np.array([np.nan]))))


def test_curve_band_brackets_the_curves():
    _, difficulty, strong, weak = _bench(500)
    boot = bootstrap_curves([difficulty], strong, weak, 200)
    at = qcut_curve(difficulty, strong, weak)[0]
    low, high = curve_band(boot.strong_share[0], boot.quality[0], at)
    assert low.shape == high.shape == at.shape and np.all(low <= high)
    point = qcut_curve(difficulty, strong, weak)[1]
    assert np.all((low <= point + 1e-12) & (point <= high + 1e-12))
    low, high = curve_band(boot.random_share, boot.random_quality, boot.random_share)
    assert np.all(low < high)
    # In PGR units the band pins both ends (0 at all-weak, 1 at all-strong on every resample) and keeps the curve.
    low, high = curve_band(boot.strong_share[0], boot.quality[0], at, strong_mean=boot.strong_mean,
                           weak_mean=boot.weak_mean)
    np.testing.assert_allclose([low[0], high[0], low[-1], high[-1]], [0.0, 0.0, 1.0, 1.0], atol=1e-12)
    point_pgr = pgr(point, strong.mean(), weak.mean())
    assert np.all((low <= point_pgr + 1e-12) & (point_pgr <= high + 1e-12))
    with pytest.raises(InputError, match="both"):
        curve_band(boot.strong_share[0], boot.quality[0], at, strong_mean=boot.strong_mean)
