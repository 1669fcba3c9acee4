import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from index.errors import ConfigError

from models import irt


def _scores(seed=0, n_prompts=300, n_models=12):
    rng = np.random.default_rng(seed)
    ability, difficulty = rng.normal(0, 1.5, n_models), rng.normal(0, 1.5, n_prompts)
    p = 1 / (1 + np.exp(-(ability[None] - difficulty[:, None])))
    rows = [(f"prompt {i}", f"model {m}", float(rng.random() < p[i, m])) for i in range(n_prompts) for m in range(n_models)]
    return pd.DataFrame(rows, columns=["prompt", "model", "score"]), ability, difficulty


def test_fit_recovers_abilities_and_difficulties():
    scores, ability, difficulty = _scores()
    rasch = irt.fit(scores)
    fitted_ability = rasch.ability[[f"model {m}" for m in range(len(ability))]].to_numpy()
    fitted_difficulty = rasch.difficulty[[f"prompt {i}" for i in range(len(difficulty))]].to_numpy()
    assert spearmanr(fitted_ability, ability).correlation > 0.95
    assert spearmanr(fitted_difficulty, difficulty).correlation > 0.8  # 12 answers per prompt
    # the scale is the generating one up to the shared origin: 300 answers per model pin each gap to a few tenths
    gaps, fitted_gaps = ability - ability.mean(), fitted_ability - fitted_ability.mean()
    assert np.abs(fitted_gaps - gaps).max() < 0.5


def test_fractional_scores_and_missing_answers_fit_and_no_scores_fit_nothing():
    scores, _, _ = _scores(n_prompts=50, n_models=4)
    scores.loc[::7, "score"] = 0.5
    scores.loc[::11, "score"] = np.nan
    rasch = irt.fit(scores)
    assert rasch.difficulty.notna().all() and len(rasch.difficulty) == 50
    empty = irt.fit(pd.DataFrame(columns=["prompt", "model", "score"]))
    assert empty.difficulty.empty and empty.ability.empty
    scores.loc[0, "score"] = 2.0
    with pytest.raises(ConfigError, match=r"must lie in \[0, 1\]"):
        irt.fit(scores)


def test_pair_p_strong_is_the_papers_p_strong_under_independence():
    """P(strong wins) + P(tie)/2 with independent answers, checked by enumerating the four outcomes; 1/2 where both
    are surely right or surely wrong, largest between the two abilities."""
    weak, gap = 0.5, 2.0
    b = np.array([-8.0, 0.0, 1.5, 3.0, 10.0])
    s, w = irt.sigmoid(weak + gap - b), irt.sigmoid(weak - b)
    enumerated = s * (1 - w) + 0.5 * (s * w + (1 - s) * (1 - w))
    got = irt.pair_p_strong(weak, gap, b)
    np.testing.assert_allclose(got, enumerated)
    np.testing.assert_allclose(got[[0, -1]], 0.5, atol=1e-3)
    assert got.argmax() == 2
