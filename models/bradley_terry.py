"""Weighted Bradley–Terry fits, batched.

P(i beats j) = σ(ξ_i − ξ_j). Given weighted win counts W[i, j] (a tie adds half a win to each side, as
RouteLLM's SW ranking does), we maximise Σ_ij W_ij log σ(ξ_i − ξ_j) − (l2/2)·|ξ|². The small L2 term pins the
free offset of ξ and keeps ratings finite when one side never loses, which happens often in a local fit.

The objective is concave with a closed-form gradient and Hessian, so a handful of Newton steps solve it to
machine precision; a batch of B problems over T players is B small (T×T) solves, vectorised with numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

ELO_SCALE = 400.0 / np.log(10.0)  # RouteLLM reports R = 400·ξ/ln10 + 1000; the probabilities are the same


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


def fit(wins: np.ndarray, l2: float = 1e-2, n_steps: int = 8, tol: float = 1e-9) -> np.ndarray:
    """Ratings ξ (B, T) maximising the L2-penalised BT likelihood for each of B win-count matrices (B, T, T).

    `wins[b, i, j]` is the weight of battles that i won against j in problem b. A 2-D input is one problem.
    """
    wins = np.asarray(wins, dtype=np.float64)
    single = wins.ndim == 2
    if single:
        wins = wins[None]
    n_batch, n_players, _ = wins.shape
    eye = np.eye(n_players)
    wins = wins * (1 - eye)  # a player never battles itself
    games = wins + wins.transpose(0, 2, 1)
    won = wins.sum(axis=2)
    xi = np.zeros((n_batch, n_players))
    for _ in range(n_steps):
        p = _sigmoid(xi[:, :, None] - xi[:, None, :])
        grad = won - (games * p).sum(axis=2) - l2 * xi
        curv = games * p * (1.0 - p)
        # Negative Hessian: Laplacian of the curvature graph plus the ridge; positive definite for l2 > 0.
        neg_hess = eye * (curv.sum(axis=2) + l2)[:, :, None] - curv
        step = np.linalg.solve(neg_hess, grad[..., None])[..., 0]
        xi = xi + step
        if np.abs(step).max() < tol:
            break
    return xi[0] if single else xi


def win_matrix(a: np.ndarray, b: np.ndarray, outcome: np.ndarray, n_players: int, weight: np.ndarray | None = None) -> np.ndarray:
    """Aggregate battles into a (T, T) win-count matrix.

    `a`, `b`: player indices; `outcome`: 1.0 if a won, 0.0 if b won, 0.5 for a tie (half a win to each side).
    """
    weight = np.ones(len(a)) if weight is None else np.asarray(weight, dtype=np.float64)
    wins = np.zeros((n_players, n_players))
    np.add.at(wins, (a, b), weight * outcome)
    np.add.at(wins, (b, a), weight * (1.0 - outcome))
    return wins


WINNER = {"model_a": 1.0, "model_b": 0.0, "tie": 0.5}  # battle outcome from model_a's side; a tie is half a win


def tier_battles(battles: "pd.DataFrame", tiers: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mask, tier_a, tier_b) of the battles between models of different tiers, the only ones that say anything
    about tier ratings; models without a tier are skipped. tier_a/tier_b are ints for the masked rows."""
    tier_a = battles["model_a"].map(tiers)
    tier_b = battles["model_b"].map(tiers)
    keep = (tier_a.notna() & tier_b.notna() & (tier_a != tier_b)).to_numpy()
    return keep, tier_a.to_numpy()[keep].astype(int), tier_b.to_numpy()[keep].astype(int)


TIE_RULES = ("half", "weak", "drop")


def prompt_tier_counts(battles: "pd.DataFrame", tiers: dict[str, int], n_tiers: int,
                       ties: str = "half") -> tuple[np.ndarray, np.ndarray]:
    """Unique prompts (sorted) and their tier win counts (P, T, T): counts[p, i, j] = wins of tier i over tier j,
    over `tier_battles`. Each battle adds 1 to its prompt's matrix, a tie by `ties`: "half" a win to each side
    (the served rule), "weak" a win for the lower tier (the strong model is only needed where it is better),
    "drop" nothing. The three were compared on the dev benchmarks (loadtest.dev_choices --ties)."""
    if ties not in TIE_RULES:
        raise ValueError(f"ties must be one of {TIE_RULES}, got {ties!r}")
    keep, a, b = tier_battles(battles, tiers)
    prompts, prompt_ids = np.unique(battles["prompt"].to_numpy(dtype=object)[keep], return_inverse=True)
    winner = battles["winner"].to_numpy(dtype=object)[keep]
    outcome = battles["winner"].map(WINNER).to_numpy(dtype=np.float64)[keep]
    weight = np.ones(len(outcome))
    if ties == "weak":  # a higher tier index is a weaker tier
        outcome = np.where(winner == "tie", (a > b).astype(np.float64), outcome)
    elif ties == "drop":
        weight = (winner != "tie").astype(np.float64)
    counts = np.zeros((len(prompts), n_tiers, n_tiers), dtype=np.float64)
    np.add.at(counts, (prompt_ids, a, b), weight * outcome)
    np.add.at(counts, (prompt_ids, b, a), weight * (1.0 - outcome))
    return prompts, counts


def equal_prompt_weight(counts: np.ndarray) -> np.ndarray:
    """Per-prompt tier counts (P, T, T) scaled so every prompt with a counted battle carries the same total, the
    mean over those prompts; the grand total is unchanged and a prompt without one stays zero."""
    totals = counts.sum(axis=(1, 2), keepdims=True)
    mean = counts.sum() / max(int((totals > 0).sum()), 1)
    return counts * np.divide(mean, totals, out=np.zeros_like(totals, dtype=np.float64), where=totals > 0)
