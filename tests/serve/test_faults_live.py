"""Faults on a real local Ray (loadtest.faults' parts, bounded for CI): a killed embedding replica under load, and
the upstream answers that `python -m loadtest.faults` found mishandled, each pinned here as a regression test.

The application is the tests' tiny one (tests/serve/conftest.py: hash-64 embedder, mf on the embedding deployment,
length locally) with both upstreams on loadtest.faults' fake OpenAI server, whose misbehaviour a request picks with
its `metadata.fault`.
"""

import time

import pytest

from serve.config import OPENAI_CHAT_FIELDS
from tests.serve.conftest import app_args, deploy_apps

pytest.importorskip("ray.serve")

APP, PREFIX = "faults", "/faults"
STRONG = "router-length-0"  # threshold 0: every call goes to the strong upstream


@pytest.fixture(scope="module")
def service(ray_cluster, artifacts):
    import httpx

    from loadtest.faults import FakeUpstreams

    home, reference = artifacts
    with FakeUpstreams(slow_s=2.5) as fakes:
        args = app_args(home, reference, fakes.url("strong"), fakes.url("weak"))
        args["routers"].update(enabled=["mf", "length"], default="mf")
        for side in ("strong", "weak"):
            args["upstreams"][side].update(model=side, api_key_env=None, timeout_s=1.0)
        args["api"]["forward_fields"] = [*OPENAI_CHAT_FIELDS, "metadata"]  # the fake upstreams' instructions
        deploy_apps({APP: (PREFIX, args, {})})
        with httpx.Client(base_url=ray_cluster["http"] + PREFIX, timeout=30) as client:
            yield {"client": client, "fakes": fakes, "url": ray_cluster["http"] + PREFIX}


def _chat(client, fault, rid, stream=False):
    body = {"model": STRONG, "messages": [{"role": "user", "content": "hi"}], "stream": stream,
            "metadata": {"fault": fault, "id": rid}}
    return client.post("/v1/chat/completions", json=body)


def _sides(fakes, rid):
    return sorted(side for side, entries in fakes.seen().items() for e in entries if e.get("id") == rid)


def test_a_gzip_answer_reaches_the_client_decodable(service):
    """Regression: the non-streamed body was decoded by the ingress and sent on still labelled gzip, so clients
    failed to decode it (the streamed one was right)."""
    response = _chat(service["client"], "gzip", "gzip-1")
    assert response.status_code == 200 and response.headers["content-encoding"] == "gzip"
    assert response.json()["choices"][0]["message"]["content"] == "answer from strong"
    assert _sides(service["fakes"], "gzip-1") == ["strong"]


def test_a_read_timeout_is_upstream_failed_and_not_retried(service):
    """Regression: a read timeout after the request was sent answered `upstream_unavailable` (README: no upstream
    could be reached) instead of `upstream_failed`."""
    response = _chat(service["client"], "slow", "slow-1")
    assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_failed"
    time.sleep(2.0)  # the slow answer is thrown away; the weak side must never have been asked
    assert _sides(service["fakes"], "slow-1") == ["strong"]


def test_an_upstream_429_keeps_its_retry_after(service):
    """Regression: the upstream's 429 reached the client without its Retry-After."""
    response = _chat(service["client"], "429", "429-1")
    assert response.status_code == 429 and response.headers.get("retry-after") == "7"
    assert _sides(service["fakes"], "429-1") == ["strong"]


def test_killing_the_embedding_replica_loses_no_request(service):
    """Eight clients on /v1/route and two on chat; one embedding replica killed after a 6 s baseline. No request
    sent after the kill is lost (documented 503s while the replacement starts are errors, not losses), and the
    replica is replaced and the traffic healthy again within 30 s."""
    from loadtest import faults

    t0 = time.monotonic()
    sampler = faults.Sampler(APP, t0, interval=0.25)
    sampler.start()
    prompts = [f"question {i} about algebra and greetings" for i in range(50)]
    load = faults.Load(service["url"], t0, [(faults.ROUTE, faults.route_body(prompts, "mf"))] * 8
                       + [(faults.CHAT, faults.chat_body(prompts))] * 2)
    load.start()
    try:
        time.sleep(8.0)
        victim = next(r for r in sampler.latest()["deployments"]["EmbeddingDeployment"] if r["state"] == "RUNNING")
        kill_s = time.monotonic() - t0
        faults.kill_replica(victim, "ray")
        deadline = time.monotonic() + 40.0
        while time.monotonic() < deadline and faults.replicas_recovered_s(sampler.samples, kill_s,
                                                                          victim["replica_id"]) is None:
            time.sleep(0.5)
        time.sleep(6.0)  # the traffic's hold after the replacement
    finally:
        load.stop()
        sampler.halt.set()
        sampler.join(timeout=10)
    end = time.monotonic() - t0
    counts = faults.account(load.records, kill_s, faults.documented_codes())
    assert counts["sent"] > 50 and counts["lost_after_kill"] == 0, counts
    route = [r for r in load.records if r.endpoint == faults.ROUTE]
    # loose latency tolerance: the tiny router answers in milliseconds, where a shared machine's noise is 3x
    got = faults.recovery(route, sampler.samples, kill_s, end, victim["replica_id"], baseline_s=6.0, hold=3,
                          rate_tolerance=0.05, p50_tolerance=3.0)
    assert got["replicas_recovered_s"] is not None and got["replicas_recovered_s"] < 30.0, got["replicas_recovered_s"]
    assert got["full_recovery_s"] is not None and got["full_recovery_s"] < 30.0, (
        got["traffic_recovered_s"], got["baseline"], got["seconds"])
