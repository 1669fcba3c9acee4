"""Classifier labels from battles: per-prompt outcome distributions, tier-based (RouteLLM, arXiv 2406.18665, §4.1).

The classifier routers (bert, causal_llm) never see model names: they learn, from the prompt alone, how a
stronger model fares against a weaker one. For a battle between models in tiers t_a ≠ t_b (tier 0 is the
strongest, `TrainingData.tiers`), the outcome is read from the stronger-tier side:

    stronger side wins -> "strong"      tie -> "tie"      weaker side wins -> "weak"

Battles inside one tier carry no label and are dropped, as are battles of models without a tier. Many battles
share a prompt (up to ~60 model pairs per prompt here), so the training rows are prompts, and the target is the
prompt's outcome distribution (w, t, l) = shares of strong / tie / weak over its labelled battles (a soft target):
8.6k rows instead of 280k, and the same expected gradient as one row per battle.

Both routers report p_strong = w + t/2 (ties count half, the Bradley–Terry convention the MF and SW routers
use). Since w + t + l = 1, that is (1 + w − l)/2: it ranks prompts by the expected quality gain of the strong
model over the weak one, which is what routing needs; w alone would rank a prompt where the weak model often
wins the same as one where it never does.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.errors import ArtifactError, ConfigError

log = logging.getLogger(__name__)

OUTCOMES = ("strong", "tie", "weak")


def prompt_outcomes(battles: pd.DataFrame, tiers: dict[str, int]) -> pd.DataFrame:
    """One row per prompt: columns prompt, strong, tie, weak (shares summing to 1), n (labelled battles)."""
    ta = battles["model_a"].map(tiers)
    tb = battles["model_b"].map(tiers)
    keep = ta.notna() & tb.notna() & (ta != tb)
    if not keep.any():
        raise ConfigError("no battle between models of different tiers: nothing to label")
    b = battles[keep]
    a_stronger = (ta[keep] < tb[keep]).to_numpy()
    winner = b["winner"].to_numpy()
    strong_won = np.where(a_stronger, winner == "model_a", winner == "model_b")
    weak_won = np.where(a_stronger, winner == "model_b", winner == "model_a")
    frame = pd.DataFrame({"prompt": b["prompt"].to_numpy(), "strong": strong_won.astype(np.float64),
                          "tie": (winner == "tie").astype(np.float64), "weak": weak_won.astype(np.float64)})
    grouped = frame.groupby("prompt", sort=True)
    out = grouped[list(OUTCOMES)].mean()
    out["n"] = grouped.size()
    return out.reset_index()


def split_prompts(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation row indices over `n` prompts (the split is by prompt, never by battle)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction)) if n > 1 else 0
    if val_fraction > 0 and n > 1:
        n_val = max(1, n_val)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def p_strong_from_outcomes(probs: np.ndarray) -> np.ndarray:
    """(N, 3) probabilities over OUTCOMES -> p_strong = P(strong) + P(tie)/2."""
    probs = np.asarray(probs, dtype=np.float64)
    return probs[:, 0] + 0.5 * probs[:, 1]


def read_meta(folder: Path, name: str, strong: str, weak: str) -> dict:
    """meta.json of a classifier checkpoint, checked against the strong/weak pair it is asked to route."""
    try:
        meta = json.loads((Path(folder) / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{name} artifact at {folder} is missing or corrupted ({type(exc).__name__}); "
                            f"run `turnout train {name}`") from exc
    check_pair(meta.get("tiers", {}), strong, weak)
    return meta


def check_pair(tiers: dict[str, int], strong: str, weak: str) -> None:
    """The classifier is pair-agnostic but only meaningful when `strong` sits in a stronger tier than `weak`."""
    if not tiers:
        return
    for role, model in (("strong", strong), ("weak", weak)):
        if model not in tiers:
            raise ConfigError(f"{role} model {model!r} has no tier in the classifier's training data ({len(tiers)} models)")
    if tiers[strong] >= tiers[weak]:
        raise ConfigError(f"strong model {strong!r} (tier {tiers[strong]}) is not in a stronger tier than weak model "
                          f"{weak!r} (tier {tiers[weak]})")


def write_checkpoint(folder: Path, model: Any, tokenizer: Any, meta: dict) -> Path:
    """Save a fine-tuned Hugging Face classifier router atomically: weights, tokenizer, then meta.json."""
    from models.paths import atomic_dir

    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    return folder


# ------------------------------------------------------------------------------ shared by the training loops


def warmup_linear(optimizer: Any, total_steps: int, warmup_fraction: float) -> Any:
    """Linear warm-up over `warmup_fraction` of the steps, then linear decay to zero at `total_steps`."""
    import torch

    warmup = max(1, int(warmup_fraction * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total_steps - s) / max(1, total_steps - warmup))))


def optimizer_step(loss: Any, params: Any, optimizer: Any, scheduler: Any, bar: Any) -> None:
    """One update: backward, gradient norm clipped to 1, step, schedule, reset; the loss goes on the bar."""
    import torch

    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    bar.update()
    bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)


class EarlyStopping:
    """Validation history, the best weights so far and the patience count of one training run."""

    def __init__(self, model: Any, patience: int, name: str) -> None:
        self.model, self.patience, self.name = model, patience, name
        self.history: list[dict] = []
        self.best = float("inf")
        self.best_state: dict | None = None
        self.bad_evals = 0
        self.started = time.perf_counter()

    def record(self, step: int, validation_loss: float) -> bool:
        """Note one validation; keep the weights when they are the best. True once patience is used up."""
        self.history.append({"step": step, "validation_loss": round(validation_loss, 5)})
        log.info("%s step %d: validation loss %.4f", self.name, step, validation_loss)
        if not validation_loss >= self.best:  # NaN (no validation split) counts as better: keep the last weights
            self.best, self.bad_evals = validation_loss, 0
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            return False
        self.bad_evals += 1
        if self.bad_evals > self.patience:
            log.info("%s: early stop at step %d (best validation loss %.4f)", self.name, step, self.best)
            return True
        return False

    def restore_best(self) -> None:
        """Load the best weights seen (if any validation ran) and switch to eval mode."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.model.eval()

    def meta(self, base: str, config: Any, steps: int, max_length: int, n_train: int, n_val: int,
             td: Any, **extra: Any) -> dict:
        """meta.json of the checkpoint: what was trained, on what, and how the validation loss went."""
        return {"router": self.name, "base": base, "max_length": max_length, "config": asdict(config),
                "steps": steps, "train_seconds": round(time.perf_counter() - self.started, 1),
                "validation": self.history, "prompts": {"train": int(n_train), "validation": int(n_val)},
                "tiers": dict(td.tiers), "data_hash": td.report.get("data_hash", ""), **extra}
