import json

import numpy as np
import pandas as pd
import pytest

from index.embedder import HashEmbedder
from models import data
from index.errors import ArtifactError, DataNotFoundError
from index.paths import data_dir

FIXTURES = __import__("pathlib").Path(__file__).resolve().parents[1] / "fixtures"


def test_pairwise_battles_from_correctness_matrix_skip_nan():
    scores = pd.DataFrame({"m1": [1.0, 0.0, 1.0], "m2": [0.0, 0.0, np.nan], "m3": [1.0, 1.0, 0.0]})
    battles = data._pairwise_battles(["p0", "p1", "p2"], scores, "src")
    got = {(r.prompt, r.model_a, r.model_b): r.winner for r in battles.itertuples()}
    assert got == {
        ("p0", "m1", "m2"): "model_a", ("p1", "m1", "m2"): "tie",
        ("p0", "m1", "m3"): "tie", ("p1", "m1", "m3"): "model_b", ("p2", "m1", "m3"): "model_a",
        ("p0", "m2", "m3"): "model_b", ("p1", "m2", "m3"): "model_b",
    }


def test_alpaca_eval_preference_mapping(tmp_path):
    folder = tmp_path / "alpaca-eval"
    folder.mkdir()
    pd.DataFrame({"instruction_idx": [0, 1], "dataset": ["x", "y"], "instruction": ["first?", "second?"]}).to_csv(folder / "instructions.csv", index=False)
    rows = [
        ("weighted_alpaca_eval_gpt4_turbo", "gpt4_1106_preview", "m", 1.9),   # P(b) 0.9 -> model_b
        ("weighted_alpaca_eval_gpt4_turbo", "gpt4_1106_preview", "m", 1.05),  # P(b) 0.05 -> model_a
        ("weighted_alpaca_eval_gpt4_turbo", "gpt4_1106_preview", "m", 1.5),   # undecided -> tie
        ("alpaca_eval_gpt4", "text_davinci_003", "m", 2.0),
        ("alpaca_eval_gpt4", "text_davinci_003", "m", 1.0),
        ("alpaca_eval_gpt4", "text_davinci_003", "m", 0.0),                   # AlpacaEval's draw
        ("alpaca_eval_gpt4", "text_davinci_003", "m", None),                  # no annotation: dropped
        ("alpaca_eval_gpt4", "text_davinci_003", "example", 2.0),             # demo folder: dropped
    ]
    pd.DataFrame([(i % 2, ann, "dir", g1, g2, pref, 10, 10) for i, (ann, g1, g2, pref) in enumerate(rows)],
                 columns=["instruction_idx", "annotator", "results_dir", "generator_1", "generator_2", "preference",
                          "output_1_chars", "output_2_chars"]).to_csv(folder / "pairwise_annotations.csv", index=False)
    battles = data.load_alpaca_eval(tmp_path)
    assert battles["winner"].tolist() == ["model_b", "model_a", "tie", "model_b", "model_a", "tie"]
    assert battles["model_a"].iloc[0] == "gpt-4-1106-preview"  # aliased
    assert battles["prompt"].tolist()[:2] == ["first?", "second?"]
    assert battles["source"].tolist() == ["alpaca-eval-2"] * 3 + ["alpaca-eval-1"] * 3


def test_arena_loader_on_hf_schema_fixture(tmp_path):
    battles = data.load_arena(FIXTURES / "arena_sample.jsonl")
    assert battles["winner"].tolist() == ["tie", "model_b", "model_a", "model_b"]  # the two-winner row is dropped
    assert battles["prompt"].tolist()[1] == "Write a haiku about trains."  # first user turn of a JSON list
    assert battles["prompt"].tolist()[3] == "plain text prompt, not a JSON list"
    assert battles["model_b"].tolist()[3] == "gpt-4-1106-preview"
    assert set(battles["source"]) == {"arena"}
    frame = pd.read_json(FIXTURES / "arena_sample.jsonl", lines=True)
    frame.to_parquet(tmp_path / "arena.parquet")
    pd.testing.assert_frame_equal(data.load_arena(tmp_path / "arena.parquet"), battles)
    frame.drop(columns=["winner_tie"]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataNotFoundError, match="winner_tie"):
        data.load_arena(tmp_path / "bad.csv")


def test_routerbench_prompt_cleanup():
    texts = [repr([f"Q: shared\\nexample\nQuestion {i}?\nAnswer only A or B.\nAnswer:"]) for i in range(3)]
    cleaned = data._strip_shared([data._unwrap(t) for t in texts])
    assert cleaned == ["Question 0?", "Question 1?", "Question 2?"]


