"""loadtest.obvious_blend's arithmetic: the blend of standardised features, and the worst margin to the targets."""

import numpy as np

from loadtest.obvious_blend import LENGTH, blend, features, logit
from models.base import Router
from models.obvious import worst_margin


class Fixed(Router):
    name = "fixed"

    def __init__(self, p: float):
        self.p = p

    def _score(self, prompts):
        return np.full(len(prompts), self.p)


def test_a_blend_is_the_weighted_sum_of_standardised_features():
    routers = {"sw_ranking": Fixed(0.5), "bert": Fixed(0.8), "causal_llm": Fixed(0.2)}
    prompts = ["hi", "a much longer prompt"]
    feats = features({name: router.score(prompts) for name, router in routers.items()}, prompts)
    assert np.allclose(feats["bert"], logit([0.8, 0.8])) and feats[LENGTH][1] > feats[LENGTH][0]
    standardisation = {"sw_ranking": [0.0, 1.0], "bert": [1.0, 2.0], "causal_llm": [0.0, 1.0], LENGTH: [0.0, 1.0]}
    score = blend({"bert": 1.0, "causal_llm": 0.0, LENGTH: 0.5}, standardisation, feats)
    assert np.allclose(score, (logit(0.8) - 1.0) / 2.0 + 0.5 * feats[LENGTH])


def test_the_worst_margin_is_the_furthest_below_either_target_on_any_file():
    obvious = {"a": {"auc": 0.90, "auc_balanced": 0.70}, "b": {"auc": 0.72, "auc_balanced": 0.80},
               "c": {"auc": 0.80, "auc_balanced": 0.60}}
    assert np.isclose(worst_margin(obvious), -0.05)  # c's balanced subset, 0.60 against 0.65
    assert worst_margin({"a": {"auc": 0.80, "auc_balanced": 0.70}}) > 0
