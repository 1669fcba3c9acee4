"""Inbound API keys and per-key limits of the HTTP API: who may call, how often, and how many strong calls.

- Keys: the config lists SHA-256 digests of the accepted keys, or names a file (a mounted Kubernetes Secret: one
  key, or `sha256:<hex>`, per line) or an environment variable (comma-separated keys); the service never needs
  the keys themselves in its config. A request presents `Authorization: Bearer <key>`; its digest is compared
  with every accepted digest by `hmac.compare_digest`, all of them each time, so the answer's timing says
  nothing about which bytes matched. With no key source configured, auth is off (the embedded default, which
  listens on 127.0.0.1 only, says so at start).
- Rate: a token bucket per key (`requests_per_s`, `burst`); empty -> 429 with Retry-After (seconds until the
  next token).
- Strong budget: per key, the share of strong calls over its last `strong_window` billed upstream calls (chat
  completions an upstream answered, counted by the model that answered; never /v1/route decisions) is capped at
  `max_strong_share`. A call the router sends strong beyond the cap is refused with 429 and Retry-After instead of
  silently sent weak (the caller chose a router or threshold; a quiet downgrade would hide the cap); a call that
  was going strong only as a fallback goes weak instead. Calls in flight count as strong from the decision on, so
  concurrent requests cannot all pass one check. A key's first call may be strong unless the cap is 0.
- Fleet: limits live in each ingress replica's memory. The rate and burst are divided by `ingress_replicas`
  (filled from the file's IngressDeployment; the fleet then allows the configured rate when Serve spreads a
  key's calls evenly); the share needs no division (each replica holds it on its sample). A restart starts every
  key afresh.

Keys are identified in logs and limits by the first 12 hex digits of their digest, never by the key.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import time
from collections import deque
from pathlib import Path

from index.errors import ConfigError, TurnoutError

ANONYMOUS = "anonymous"  # the one "key" every request counts against when auth is off


class Unauthorized(TurnoutError):
    """No valid API key."""

    http_status = 401
    code = "unauthorized"


class RateLimited(TurnoutError):
    """Over a per-key limit; `retry_after` seconds until the request would be accepted."""

    http_status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: float, code: str = "rate_limited") -> None:
        super().__init__(message)
        self.retry_after, self.code = retry_after, code


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def load_digests(sha256: list[str], path: str | None = None, env: str | None = None) -> list[bytes]:
    """Every accepted key digest from the config's list, the key file and the environment variable."""
    digests = list(sha256)
    if path is not None:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"auth.api_keys_file {path}: {exc.strerror}") from None
        keys = [line for line in (raw.strip() for raw in lines) if line and not line.startswith("#")]
        if not keys:  # an empty Secret must not turn auth off
            raise ConfigError(f"auth.api_keys_file {path} holds no key")
        digests += [line.removeprefix("sha256:") if line.startswith("sha256:") else digest(line) for line in keys]
    if env is not None:
        value = os.environ.get(env, "")
        digests += [digest(k.strip()) for k in value.split(",") if k.strip()]
    bad = [d for d in digests if len(d) != 64 or any(c not in "0123456789abcdef" for c in d.lower())]
    if bad:
        raise ConfigError(f"auth: {len(bad)} key digest(s) are not 64 hex digits (SHA-256)")
    return [bytes.fromhex(d) for d in digests]


class KeyRing:
    """The accepted digests; `identify(authorization header)` -> key id, or Unauthorized."""

    def __init__(self, digests: list[bytes]) -> None:
        self.digests = digests

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    def identify(self, authorization: str | None) -> str:
        if not self.enabled:
            return ANONYMOUS
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("missing API key: send Authorization: Bearer <key>")
        presented = hashlib.sha256(key.strip().encode()).digest()
        match = False
        for accepted in self.digests:  # every comparison, whatever matched: no timing signal
            match |= hmac.compare_digest(presented, accepted)
        if not match:
            raise Unauthorized("invalid API key")
        return presented.hex()[:12]


class Forbidden(TurnoutError):
    """A valid key asked for something it may not (its own threshold)."""

    http_status = 403
    code = "threshold_not_allowed"


