"""The turnout Ray Serve application: `build_app(config)` is the only place deployments are bound.

    ingress (FastAPI) ──▶ router (thresholds, live controller, local routers) ──▶ retrieval (embedder + FAISS)

`serve run FILE` / `serve deploy FILE` / KubeRay import `serve.app:build_app` and pass the file's `args`; Ray
validates them against the `TurnoutConfig` annotation before calling it. `turnout serve` validates the whole
file and prepares artifacts first (`serve.artifacts.prepare`), then calls the same builder.

The causal-classifier deployment (vLLM classify runner) will be bound here as a second backend handle of the
router deployment, beside the retrieval one.
"""

# No `from __future__ import annotations`: Ray reads the builder's annotation as a class to validate `args`.

import logging

from serve.config import TurnoutConfig, parse_app_args

log = logging.getLogger(__name__)


def build_app(config: TurnoutConfig):
    """Bind retrieval (when an embedding router is enabled), router and ingress deployments into one Application."""
    from ray import serve

    from serve.ingress import IngressDeployment
    from serve.retrieval import RetrievalDeployment
    from serve.router import RouterDeployment

    config = parse_app_args(config)
    options = config.deployments
    retrieval = None
    if config.retrieval_routers:
        retrieval = serve.deployment(RetrievalDeployment).options(**options.retrieval.ray_options()).bind(config)
    router = serve.deployment(RouterDeployment).options(**options.router.ray_options()).bind(config, retrieval)
    ingress = serve.deployment(serve.ingress()(IngressDeployment)).options(**options.ingress.ray_options())
    return ingress.bind(config, router)
