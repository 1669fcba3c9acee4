"""Classifier labels from battles: per-prompt outcome distributions for the routed strong/weak pair.

The classifier routers (bert, causal_llm) never see model names: they learn, from the prompt alone, how the
strong model's tier fares against the weak model's tier (RouteLLM, arXiv 2406.18665, §4.1, groups models into
tiers for this). Most prompts here were never answered by both tiers, so each prompt's label is inferred from
all of its battles between models of different tiers, the way the SW router infers it for a query from its
neighbours:

    1. per-prompt tier win counts C_p (ties half a win each way; battles inside one tier dropped);
    2. a Bradley–Terry fit over tiers on C_p + a prior of `prior_battles` pseudo-battles shaped like the global
       win matrix (so a prompt with few or one-sided battles stays near the global strength gap);
    3. q_p = σ(ξ_strong − ξ_weak): the probability that the strong tier beats the weak tier on this prompt.

The target over (strong wins, tie, weak wins) is ((1 − ν)·q_p, ν, (1 − ν)·(1 − q_p)), where ν is the tie share of
all labelled battles: one global number, because per-prompt tie shares mostly tell the sources apart (correctness
data ties whenever both models are right; AlpacaEval almost never ties), and a probe trained on them ranked
MT-Bench below random. Both routers report p_strong = P(strong) + P(tie)/2 = ν/2 + (1 − ν)·q_p, which ranks
prompts by q_p.

An earlier version read every battle from its stronger-tier side and averaged over all tier pairs. That label
is pair-agnostic and dominated by whichever pairs a source holds (AlpacaEval-1 is every model against
text-davinci-003); with it both classifiers ranked MT-Bench below random. Comparisons (linear probes,
`python -m loadtest.label_probe`, and the fine-tuned routers) are in BENCHMARKS.md.
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

from models import bradley_terry
from index.errors import ArtifactError, ConfigError

log = logging.getLogger(__name__)

OUTCOMES = ("strong", "tie", "weak")


def prompt_outcomes(battles: pd.DataFrame, tiers: dict[str, int], strong: str, weak: str,
                    prior_battles: float = 20.0) -> pd.DataFrame:
    """One row per prompt: prompt, strong, tie, weak (summing to 1), n (labelled battles); the module docstring."""
    check_pair(tiers, strong, weak)
    n_tiers = max(tiers.values()) + 1
    prompts, counts = bradley_terry.prompt_tier_counts(battles, tiers, n_tiers)
    if not len(prompts):
        raise ConfigError("no battle between models of different tiers: nothing to label")
    total = counts.sum(axis=0)
    prior = total * (prior_battles / total.sum())
    xi = bradley_terry.fit(counts + prior[None], l2=1e-2, n_steps=12)
    q = 1.0 / (1.0 + np.exp(-(xi[:, tiers[strong]] - xi[:, tiers[weak]])))
    n = counts.sum(axis=(1, 2))
    labelled, _, _ = bradley_terry.tier_battles(battles, tiers)
    tie = float(np.mean(battles["winner"].to_numpy()[labelled] == "tie"))
    return pd.DataFrame({"prompt": prompts, "strong": (1.0 - tie) * q, "tie": np.full(len(q), tie),
                         "weak": (1.0 - tie) * (1.0 - q), "n": np.round(n).astype(int)})


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
    tiers, trained = meta.get("tiers") or {}, meta.get("pair")
    if not tiers or not trained:
        raise ArtifactError(f"{name} checkpoint at {folder} has no strong/weak pair in meta.json (trained before "
                            f"labels were pair-specific); run `turnout train {name}`")
    check_pair(tiers, strong, weak)
    if [tiers[strong], tiers[weak]] != trained["tiers"]:
        raise ConfigError(f"{name} was trained for tiers {trained['tiers']} ({trained['strong']} vs {trained['weak']}); "
                          f"{strong} vs {weak} are tiers {[tiers[strong], tiers[weak]]}: run `turnout train {name} "
                          f"--strong {strong} --weak {weak}`")
    return meta


def check_pair(tiers: dict[str, int], strong: str, weak: str) -> None:
    """Labels need `strong` in a stronger tier than `weak` (tier 0 is the strongest)."""
    for role, model in (("strong", strong), ("weak", weak)):
        if model not in tiers:
            raise ConfigError(f"{role} model {model!r} has no tier in the classifier's training data ({len(tiers)} models)")
    if tiers[strong] >= tiers[weak]:
        raise ConfigError(f"strong model {strong!r} (tier {tiers[strong]}) is not in a stronger tier than weak model "
                          f"{weak!r} (tier {tiers[weak]})")


def write_checkpoint(folder: Path, model: Any, tokenizer: Any, meta: dict) -> Path:
    """Save a fine-tuned Hugging Face classifier router atomically: weights, tokenizer, then meta.json."""
    from index.paths import atomic_dir

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
            # kept in host memory: on a GPU a second copy of the weights would take memory that training needs
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
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
                "tiers": dict(td.tiers), "data_hash": td.report.get("data_hash", ""),
                "pair": {"strong": config.strong, "weak": config.weak,
                         "tiers": [td.tiers[config.strong], td.tiers[config.weak]]}, **extra}
