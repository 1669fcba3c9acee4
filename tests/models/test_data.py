import json

import numpy as np
import pandas as pd
import pytest

from index.embedder import HashEmbedder
from models import data
from models.errors import ArtifactError, DataNotFoundError
from models.paths import data_dir

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
