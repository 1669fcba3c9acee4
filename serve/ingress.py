"""IngressDeployment: the routing deployment. HTTP API (FastAPI), thresholds, decisions, metrics, upstream proxy.

The decision lives where the request already is: p_strong comes from the router's backend (registry
`backend`: local routers score in this process, embedding routers through the embedding deployment, the causal
classifier through its deployment, one hop each), and the threshold, the live controller, the decision and its
metrics are here. Only work that needs its own resources (a model, an index, a GPU) is another deployment.

Each router has a `StrongRatioController` (`serve.controller`): a fixed threshold from the config, or the
configured strong_ratio held on live traffic, starting from the offline calibration (reference scores written
by `turnout prepare` / `turnout serve`, else `turnout calibrate`'s threshold, else 1 - strong_ratio). A request
may bring its own threshold or strong_ratio; its decision still counts in the window and in the realised ratio.
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
- API keys, per-key rate and strong-call limits, body size limit: `api` config, `serve/auth.py`

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
from typing import Any

from index.errors import ConfigError, ScoringError, TurnoutError, first_line
from serve.config import SIDES, TurnoutConfig
from serve.auth import KeyRing, Limits, RateLimited, Unauthorized, load_digests, retry_after_header
from serve.controller import StrongRatioController
from serve.protocol import (
    SERVICE_MODEL,
    ChatCompletionRequest,
    ErrorResponse,
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
)

log = logging.getLogger(__name__)

# Well inside Ray's metrics report interval (10 s by default), so a gauge never ages out between two sets; a Ray
# started with a shorter interval (the tests') sets TURNOUT_GAUGE_REFRESH_S to match.
GAUGE_REFRESH_S = float(os.environ.get("TURNOUT_GAUGE_REFRESH_S", "5.0"))
READY_FRESH_S = 10.0  # a backend heard from this recently counts as ready without another call
UNAVAILABLE_STATUS = (502, 503, 504)  # an upstream answering these has produced nothing: safe to retry elsewhere


# The error answers of the POST endpoints as the OpenAPI document declares them (README's Errors table), each with
# the one error body, so that clients and generated SDKs see what a non-200 carries.
ERROR_RESPONSES = {
    400: "`malformed_json`: the body is not JSON (or not UTF-8); `invalid_option`: an unknown router, a bad "
         "strong_ratio or threshold",
    401: "`unauthorized`: auth is on and no valid `Authorization: Bearer` key was sent",
    413: "`body_too_large`: the body is over api.max_body_bytes",
    422: "`invalid_request`: the body does not match the schema (the message names the field); `invalid_input`: "
         "unusable content, e.g. nothing to score in the messages",
    429: "`rate_limited` / `strong_budget_exceeded`: over the key's request rate / strong-call share (Retry-After)",
    500: "`internal`: a bug",
    502: "`upstream_unavailable`: no upstream could be reached; `upstream_failed`: the chosen upstream failed after "
         "the request was sent",
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
        self.limits = Limits(api.limits.requests_per_s, api.limits.burst, api.limits.max_strong_share,
                             api.limits.strong_window)
        self.routing = config.routing
        self.controllers = self._controllers(self.routing)
        self.http = httpx.AsyncClient(limits=httpx.Limits(max_connections=512, max_keepalive_connections=128))
        self.upstream_keys: dict[str, str | None] = {}  # side -> the key sent upstream (not the clients' keys)
        self.in_flight = 0  # routing calls outstanding (one event loop: no lock needed)
        self.replica = _replica_id()
        self.backend_seen: dict[str, float] = {}  # backend -> monotonic time it last answered (see ready())
        self.backend_routers: dict[str, list[str]] = {}  # backend -> routers its last ready() listed
        self._refresher = threading.Thread(target=self._refresh_gauges, name="turnout-gauges", daemon=True)
        self._refresher.start()
        for side in SIDES:
            upstream = getattr(config.upstreams, side)
            key = os.environ.get(upstream.api_key_env) if upstream.api_key_env else None
            if upstream.api_key_env and not key:
                log.info("%s upstream: $%s is not set; calls go without an Authorization header", side, upstream.api_key_env)
            self.upstream_keys[side] = key

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

        window, min_live = routing.controller.window, routing.controller.min_live
        if name in routing.thresholds:
            return StrongRatioController(threshold=routing.thresholds[name], window=window)
        ratio = routing.strong_ratio
        reference = load_reference(self.config, name)
        if reference is not None:
            return StrongRatioController(strong_ratio=ratio, window=window, reference=reference, min_live=min_live)
        start = calibrated_threshold(self.config, name, ratio)
        if start is None:
            start = 1.0 - ratio  # exact for uniform scores (random); the window corrects the rest
            log.warning("%s: no offline calibration for strong_ratio %s; starting at threshold %.3f", name, ratio, start)
        return StrongRatioController(strong_ratio=ratio, window=window, initial_threshold=start, min_live=min_live)

    def check_router(self, name: str | None) -> str:
        name = name or self.config.routers.default
        if name not in self.controllers:
            raise ConfigError(f"unknown router {name!r}; this service has: {', '.join(self.config.routers.enabled)}")
        return name

    async def route(self, text: str, router: str | None, threshold: float | None, strong_ratio: float | None) -> dict:
        """Score and decide within the routing budget. Returns model, p_strong, threshold, threshold_source,
        router and stage times; request errors pass through as TurnoutErrors, backend failures become
        RoutingUnavailable (timeout, overload, error).

        The budget travels with the request so that a backend skips work nobody waits for any more: without
        it, an overloaded service spends its time on requests that already timed out and then none succeed.
        """
        name = self.check_router(router)
        text = scorable(text)
        routing = self.routing
        if self.in_flight >= routing.max_in_flight:
            # Refused here, a request costs nothing downstream; queued behind capacity it would time out anyway.
            raise RoutingOverloaded(f"routing is overloaded ({self.in_flight} requests in flight); retry later")
        self.in_flight += 1
        try:
            p_strong, stages = await self._score(name, text, routing.timeout_s)
        except ScoringError as exc:  # the router's fault, not the request's: a chat call falls back
            raise RoutingUnavailable(str(exc)) from None
        finally:
            self.in_flight -= 1
        t0 = time.perf_counter()
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
        self._export(name, controller)
        return {"model": model, "p_strong": p_strong, "threshold": float(used[0]), "threshold_source": source,
                "router": name, "stages": stages}

    async def _score(self, name: str, text: str, budget: float) -> tuple[float, dict[str, float]]:
        """p_strong and the backend's stage times; local routers cost microseconds and run right here."""
        from ray.serve.exceptions import BackPressureError

        backend = self.entries[name].backend
        if backend == "local":  # microseconds: no stage of its own
            return float(self.local[name].score([text])[0]), {}
        handle = self.backends[backend]
        response = None

        async def result():
            return await response

        try:
            # The remaining budget, not a wall-clock deadline: the backend may run on another node and clock.
            response = handle.score.remote(text, name, budget) if backend == "embedding" else handle.score.remote(text, budget)
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
        return scored["p_strong"], dict(scored["stages"])

    def state(self) -> dict:
        """Per router: threshold, target, realised strong ratio over the window (this replica's view)."""
        return {name: controller.state() for name, controller in self.controllers.items()}

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

    async def forward(self, side: str, body: dict[str, Any]):
        """POST the body to one side's upstream; returns the httpx response with its body still unread."""
        import httpx

        upstream = getattr(self.config.upstreams, side)
        headers = {"content-type": "application/json"}
        if self.upstream_keys[side]:
            headers["authorization"] = f"Bearer {self.upstream_keys[side]}"
        request = self.http.build_request(
            "POST", f"{upstream.base_url}/chat/completions", content=json.dumps({**body, "model": upstream.model}),
            headers=headers, timeout=httpx.Timeout(upstream.timeout_s, connect=upstream.connect_timeout_s))
        return await self.http.send(request, stream=True)


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
    for err in errors:
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
    return "; ".join(parts) or "invalid request", malformed


