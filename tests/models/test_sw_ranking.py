import numpy as np
import pandas as pd
import pytest

from index.embedder import HashEmbedder
from models import sw_ranking
from models.data import TrainingData
from index.errors import ArtifactError, ConfigError
from tests.models.test_bradley_terry import _reference

TIERS = {"strong-1": 0, "strong-2": 0, "mid": 1, "weak-1": 2, "weak-2": 2, "tiny": 3}
MODELS = list(TIERS)


ABILITY = {0: 2.0, 1: 1.0, 2: 0.0, 3: -1.0}  # by tier, for the correctness scores


def _training_data(seed=0, n_prompts=64, n_battles=1500):
    """Two topics: on 'math' prompts strong models win, on 'chat' prompts weak ones hold their own. Every model
    also has a correctness score on every prompt, its probability of a right answer under the Rasch model
    (models/irt.py): chat prompts are easy (difficulty −2), math ones in between the pair's abilities (difficulty 1)."""
    rng = np.random.default_rng(seed)
    prompts = [f"{'math equation algebra' if i % 2 else 'chat greeting hello'} item {i} variant {i * 7 % 13}" for i in range(n_prompts)]
    rows = []
    for _ in range(n_battles):
        p = int(rng.integers(n_prompts))
        a, b = rng.choice(len(MODELS), 2, replace=False)
        gap = TIERS[MODELS[b]] - TIERS[MODELS[a]]  # > 0: a is in the stronger tier
        edge = (1.2 if p % 2 else 0.1) * gap
        u = rng.random()
        winner = "tie" if u < 0.1 else ("model_a" if u < 0.1 + 0.9 / (1 + np.exp(-edge)) else "model_b")
        rows.append((prompts[p], MODELS[a], MODELS[b], winner, "synthetic"))
    battles = pd.DataFrame(rows, columns=["prompt", "model_a", "model_b", "winner", "source"])
    # the share of a model's sampled answers that are right (as GSM8K's scores are), at its expected value
    scores = pd.DataFrame([(prompt, model, 1 / (1 + np.exp((1.0 if i % 2 else -2.0) - ABILITY[TIERS[model]])), "synthetic")
                           for i, prompt in enumerate(prompts) for model in MODELS],
                          columns=["prompt", "model", "score", "source"])
    return TrainingData(battles, scores, pd.Series(dtype=float), dict(TIERS), {"data_hash": "test"})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("routers")
    td = _training_data()
    embedder = HashEmbedder(32)
    sw_ranking.train(td, embedder, root)
    return td, embedder, root


def _router(trained, **options):
    td, embedder, root = trained
    return sw_ranking.SWRankingRouter.from_artifacts(root, embedder=embedder, strong="strong-1", weak="weak-1", **options)


def _brute_force(td, embedder, query, gamma=10.0, l2=1e-2, last_tier=3):
    """The paper's computation, battle by battle: weight every battle by its prompt's similarity and by
    mean / (its prompt's battle count) (one prompt, one vote, counted over all tiers as `train` does), refit BT
    over tiers 0..last_tier (the strong-1/weak-1 pair's window 0 ends at tier 2)."""
    b = td.battles
    ta, tb = b["model_a"].map(TIERS).to_numpy(), b["model_b"].map(TIERS).to_numpy()
    keep = ta != tb
    b, ta, tb = b[keep], ta[keep], tb[keep]
    per_prompt = b.groupby("prompt")["prompt"].transform("size").to_numpy()
    sims = embedder.embed(b["prompt"].tolist()) @ embedder.embed([query])[0]
    w = gamma ** (1 + sims / sims.max()) * (len(b) / b["prompt"].nunique()) / per_prompt
    o = b["winner"].map({"model_a": 1.0, "model_b": 0.0, "tie": 0.5}).to_numpy()
    fit = (ta <= last_tier) & (tb <= last_tier)
    xi = _reference(ta[fit], tb[fit], o[fit], last_tier + 1, w[fit], l2)
    return 1 / (1 + np.exp(-(xi[0] - xi[2])))


