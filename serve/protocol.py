"""HTTP request and response models, and the small pure functions between them and the routers.

`RouteRequest`/`RouteResponse` are turnout's own API (`POST /v1/route`). `ChatCompletionRequest` validates only
what routing needs from the OpenAI schema (model, messages, stream) and keeps every other field; `upstream_body`
forwards the client's body with `model` replaced, after checking its fields against the allowlist and its `n` and
`max_tokens` against the per-key caps.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from index.errors import ConfigError, InputError, TurnoutError


class RoutingUnavailable(TurnoutError):
    """Routing failed or missed its time budget (not the request's fault)."""

    http_status = 503
    code = "router_unavailable"
    # Seconds a client should wait before retrying (the 503's Retry-After): Ray Serve replaces a failed backend
    # replica in tens of seconds, so an immediate retry would most likely fail the same way.
    retry_after_s = 5


class RoutingTimeout(RoutingUnavailable):
    """No decision within routing.timeout_s; work for the request is dropped wherever it still waits."""

    code = "router_timeout"
    retry_after_s = 1  # a missed budget is a slow moment, not a dead backend


class RoutingOverloaded(RoutingUnavailable):
    """A deployment's queue is full (max_queued_requests): rejected at once instead of waiting to time out."""

    code = "router_overloaded"
    retry_after_s = 1  # overload clears as fast as the queue drains; Retry-After spreads the retries


class BodyTimeout(TurnoutError):
    """The client did not send its whole body within api.body_timeout_s."""

    http_status = 408
    code = "body_timeout"


class BodyTooLarge(TurnoutError):
    """The body is over api.max_body_bytes."""

    http_status = 413
    code = "body_too_large"


class MalformedBody(TurnoutError):
    """A body FastAPI's parser takes but that is not the JSON the API accepts (see `json_problem`)."""

    code = "malformed_json"


ROLES = ("system", "developer", "user", "assistant", "tool", "function")
MAX_MESSAGES = 1000  # checked before any message is validated: a huge list costs one error, not one per item
SERVICE_MODEL = "turnout"  # chat model name meaning "the configured default router and threshold"
_ROUTER_MODEL = re.compile(r"^router-([A-Za-z0-9_]+)(?:-(.+))?$")


class ChatMessage(BaseModel):
    """One OpenAI chat message. Content is a string, a list of content parts, or null (assistant tool calls)."""

    model_config = ConfigDict(extra="allow")

    role: str = Field(description=f"one of {', '.join(ROLES)}")
    content: str | list[dict[str, Any]] | None = Field(None, description="text, or OpenAI content parts")

    @field_validator("role")
    @classmethod
    def _role(cls, role: str) -> str:
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        return role

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, content: Any) -> Any:
        if content is None or isinstance(content, str):
            return content
        if isinstance(content, list):
            for i, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise ValueError(f"content part {i} must be an object with a 'type'")
                if part["type"] == "text" and not isinstance(part.get("text"), str):
                    raise ValueError(f"content part {i} is of type 'text' but its 'text' is not a string")
            return content
        raise ValueError(f"content must be a string or a list of content parts, got {type(content).__name__}")

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        if isinstance(self.content, list):
            return "\n".join(part["text"] for part in self.content if part.get("type") == "text")
        return ""


def _unit(value: float | None, name: str) -> float | None:
    if value is not None and (math.isnan(value) or not 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


class RouteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] | None = Field(
        None, max_length=MAX_MESSAGES, description="an OpenAI chat conversation; its recent user turns are scored")
    prompt: str | None = Field(None, description="a single prompt (instead of messages)")
    router: str | None = Field(None, description="router name; the configured default when absent")
    threshold: float | None = Field(None, description="decide with this threshold in [0, 1] instead of the controller's")
    strong_ratio: float | None = Field(
        None, description="decide with the threshold that sends this share of recent traffic to the strong model")

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, value: float | None) -> float | None:
        return _unit(value, "threshold")

    @field_validator("strong_ratio")
    @classmethod
    def _strong_ratio(cls, value: float | None) -> float | None:
        return _unit(value, "strong_ratio")

    @model_validator(mode="after")
    def _one_of(self) -> RouteRequest:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of 'messages' or 'prompt'")
        if self.threshold is not None and self.strong_ratio is not None:
            raise ValueError("give at most one of 'threshold' or 'strong_ratio'")
        if self.messages is not None and not self.messages:
            raise ValueError("messages must not be empty")
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("prompt must not be empty")
        return self


class RouteResponse(BaseModel):
    model: Literal["strong", "weak"] = Field(description="where the call should go")
    p_strong: float = Field(description="P(strong model's answer beats the weak model's)")
    threshold: float = Field(description="threshold applied: p_strong >= threshold -> strong")
    threshold_source: Literal["request", "request_strong_ratio", "controller", "fixed"] = Field(
        description="where the threshold came from")
    router: str
    latency_ms: float = Field(description="time spent in the service for this request")


class ErrorDetail(BaseModel):
    message: str = Field(description="for people; may change")
    type: str = Field(description="invalid_request_error, service_unavailable or internal_error")
    code: str = Field(description="stable snake-case code that clients may match on (README, Errors)")


class ErrorResponse(BaseModel):
    """The body of every error the service answers itself (OpenAI's error shape)."""

    error: ErrorDetail


