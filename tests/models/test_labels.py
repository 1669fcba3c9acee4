"""The classifiers' neighbour-averaged, rank-stretched labels (models/labels.py, `classifier_outcomes`)."""

import numpy as np
import pandas as pd
import pytest

from index.embedder import HashEmbedder
from index.errors import ConfigError
from models.data import TrainingData
from models.labels import (STRETCH, classifier_outcomes, informative_prompts, neighbour_mean, p_strong_from_outcomes,
                           prompt_outcomes)
from tests.models.test_sw_ranking import _training_data


def test_neighbour_mean_leaves_the_row_out_and_reads_only_the_pool():
    x = np.eye(4, dtype=np.float32)
    x[1] = x[0]  # rows 0 and 1 identical, the others orthogonal to them and to each other
    y = np.array([10.0, 20.0, 30.0, 40.0])
    got = neighbour_mean(x, y, k=1)
    assert got[0] == 20.0 and got[1] == 10.0  # its twin, never itself
    pool = np.array([False, False, True, True])
    got = neighbour_mean(x, y, k=1, pool=pool)
    assert got[2] == 40.0 and got[3] == 30.0 and set(got[:2]) <= {30.0, 40.0}  # the pool only, never itself
    with pytest.raises(ConfigError, match="at least 2 informative"):
        neighbour_mean(x, y, k=3, pool=np.array([False, False, False, True]))


def test_informative_prompts_are_those_where_the_pair_tiers_fought():
    battles = pd.DataFrame({"prompt": ["a", "b", "c"], "model_a": ["strong-1", "other", "other"],
                            "model_b": ["tiny", "tiny", "weak-1"], "winner": ["model_a"] * 3, "source": ["s"] * 3})
    tiers = {"strong-1": 0, "weak-1": 2, "other": 1, "tiny": 3}
    mask = informative_prompts(battles, tiers, ["a", "b", "c", "d"], "strong-1", "weak-1")
    assert mask.tolist() == [True, False, True, False]


def test_stretched_labels_keep_the_ranking_and_the_tie_share():
    td = _training_data(n_battles=3000)
    plain = prompt_outcomes(td.battles, td.tiers, "strong-1", "weak-1")
    stretched = classifier_outcomes(td, None, "strong-1", "weak-1", neighbours=0, stretch=True)
    assert stretched["prompt"].tolist() == plain["prompt"].tolist()
    np.testing.assert_allclose(stretched[["strong", "tie", "weak"]].sum(axis=1), 1.0)
    np.testing.assert_allclose(stretched["tie"], plain["tie"])
    before = p_strong_from_outcomes(plain[["strong", "tie", "weak"]].to_numpy())
    after = p_strong_from_outcomes(stretched[["strong", "tie", "weak"]].to_numpy())
    assert np.array_equal(np.argsort(before, kind="stable"), np.argsort(after, kind="stable"))
    q = stretched["strong"] / (1 - stretched["tie"])
    assert q.min() == pytest.approx(STRETCH) and q.max() == pytest.approx(1 - STRETCH)
    assert np.ptp(after) == pytest.approx((1 - plain["tie"].iloc[0]) * (1 - 2 * STRETCH))  # spread over the range
    unchanged = classifier_outcomes(td, None, "strong-1", "weak-1", neighbours=0, stretch=False)
    pd.testing.assert_frame_equal(unchanged, plain)


def test_neighbour_labels_average_over_similar_informative_prompts():
    td = _training_data(n_battles=3000)
    # a prompt no battle of the pair's tiers touched: its own label is the prior, its neighbours' is not
    extra = pd.DataFrame({"prompt": ["math equation algebra item 1 variant 7 again"] * 5, "model_a": ["tiny"] * 5,
                          "model_b": ["tiny-2"] * 5, "winner": ["model_a"] * 5, "source": ["other"] * 5})
    tiers = {**td.tiers, "tiny-2": max(td.tiers.values()) + 1}
    td = TrainingData(pd.concat([td.battles, extra], ignore_index=True), td.scores, td.ratings, tiers, td.report)
    rows = classifier_outcomes(td, HashEmbedder(64), "strong-1", "weak-1", neighbours=8, stretch=False)
    own = prompt_outcomes(td.battles, td.tiers, "strong-1", "weak-1")
    p = pd.Series(p_strong_from_outcomes(rows[["strong", "tie", "weak"]].to_numpy()), index=rows["prompt"])
    p_own = pd.Series(p_strong_from_outcomes(own[["strong", "tie", "weak"]].to_numpy()), index=own["prompt"])
    math = [prompt for prompt in p.index if prompt.startswith("math")]
    chat = [prompt for prompt in p.index if prompt.startswith("chat")]
    assert p[math].min() > p[chat].max()  # the two topics stay apart
    assert np.ptp(p) < np.ptp(p_own)  # averaging pulls labels together
    with pytest.raises(ConfigError, match="need the embedder"):
        classifier_outcomes(td, None, "strong-1", "weak-1", neighbours=8, stretch=True)


def test_difficulty_labels_rank_prompts_by_how_often_models_fail_them():
    """label_source "difficulty": q = P(weak model wrong) from the Rasch fit, no ties; the synthetic data's math
    prompts (difficulty 1) get higher labels than its chat prompts (difficulty −2)."""
    td = _training_data()
    rows = classifier_outcomes(td, None, "strong-1", "weak-1", 0, False, source="difficulty")
    assert set(rows["prompt"]) == set(td.scores["prompt"]) and (rows["tie"] == 0).all()
    np.testing.assert_allclose(rows["strong"] + rows["weak"], 1.0)
    math = rows["prompt"].str.startswith("math")
    assert rows.loc[math, "strong"].mean() > rows.loc[~math, "strong"].mean() + 0.2
    wrong = 1 - td.scores[td.scores["model"] == "weak-1"].set_index("prompt")["score"]
    assert np.corrcoef(rows.set_index("prompt")["strong"], wrong.loc[rows["prompt"]])[0, 1] > 0.3
    stretched = classifier_outcomes(td, HashEmbedder(32), "strong-1", "weak-1", 4, True, source="difficulty")
    assert stretched["strong"].between(STRETCH, 1 - STRETCH).all()
    math = stretched["prompt"].str.startswith("math")
    assert stretched.loc[math, "strong"].mean() > stretched.loc[~math, "strong"].mean() + 0.2


def test_difficulty_labels_need_the_weak_models_scores_and_a_known_source():
    td = _training_data()
    no_weak = TrainingData(td.battles, td.scores[td.scores["model"] != "weak-1"], td.ratings, td.tiers, td.report)
    with pytest.raises(ConfigError, match="weak model 'weak-1' has no correctness data"):
        classifier_outcomes(no_weak, None, "strong-1", "weak-1", 0, False, source="difficulty")
    with pytest.raises(ConfigError, match="unknown label source 'votes'"):
        classifier_outcomes(td, None, "strong-1", "weak-1", 0, False, source="votes")
