"""The application on a real local Ray: route, errors, proxy with streaming, fallbacks, health, metrics.

Four applications, deployed as one Serve config document: `turnout` (all four routers, upstreams on the fake
server), `tight` (an embedding queue of one), and for the fallback paths `broken` (mf only, a routing budget
nobody can meet, an unreachable strong upstream) and `down` (a strong upstream that answers 503, an unreachable
weak one).
"""

import inspect
import json
import re
import time
from pathlib import Path

import httpx
import pytest

from serve.config import TurnoutConfig
from serve.metrics import (
    DECISIONS,
    DROPPED,
    ERRORS,
    FALLBACKS,
    STAGE_LATENCY,
    STRONG_RATIO,
    STRONG_RATIO_TARGET,
    THRESHOLD,
    exported,
    parse_prometheus,
)
from serve.config import EMBEDDING, INGRESS
from tests.serve.conftest import app_args, deploy_apps
from tests.serve.fakes import CHUNKS, free_port

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MATH = "math equation algebra item 3 variant 8"
CHAT = "chat greeting hello item 4 variant 2"


@pytest.fixture(scope="module")
def service(ray_cluster, artifacts, upstream):
    home, reference = artifacts
    main = app_args(home, reference, upstream.base_url, upstream.base_url)

    broken = app_args(home, reference, f"http://127.0.0.1:{free_port()}/v1", upstream.base_url)
    broken["routers"].update(enabled=["mf"], default="mf")  # a backend call, which the budget cannot cover
    broken["routing"].update(timeout_s=1e-6)

    down = app_args(home, reference, upstream.base_url, f"http://127.0.0.1:{free_port()}/v1")
    down["routers"].update(enabled=["length"], default="length")
    down["upstreams"]["strong"]["model"] = "fail-503"  # the fake upstream answers 503 for this model
    down["upstreams"]["fallback_on_503"] = True  # a 503 before any body: safe to send elsewhere
    down["routing"]["controller"]["learn_from_route"] = True  # its one /v1/route call sets its gauges

    # one embedding slot and one queue place per caller: the rest of a burst is rejected at once
    tight = app_args(home, reference, upstream.base_url, upstream.base_url)
    tight["routers"].update(enabled=["mf"], default="mf")

    # a router from another package, added by one registry entry; bert from its checkpoint
    extra = app_args(home, reference, upstream.base_url, upstream.base_url)
    extra["routers"].update(enabled=["toy", "bert", "nan"], default="toy",
                            extra={"toy": "tests.serve.toy_router:TOY", "nan": "tests.serve.toy_router:NAN"})
    extra["routing"].update(thresholds={"toy": 0.5, "nan": 0.5})
    # upstreams that misbehave on purpose (tests/serve/fakes.py), each behind an app with only the length router
    faults = {}
    for model in ("slow", "gzip", "cut"):
        faults[model] = app_args(home, reference, upstream.base_url, upstream.base_url)
        faults[model]["routers"].update(enabled=["length"], default="length")
        faults[model]["upstreams"]["strong"].update(model=model, timeout_s=0.5)
    # API keys and per-key limits
    from serve.auth import digest

    secure = app_args(home, reference, upstream.base_url, upstream.base_url)
    secure["routers"].update(enabled=["length"], default="length")
    secure["api"]["auth"]["api_keys_sha256"] = [digest("sk-client-1"), digest("sk-client-2")]
    secure["api"]["limits"].update(requests_per_s=0.2, burst=3, max_strong_share=0.5, strong_window=10)
    apps = {
        "secure": ("/secure", secure, {}),
        **{f"fault-{m}": (f"/fault-{m}", args, {}) for m, args in faults.items()},
        "turnout": ("/", main, {}),
        "broken": ("/broken", broken, {}),
        "down": ("/down", down, {}),
        "tight": ("/tight", tight, {EMBEDDING: {"max_ongoing_requests": 1, "max_queued_requests": 1}}),
        "extra": ("/extra", extra, {}),
    }
    start = time.perf_counter()
    configs = deploy_apps(apps)
    deploy_s = time.perf_counter() - start
    with httpx.Client(base_url=ray_cluster["http"], timeout=30) as client:
        yield {"client": client, "config": configs["turnout"], "metrics": ray_cluster["metrics"], "deploy_s": deploy_s,
               "upstream": upstream, "apps": apps}


