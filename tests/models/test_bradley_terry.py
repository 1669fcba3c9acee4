import numpy as np
import pytest
from scipy.optimize import minimize

from models import bradley_terry as bt


def _battles(ratings, n, seed=0):
    rng = np.random.default_rng(seed)
    t = len(ratings)
    a = rng.integers(0, t, n)
    b = (a + rng.integers(1, t, n)) % t
    outcome = (rng.random(n) < 1 / (1 + np.exp(-(ratings[a] - ratings[b])))).astype(float)
    return a, b, outcome


def _reference(a, b, outcome, t, weight, l2):
    """Brute force: per-battle weighted logistic likelihood (ties split in halves), minimised by L-BFGS."""

    def loss(xi):
        d = xi[a] - xi[b]
        nll = weight * (outcome * np.logaddexp(0, -d) + (1 - outcome) * np.logaddexp(0, d))
        p = 1 / (1 + np.exp(-d))
        g = np.zeros(t)
        np.add.at(g, a, weight * (p - outcome))
        np.add.at(g, b, -weight * (p - outcome))
        return nll.sum() + 0.5 * l2 * xi @ xi, g + l2 * xi

    return minimize(loss, np.zeros(t), jac=True, method="L-BFGS-B", options={"gtol": 1e-10, "ftol": 1e-15}).x


def test_recovers_known_ratings():
    true = np.array([1.5, 0.5, 0.0, -0.7, -1.3])
    a, b, o = _battles(true, 50_000)
    xi = bt.fit(bt.win_matrix(a, b, o, 5), l2=1e-4)
    np.testing.assert_allclose(xi - xi.mean(), true - true.mean(), atol=0.05)


def test_newton_equals_brute_force_with_weights_and_ties():
    rng = np.random.default_rng(1)
    true = rng.normal(size=6)
    a, b, o = _battles(true, 3000, seed=2)
    o[rng.random(len(o)) < 0.2] = 0.5  # ties count half to each side
    w = rng.uniform(1, 100, len(o))
    xi = bt.fit(bt.win_matrix(a, b, o, 6, weight=w), l2=0.5)
    np.testing.assert_allclose(xi, _reference(a, b, o, 6, w, 0.5), atol=1e-5)


def test_batched_equals_one_by_one_and_undefeated_player_stays_finite():
    wins = np.zeros((3, 3, 3))
    wins[0, 0, 1] = 10  # player 0 never loses: without the L2 term its rating would diverge
    wins[1] = [[0, 3, 1], [2, 0, 4], [5, 1, 0]]
    wins[2] = wins[1].T
    batched = bt.fit(wins, l2=1e-2)
    assert np.all(np.isfinite(batched))
    for i in range(3):
        np.testing.assert_allclose(batched[i], bt.fit(wins[i], l2=1e-2), atol=1e-10)
    assert batched[0, 0] > batched[0, 1]


def test_win_matrix_ties_split():
    wins = bt.win_matrix(np.array([0, 0]), np.array([1, 1]), np.array([1.0, 0.5]), 2)
    np.testing.assert_allclose(wins, [[0, 1.5], [0.5, 0]])


@pytest.mark.parametrize("l2", [1e-3, 1.0])
def test_symmetric_data_gives_equal_ratings(l2):
    wins = np.array([[0, 4.0], [4.0, 0]])
    np.testing.assert_allclose(bt.fit(wins, l2=l2), [0, 0], atol=1e-12)


def test_tie_rules_in_prompt_tier_counts():
    """One prompt, a tier-0 vs tier-2 tie (either side as model_a) and a decisive tier-1 win over tier 2."""
    import pandas as pd

    battles = pd.DataFrame({"prompt": ["p", "p", "p"], "model_a": ["s", "w", "m"], "model_b": ["w", "s", "w"],
                            "winner": ["tie", "tie", "model_a"]})
    tiers = {"s": 0, "m": 1, "w": 2}
    counts = {rule: bt.prompt_tier_counts(battles, tiers, 3, rule)[1][0] for rule in bt.TIE_RULES}
    assert counts["half"][0, 2] == counts["half"][2, 0] == 1.0  # two ties, half a win each way per tie
    assert counts["weak"][0, 2] == 0.0 and counts["weak"][2, 0] == 2.0  # both ties go to the weaker tier
    assert counts["drop"][0, 2] == counts["drop"][2, 0] == 0.0
    for rule in bt.TIE_RULES:  # the decisive battle counts the same under every rule
        assert counts[rule][1, 2] == 1.0 and counts[rule][2, 1] == 0.0
    with pytest.raises(ValueError, match="ties must be one of"):
        bt.prompt_tier_counts(battles, tiers, 3, "coin")


def test_equal_prompt_weight_gives_every_prompt_the_mean_total_and_keeps_its_shares():
    counts = np.zeros((4, 2, 2))
    counts[0, 0, 1], counts[1, 1, 0], counts[2, 0, 1], counts[2, 1, 0] = 1.0, 30.0, 4.0, 4.0  # prompt 3: no battle
    weighted = bt.equal_prompt_weight(counts)
    np.testing.assert_allclose(weighted.sum(axis=(1, 2)), [13.0, 13.0, 13.0, 0.0])
    np.testing.assert_allclose(weighted[2], [[0.0, 6.5], [6.5, 0.0]])  # shares inside a prompt are kept
    assert weighted.sum() == pytest.approx(counts.sum())
