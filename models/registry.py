"""Router registry: one entry per router, declaring how it is built, trained, checked and served.

An entry is plain data with lazy import paths, so `import models.registry` never pulls torch or faiss. The CLI,
the pipeline (`models.pipeline`) and the serving layer all dispatch on it; adding a router is its own file plus
one entry here (or, for a router in another package, one `routers.extra` entry in the service config).

backend (where the serving layer runs it):
- local: cheap enough to score inside the ingress process (length, random);
- embedding: in the embedding deployment, next to the embedder. With `shares_embedding` the router scores the
  prompt's embedding (`score_embeddings`), computed once per request for all such routers; otherwise it scores
  the text with its own model (bert's fine-tuned encoder);
- classifier: the causal-LM classifier deployment (vLLM classify runner).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

from index.errors import ConfigError
from models.base import Router

Backend = Literal["local", "embedding", "classifier"]
BACKENDS: tuple[str, ...] = ("local", "embedding", "classifier")


@dataclass(frozen=True)
class RouterEntry:
    router: str  # "module:Class", a models.base.Router with `from_artifacts(root, embedder, strong=, weak=)` if trained
    backend: Backend
    trainer: str | None = None  # "module:function": train(td, embedder, out_root, config, progress) -> folder
    config: str | None = None  # "module:Dataclass": the trainer's options; `turnout train` flags fill its fields
    meta_file: str | None = None  # JSON in <routers>/<name>/ written last by the trainer, with the data hash
    shares_embedding: bool = False  # scores the shared prompt embedding (needs the embedder)
    # Trained without being asked (by `turnout serve`, `turnout eval`, `turnout prepare`) when missing or stale:
    # only routers that train in a few minutes on a CPU; the others stop with one line naming `turnout train`.
    train_on_demand: bool = False

    @property
    def trained(self) -> bool:
        return self.trainer is not None

    def router_class(self) -> type[Router]:
        return _attr(self.router)

    def trainer_function(self) -> Any:
        if self.trainer is None:
            raise ConfigError(f"{self.router} has nothing to train")
        return _attr(self.trainer)

    def config_class(self) -> Any:
        return _attr(self.config) if self.config else None


ROUTERS: dict[str, RouterEntry] = {
    "random": RouterEntry("models.random_router:RandomRouter", "local"),
    "length": RouterEntry("models.length_router:LengthRouter", "local"),
    "sw_ranking": RouterEntry("models.sw_ranking:SWRankingRouter", "embedding", "models.sw_ranking:train",
                              "models.sw_ranking:SWConfig", "manifest.json", shares_embedding=True,
                              train_on_demand=True),
    "mf": RouterEntry("models.matrix_factorization:MFRouter", "embedding", "models.matrix_factorization:train",
                      "models.matrix_factorization:MFConfig", "meta.json", shares_embedding=True,
                      train_on_demand=True),
    "bert": RouterEntry("models.bert:BertRouter", "embedding", "models.bert:train", "models.bert:BertConfig",
                        "meta.json"),
    "causal_llm": RouterEntry("models.causal_llm:CausalLLMRouter", "classifier", "models.causal_llm:train",
                              "models.causal_llm:CausalLLMConfig", "meta.json"),
}


def _attr(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import {path!r}: {exc}") from exc


def with_extra(extra: dict[str, str] | None) -> dict[str, RouterEntry]:
    """ROUTERS plus entries named by import path ({"toy": "mypkg.routers:TOY_ENTRY"}), each a RouterEntry."""
    if not extra:
        return ROUTERS
    merged = dict(ROUTERS)
    for name, path in extra.items():
        if name in ROUTERS:
            raise ConfigError(f"extra router {name!r} would replace the built-in one; pick another name")
        entry = _attr(path)
        if not isinstance(entry, RouterEntry):
            raise ConfigError(f"extra router {name!r}: {path} is a {type(entry).__name__}, expected a RouterEntry")
        merged[name] = entry
    return merged


def entry(name: str, extra: dict[str, str] | None = None) -> RouterEntry:
    routers = with_extra(extra)
    if name not in routers:
        raise ConfigError(f"unknown router {name!r}; known: {', '.join(sorted(routers))}")
    return routers[name]


def router_class(name: str) -> type[Router]:
    return entry(name).router_class()


def trainable() -> list[str]:
    return [name for name, e in ROUTERS.items() if e.trained]


def parse_names(value: str, known: dict[str, Any] | list[str], kind: str) -> list[str]:
    """Split a comma list and check every name: `parse_names("mf,sw_ranking", ROUTERS, "router")`."""
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"no {kind} given")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown {kind} {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}")
    return names