class TokenBucket:
    """`rate` tokens per second up to `burst`; `take()` one or RateLimited with the wait until the next."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens, self.stamp = float(burst), clock()

    def take(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            raise RateLimited(f"rate limit: {self.rate:g} requests/s (burst {self.burst}) per key",
                              (1.0 - self.tokens) / self.rate)
        self.tokens -= 1.0


class StrongBudget:
    """One key's last `window` billed calls (True: strong) and its strong calls in flight."""

    def __init__(self, max_share: float, window: int) -> None:
        self.max_share, self.window = max_share, window
        self.calls: deque[bool] = deque(maxlen=window)
        self.n_strong = 0
        self.pending_strong = 0  # strong calls decided and not yet settled: counted as billed

    def allows_strong(self) -> bool:
        """Whether one more strong call keeps the share within the cap (a first call only if the cap is above 0)."""
        strong, n = self.n_strong + self.pending_strong, len(self.calls) + self.pending_strong
        if n == 0:
            return self.max_share > 0
        return (strong + 1) / (n + 1) <= self.max_share

    def record(self, strong: bool) -> None:
        if len(self.calls) == self.window:
            self.n_strong -= self.calls[0]
        self.calls.append(strong)
        self.n_strong += strong


class Charge:
    """One chat call's claim on its key's strong budget, from the routing decision to the upstream's answer:
    `move` to another side (a fallback) only where the budget allows it, `settle` once with whether an upstream
    billed the call. Without a budget every side is allowed and nothing is recorded."""

    def __init__(self, budget: StrongBudget | None, side: str) -> None:
        self.budget, self.side = budget, None
        if not self.move(side):
            raise ValueError("Charge of a side the budget refuses: check allowed() first")

    def allowed(self, side: str) -> bool:
        return self.budget is None or side != "strong" or self.side == "strong" or self.budget.allows_strong()

    def move(self, side: str) -> bool:
        if not self.allowed(side):
            return False
        if self.budget is not None:
            self.budget.pending_strong += (side == "strong") - (self.side == "strong")
        self.side = side
        return True

    def settle(self, billed: bool) -> None:
        if self.budget is not None and self.side is not None:
            self.budget.pending_strong -= self.side == "strong"
            if billed:
                self.budget.record(self.side == "strong")
        self.side = None


class Limits:
    """Per-key token buckets and strong budgets, created on a key's first request. Rate and burst are this
    replica's part of the fleet's (divided by `replicas`)."""

    def __init__(self, requests_per_s: float | None, burst: int, max_strong_share: float | None, strong_window: int,
                 replicas: int | None = 1, clock=time.monotonic) -> None:
        replicas = replicas or 1
        self.requests_per_s = None if requests_per_s is None else requests_per_s / replicas
        self.burst, self.clock = max(1, math.ceil(burst / replicas)), clock
        self.max_strong_share, self.strong_window = max_strong_share, strong_window
        self.buckets: dict[str, TokenBucket] = {}
        self.budgets: dict[str, StrongBudget] = {}

    @classmethod
    def from_config(cls, limits, clock=time.monotonic) -> Limits:
        """From `api.limits` (serve.config.KeyLimitsConfig)."""
        return cls(limits.requests_per_s, limits.burst, limits.max_strong_share, limits.strong_window,
                   limits.ingress_replicas, clock)

    def admit(self, key: str) -> None:
        if self.requests_per_s is not None:
            bucket = self.buckets.get(key) or self.buckets.setdefault(
                key, TokenBucket(self.requests_per_s, self.burst, self.clock))
            bucket.take()

    def charge(self, key: str, side: str, fallback: bool = False) -> Charge:
        """The claim of one call going to `side`. A strong call past the cap: 429 strong_budget_exceeded, or the
        weak side where strong was only a fallback (`fallback`)."""
        budget = None
        if self.max_strong_share is not None:
            budget = self.budgets.get(key) or self.budgets.setdefault(
                key, StrongBudget(self.max_strong_share, self.strong_window))
        if side == "strong" and budget is not None and not budget.allows_strong():
            if fallback:
                return Charge(budget, "weak")
            # a strong share falls as weak calls arrive; at the key's own rate, about one call's time per slot
            retry = max(1.0, 1.0 / self.requests_per_s if self.requests_per_s else 1.0)
            raise RateLimited(f"strong-call budget: at most {self.max_strong_share:.0%} of this key's last "
                              f"{self.strong_window} calls may go to the strong model", retry,
                              code="strong_budget_exceeded")
        return Charge(budget, side)


def may_choose_threshold(setting, key: str) -> bool:
    """Whether `key` may bring its own threshold (api.auth.client_thresholds: "all", "none" or key ids)."""
    if setting == "all":
        return True
    return setting != "none" and key in setting


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
