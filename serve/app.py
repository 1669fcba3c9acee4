"""The turnout Ray Serve application: `build_app(config)` is the only place deployments are bound.

    ingress (FastAPI) ──▶ router (thresholds, live controller, local routers) ──▶ retrieval (embedder + FAISS)
                                                                               └──▶ classifier (vLLM, causal_llm)

`serve run FILE` / `serve deploy FILE` / KubeRay import `serve.app:build_app` and pass the file's `args`; Ray
validates them against the `TurnoutConfig` annotation before calling it. `turnout serve` validates the whole
file and prepares artifacts first (`serve.artifacts.prepare`), then calls the same builder.

Each backend deployment is bound only when one of its routers is enabled: retrieval for sw_ranking / mf, the
causal classifier (vLLM classify runner) for causal_llm.
"""

# No `from __future__ import annotations`: Ray reads the builder's annotation as a class to validate `args`.

import logging

from serve.config import TurnoutConfig, parse_app_args

log = logging.getLogger(__name__)


def build_app(config: TurnoutConfig):
    """Bind retrieval and classifier (when one of their routers is enabled), router and ingress into one Application."""
    from ray import serve

    from serve.classifier import ClassifierDeployment
    from serve.ingress import IngressDeployment
    from serve.retrieval import RetrievalDeployment
    from serve.router import RouterDeployment

    config = parse_app_args(config)
    options = config.deployments
    retrieval = None
    if config.retrieval_routers:
        retrieval = serve.deployment(RetrievalDeployment).options(**options.retrieval.ray_options()).bind(config)
    classifier = None
    if config.classifier_routers:
        classifier = serve.deployment(ClassifierDeployment).options(**options.classifier.ray_options()).bind(config)
    router = serve.deployment(RouterDeployment).options(**options.router.ray_options()).bind(config, retrieval, classifier)
    ingress = serve.deployment(serve.ingress()(IngressDeployment)).options(**options.ingress.ray_options())
    return ingress.bind(config, router)
