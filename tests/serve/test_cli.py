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
    check = json.loads((tmp_path / "routers" / "mf" / "obvious.json").read_text())  # every trained artifact's own
    assert set(check["files"]) >= {"obvious_prompts.jsonl", "obvious_prompts_heldout5.jsonl"}
    assert all(0.0 <= e["auc"] <= 1.0 for e in check["files"].values())
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
    # --retrain: every trained router again from the current data, whatever its state; --obvious-heldout beside
    trained_at = (tmp_path / "routers" / "sw_ranking" / "manifest.json").stat().st_mtime_ns
    code, out, err = _run(capsys, "eval", "--router", "sw_ranking,length", "--bench", "gsm8k", "--retrain",
                          "--obvious-heldout", "--out", str(tmp_path / "eval3"), *home)
    assert code == 0, err
    assert (tmp_path / "routers" / "sw_ranking" / "manifest.json").stat().st_mtime_ns > trained_at
    for name in ("obvious_heldout.json", "obvious_heldout2.json", "obvious_heldout3.json", "obvious_heldout4.json",
                 "obvious_heldout5.json"):
        heldout = json.loads((tmp_path / "eval3" / name).read_text())
        assert set(heldout) == {"sw_ranking", "length"} and heldout["length"]["auc_balanced"] == 0.0

    code, out, err = _run(capsys, "calibrate", "--router", "sw_ranking", "--strong-ratio", "0.3", "--reference", "gsm8k", *home)
    assert code == 0, err
    cal = json.loads((tmp_path / "calibration" / "sw_ranking.json").read_text())
    assert cal["n"] == 1307 and abs(cal["realised_strong_ratio"] - 0.3) < 0.01


# ------------------------------------------------------------------------- your own labels (--add, coverage, --bench)


def _tiny_data(home, battles=None):
    """A <home>/data as `turnout data build` writes it, from a handful of hand-made battles."""
    import pandas as pd

    from models import data as training

    battles = battles if battles is not None else pd.DataFrame([
        ("What is the capital of France?", "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1", "model_a", "src-a"),
        ("Solve 12 times 7 for me", "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1", "tie", "src-a"),
        ("Write a poem about trains", "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview", "model_b", "src-b"),
    ], columns=training.BATTLE_COLUMNS)
    ratings = training.fit_ratings(battles)
    td = training.TrainingData(battles, pd.DataFrame(columns=["prompt", "model", "score", "source"]), ratings,
                               training.assign_tiers(ratings, 2), {"sources": {}})
    training.save(td, home / "data")
    return home / "data"


