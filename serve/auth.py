"""Inbound API keys and per-key limits of the HTTP API: who may call, how often, and how many strong calls.

- Keys: the config lists SHA-256 digests of the accepted keys, or names a file (a mounted Kubernetes Secret: one
  key, or `sha256:<hex>`, per line) or an environment variable (comma-separated keys); the service never needs
  the keys themselves in its config. A request presents `Authorization: Bearer <key>`; its digest is compared
  with every accepted digest by `hmac.compare_digest`, all of them each time, so the answer's timing says
  nothing about which bytes matched. With no key source configured, auth is off (the embedded default, which
  listens on 127.0.0.1 only, says so at start).
- Rate: a token bucket per key (`requests_per_s`, `burst`); empty -> 429 with Retry-After (seconds until the
  next token).
- Strong budget: per key, the share of strong decisions over its last `strong_window` decisions is capped at
  `max_strong_share`; a request that would go strong beyond the cap is refused with 429 and Retry-After instead
  of silently sent weak (the caller chose a router or threshold; a quiet downgrade would hide the cap).

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
        for line in (raw.strip() for raw in lines):
            if line and not line.startswith("#"):
                digests.append(line.removeprefix("sha256:") if line.startswith("sha256:") else digest(line))
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
    """The last `window` decisions of one key; `check(strong)` refuses a strong one past `max_share`."""

    def __init__(self, max_share: float, window: int) -> None:
        self.max_share, self.window = max_share, window
        self.decisions: deque[bool] = deque(maxlen=window)
        self.n_strong = 0

    def check(self, strong: bool, retry_after: float) -> None:
        if strong and len(self.decisions) >= 1 and (self.n_strong + 1) / (len(self.decisions) + 1) > self.max_share:
            raise RateLimited(f"strong-call budget: at most {self.max_share:.0%} of this key's last {self.window} "
                              "calls may go to the strong model", retry_after, code="strong_budget_exceeded")
        if len(self.decisions) == self.window:
            self.n_strong -= self.decisions[0]
        self.decisions.append(strong)
        self.n_strong += strong


class Limits:
    """Per-key token buckets and strong budgets, created on a key's first request."""

    def __init__(self, requests_per_s: float | None, burst: int, max_strong_share: float | None, strong_window: int,
                 clock=time.monotonic) -> None:
        self.requests_per_s, self.burst, self.clock = requests_per_s, burst, clock
        self.max_strong_share, self.strong_window = max_strong_share, strong_window
        self.buckets: dict[str, TokenBucket] = {}
        self.budgets: dict[str, StrongBudget] = {}

    def admit(self, key: str) -> None:
        if self.requests_per_s is not None:
            bucket = self.buckets.get(key) or self.buckets.setdefault(
                key, TokenBucket(self.requests_per_s, self.burst, self.clock))
            bucket.take()

    def strong(self, key: str, strong: bool) -> None:
        if self.max_strong_share is None:
            return
        budget = self.budgets.get(key) or self.budgets.setdefault(
            key, StrongBudget(self.max_strong_share, self.strong_window))
        # a strong share falls as weak calls arrive; at the key's own rate, about one call's time per window slot
        retry = 1.0 / self.requests_per_s if self.requests_per_s else 1.0
        budget.check(strong, max(1.0, retry))


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
