"""Benchmark loading and evaluation (models/benchmarks.py, models/evaluation.py).

A tiny fake data dir in RouteLLM's layout covers the loaders and `evaluate` everywhere; tests marked
`real_data` check the numbers RouteLLM's protocol gives on the shared data and skip when it is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.base import DEFAULT_STRONG as S
from models.base import DEFAULT_WEAK as W

from models.benchmarks import (
    EVALS_DIR,
    DEV_BENCHMARKS,
    PAPER_BENCHMARKS,
    evaluation_prompts,
    load_benchmark,
    mt_bench_contaminated_ids,
)
from index.errors import ConfigError, DataNotFoundError
from models.evaluation import evaluate, format_table, write_results
from models.length_router import LengthRouter
from models.metrics import apgr, cpt, oracle_curve, qcut_curve


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)


def _contaminated(path: Path, prompts: list[str], indices: list[int]) -> None:
    rows = [{"train_prompt": p, "eval_prompt": p, "train_idx": 0, "eval_idx": i} for p, i in zip(prompts, indices)]
    _jsonl(path, rows)


@pytest.fixture
def fake_data(tmp_path: Path) -> Path:
    evals = tmp_path / EVALS_DIR
    responses = evals / "mmlu" / "responses"
    responses.mkdir(parents=True)
    # Two domains, read in filename order; "q-b2" is contaminated.
    for domain, prompts, weak, strong in [
        ("b", ["q-b1", "q-b2"], [True, False], [True, True]),
        ("a", ["q-a1 long prompt", "q-a2"], [False, False], [True, False]),
    ]:
        pd.DataFrame({"prompt": prompts, W: weak, S: strong}).to_csv(responses / f"mmlu_{domain}.csv", index=False)
    _contaminated(evals / "mmlu" / "contaminated_prompts.jsonl", ["q-b2"], [3])
    gsm = pd.DataFrame({"prompt": ["g1", "g2 longer", "g3"], W: [True, False, False], S: [True, True, False]})
    (evals / "gsm8k").mkdir()
    gsm.to_csv(evals / "gsm8k" / "gsm8k_responses.csv", index=False)
    _contaminated(evals / "gsm8k" / "contaminated_prompts.jsonl", ["g3"], [2])
    mt = evals / "mt_bench"
    ids = [81, 82, 83, 84]
    _jsonl(mt / "question.jsonl", [{"question_id": q, "category": "x", "turns": [f"t1-{q}", f"t2-{q}"]} for q in ids])
    scores = {S: {81: (9, 7), 82: (8, 8), 83: (10, 6), 84: (6, 8)}, W: {81: (5, 7), 82: (8, 8), 83: (4, 4), 84: (9, 9)}}
    _jsonl(mt / "judgements.jsonl", [
        {"question_id": q, "model": m, "turn": t + 1, "score": scores[m][q][t]}
        for m in scores
        for q in ids
        for t in (0, 1)
    ])
    # eval_idx 5 = turn 2 of the second question (82): listed [all turn-1 prompts, then all turn-2 prompts].
    _contaminated(mt / "contaminated_prompts.jsonl", ["t2-82"], [5])
    return tmp_path


def test_fake_correctness_benchmarks(fake_data: Path):
    mmlu = load_benchmark("mmlu", fake_data)
    assert mmlu.prompts == ["q-a1 long prompt", "q-a2", "q-b1"]
    np.testing.assert_array_equal(mmlu.strong, [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(mmlu.weak, [0.0, 0.0, 1.0])
    assert mmlu.strong.dtype == np.float64 and (mmlu.strong_model, mmlu.weak_model) == (S, W)
    gsm = load_benchmark("gsm8k", fake_data)
    assert gsm.prompts == ["g1", "g2 longer"] and len(gsm) == 2


def test_fake_mt_bench_turn_two_contamination_and_turn_mean(fake_data: Path):
    assert mt_bench_contaminated_ids(fake_data) == [82]
    mt = load_benchmark("mt-bench", fake_data)
    assert mt.prompts == ["t1-81", "t1-83", "t1-84"]  # routed on turn 1 only
    np.testing.assert_allclose(mt.strong, [8.0, 8.0, 7.0])
    np.testing.assert_allclose(mt.weak, [6.0, 4.0, 9.0])


def test_evaluation_prompts_cover_everything(fake_data: Path):
    prompts = evaluation_prompts(fake_data)
    assert {"q-b2", "g3", "t1-82", "t2-82", "t2-84"} <= prompts
    assert len(prompts) == 4 + 3 + 8


def test_errors(fake_data: Path):
    with pytest.raises(ConfigError, match="unknown benchmark 'hellaswag'; known: mt-bench, mmlu, gsm8k"):
        load_benchmark("hellaswag", fake_data)
    (fake_data / EVALS_DIR / "gsm8k" / "gsm8k_responses.csv").unlink()
    with pytest.raises(DataNotFoundError, match="gsm8k_responses.csv"):
        load_benchmark("gsm8k", fake_data)
    judgements = fake_data / EVALS_DIR / "mt_bench" / "judgements.jsonl"
    rows = pd.read_json(judgements, lines=True)
    rows[~((rows.question_id == 83) & (rows.turn == 2))].to_json(judgements, orient="records", lines=True)
    with pytest.raises(DataNotFoundError, match=r"question ids \[83\]"):
        load_benchmark("mt-bench", fake_data)
    rows.drop(columns="score").to_json(judgements, orient="records", lines=True)
    with pytest.raises(DataNotFoundError, match="lacks column"):
        load_benchmark("mt-bench", fake_data)


def test_evaluate_writes_table_plots_and_json(fake_data: Path, tmp_path: Path):
    out = tmp_path / "out"
    results = evaluate({"length": LengthRouter()}, ["mmlu", "mt-bench"], fake_data, out)
    entry = results["mmlu"]
    assert entry["n"] == 3 and entry["strong"] == pytest.approx(2 / 3) and entry["weak"] == pytest.approx(1 / 3)
    length = entry["routers"]["length"]
    assert {"apgr", "cpt50", "cpt80", "apgr_dense", "improvement_over_random", "seconds", "curve"} <= set(length)
    assert length["improvement_over_random"] == pytest.approx(length["apgr"] / entry["random"]["apgr"] - 1)
    assert entry["oracle"]["apgr_dense"] >= max(length["apgr"], length["apgr_dense"]) - 1e-12
    assert sorted(p.name for p in out.iterdir()) == ["mmlu.png", "mt-bench.png", "results.json"]
    assert (out / "mmlu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "results.json").read_text())["mt-bench"]["n"] == 3
    table = format_table(results)
    for cell in ("APGR", "CPT(50%)", "length", "random", "oracle", "mt-bench"):
        assert cell in table


def test_write_results_turns_nan_into_null(tmp_path: Path):
    path = write_results({"x": {"cpt80": float("nan"), "apgr": np.float64(0.5), "n": np.int64(3)}}, tmp_path / "r.json")
    assert json.loads(path.read_text()) == {"x": {"cpt80": None, "apgr": 0.5, "n": 3}}


# --- real data: RouteLLM's evaluation files in ../shared/data ------------------------------------------------


@pytest.fixture(scope="module")
def benches(real_data: Path) -> dict:
    return {name: load_benchmark(name, real_data) for name in PAPER_BENCHMARKS}


@pytest.mark.real_data
@pytest.mark.parametrize(
    ("name", "n", "strong", "weak"),
    [("mmlu", 14_037, 0.8059, 0.6809), ("gsm8k", 1_307, 0.8577, 0.6373), ("mt-bench", 72, 9.2118, 8.2812)],
)
def test_real_counts_and_means(benches, name, n, strong, weak):
    bench = benches[name]
    assert len(bench) == n == len(bench.strong) == len(bench.weak)
    assert bench.strong.mean() == pytest.approx(strong, abs=5e-5)
    assert bench.weak.mean() == pytest.approx(weak, abs=5e-5)


@pytest.mark.real_data
def test_real_mmlu_two_by_two(benches):
    mmlu = benches["mmlu"]
    counts = pd.crosstab(mmlu.strong, mmlu.weak).to_numpy()
    np.testing.assert_array_equal(counts, [[1983, 742], [2496, 8816]])


@pytest.mark.real_data
def test_real_mt_bench_exclusions(real_data: Path):
    assert mt_bench_contaminated_ids(real_data) == [81, 88, 91, 92, 101, 104, 120, 122]
    # The index derivation agrees with RouteLLM's text match on turn 1 or turn 2.
    evals = real_data / EVALS_DIR / "mt_bench"
    questions = pd.read_json(evals / "question.jsonl", lines=True)
    listed = set(pd.read_json(evals / "contaminated_prompts.jsonl", lines=True)["eval_prompt"])
    by_text = questions[[bool(listed & set(turns)) for turns in questions["turns"]]]["question_id"]
    assert sorted(by_text) == mt_bench_contaminated_ids(real_data)


@pytest.mark.real_data
def test_real_evaluation_prompts(real_data: Path, benches):
    prompts = evaluation_prompts(real_data)
    assert len(prompts) == 13_937 + 1_319 + 160  # MMLU has 105 repeated prompts
    assert all(set(b.prompts) <= prompts for b in benches.values())


@pytest.mark.real_data
@pytest.mark.parametrize(("name", "expected"), [("mmlu", 1.27), ("gsm8k", 1.12), ("mt-bench", 0.95)])
def test_real_oracle_apgr(benches, name, expected):
    bench = benches[name]
    assert apgr(*oracle_curve(bench.strong, bench.weak), bench.strong.mean(), bench.weak.mean()) == pytest.approx(
        expected, abs=0.02
    )


@pytest.mark.real_data
@pytest.mark.parametrize(("name", "expected"), [("mmlu", 0.58), ("gsm8k", 0.60), ("mt-bench", 0.56)])
def test_real_length_router_apgr(benches, name, expected):
    bench = benches[name]
    share, quality = qcut_curve(LengthRouter().score(bench.prompts), bench.strong, bench.weak)
    strong, weak = bench.strong.mean(), bench.weak.mean()
    assert apgr(share, quality, strong, weak) == pytest.approx(expected, abs=0.02)
    assert 0.0 < cpt(0.5, share, quality, strong, weak) < cpt(0.8, share, quality, strong, weak) < 1.0


@pytest.mark.real_data
def test_real_evaluate_random_reference(real_data: Path):
    results = evaluate({}, list(PAPER_BENCHMARKS), real_data, None)
    for entry in results.values():
        assert entry["random"]["apgr"] == pytest.approx(0.5, abs=0.03)


@pytest.mark.real_data
def test_dev_benchmarks_are_the_held_out_share_of_their_source(real_data: Path):
    from models import data as training

    for name in DEV_BENCHMARKS:
        bench = load_benchmark(name, real_data)
        source = name.removesuffix("-dev")
        battles = training.correctness_scores(training.CORRECTNESS_MATRICES[source](real_data))
        share = len(bench) / battles["prompt"].nunique()
        assert 0.15 < share < 0.25, (name, share)  # the 20 % dev split, less prompts a model of the pair skipped
        rows = battles[battles["prompt"].isin(set(bench.prompts))]
        assert rows["prompt"].nunique() == len(bench) and training.is_dev(rows["key"].tolist()).all()  # never trained on
        assert bench.strong.mean() > bench.weak.mean()
        assert len(set(bench.prompts)) == len(bench)
    assert load_benchmark("mmlu-pro-dev", real_data).strong_model == "gpt-4o-2024-05-13"
