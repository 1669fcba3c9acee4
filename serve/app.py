"""The turnout Ray Serve application: `build_app(config)` is the only place deployments are bound.

    ingress (FastAPI: routing, thresholds, live controller, decisions, metrics, local routers, upstream proxy)
      ├──▶ embedding (embedder + FAISS: sw_ranking, mf; bert's encoder)
      └──▶ classifier (vLLM classify runner: causal_llm)

`serve run FILE`, KubeRay's serveConfigV2 and `turnout serve` all deploy the same file: Ray imports
`serve.app:build_app`, validates the file's `args` against the `TurnoutConfig` annotation, calls it, and applies
the file's `deployments:` overrides on top of the options bound here (`serve.config.DEPLOYMENT_DEFAULTS`).

A backend deployment is bound only when an enabled router has that backend (`models.registry`).
"""

# No `from __future__ import annotations`: Ray reads the builder's annotation as a class to validate `args`.

import logging

from serve.config import CLASSIFIER, DEPLOYMENT_DEFAULTS, EMBEDDING, INGRESS, TurnoutConfig, parse_app_args

log = logging.getLogger(__name__)


def build_app(config: TurnoutConfig):
    """Bind the backend deployments this config needs and the ingress holding their handles."""
    from ray import serve

    from serve.classifier import ClassifierDeployment
    from serve.embedding import EmbeddingDeployment
    from serve.ingress import IngressDeployment

    config = parse_app_args(config)

    def deployment(cls, name: str):
        return serve.deployment(cls, name=name).options(**DEPLOYMENT_DEFAULTS[name])

    embedding = deployment(EmbeddingDeployment, EMBEDDING).bind(config) if config.embedding_routers else None
    classifier = deployment(ClassifierDeployment, CLASSIFIER).bind(config) if config.classifier_routers else None
    return deployment(serve.ingress()(IngressDeployment), INGRESS).bind(config, embedding, classifier)