@pytest.mark.parametrize("gamma", [10.0, sw_ranking.GAMMA])  # RouteLLM's γ and the one chosen on dev
@pytest.mark.parametrize("tier_window, last_tier", [(None, 3), (0, 2), (1, 3)])
def test_k_all_equals_brute_force(trained, gamma, tier_window, last_tier):
    td, embedder, _ = trained
    router = _router(trained, k=10_000, gamma=gamma, tier_window=tier_window, difficulty_k=0)
    queries = ["math equation algebra item 5", "chat greeting hello item 8", "something else entirely"]
    got = router.score(queries)
    want = [_brute_force(td, embedder, q, gamma=gamma, last_tier=last_tier) for q in queries]
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_the_tier_window_leaves_far_tiers_out_of_the_fit(trained):
    assert _router(trained).tier_window == sw_ranking.TIER_WINDOW == 0
    queries = ["math equation algebra item 5", "chat greeting hello item 8"]
    assert not np.allclose(_router(trained, tier_window=None).score(queries), _router(trained).score(queries), rtol=1e-3)
    for bad in (-1, 0.5):
        with pytest.raises(ConfigError, match="tier_window"):
            _router(trained, tier_window=bad)


@pytest.mark.parametrize("key", ["prompt_weighting", "difficulty"])
def test_an_artifact_of_an_older_turnout_is_refused(trained, tmp_path, key):
    import json
    import shutil

    shutil.copytree(trained[2] / "sw_ranking", tmp_path / "sw_ranking")
    manifest = tmp_path / "sw_ranking" / "manifest.json"
    meta = json.loads(manifest.read_text())
    del meta[key]
    manifest.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="rebuild with `turnout train sw_ranking`"):
        sw_ranking.SWRankingRouter.from_artifacts(tmp_path, embedder=trained[1])


def test_a_prompt_weighs_once_however_often_it_was_fought_over(trained, tmp_path):
    """Repeating every battle of some prompts tenfold (a correctness source's n(n-1)/2 pairs) leaves the scores
    as they are; with battle weighting the repeated prompts would pull their neighbours' scores."""
    td, embedder, _ = trained
    repeated = td.battles["prompt"].isin(td.battles["prompt"].unique()[::3])
    battles = pd.concat([td.battles] + [td.battles[repeated]] * 9, ignore_index=True)
    sw_ranking.train(TrainingData(battles, td.scores, td.ratings, td.tiers, td.report), embedder, tmp_path, progress=False)
    heavy = sw_ranking.SWRankingRouter.from_artifacts(tmp_path, embedder=embedder, strong="strong-1", weak="weak-1")
    queries = ["math equation algebra item 5", "chat greeting hello item 8", "something else entirely"]
    np.testing.assert_allclose(heavy.score(queries), _router(trained).score(queries), rtol=1e-5)


def test_top_k_approximates_exact_and_keeps_the_signal(trained):
    exact, approx, coarse = (_router(trained, k=k, difficulty_k=0) for k in (10_000, 32, 8))
    queries = ["math equation algebra item 3 variant 8", "chat greeting hello item 4 variant 2"]
    p_exact, p_approx, p_coarse = exact.score(queries), approx.score(queries), coarse.score(queries)
    # half the prompts as neighbours: the mean-similarity stand-in for the rest is close to exact
    np.testing.assert_allclose(p_approx, p_exact, atol=0.005)
    # far coarser, still on the right side of the line between the topics: strong models win chat prompts
    # too in this data (edge 0.1 per tier), so that line is the two exact scores' midpoint, not 0.5
    midpoint = p_exact.mean()
    assert np.all(np.abs(p_coarse - p_exact) < np.abs(midpoint - p_exact))
    # on math prompts the strong tier wins more, so p_strong must be higher there
    assert p_exact[0] > p_exact[1] and p_approx[0] > p_approx[1] and p_coarse[0] > p_coarse[1]
    assert np.all((p_exact > 0) & (p_exact < 1))


def test_gather_and_dense_paths_agree(trained, monkeypatch):
    queries = HashEmbedder(32).embed(["math equation algebra item 3", "chat greeting hello item 4", "unrelated words"])
    router = _router(trained, k=4)  # 4 of 64 prompts: the gather path
    gathered = router.win_matrices(queries)
    monkeypatch.setattr(sw_ranking, "DENSE_FRACTION", 10**9)
    np.testing.assert_allclose(router.win_matrices(queries), gathered, rtol=1e-5)