def test_contamination_exact_and_embedding():
    embedder = HashEmbedder(64)
    train = ["What is 2+2?", "what is 2 + 2 ?!", "A completely different question about trees", "tell me a joke"]
    evals = ["What is 2+2?", "Tell me a joke"]
    exact = data.contaminated(train, evals, None)
    assert exact.tolist() == [True, True, False, True]  # case, spacing and punctuation do not hide a copy
    both = data.contaminated(train, evals, embedder.embed, cosine=0.95)
    assert both[0] and both[3] and not both[2]
    assert data.contaminated(train, evals, embedder.embed, cosine=-1.0).all()


def test_tiers_follow_ratings():
    rng = np.random.default_rng(0)
    true = {"a": 2.0, "b": 1.0, "c": 0.0, "d": -1.0}
    names = list(true)
    rows = []
    for _ in range(4000):
        x, y = rng.choice(4, 2, replace=False)
        p = 1 / (1 + np.exp(-(true[names[x]] - true[names[y]])))
        rows.append(("q", names[x], names[y], "model_a" if rng.random() < p else "model_b", "s"))
    ratings = data.fit_ratings(pd.DataFrame(rows, columns=data.BATTLE_COLUMNS))
    assert list(ratings.index) == ["a", "b", "c", "d"]
    assert data.assign_tiers(ratings, 2) == {"a": 0, "b": 0, "c": 1, "d": 1}


def test_data_dir_precedence(tmp_path, monkeypatch):
    flag, env = tmp_path / "flag", tmp_path / "env"
    flag.mkdir()
    env.mkdir()
    monkeypatch.setenv("TURNOUT_DATA_DIR", str(env))
    assert data_dir(flag) == flag.resolve()
    assert data_dir() == env.resolve()
    monkeypatch.setenv("TURNOUT_DATA_DIR", str(tmp_path / "missing"))
    with pytest.raises(DataNotFoundError, match="missing"):
        data_dir()


def test_missing_source_file_names_it(tmp_path):
    with pytest.raises(DataNotFoundError, match="pairwise_annotations.csv"):
        data.load_alpaca_eval(tmp_path)


def test_load_refuses_missing_and_corrupted(tmp_path):
    with pytest.raises(ArtifactError, match="turnout data build"):
        data.load(tmp_path)
    (tmp_path / "models.json").write_text(json.dumps({"ratings": {}, "tiers": {}}))
    (tmp_path / "battles.parquet").write_bytes(b"not parquet")
    (tmp_path / "scores.parquet").write_bytes(b"")
    with pytest.raises(ArtifactError, match="unreadable"):
        data.load(tmp_path)


def test_dev_split_is_seeded_by_question_and_about_a_fifth():
    keys = [f"question {i}" for i in range(20_000)]
    dev = data.is_dev(keys)
    assert 0.19 < dev.mean() < 0.21
    np.testing.assert_array_equal(dev, data.is_dev(list(keys)))  # stable: a hash, no global random state
    # formatting does not move a question to the other side
    assert data.is_dev([data.split_key("What is 2+2?")]) == data.is_dev([data.split_key("  what is 2 + 2 ? ")])


def _battles(prompts, source, winner="model_a"):
    return pd.DataFrame({"prompt": prompts, "model_a": "m-strong", "model_b": "m-weak", "winner": winner,
                         "source": source})


def test_build_keeps_dev_prompts_out_and_copies_across_sources_once(tmp_path, monkeypatch):
    prompts = [f"shared question number {i}" for i in range(400)]
    monkeypatch.setattr(data, "CORRECTNESS_LOADERS", {
        "routerdc": lambda _: (_battles(prompts, "routerdc/x"), pd.DataFrame(columns=["prompt", "model", "score", "source"])),
        "routerbench": lambda _: (_battles(prompts[:100], "routerbench/y", "tie"), pd.DataFrame(columns=["prompt", "model", "score", "source"])),
    })
    user = _battles([f"user prompt {i}" for i in range(50)], "user:mine")
    td = data.build(tmp_path, [], None, sources=("routerdc", "routerbench"), extra_battles=[user])
    trained = set(td.battles["prompt"])
    held = {p for p in prompts if data.is_dev([data.split_key(p)])[0]}
    assert held and not (held & trained)  # the dev share is never trained on
    assert set(prompts) - held <= trained
    assert td.report["cross_source_copies_dropped"] == {"routerbench": 100}  # the same text counted once
    assert (td.battles["source"] == "routerbench/y").sum() == 0
    assert (td.battles["source"] == "user:mine").sum() == 50  # a user's own file trains in full
    assert td.report["sources"]["routerdc/x"]["dev_prompts"] == len(held)


