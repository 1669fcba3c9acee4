"""IngressDeployment: the HTTP API (FastAPI), request validation, error mapping and the upstream proxy.

Endpoints:
- `POST /v1/route` {messages | prompt, router?, threshold? | strong_ratio?} -> RouteResponse
- `POST /v1/chat/completions` (OpenAI schema): route, then forward to the chosen upstream with `model` replaced;
  streaming is passed through byte for byte; the decision is in `x-turnout-*` response headers
- `GET /v1/models`, `GET /v1/routers` (thresholds and realised strong ratios), `GET /healthz`, `GET /readyz`
- OpenAPI docs at `/docs`

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
import os
import time
from typing import Any

from models.errors import ConfigError, TurnoutError
from serve.config import SIDES, TurnoutConfig
from serve.protocol import (
    SERVICE_MODEL,
    ChatCompletionRequest,
    RouteRequest,
    RouteResponse,
    RoutingOverloaded,
    RoutingTimeout,
    RoutingUnavailable,
    parse_model,
    scoring_text,
)

log = logging.getLogger(__name__)

UNAVAILABLE_STATUS = (502, 503, 504)  # an upstream answering these has produced nothing: safe to retry elsewhere


class UpstreamError(TurnoutError):
    """No upstream could answer."""

    http_status = 502


class IngressDeployment:
    def __init__(self, config: TurnoutConfig, router):
        import httpx

        from serve.metrics import ServeMetrics

        self.config = config
        self.router = router
        self.metrics = ServeMetrics()
        self.http = httpx.AsyncClient(limits=httpx.Limits(max_connections=512, max_keepalive_connections=128))
        self.api_keys: dict[str, str | None] = {}
        self.in_flight = 0  # routing calls outstanding (one event loop: no lock needed)
        for side in SIDES:
            upstream = getattr(config.upstreams, side)
            key = os.environ.get(upstream.api_key_env) if upstream.api_key_env else None
            if upstream.api_key_env and not key:
                log.info("%s upstream: $%s is not set; calls go without an Authorization header", side, upstream.api_key_env)
            self.api_keys[side] = key

    def __serve_build_asgi_app__(self):
        return build_api(self)

    # --------------------------------------------------------------------------------------------- routing

    async def route(self, text: str, router: str | None, threshold: float | None, strong_ratio: float | None) -> dict:
        """Ask the router deployment, within the routing budget; request errors pass through as TurnoutErrors.

        The deadline travels with the request so that a replica skips work nobody waits for any more: without
        it, an overloaded service spends its time on requests that already timed out and then none succeed.
        """
        from ray.serve.exceptions import BackPressureError

        routing = self.config.routing
        if self.in_flight >= routing.max_in_flight:
            # Refused here, a request costs one hop; queued behind capacity it would time out anyway.
            raise RoutingOverloaded(f"routing is overloaded ({self.in_flight} requests in flight); retry later")
        budget = routing.timeout_s
        self.in_flight += 1
        response = self.router.route.remote(text, router, threshold, strong_ratio, time.time() + budget)

        async def result():
            return await response

        try:
            return await asyncio.wait_for(result(), budget)
        except asyncio.TimeoutError:
            response.cancel()
            raise RoutingTimeout(f"routing took longer than {budget}s") from None
        except Exception as exc:  # Ray re-raises a replica's exception wrapped, with the remote traceback as text
            cause = _cause(exc)
            if isinstance(cause, TurnoutError):
                raise cause from None
            if isinstance(cause, BackPressureError):
                raise RoutingOverloaded("routing is overloaded (queue full); retry later") from None
            log.warning("router deployment failed: %s", _one_line(exc))
            raise RoutingUnavailable(f"router unavailable: {type(cause).__name__}") from exc
        finally:
            self.in_flight -= 1

    def check_router(self, name: str | None) -> str:
        name = name or self.config.routers.default
        if name not in self.config.routers.enabled:
            raise ConfigError(f"unknown router {name!r}; this service has: {', '.join(self.config.routers.enabled)}")
        return name

    # -------------------------------------------------------------------------------------------- upstream

    async def forward(self, side: str, body: dict[str, Any]):
        """POST the body to one side's upstream; returns the httpx response with its body still unread."""
        import httpx

        upstream = getattr(self.config.upstreams, side)
        headers = {"content-type": "application/json"}
        if self.api_keys[side]:
            headers["authorization"] = f"Bearer {self.api_keys[side]}"
        request = self.http.build_request(
            "POST", f"{upstream.base_url}/chat/completions", content=json.dumps({**body, "model": upstream.model}),
            headers=headers, timeout=httpx.Timeout(upstream.timeout_s, connect=upstream.connect_timeout_s))
        return await self.http.send(request, stream=True)