@pytest.mark.parametrize("dense", [False, True])
def test_empty_slots_of_an_approximate_index_count_with_the_rest(trained, monkeypatch, dense):
    """IVF/HNSW may return fewer than k hits, padded with id -1 and similarity -3.4e38: the scores stay finite and
    equal those of the same index returning only the hits it found."""
    queries = HashEmbedder(32).embed(["math equation algebra item 3", "chat greeting hello item 4", "unrelated words"])
    if dense:
        monkeypatch.setattr(sw_ranking, "DENSE_FRACTION", 10**9)
    found = _router(trained, k=6, difficulty_k=0)
    padded = _router(trained, k=8, difficulty_k=0)
    real_search = padded.store.search

    def search_with_empty_slots(q, k):
        sims, ids = real_search(q, 6)  # what the index found, then two empty slots as FAISS pads them
        pad = np.full((len(q), k - 6), -1, dtype=ids.dtype)
        return np.hstack([sims, np.full(pad.shape, -3.4e38, dtype=sims.dtype)]), np.hstack([ids, pad])

    monkeypatch.setattr(padded.store, "search", search_with_empty_slots)
    scores = padded.score_embeddings(queries)
    assert np.all(np.isfinite(scores))
    np.testing.assert_allclose(scores, found.score_embeddings(queries), rtol=1e-6)


def test_batching_does_not_change_scores(trained):
    prompts = [f"math equation item {i}" if i % 3 else f"hello chat {i}" for i in range(20)]
    # float32 sums may associate differently per batch shape; anything beyond rounding would be a bug
    np.testing.assert_allclose(_router(trained, batch_size=3).score(prompts), _router(trained, batch_size=64).score(prompts), rtol=1e-6)


def test_same_tier_pair_and_unknown_model_are_config_errors(trained):
    with pytest.raises(ConfigError, match="share tier"):
        _router(trained).__class__.from_artifacts(trained[2], embedder=trained[1], strong="strong-1", weak="strong-2")
    with pytest.raises(ConfigError, match="not in the tier table"):
        sw_ranking.SWRankingRouter.from_artifacts(trained[2], embedder=trained[1], strong="gpt-9", weak="weak-1")


def test_mismatched_embedder_and_corrupted_artifact_are_refused(trained, tmp_path):
    td, embedder, root = trained
    with pytest.raises(ArtifactError):
        sw_ranking.SWRankingRouter.from_artifacts(root, embedder=HashEmbedder(16), strong="strong-1", weak="weak-1")
    sw_ranking.train(td, embedder, tmp_path)
    (tmp_path / "sw_ranking" / "counts.npy").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="rebuild"):
        sw_ranking.SWRankingRouter.from_artifacts(tmp_path, embedder=embedder, strong="strong-1", weak="weak-1")


def test_failed_retrain_keeps_previous_artifact(trained, tmp_path, monkeypatch):
    td, embedder, _ = trained
    sw_ranking.train(td, embedder, tmp_path)
    before = (tmp_path / "sw_ranking" / "counts.npy").read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", boom)
    with pytest.raises(OSError):
        sw_ranking.train(td, embedder, tmp_path)
    assert (tmp_path / "sw_ranking" / "counts.npy").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sw_ranking"]  # no temp folders left behind


def test_difficulty_keeps_easy_prompts_at_the_weak_model_and_turns_off_with_zero(trained):
    """Chat prompts are easy (every model mostly right): with difficulty, p_strong there moves toward 1/2; math
    prompts sit between the pair's abilities and stay above; difficulty_k 0 gives the paper's σ(ξ_strong − ξ_weak)."""
    from models import irt

    queries = ["math equation algebra item 3 variant 8", "chat greeting hello item 4 variant 2"]
    assert _router(trained).difficulty_k == sw_ranking.DIFFICULTY_K  # 64: every prompt of this data, so a local 8 here
    paper, aware = _router(trained, difficulty_k=0), _router(trained, difficulty_k=8)
    p_paper, p_aware = paper.score(queries), aware.score(queries)
    difficulty = aware.query_difficulty(HashEmbedder(32).embed(queries))
    assert difficulty[0] > difficulty[1]
    gap = np.log(p_paper / (1 - p_paper))
    np.testing.assert_allclose(p_aware, irt.pair_p_strong(aware.ability_weak, gap, difficulty), rtol=1e-9)
    assert abs(p_aware[1] - 0.5) < abs(p_paper[1] - 0.5)
    assert p_aware[0] > p_aware[1]