def test_source_weights_give_each_family_the_same_total():
    table = pd.concat([_battles(["a"] * 90, "mmlu-pro"), _battles(["b"] * 5, "routerdc/x"), _battles(["c"] * 5, "routerdc/y")])
    w = data.source_weights(table.reset_index(drop=True))
    assert w[:90].sum() == pytest.approx(w[90:].sum()) and w.mean() == pytest.approx(1.0)


def test_prompt_weights_give_each_prompt_the_same_total():
    table = pd.concat([_battles(["a"] * 90, "mmlu-pro"), _battles(["b"] * 5, "routerdc/x"), _battles(["c"] * 5, "routerdc/y")])
    w = data.prompt_weights(table.reset_index(drop=True))
    assert w[:90].sum() == pytest.approx(w[90:95].sum()) == pytest.approx(w[95:].sum()) and w.mean() == pytest.approx(1.0)


def test_unknown_source_and_tier_weighting_are_config_errors(tmp_path):
    from index.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown or no sources"):
        data.build(tmp_path, [], None, sources=("nope",))
    with pytest.raises(ConfigError, match="tier weighting"):
        data.build(tmp_path, [], None, sources=("routerdc",), tier_weighting="nope")


@pytest.mark.real_data
def test_real_correctness_sources(real_data):
    pro, pro_scores = data.CORRECTNESS_LOADERS["mmlu-pro"](real_data)
    assert pro["prompt"].nunique() == 3887 and "\nJ. " in pro["prompt"].iloc[0] or "\nA. " in pro["prompt"].iloc[0]
    assert {"gpt-4o-2024-05-13", "mistralai/Mixtral-8x7B-Instruct-v0.1"} <= set(pro_scores["model"])
    assert not any(m in set(pro_scores["model"]) for m in data.MMLU_PRO_SKIP)
    cot, cot_scores = data.CORRECTNESS_LOADERS["faithful-cot"](real_data)
    assert set(cot_scores["model"]) == {"gpt-4-0613", "gpt-3.5-turbo-0613", "text-davinci-003", "text-davinci-002",
                                        "code-davinci-002", "code-davinci-001"}
    assert cot_scores.groupby("model")["score"].mean()["gpt-4-0613"] > 0.9  # NL+SL: the paper's GPT-4 accuracy
    tqa, _ = data.CORRECTNESS_LOADERS["theoremqa"](real_data)
    assert tqa["prompt"].nunique() == 800 - 53  # pictures dropped
    # MMLU-Pro's theoremQA-* rows are TheoremQA's problems: same key, so the same side of the dev split
    shared = set(pro["key"]) & set(tqa["key"])
    assert len(shared) >= 590
    keys = sorted(shared)
    np.testing.assert_array_equal(data.is_dev(keys), data.is_dev(keys))


@pytest.mark.real_data
def test_real_tiers_follow_correctness(real_data):
    td = data.build(real_data, [], None)
    t = td.tiers
    # the top of the correctness scale (N_TIERS = 20: gpt-4o in tier 0, gpt-4-1106 in tier 1)
    assert t["gpt-4o-2024-05-13"] == 0 and t["gpt-4-1106-preview"] <= 1
    assert t["gpt-4-1106-preview"] < t["mistralai/Mixtral-8x7B-Instruct-v0.1"]
    assert t["gpt-4-0613"] < t["gpt-3.5-turbo-0613"] < t["text-davinci-002"]
    # AlpacaEval-1-only models are rated by beating text-davinci-003 under a GPT-4 judge: no tier from that
    assert "tulu-2-dpo-70b" not in t and "Mistral-7B+RAHF-DUAL+LoRA" not in t


def test_unreadable_source_file_is_one_line_error_and_keeps_artifacts(tmp_path, real_data):
    from serve.cli import main

    broken = tmp_path / "data"
    (broken / "faithful-cot").mkdir(parents=True)
    (broken / "faithful-cot" / "faithful_cot.csv").write_bytes(b"dataset,id\n\xff\xfe\x00garbage")
    for folder in ("routellm-evals", "fastchat-mt-bench"):
        (broken / folder).symlink_to(real_data / folder)
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    (home / "data" / "models.json").write_text("{\"kept\": true}")
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["data", "build", "--sources", "faithful-cot", "--data-dir", str(broken), "--home", str(home),
                     "--embedder", "hash-64"])
    assert code == 2
    assert err.getvalue().count("\n") == 1 and "faithful-cot" in err.getvalue() and "unreadable" in err.getvalue()
    assert (home / "data" / "models.json").read_text() == "{\"kept\": true}"
