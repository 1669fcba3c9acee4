"""Item difficulty from correctness data: a one-parameter item-response (Rasch) model over every model's scores.

Battles lose what makes a prompt hard. A correctness source turns "both models right" and "both models wrong"
into the same tie, so a Bradley–Terry fit over battles (the SW router, the classifiers' labels) learns how far
apart two models are near a prompt, never whether the prompt is easy or hard. The per-model scores behind those
battles (`TrainingData.scores`: 1 right, 0 wrong, fractions for sampled or judged scores) keep it. `fit` reads
them with the Rasch model

    P(model m answers prompt p correctly) = σ(θ_m − b_p)

where θ_m is the model's ability and b_p the prompt's difficulty, on the logit scale of a Bradley–Terry gap
(under this model a right-vs-wrong battle between m and n is won by m with odds exp(θ_m − θ_n)). Both are fitted
jointly by penalised maximum likelihood; models shared across sources tie the sources' difficulties together.

For a routed pair, with the two answers' correctness independent given the prompt, the paper's p_strong
(P(strong wins) + P(tie)/2) is

    p_strong = 1/2 + (σ(θ_strong − b) − σ(θ_weak − b)) / 2                                (`pair_p_strong`)

which is highest where the weak model starts to fail and the strong one does not, and 1/2 where both are right
(an easy prompt) or both wrong. The SW router (models/sw_ranking.py) uses it with its own local estimate of the
pair's gap θ_strong − θ_weak and the mean difficulty of the query's nearest training prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from index.errors import ConfigError

# Ridge penalties on the log-likelihood: they keep a prompt that every model got right (or wrong) at a finite
# difficulty and pin the scale's origin; an ability rests on thousands of answers and barely feels its penalty.
L2_DIFFICULTY = 0.1
L2_ABILITY = 0.01


@dataclass(frozen=True)
class Rasch:
    difficulty: pd.Series  # prompt -> b
    ability: pd.Series  # model -> θ


def fit(scores: pd.DataFrame, l2_difficulty: float = L2_DIFFICULTY, l2_ability: float = L2_ABILITY,
        max_iter: int = 500) -> Rasch:
    """The Rasch model fitted to long scores (columns prompt, model, score in [0, 1]); module docstring."""
    scores = scores.dropna(subset=["score"]) if len(scores) else scores
    if scores.empty:  # preference data only: nothing to fit, no prompt has a difficulty
        return Rasch(pd.Series(dtype=np.float64, name="difficulty"), pd.Series(dtype=np.float64, name="ability"))
    y = scores["score"].to_numpy(dtype=np.float64)
    if (y < 0).any() or (y > 1).any():
        raise ConfigError(f"correctness scores must lie in [0, 1], got {y.min():g}..{y.max():g}")
    prompt_ids, prompts = pd.factorize(scores["prompt"])
    model_ids, models = pd.factorize(scores["model"])
    n_models, n_prompts = len(models), len(prompts)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        theta, b = w[:n_models], w[n_models:]
        z = theta[model_ids] - b[prompt_ids]
        residual = 1.0 / (1.0 + np.exp(-z)) - y  # d(logistic loss)/dz
        value = np.sum(np.logaddexp(0.0, z) - y * z) + l2_ability * theta @ theta + l2_difficulty * b @ b
        grad_theta = np.bincount(model_ids, residual, n_models) + 2 * l2_ability * theta
        grad_b = -np.bincount(prompt_ids, residual, n_prompts) + 2 * l2_difficulty * b
        return float(value), np.concatenate([grad_theta, grad_b])

    result = minimize(loss, np.zeros(n_models + n_prompts), jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
    return Rasch(pd.Series(result.x[n_models:], index=prompts, name="difficulty"),
                 pd.Series(result.x[:n_models], index=models, name="ability"))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def pair_p_strong(ability_weak: float, gap: np.ndarray, difficulty: np.ndarray) -> np.ndarray:
    """P(strong wins) + P(tie)/2 for a weak model of `ability_weak`, a strong one `gap` above it, on prompts of
    `difficulty` (module docstring)."""
    return 0.5 + 0.5 * (sigmoid(ability_weak + gap - difficulty) - sigmoid(ability_weak - difficulty))