def build_api(ingress: IngressDeployment):
    """The FastAPI app of one ingress replica."""
    import httpx
    from fastapi import Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.background import BackgroundTask
    from starlette.exceptions import HTTPException as StarletteHTTPException

    config, metrics = ingress.config, ingress.metrics
    docs = {} if config.api.docs else {"docs_url": None, "redoc_url": None}
    app = FastAPI(title="turnout", version="0.1.0",
                  description="LLM router: strong/weak routing decisions and an OpenAI-compatible proxy", **docs)
    app.add_middleware(BodyLimit, max_bytes=config.api.max_body_bytes, on_refuse=metrics.error)

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
        kind = "invalid_request_error" if exc.http_status < 500 else "service_unavailable"
        headers = None
        if isinstance(exc, RoutingUnavailable):
            headers = {"retry-after": str(exc.retry_after_s)}
        elif isinstance(exc, RateLimited):
            headers = {"retry-after": retry_after_header(exc.retry_after)}
        elif isinstance(exc, Unauthorized):
            headers = {"www-authenticate": "Bearer"}
        return JSONResponse(_error_body(str(exc), kind, exc.code), status_code=exc.http_status, headers=headers)

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
        except Exception as exc:
            return JSONResponse({"status": "not ready", "reason": first_line(_cause(exc))}, status_code=503)
        return {"status": "ready", **ready}

    async def json_body(request: Request) -> None:
        """README's malformed_json for the JSON bodies Python's parser takes but the API does not (`json_problem`).
        Runs before the body is validated; a body FastAPI left unparsed (not a JSON content type) fails there."""
        raw = await request.body()
        if raw and _is_json_type(request.headers.get("content-type")):
            problem = json_problem(raw, await request.json())  # the parse FastAPI made, cached on the request
            if problem:
                raise MalformedBody(f"malformed JSON body: {problem}")

    def caller(request: Request) -> str:
        """The calling key's id after auth and its rate limit (Unauthorized / RateLimited otherwise)."""
        key = ingress.keys.identify(request.headers.get("authorization"))
        ingress.limits.admit(key)
        return key

    @app.get("/v1/routers", summary="thresholds and realised strong ratios (the answering ingress replica's window)")
    async def routers(key: str = Depends(caller)):
        return {"default": config.routers.default, "replica": ingress.replica, "routers": ingress.state()}

    @app.get("/v1/models", summary="model names accepted by /v1/chat/completions")
    async def models(key: str = Depends(caller)):
        names = [SERVICE_MODEL] + [f"router-{r}" for r in config.routers.enabled]
        return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "turnout"} for n in names]}

    @app.post("/v1/route", response_model=RouteResponse, summary="routing decision only",
              responses=error_responses(400, 401, 413, 422, 429, 500, 503), dependencies=[Depends(json_body)])
    async def route(body: RouteRequest, key: str = Depends(caller)) -> RouteResponse:
        start = time.perf_counter()
        name = ingress.check_router(body.router)
        text = body.prompt if body.prompt is not None else scoring_text(
            body.messages, config.scoring.user_turns, config.scoring.max_chars)
        decision = await ingress.route(text[-config.scoring.max_chars:], name, body.threshold, body.strong_ratio)
        ingress.limits.strong(key, decision["model"] == "strong")
        latency_ms = (time.perf_counter() - start) * 1000.0
        metrics.request("/v1/route", name, latency_ms)
        return RouteResponse(latency_ms=latency_ms, **{k: v for k, v in decision.items() if k != "stages"})

    @app.post("/v1/chat/completions", summary="route, then proxy to the chosen OpenAI-compatible upstream",
              description="The upstream's answer is passed through with its status and body, its own errors "
                          "included; the errors below are the service's own. Where /v1/route would answer 503 (no "
                          "routing decision), the call goes to routing.fallback_model instead.",
              responses={200: {"description": "the upstream's completion: JSON, or server-sent events with stream",
                               "content": {"application/json": {}, "text/event-stream": {"schema": SSE_EVENT}}},
                         **error_responses(400, 401, 413, 422, 429, 500, 502)},
              dependencies=[Depends(json_body)])
    async def chat_completions(body: ChatCompletionRequest, request: Request, key: str = Depends(caller)):
        start = time.perf_counter()
        name, threshold = parse_model(body.model, config.routers.default)
        name = ingress.check_router(name)
        text = scoring_text(body.messages, config.scoring.user_turns, config.scoring.max_chars)
        headers = {"x-turnout-router": name}
        try:
            decision = await ingress.route(text, name, threshold, None)
            side = decision["model"]
            ingress.limits.strong(key, side == "strong")
            headers.update({"x-turnout-p-strong": f"{decision['p_strong']:.6f}",
                            "x-turnout-threshold": f"{decision['threshold']:.6f}"})
        except RoutingUnavailable as exc:
            side = config.routing.fallback_model
            reason = exc.code
            metrics.fallback(reason, side)
            _add_fallback(headers, reason)
            log.warning("routing failed (%s): sending to %s", exc, side)
        payload = await request.json()  # the client's body, every field as sent
        t_up = time.perf_counter()
        try:
            upstream, side = await _send(ingress, side, payload, headers)
        except UpstreamError as exc:
            metrics.error("/v1/chat/completions", exc.code)
            if isinstance(exc, UpstreamFailed):  # the client learns which side may bill it, as on success
                headers["x-turnout-model"] = exc.side
            return JSONResponse(_error_body(str(exc), "service_unavailable", exc.code),
                                status_code=exc.http_status, headers=headers)
        headers["x-turnout-model"] = side
        if upstream.headers.get("retry-after"):  # an upstream's 429 says when to come back: the client needs it
            headers["retry-after"] = upstream.headers["retry-after"]
        metrics.stage("upstream", name, (time.perf_counter() - t_up) * 1000.0)
        media_type = upstream.headers.get("content-type", "application/json")
        if upstream.headers.get("content-encoding"):  # raw bytes are passed on: the client decodes them
            headers["content-encoding"] = upstream.headers["content-encoding"]
        if body.stream and upstream.status_code < 400:
            return StreamingResponse(_relay(upstream, metrics, name, start), status_code=upstream.status_code,
                                     media_type=media_type, headers=headers, background=BackgroundTask(upstream.aclose))
        try:
            # raw, as the stream path: aread() would decode a gzip body that then goes out labelled gzip
            content = b"".join([chunk async for chunk in upstream.aiter_raw()])
        except httpx.TransportError as exc:  # sent and maybe generating: never retried on the other side
            metrics.error("/v1/chat/completions", "upstream_failed")
            message = f"{side} upstream failed while answering ({type(exc).__name__})"
            return JSONResponse(_error_body(message, "service_unavailable", "upstream_failed"), status_code=502,
                                headers={k: v for k, v in headers.items() if k != "content-encoding"})
        finally:
            await upstream.aclose()
        if upstream.status_code >= 400:
            metrics.error("/v1/chat/completions", f"upstream_{upstream.status_code}")
        metrics.request("/v1/chat/completions", name, (time.perf_counter() - start) * 1000.0)
        return Response(content, status_code=upstream.status_code, media_type=media_type, headers=headers)

    return app


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` is answered 413, whether it declares its length
    (Content-Length: refused before the app runs) or streams it (counted as it arrives). The app's reader treats
    any error while reading as a parse error, so an oversized stream is cut short instead, and whatever the app
    answers about the cut body is replaced by the 413."""

    def __init__(self, app, max_bytes: int, on_refuse=None) -> None:
        self.app, self.max_bytes, self.on_refuse = app, max_bytes, on_refuse

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, send)
        seen, too_large = 0, False

        async def counted():
            nonlocal seen, too_large
            if too_large:
                return {"type": "http.request", "body": b"", "more_body": False}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    too_large = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded(message):
            if not too_large:
                await send(message)

        await self.app(scope, counted, guarded)
        if too_large:
            await self._refuse(scope, send)

    async def _refuse(self, scope, send) -> None:
        from starlette.responses import JSONResponse

        if self.on_refuse is not None:
            self.on_refuse("unmatched", "body_too_large")  # refused before any route matched
        body = _error_body(f"request body is larger than {self.max_bytes} bytes (api.max_body_bytes)",
                           "invalid_request_error", "body_too_large")
        await JSONResponse(body, status_code=413)(scope, None, send)


def _add_fallback(headers: dict, reason: str) -> None:
    headers["x-turnout-fallback"] = ",".join(filter(None, [headers.get("x-turnout-fallback"), reason]))


async def _relay(upstream, metrics, router: str, start: float):
    """The upstream's stream, byte for byte. If the upstream fails mid-stream the client gets an SSE error event
    (when the stream is not content-encoded: an event cannot be spliced into gzip) and the failure is counted;
    the request latency is recorded when the stream ends, so it means the whole request as for non-streams."""
    import httpx

    try:
        async for chunk in upstream.aiter_raw():
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


async def _send(ingress: IngressDeployment, side: str, payload: dict, headers: dict):
    """Forward to `side`; to the other side (when allowed) only where nothing can have been generated: the
    connection was never made (refused, DNS, connect timeout, no pooled connection) or the upstream answered
    502/503/504 before any body. A failure after the request was sent (a read timeout on a long generation)
    is not retried elsewhere: that would bill the call twice and generate it again."""
    import httpx

    sides = [side]
    if ingress.config.upstreams.fallback_on_error:
        sides.append("weak" if side == "strong" else "strong")
    failures = []
    for i, current in enumerate(sides):
        try:
            upstream = await ingress.forward(current, payload)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:  # nothing was sent
            failures.append(f"{current} upstream unreachable ({type(exc).__name__})")
            reason = "upstream_unreachable"
        except httpx.TransportError as exc:  # sent, maybe generating: no second try on the other side
            failures.append(f"{current} upstream failed after the request was sent ({type(exc).__name__}); "
                            "not retried on the other side")
            log.warning("%s", failures[-1])
            raise UpstreamFailed("; ".join(failures), current) from None
        else:
            if upstream.status_code not in UNAVAILABLE_STATUS or i == len(sides) - 1:
                if i:
                    _add_fallback(headers, reason)
                    ingress.metrics.fallback(reason, current)
                return upstream, current
            await upstream.aclose()
            failures.append(f"{current} upstream answered {upstream.status_code}")
            reason = f"upstream_{upstream.status_code}"
        log.warning("%s", failures[-1])
    raise UpstreamError("; ".join(failures))
