"""MicroBatcher: what queues during a batch forms the next one; deadlines, cancellation and errors."""

import asyncio
import time

import pytest

from serve.batching import MicroBatcher


class Model:
    """A blocking-ish scorer: each call takes `delay` seconds and records the batch it got."""

    def __init__(self, delay: float = 0.02, fail_on: str | None = None):
        self.delay, self.fail_on, self.calls = delay, fail_on, []

    async def __call__(self, items: list[str]) -> list:
        self.calls.append(list(items))
        await asyncio.sleep(self.delay)
        if self.fail_on in items:
            raise RuntimeError("model failed")
        return [f"score:{item}" for item in items]


def test_a_lone_request_runs_at_once_and_a_burst_shares_calls():
    async def main():
        model = Model(delay=0.05)
        batcher = MicroBatcher(model, max_batch_size=4, name="test")
        start = time.perf_counter()
        assert await batcher.submit("a") == "score:a"
        alone = time.perf_counter() - start
        results = await asyncio.gather(*(batcher.submit(str(i)) for i in range(10)))
        return model.calls, alone, results, batcher.mean_batch

    calls, alone, results, mean = asyncio.run(main())
    assert calls[0] == ["a"] and alone < 0.5  # no waiting for company (generous bound for a loaded machine)
    assert results == [f"score:{i}" for i in range(10)]  # each caller gets its own answer, in order
    # the burst was queued before the loop ran: batches of at most 4, in arrival order
    assert calls[1:] == [["0", "1", "2", "3"], ["4", "5", "6", "7"], ["8", "9"]]
    assert mean == pytest.approx(11 / 4)


def test_expired_requests_are_answered_none_and_counted_not_computed():
    async def main():
        model, dropped = Model(), []
        batcher = MicroBatcher(model, max_batch_size=8, name="test", on_drop=dropped.append)
        past, future = -1.0, 30.0  # remaining budgets in seconds
        results = await asyncio.gather(batcher.submit("old", past), batcher.submit("new", future),
                                       batcher.submit("none"))
        return model.calls, results, dropped

    calls, results, dropped = asyncio.run(main())
    assert results == [None, "score:new", "score:none"]
    assert all("old" not in call for call in calls) and dropped == [1]


def test_errors_reach_their_callers_and_the_loop_survives():
    async def main():
        batcher = MicroBatcher(Model(fail_on="bad"), max_batch_size=8, name="test")
        with pytest.raises(RuntimeError, match="model failed"):
            await batcher.submit("bad")
        return await batcher.submit("good")

    assert asyncio.run(main()) == "score:good"


def test_cancelled_callers_are_skipped():
    async def main():
        model = Model(delay=0.05)
        batcher = MicroBatcher(model, max_batch_size=8, name="test")
        first = asyncio.create_task(batcher.submit("first"))
        await asyncio.sleep(0.01)  # "first" is in the model now; the next two queue behind it
        gone = asyncio.create_task(batcher.submit("gone"))
        kept = asyncio.create_task(batcher.submit("kept"))
        await asyncio.sleep(0.01)
        gone.cancel()
        return await first, await kept, model.calls

    first, kept, calls = asyncio.run(main())
    assert (first, kept) == ("score:first", "score:kept")
    assert calls == [["first"], ["kept"]]


def test_batch_time_is_estimated_per_item_plus_overhead():
    from serve.batching import BatchTimer

    timer = BatchTimer()
    assert timer.expected(5) == 0.0  # nothing seen yet: nothing is dropped for lack of an estimate
    timer.record(32, 0.64)
    assert timer.expected(1) == pytest.approx(0.02)  # one size seen: all of it per item
    for n in (1, 8, 32):
        timer.record(n, 0.01 + 0.02 * n)
    assert timer.expected(1) == pytest.approx(0.03, abs=0.01) and timer.expected(32) == pytest.approx(0.65, abs=0.02)


def test_a_lone_request_is_not_dropped_after_a_long_big_batch():
    """After a 32-item batch of 0.64 s, a lone request with 0.3 s left fits (about 0.02 s per item): it runs."""
    async def main():
        model, dropped = Model(delay=0.01), []
        batcher = MicroBatcher(model, max_batch_size=32, name="test", on_drop=dropped.append)
        batcher.timer.record(32, 0.64)
        return await batcher.submit("alone", 0.3), dropped

    assert asyncio.run(main()) == ("score:alone", [])
