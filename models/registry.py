"""Router registry: a plain dict of lazy import paths, so `import models` never pulls torch or faiss."""

from __future__ import annotations

import importlib
from typing import Any

from models.base import Router
from models.errors import ConfigError

ROUTERS: dict[str, str] = {
    "random": "models.random_router:RandomRouter",
    "length": "models.length_router:LengthRouter",
    "sw_ranking": "models.sw_ranking:SWRankingRouter",
    "mf": "models.matrix_factorization:MFRouter",
    "bert": "models.bert:BertRouter",
    "causal_llm": "models.causal_llm:CausalLLMRouter",
}


def router_class(name: str) -> type[Router]:
    if name not in ROUTERS:
        raise ConfigError(f"unknown router {name!r}; known: {', '.join(sorted(ROUTERS))}")
    module_name, _, attr = ROUTERS[name].partition(":")
    return getattr(importlib.import_module(module_name), attr)


def parse_names(value: str, known: dict[str, Any] | list[str], kind: str) -> list[str]:
    """Split a comma list and check every name: `parse_names("mf,sw_ranking", ROUTERS, "router")`."""
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"no {kind} given")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown {kind} {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}")
    return names