class FeedbackRequest(BaseModel):
    """A user's outcome for one captured request: a score, which of two answers was better, or both."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(max_length=64, description="the request's x-turnout-request-id response header")
    score: float | None = Field(
        None, ge=0.0, le=10.0, description="the user's grade of the answer they were served: 1 for thumbs-up and 0 "
        "for thumbs-down, or a 1-10 rating")
    preferred: Literal["strong", "weak", "tie"] | None = Field(
        None, description="which model's answer was better, for a request whose two answers were both shown or "
        "kept (a shadowed request: capture.shadow_rate)")

    @model_validator(mode="after")
    def _something(self) -> FeedbackRequest:
        if self.score is None and self.preferred is None:
            raise ValueError("give a 'score', a 'preferred', or both")
        return self


class FeedbackResponse(BaseModel):
    request_id: str
    recorded: bool = Field(description="true: queued for the capture folder's feedback table")


class UnknownRequest(TurnoutError):
    """Feedback on an id this service did not capture for this key, or captured longer ago than the TTL."""

    http_status = 404
    code = "unknown_request_id"


class CaptureBusy(TurnoutError):
    """The capture writer's queue is full: feedback is refused rather than dropped."""

    http_status = 503
    code = "capture_busy"
    retry_after_s = 1


class ChatCompletionRequest(BaseModel):
    """The fields routing reads; everything else is kept and forwarded as sent."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description="'turnout', 'router-<name>' or 'router-<name>-<threshold>'")
    messages: list[ChatMessage] = Field(description="the conversation", min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False


def upstream_body(payload: dict[str, Any], fields: list[str], max_n: int, max_tokens: int | None) -> dict[str, Any]:
    """The body to forward: the client's fields, each on the allowlist (`api.forward_fields`), with `n` and the
    token limits within the per-key caps, and the token cap as `max_tokens` where the request sets no limit.
    InputError (422) naming what is not."""
    extra = sorted(set(payload) - set(fields))
    if extra:
        raise InputError(f"field(s) {', '.join(map(repr, extra[:5]))} are not forwarded by this service "
                         "(api.forward_fields)")
    n = payload.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= max_n):
        raise InputError(f"n must be a whole number from 1 to {max_n} (api.limits.max_n), got {n!r}")
    for name in ("max_tokens", "max_completion_tokens"):
        value = payload.get(name)
        whole = isinstance(value, int) and not isinstance(value, bool)
        if max_tokens is not None and value is not None and not (whole and 1 <= value <= max_tokens):
            raise InputError(f"{name} must be a whole number from 1 to {max_tokens} (api.limits.max_tokens), got {value!r}")
    if max_tokens is not None and payload.get("max_tokens") is None and payload.get("max_completion_tokens") is None:
        return {**payload, "max_tokens": max_tokens}  # an absent limit would be the upstream's, past the cap
    return payload


# Deep enough for any real request (OpenAI tool and response-format schemas nest a few dozen levels at most), far
# from Python's recursion limit: a body nested ~970 levels deep parses, then overflows the stack when it is
# serialised again for the upstream.
MAX_JSON_DEPTH = 100
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def json_problem(raw: bytes, parsed: Any) -> str | None:
    """Why a parsed JSON body is refused although Python's json module took it, or None: not UTF-8 (json.loads also
    reads UTF-16 and UTF-32, and UTF-8-encoded surrogates), NaN/Infinity or a number past float range (forwarded
    upstream they would be invalid JSON), nesting past MAX_JSON_DEPTH."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8 text"
    if json.detect_encoding(raw) not in ("utf-8", "utf-8-sig"):
        return "not UTF-8 text"
    stack = [(parsed, 1)]
    while stack:  # iterative: the point is not to recurse
        value, depth = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return f"{value} is not a JSON number (NaN, Infinity or out of range)"
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        if depth > MAX_JSON_DEPTH:
            return f"nested deeper than {MAX_JSON_DEPTH} levels"
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list, float)))
    return None


def scorable(text: str) -> str:
    """The text with lone UTF-16 surrogates (legal JSON escapes such as \\ud800, not Unicode characters) replaced by
    U+FFFD: tokenizers refuse them, which would turn a client's odd text into a backend failure."""
    return _LONE_SURROGATE.sub("\ufffd", text) if _LONE_SURROGATE.search(text) else text


def scoring_text(messages: list[ChatMessage], user_turns: int, max_chars: int) -> str:
    """The text a router scores: the last `user_turns` user messages, oldest first, tail-clipped to max_chars."""
    turns = [m.text() for m in messages if m.role == "user"]
    turns = [t for t in turns if t.strip()][-user_turns:]
    if not turns:
        raise InputError("no user message with text content to route on")
    text = "\n\n".join(turns)
    return text[-max_chars:]


def parse_model(model: str, default_router: str) -> tuple[str, float | None]:
    """Chat `model` -> (router, threshold or None): 'turnout', 'router-mf', 'router-mf-0.116' (RouteLLM's form)."""
    if model == SERVICE_MODEL:
        return default_router, None
    match = _ROUTER_MODEL.match(model)
    if not match:
        raise ConfigError(
            f"model must be '{SERVICE_MODEL}', 'router-<name>' or 'router-<name>-<threshold>', got {model!r}")
    router, threshold = match.group(1), match.group(2)
    if threshold is None:
        return router, None
    try:
        value = float(threshold)
    except ValueError:
        raise ConfigError(f"model {model!r}: threshold {threshold!r} is not a number") from None
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"model {model!r}: threshold must be in [0, 1], got {value}")
    return router, value
