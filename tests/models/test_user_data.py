import json

import numpy as np
import pandas as pd
import pytest

from models import data
from index.errors import ConfigError, DataNotFoundError
from models.user_data import format_bad_rows, read_bench_file, read_prompts, read_user_file

STRONG, WEAK = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"


def _write(path, rows):
    """rows: list of dicts -> .csv/.jsonl/.parquet by the suffix of `path`."""
    frame = pd.DataFrame(rows)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


SCORES = [
    {"prompt": "p1", "model": "gpt4_1106_preview", "score": 1},  # aliased to the canonical name
    {"prompt": "p1", "model": "m", "score": 0},
    {"prompt": "p2", "model": "gpt-4-1106-preview", "score": 7},
    {"prompt": "p2", "model": "m", "score": 7},
    {"prompt": "p2", "model": "n", "score": 9},
]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_scores_file_becomes_pairwise_battles(tmp_path, suffix):
    user = read_user_file(_write(tmp_path / f"judge{suffix}", SCORES))
    assert user.kind == "scores" and user.source == "user:judge" and user.bad_rows == [] and user.n_rows == 5
    got = {(r.prompt, r.model_a, r.model_b): r.winner for r in user.battles.itertuples()}
    flipped = {(p, b, a): {"model_a": "model_b", "model_b": "model_a", "tie": "tie"}[w] for (p, a, b), w in got.items()}
    both = {**got, **flipped}
    assert len(got) == 4  # p1: one pair; p2: three pairs
    assert both[("p1", STRONG, "m")] == "model_a"
    assert both[("p2", STRONG, "m")] == "tie"  # equal judge scores
    assert both[("p2", "n", STRONG)] == "model_a" and both[("p2", "n", "m")] == "model_a"
    assert list(user.battles.columns) == data.BATTLE_COLUMNS and set(user.battles["source"]) == {"user:judge"}
    assert list(user.scores.columns) == ["prompt", "model", "score", "source"] and len(user.scores) == 5
    assert set(user.scores["model"]) == {STRONG, "m", "n"}


def test_repeated_scores_are_averaged_and_single_model_prompts_counted(tmp_path):
    rows = [{"prompt": "p", "model": "a", "score": 1}, {"prompt": "p", "model": "a", "score": 0},
            {"prompt": "p", "model": "b", "score": 0.5}, {"prompt": "q", "model": "a", "score": 1}]
    user = read_user_file(_write(tmp_path / "s.csv", rows))
    assert user.battles[["prompt", "winner"]].values.tolist() == [["p", "tie"]]  # mean(1, 0) = 0.5 ties 0.5
    assert user.unpaired_prompts == 1  # "q" was scored for one model only
    assert user.summary()["unpaired_prompts"] == 1


