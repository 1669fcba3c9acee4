import numpy as np
import pytest

from index.embedder import HashEmbedder
from index.store import VectorStore
from loadtest.dev_sw_variants import PROMPT_WEIGHTINGS, SWVariant, log_words
from models import bradley_terry
from models.sw_ranking import SWRankingRouter
from tests.models.test_sw_ranking import _training_data


def _routers():
    td, embedder = _training_data(), HashEmbedder(32)
    prompts, counts = bradley_terry.prompt_tier_counts(td.battles, td.tiers, 4)
    vectors = embedder.embed(list(prompts))
    store = VectorStore.build(vectors, embedder=embedder.name)
    args = (store, counts, vectors.astype(np.float64).sum(axis=0), td.tiers, embedder)
    pair = {"strong": "strong-1", "weak": "mid", "difficulty_k": 0}  # the variants are of the paper's p_strong
    variant = SWVariant(*args, prompt_log_words=log_words(list(prompts)), **pair)
    return SWRankingRouter(*args, **pair), variant


QUERIES = ["math equation algebra item 3", "chat greeting hello item 8 and a much longer tail of words here"]


@pytest.mark.parametrize("tier_window", [None, 0])
def test_zero_penalty_is_the_served_router(tier_window):
    served, variant = _routers()
    served.tier_window = variant.tier_window = tier_window
    np.testing.assert_allclose(variant.score_prompts(QUERIES), served.score(QUERIES), rtol=1e-5)


def test_a_length_penalty_changes_the_scores():
    served, variant = _routers()
    variant.length_penalty = 5.0
    assert not np.allclose(variant.score_prompts(QUERIES), served.score(QUERIES), rtol=1e-3)


def test_prompt_weightings_are_the_paper_s_and_the_served_one():
    counts = np.arange(16, dtype=np.float64).reshape(4, 2, 2)
    assert PROMPT_WEIGHTINGS["battles"](counts) is counts
    np.testing.assert_array_equal(PROMPT_WEIGHTINGS["prompt"](counts), bradley_terry.equal_prompt_weight(counts))
