"""MicroBatcher: requests that arrive while a batch runs form the next batch; a lone request runs at once.

Both backend deployments (retrieval, classifier) score a batch in one blocking call (MiniLM forward pass, vLLM
engine step). What pays is to gather the requests that queued during the previous call, not to wait for more:

- `@serve.batch` in Ray 2.60 closes a batch as soon as its wait expires and queues it for the next free slot,
  so it does not gather what arrives while the previous batch holds the model. With no wait, 8 callers got
  batches of barely more than one request on average (classifier; see BENCHMARKS.md, 'causal_llm route'); with
  a wait, a lone request pays it.
- Here one task takes up to `max_batch_size` waiting requests whenever the previous call returns, so batch size
  follows load by itself: 1 when idle, up to the maximum under overload.

Requests carry their remaining budget in seconds (not a wall-clock deadline: the caller runs in another process,
maybe on another node, and clock skew between them must not drop everything); the budget becomes a deadline on
this process's monotonic clock when the request arrives. Requests that would be past it by the time their batch
ends are answered None without being computed, since under overload the queue holds requests whose callers give
up before an answer could reach them, and computing them would starve the live ones. When a batch ends is
estimated per item plus a fixed overhead (`BatchTimer`), from the batches run so far: one 32-item batch's
duration says little about a lone request's. Callers that were cancelled are skipped the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class BatchTimer:
    """Expected duration of a batch of n items: overhead + n x per-item time, least squares over recent batches."""

    def __init__(self, history: int = 64) -> None:
        self.batches: deque[tuple[int, float]] = deque(maxlen=history)

    def record(self, n: int, seconds: float) -> None:
        self.batches.append((n, seconds))

    def expected(self, n: int) -> float:
        if not self.batches:
            return 0.0
        sizes = np.array([b[0] for b in self.batches], dtype=np.float64)
        times = np.array([b[1] for b in self.batches], dtype=np.float64)
        if np.ptp(sizes) == 0:  # one size seen so far: all of it per item (a lone request gets the smallest share)
            return float(times.mean() / sizes[0] * n)
        per_item, overhead = np.polyfit(sizes, times, 1)
        per_item, overhead = max(per_item, 0.0), max(overhead, 0.0)
        return float(overhead + per_item * n)


class MicroBatcher:
    """`await submit(item, budget_s)` -> process([...items])'s answer for that item, or None past its budget.

    `process` is a coroutine function from a list of items to one result per item; it may block the loop (the
    requests arriving meanwhile queue up and form the next batch) or hand the work to a thread (the classifier's
    engine thread). `on_drop(n)` counts expired requests.
    """

    def __init__(self, process: Callable[[list[Any]], Awaitable[list[Any]]], max_batch_size: int, name: str,
                 on_drop: Callable[[int], None] | None = None) -> None:
        self.process, self.max_batch_size, self.name, self.on_drop = process, max_batch_size, name, on_drop
        self.waiting: list[tuple[Any, float | None, asyncio.Future]] = []
        self.arrived: asyncio.Event | None = None
        self.task: asyncio.Task | None = None  # started by the first request, on the replica's event loop
        self.batches = 0
        self.items = 0
        self.timer = BatchTimer()  # how long the next batch is expected to take, by its size

    async def submit(self, item: Any, budget_s: float | None = None) -> Any:
        """`budget_s`: seconds the caller still waits (None: no limit)."""
        if self.task is None or self.task.done():
            self.arrived = asyncio.Event()
            self.task = asyncio.create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        deadline = None if budget_s is None else time.monotonic() + budget_s
        self.waiting.append((item, deadline, future))
        self.arrived.set()
        return await future

    @property
    def mean_batch(self) -> float:
        return self.items / self.batches if self.batches else 0.0

    async def _run(self) -> None:
        """Forever: take up to max_batch_size waiting requests, process them in one call, answer each."""
        while True:
            await self.arrived.wait()
            self.arrived.clear()
            while self.waiting:
                batch = self.waiting[: self.max_batch_size]
                del self.waiting[: self.max_batch_size]
                # A request that would finish after its deadline is as lost as one already past it: judge by
                # when this batch should end, so that FIFO under overload does not spend the model on requests
                # that all end a little too late.
                pending = [entry for entry in batch if not entry[2].done()]  # skip callers cancelled meanwhile
                now, live, expired = time.monotonic(), [], 0
                ends = now + self.timer.expected(len(pending))
                for item, deadline, future in pending:
                    if deadline is not None and deadline <= ends:
                        future.set_result(None)
                        expired += 1
                    else:
                        live.append((item, future))
                if expired and self.on_drop is not None:
                    self.on_drop(expired)
                if not live:
                    continue
                self.batches += 1
                self.items += len(live)
                started = time.perf_counter()
                try:
                    results = await self.process([item for item, _ in live])
                except Exception as exc:  # noqa: BLE001 - the callers get the error; the loop lives on
                    log.exception("%s: batch of %d failed", self.name, len(live))
                    results = [exc] * len(live)
                self.timer.record(len(live), time.perf_counter() - started)
                for (_, future), result in zip(live, results):
                    if future.done():
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
