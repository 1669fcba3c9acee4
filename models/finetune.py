"""One fine-tuning path for the classifier routers (bert, causal_llm), on transformers' `Trainer`.

Both routers learn a soft label distribution per prompt (models/labels.py) with a cross-entropy against it; they
differ only in how a batch becomes label logits (bert: its sequence-classification head; causal_llm: the label
tokens' lm_head rows at the last position) and in which weights move. So a router hands `fit` its model, its
tokenised prompts with their soft targets, and a `logits(model, batch)` function; `fit` does the rest the same way
for both: a prompt-level train/validation split made by the caller, AdamW with linear warm-up and decay, gradient
clipping, length-grouped batches, evaluation every `eval_steps`, early stopping on the validation loss with the
best weights restored, an optional wall-clock budget, bf16 autocast where asked, progress bars, and one report
of the step time and the loss curves (train and validation) that goes into the checkpoint's meta.json.

LoRA (`lora=True`, through peft): low-rank adapters on the linear layers the router names, the way a Llama-3-8B is
fine-tuned on one GPU; weights the router marks trainable itself (causal_llm's five label rows) keep training in
full beside them. `fit` merges the adapters into the base before it returns, so what is saved and served is a plain
checkpoint: vLLM's classify runner loads it like any other, with no adapter to configure
(tests/models/test_causal_llm.py checks its scores against a transformers forward pass).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from index.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class FitSettings:
    """How one run trains; each router maps its own config onto these."""

    epochs: float = 1.0
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_fraction: float = 0.05
    max_steps: int | None = None
    evals: int = 3  # validation passes over the run (and at its end); early stopping keeps the best
    patience: int = 1
    max_minutes: float | None = None  # wall-clock cap on the optimiser loop; the run then evaluates and stops
    bf16: bool = False
    device: str = "cpu"  # as picked by index.device.pick_device
    seed: int = 0
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: str | list[str] = "all-linear"  # module names (peft's target_modules)
    lora_layers: list[int] | None = None  # the blocks whose target modules get adapters (peft's layers_to_transform)
    progress: bool = True


@dataclass
class FitReport:
    steps: int
    train_seconds: float
    step_seconds: float
    history: list[dict] = field(default_factory=list)  # {"step", "validation_loss"} and {"step", "train_loss"}
    best_validation_loss: float | None = None
    trainable_parameters: int = 0
    lora: dict | None = None

    def meta(self) -> dict:
        """What goes into the checkpoint's meta.json, the same keys for every router."""
        return {"steps": self.steps, "train_seconds": round(self.train_seconds, 1),
                "step_seconds": round(self.step_seconds, 3),
                "validation": [h for h in self.history if "validation_loss" in h],
                "train_loss": [h for h in self.history if "train_loss" in h],
                "best_validation_loss": self.best_validation_loss,
                "trainable_parameters": self.trainable_parameters, "lora": self.lora}


class SoftTargetSet:
    """Token ids and soft targets, indexable as the Trainer expects (a dict per example)."""

    def __init__(self, token_ids: list[list[int]], targets: np.ndarray) -> None:
        if len(token_ids) != len(targets):
            raise ConfigError(f"{len(token_ids)} tokenised prompts but {len(targets)} targets")
        self.token_ids, self.targets = token_ids, np.asarray(targets, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.token_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.token_ids[i], "targets": self.targets[i]}


