"""IngressDeployment.route maps what a backend handle raises to the errors the HTTP API answers with."""

import asyncio

import pytest

pytest.importorskip("ray.serve")


class _Response:
    def __init__(self, outcome):
        self.outcome, self.cancelled = outcome, False

    def __await__(self):
        async def result():
            if isinstance(self.outcome, BaseException):
                raise self.outcome
            if self.outcome == "slow":
                await asyncio.sleep(10)
            return self.outcome
        return result().__await__()

    def cancel(self):
        self.cancelled = True


class _Backend:
    """Stands in for the embedding deployment's handle: `score.remote(text, router, deadline)`."""

    def __init__(self, outcome):
        self.calls, self.outcome = [], outcome
        self.score = self

    def remote(self, *args):
        self.calls.append(args)
        self.response = _Response(self.outcome)
        return self.response


def _ingress(outcome, timeout_s=5.0, max_in_flight=64):
    from serve.config import parse_app_args
    from serve.controller import StrongRatioController
    from serve.ingress import IngressDeployment

    config = parse_app_args({"routing": {"timeout_s": timeout_s, "max_in_flight": max_in_flight}})
    ingress = IngressDeployment.__new__(IngressDeployment)  # no replica: only the routing path is under test
    ingress.config, ingress.routing, ingress.entries = config, config.routing, config.routers.entries()
    ingress.backends, ingress.in_flight = {"embedding": _Backend(outcome), "classifier": None}, 0
    ingress.controllers = {name: StrongRatioController(threshold=0.5) for name in config.routers.enabled}
    ingress.backend_seen, ingress.backend_routers, ingress.local = {}, {}, {}
    return ingress


def test_backpressure_is_overloaded_503():
    from ray.serve.exceptions import BackPressureError

    from serve.protocol import RoutingOverloaded

    ingress = _ingress(BackPressureError(num_queued_requests=3, max_queued_requests=3))
    with pytest.raises(RoutingOverloaded, match="overloaded") as info:
        asyncio.run(ingress.route("hi", "sw_ranking", None, None))
    assert info.value.http_status == 503


def test_timeout_cancels_and_passes_the_budget_down():
    from serve.protocol import RoutingTimeout

    ingress = _ingress("slow", timeout_s=0.05)
    with pytest.raises(RoutingTimeout):
        asyncio.run(ingress.route("hi", "sw_ranking", None, None))
    backend = ingress.backends["embedding"]
    # the remaining budget in seconds (no wall-clock time: the backend's clock may differ)
    assert backend.calls[0] == ("hi", "sw_ranking", 0.05, False)
    assert backend.response.cancelled


def test_in_flight_limit_refuses_at_the_door_and_frees_its_slots():
    from serve.protocol import RoutingOverloaded

    async def main():
        ingress = _ingress("slow", timeout_s=0.2, max_in_flight=2)
        calls = [asyncio.ensure_future(ingress.route(f"q{i}", "sw_ranking", None, None)) for i in range(3)]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        return ingress, outcomes

    ingress, outcomes = asyncio.run(main())
    assert len(ingress.backends["embedding"].calls) == 2  # the third never reached the backend
    assert isinstance(outcomes[2], RoutingOverloaded) and "2 requests in flight" in str(outcomes[2])
    assert ingress.in_flight == 0  # timed-out calls gave their slots back


def test_a_synchronous_failure_gives_its_slot_back():
    """The in-flight slot is taken inside the try whose finally frees it: a handle that raises at once leaks none."""
    from serve.protocol import RoutingUnavailable

    ingress = _ingress("unused")

    def broken(*args):
        raise RuntimeError("handle broken")

    ingress.backends["embedding"].remote = broken
    for _ in range(3):
        with pytest.raises(RoutingUnavailable):
            asyncio.run(ingress.route("hi", "sw_ranking", None, None))
    assert ingress.in_flight == 0


def test_readiness_does_not_queue_behind_scoring():
    """A backend that just answered (or refused for being full) is ready without a call that would queue."""
    from ray.serve.exceptions import BackPressureError

    from serve.protocol import RoutingOverloaded

    ingress = _ingress(BackPressureError(num_queued_requests=3, max_queued_requests=3))
    with pytest.raises(RoutingOverloaded):
        asyncio.run(ingress.route("hi", "sw_ranking", None, None))
    ingress.backends["embedding"].ready = None  # any call to it would fail the test
    assert asyncio.run(ingress.ready())["routers"] == ["sw_ranking"]


def test_every_error_class_has_a_stable_documented_code():
    """Each TurnoutError the service can answer with carries a snake-case code, unique to its meaning, that the
    README's error table lists with the class's HTTP status; a renamed class cannot change what clients see."""
    import re

    import serve.auth
    import serve.ingress
    import serve.launch  # noqa: F401 - registers DeployError
    from index.errors import TurnoutError
    from tests.serve.test_app import DOCUMENTED_CODES

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    classes = [c for c in subclasses(TurnoutError) if c.__module__.split(".")[0] in ("index", "serve", "models")]
    assert len(classes) >= 12, classes
    seen = {}
    for cls in classes:
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", cls.code), (cls, cls.code)
        assert cls.code not in seen, (cls, seen.get(cls.code))
        seen[cls.code] = cls
        if cls.__name__ not in ("DeployError", "DataNotFoundError", "LabelError"):  # CLI-only: never an HTTP answer
            assert cls.http_status in DOCUMENTED_CODES.get(cls.code, ()), (cls, cls.code, cls.http_status)
    limits = serve.auth.Limits(requests_per_s=None, burst=1, max_strong_share=0.0, strong_window=4)
    with pytest.raises(serve.auth.RateLimited) as refused:
        limits.charge("k", "strong")
    assert refused.value.code == "strong_budget_exceeded" and refused.value.code in DOCUMENTED_CODES