def _documented_codes() -> dict[str, set[int]]:
    """The README's error table: code -> the statuses it is listed with."""
    codes: dict[str, set[int]] = {}
    for line in (Path(__file__).parents[2] / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) == 3 and cells[0][:1].isdigit():
            for code in re.findall(r"`([a-z_]+)`", cells[1]):
                codes.setdefault(code, set()).update(int(s) for s in re.findall(r"\d{3}", cells[0]))
    return codes


DOCUMENTED_CODES = _documented_codes()


def _error(response, status, fragment):
    """One error answer: its status, the message fragment, and a stable code the README documents for it."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment in error["message"], error["message"]
    assert status in DOCUMENTED_CODES.get(error["code"], ()), (error["code"], status, DOCUMENTED_CODES)
    assert "Traceback" not in response.text


def test_builder_annotation_is_the_config_model():
    """Ray validates `args` against the builder's annotation, so `serve run FILE` checks the same model."""
    from serve.app import build_app

    assert inspect.signature(build_app).parameters["config"].annotation is TurnoutConfig


def test_health_ready_and_docs(service):
    client = service["client"]
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["routers"] == ["length", "mf", "random", "sw_ranking"]
    assert "/v1/route" in client.get("/openapi.json").json()["paths"]
    assert [m["id"] for m in client.get("/v1/models").json()["data"]][:2] == ["turnout", "router-sw_ranking"]
    # interactive docs load scripts from a CDN: off unless api.docs is set; the schema stays
    _error(client.get("/docs"), 404, "GET /docs: Not Found")


def test_api_keys_rate_limits_and_strong_budget(service):
    client = service["client"]
    body = {"prompt": "hi"}
    _error(client.post("/secure/v1/route", json=body), 401, "missing API key")
    assert client.post("/secure/v1/route", json=body).headers["www-authenticate"] == "Bearer"
    _error(client.post("/secure/v1/route", json=body, headers={"authorization": "Bearer sk-nope"}), 401, "invalid API key")
    assert client.get("/secure/healthz").status_code == 200 and client.get("/secure/readyz").status_code == 200
    one, two = {"authorization": "Bearer sk-client-1"}, {"authorization": "Bearer sk-client-2"}
    # key 1: a burst of 3 at 0.2 requests/s, then 429 with the wait until the next token
    assert [client.post("/secure/v1/route", json=body, headers=one).status_code for _ in range(3)] == [200] * 3
    limited = client.post("/secure/v1/route", json=body, headers=one)
    _error(limited, 429, "rate limit: 0.2 requests/s (burst 3) per key")
    assert 1 <= int(limited.headers["retry-after"]) <= 5
    # key 2 has its own bucket, and a strong-call cap of 50 % of its billed chat calls: a second strong call in a
    # row is refused (/v1/route decisions are not calls and never count)
    strong = {"model": "router-length-0.0", "messages": [{"role": "user", "content": "hi"}]}
    assert client.post("/secure/v1/chat/completions", json=strong, headers=two).headers["x-turnout-model"] == "strong"
    _error(client.post("/secure/v1/chat/completions", json=strong, headers=two), 429, "strong-call budget: at most 50%")
    # the schema is behind the key too
    _error(client.get("/secure/openapi.json"), 401, "missing API key")


def test_every_error_has_the_one_body_shape(service):
    client = service["client"]
    for response, status, code in [
        (client.get("/nope"), 404, "not_found"),
        (client.get("/v1/route"), 405, "method_not_allowed"),
        (client.post("/v1/route", content=b"\xff\xfe{", headers={"content-type": "application/json"}), 400,
         "malformed_json"),
    ]:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["code"] == code and error["message"] and "detail" not in response.json(), response.text


def test_bodies_over_the_limit_are_refused(service):
    """api.max_body_bytes (1 MiB): 413 whether the body declares its length or streams it in chunks."""
    client = service["client"]
    big = {"prompt": "x" * (2 << 20)}
    _error(client.post("/v1/route", json=big), 413, "larger than 1048576 bytes")

    def chunks():
        for _ in range(40):
            yield b"x" * 65536

    response = client.post("/v1/route", content=chunks(), headers={"content-type": "application/json"})
    _error(response, 413, "larger than 1048576 bytes")
    assert client.post("/v1/route", json={"prompt": "x" * 1000, "router": "length"}).status_code == 200