def test_data_build_add_bad_file_fails_fast_and_keeps_data(capsys, tmp_path):
    folder = _tiny_data(tmp_path / "home")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    bad = tmp_path / "labels.csv"
    bad.write_text("prompt,model_a,model_b,winner\nhello,a,b,a_won\n,a,b,tie\n")
    (tmp_path / "shared").mkdir()
    code, _, err = _run(capsys, "data", "build", "--add", str(bad), "--data-dir", str(tmp_path / "shared"),
                        "--home", str(tmp_path / "home"), "--embedder", "hash-8")
    _one_line_error(code, err, "no valid row")
    assert "row 1: unknown winner 'a_won'" in err and "row 2: empty prompt" in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    for argv, fragment in ((["--add", str(tmp_path / "labels.xlsx")], "unknown format '.xlsx'"),
                           (["--add", str(tmp_path / "missing.csv")], "missing data file"),
                           (["--add", str(bad.with_name("x.csv")), "--add", str(bad.with_name("x.jsonl"))], "missing data file")):
        code, _, err = _run(capsys, "data", "build", *argv, "--home", str(tmp_path / "home"), "--embedder", "hash-8")
        _one_line_error(code, err, fragment)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_data_build_add_passes_user_tables_to_build(capsys, tmp_path, monkeypatch, caplog):
    import pandas as pd

    from models import benchmarks
    from models import data as training

    seen = {}

    def fake_build(data, eval_prompts, embed, **options):
        seen.update(options)
        table = pd.concat(options["extra_battles"], ignore_index=True)
        report = {"sources": {s: {"battles": len(g), "prompts": g["prompt"].nunique(), "contaminated_battles": 0,
                                  "contaminated_prompts": 0} for s, g in table.groupby("source")}}
        ratings = training.fit_ratings(table)
        return training.TrainingData(table, pd.concat(options["extra_scores"], ignore_index=True), ratings,
                                     training.assign_tiers(ratings, 2), report)

    monkeypatch.setattr(training, "build", fake_build)
    monkeypatch.setattr(benchmarks, "evaluation_prompts", lambda data: set())
    scores = tmp_path / "judge.csv"
    scores.write_text("prompt,model,score\np1,strong-x,9\np1,weak-y,3\np2,strong-x,5\np2,weak-y,x\np2,mid-z,5\n")
    battles = tmp_path / "arena.jsonl"
    battles.write_text('{"prompt": "p3", "model_a": "strong-x", "model_b": "weak-y", "winner": "model_a"}\n')
    (tmp_path / "shared").mkdir()
    with caplog.at_level("WARNING"):
        code, out, err = _run(capsys, "data", "build", "--add", str(scores), "--add", str(battles), "--data-dir",
                              str(tmp_path / "shared"), "--home", str(tmp_path / "home"), "--embedder", "hash-8")
    assert code == 0, err
    assert [set(b["source"]) for b in seen["extra_battles"]] == [{"user:judge"}, {"user:arena"}]
    assert len(seen["extra_scores"]) == 1 and len(seen["extra_scores"][0]) == 4  # the battles file has no scores
    assert "judge.csv: skipped 1 of 5 rows (row 4: score 'x' is not a number)" in caplog.text
    assert "user:judge" in out and "user:arena" in out
    meta = json.loads((tmp_path / "home" / "data" / "models.json").read_text())
    assert set(meta["report"]["sources"]) == {"user:judge", "user:arena"}
    added = {a["source"]: a for a in meta["report"]["added"]}
    assert added["user:judge"]["bad_rows"] == 1 and added["user:judge"]["first_bad_rows"] == [[4, "score 'x' is not a number"]]
    assert added["user:arena"]["kind"] == "battles" and added["user:arena"]["battles"] == 1


def test_data_build_add_same_stem_twice_is_refused(capsys, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "labels.csv").write_text("prompt,model,score\np,m,1\np,n,0\n")
    code, _, err = _run(capsys, "data", "build", "--add", str(tmp_path / "a" / "labels.csv"), "--add",
                        str(tmp_path / "b" / "labels.csv"), "--home", str(tmp_path / "home"), "--embedder", "hash-8")
    _one_line_error(code, err, "user:labels")


