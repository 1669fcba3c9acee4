"""Random router: p_strong ~ U(0, 1). The baseline every RouteLLM table shows (APGR ≈ 0.5 by construction)."""

from __future__ import annotations

import numpy as np

from models.base import Router


class RandomRouter(Router):
    name = "random"

    def __init__(self, seed: int | None = 0) -> None:
        self._rng = np.random.default_rng(seed)

    def _score(self, prompts: list[str]) -> np.ndarray:
        return self._rng.random(len(prompts))