@pytest.mark.parametrize("router", ["sw_ranking", "mf", "length", "random"])
def test_route_every_router(service, router):
    response = service["client"].post("/v1/route", json={"prompt": MATH, "router": router})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["router"] == router and body["model"] in ("strong", "weak")
    assert 0.0 <= body["p_strong"] <= 1.0 and body["threshold_source"] == "controller"
    assert body["model"] == ("strong" if body["p_strong"] >= body["threshold"] else "weak")
    assert body["latency_ms"] > 0


def test_route_learned_signal_and_request_thresholds(service):
    client = service["client"]
    math = client.post("/v1/route", json={"prompt": MATH, "router": "sw_ranking"}).json()
    chat = client.post("/v1/route", json={"messages": [{"role": "user", "content": CHAT}], "router": "sw_ranking"}).json()
    assert math["p_strong"] > chat["p_strong"]  # strong tiers win on the math topic of the synthetic battles
    fixed = client.post("/v1/route", json={"prompt": CHAT, "threshold": 0.0}).json()
    assert fixed["model"] == "strong" and fixed["threshold"] == 0.0 and fixed["threshold_source"] == "request"
    assert fixed["router"] == "mf"  # the configured default
    none = client.post("/v1/route", json={"prompt": MATH, "strong_ratio": 0.0}).json()
    assert none["model"] == "weak" and none["threshold_source"] == "request_strong_ratio"
    every = client.post("/v1/route", json={"prompt": CHAT, "strong_ratio": 1.0}).json()
    assert every["model"] == "strong"


def test_multi_turn_scores_recent_user_turns(service):
    client = service["client"]
    alone = client.post("/v1/route", json={"prompt": "and then?", "router": "length", "threshold": 0.5}).json()
    conversation = [{"role": "user", "content": "x" * 600}, {"role": "assistant", "content": "ok"},
                    {"role": "user", "content": "and then?"}]
    with_context = client.post("/v1/route", json={"messages": conversation, "router": "length", "threshold": 0.5}).json()
    assert with_context["p_strong"] > alone["p_strong"]  # the earlier user turn is scored too (user_turns: 3)


def test_controller_state_is_exposed(service):
    client = service["client"]
    for i in range(30):  # chat calls an upstream answered: what the controller learns from
        body = {"model": "router-random", "messages": [{"role": "user", "content": f"{MATH} {i}"}]}
        assert client.post("/v1/chat/completions", json=body).status_code == 200
    state = client.get("/v1/routers").json()
    assert state["default"] == "mf"
    random = state["routers"]["random"]
    assert random["mode"] == "controller" and random["strong_ratio_target"] == 0.5
    assert random["live_decisions"] >= 30 and 0.0 < random["realised_strong_ratio"] < 1.0
    assert 0.0 < random["threshold"] < 1.0
    # sw_ranking started from reference scores written by `prepare`
    assert state["routers"]["sw_ranking"]["window"] == 50


@pytest.mark.parametrize("kwargs, status, fragment", [
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "malformed JSON body"),
    ({"content": b"{not json"}, 400, "malformed JSON body"),
    ({"json": {}}, 422, "exactly one of 'messages' or 'prompt'"),
    ({"json": {"messages": []}}, 422, "messages must not be empty"),
    ({"json": {"messages": [{"role": "assistant", "content": "hi"}]}}, 422, "no user message"),
    ({"json": {"prompt": ""}}, 422, "prompt must not be empty"),
    ({"json": {"prompt": "a", "router": "bert"}}, 400, "unknown router 'bert'"),
    ({"json": {"prompt": "a", "threshold": 1.5}}, 422, "threshold must be in [0, 1]"),
    ({"json": {"prompt": "a", "threshold": -0.5}}, 422, "threshold must be in [0, 1]"),
    ({"json": {"prompt": "a", "strong_ratio": 2}}, 422, "strong_ratio must be in [0, 1]"),
    ({"json": {"messages": [{"role": "user", "content": 42}]}}, 422, "content must be a string or a list of content parts"),
    ({"json": {"messages": [{"role": "user", "content": {"text": "hi"}}]}}, 422, "got dict"),
    ({"json": {"prompt": 5}}, 422, "prompt: Input should be a valid string"),
    ({"json": ["a list"]}, 422, "valid dictionary"),
])
def test_bad_route_requests_are_4xx_with_a_message(service, kwargs, status, fragment):
    _error(service["client"].post("/v1/route", **kwargs), status, fragment)


