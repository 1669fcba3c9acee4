"""RouteLLM metrics on hand-computed cases (models/metrics.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.errors import InputError
from models.metrics import (
    apgr,
    auc,
    cpt,
    curve_points,
    dense_sweep,
    oracle_curve,
    pgr,
    qcut_curve,
    qcut_thresholds,
    random_curve,
    summarize,
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