def test_query_difficulty_skips_prompts_without_scores(trained, tmp_path):
    """Prompts with no correctness scores (preference data) have no difficulty: a query's difficulty is the mean
    over its neighbours that have one, and the overall mean when none has."""
    td, embedder, _ = trained
    chat = [p for p in td.battles["prompt"].unique() if p.startswith("chat")]
    scores = td.scores[~td.scores["prompt"].isin(chat)]
    sw_ranking.train(TrainingData(td.battles, scores, td.ratings, td.tiers, td.report), embedder, tmp_path, progress=False)
    router = sw_ranking.SWRankingRouter.from_artifacts(tmp_path, embedder=embedder, strong="strong-1", weak="weak-1",
                                                       difficulty_k=4)
    assert np.isnan(router.difficulty).sum() == len(chat)
    queries = embedder.embed(["math equation algebra item 3 variant 8"])
    _, ids = router.store.search(queries, 4)
    near = router.difficulty[ids[0]]
    np.testing.assert_allclose(router.query_difficulty(queries), [np.nanmean(near)] if np.isfinite(near).any()
                               else [router.mean_difficulty])
    router.difficulty[:] = np.nan
    np.testing.assert_allclose(router.query_difficulty(queries), [router.mean_difficulty])


def test_a_weak_model_without_correctness_data_is_a_config_error(trained, tmp_path):
    td, embedder, _ = trained
    scores = td.scores[td.scores["model"] != "weak-1"]
    sw_ranking.train(TrainingData(td.battles, scores, td.ratings, td.tiers, td.report), embedder, tmp_path, progress=False)
    with pytest.raises(ConfigError, match="weak model 'weak-1' has no correctness data.*difficulty_k to 0"):
        sw_ranking.SWRankingRouter.from_artifacts(tmp_path, embedder=embedder, strong="strong-1", weak="weak-1")
    paper = sw_ranking.SWRankingRouter.from_artifacts(tmp_path, embedder=embedder, strong="strong-1", weak="weak-1",
                                                      difficulty_k=0)
    assert np.all(np.isfinite(paper.score(["chat greeting hello item 4"])))
    with pytest.raises(ConfigError, match="difficulty_k must be"):
        _router(trained, difficulty_k=-1)


def test_preference_data_alone_serves_the_papers_p_strong(trained, tmp_path):
    """No correctness scores at all (Arena battles only): the artifact says so in its manifest and serves
    σ(ξ_strong − ξ_weak) unless asked for difficulty, which is then a one-line error."""
    td, embedder, _ = trained
    sw_ranking.train(TrainingData(td.battles, td.scores.iloc[:0], td.ratings, td.tiers, td.report), embedder, tmp_path,
                     progress=False)
    load = lambda **o: sw_ranking.SWRankingRouter.from_artifacts(tmp_path, embedder=embedder, strong="strong-1",
                                                                 weak="weak-1", **o)
    assert load().store.manifest["difficulty"] == sw_ranking.NO_DIFFICULTY and load().difficulty_k == 0
    queries = ["math equation algebra item 5", "chat greeting hello item 8"]
    np.testing.assert_allclose(load().score(queries), _router(trained, difficulty_k=0).score(queries), rtol=1e-5)
    with pytest.raises(ConfigError, match="no correctness data"):
        load(difficulty_k=8)


@pytest.mark.parametrize("k", [None, 3, 16])
def test_scoring_takes_the_difficulty_neighbours_from_its_own_scan(trained, k):
    """One similarity scan serves both the win matrices and the difficulty: the same neighbours, exact scan or
    top-k (fewer or more hits than difficulty_k), as the difficulty's own index search finds them."""
    from models import irt

    router = _router(trained, difficulty_k=8)
    router.k = k
    queries = np.random.default_rng(0).normal(size=(5, 32)).astype(np.float32)  # no tied similarities
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    p = np.clip(router.pair_p_strong(router.win_matrices(queries)), 1e-12, 1 - 1e-12)
    expected = irt.pair_p_strong(router.ability_weak, np.log(p / (1 - p)), router.query_difficulty(queries))
    np.testing.assert_allclose(router.score_embeddings(queries), expected, rtol=1e-9)
