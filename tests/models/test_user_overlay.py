"""The overlay of a user's own labels (issue 23): its math, its cross-validated fit, versions and promotion,
`turnout retrain` / `turnout promote` on the serve tests' tiny artifacts, and the embedding deployment applying it."""

import asyncio
import json
import math

import numpy as np
import pytest

from index.errors import ArtifactError, ConfigError
from models import user_overlay
from models.user_data import read_user_file
from models.user_overlay import UserOverlay, adjusted, fit, outcomes, ranking_auc, routing_gain


def _unit(rows):
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_the_overlay_is_a_kernel_average_with_the_router_as_prior():
    vectors = _unit([[1, 0], [0, 1]])
    y = np.array([1.0, 0.0])
    query = _unit([[1, 0]])
    # the first labelled prompt is the query itself (weight 1), the second orthogonal (weight e^-beta)
    w = math.exp(-10)
    expected = (1.0 + w * 0.0 + 2.0 * 0.3) / (1.0 + w + 2.0)
    assert adjusted(np.array([0.3]), query, vectors, y, beta=10, kappa=2.0)[0] == pytest.approx(expected)
    assert adjusted(np.array([0.3]), query, vectors, y, beta=10, kappa=math.inf)[0] == 0.3
    assert ranking_auc(np.array([0.9, 0.1, 0.5]), np.array([1.0, 0.0, 0.5])) == 1.0
    # the gain over random routing: perfect order, no order (constant p), reversed order
    y2 = np.array([1.0, 0.5, 0.0])
    assert routing_gain(np.array([0.9, 0.5, 0.1]), y2) == pytest.approx(2 / 9)
    assert routing_gain(np.full(3, 0.5), y2) == 0.0 and routing_gain(np.array([0.1, 0.5, 0.9]), y2) < 0
    assert math.isnan(ranking_auc(np.array([0.9, 0.5]), np.array([1.0, 0.5])))


def _clusters(n, seed=0):
    """Two topics: the strong model wins on the first, loses on the second (with 10 % noise)."""
    rng = np.random.default_rng(seed)
    topic = rng.integers(0, 2, n)
    centres = _unit(rng.normal(size=(2, 16)))
    vectors = _unit(centres[topic] + 0.3 * rng.normal(size=(n, 16)))
    y = np.where(rng.random(n) < 0.9, 1.0 - topic, topic).astype(float)
    return vectors, y


def test_cross_validation_uses_labels_that_help_and_ignores_labels_that_do_not():
    vectors, y = _clusters(200)
    uninformative = np.full(len(y), 0.5)
    helped = fit(vectors, y, uninformative)
    assert math.isfinite(helped["kappa"]) and helped["cv_auc"] > 0.85 and helped["cv_gain"] > 0.1
    assert len(helped["table"]) == len(user_overlay.BETAS) * len(user_overlay.KAPPAS)
    # outcomes unrelated to the prompts, a router that already knows: the router alone
    rng = np.random.default_rng(1)
    noise = (rng.random(len(y)) < 0.5).astype(float)
    knowing = np.where(noise > 0.5, 0.7, 0.3) + 0.01 * rng.random(len(y))
    kept = fit(vectors, noise, knowing)
    assert kept["kappa"] == math.inf
    with pytest.raises(ConfigError, match="needs at least 10"):
        fit(vectors[:5], y[:5], uninformative[:5])


def test_outcomes_from_scores_and_battles(tmp_path):
    scores = tmp_path / "scores.csv"
    scores.write_text("prompt,model,score\np1,big,1\np1,small,0\np2,big,0\np2,small,1\np3,big,1\np3,small,1\n"
                      "p4,big,1\n")
    battles = tmp_path / "battles.jsonl"
    battles.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "p1", "model_a": "small", "model_b": "big", "winner": "model_b"},
        {"prompt": "p5", "model_a": "small", "model_b": "big", "winner": "model_a"},
        {"prompt": "p6", "model_a": "small", "model_b": "other", "winner": "model_a"}]))
    found = outcomes([read_user_file(scores), read_user_file(battles)], "big", "small")
    assert dict(zip(found.prompts, found.y)) == {"p1": 1.0, "p2": 0.0, "p3": 0.5, "p5": 0.0}
    with pytest.raises(ConfigError, match="no label compares big with nobody"):
        outcomes([read_user_file(scores)], "big", "nobody")


