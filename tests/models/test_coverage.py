import numpy as np
import pytest

from models.coverage import coverage, nearest, nearest_by_source, summarize
from index.errors import InputError

# Unit vectors at known angles in the plane: cos(0°) = 1, cos(60°) = 0.5, cos(90°) = 0.
E1, E2 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
AT60 = np.array([0.5, np.sqrt(3) / 2])


def test_nearest_exact_maxima_and_indices():
    queries = np.stack([E1, E2, -E1])
    keys = np.stack([E2, AT60, 3 * E1])  # scale does not matter: cosine
    best, index = nearest(queries, keys)
    np.testing.assert_allclose(best, [1.0, 1.0, 0.0], atol=1e-6)  # -E1: best is E2 at 90° (cosine 0)
    assert index.tolist() == [2, 0, 0]
    for chunk in (1, 2):  # chunking gives the same answer
        b, i = nearest(queries, keys, chunk=chunk)
        np.testing.assert_allclose(b, best)
        assert i.tolist() == index.tolist()


def test_coverage_per_source_and_overall():
    prompts = np.stack([E1, E2, AT60, -E1])
    train = {"a": np.stack([E1]), "b": np.stack([E2, -E2])}
    report = coverage(prompts, train)
    # per prompt: a -> cos to E1 = [1, 0, 0.5, -1]; b -> max(|cos to E2|) = [0, 1, sqrt(3)/2, 0]
    a, b = report["sources"]["a"], report["sources"]["b"]
    assert a["score"] == pytest.approx((1 + 0 + 0.5 - 1) / 4)
    assert b["score"] == pytest.approx((0 + 1 + np.sqrt(3) / 2 + 0) / 4)
    assert a["share_below"] == 0.5 and b["share_below"] == 0.5  # 0.5 itself is not below 0.5
    # overall: max over sources = [1, 1, sqrt(3)/2, 0]
    overall = report["overall"]
    assert overall["score"] == pytest.approx((2 + np.sqrt(3) / 2) / 4)
    assert overall["share_below"] == 0.25 and overall["n_train"] == 3
    assert (a["n_train"], b["n_train"]) == (1, 2)
    assert a["nearest_share"] == 0.25 and b["nearest_share"] == 0.75  # E1 -> a; E2, AT60 -> b; -E1: tie 0 vs -1 -> b
    assert report["n_prompts"] == 4 and report["low_cosine"] == 0.5
    assert coverage(prompts, train, low=0.9)["overall"]["share_below"] == 0.5


def test_summarize_quantiles():
    s = summarize(np.array([0.0, 0.25, 0.5, 0.75, 1.0]))
    assert s == pytest.approx({"score": 0.5, "share_below": 0.4, "p10": 0.1, "median": 0.5})


def test_empty_sources_are_left_out_and_bad_input_refused():
    sources, sim, idx = nearest_by_source(np.stack([E1]), {"a": np.zeros((0, 2)), "b": np.stack([E1])})
    assert sources == ["b"] and sim.shape == (1, 1) and idx.shape == (1, 1)
    with pytest.raises(InputError, match="no prompts"):
        coverage(np.zeros((0, 2)), {"a": np.stack([E1])})
    with pytest.raises(InputError, match="no training vectors"):
        coverage(np.stack([E1]), {"a": np.zeros((0, 2))})
    with pytest.raises(InputError, match="dimension"):
        coverage(np.stack([E1]), {"a": np.ones((1, 3))})
