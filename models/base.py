"""The router interface every router implements.

A router maps a batch of prompts to `p_strong`: the probability that the strong model's answer beats the weak
model's. The decision (`p_strong >= threshold` -> strong) is made by the caller; the threshold is never a router
attribute.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from index.errors import InputError, ScoringError

DEFAULT_STRONG = "gpt-4-1106-preview"
DEFAULT_WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
# A classifier scoring call this large (an evaluation, offline) shows a progress bar; serving batches never do.
PROGRESS_MIN_PROMPTS = 256


class Router(ABC):
    """Batch-first router: `score(prompts) -> p_strong` (float64 array, one value per prompt, in [0, 1])."""

    name: ClassVar[str]

    @abstractmethod
    def _score(self, prompts: list[str]) -> np.ndarray:
        """Score a non-empty, validated batch."""

    def score(self, prompts: Sequence[str]) -> np.ndarray:
        prompts = validate_prompts(prompts)
        p_strong = np.asarray(self._score(prompts), dtype=np.float64)
        check_finite(p_strong, self.name)
        return np.clip(p_strong, 0.0, 1.0)  # np.clip passes NaN through: checked above


def check_finite(p_strong: np.ndarray, router: str) -> None:
    """ScoringError if any p_strong is NaN or infinite: it would break every threshold computed after it."""
    bad = ~np.isfinite(p_strong)
    if bad.any():
        raise ScoringError(f"router {router} produced {int(bad.sum())} non-finite p_strong value(s) of {len(p_strong)}")


def validate_prompts(prompts: Sequence[str]) -> list[str]:
    """Reject what no router can score: a bare string, an empty batch, non-string items."""
    if isinstance(prompts, str):
        raise InputError("prompts must be a list of strings, not a single string")
    prompts = list(prompts)
    if not prompts:
        raise InputError("prompts must not be empty")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise InputError(f"prompt {i} is {type(prompt).__name__}, expected str")
    return prompts