def test_versions_promotion_and_a_corrupted_version(tmp_path):
    vectors, y = _clusters(40)
    overlay = UserOverlay(vectors, y, "big", "small", "hash-16",
                          {"sw_ranking": {"beta": 10.0, "kappa": math.inf, "cv_auc": 0.5}}, ("s", "w"))
    first = overlay.save(user_overlay.overlays_dir(tmp_path))
    assert user_overlay.current_version(tmp_path) is None and user_overlay.load_current(tmp_path) is None
    user_overlay.promote(tmp_path, first.name)
    loaded = user_overlay.load_current(tmp_path)
    assert loaded.version == first.name and loaded.routers["sw_ranking"]["kappa"] == math.inf
    np.testing.assert_allclose(loaded.vectors, vectors, atol=1e-6)
    assert user_overlay.served_overlay(tmp_path, "hash-16", "s", "w").version == first.name
    with pytest.raises(ArtifactError, match="hash-32"):
        user_overlay.served_overlay(tmp_path, "hash-32", "s", "w")
    with pytest.raises(ArtifactError, match="routes a vs b"):
        user_overlay.served_overlay(tmp_path, "hash-16", "a", "b")
    with pytest.raises(ConfigError, match="no overlay version 'v0'"):
        user_overlay.promote(tmp_path, "v0")
    user_overlay.promote(tmp_path, None)
    assert user_overlay.load_current(tmp_path) is None
    (first / "y.npy").write_bytes(b"broken")
    user_overlay.promote(tmp_path, first.name)
    with pytest.raises(ArtifactError, match="corrupted"):
        user_overlay.load_current(tmp_path)


# ------------------------------------------------------------------------------- retrain on tiny artifacts

TOPICS = {"poetry verse rhyme sonnet": ("strong-1", "weak-1"), "weather forecast rain cloud": ("weak-1", "strong-1")}


def _labelled(path, ids):
    """Scores for strong-1 and weak-1: the first topic's prompts the strong model gets right, the second's (half as
    many) the weak one."""
    lines = ["prompt,model,score"]
    for n, (topic, (right, wrong)) in enumerate(TOPICS.items()):
        for i in ids[::n + 1]:
            prompt = f"{topic} request {i} detail {i * 3 % 7}"
            lines += [f"{prompt},{right},1", f"{prompt},{wrong},0"]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.serve.conftest import app_args, build_tiny_artifacts

    home = tmp_path_factory.mktemp("overlay-home")
    reference = build_tiny_artifacts(home)
    args = app_args(home, reference, "http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1")
    args["routers"].update(enabled=["sw_ranking", "mf", "length"], default="sw_ranking")
    config = tmp_path_factory.mktemp("overlay-config") / "serve.yaml"
    import yaml

    config.write_text(yaml.safe_dump({"applications": [{"name": "turnout", "import_path": "serve.app:build_app",
                                                        "args": args}]}))
    return home, config, args


def test_retrain_fits_compares_and_promotes_and_promote_rolls_back(tiny, tmp_path, capsys):
    from serve.cli import main

    home, config, _ = tiny
    labels = _labelled(tmp_path / "labels.csv", range(30))
    holdout = _labelled(tmp_path / "holdout.csv", range(100, 120))
    assert main(["retrain", "--config", str(config), "--add", str(labels), "--holdout", str(holdout),
                 "--resamples", "200"]) == 0
    out = capsys.readouterr().out
    assert "promoted v" in out and "fitting 45 labelled prompts" in out and "sw_ranking: APGR new" in out and "mf: APGR new" in out
    version = user_overlay.current_version(home)
    manifest = json.loads((user_overlay.overlays_dir(home) / version / "manifest.json").read_text())
    report = manifest["holdout"]["routers"]["sw_ranking"]
    assert report["apgr"]["new"] > report["apgr"]["current"] and report["p_new_gt"]["current"] > 0.9
    assert manifest["router_pair"] == ["strong-1", "weak-1"] and manifest["labelled_prompts"] == 45
    assert main(["promote", "--config", str(config)]) == 0
    assert f"* {version}" in capsys.readouterr().out
    assert main(["promote", "none", "--config", str(config)]) == 0
    assert user_overlay.current_version(home) is None
    assert main(["promote", version, "--config", str(config)]) == 0
    # bad input: one line, exit 2, the promoted version untouched
    for args, message in [
        (["--add", str(labels), "--holdout", str(labels)], "held-out prompts are also in the labels"),
        (["--add", str(labels), "--holdout", str(holdout), "--router", "length"], "shared embedding"),
        (["--add", str(labels), "--holdout", str(holdout), "--weak", "nobody"], "no label compares"),
    ]:
        assert main(["retrain", "--config", str(config), *args]) == 2
        assert message in capsys.readouterr().err
    assert user_overlay.current_version(home) == version


