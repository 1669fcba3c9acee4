"""IngressDeployment: the routing deployment. HTTP API (FastAPI), thresholds, decisions, metrics, upstream proxy.

The decision lives where the request already is: p_strong comes from the router's backend (registry
`backend`: local routers score in this process, embedding routers through the embedding deployment, the causal
classifier through its deployment, one hop each), and the threshold, the live controller, the decision and its
metrics are here. Only work that needs its own resources (a model, an index, a GPU) is another deployment.

Each router has a `StrongRatioController` (`serve.controller`): a fixed threshold from the config, or the
configured strong_ratio held on live traffic, starting from the offline calibration (reference scores written
by `turnout prepare` / `turnout serve`, else `turnout calibrate`'s threshold, else 1 - strong_ratio). The window
learns only from chat calls the controller itself decided and an upstream answered (not a request's own threshold
or strong_ratio, not a call refused or failed, not /v1/route unless `routing.controller.learn_from_route`), and
one key holds at most `routing.controller.max_key_share` of it: no tenant can steer the others' threshold.
Controllers are per replica: with N ingress replicas each holds the target on the traffic it sees (Serve spreads
requests evenly, so each sees a sample of the same mix and the fleet's share converges to the same target, more
slowly, each window filling at 1/N of the rate); /v1/routers shows the answering replica's window. Thresholds and
strong_ratio change on running replicas through the deployment's `user_config` (`reconfigure`), no model reloaded.

Endpoints:
- `POST /v1/route` {messages | prompt, router?, threshold? | strong_ratio?} -> RouteResponse
- `POST /v1/chat/completions` (OpenAI schema): route, then forward to the chosen upstream with `model` replaced;
  streaming is passed through byte for byte; the decision is in `x-turnout-*` response headers
- `GET /v1/models`, `GET /v1/routers` (thresholds and realised strong ratios), `GET /healthz`, `GET /readyz`
- `/openapi.json`; interactive docs at `/docs` only with `api.docs` (they load from a CDN)
- API keys, per-key rate and strong-call limits: `api` config, `serve/auth.py`; the key and the rate are checked
  from the headers before any body byte is read, and the body has a size limit and a deadline (`Gate`)

Errors: every `TurnoutError` becomes its `http_status` with an OpenAI-style `{"error": {...}}` body in one
handler; malformed JSON is 400, a body that fails validation 422, each with a message that names the field.
The FastAPI app is built per replica by `__serve_build_asgi_app__`, so routes close over the replica's
config and handles instead of module globals.
"""

# No `from __future__ import annotations`: FastAPI resolves the route annotations (Request, ...) of the
# closures in build_api, whose imports are local to it.

import asyncio
import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from index.errors import ConfigError, InputError, ScoringError, TurnoutError, first_line
from serve.config import SIDES, TurnoutConfig
from serve.auth import (
    Forbidden, KeyRing, Limits, RateLimited, Unauthorized, digest, load_digests, may_choose_threshold,
    retry_after_header,
)
from serve.capture import (
    CaptureWriter, RequestIds, ShadowBudget, answer_fields, draw_sample, fleet_secret,
)
from serve.controller import StrongRatioController
from serve.protocol import (
    SERVICE_MODEL,
    BodyTimeout,
    BodyTooLarge,
    CaptureBusy,
    ChatCompletionRequest,
    ErrorResponse,
    FeedbackRequest,
    FeedbackResponse,
    MalformedBody,
    RouteRequest,
    RouteResponse,
    RoutingOverloaded,
    RoutingTimeout,
    RoutingUnavailable,
    json_problem,
    parse_model,
    scorable,
    scoring_text,
    UnknownRequest,
    upstream_body,
)

log = logging.getLogger(__name__)

# Well inside Ray's metrics report interval (10 s by default), so a gauge never ages out between two sets; a Ray
# started with a shorter interval (the tests') sets TURNOUT_GAUGE_REFRESH_S to match.
GAUGE_REFRESH_S = float(os.environ.get("TURNOUT_GAUGE_REFRESH_S", "5.0"))
READY_FRESH_S = 10.0  # a backend heard from this recently counts as ready without another call
OPEN_PATHS = ("/healthz", "/readyz")  # the only paths answered without a key
MAX_REPORTED_ERRORS = 20  # validation errors named in one 422 message; the rest are counted
MAX_TRACED_BYTES = 4 * 1024 * 1024  # a captured stream kept for its answer's record; beyond it the record is cut


# The error answers of the POST endpoints as the OpenAPI document declares them (README's Errors table), each with
# the one error body, so that clients and generated SDKs see what a non-200 carries.
ERROR_RESPONSES = {
    400: "`malformed_json`: the body is not JSON (or not UTF-8); `invalid_option`: an unknown router, a bad "
         "strong_ratio or threshold",
    401: "`unauthorized`: auth is on and no valid `Authorization: Bearer` key was sent",
    403: "`threshold_not_allowed`: the key may not choose its own threshold or strong_ratio",
    408: "`body_timeout`: the body took longer than api.body_timeout_s to arrive",
    413: "`body_too_large`: the body is over api.max_body_bytes",
    422: "`invalid_request`: the body does not match the schema (the message names the field); `invalid_input`: "
         "unusable content, e.g. nothing to score in the messages",
    429: "`rate_limited` / `strong_budget_exceeded`: over the key's request rate / strong-call share (Retry-After)",
    500: "`internal`: a bug",
    502: "`upstream_unavailable`: no upstream could be reached; `upstream_failed`: the chosen upstream failed after "
         "the request was sent (its answer too large or too slow included); `upstream_auth_failed`: the upstream "
         "refused turnout's own key",
    503: "`router_overloaded` (Retry-After), `router_timeout`, `router_unavailable`, `scoring_failed`, "
         "`artifact_unavailable`: no routing decision could be made",
}


# One server-sent event of a streamed completion (before OpenAPI 3.2's itemSchema, a text/event-stream schema
# describes each event): the upstream's chunks, `[DONE]`, or the error event of a stream cut short.
SSE_EVENT = {"type": "object", "required": ["data"],
             "properties": {"data": {"type": "string", "description": "a JSON chat.completion.chunk, [DONE], or "
                                                                       "an {\"error\": ...} event"},
                            "event": {"type": "string"}, "id": {"type": "string"}, "retry": {"type": "integer"}}}


