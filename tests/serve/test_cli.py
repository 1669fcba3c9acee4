"""The `turnout` CLI: one-line errors with exit code 2, and the whole pipeline on the real data.

The pipeline test uses the hashing embedder so that it runs in seconds; the MiniLM path is covered by the index
tests and by the committed benchmark run.
"""

import json

import pytest

from serve.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code, err, fragment):
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("turnout: error:"), err
    assert fragment in err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv, fragment", [
    (["eval", "--router", "mf,nope"], "unknown router 'nope'"),
    (["eval", "--router", "random", "--bench", "mmlu,hellaswag"], "unknown benchmark 'hellaswag'"),
    (["eval", "--router", ","], "no router given"),
    (["train", "nope"], "invalid choice"),
    (["calibrate", "--router", "random", "--strong-ratio", "1.5"], "--strong-ratio must be in [0, 1]"),
    (["calibrate", "--router", "random"], "--strong-ratio"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_names_and_values_are_one_line_errors(capsys, tmp_path, argv, fragment):
    code, _, err = _run(capsys, *argv)
    _one_line_error(code, err, fragment)


def test_missing_data_dir_is_one_line_error(capsys, tmp_path):
    code, _, err = _run(capsys, "data", "build", "--data-dir", str(tmp_path / "nowhere"), "--home", str(tmp_path), "--embedder", "hash-8")
    _one_line_error(code, err, "data directory not found")


def test_missing_source_file_is_one_line_error(capsys, tmp_path):
    (tmp_path / "data").mkdir()
    code, _, err = _run(capsys, "data", "build", "--data-dir", str(tmp_path / "data"), "--home", str(tmp_path / "home"), "--embedder", "hash-8")
    _one_line_error(code, err, "missing data file")


@pytest.mark.parametrize("router", ["mf", "sw_ranking"])
def test_corrupted_artifact_is_refused_and_left_alone(capsys, tmp_path, router):
    folder = tmp_path / "routers" / router
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text("{")
    (folder / "manifest.json").write_text("")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    code, _, err = _run(capsys, "eval", "--router", router, "--home", str(tmp_path), "--embedder", "hash-8")
    _one_line_error(code, err, router if router == "mf" else "manifest")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


@pytest.mark.real_data
def test_pipeline_on_real_data(capsys, tmp_path, real_data):
    home = ["--home", str(tmp_path), "--embedder", "hash-64"]
    code, out, err = _run(capsys, "data", "build", *home)
    assert code == 0, err
    for fragment in ("alpaca-eval-1", "routerbench/arc_challenge_train", "routerdc/mmlu_train", "strength tiers", "gpt-4-1106-preview"):
        assert fragment in out
    assert "alpaca-eval-2" not in out  # self-judged by the strong model: off unless asked for
    meta = json.loads((tmp_path / "data" / "models.json").read_text())
    assert meta["tiers"]["gpt-4-1106-preview"] < meta["tiers"]["mistralai/Mixtral-8x7B-Instruct-v0.1"]
    # RouterDC's "mmlu_train" overlaps MMLU test questions: decontamination must find them
    assert meta["report"]["sources"]["routerdc/mmlu_train"]["contaminated_prompts"] > 0

    assert _run(capsys, "train", "sw_ranking", *home)[0] == 0
    assert _run(capsys, "train", "mf", "--epochs", "1", *home)[0] == 0
    code, out, err = _run(capsys, "eval", "--router", "sw_ranking,mf,length,random", "--bench", "gsm8k", "--out", str(tmp_path / "eval"), *home)
    assert code == 0, err
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    for router in ("sw_ranking", "mf", "length", "random"):
        assert 0.0 < results["gsm8k"]["routers"][router]["apgr"] < 1.5
    assert (tmp_path / "eval" / "gsm8k.png").stat().st_size > 10_000
    assert "sw_ranking" in out and "APGR" in out

    # rebuilding the data with other tiers makes the trained routers stale: eval retrains instead of mixing them
    assert _run(capsys, "data", "build", "--tiers", "8", *home)[0] == 0
    code, _, err = _run(capsys, "eval", "--router", "sw_ranking", "--bench", "gsm8k", "--out", str(tmp_path / "eval2"), *home)
    assert code == 0, err
    assert json.loads((tmp_path / "routers" / "sw_ranking" / "manifest.json").read_text())["n_tiers"] == 8

    code, out, err = _run(capsys, "calibrate", "--router", "sw_ranking", "--strong-ratio", "0.3", "--reference", "gsm8k", *home)
    assert code == 0, err
    cal = json.loads((tmp_path / "calibration" / "sw_ranking.json").read_text())
    assert cal["n"] == 1307 and abs(cal["realised_strong_ratio"] - 0.3) < 0.01