def pad(sequences: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    """Right-padded input_ids and their attention_mask, as (B, longest) tensors."""
    import torch

    width = max(len(x) for x in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, x in enumerate(sequences):
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
    return ids, mask


def collate(pad_id: int) -> Callable[[list[dict]], dict[str, Any]]:
    """A batch of examples: right-padded input_ids and attention_mask, stacked targets."""
    import torch

    def batch(examples: list[dict]) -> dict[str, Any]:
        ids, mask = pad([e["input_ids"] for e in examples], pad_id)
        return {"input_ids": ids, "attention_mask": mask,
                "targets": torch.tensor(np.stack([e["targets"] for e in examples]))}

    return batch


def add_lora(model: Any, settings: FitSettings, task_type: str) -> Any:
    """The model wrapped by peft with LoRA adapters; parameters the caller marked trainable stay trainable."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise ConfigError("LoRA needs peft (pip install -e '.[cpu]')") from exc
    keep = [p for p in model.parameters() if p.requires_grad]
    config = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                        target_modules=settings.lora_targets, task_type=task_type,
                        layers_to_transform=settings.lora_layers)
    wrapped = get_peft_model(model, config)
    for p in keep:  # peft freezes everything but the adapters; the router's own trainable rows and heads go on
        p.requires_grad_(True)
    return wrapped


def _trainer_class() -> type:
    from transformers import Trainer

    class SoftTargetTrainer(Trainer):
        """Trainer whose loss is the cross-entropy against soft targets, on the router's own logits."""

        def __init__(self, *args: Any, logits: Callable[[Any, dict], Any], **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.logits = logits

        def compute_loss(self, model: Any, inputs: dict, return_outputs: bool = False, num_items_in_batch: Any = None):
            import torch

            targets = inputs["targets"]
            logits = self.logits(model, inputs).float()
            loss = -(targets * torch.log_softmax(logits, dim=-1)).sum(dim=-1).mean()
            return (loss, {"logits": logits}) if return_outputs else loss

    return SoftTargetTrainer


def _run_callback(name: str, settings: FitSettings) -> Any:
    from transformers import TrainerCallback

    class Run(TrainerCallback):
        """Early stopping on the validation loss with the best trainable weights kept in host memory (adapters and
        label rows with LoRA, where the Trainer's own best-checkpoint reload would miss the rows), and the
        wall-clock budget: once spent, the step is evaluated and the run stops."""

        def __init__(self) -> None:
            self.started = time.perf_counter()
            self.best, self.best_state, self.bad = float("inf"), None, 0
            self.budget_hit = False
            self.last_eval_step = -1

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            minutes = settings.max_minutes
            if minutes and not self.budget_hit and time.perf_counter() - self.started > 60 * minutes:
                log.warning("%s: time budget of %.0f min reached at step %d of %d", name, minutes, state.global_step,
                            state.max_steps)
                self.budget_hit = True
                control.should_training_stop = True
                control.should_evaluate = args.eval_strategy != "no"
            return control

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None, model: Any = None,
                        **kwargs: Any) -> Any:
            loss = float((metrics or {}).get("eval_loss", float("nan")))
            self.last_eval_step = state.global_step
            if state.global_step == 0:
                return control  # the untrained baseline: recorded, never a candidate
            if not loss >= self.best:  # NaN counts as better: keep the last weights
                self.best, self.bad = loss, 0
                self.best_state = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()
                                   if p.requires_grad}
            else:
                self.bad += 1
                if self.bad > settings.patience:
                    log.info("%s: early stop at step %d (best validation loss %.4f)", name, state.global_step, self.best)
                    control.should_training_stop = True
            return control

        def restore(self, model: Any) -> None:
            if self.best_state is not None:
                import torch

                params = dict(model.named_parameters())
                with torch.no_grad():
                    for n, value in self.best_state.items():
                        params[n].copy_(value)

    return Run()


def fit(model: Any, name: str, train_set: SoftTargetSet, val_set: SoftTargetSet | None, pad_id: int,
        logits: Callable[[Any, dict], Any], settings: FitSettings, lora_task: str | None = None) -> tuple[Any, FitReport]:
    """Train `model` on the soft targets; returns the model with the best validation weights (LoRA merged), and
    the report. `logits(model, batch)` gives (B, K) label logits for a collated batch; only parameters with
    requires_grad move (the router freezes what it does not train before calling)."""
    from transformers import PrinterCallback, TrainingArguments

    if settings.lora:
        if lora_task is None:
            raise ConfigError(f"{name} has no LoRA task type")
        model = add_lora(model, settings, lora_task)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    steps_per_epoch = math.ceil(len(train_set) / settings.batch_size)
    total = max(1, math.ceil(settings.epochs * steps_per_epoch))
    if settings.max_steps is not None:
        total = min(total, settings.max_steps)
    has_val = val_set is not None and len(val_set) > 0
    eval_steps = max(1, total // max(1, settings.evals))
    with tempfile.TemporaryDirectory(prefix=f"turnout-{name}-") as work:
        args = TrainingArguments(
            output_dir=work, max_steps=total, per_device_train_batch_size=settings.batch_size,
            per_device_eval_batch_size=max(16, settings.batch_size), learning_rate=settings.lr,
            weight_decay=settings.weight_decay, warmup_steps=max(1, int(settings.warmup_fraction * total)),
            lr_scheduler_type="linear", max_grad_norm=1.0, seed=settings.seed, data_seed=settings.seed,
            bf16=settings.bf16, use_cpu=settings.device == "cpu", train_sampling_strategy="group_by_length",
            eval_strategy="steps" if has_val else "no", eval_steps=eval_steps, save_strategy="no",
            logging_steps=max(1, min(50, eval_steps // 2)), report_to="none",
            disable_tqdm=not settings.progress, remove_unused_columns=False, label_names=["targets"],
            dataloader_num_workers=0, prediction_loss_only=True)
        run = _run_callback(name, settings)
        trainer = _trainer_class()(model=model, args=args, train_dataset=train_set, eval_dataset=val_set if has_val else None,
                                   data_collator=collate(pad_id), logits=logits, callbacks=[run])
        if not settings.progress:
            trainer.remove_callback(PrinterCallback)  # quiet means quiet: no per-log dicts on stdout either
        started = time.perf_counter()
        baseline = trainer.evaluate()["eval_loss"] if has_val else None  # the untrained loss, for the record
        loop_started = time.perf_counter()
        output = trainer.train()
        loop_seconds = time.perf_counter() - loop_started
        if has_val and run.last_eval_step != trainer.state.global_step:  # the last step is always evaluated
            trainer.evaluate()
        history = [{"step": 0, "validation_loss": round(float(baseline), 5)}] if baseline is not None else []
        for entry in trainer.state.log_history:
            if "eval_loss" in entry and entry.get("step", 0) > 0:
                history.append({"step": entry["step"], "validation_loss": round(float(entry["eval_loss"]), 5)})
            elif "loss" in entry:
                history.append({"step": entry["step"], "train_loss": round(float(entry["loss"]), 5)})
        run.restore(trainer.model)
        best = run.best if has_val else None
        model = trainer.model
    if settings.lora:
        model = model.merge_and_unload()
    model.eval()
    steps = int(output.global_step)
    report = FitReport(steps=steps, train_seconds=time.perf_counter() - started,
                       step_seconds=loop_seconds / max(1, steps), history=history,
                       best_validation_loss=None if best is None else round(float(best), 5),
                       trainable_parameters=int(trainable),
                       lora={"r": settings.lora_r, "alpha": settings.lora_alpha, "dropout": settings.lora_dropout,
                             "targets": settings.lora_targets, "merged": True} if settings.lora else None)
    log.info("%s: %d steps, %.2f s per step, best validation loss %s", name, steps, report.step_seconds, report.best_validation_loss)
    return model, report