def test_scores_bad_rows_are_reported_by_row_number(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text(
        "prompt,model,score\n"
        "p1,a,1\n"          # row 1
        ",a,1\n"            # row 2: empty prompt
        "p1,b,abc\n"        # row 3: non-numeric score
        "p1,,1\n"           # row 4: missing model
        "\n"                # row 5: blank line, not a row, still counted
        "p1,b,0\n"          # row 6
        "p1,c,\n"           # row 7: missing score
        "   ,c,1\n"         # row 8: whitespace prompt
    )
    user = read_user_file(path)
    rows = [r for r, _ in user.bad_rows]
    reasons = dict(user.bad_rows)
    assert rows == [2, 3, 4, 7, 8]
    assert reasons[2] == "empty prompt" and "not a number" in reasons[3] and "'abc'" in reasons[3]
    assert reasons[4] == "missing model" and reasons[7] == "missing score" and reasons[8] == "empty prompt"
    assert len(user.battles) == 1 and user.n_rows == 7
    line = format_bad_rows(path, user.bad_rows, user.n_rows)
    assert "skipped 5 of 7 rows" in line and "row 3: score 'abc' is not a number" in line and "\n" not in line


BATTLES = [
    {"prompt": "p1", "model_a": "a", "model_b": "b", "winner": "model_a"},
    {"prompt": "p2", "model_a": "a", "model_b": "Yi-34B-Chat", "winner": "Tie"},
    {"prompt": "p3", "model_a": "a", "model_b": "b", "winner": "tie (bothbad)"},
]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_battles_file_with_winner_column(tmp_path, suffix):
    user = read_user_file(_write(tmp_path / f"arena{suffix}", BATTLES))
    assert user.kind == "battles" and user.bad_rows == [] and user.scores.empty
    assert user.battles["winner"].tolist() == ["model_a", "tie", "tie"]
    assert user.battles["model_b"].tolist()[1] == "01-ai/Yi-34B-Chat"
    assert list(user.battles.columns) == data.BATTLE_COLUMNS and set(user.battles["source"]) == {"user:arena"}


def test_battles_file_with_hf_flags_and_first_turn(tmp_path):
    rows = [
        {"prompt": json.dumps(["first turn", "second"]), "model_a": "a", "model_b": "b",
         "winner_model_a": 0, "winner_model_b": 1, "winner_tie": 0},
        {"prompt": "p", "model_a": "a", "model_b": "b", "winner_model_a": 1, "winner_model_b": 1, "winner_tie": 0},
        {"prompt": "p", "model_a": "a", "model_b": "b", "winner_model_a": 0, "winner_model_b": 0, "winner_tie": 2},
        {"prompt": "q", "model_a": "a", "model_b": "b", "winner_model_a": 0, "winner_model_b": 0, "winner_tie": 1},
    ]
    user = read_user_file(_write(tmp_path / "hf.jsonl", rows))
    assert user.battles[["prompt", "winner"]].values.tolist() == [["first turn", "model_b"], ["q", "tie"]]
    assert [r for r, _ in user.bad_rows] == [2, 3]
    assert "exactly one winner flag" in user.bad_rows[0][1] and "0 or 1" in user.bad_rows[1][1]


def test_battles_bad_rows_are_reported_by_row_number(tmp_path):
    path = tmp_path / "b.jsonl"
    lines = [
        {"prompt": "p", "model_a": "a", "model_b": "b", "winner": "model_b"},   # 1
        {"prompt": "", "model_a": "a", "model_b": "b", "winner": "model_a"},    # 2 empty prompt
        {"prompt": "p", "model_a": "a", "model_b": "b", "winner": "a_wins"},    # 3 unknown winner
        {"prompt": "p", "model_a": "a", "winner": "tie"},                       # 4 missing model_b
        {"prompt": "p", "model_a": "a", "model_b": "b"},                        # 5 missing winner
        {"prompt": "p", "model_a": "gpt4_1106_preview", "model_b": "gpt-4-1106-preview", "winner": "tie"},  # 6 same model
    ]
    text = "".join(json.dumps(r) + "\n" for r in lines[:3]) + "{not json\n" + "".join(json.dumps(r) + "\n" for r in lines[3:])
    path.write_text(text)  # line 4 is broken JSON, so the dicts above from #4 on sit on lines 5..7
    user = read_user_file(path)
    reasons = dict(user.bad_rows)
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7]
    assert reasons[2] == "empty prompt" and reasons[3].startswith("unknown winner 'a_wins'")
    assert reasons[4] == "not a JSON object" and reasons[5] == "missing model_b" and reasons[6] == "missing winner"
    assert "both 'gpt-4-1106-preview'" in reasons[7]
    assert len(user.battles) == 1 and user.n_rows == 7


@pytest.mark.parametrize("name, content, error, fragment", [
    ("labels.xlsx", "x", ConfigError, "unknown format '.xlsx'"),
    ("labels", "x", ConfigError, "unknown format"),
    ("neither.csv", "prompt,answer\np,a\n", ConfigError, "matches neither schema"),
    ("noprompt.csv", "question,model,score\np,a,1\n", ConfigError, "matches neither schema"),
    ("both.csv", "prompt,model,score,model_a,model_b,winner\np,a,1,a,b,tie\n", ConfigError, "both schemas"),
    ("nowinner.csv", "prompt,model_a,model_b\np,a,b\n", ConfigError, "no winner column"),
    ("allbad.csv", "prompt,model,score\n,a,1\np,a,x\n", ConfigError, "no valid row"),
    ("empty.csv", "", ConfigError, "empty file"),
    ("header.csv", "prompt,model,score\n", ConfigError, "no valid row"),
    ("onemodel.csv", "prompt,model,score\np,a,1\nq,a,0\n", ConfigError, "one model only"),
    ("unpaired.csv", "prompt,model,score\np,a,1\nq,b,0\n", ConfigError, "no prompt has scores for two models"),
    ("garbage.parquet", "not parquet", ConfigError, "cannot read it as parquet"),
    ("garbage.jsonl", "[1, 2]\nnope\n", ConfigError, "no line is a JSON object"),
])
def test_unusable_files_are_one_line_errors(tmp_path, name, content, error, fragment):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(error, match=None) as info:
        read_user_file(path)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_missing_file_is_data_not_found(tmp_path):
    with pytest.raises(DataNotFoundError, match="missing data file"):
        read_user_file(tmp_path / "nope.csv")


