"""A router from outside models/: its class plus one registry entry, served through `routers.extra`.

p_strong is 0.9 for prompts that ask for a proof, else 0.1, so a test can tell that this router answered.
"""

from __future__ import annotations

import numpy as np

from models.base import Router
from models.registry import RouterEntry


class ToyRouter(Router):
    name = "toy"

    def _score(self, prompts: list[str]) -> np.ndarray:
        return np.array([0.9 if "prove" in p.lower() else 0.1 for p in prompts])


TOY = RouterEntry("tests.serve.toy_router:ToyRouter", "local")


class NanRouter(Router):
    """A broken router: NaN for every prompt (what a corrupted artifact can produce)."""

    name = "nan"

    def _score(self, prompts: list[str]) -> np.ndarray:
        return np.full(len(prompts), np.nan)


NAN = RouterEntry("tests.serve.toy_router:NanRouter", "local")