def test_a_length_prior_is_fitted_when_length_carries_what_the_router_misses():
    from models.user_overlay import log_length, predict

    rng = np.random.default_rng(3)
    n = 300
    prompts = ["x" * int(k) for k in rng.integers(20, 2000, n)]
    vectors = _unit(rng.normal(size=(n, 8)))  # no topic signal
    p_public = rng.uniform(0.3, 0.7, n)  # a router that knows nothing here
    long = np.array([len(p) > 1000 for p in prompts])
    y = np.where(rng.uniform(size=n) < 0.5, 0.5, np.where(long, 1.0, 0.0))  # ties, else the long ones need strong
    chosen = fit(vectors, y, p_public, log_len=log_length(prompts))
    assert chosen["prior"]["kind"] == "router+length" and chosen["prior"]["coef"][1] > 0
    assert fit(vectors, y, p_public)["prior"] is None  # without lengths: the router's own prior only
    queries = _unit(rng.normal(size=(2, 8)))
    p = predict(chosen, np.array([0.5, 0.5]), queries, ["x" * 1900, "x" * 30], vectors, y)
    assert p[0] > p[1]
    with pytest.raises(ValueError, match="needs the prompts"):
        predict(chosen, np.array([0.5]), queries[:1], None, vectors, y)


def test_a_holdout_share_keeps_each_prompt_on_its_side_as_the_labels_grow():
    from models.user_overlay import Outcomes, split

    prompts = [f"prompt {i}" for i in range(400)]
    y = np.tile([1.0, 0.0, 0.5, 1.0], 100)
    small_fit, small_held = split(Outcomes(prompts[:200], y[:200], "s", "w"), 0.25)
    big_fit, big_held = split(Outcomes(prompts, y, "s", "w"), 0.25)
    assert set(small_held.prompts) <= set(big_held.prompts) and set(small_fit.prompts) <= set(big_fit.prompts)
    assert not set(big_fit.prompts) & set(big_held.prompts) and len(big_fit.prompts) + len(big_held) == 400
    assert 0.15 < len(big_held) / 400 < 0.35
    # scores from the outcomes: the strong model 1 where it won, 0 where it lost, both 0.5 on a tie
    held_y = y[[prompts.index(p) for p in big_held.prompts]]
    assert np.array_equal(big_held.strong, held_y) and np.array_equal(big_held.weak, 1 - held_y)
    for share in (0.0, 1.0, -0.1):
        with pytest.raises(ConfigError, match="holdout-share"):
            split(Outcomes(prompts, y, "s", "w"), share)
    with pytest.raises(ConfigError, match="none on one side"):
        split(Outcomes(prompts[:1], y[:1], "s", "w"), 0.5)


