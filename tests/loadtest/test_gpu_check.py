"""loadtest.gpu_check in its tiny CPU mode: the same code as the GPU run, checked for the JSON it writes."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest import gpu_check

pytest.importorskip("torch")
pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ("search", "minilm", "train_lora", "causal_llm")


def _check_batches(section: dict, batches=(1, 32)) -> None:
    assert sorted(section["batches"]) == sorted(str(b) for b in batches)
    for batch, stats in section["batches"].items():
        for key in ("p50_ms", "p90_ms", "mean_ms", "min_ms", "per_item_p50_ms"):
            value = stats[key]
            assert isinstance(value, float) and value > 0, (batch, key, value)
        assert stats["p90_ms"] >= stats["p50_ms"] >= stats["min_ms"]
        assert stats["per_item_p50_ms"] == pytest.approx(stats["p50_ms"] / int(batch), rel=1e-3, abs=1e-6)
        assert isinstance(stats["runs"], int) and stats["runs"] >= 3


def test_tiny_run_writes_every_section(tmp_path):
    out = tmp_path / "gpu.json"
    code = gpu_check.main(["--tiny", "--out", str(out), "--backend", "transformers", "--minilm", "random",
                           "--search", "torch"])
    report = json.loads(out.read_text())
    assert code == 0 and report["errors"] == {} and report["skipped"] == []
    assert report["tiny"] is True and report["plan"]["device"] == "cpu" and report["plan"]["batches"] == [1, 32]
    env = report["environment"]
    assert env["device"] == "cpu" and env["torch"] and env["date"].startswith("20") and "torch" in env["packages"]
    assert "cuda" in env  # null on a CPU build; the CUDA version on a GPU machine

    for name in ("search", "minilm", "causal_llm"):
        _check_batches(report[name])
        assert report[name]["section_s"] >= 0
    causal = report["causal_llm"]
    assert causal["backend"] == "transformers" and causal["requested_backend"] == "transformers"
    assert causal["shapes"] == gpu_check.TINY_LLAMA and causal["prompt_tokens"] == report["plan"]["prompt_tokens"]
    assert causal["parameters"] > 0 and causal["dtype"] == "float32"
    assert report["minilm"]["backend"] == "random-init" and report["minilm"]["shapes"] == gpu_check.TINY_MINILM
    train = report["train_lora"]
    assert train["steps"] == report["plan"]["train_steps"] == 3 and train["batch"] == 4
    assert train["step_s"] > 0 and train["tokens_per_s"] > 0 and train["trainable_parameters"] > 0
    assert train["lora"]["merged"] and train["peak_gpu_memory_gib"] is None  # no GPU here
    assert [h["step"] for h in train["loss"] if "validation_loss" in h] == [0, 3]
    search = report["search"]
    assert search["backend"] == "torch-matmul-topk" and search["self_match"] is True
    assert (search["vectors"], search["dim"], search["k"]) == (report["plan"]["vectors"], 384, 10)
    assert report["elapsed_s"] > 0


def test_full_plan_is_the_8b_shapes():
    plan = gpu_check.Plan(tiny=False, device="cuda")
    assert (plan.llama["hidden_size"], plan.llama["num_hidden_layers"], plan.llama["num_attention_heads"],
            plan.llama["num_key_value_heads"], plan.llama["intermediate_size"], plan.llama["vocab_size"]) == (
        4096, 32, 32, 8, 14336, 128256)
    assert plan.prompt_tokens == 280 and plan.batches == (1, 32) and (plan.vectors, plan.dim, plan.k) == (100_000, 384, 10)
    assert (plan.minilm["hidden_size"], plan.minilm["num_hidden_layers"]) == (384, 6)


def test_a_failing_section_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory\nsecond line")

    monkeypatch.setattr(gpu_check, "causal_section", broken)
    monkeypatch.setattr(gpu_check, "minilm_section", lambda plan, mode: {"backend": "stub", "batches": {}})
    out = tmp_path / "gpu.json"
    search = "faiss" if importlib.util.find_spec("faiss") is not None else "torch"
    code = gpu_check.main(["--tiny", "--out", str(out), "--search", search])
    report = json.loads(out.read_text())
    assert code == 1 and report["errors"] == {"causal_llm": "RuntimeError: CUDA out of memory"}
    assert "causal_llm" not in report and report["minilm"]["backend"] == "stub"
    _check_batches(report["search"])
    assert report["search"]["self_match"] is True
    if search == "faiss":  # the serving store's own search: on the CPU copy without a GPU
        assert report["search"]["backend"] in ("faiss-cpu", "faiss-gpu") and report["search"]["faiss"]


def test_budget_skips_the_sections_not_started(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "search_section", lambda plan, mode: {"batches": {}})
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--tiny", "--out", str(out), "--budget-s", "0"]) == 0
    report = json.loads(out.read_text())
    assert report["skipped"] == list(SECTIONS) and not any(name in report for name in SECTIONS)


def test_without_a_gpu_the_full_run_refuses_at_once(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--out", str(out)]) == 2
    assert not out.exists()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_tiny_run_through_vllm(tmp_path):
    """The vLLM path (serving engine args, dummy weights, word-level tokenizer with the label tokens) on the CPU
    build, in its own process: an in-process vLLM engine pins this process's torch threads."""
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, "-m", "loadtest.gpu_check", "--tiny", "--backend", "vllm", "--minilm", "random",
                           "--search", "torch", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    causal = json.loads(out.read_text())["causal_llm"]
    assert causal["backend"] == "vllm" and causal["device"] == "cpu" and causal["labels"] == 5
    assert causal["engine_args"]["enforce_eager"] is True and causal["engine_args"]["load_format"] == "dummy"
    assert "gpu_memory_utilization" not in causal["engine_args"]
    _check_batches(causal)
