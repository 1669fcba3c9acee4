"""The comparison's own arithmetic (ranks, Spearman, same-tier filtering, query sampling), without RouteLLM's venv."""

import numpy as np
import pytest

from loadtest.routellm_compare import _ClientStandIn, agreement, cross_tier, interleave, rankdata, spearman


def test_rankdata_averages_ties():
    assert rankdata(np.array([10.0, 30.0, 20.0, 20.0])).tolist() == [1.0, 4.0, 2.5, 2.5]


def test_spearman_by_hand_with_ties():
    # ranks x: 1, 2.5, 2.5, 4; y: 1, 3, 2, 4 -> centred products 4.5 over sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / np.sqrt(22.5))


def test_spearman_is_rank_only_and_signed():
    x = np.array([0.61, 0.64, 0.62, 0.60, 0.63])
    assert spearman(x, np.exp(40 * x)) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert np.isnan(spearman(x, np.full(5, 0.5)))


def test_spearman_matches_scipy_on_tied_data():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 6, 40), rng.integers(0, 6, 40)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)


def test_agreement_figures():
    out = agreement([0.5, 0.6, 0.7], [0.5, 0.62, 0.69])
    assert out["queries"] == 3
    assert out["max_abs_diff"] == pytest.approx(0.02)
    assert out["mean_abs_diff"] == pytest.approx(0.01)
    assert out["spearman"] == pytest.approx(1.0)


def test_cross_tier_drops_only_same_tier_battles():
    tier_a = np.array([0, 1, 2, 2, 0])
    tier_b = np.array([1, 1, 0, 2, 3])
    assert cross_tier(tier_a, tier_b).tolist() == [True, False, True, False, True]


def test_interleave_mixes_groups_and_drops_repeats():
    assert interleave([["a", "b", "c"], ["x"], ["b", "y"]]) == ["a", "x", "b", "y", "c"]


def test_client_stand_in_answers_like_the_openai_client():
    vector = np.array([0.6, 0.8], dtype=np.float32)
    client = _ClientStandIn({"hi": vector})
    got = client.embeddings.create(input=["hi"], model="text-embedding-3-small").data[0].embedding
    assert got is vector