def error_responses(*statuses: int) -> dict:
    return {status: {"model": ErrorResponse, "description": ERROR_RESPONSES[status]} for status in statuses}


class UpstreamError(TurnoutError):
    """No upstream could answer."""

    http_status = 502
    code = "upstream_unavailable"


class UpstreamFailed(UpstreamError):
    """The chosen upstream failed after the request was sent (e.g. a read timeout before its answer): it may have
    generated, so the call is not retried elsewhere."""

    code = "upstream_failed"

    def __init__(self, message: str, side: str) -> None:
        super().__init__(message)
        self.side = side  # the upstream that may have generated (and billed) the call


class UpstreamAuthFailed(UpstreamError):
    """The upstream answered 401/403: turnout's key for it is wrong, not the client's."""

    code = "upstream_auth_failed"


class IngressDeployment:
    def __init__(self, config: TurnoutConfig, embedding=None, classifier=None):
        import httpx

        from serve.artifacts import load_routers
        from serve.metrics import ServeMetrics

        self.config = config
        self.entries = config.routers.entries()
        self.backends = {"embedding": embedding, "classifier": classifier}
        for backend, handle in self.backends.items():
            if config.backend_routers(backend) and handle is None:
                raise ConfigError(f"routers {config.backend_routers(backend)} need the {backend} deployment")
        self.local = load_routers(config, config.local_routers)
        self.metrics = ServeMetrics()
        api = config.api
        self.keys = KeyRing(load_digests(api.auth.api_keys_sha256, api.auth.api_keys_file, api.auth.api_keys_env))
        if not self.keys.enabled:
            log.warning("auth is off (no api.auth keys configured): anyone who can reach this service can call it")
        self.limits = Limits.from_config(api.limits)
        self.routing = config.routing
        self.controllers = self._controllers(self.routing)
        self.http = httpx.AsyncClient(limits=httpx.Limits(max_connections=512, max_keepalive_connections=128))
        self.upstream_keys: dict[str, str | None] = {}  # side -> the key sent upstream (not the clients' keys)
        self.in_flight = 0  # routing calls outstanding (one event loop: no lock needed)
        self.key_in_flight: dict[str, int] = {}  # the same, per API key (auth on)
        self.replica = _replica_id()
        self.backend_seen: dict[str, float] = {}  # backend -> monotonic time it last answered (see ready())
        self.overlay_seen: tuple[float, dict] | None = None  # (monotonic time, state) of the last overlay answer
        self.backend_routers: dict[str, list[str]] = {}  # backend -> routers its last ready() listed
        self._refresher = threading.Thread(target=self._refresh_gauges, name="turnout-gauges", daemon=True)
        self._refresher.start()
        for side in SIDES:
            upstream = getattr(config.upstreams, side)
            key = os.environ.get(upstream.api_key_env) if upstream.api_key_env else None
            if upstream.api_key_env and not key:
                log.info("%s upstream: $%s is not set; calls go without an Authorization header", side, upstream.api_key_env)
            self.upstream_keys[side] = key
        self._init_capture(config.capture)

    def _init_capture(self, settings) -> None:
        """Request ids always (every response carries one); the writer and the shadow budget with capture on."""
        import secrets

        from serve.artifacts import home_dir

        replicas = self.config.api.limits.ingress_replicas or 1
        secret = fleet_secret(settings.secret_env, replicas) if settings.enabled else secrets.token_bytes(32)
        self.ids = RequestIds(secret, settings.feedback_ttl_s)
        self.capture = self.shadow_budget = None
        self.tasks: set[asyncio.Task] = set()  # answers parsed and shadow calls made after a response was sent
        if not settings.enabled:
            return
        root = settings.dir or home_dir(self.config) / "capture"
        self.capture = CaptureWriter(root, self.replica or f"pid{os.getpid()}", settings.queue_size,
                                     settings.rotate_rows, settings.rotate_s, settings.max_total_bytes,
                                     on_record=self.metrics.capture_record)
        if settings.shadow_rate > 0:
            share = self.config.api.limits.ingress_replicas or 1  # as the key limits: each replica its part
            self.shadow_budget = ShadowBudget(settings.shadow_budget_usd / share, settings.shadow_budget_window_s,
                                              settings.shadow_max_in_flight)
        log.info("capturing %.0f%% of routed requests into %s (text %s, shadow %.0f%%)", 100 * settings.sample_rate,
                 root, "kept" if settings.store_text else "not kept", 100 * settings.shadow_rate)

    def __del__(self) -> None:  # Serve calls it when the replica shuts down: write what capture has queued
        if getattr(self, "capture", None) is not None:
            self.capture.close()

    def __serve_build_asgi_app__(self):
        return build_api(self)

    def reconfigure(self, user_config: dict) -> None:
        """Ray calls this with the deployment's user_config, at start and on every change: new thresholds and
        strong_ratio take effect here, without restarting the replica or reloading any model."""
        from serve.config import live_routing

        self.routing = live_routing(user_config or {}, self.config)
        self.controllers = self._controllers(self.routing)
        log.info("routing reconfigured: strong_ratio %s, thresholds %s", self.routing.strong_ratio, self.routing.thresholds)

    def _refresh_gauges(self) -> None:
        """Re-set the threshold and strong-ratio gauges forever: Ray drops a gauge from its export about two
        report intervals after its last `set`, so without this they vanish while a router has no traffic."""
        while True:
            time.sleep(GAUGE_REFRESH_S)
            for name, controller in list(self.controllers.items()):
                self._export(name, controller)

    # ---------------------------------------------------------------------------------------------- routing

    def _controllers(self, routing) -> dict[str, StrongRatioController]:
        controllers = {name: self._controller(name, routing) for name in self.config.routers.enabled}
        for name, controller in controllers.items():
            self._export(name, controller)
            log.info("%s: %s", name, controller.state())
        return controllers

    def _export(self, name: str, controller: StrongRatioController) -> None:
        """The controller's gauges: threshold, realised strong ratio, target."""
        self.metrics.controller(name, controller.threshold, controller.realised_ratio, controller.strong_ratio)

    def _controller(self, name: str, routing) -> StrongRatioController:
        from serve.artifacts import calibrated_threshold, load_reference

        settings = routing.controller
        window = {"window": settings.window, "max_key_share": settings.max_key_share}
        if name in routing.thresholds:
            return StrongRatioController(threshold=routing.thresholds[name], **window)
        ratio = routing.strong_ratio
        reference = load_reference(self.config, name)
        if reference is not None:
            return StrongRatioController(strong_ratio=ratio, reference=reference, min_live=settings.min_live, **window)
        start = calibrated_threshold(self.config, name, ratio)
        if start is None:
            start = 1.0 - ratio  # exact for uniform scores (random); the window corrects the rest
            log.warning("%s: no offline calibration for strong_ratio %s; starting at threshold %.3f", name, ratio, start)
        return StrongRatioController(strong_ratio=ratio, initial_threshold=start, min_live=settings.min_live, **window)

    def check_router(self, name: str | None) -> str:
        name = name or self.config.routers.default
        if name not in self.controllers:
            raise ConfigError(f"unknown router {name!r}; this service has: {', '.join(self.config.routers.enabled)}")
        return name

    async def route(self, text: str, router: str | None, threshold: float | None, strong_ratio: float | None,
                    key: str | None = None, vector: bool = False) -> dict:
        """Score and decide within the routing budget. Returns model, p_strong, threshold, threshold_source,
        router and stage times (and with `vector` the prompt's embedding as "embedding", where the router scores
        from one); request errors pass through as TurnoutErrors, backend failures become
        RoutingUnavailable (timeout, overload, error). With auth on, `key`'s calls hold at most
        `routing.max_key_in_flight_share` of the replica's routing slots, so that one key's flood cannot push
        everyone else's chats to the fallback model.

        The budget travels with the request so that a backend skips work nobody waits for any more: without
        it, an overloaded service spends its time on requests that already timed out and then none succeed.
        """
        name = self.check_router(router)
        text = scorable(text)
        routing = self.routing
        if self.in_flight >= routing.max_in_flight:
            # Refused here, a request costs nothing downstream; queued behind capacity it would time out anyway.
            raise RoutingOverloaded(f"routing is overloaded ({self.in_flight} requests in flight); retry later")
        if key is not None and self.keys.enabled:
            slots = max(1, math.floor(routing.max_key_in_flight_share * routing.max_in_flight))
            if self.key_in_flight.get(key, 0) >= slots:
                raise RoutingOverloaded(f"this key has {slots} routing calls in flight, its share of this replica's "
                                        f"{routing.max_in_flight}; retry later")
            self.key_in_flight[key] = self.key_in_flight.get(key, 0) + 1
        self.in_flight += 1
        try:
            scored = await self._score(name, text, routing.timeout_s, vector)
        except ScoringError as exc:  # the router's fault, not the request's: a chat call falls back
            raise RoutingUnavailable(str(exc)) from None
        finally:
            self.in_flight -= 1
            if key is not None and key in self.key_in_flight:
                self.key_in_flight[key] -= 1
                if not self.key_in_flight[key]:
                    del self.key_in_flight[key]
        p_strong, stages = scored["p_strong"], dict(scored["stages"])
        t0 = time.perf_counter()
        controller = self.controllers[name]
        if threshold is not None:
            source = "request"
        elif strong_ratio is not None:
            threshold, source = controller.threshold_for(strong_ratio), "request_strong_ratio"
        else:
            source = controller.mode
        strong, used = controller.decide([p_strong], threshold, record=False)
        model = "strong" if strong[0] else "weak"
        stages["decide"] = (time.perf_counter() - t0) * 1000.0
        self.metrics.stage("decide", name, stages["decide"])
        self.metrics.decision(name, model)
        return {"model": model, "p_strong": p_strong, "threshold": float(used[0]), "threshold_source": source,
                "router": name, "stages": stages, "embedding": scored.get("vector")}

    def learn(self, key: str, decision: dict) -> None:
        """Record a served decision in its router's window, if the controller made it (a request's own threshold
        or strong_ratio teaches the controller nothing), as `key`'s (capped when auth is on; with auth off
        every caller is one and the same)."""
        controller = self.controllers[decision["router"]]
        if decision["threshold_source"] == controller.mode:
            owner = key if self.keys.enabled else None
            controller.observe(decision["p_strong"], decision["model"] == "strong", owner)
            self._export(decision["router"], controller)

    async def _score(self, name: str, text: str, budget: float, vector: bool = False) -> dict:
        """{"p_strong", "stages": the backend's stage times, "vector" where asked for and the router has one};
        local routers cost microseconds and run right here."""
        from ray.serve.exceptions import BackPressureError

        backend = self.entries[name].backend
        if backend == "local":  # microseconds: no stage of its own
            return {"p_strong": float(self.local[name].score([text])[0]), "stages": {}}
        handle = self.backends[backend]
        response = None

        async def result():
            return await response

        try:
            # The remaining budget, not a wall-clock deadline: the backend may run on another node and clock.
            response = (handle.score.remote(text, name, budget, vector) if backend == "embedding"
                        else handle.score.remote(text, budget))
            scored = await asyncio.wait_for(result(), budget)
        except asyncio.TimeoutError:
            response.cancel()
            raise RoutingTimeout(f"routing took longer than {budget}s") from None
        except Exception as exc:  # Ray re-raises a replica's exception wrapped, with the remote traceback as text
            cause = _cause(exc)
            if isinstance(cause, TurnoutError):
                raise cause from None
            if isinstance(cause, BackPressureError):
                self.backend_seen[backend] = time.monotonic()  # busy, not gone: still ready
                raise RoutingOverloaded(f"the {backend} deployment is overloaded (queue full); retry later") from None
            log.warning("%s deployment failed: %s", backend, first_line(exc))
            raise RoutingUnavailable(f"the {backend} deployment is unavailable: {type(cause).__name__}") from exc
        self.backend_seen[backend] = time.monotonic()
        if scored is None:
            raise RoutingTimeout(f"deadline passed while queued for the {backend} deployment")
        return scored

    def state(self) -> dict:
        """Per router: threshold, target, realised strong ratio over the window (this replica's view)."""
        return {name: controller.state() for name, controller in self.controllers.items()}

    async def overlay(self, fresh_s: float = 0.0) -> dict | None:
        """The overlay an embedding replica serves ({"version", "failed": {"version", "reason"} or None}); None
        without the embedding deployment, {"version": "unknown"} if it does not answer in time. An answer younger
        than `fresh_s` is reused (/readyz is open: its callers must not become calls on the backend)."""
        handle = self.backends["embedding"]
        if handle is None:
            return None
        if self.overlay_seen is not None and time.monotonic() - self.overlay_seen[0] <= fresh_s:
            return self.overlay_seen[1]
        try:
            state = await asyncio.wait_for(handle.overlay_state.remote(), 2.0)
        except Exception as exc:  # a busy or restarting replica: the routers' state is still worth answering
            log.warning("overlay state unavailable: %s", first_line(_cause(exc)))
            state = {"version": "unknown", "failed": None}
        self.overlay_seen = (time.monotonic(), state)
        return state

    async def ready(self) -> dict:
        """Routers ready to answer. A backend that answered (or refused for being full) within READY_FRESH_S is
        ready without being asked: readiness must not queue behind scoring, or under overload Kubernetes would
        take capacity away exactly when it is needed. Only an idle or silent backend is asked directly."""
        routers = list(self.local)
        for backend, handle in self.backends.items():
            if handle is None:
                continue
            if time.monotonic() - self.backend_seen.get(backend, -math.inf) > READY_FRESH_S:
                self.backend_routers[backend] = await handle.ready.remote()
                self.backend_seen[backend] = time.monotonic()
            routers += self.backend_routers.get(backend, self.config.backend_routers(backend))
        return {"routers": sorted(routers)}

    # -------------------------------------------------------------------------------------------- upstream

    async def forward(self, side: str, body: dict[str, Any], accept_encoding: str | None = None):
        """POST the body to one side's upstream, asking for the encoding the client accepts (identity when it
        names none); returns the httpx response with its body still unread."""
        import httpx

        upstream = getattr(self.config.upstreams, side)
        headers = {"content-type": "application/json", "accept-encoding": accept_encoding or "identity"}
        if self.upstream_keys[side]:
            headers["authorization"] = f"Bearer {self.upstream_keys[side]}"
        request = self.http.build_request(
            "POST", f"{upstream.base_url}/chat/completions", content=json.dumps({**body, "model": upstream.model}),
            headers=headers, timeout=httpx.Timeout(upstream.timeout_s, connect=upstream.connect_timeout_s))
        return await self.http.send(request, stream=True)

    # --------------------------------------------------------------------------------------------- capture

    def sample(self, chat: bool) -> tuple[bool, bool]:
        """(captured, shadowed) for one routed request."""
        settings = self.config.capture
        return draw_sample(settings.sample_rate, settings.shadow_rate, chat) if self.capture is not None else (False, False)

    def capture_request(self, trace: "Trace", endpoint: str, router: str, decision: dict | None, text: str,
                        fallback: str | None = None) -> None:
        """Queue the request's record (never blocks; a full queue is counted, the request goes on)."""
        store_text = self.config.capture.store_text
        upstreams = self.config.upstreams
        self.capture.offer("requests", {
            "request_id": trace.request_id, "time": datetime.now(timezone.utc), "endpoint": endpoint,
            "key": trace.key, "replica": self.replica, "router": router,
            "models": [getattr(upstreams, side).model for side in SIDES],
            "p_strong": decision and decision["p_strong"], "threshold": decision and decision["threshold"],
            "threshold_source": decision and decision["threshold_source"], "decision": decision and decision["model"],
            "fallback": fallback, "shadowed": trace.shadowed,
            "prompt": text if store_text else None,
            "messages": json.dumps(trace.payload.get("messages"), ensure_ascii=False)
            if store_text and trace.payload else None,
            "prompt_sha256": digest(text),  # the SHA-256 the API keys get (the body has no lone surrogate)
            "embedding": None if store_text or decision is None or decision.get("embedding") is None
            else decision["embedding"].tolist(),
        })

    def after_answer(self, trace: "Trace", side: str, status: int, raw: bytes, encoding: str | None,
                     streamed: bool) -> None:
        """Once the client has its answer: record it, and make the shadow call if the request was shadowed. A task
        of its own, so that the request's slot is free meanwhile."""
        task = asyncio.get_running_loop().create_task(self._after_answer(trace, side, status, raw, encoding, streamed))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _after_answer(self, trace: "Trace", side: str, status: int, raw: bytes, encoding: str | None,
                            streamed: bool) -> None:
        self._answer_row(trace, side, status, answer_fields(raw, encoding, streamed), shadow=False)
        if not trace.shadowed or status >= 400:
            return
        other = "weak" if side == "strong" else "strong"
        skipped = self.shadow_budget.room()
        if skipped:
            self.metrics.shadow(skipped, other)
            return
        self.shadow_budget.in_flight += 1
        payload = {k: v for k, v in trace.payload.items() if k not in ("stream", "stream_options", "n")}
        try:
            sent_at = time.perf_counter()
            upstream = await self.forward(other, payload)
            raw = await _read(upstream, getattr(self.config.upstreams, other), other, sent_at)
        except Exception as exc:  # unreachable, too slow, too large: the shadow answer is missing, and says why
            self.metrics.shadow("failed", other)
            log.warning("shadow call to %s failed: %s", other, first_line(exc))
            self._answer_row(trace, other, None, {"error": first_line(exc)}, shadow=True)
            return
        finally:
            self.shadow_budget.in_flight -= 1
        fields = answer_fields(raw, upstream.headers.get("content-encoding"), streamed=False)
        # Without the upstream's usage, estimate about four bytes a token, so that the budget still counts it.
        tokens = (fields["prompt_tokens"] or len(json.dumps(payload.get("messages"))) // 4,
                  fields["completion_tokens"] or len(raw) // 4)
        cost = getattr(self.config.upstreams, other).cost_usd(*tokens)
        self.shadow_budget.add(cost)
        self.metrics.shadow("called" if upstream.status_code < 400 else "failed", other, cost)
        self._answer_row(trace, other, upstream.status_code, fields, shadow=True, cost=cost)

    def _answer_row(self, trace: "Trace", side: str, status: int | None, fields: dict, shadow: bool,
                    cost: float | None = None) -> None:
        upstream = getattr(self.config.upstreams, side)
        tokens = fields.get("prompt_tokens"), fields.get("completion_tokens")
        if cost is None and None not in tokens:
            cost = upstream.cost_usd(*tokens)
        self.capture.offer("answers", {
            "request_id": trace.request_id, "time": datetime.now(timezone.utc), "side": side,
            "model": upstream.model, "shadow": shadow, "status": status,
            "answer": fields.get("answer") if self.config.capture.store_text else None,
            "prompt_tokens": tokens[0], "completion_tokens": tokens[1], "cost_usd": cost, "error": fields.get("error"),
        })

    def feedback(self, body: FeedbackRequest, key: str) -> None:
        issued = self.ids.check(body.request_id, key)
        if self.capture is None or issued is None or not issued.captured:
            raise UnknownRequest(f"no captured request {body.request_id!r} for this key: not issued by this "
                                 "service, not sampled for capture, or past capture.feedback_ttl_s")
        if body.preferred is not None and not issued.shadowed:
            raise InputError(f"request {body.request_id!r} has one answer only (it was not shadowed): send a "
                             "score, not preferred")
        if not self.capture.offer("feedback", {"request_id": body.request_id, "time": datetime.now(timezone.utc),
                                               "key": key, "score": body.score, "preferred": body.preferred}):
            raise CaptureBusy("the capture writer is behind; retry the feedback later")


@dataclass
class Trace:
    """A captured request on its way: its id, caller, sampling, the body sent upstream, the streamed answer."""

    request_id: str
    key: str
    shadowed: bool = False
    payload: dict = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)  # a streamed answer as relayed, up to max_response_bytes
    size: int = 0