def _cause(exc: BaseException) -> BaseException:
    """The user exception inside a Ray task error (Ray wraps what a replica raised)."""
    return getattr(exc, "cause", None) or exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _error_body(message: str, kind: str, code: str) -> dict:
    return {"error": {"message": message, "type": kind, "code": code}}


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
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.background import BackgroundTask

    config, metrics = ingress.config, ingress.metrics
    app = FastAPI(title="turnout", version="0.1.0",
                  description="LLM router: strong/weak routing decisions and an OpenAI-compatible proxy")

    def endpoint_of(request: Request) -> str:
        return request.url.path

    @app.exception_handler(TurnoutError)
    async def turnout_error(request: Request, exc: TurnoutError):
        reason = type(exc).__name__
        metrics.error(endpoint_of(request), reason)
        kind = "invalid_request_error" if exc.http_status < 500 else "service_unavailable"
        # Overload clears as fast as the queue drains; a client that honours Retry-After spreads its retries.
        headers = {"retry-after": "1"} if isinstance(exc, RoutingOverloaded) else None
        return JSONResponse(_error_body(str(exc), kind, reason), status_code=exc.http_status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        message, malformed = _validation_message(exc.errors())
        if not malformed and any(tuple(e.get("loc", ())) == ("body",) for e in exc.errors()):
            try:  # a body sent without a JSON content type arrives unparsed: say whether it was JSON at all
                json.loads(await request.body())
            except ValueError as err:
                message, malformed = f"malformed JSON body: {err}", True
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
            ready = await asyncio.wait_for(_await(ingress.router.ready.remote()), 5.0)
        except Exception as exc:
            return JSONResponse({"status": "not ready", "reason": _one_line(_cause(exc)) or type(exc).__name__}, status_code=503)
        return {"status": "ready", **ready}

    @app.get("/v1/routers", summary="thresholds and realised strong ratios (one router replica's window)")
    async def routers():
        state = await asyncio.wait_for(_await(ingress.router.state.remote()), 5.0)
        return {"default": config.routers.default, "routers": state}

    @app.get("/v1/models", summary="model names accepted by /v1/chat/completions")
    async def models():
        names = [SERVICE_MODEL] + [f"router-{r}" for r in config.routers.enabled]
        return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "turnout"} for n in names]}

    @app.post("/v1/route", response_model=RouteResponse, summary="routing decision only")
    async def route(body: RouteRequest) -> RouteResponse:
        start = time.perf_counter()
        name = ingress.check_router(body.router)
        text = body.prompt if body.prompt is not None else scoring_text(
            body.messages, config.scoring.user_turns, config.scoring.max_chars)
        decision = await ingress.route(text[-config.scoring.max_chars:], name, body.threshold, body.strong_ratio)
        latency_ms = (time.perf_counter() - start) * 1000.0
        metrics.request("/v1/route", name, latency_ms)
        return RouteResponse(latency_ms=latency_ms, **{k: v for k, v in decision.items() if k != "stages"})

    @app.post("/v1/chat/completions", summary="route, then proxy to the chosen OpenAI-compatible upstream")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        start = time.perf_counter()
        name, threshold = parse_model(body.model, config.routers.default)
        name = ingress.check_router(name)
        text = scoring_text(body.messages, config.scoring.user_turns, config.scoring.max_chars)
        headers = {"x-turnout-router": name}
        try:
            decision = await ingress.route(text, name, threshold, None)
            side = decision["model"]
            headers.update({"x-turnout-p-strong": f"{decision['p_strong']:.6f}",
                            "x-turnout-threshold": f"{decision['threshold']:.6f}"})
        except RoutingUnavailable as exc:
            side = config.routing.fallback_model
            reason = {RoutingTimeout: "router_timeout", RoutingOverloaded: "router_overloaded"}.get(
                type(exc), "router_error")
            metrics.fallback(reason, side)
            _add_fallback(headers, reason)
            log.warning("routing failed (%s): sending to %s", exc, side)
        payload = await request.json()  # the client's body, every field as sent
        t_up = time.perf_counter()
        try:
            upstream, side = await _send(ingress, side, payload, headers)
        except UpstreamError as exc:
            metrics.error("/v1/chat/completions", "UpstreamError")
            return JSONResponse(_error_body(str(exc), "service_unavailable", "UpstreamError"),
                                status_code=exc.http_status, headers=headers)
        headers["x-turnout-model"] = side
        metrics.stage("upstream", name, (time.perf_counter() - t_up) * 1000.0)
        media_type = upstream.headers.get("content-type", "application/json")
        if body.stream and upstream.status_code < 400:
            metrics.request("/v1/chat/completions", name, (time.perf_counter() - start) * 1000.0)
            return StreamingResponse(upstream.aiter_raw(), status_code=upstream.status_code, media_type=media_type,
                                     headers=headers, background=BackgroundTask(upstream.aclose))
        try:
            content = await upstream.aread()
        finally:
            await upstream.aclose()
        if upstream.status_code >= 400:
            metrics.error("/v1/chat/completions", f"upstream_{upstream.status_code}")
        metrics.request("/v1/chat/completions", name, (time.perf_counter() - start) * 1000.0)
        return Response(content, status_code=upstream.status_code, media_type=media_type, headers=headers)

    return app


def _add_fallback(headers: dict, reason: str) -> None:
    headers["x-turnout-fallback"] = ",".join(filter(None, [headers.get("x-turnout-fallback"), reason]))


async def _await(response):
    return await response


async def _send(ingress: IngressDeployment, side: str, payload: dict, headers: dict):
    """Forward to `side`; if it cannot be reached (or says 502/503/504), to the other side when allowed."""
    import httpx

    sides = [side]
    if ingress.config.upstreams.fallback_on_error:
        sides.append("weak" if side == "strong" else "strong")
    failures = []
    for i, current in enumerate(sides):
        try:
            upstream = await ingress.forward(current, payload)
        except httpx.TransportError as exc:  # refused, DNS, connect timeout
            failures.append(f"{current} upstream unreachable ({type(exc).__name__})")
            reason = "upstream_unreachable"
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