@pytest.mark.parametrize("body, status, fragment", [
    ({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, 400, "model must be 'turnout'"),
    ({"model": "router-bert-0.5", "messages": [{"role": "user", "content": "hi"}]}, 400, "unknown router 'bert'"),
    ({"model": "router-mf-7", "messages": [{"role": "user", "content": "hi"}]}, 400, "threshold must be in [0, 1]"),
    ({"model": "turnout", "messages": []}, 422, "messages: List should have at least 1 item"),
    ({"model": "turnout"}, 422, "messages: Field required"),
    ({"messages": [{"role": "user", "content": "hi"}]}, 422, "model: Field required"),
    ({"model": "turnout", "messages": [{"role": "user", "content": None}]}, 422, "no user message"),
    ({"model": "turnout", "messages": [{"role": "user", "content": 1.5}]}, 422, "got float"),
])
def test_bad_chat_requests_are_4xx_with_a_message(service, body, status, fragment):
    _error(service["client"].post("/v1/chat/completions", json=body), status, fragment)


def test_chat_completion_is_routed_and_forwarded(service):
    client, seen = service["client"], service["upstream"].seen
    body = {"model": "router-mf-0.0", "messages": [{"role": "user", "content": CHAT}], "temperature": 0.2,
            "max_tokens": 5, "user": "u1"}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["x-turnout-model"] == "strong" and response.headers["x-turnout-router"] == "mf"
    assert float(response.headers["x-turnout-threshold"]) == 0.0
    assert 0.0 <= float(response.headers["x-turnout-p-strong"]) <= 1.0
    assert response.json()["choices"][0]["message"]["content"] == "answer from strong"
    forwarded = seen[-1]
    # the client's body, untouched but for the model; the strong side's key from its environment variable
    assert forwarded["body"] == {**body, "model": "strong"}
    assert forwarded["authorization"] == "Bearer sk-test-strong"

    weak = client.post("/v1/chat/completions", json={**body, "model": "router-mf-1.0"})
    assert weak.headers["x-turnout-model"] == "weak" and weak.json()["model"] == "weak"
    assert seen[-1]["authorization"] is None  # the weak side has no api_key_env


def test_turnout_model_uses_configured_defaults(service):
    response = service["client"].post("/v1/chat/completions", json={"model": "turnout", "messages": [{"role": "user", "content": MATH}]})
    assert response.status_code == 200 and response.headers["x-turnout-router"] == "mf"
    assert response.json()["model"] == response.headers["x-turnout-model"]


def test_streaming_is_passed_through_incrementally(service):
    body = {"model": "router-length-0.0", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    arrivals, raw = [], b""
    with service["client"].stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-turnout-model"] == "strong"
        for chunk in response.iter_raw():
            arrivals.append(time.perf_counter())
            raw += chunk
    events = [line.removeprefix("data: ") for line in raw.decode().split("\n\n") if line]
    assert events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["delta"]["content"] for e in events[:-1]) == "".join(CHUNKS)
    assert len(arrivals) >= 2 and arrivals[-1] - arrivals[0] > 0.08  # chunks arrived as the upstream sent them


def test_upstream_errors_pass_through_with_their_status(service):
    body = {"model": "router-mf-1.0", "messages": [{"role": "user", "content": "hi"}], "temperature": -1}
    response = service["client"].post("/v1/chat/completions", json=body)
    assert response.status_code == 400 and "temperature" in response.json()["error"]["message"]
    assert response.headers["x-turnout-model"] == "weak"


def test_routing_and_upstream_fallbacks(service):
    client = service["client"]
    # /v1/route has nothing to fall back to: routing that misses its budget is a 503, not a 500
    timed_out = client.post("/broken/v1/route", json={"prompt": "hi"})
    _error(timed_out, 503, "routing took longer")
    assert timed_out.headers.get("retry-after") == "1"  # every 503 says when to come back
    # a chat call still gets an answer: fallback_model (strong) is unreachable, so the weak side answers
    response = client.post("/broken/v1/chat/completions", json={"model": "turnout", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200, response.text
    assert response.headers["x-turnout-model"] == "weak"
    assert response.headers["x-turnout-fallback"] == "router_timeout,upstream_unreachable"
    assert "x-turnout-p-strong" not in response.headers
    assert client.get("/broken/healthz").status_code == 200


def test_no_upstream_available_is_502_with_the_decision(service):
    client = service["client"]
    body = {"model": "router-length-0.0", "messages": [{"role": "user", "content": "hi"}]}
    response = client.post("/down/v1/chat/completions", json=body)
    _error(response, 502, "strong upstream answered 503; weak upstream unreachable (ConnectError)")
    assert response.headers["x-turnout-router"] == "length" and "x-turnout-p-strong" in response.headers
    # weak first: unreachable, so the strong side's own 503 answer is passed through, marked as a fallback
    response = client.post("/down/v1/chat/completions", json={**body, "model": "router-length-1.0"})
    assert response.status_code == 503 and response.json()["error"]["message"] == "overloaded"
    assert response.headers["x-turnout-model"] == "strong"
    assert response.headers["x-turnout-fallback"] == "upstream_unreachable"


def test_a_registered_router_and_bert_are_served(service):
    """A router is its file plus one registry entry: `routers.extra` names the toy one, the ingress serves it."""
    client = service["client"]
    proof = client.post("/extra/v1/route", json={"prompt": "Prove that sqrt(2) is irrational."}).json()
    hello = client.post("/extra/v1/route", json={"prompt": "hi there"}).json()
    assert (proof["router"], proof["p_strong"], proof["model"], proof["threshold_source"]) == ("toy", 0.9, "strong", "fixed")
    assert (hello["p_strong"], hello["model"]) == (0.1, "weak")
    assert client.get("/extra/readyz").json()["routers"] == ["bert", "nan", "toy"]
    scored = client.post("/extra/v1/route", json={"prompt": MATH, "router": "bert"})
    assert scored.status_code == 200 and 0.0 <= scored.json()["p_strong"] <= 1.0, scored.text


def test_a_non_finite_score_is_a_503_and_a_chat_fallback(service):
    """A router that produces NaN fails at the source: /v1/route answers 503 naming it, a chat call goes to the
    fallback model, and the controller's window never sees the value (later decisions stay sane)."""
    client = service["client"]
    failed = client.post("/extra/v1/route", json={"prompt": "hi", "router": "nan"})
    _error(failed, 503, "router nan produced 1 non-finite")
    assert failed.headers.get("retry-after") == "5"
    chat = client.post("/extra/v1/chat/completions",
                       json={"model": "router-nan", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 200 and chat.headers["x-turnout-fallback"] == "router_unavailable", chat.headers
    assert chat.headers["x-turnout-model"] == "strong"  # routing.fallback_model
    state = client.get("/extra/v1/routers").json()["routers"]["nan"]
    assert state["live_decisions"] == 0


def test_chat_falls_back_when_the_embedding_queue_is_full(service):
    """The `router_overloaded` fallback over HTTP: a chat burst beyond the `tight` app's embedding queue is
    answered by the fallback model at once, marked in x-turnout-fallback."""
    import asyncio

    async def burst():
        async with httpx.AsyncClient(base_url=str(service["client"].base_url), timeout=30) as client:
            body = {"model": "turnout", "messages": [{"role": "user", "content": MATH}]}
            return await asyncio.gather(*(client.post("/tight/v1/chat/completions", json=body) for _ in range(48)))

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses), {r.status_code for r in responses}
    fallbacks = [r.headers.get("x-turnout-fallback") for r in responses]
    assert "router_overloaded" in fallbacks and None in fallbacks, fallbacks
    assert all(r.headers["x-turnout-model"] == "strong" for r in responses if r.headers.get("x-turnout-fallback"))


def test_an_upstream_failing_after_the_request_was_sent_is_not_retried_elsewhere(service):
    """A read timeout (upstream.timeout_s 0.5 s, the fake answers after 2 s) may follow a generation the upstream
    bills: 502, and the other side is never called."""
    client, seen = service["client"], service["upstream"].seen
    before = len(seen)
    response = client.post("/fault-slow/v1/chat/completions",
                           json={"model": "router-length-0.0", "messages": [{"role": "user", "content": "hi"}]})
    _error(response, 502, "strong upstream failed after the request was sent (ReadTimeout); not retried")
    assert response.headers["x-turnout-model"] == "strong"  # the side that may bill it
    time.sleep(2.5)  # the slow answer arrives (and is thrown away) after the timeout
    assert [s["model"] for s in seen[before:]] == ["slow"]  # one call: no weak regeneration


def test_a_gzip_stream_reaches_the_client_intact(service):
    """The upstream's raw (compressed) bytes go out with its Content-Encoding, so the client decodes them."""
    body = {"model": "router-length-0.0", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with service["client"].stream("POST", "/fault-gzip/v1/chat/completions", json=body) as response:
        assert response.status_code == 200 and response.headers["content-encoding"] == "gzip"
        text = "".join(response.iter_text())
    pieces = [json.loads(line[6:])["choices"][0]["delta"]["content"] for line in text.splitlines()
              if line.startswith("data: {")]
    assert pieces == CHUNKS and text.rstrip().endswith("data: [DONE]")


def test_a_stream_cut_by_the_upstream_ends_with_an_error_event(service):
    body = {"model": "router-length-0.0", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with service["client"].stream("POST", "/fault-cut/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        text = "".join(response.iter_text())
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    assert events[0]["choices"][0]["delta"]["content"] == CHUNKS[0]
    assert events[-1]["error"]["code"] == "upstream_stream_cut" and "stream cut" in events[-1]["error"]["message"]


def test_requests_past_their_deadline_are_dropped_unprocessed(service):
    from ray import serve

    embedding = serve.get_deployment_handle(EMBEDDING, app_name="turnout")
    assert embedding.score.remote(MATH, "mf", -1.0).result() is None
    live = embedding.score.remote(MATH, "mf", 30.0).result()
    assert 0.0 <= live["p_strong"] <= 1.0 and set(live["stages"]) == {"embed", "search"}


def test_a_full_queue_rejects_at_once(service):
    """max_queued_requests: a burst beyond the embedding replica's slot and queue fails fast, the rest succeed."""
    import asyncio

    async def burst():
        async with httpx.AsyncClient(base_url=str(service["client"].base_url), timeout=30) as client:
            return await asyncio.gather(*(client.post("/tight/v1/route", json={"prompt": f"{MATH} {i}"})
                                          for i in range(64)))

    responses = asyncio.run(burst())
    ok = [r for r in responses if r.status_code == 200]
    rejected = [r for r in responses if r.status_code != 200]
    assert ok and rejected, [r.status_code for r in responses]
    assert all(r.status_code == 503 and r.headers.get("retry-after") == "1" for r in rejected), rejected[0].text
    messages = {r.json()["error"]["message"] for r in rejected}
    # the embedding deployment's queue (1 ongoing + 1 queued) refused some of those the ingress admitted
    assert "the embedding deployment is overloaded (queue full); retry later" in messages, messages


def _missing_metrics(samples):
    """Expected series not (yet) in a scrape; each replica exports on its own clock, so callers poll."""
    def labels(name, *keys, application=None, suffix=""):
        return {tuple(s.get(k) for k in keys) for s, v in samples.get(exported(name, suffix), [])
                if v > 0 and (application is None or s.get("application") == application)}

    expected = {
        "decisions": ({("mf", "strong"), ("mf", "weak"), ("sw_ranking", "strong"), ("random", "weak")},
                      labels(DECISIONS, "router", "model", application="turnout")),
        "stages": ({("embed", "sw_ranking"), ("search", "mf"), ("decide", "random"), ("upstream", "mf")},
                   labels(STAGE_LATENCY, "stage", "router", suffix="_count")),
        "thresholds": ({(r,) for r in ("sw_ranking", "mf", "length", "random")},
                       {(s["router"],) for s, _ in samples.get(exported(THRESHOLD), [])}),
        "ratios": ({("mf",), ("random",)}, {(s["router"],) for s, _ in samples.get(exported(STRONG_RATIO), [])}),
        # the target each controller holds, re-set like the other gauges
        "targets": ({("mf", 0.5), ("sw_ranking", 0.5)},
                    {(s["router"], v) for s, v in samples.get(exported(STRONG_RATIO_TARGET), [])
                     if s.get("application") in ("turnout", "extra")}),
        "errors": ({(r,) for r in ("malformed_json", "invalid_request", "invalid_option", "router_timeout")},
                   labels(ERRORS, "reason")),
        "fallbacks": ({("router_timeout", "strong"), ("upstream_unreachable", "weak")},
                      labels(FALLBACKS, "reason", "model")),
        "stream errors": ({("/v1/chat/completions", "upstream_stream_cut")}, labels(ERRORS, "endpoint", "reason")),
        "dropped": ({("embedding",)}, labels(DROPPED, "component")),
    }
    return {what: sorted(want - got) for what, (want, got) in expected.items() if want - got}


def test_metrics_reach_the_export_port(service):
    client = service["client"]
    for router in ("mf", "sw_ranking", "random"):
        for threshold in (0.0, 1.0):
            client.post("/v1/route", json={"prompt": MATH, "router": router, "threshold": threshold})
    for router in ("mf", "random"):  # served chats: the controllers' realised ratios
        client.post("/v1/chat/completions", json={"model": f"router-{router}", "messages": [{"role": "user", "content": "hi"}]})
    client.post("/v1/route", content=b"{", headers={"content-type": "application/json"})
    client.post("/v1/route", json={"prompt": "a", "router": "bert"})
    client.post("/v1/route", json={"prompt": "a", "threshold": 3})
    client.post("/broken/v1/route", json={"prompt": "hi"})
    client.post("/broken/v1/chat/completions", json={"model": "turnout", "messages": [{"role": "user", "content": "hi"}]})
    client.post("/fault-cut/v1/chat/completions",
                json={"model": "router-length-0.0", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    deadline = time.monotonic() + 45
    while True:
        samples = parse_prometheus(httpx.get(service["metrics"], timeout=10).text)
        missing = _missing_metrics(samples)
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert not missing, missing
    ratios = [v for s, v in samples[exported(STRONG_RATIO)]]
    assert all(0.0 <= v <= 1.0 for v in ratios)


def test_deploy_time(service):
    assert service["deploy_s"] < 120  # tiny artifacts, eight applications on a 2-CPU Ray: Serve overhead only


def test_gauges_survive_an_idle_router(service):
    """Ray ages a gauge out of its export a couple of report intervals after its last set (1 s here): the ingress
    re-sets threshold and strong-ratio gauges, so an idle router keeps its series. `down` gets one request,
    then none for 15 report intervals."""
    client = service["client"]
    assert client.post("/down/v1/route", json={"prompt": "hi"}).status_code == 200

    def series():
        samples = parse_prometheus(httpx.get(service["metrics"], timeout=10).text)
        return {(name, s["router"]) for name in (THRESHOLD, STRONG_RATIO)
                for s, _ in samples.get(exported(name), []) if s.get("application") == "down"}

    deadline = time.monotonic() + 30
    while series() != {(THRESHOLD, "length"), (STRONG_RATIO, "length")} and time.monotonic() < deadline:
        time.sleep(1.0)
    time.sleep(15.0)
    seen = [series() for _ in range(5) if not time.sleep(1.0)]
    assert all(s == {(THRESHOLD, "length"), (STRONG_RATIO, "length")} for s in seen), seen


def test_thresholds_change_live_without_restarting_a_replica(service):
    """The ingress user_config (Ray's own deployment option) reaches `reconfigure()`: new thresholds and
    strong_ratio apply on the running replica, which is not restarted and reloads nothing. Runs last: it leaves
    the `turnout` app with other thresholds."""
    client = service["client"]
    before = client.get("/v1/routers").json()
    assert before["replica"] and before["routers"]["mf"]["mode"] == "controller"
    apps = dict(service["apps"])
    prefix, args, options = apps["turnout"]
    apps["turnout"] = (prefix, args, {**options, INGRESS: {"user_config": {"thresholds": {"mf": 0.25},
                                                                         "strong_ratio": 0.2}}})
    deploy_apps(apps)
    deadline = time.monotonic() + 60
    while True:
        after = client.get("/v1/routers").json()
        if after["routers"]["mf"]["mode"] == "fixed" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert after["replica"] == before["replica"]  # the same replica: reconfigured, not replaced
    assert after["routers"]["mf"] == {**after["routers"]["mf"], "mode": "fixed", "threshold": 0.25}
    assert after["routers"]["sw_ranking"]["strong_ratio_target"] == 0.2  # the live target moved too
    decided = client.post("/v1/route", json={"prompt": MATH, "router": "mf"}).json()
    assert decided["threshold"] == 0.25 and decided["threshold_source"] == "fixed"