def _replica_id() -> str | None:
    """This Serve replica's id (which window /v1/routers shows); None outside Serve."""
    from ray import serve

    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - Ray raises RayServeException outside a replica
        return None


def _cause(exc: BaseException) -> BaseException:
    """The user exception inside a Ray task error (Ray wraps what a replica raised)."""
    return getattr(exc, "cause", None) or exc


def _error_body(message: str, kind: str, code: str) -> dict:
    return {"error": {"message": message, "type": kind, "code": code}}


def _error_response(exc: TurnoutError):
    """The one error answer of a TurnoutError: its status, the error body, and the headers its kind needs."""
    from starlette.responses import JSONResponse

    kind = "invalid_request_error" if exc.http_status < 500 else "service_unavailable"
    headers = None
    if getattr(exc, "retry_after_s", None) is not None:  # routing failures, a busy capture writer
        headers = {"retry-after": str(exc.retry_after_s)}
    elif isinstance(exc, RateLimited):
        headers = {"retry-after": retry_after_header(exc.retry_after)}
    elif isinstance(exc, Unauthorized):
        headers = {"www-authenticate": "Bearer"}
    return JSONResponse(_error_body(str(exc), kind, exc.code), status_code=exc.http_status, headers=headers)


def _parse_failure(exc: BaseException | None) -> str:
    """Why json.loads failed, for people."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if exc is None or isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    return first_line(exc)


def _is_json_type(content_type: str | None) -> bool:
    """Whether FastAPI parses a body of this Content-Type as JSON (application/json or application/*+json)."""
    import email.message

    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def _validation_message(errors: list[dict]) -> tuple[str, bool]:
    """One readable line from FastAPI validation errors, and whether the body was not JSON at all."""
    parts, malformed = [], False
    for err in errors[:MAX_REPORTED_ERRORS]:
        if err.get("type") == "json_invalid":
            malformed = True
            ctx = err.get("ctx") or {}
            parts.append(f"malformed JSON body: {ctx.get('error', 'cannot parse')}")
            continue
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "missing" and not loc:
            msg = "request body is required"
        parts.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
    if len(errors) > MAX_REPORTED_ERRORS:
        parts.append(f"and {len(errors) - MAX_REPORTED_ERRORS} more errors")
    return "; ".join(parts) or "invalid request", malformed


def build_api(ingress: IngressDeployment):
    """The FastAPI app of one ingress replica."""
    from fastapi import Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.background import BackgroundTask
    from starlette.exceptions import HTTPException as StarletteHTTPException

    class Relayed(StreamingResponse):
        """Closes the upstream response whatever happens to the stream, even when the client leaves before its
        first chunk (the relay generator then never runs, nor would a background task)."""

        def __init__(self, upstream, content, **kwargs) -> None:
            super().__init__(content, **kwargs)
            self.upstream = upstream

        async def __call__(self, scope, receive, send) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                await self.upstream.aclose()

    config, metrics = ingress.config, ingress.metrics
    docs = {} if config.api.docs else {"docs_url": None, "redoc_url": None}
    app = FastAPI(title="turnout", version="0.1.0",
                  description="LLM router: strong/weak routing decisions and an OpenAI-compatible proxy", **docs)
    app.add_middleware(Gate, keys=ingress.keys, limits=ingress.limits, ids=ingress.ids,
                       max_bytes=config.api.max_body_bytes, timeout_s=config.api.body_timeout_s,
                       on_refuse=metrics.error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):  # unknown path, wrong method, ...
        # FastAPI raises a bare 400, from the parser's exception, when json.loads fails other than by a syntax
        # error: not UTF-8, nested past the parser's recursion limit, an integer over Python's 4300 digits
        code = {400: "malformed_json", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, f"http_{exc.status_code}")
        metrics.error(endpoint_of(request), code)
        detail = f"malformed JSON body: {_parse_failure(exc.__cause__)}" if exc.status_code == 400 else exc.detail
        message = f"{request.method} {request.url.path}: {detail}"
        return JSONResponse(_error_body(message, "invalid_request_error", code), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    def endpoint_of(request: Request) -> str:
        """The matched route's template ("/v1/route"), as request latency is labelled: never the raw path, which
        carries the application's route prefix and, for unknown paths, whatever a client sent."""
        route = request.scope.get("route")
        return getattr(route, "path", None) or "unmatched"

    @app.exception_handler(TurnoutError)
    async def turnout_error(request: Request, exc: TurnoutError):
        metrics.error(endpoint_of(request), exc.code)
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        message, malformed = _validation_message(exc.errors())
        if not malformed and any(tuple(e.get("loc", ())) == ("body",) for e in exc.errors()):
            raw = await request.body()
            try:  # a body sent without a JSON content type arrives unparsed: say whether it was JSON at all
                json.loads(raw)
            except (ValueError, RecursionError) as err:
                message, malformed = f"malformed JSON body: {_parse_failure(err)}", True
            else:
                if not _is_json_type(request.headers.get("content-type")):
                    message = (f"the body is JSON but its Content-Type is {request.headers.get('content-type')!r}: "
                               "send it as application/json")
        reason = "malformed_json" if malformed else "invalid_request"
        metrics.error(endpoint_of(request), reason)
        return JSONResponse(_error_body(message, "invalid_request_error", reason), status_code=400 if malformed else 422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):  # a bug: keep the traceback in the log
        log.exception("unhandled error on %s", endpoint_of(request))
        metrics.error(endpoint_of(request), "internal")
        return JSONResponse(_error_body("internal error", "internal_error", "internal"), status_code=500)

    @app.get("/healthz", summary="process is up")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="routers loaded and answering")
    async def readyz():
        try:
            ready = await asyncio.wait_for(ingress.ready(), 5.0)
        except Exception as exc:  # open to anyone: the reason stays generic, the details go to the log and a metric
            cause = _cause(exc)
            log.warning("not ready: %s: %s", type(cause).__name__, first_line(cause))
            metrics.error("/readyz", "not_ready")
            return JSONResponse({"status": "not ready", "reason": "a backend did not answer (see the service log)"},
                                status_code=503)
        # a promoted overlay that did not load leaves the previous one serving: still ready, and saying why
        return {"status": "ready", **ready, "overlay": await ingress.overlay(READY_FRESH_S)}

    async def json_body(request: Request) -> None:
        """README's malformed_json for the JSON bodies Python's parser takes but the API does not (`json_problem`).
        Runs before the body is validated; a body FastAPI left unparsed (not a JSON content type) fails there."""
        raw = await request.body()
        if raw and _is_json_type(request.headers.get("content-type")):
            problem = json_problem(raw, await request.json())  # the parse FastAPI made, cached on the request
            if problem:
                raise MalformedBody(f"malformed JSON body: {problem}")

    def caller(request: Request) -> str:
        """The calling key's id, which `Gate` checked (with its rate) before the body was read."""
        return request.state.key

    def start_trace(request: Request, key: str, captured: bool, shadowed: bool = False,
                    payload: dict | None = None) -> Trace | None:
        """A captured request gets an id that says so (feedback on it is accepted) and a Trace."""
        if not captured:
            return None
        request.state.request_id = ingress.ids.issue(key, captured=True, shadowed=shadowed)
        return Trace(request.state.request_id, key, shadowed, payload or {})

    def wants_vector(trace: Trace | None) -> bool:
        return trace is not None and not config.capture.store_text

    def own_threshold(key: str, *chosen) -> None:
        if any(value is not None for value in chosen) and not may_choose_threshold(config.api.auth.client_thresholds, key):
            raise Forbidden("this key may not choose its own threshold or strong_ratio (api.auth.client_thresholds)")

    @app.get("/v1/routers", summary="thresholds and realised strong ratios (the answering ingress replica's window)")
    async def routers(key: str = Depends(caller)):
        return {"default": config.routers.default, "replica": ingress.replica, "overlay": await ingress.overlay(),
                "routers": ingress.state()}

    @app.get("/v1/models", summary="model names accepted by /v1/chat/completions")
    async def models(key: str = Depends(caller)):
        names = [SERVICE_MODEL] + [f"router-{r}" for r in config.routers.enabled]
        return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "turnout"} for n in names]}

    @app.post("/v1/route", response_model=RouteResponse, summary="routing decision only",
              description="A decision, not a call: it is never counted in the key's strong-call budget, and feeds "
                          "the live controller only with routing.controller.learn_from_route.",
              responses=error_responses(400, 401, 403, 408, 413, 422, 429, 500, 503), dependencies=[Depends(json_body)])
    async def route(body: RouteRequest, request: Request, key: str = Depends(caller)) -> RouteResponse:
        start = time.perf_counter()
        name = ingress.check_router(body.router)
        own_threshold(key, body.threshold, body.strong_ratio)
        text = body.prompt if body.prompt is not None else scoring_text(
            body.messages, config.scoring.user_turns, config.scoring.max_chars)
        text = text[-config.scoring.max_chars:]
        messages = (await request.json()).get("messages")
        trace = start_trace(request, key, ingress.sample(chat=False)[0], payload={"messages": messages} if messages else None)
        decision = await ingress.route(text, name, body.threshold, body.strong_ratio, key, wants_vector(trace))
        if trace is not None:
            ingress.capture_request(trace, "/v1/route", name, decision, text)
        if ingress.routing.controller.learn_from_route:
            ingress.learn(key, decision)
        latency_ms = (time.perf_counter() - start) * 1000.0
        metrics.request("/v1/route", name, latency_ms)
        return RouteResponse(latency_ms=latency_ms,
                             **{k: v for k, v in decision.items() if k not in ("stages", "embedding")})

    @app.post("/v1/chat/completions", summary="route, then proxy to the chosen OpenAI-compatible upstream",
              description="The upstream's answer is passed through with its status and body, its own errors "
                          "included (but a 401/403, which concerns turnout's key, is a 502); the errors below are "
                          "the service's own. Where /v1/route would answer 503 (no routing decision), the call "
                          "goes to routing.fallback_model instead, or to the weak model where the key's strong-call "
                          "budget has no room. Every call an upstream answers is counted in the key's budget by "
                          "the model that answered.",
              responses={200: {"description": "the upstream's completion: JSON, or server-sent events with stream",
                               "content": {"application/json": {}, "text/event-stream": {"schema": SSE_EVENT}}},
                         **error_responses(400, 401, 403, 408, 413, 422, 429, 500, 502)},
              dependencies=[Depends(json_body)])
    async def chat_completions(body: ChatCompletionRequest, request: Request, key: str = Depends(caller)):
        start = time.perf_counter()
        name, threshold = parse_model(body.model, config.routers.default)
        name = ingress.check_router(name)
        own_threshold(key, threshold)
        limits = config.api.limits
        payload = upstream_body(await request.json(), config.api.forward_fields, limits.max_n, limits.max_tokens)
        text = scoring_text(body.messages, config.scoring.user_turns, config.scoring.max_chars)
        headers = {"x-turnout-router": name}
        trace = start_trace(request, key, *ingress.sample(chat=True), payload=payload)
        decision = None
        try:
            decision = await ingress.route(text, name, threshold, None, key, wants_vector(trace))
            side = decision["model"]
            headers.update({"x-turnout-p-strong": f"{decision['p_strong']:.6f}",
                            "x-turnout-threshold": f"{decision['threshold']:.6f}"})
        except RoutingUnavailable as exc:
            side = config.routing.fallback_model
            metrics.fallback(exc.code, side)
            _add_fallback(headers, exc.code)
            log.warning("routing failed (%s): sending to %s", exc, side)
        charge = ingress.limits.charge(key, side, fallback=decision is None)  # 429 for a routed strong call past the cap
        if charge.side != side:
            metrics.fallback("strong_budget_exceeded", charge.side)
            _add_fallback(headers, "strong_budget_exceeded")
        billed = answered = False  # billed: the upstream may charge for it; answered: it gave its answer
        try:
            t_up = time.perf_counter()
            upstream = await _send(ingress, charge, payload, headers, request.headers.get("accept-encoding"))
            side = charge.side
            headers["x-turnout-model"] = side
            if upstream.status_code in (401, 403):  # turnout's key for the upstream, not the client's
                await upstream.aclose()
                raise UpstreamAuthFailed(f"the {side} upstream refused turnout's credentials ({upstream.status_code})")
            billed = upstream.status_code < 400
            if upstream.headers.get("retry-after"):  # an upstream's 429 says when to come back: the client needs it
                headers["retry-after"] = upstream.headers["retry-after"]
            media_type = upstream.headers.get("content-type", "application/json")
            if upstream.headers.get("content-encoding"):  # raw bytes are passed on: the client decodes them
                headers["content-encoding"] = upstream.headers["content-encoding"]
            encoding = upstream.headers.get("content-encoding")
            if body.stream and upstream.status_code < 400:
                metrics.stage("upstream", name, (time.perf_counter() - t_up) * 1000.0)
                answered = True
                return Relayed(upstream, _relay(upstream, metrics, name, start, trace), status_code=upstream.status_code,
                               media_type=media_type, headers=headers,
                               background=after(trace, side, upstream.status_code, encoding, streamed=True))
            content = await _read(upstream, getattr(config.upstreams, side), side, t_up)
            answered = billed
            metrics.stage("upstream", name, (time.perf_counter() - t_up) * 1000.0)
        except asyncio.CancelledError:  # the client left: a call already sent may still be generated and billed
            billed = True
            raise
        except UpstreamError as exc:
            billed = isinstance(exc, UpstreamFailed)  # sent and maybe generated: the upstream may bill it
            metrics.error("/v1/chat/completions", exc.code)
            if isinstance(exc, UpstreamFailed):  # the client learns which side may bill it, as on success
                headers["x-turnout-model"] = exc.side
            headers.pop("content-encoding", None)
            return JSONResponse(_error_body(str(exc), "service_unavailable", exc.code),
                                status_code=exc.http_status, headers=headers)
        finally:
            charge.settle(billed)
            if answered and decision is not None:
                ingress.learn(key, decision)
            if trace is not None:
                ingress.capture_request(trace, "/v1/chat/completions", name, decision, text,
                                        headers.get("x-turnout-fallback"))
        if upstream.status_code >= 400:
            metrics.error("/v1/chat/completions", f"upstream_{upstream.status_code}")
        metrics.request("/v1/chat/completions", name, (time.perf_counter() - start) * 1000.0)
        return Response(content, status_code=upstream.status_code, media_type=media_type, headers=headers,
                        background=after(trace, side, upstream.status_code, encoding, streamed=False, raw=content))

    def after(trace: Trace | None, side: str, status: int, encoding: str | None, streamed: bool,
              raw: bytes | None = None) -> BackgroundTask | None:
        """What runs once the client has the whole answer: its record, and the shadow call."""
        if trace is None:
            return None

        async def answered():
            ingress.after_answer(trace, side, status, b"".join(trace.chunks) if raw is None else raw, encoding, streamed)
        return BackgroundTask(answered)

    @app.post("/v1/feedback", response_model=FeedbackResponse, summary="a user's outcome for a captured request",
              description="Stored beside the captured request in the capture folder's feedback table, for `turnout "
                          "label`. The id is the request's x-turnout-request-id header; only the key that made "
                          "the request may send feedback on it, within capture.feedback_ttl_s.",
              responses={404: {"model": ErrorResponse, "description": "`unknown_request_id`: not a captured "
                                                                      "request of this key, or too old"},
                         **error_responses(400, 401, 408, 413, 422, 429, 500),
                         503: {"model": ErrorResponse, "description": "`capture_busy`: the capture writer is "
                                                                      "behind (Retry-After)"}},
              dependencies=[Depends(json_body)])
    async def feedback(body: FeedbackRequest, key: str = Depends(caller)) -> FeedbackResponse:
        start = time.perf_counter()
        ingress.feedback(body, key)
        metrics.request("/v1/feedback", "", (time.perf_counter() - start) * 1000.0)
        return FeedbackResponse(request_id=body.request_id, recorded=True)

    return app


class Gate:
    """ASGI middleware in front of every route; before the app runs, in this order:

    1. the key, from the Authorization header (401), and the key's request rate (429): a caller without a valid
       key never gets a body byte read. OPEN_PATHS need no key and are passed on without their body being read;
    2. the whole body, within `timeout_s` (408 body_timeout) and `max_bytes` (413 body_too_large, whether declared
       in Content-Length or streamed): the app only ever sees a complete body, so a cut one never runs.

    The key's id reaches the routes as `request.state.key`. Every response carries `x-turnout-request-id`
    (`request.state.request_id` where a captured route set one that says so). The answers have the one
    error body; each refusal is counted under the endpoint label "unmatched" (no route has matched yet)."""

    def __init__(self, app, keys: KeyRing, limits: Limits, ids: RequestIds, max_bytes: int, timeout_s: float,
                 on_refuse) -> None:
        self.app, self.keys, self.limits, self.ids = app, keys, limits, ids
        self.max_bytes, self.timeout_s, self.on_refuse = max_bytes, timeout_s, on_refuse

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        send = _with_request_id(send, state, self.ids)
        if _app_path(scope) in OPEN_PATHS:  # answered without reading a body: nothing to wait for
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        try:
            authorization = headers.get(b"authorization")
            key = self.keys.identify(authorization.decode("latin-1") if authorization is not None else None)
            self.limits.admit(key)
            state["key"] = key
            declared = headers.get(b"content-length", b"")
            if declared.isdigit() and int(declared) > self.max_bytes:
                raise BodyTooLarge(f"request body is larger than {self.max_bytes} bytes (api.max_body_bytes)")
            try:
                body = await asyncio.wait_for(self._body(receive), self.timeout_s)
            except asyncio.TimeoutError:
                raise BodyTimeout(f"the request body did not arrive within {self.timeout_s:g} s "
                                  "(api.body_timeout_s)") from None
        except TurnoutError as exc:
            return await self._refuse(scope, send, exc)
        if body is None:  # the client went away: nobody to answer
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:  # after the body: the client's disconnect, as the app would have seen it
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _body(self, receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise BodyTooLarge(f"request body is larger than {self.max_bytes} bytes (api.max_body_bytes)")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _refuse(self, scope, send, exc: TurnoutError) -> None:
        self.on_refuse("unmatched", exc.code)
        await _error_response(exc)(scope, None, send)


def _with_request_id(send, state: dict, ids: RequestIds):
    """`send`, with the request's id added to the response's headers: the one a captured route set in `state`,
    else a new one for the caller."""
    async def sending(message):
        if message["type"] == "http.response.start":
            request_id = state.get("request_id") or ids.issue(state.get("key", ""))
            message = {**message, "headers": [*message.get("headers", []), (b"x-turnout-request-id", request_id.encode())]}
        await send(message)
    return sending


def _app_path(scope) -> str:
    """The request path within the application (Serve mounts an application under its route prefix)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return (path[len(root):] or "/") if root and path.startswith(root) else path


def _add_fallback(headers: dict, reason: str) -> None:
    headers["x-turnout-fallback"] = ",".join(filter(None, [headers.get("x-turnout-fallback"), reason]))


async def _relay(upstream, metrics, router: str, start: float, trace: Trace | None = None):
    """The upstream's stream, byte for byte. If the upstream fails mid-stream the client gets an SSE error event
    (when the stream is not content-encoded: an event cannot be spliced into gzip) and the failure is counted;
    the request latency is recorded when the stream ends, so it means the whole request as for non-streams.
    A captured request's stream is also kept in its trace, up to the upstream's max_response_bytes."""
    import httpx

    try:
        async for chunk in upstream.aiter_raw():
            if trace is not None and trace.size + len(chunk) <= MAX_TRACED_BYTES:
                trace.chunks.append(chunk)
                trace.size += len(chunk)
            yield chunk
    except httpx.TransportError as exc:
        metrics.error("/v1/chat/completions", "upstream_stream_cut")
        log.warning("upstream stream cut: %s", first_line(exc))
        if not upstream.headers.get("content-encoding"):
            event = _error_body(f"upstream stream cut ({type(exc).__name__})", "service_unavailable",
                                "upstream_stream_cut")
            yield f"\n\ndata: {json.dumps(event)}\n\n".encode()
    finally:
        metrics.request("/v1/chat/completions", router, (time.perf_counter() - start) * 1000.0)



async def _read(upstream, settings, side: str, sent_at: float) -> bytes:
    """A non-streamed answer, raw (as the stream path: aread() would decode a gzip body that then goes out labelled
    gzip), within the upstream's size cap and total deadline from the send; UpstreamFailed past either, or if the
    connection fails: the call was sent and may have generated, so it is never retried on the other side."""
    import httpx

    chunks, size = [], 0
    try:
        async with asyncio.timeout(max(0.0, settings.total_timeout_s - (time.perf_counter() - sent_at))):
            async for chunk in upstream.aiter_raw():
                size += len(chunk)
                if size > settings.max_response_bytes:
                    raise UpstreamFailed(f"{side} upstream's answer is larger than {settings.max_response_bytes} "
                                         "bytes (upstreams.max_response_bytes)", side)
                chunks.append(chunk)
    except TimeoutError:
        raise UpstreamFailed(f"{side} upstream did not finish its answer within {settings.total_timeout_s:g} s "
                             "(upstreams.total_timeout_s)", side) from None
    except httpx.TransportError as exc:
        raise UpstreamFailed(f"{side} upstream failed while answering ({type(exc).__name__})", side) from None
    finally:
        await upstream.aclose()
    return b"".join(chunks)


async def _send(ingress: IngressDeployment, charge, payload: dict, headers: dict, accept_encoding: str | None):
    """Forward to the charged side; to the other side (when allowed, and within the key's strong-call budget:
    `charge` moves with the call) only where nothing can have been generated: the connection was never made
    (refused, DNS, connect timeout, no pooled connection), or, with `upstreams.fallback_on_503`, the upstream
    answered 503. Anything after the request was sent (a read timeout on a long generation, a 502 or 504 from a
    load balancer whose backend may have generated) is not retried elsewhere: that could bill the call twice."""
    import httpx

    settings = ingress.config.upstreams
    retry_status = (503,) if settings.fallback_on_503 else ()
    side = charge.side
    sides = [side, "weak" if side == "strong" else "strong"] if settings.fallback_on_error else [side]
    failures, reason = [], None
    for i, current in enumerate(sides):
        if i and not charge.move(current):
            failures.append(f"not retried on the {current} upstream: the key's strong-call budget is spent")
            break
        try:
            upstream = await ingress.forward(current, payload, accept_encoding)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:  # nothing was sent
            failures.append(f"{current} upstream unreachable ({type(exc).__name__})")
            reason = "upstream_unreachable"
        except httpx.TransportError as exc:  # sent, maybe generating: no second try on the other side
            failures.append(f"{current} upstream failed after the request was sent ({type(exc).__name__}); "
                            "not retried on the other side")
            log.warning("%s", failures[-1])
            raise UpstreamFailed("; ".join(failures), current) from None
        else:
            if upstream.status_code not in retry_status or i == len(sides) - 1:
                if i:
                    _add_fallback(headers, reason)
                    ingress.metrics.fallback(reason, current)
                return upstream
            await upstream.aclose()
            failures.append(f"{current} upstream answered {upstream.status_code}")
            reason = f"upstream_{upstream.status_code}"
        log.warning("%s", failures[-1])
    raise UpstreamError("; ".join(failures))
