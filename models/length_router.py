"""Length router: p_strong rises with prompt length. No learning at all.

It is the floor a learned router must beat: on RouteLLM's evaluation files longer prompts are harder, so this
alone routes well above random (its APGR per benchmark: see BENCHMARKS.md, 'Routing quality'). The map
chars -> (0, 1) is monotone, so only the ranking matters; `scale` sets where p_strong crosses 0.5 (a typical
prompt length in characters).
"""

from __future__ import annotations

import numpy as np

from models.base import Router


class LengthRouter(Router):
    name = "length"

    def __init__(self, scale: float = 500.0) -> None:
        self.scale = scale

    def _score(self, prompts: list[str]) -> np.ndarray:
        chars = np.fromiter((len(p) for p in prompts), dtype=np.float64, count=len(prompts))
        return chars / (chars + self.scale)
