"""Captured traffic for the learning loop: request ids, sampled requests, answers and feedback in Parquet.

The RouteLLM paper's gains on MMLU and GSM8K come from in-domain prompts labelled with gold answers or an LLM
judge (arXiv 2406.18665, section 5). This module keeps what a gateway needs to produce such labels from its own
traffic, without touching a request's latency or outcome:

- `RequestIds`: every response carries `x-turnout-request-id`. An id is signed (HMAC-SHA256 with the fleet's
  secret, `capture.secret_env`) over its issue time, whether it was captured and shadowed, and the calling key,
  so that any ingress replica can accept feedback on an id another replica issued, with no shared store, and only
  from the key that made the request.
- `CaptureWriter`: records go into a bounded queue and a writer thread writes each table (`requests`, `answers`,
  `feedback`) as whole Parquet files under `capture.dir/<table>/`, closed at `rotate_rows` rows or `rotate_s`
  seconds and renamed into place, so a reader never sees a half-written file. A full queue or a failed write drops
  the record, never the request, and is counted (`turnout_capture_records_total{outcome}`).
- `ShadowBudget`: the spend of shadow calls (the unchosen model, called after the client's answer is sent) over a
  rolling window, priced from the upstreams' token prices.

`turnout label` joins the tables on `request_id`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import queue
import random
import secrets
import struct
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from index.errors import ConfigError

log = logging.getLogger(__name__)

TABLES = ("requests", "answers", "feedback")
ID_PREFIX = "req-"
_CAPTURED, _SHADOWED = 1, 2  # flag bits signed into a request id
_MAC_BYTES = 10


def schemas() -> dict[str, Any]:
    """The tables' Arrow schemas (pyarrow is imported here, never at import)."""
    import pyarrow as pa

    when = pa.timestamp("ms", tz="UTC")
    return {
        "requests": pa.schema([
            ("request_id", pa.string()), ("time", when), ("endpoint", pa.string()), ("key", pa.string()),
            ("replica", pa.string()), ("router", pa.string()),
            ("models", pa.list_(pa.string())),  # the candidate upstream models, strong first
            ("p_strong", pa.float64()), ("threshold", pa.float64()), ("threshold_source", pa.string()),
            ("decision", pa.string()),  # strong | weak: the router's choice; null when routing failed
            ("fallback", pa.string()),  # why the call went elsewhere, if it did
            ("shadowed", pa.bool_()),
            ("prompt", pa.string()), ("messages", pa.string()),  # the scored text, the messages as JSON
            ("prompt_sha256", pa.string()), ("embedding", pa.list_(pa.float32())),
        ]),
        "answers": pa.schema([
            ("request_id", pa.string()), ("time", when), ("side", pa.string()), ("model", pa.string()),
            ("shadow", pa.bool_()),  # called for the learning loop, not for the client
            ("status", pa.int32()), ("answer", pa.string()),
            ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()), ("cost_usd", pa.float64()),
            ("error", pa.string()),
        ]),
        "feedback": pa.schema([
            ("request_id", pa.string()), ("time", when), ("key", pa.string()),
            ("score", pa.float64()), ("preferred", pa.string()),
        ]),
    }


# ------------------------------------------------------------------------------------------------ request ids


@dataclass(frozen=True)
class Issued:
    time: float
    captured: bool
    shadowed: bool


