"""IngressDeployment.route maps what the router handle raises to the errors the HTTP API answers with."""

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


class _Router:
    def __init__(self, outcome):
        self.calls, self.outcome = [], outcome
        self.route = self

    def remote(self, *args):
        self.calls.append(args)
        self.response = _Response(self.outcome)
        return self.response


def _ingress(outcome, timeout_s=5.0):
    from serve.config import parse_app_args
    from serve.ingress import IngressDeployment

    upstream = {"base_url": "http://127.0.0.1:9/v1", "model": "m"}
    config = parse_app_args({"upstreams": {"strong": upstream, "weak": upstream}, "routing": {"timeout_s": timeout_s}})
    ingress = IngressDeployment.__new__(IngressDeployment)  # no replica: only the routing path is under test
    ingress.config, ingress.router = config, _Router(outcome)
    return ingress


def test_backpressure_is_overloaded_503():
    from ray.serve.exceptions import BackPressureError

    from serve.protocol import RoutingOverloaded

    ingress = _ingress(BackPressureError(num_queued_requests=3, max_queued_requests=3))
    with pytest.raises(RoutingOverloaded, match="overloaded") as info:
        asyncio.run(ingress.route("hi", "mf", None, None))
    assert info.value.http_status == 503


def test_timeout_cancels_and_passes_the_deadline_down():
    import time

    from serve.protocol import RoutingTimeout

    ingress = _ingress("slow", timeout_s=0.05)
    before = time.time()
    with pytest.raises(RoutingTimeout):
        asyncio.run(ingress.route("hi", "mf", None, None))
    args = ingress.router.calls[0]
    assert args[:4] == ("hi", "mf", None, None)
    assert before + 0.05 <= args[4] <= time.time() + 0.05  # the deadline the replicas drop work after
    assert ingress.router.response.cancelled