def test_error_for_all_bad_rows_lists_them(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("prompt,model_a,model_b,winner\np,a,b,maybe\n,a,b,tie\n")
    with pytest.raises(ConfigError) as info:
        read_user_file(path)
    assert "row 1: unknown winner 'maybe'" in str(info.value) and "row 2: empty prompt" in str(info.value)


def test_column_names_are_case_insensitive(tmp_path):
    path = tmp_path / "caps.csv"
    path.write_text("Prompt,Model,Score,notes\np,a,1,x\np,b,0,y\n")
    user = read_user_file(path)
    assert user.battles[["model_a", "model_b", "winner"]].values.tolist() == [["a", "b", "model_a"]]


# ------------------------------------------------------------------------------------------- bench files


def test_bench_file_long(tmp_path):
    rows = [
        {"prompt": "p1", "model": "gpt4_1106_preview", "score": 1}, {"prompt": "p1", "model": "Mixtral-8x7B-Instruct-v0.1", "score": 0},
        {"prompt": "p2", "model": STRONG, "score": 8}, {"prompt": "p2", "model": WEAK, "score": 6},
        {"prompt": "p2", "model": WEAK, "score": 7},                       # repeats are averaged
        {"prompt": "p3", "model": STRONG, "score": 1},                     # row 6: no weak score -> skipped
        {"prompt": "p4", "model": STRONG, "score": "x"},                   # row 7: bad score
        {"prompt": "p4", "model": WEAK, "score": 1},
        {"prompt": "p4", "model": "other", "score": 1},
    ]
    bench = read_bench_file(_write(tmp_path / "held_out.jsonl", rows), STRONG, WEAK)
    assert bench.name == "held_out" and bench.prompts == ["p1", "p2"]
    np.testing.assert_array_equal(bench.strong, [1.0, 8.0])
    np.testing.assert_array_equal(bench.weak, [0.0, 6.5])
    assert (bench.strong_model, bench.weak_model) == (STRONG, WEAK)


def test_bench_file_long_reports_skipped_rows(tmp_path, caplog):
    rows = [{"prompt": "p1", "model": STRONG, "score": 1}, {"prompt": "p1", "model": WEAK, "score": 0},
            {"prompt": "p3", "model": STRONG, "score": 1}, {"prompt": "", "model": WEAK, "score": 1}]
    with caplog.at_level("WARNING"):
        bench = read_bench_file(_write(tmp_path / "h.csv", rows), STRONG, WEAK)
    assert bench.prompts == ["p1"]
    assert "row 3: prompt has no score for the weak model" in caplog.text and "row 4: empty prompt" in caplog.text


def test_bench_file_wide(tmp_path):
    rows = [
        {"prompt": "p1", "gpt-4-1106-preview": 1, "mistralai/mixtral-8x7b-chat": 0, "llama": 1},
        {"prompt": "p2", "gpt-4-1106-preview": 0, "mistralai/mixtral-8x7b-chat": None, "llama": 1},  # row 2 skipped
        {"prompt": "p3", "gpt-4-1106-preview": 1, "mistralai/mixtral-8x7b-chat": 1, "llama": 0},
    ]
    bench = read_bench_file(_write(tmp_path / "wide.csv", rows), STRONG, WEAK)
    assert bench.prompts == ["p1", "p3"]
    np.testing.assert_array_equal(bench.strong, [1.0, 1.0])
    np.testing.assert_array_equal(bench.weak, [0.0, 1.0])
    other = read_bench_file(tmp_path / "wide.csv", "llama", WEAK)  # any pair the file has
    assert other.strong_model == "llama" and other.strong.tolist() == [1.0, 0.0]


@pytest.mark.parametrize("rows, fragment", [
    ([{"prompt": "p", "model": "a", "score": 1}, {"prompt": "p", "model": WEAK, "score": 0}],
     f"no scores for the strong model '{STRONG}'; its models: 'a', '{WEAK}'"),
    ([{"prompt": "p", "a": 1, WEAK: 0}], f"no score column for the strong model '{STRONG}'; its columns: 'a', '{WEAK}'"),
    ([{"prompt": "p", STRONG: 1, "b": 0}], f"no score column for the weak model '{WEAK}'"),
    ([{"prompt": "p", "model_a": "a", "model_b": "b", "winner": "tie"}], "holds battles"),
    ([{"prompt": "p", STRONG: "x", WEAK: 0}], "no prompt has scores for both"),
])
def test_bench_file_errors(tmp_path, rows, fragment):
    with pytest.raises(ConfigError) as info:
        read_bench_file(_write(tmp_path / "b.csv", rows), STRONG, WEAK)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_read_prompts_formats(tmp_path):
    (tmp_path / "p.txt").write_text("first\n\nsecond\n")
    assert read_prompts(tmp_path / "p.txt") == ["first", "second"]
    _write(tmp_path / "p.csv", [{"prompt": "a", "id": 1}, {"prompt": "", "id": 2}, {"prompt": "b", "id": 3}])
    assert read_prompts(tmp_path / "p.csv") == ["a", "b"]
    _write(tmp_path / "p.parquet", [{"prompt": "x"}])
    assert read_prompts(tmp_path / "p.parquet") == ["x"]
    _write(tmp_path / "q.jsonl", [{"text": "x"}])
    with pytest.raises(ConfigError, match="no prompt column"):
        read_prompts(tmp_path / "q.jsonl")
    (tmp_path / "e.txt").write_text("\n\n")
    with pytest.raises(ConfigError, match="holds no prompts"):
        read_prompts(tmp_path / "e.txt")