class RequestIds:
    """Signed request ids: `issue(key, ...)` and `check(id, key)` -> Issued, or None for an id this fleet did not
    issue to this key, or one older than `ttl_s`."""

    def __init__(self, secret: bytes, ttl_s: float, clock=time.time) -> None:
        self.secret, self.ttl_s, self.clock = secret, ttl_s, clock

    def issue(self, key: str, captured: bool = False, shadowed: bool = False) -> str:
        flags = (_CAPTURED if captured else 0) | (_SHADOWED if shadowed else 0)
        body = struct.pack(">IB", int(self.clock()), flags) + os.urandom(8)
        raw = body + self._mac(body, key)
        return ID_PREFIX + base64.b32encode(raw).decode().rstrip("=").lower()

    def check(self, request_id: str, key: str) -> Issued | None:
        if not request_id.startswith(ID_PREFIX) or len(request_id) > 64:
            return None
        encoded = request_id[len(ID_PREFIX):].upper()
        try:
            raw = base64.b32decode(encoded + "=" * (-len(encoded) % 8))
        except ValueError:
            return None
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if len(body) != 13 or not hmac.compare_digest(mac, self._mac(body, key)):
            return None
        issued, flags = struct.unpack(">IB", body[:5])
        if not 0 <= self.clock() - issued <= self.ttl_s:
            return None
        return Issued(float(issued), bool(flags & _CAPTURED), bool(flags & _SHADOWED))

    def _mac(self, body: bytes, key: str) -> bytes:
        return hmac.new(self.secret, body + key.encode(), hashlib.sha256).digest()[:_MAC_BYTES]


def fleet_secret(env: str, replicas: int = 1) -> bytes:
    """The secret from `$env`. Unset, a random one for this process (ids then check only where issued), which only a
    single ingress replica can use: with more, feedback would be refused on most ids, so that is a ConfigError."""
    value = os.environ.get(env, "")
    if value:
        return value.encode()
    if replicas > 1:
        raise ConfigError(f"capture is on and the ingress may run {replicas} replicas, but ${env} is not set: set it "
                          "to the same secret on every replica (KubeRay: the Secret turnout-capture, key secret)")
    log.warning("$%s is not set: request ids are signed with this replica's own secret, so feedback is accepted "
                "only by the replica that answered the request; set it on every replica of a fleet", env)
    return secrets.token_bytes(32)


# ------------------------------------------------------------------------------------------------ the writer


