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
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.errors import ConfigError

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


def write_checkpoint(folder: Path, model: Any, tokenizer: Any, meta: dict) -> Path:
    """Save a fine-tuned Hugging Face classifier router atomically: weights, tokenizer, then meta.json."""
    from models.paths import atomic_dir

    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    return folder