def test_retrain_holds_out_a_share_of_the_labels_itself(tiny, tmp_path, capsys):
    from serve.cli import main

    home, config, _ = tiny
    before = user_overlay.current_version(home)
    labels = _labelled(tmp_path / "all.csv", range(60))
    assert main(["retrain", "--config", str(config), "--add", str(labels), "--holdout-share", "0.3",
                 "--resamples", "100", "--force"]) == 0
    out = capsys.readouterr().out
    version = user_overlay.current_version(home)
    assert version != before and f"promoted {version}" in out
    manifest = json.loads((user_overlay.overlays_dir(home) / version / "manifest.json").read_text())
    held = manifest["holdout"]["prompts"]
    assert manifest["labelled_prompts"] + held == 90 and 10 < held < 45
    assert main(["retrain", "--config", str(config), "--add", str(labels), "--holdout", str(labels),
                 "--holdout-share", "0.3"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_the_embedding_deployment_serves_the_promoted_overlay(tiny, tmp_path):
    from serve.config import parse_app_args
    from serve.embedding import EmbeddingDeployment

    home, config, args = tiny
    if user_overlay.current_version(home) is None:  # run alone: fit one first
        from serve.cli import main

        assert main(["retrain", "--config", str(config), "--add", str(_labelled(tmp_path / "l.csv", range(30))),
                     "--holdout", str(_labelled(tmp_path / "h.csv", range(100, 120))), "--force"]) == 0
    prompt = "poetry verse rhyme sonnet request 555 detail 2"

    def p_strong(overlay: bool) -> float:
        options = {**args, "routers": {**args["routers"], "overlay": overlay}}
        deployment = EmbeddingDeployment(parse_app_args(options))
        return asyncio.run(deployment._score_batch([(prompt, "sw_ranking", False)]))[0]["p_strong"]

    alone, overlaid = p_strong(False), p_strong(True)
    overlay = user_overlay.load_current(home)
    params = overlay.routers["sw_ranking"]
    assert params["kappa"] != math.inf or params["prior"] is not None  # not the router alone
    assert overlaid > alone  # the labels say the strong model wins this topic


def test_a_promoted_version_is_swapped_in_live_and_a_broken_one_leaves_the_old_serving(tiny, tmp_path):
    import time

    from serve.config import parse_app_args
    from serve.embedding import EmbeddingDeployment

    home, _, args = tiny
    overlays = user_overlay.overlays_dir(home)
    _, y = _clusters(30)
    vectors = _unit(np.random.default_rng(0).normal(size=(30, 64))).astype(np.float32)  # the service's hash-64
    pair = ("strong-1", "weak-1")
    first = UserOverlay(vectors, y, "strong-1", "weak-1", "hash-64",
                        {"sw_ranking": {"beta": 5.0, "kappa": 1.0, "cv_auc": 0.5}}, pair)
    v1 = first.save(overlays).name
    user_overlay.promote(home, v1)
    deployment = EmbeddingDeployment(parse_app_args({**args, "routers": {**args["routers"], "overlay_poll_s": 0.1}}))
    assert deployment.overlay_state() == {"version": v1, "failed": None}

    def settled(check):
        deadline = time.monotonic() + 10
        while not check(deployment.overlay_state()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return deployment.overlay_state()

    time.sleep(1.1)  # versions are named by the second
    second = UserOverlay(first.vectors, 1.0 - y, "strong-1", "weak-1", "hash-64", first.routers, pair)
    v2 = second.save(overlays).name
    user_overlay.promote(home, v2)
    assert settled(lambda s: s["version"] == v2)["failed"] is None
    time.sleep(1.1)
    broken = UserOverlay(first.vectors, y, "strong-1", "weak-1", "hash-32", first.routers, pair)  # another embedder
    v3 = broken.save(overlays).name
    user_overlay.promote(home, v3)
    state = settled(lambda s: s["failed"] is not None)
    assert state["version"] == v2 and state["failed"]["version"] == v3 and "hash-32" in state["failed"]["reason"]
    assert asyncio.run(deployment._score_batch([("poetry verse", "sw_ranking", False)]))[0]["p_strong"] >= 0
    user_overlay.promote(home, None)
    assert settled(lambda s: s["version"] is None) == {"version": None, "failed": None}


def test_graded_labels_carry_the_weak_models_failures(tmp_path):
    graded = tmp_path / "graded.csv"
    graded.write_text("prompt,model,score\np1,big,1\np1,small,0\np2,big,0\np2,small,1\np3,big,1\np3,small,1\n")
    found = outcomes([read_user_file(graded)], "big", "small")
    assert dict(zip(found.prompts, found.weak_failure)) == {"p1": 1.0, "p2": 0.0, "p3": 0.0}
    judged = tmp_path / "judged.csv"  # a 1-10 score is not a failure rate
    judged.write_text("prompt,model,score\np1,big,9\np1,small,3\n")
    assert outcomes([read_user_file(judged)], "big", "small").weak_failure is None
    battles = tmp_path / "battles.jsonl"  # a prompt with a verdict but no grade: the target is not offered
    battles.write_text(json.dumps({"prompt": "p9", "model_a": "small", "model_b": "big", "winner": "model_b"}) + "\n")
    assert outcomes([read_user_file(graded), read_user_file(battles)], "big", "small").weak_failure is None
    fit_part, _ = user_overlay.split(found, 0.5)
    assert len(fit_part.weak_failure) == len(fit_part.y)


def _graded_topics(n, seed=0):
    """Ten topics, each with its own rate r at which the weak model fails; the strong model fails a third as often
    as that, so routing a topic to it gains 2r/3. Per prompt, each answer is right or wrong at those rates."""
    centres = _unit(np.random.default_rng(0).normal(size=(10, 16)))  # the same topics for every sample
    rng = np.random.default_rng(seed)
    rate = np.linspace(0.05, 0.95, 10)
    topic = rng.integers(0, 10, n)
    vectors = _unit(centres[topic] + 0.2 * rng.normal(size=(n, 16)))
    weak_right = (rng.random(n) >= rate[topic]).astype(float)
    strong_right = (rng.random(n) >= rate[topic] / 3).astype(float)
    y = np.where(strong_right > weak_right, 1.0, np.where(strong_right < weak_right, 0.0, 0.5))
    return vectors, y, 1.0 - weak_right, rate[topic]


def test_the_difficulty_target_is_weighed_and_chosen_where_it_routes_better():
    vectors, y, failure, rate = _graded_topics(150)
    flat, length = np.full(len(y), 0.5), np.log1p(np.arange(len(y)) % 7)  # a router and a length that know nothing
    without = fit(vectors, y, flat, log_len=length, rule="max")
    assert {row["target"] for row in without["table"]} == {"pair"}
    chosen = fit(vectors, y, flat, log_len=length, weak_failure=failure, rule="max")
    grid = len(user_overlay.BETAS) * len(user_overlay.KAPPAS)
    assert [row["target"] for row in chosen["table"]].count("difficulty") == grid
    assert chosen["target"] == "difficulty" and chosen["cv_gain"] > without["cv_gain"]
    # its predictions average the failures, and rank the topics by their gain
    queries, _, _, query_rate = _graded_topics(300, seed=1)
    got = user_overlay.predict(chosen, np.full(300, 0.5), queries, ["x"] * 300, vectors, y, failure)
    prior = user_overlay.prior_p(chosen["prior"], np.full(300, 0.5), np.log1p(np.ones(300)))
    assert got == pytest.approx(adjusted(prior, queries, vectors, failure, chosen["beta"], chosen["kappa"]))
    topic_means = [got[query_rate == r].mean() for r in np.unique(query_rate)]
    assert np.corrcoef(topic_means, np.unique(query_rate))[0, 1] > 0.8
    with pytest.raises(ArtifactError, match="weak-model failures"):
        user_overlay.predict(chosen, np.full(300, 0.5), queries, ["x"] * 300, vectors, y)
    # a weak model that is never wrong on the labels gives the logistic prior nothing to fit: not a candidate
    never = fit(vectors, y, flat, log_len=length, weak_failure=np.zeros(len(y)))
    assert {row["target"] for row in never["table"]} == {"pair"}


def test_an_overlay_on_the_difficulty_target_keeps_its_failures(tmp_path):
    vectors, y, failure, _ = _graded_topics(60)
    params = {"sw_ranking": {"target": "difficulty", "prior": None, "beta": 10.0, "kappa": 1.0}}
    saved = UserOverlay(vectors, y, "big", "small", "hash-16", params, ("s", "w"), failure).save(tmp_path)
    loaded = UserOverlay.load(saved)
    assert loaded.weak_failure == pytest.approx(failure)
    query = vectors[:3]
    assert loaded.adjust("sw_ranking", np.full(3, 0.5), query, ["a", "b", "c"]) == pytest.approx(
        adjusted(np.full(3, 0.5), query, vectors, failure, 10.0, 1.0))
    (saved / "weak_failure.npy").unlink()
    with pytest.raises(ArtifactError, match="missing or corrupted"):
        UserOverlay.load(saved)