class CaptureWriter:
    """Records into `root/<table>/*.parquet` from a writer thread; `offer` never blocks."""

    def __init__(self, root: Path, replica: str, queue_size: int, rotate_rows: int, rotate_s: float,
                 max_total_bytes: int, on_record=lambda table, outcome, n: None) -> None:
        self.root, self.replica = Path(root), replica
        self.rotate_rows, self.rotate_s, self.max_total_bytes = rotate_rows, rotate_s, max_total_bytes
        self.on_record = on_record
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.schemas = schemas()
        self.sequence = 0
        for table in TABLES:
            (self.root / table).mkdir(parents=True, exist_ok=True)
        self.thread = threading.Thread(target=self._run, name="turnout-capture", daemon=True)
        self.thread.start()

    def offer(self, table: str, row: dict[str, Any]) -> bool:
        try:
            self.queue.put_nowait((table, row))
        except queue.Full:
            self.on_record(table, "dropped_queue_full", 1)
            return False
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued and stop the thread."""
        if self.thread.is_alive():
            self.queue.put((None, None))
            self.thread.join(timeout_s)

    def _run(self) -> None:
        rows: dict[str, list[dict]] = {table: [] for table in TABLES}
        opened: dict[str, float] = {}
        while True:
            due = [opened[t] + self.rotate_s for t in opened]
            wait = max(0.0, min(due) - time.monotonic()) if due else None
            try:
                table, row = self.queue.get(timeout=wait)
            except queue.Empty:
                table, row = "", None
            if table is None:  # close(): write everything and stop
                for name in TABLES:
                    self._flush(name, rows)
                return
            if row is not None:
                rows[table].append(row)
                opened.setdefault(table, time.monotonic())
            for name in list(opened):
                if len(rows[name]) >= self.rotate_rows or time.monotonic() >= opened[name] + self.rotate_s:
                    self._flush(name, rows)
                    del opened[name]

    def _flush(self, table: str, rows: dict[str, list[dict]]) -> None:
        batch, rows[table] = rows[table], []
        if not batch:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.sequence += 1
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        final = self.root / table / f"{stamp}-{self.replica}-{self.sequence:06d}.parquet"
        partial = final.with_name(f".{final.name}.partial")  # readers skip dot files
        try:
            pq.write_table(pa.Table.from_pylist(batch, schema=self.schemas[table]), partial)
            os.replace(partial, final)
        except Exception as exc:  # a full disk, a bad row: the records are lost, the service is not
            log.warning("capture: could not write %d %s records: %s", len(batch), table, exc)
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            self.on_record(table, "dropped_write_failed", len(batch))
            return
        self.on_record(table, "written", len(batch))
        try:
            self._bound()
        except OSError as exc:  # another replica removing the same files: the next write bounds again
            log.warning("capture: could not bound the folder: %s", exc)

    def _bound(self) -> None:
        """Remove the oldest files while the folder is over max_total_bytes."""
        files = []
        for path in (p for t in TABLES for p in (self.root / t).glob("*.parquet")):
            with contextlib.suppress(FileNotFoundError):  # another replica removed it first
                stat = path.stat()
                files.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.max_total_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
            log.warning("capture: removed %s (capture.max_total_bytes)", path.name)


# ------------------------------------------------------------------------------------------------ shadow calls


class ShadowBudget:
    """USD spent on shadow calls over the last `window_s`; `room()` says whether another call may start."""

    def __init__(self, budget_usd: float, window_s: float, max_in_flight: int, clock=time.monotonic) -> None:
        self.budget_usd, self.window_s, self.max_in_flight, self.clock = budget_usd, window_s, max_in_flight, clock
        self.spent: deque[tuple[float, float]] = deque()
        self.in_flight = 0

    def total(self) -> float:
        now = self.clock()
        while self.spent and self.spent[0][0] <= now - self.window_s:
            self.spent.popleft()
        return sum(usd for _, usd in self.spent)

    def room(self) -> str | None:
        """None if a call may start, else why not (a metric label)."""
        if self.in_flight >= self.max_in_flight:
            return "skipped_busy"
        if self.total() >= self.budget_usd:
            return "skipped_budget"
        return None

    def add(self, usd: float) -> None:
        self.spent.append((self.clock(), usd))


# ------------------------------------------------------------------------------------------------ answers


def answer_fields(raw: bytes, encoding: str | None, streamed: bool) -> dict[str, Any]:
    """The answer's text and token counts from an upstream's raw bytes (a chat.completion, or its server-sent
    chunks): {"answer", "prompt_tokens", "completion_tokens", "error"}. Only the first choice is kept."""
    out: dict[str, Any] = {"answer": None, "prompt_tokens": None, "completion_tokens": None, "error": None}
    try:
        if encoding in ("gzip", "deflate"):
            raw = zlib.decompressobj(wbits=47).decompress(raw)  # 47: gzip or zlib header, detected
        elif encoding and encoding != "identity":
            out["error"] = f"content-encoding {encoding} not decoded"
            return out
        text = raw.decode("utf-8")
        if streamed:
            pieces, usage = [], None
            for line in text.splitlines():
                if not line.startswith("data:") or line[5:].strip() in ("", "[DONE]"):
                    continue
                chunk = json.loads(line[5:])
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    if choice.get("index", 0) == 0:
                        pieces.append((choice.get("delta") or {}).get("content") or "")
            out["answer"] = "".join(pieces)
        else:
            body = json.loads(text)
            usage = body.get("usage")
            choices = body.get("choices") or [{}]
            out["answer"] = (choices[0].get("message") or {}).get("content")
        if isinstance(usage, dict):
            out["prompt_tokens"] = usage.get("prompt_tokens")
            out["completion_tokens"] = usage.get("completion_tokens")
    except (ValueError, AttributeError, TypeError, zlib.error) as exc:
        out["error"] = f"unreadable answer ({type(exc).__name__})"
    return out


def draw_sample(capture_rate: float, shadow_rate: float, chat: bool) -> tuple[bool, bool]:
    """(captured, shadowed) for one routed request; a shadowed request is always captured."""
    shadowed = chat and shadow_rate > 0 and random.random() < shadow_rate
    return shadowed or (capture_rate > 0 and random.random() < capture_rate), shadowed