def test_coverage_on_hash_embedder(capsys, tmp_path):
    home = tmp_path / "home"
    _tiny_data(home)
    prompts = tmp_path / "traffic.txt"
    prompts.write_text("What is the capital of France?\nWrite a poem about trains\nxylophone quartz jukebox\n")
    code, out, err = _run(capsys, "coverage", "--prompts", str(prompts), "--router", "mf", "--home", str(home),
                          "--embedder", "hash-64")
    assert code == 0, err
    report = json.loads((home / "coverage.json").read_text())
    assert report["n_prompts"] == 3 and report["router"] == "mf" and report["embedder"] == "hash-64"
    assert set(report["sources"]) == {"src-a", "src-b"} and report["overall"]["n_train"] == 3
    assert report["sources"]["src-a"]["n_train"] == 2 and report["sources"]["src-b"]["n_train"] == 1
    # two prompts are training prompts (cosine 1); the third shares no word with any of them
    least = report["least_covered"]
    assert least[0]["prompt"] == "xylophone quartz jukebox" and least[0]["similarity"] < 0.5
    assert [round(x["similarity"], 5) for x in least[1:]] == [1.0, 1.0]
    assert report["overall"]["share_below"] == pytest.approx(1 / 3)
    assert report["overall"]["score"] == pytest.approx((2 + least[0]["similarity"]) / 3)
    assert report["sources"]["src-a"]["nearest_share"] + report["sources"]["src-b"]["nearest_share"] == pytest.approx(1)
    assert "src-a" in out and "coverage" in out and "coverage.json" in out

    out_path = tmp_path / "cov" / "report.json"
    jsonl = tmp_path / "traffic.jsonl"
    jsonl.write_text('{"prompt": "Solve 12 times 7 for me"}\n')
    assert _run(capsys, "coverage", "--prompts", str(jsonl), "--out", str(out_path), "--home", str(home), "--embedder", "hash-64")[0] == 0
    assert json.loads(out_path.read_text())["sources"]["src-a"]["score"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("argv, fragment", [
    (["--router", "nope"], "unknown router 'nope'"),
    (["--router", "mf,sw_ranking"], "one router"),
    (["--prompts-file-missing"], "missing data file"),
    (["--no-data"], "turnout data build"),
])
def test_coverage_errors_are_one_line(capsys, tmp_path, argv, fragment):
    home = tmp_path / "home"
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    if argv == ["--prompts-file-missing"]:
        argv, prompts = [], tmp_path / "gone.txt"
    elif argv == ["--no-data"]:
        argv = []
    else:
        _tiny_data(home)
    code, _, err = _run(capsys, "coverage", "--prompts", str(prompts), *argv, "--home", str(home), "--embedder", "hash-8")
    _one_line_error(code, err, fragment)


def _held_out(path):
    rows = ["prompt,gpt-4-1106-preview,mistralai/Mixtral-8x7B-Instruct-v0.1,cheap"]
    rows += [f"question number {i} {'with a long tail of words ' * (i % 5)},{i % 2},{int(i % 3 == 0)},{i % 2}" for i in range(40)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_eval_bench_file_names_and_pairs(tmp_path):
    from models.benchmarks import Benchmark
    from models.evaluation import parse_benches as _benches

    held = _held_out(tmp_path / "held.csv")
    benches, pair = _benches(f"gsm8k,{held}", "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1")
    assert benches[0] == "gsm8k" and isinstance(benches[1], Benchmark) and benches[1].name == "held" and pair == {}
    assert len(benches[1]) == 40
    benches, pair = _benches(str(held), "gpt4_1106_preview", "cheap")  # aliases resolved; another weak model
    assert pair == {"strong": "gpt-4-1106-preview", "weak": "cheap"} and benches[0].weak_model == "cheap"


@pytest.mark.parametrize("bench, extra, fragment", [
    ("gsm8k,{held}", ["--weak", "cheap"], "evaluate them in a separate run"),
    ("{held}", ["--strong", "nope"], "no score column for the strong model 'nope'"),
    ("{held},{held}", [], "more than once"),
    ("{missing}", [], "missing data file"),
    ("{held},hellaswag", [], "unknown benchmark 'hellaswag'"),
])
def test_eval_bench_file_errors_are_one_line(capsys, tmp_path, bench, extra, fragment):
    held = _held_out(tmp_path / "held.csv")
    argv = ["eval", "--router", "random", "--bench", bench.format(held=held, missing=tmp_path / "gone.csv"), *extra,
            "--home", str(tmp_path), "--embedder", "hash-8"]
    code, _, err = _run(capsys, *argv)
    _one_line_error(code, err, fragment)


def test_eval_on_a_bench_file(capsys, tmp_path):
    held = _held_out(tmp_path / "held.csv")
    code, out, err = _run(capsys, "eval", "--router", "random,length", "--bench", str(held), "--out", str(tmp_path / "eval"),
                          "--home", str(tmp_path / "home"), "--data-dir", str(tmp_path / "nowhere"), "--embedder", "hash-8")
    assert code == 0, err  # a user file needs no shared data folder
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["held"]["n"] == 40 and results["held"]["weak_model"] == "mistralai/Mixtral-8x7B-Instruct-v0.1"
    assert set(results["held"]["routers"]) == {"random", "length"}
    assert "held" in out


def test_eval_warns_when_held_out_prompts_were_trained_on(capsys, tmp_path, caplog):
    home = tmp_path / "home"
    _tiny_data(home)
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "what is the capital of FRANCE", "gpt-4-1106-preview": 1, "mistralai/Mixtral-8x7B-Instruct-v0.1": 0},
        {"prompt": "a prompt of my own", "gpt-4-1106-preview": 1, "mistralai/Mixtral-8x7B-Instruct-v0.1": 1},
    ]))
    with caplog.at_level("WARNING"):
        code, _, err = _run(capsys, "eval", "--router", "random", "--bench", str(held), "--bootstrap", "0", "--out",
                            str(tmp_path / "eval"), "--home", str(home), "--embedder", "hash-8")
    assert code == 0, err
    assert "held: 1 of 2 prompts are in the training data" in caplog.text
