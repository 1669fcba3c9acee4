"""RouterDeployment: p_strong from the router's backend, the threshold, the decision and its metrics.

Backends: the retrieval deployment (sw_ranking, mf) and the causal-classifier deployment (causal_llm) through
their handles, and the cheap local routers (length, random) in this replica.

Each router has a `StrongRatioController` (`serve.controller`): a fixed threshold from the config, or the
configured strong_ratio held on live traffic, starting from the offline calibration (reference scores written by
`turnout serve`, else `turnout calibrate`'s threshold, else 1 − strong_ratio). A request may bring its own
threshold or strong_ratio; its decision still counts in the window and in the realised ratio.
"""

from __future__ import annotations

import logging
import time

from models.errors import ConfigError
from serve.config import CLASSIFIER_ROUTERS, RETRIEVAL_ROUTERS, TurnoutConfig
from serve.controller import StrongRatioController
from serve.protocol import RoutingOverloaded, RoutingTimeout

log = logging.getLogger(__name__)


class RouterDeployment:
    def __init__(self, config: TurnoutConfig, retrieval=None, classifier=None):
        from serve.artifacts import load_routers
        from serve.metrics import ServeMetrics

        self.config = config
        self.retrieval = retrieval
        if config.retrieval_routers and retrieval is None:
            raise ConfigError(f"routers {config.retrieval_routers} need the retrieval deployment")
        self.classifier = classifier
        if config.classifier_routers and classifier is None:
            raise ConfigError(f"routers {config.classifier_routers} need the classifier deployment")
        self.local = load_routers(config, config.local_routers)
        self.controllers = {name: self._controller(name) for name in config.routers.enabled}
        self.metrics = ServeMetrics()
        for name, controller in self.controllers.items():
            self.metrics.controller(name, controller.threshold, controller.realised_ratio)
            log.info("%s: %s", name, controller.state())

    def _controller(self, name: str) -> StrongRatioController:
        from serve.artifacts import calibrated_threshold, load_reference

        routing = self.config.routing
        window = routing.controller.window
        if name in routing.thresholds:
            return StrongRatioController(threshold=routing.thresholds[name], window=window)
        ratio = routing.strong_ratio
        reference = load_reference(self.config, name)
        if reference is not None:
            return StrongRatioController(strong_ratio=ratio, window=window, reference=reference,
                                         min_live=routing.controller.min_live)
        start = calibrated_threshold(self.config, name, ratio)
        if start is None:
            start = 1.0 - ratio  # exact for uniform scores (random); the window corrects the rest
            log.warning("%s: no offline calibration for strong_ratio %s; starting at threshold %.3f", name, ratio, start)
        return StrongRatioController(strong_ratio=ratio, window=window, initial_threshold=start,
                                     min_live=routing.controller.min_live)

    def check_router(self, name: str | None) -> str:
        name = name or self.config.routers.default
        if name not in self.controllers:
            raise ConfigError(f"unknown router {name!r}; this service has: {', '.join(self.config.routers.enabled)}")
        return name

    async def route(self, text: str, router: str | None = None, threshold: float | None = None,
                    strong_ratio: float | None = None, deadline: float | None = None) -> dict:
        """Score one text and decide. Returns model, p_strong, threshold, threshold_source, router, stage times.

        `deadline` (time.time() seconds) is when the caller stops waiting; past it the request is dropped.
        """
        name = self.check_router(router)
        if deadline is not None and time.time() > deadline:
            raise RoutingTimeout("deadline passed while queued at the router")
        stages: dict[str, float] = {}
        if name in RETRIEVAL_ROUTERS:
            scored = await _backend("retrieval", lambda: self.retrieval.score.remote(text, name, deadline))
            p_strong = scored["p_strong"]
            stages.update(embed=scored["embed_ms"], search=scored["search_ms"])
            t0 = time.perf_counter()
        elif name in CLASSIFIER_ROUTERS:
            scored = await _backend("the causal classifier", lambda: self.classifier.score.remote(text, deadline))
            p_strong = scored["p_strong"]
            stages["classify"] = scored["classify_ms"]
            t0 = time.perf_counter()
        else:
            t0 = time.perf_counter()  # local routers cost microseconds: part of the decide stage
            p_strong = float(self.local[name].score([text])[0])
        controller = self.controllers[name]
        if threshold is not None:
            source = "request"
        elif strong_ratio is not None:
            threshold, source = controller.threshold_for(strong_ratio), "request_strong_ratio"
        else:
            source = controller.mode
        strong, used = controller.decide([p_strong], threshold)
        model = "strong" if strong[0] else "weak"
        stages["decide"] = (time.perf_counter() - t0) * 1000.0
        self.metrics.stage("decide", name, stages["decide"])
        self.metrics.decision(name, model)
        self.metrics.controller(name, controller.threshold, controller.realised_ratio)
        return {"model": model, "p_strong": p_strong, "threshold": float(used[0]), "threshold_source": source,
                "router": name, "stages": stages}

    def state(self) -> dict:
        """Per router: threshold, target, realised strong ratio over the window (this replica's view)."""
        return {name: controller.state() for name, controller in self.controllers.items()}

    async def ready(self) -> dict:
        routers = list(self.local)
        if self.retrieval is not None:
            routers += await self.retrieval.ready.remote()
        if self.classifier is not None:
            routers += await self.classifier.ready.remote()
        return {"routers": sorted(routers)}


async def _backend(what: str, call) -> dict:
    """Await a backend deployment's answer; its queue being full or the deadline passing become routing errors."""
    from ray.serve.exceptions import BackPressureError

    try:
        scored = await call()
    except BackPressureError:
        raise RoutingOverloaded(f"{what} is overloaded (queue full); retry later") from None
    if scored is None:
        raise RoutingTimeout(f"deadline passed while queued for {what}")
    return scored
