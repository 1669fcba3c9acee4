"""Tenant safety (issue 24): each attack of the security review as a regression test, against the ingress app over
real HTTP on loopback (uvicorn, no Ray: the app is the one `build_api` gives Serve) with the fake upstream, built
by the harness `loadtest.tenant_attacks` measures the attacks with (RELIABILITY.md, 'Multi-tenant').

The service routes with the `length` router (local: no artifact, no backend deployment), so every decision is
made in this process and p_strong follows prompt length.
"""

import time

import numpy as np
import pytest

pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

from loadtest.tenant_attacks import HEADERS, KEYS, chat, ingress, mixed_prompts, served, stalled_body
from models.calibration import threshold_for_ratio
from serve.auth import digest
from tests.serve.fakes import free_port


@pytest.fixture
def serve(tmp_path, upstream):
    """serve(**options) -> (ingress, client): an ingress (`loadtest.tenant_attacks.ingress`) on a loopback port."""
    from contextlib import ExitStack

    started = []
    with ExitStack() as stack:
        def start(**options):
            home = tmp_path / f"service-{len(started)}"
            home.mkdir()
            started.append(home)
            deployment = ingress(home, upstream.base_url, **options)
            url = stack.enter_context(served(deployment))
            return deployment, stack.enter_context(httpx.Client(base_url=url, timeout=30))
        yield start


def _code(response, status):
    assert response.status_code == status, response.text
    return response.json()["error"]["code"]


def _sides(upstream, since):
    return [seen["model"] for seen in upstream.seen[since:]]


# ------------------------------------------------------------------------------- 1. auth before the body, deadline

def test_a_caller_without_a_key_is_refused_before_its_body_is_read(serve):
    """Before: no answer after 4 s (the key was checked after the whole body had been read). After: 401 at once."""
    _, client = serve(api__body_timeout_s=1.0)
    url = str(client.base_url).rstrip("/")
    refused = stalled_body(url, {}, wait_s=3.0)
    assert refused["status"] == 401 and refused["answered_after_s"] < 0.5
    # with a valid key, a body that stalls gets 408 once api.body_timeout_s has passed
    timed_out = stalled_body(url, HEADERS["a"], wait_s=5.0)
    assert timed_out["status"] == 408 and 0.8 < timed_out["answered_after_s"] < 3.0
    # the open paths need no key and never wait for a body
    open_path = stalled_body(url, {}, wait_s=3.0, path="/healthz", method="GET")
    assert open_path["status"] == 200 and open_path["answered_after_s"] < 0.5


def test_an_oversized_chunked_body_never_runs(serve, upstream):
    """Before: the body was cut to a parseable prefix, the upstream called and the window fed, and the client got
    413. After: 413 and nothing ran."""
    ingress, client = serve(api__max_body_bytes=2048)
    before, live = len(upstream.seen), ingress.controllers["length"].n_live

    def chunks():
        yield b'{"model": "turnout", "messages": [{"role": "user", "content": "hi"}]}'
        time.sleep(0.3)  # a parseable prefix arrives on its own before the limit is passed
        yield b" " * 4096

    response = client.post("/v1/chat/completions", content=chunks(), headers={**HEADERS["a"], "content-type": "application/json"})
    assert _code(response, 413) == "body_too_large"
    assert len(upstream.seen) == before and ingress.controllers["length"].n_live == live


# ---------------------------------------------------------------------------------------- 2, 3. strong budget

def test_route_calls_do_not_dilute_the_strong_budget(serve, upstream):
    """Before: with four free /v1/route calls before each forced-strong chat, 19 of 20 chats passed, all strong.
    After: /v1/route is not a billed call; the cap holds at the one first call."""
    ingress, client = serve(api__limits__max_strong_share=0.2)
    since, passed = len(upstream.seen), 0
    for _ in range(20):
        for _ in range(4):
            assert client.post("/v1/route", json={"prompt": "hi", "threshold": 1.0}, headers=HEADERS["a"]).status_code == 200
        response = client.post("/v1/chat/completions", json=chat(model="router-length-0.0"), headers=HEADERS["a"])
        passed += response.status_code == 200
        if response.status_code != 200:
            assert _code(response, 429) == "strong_budget_exceeded"
    assert passed == 1 and _sides(upstream, since) == ["strong"]
    # weak calls billed by the upstream make room, as the share says: 2 strong of 11 calls is within 20 %
    for _ in range(9):
        assert client.post("/v1/chat/completions", json=chat(model="router-length-1.0"), headers=HEADERS["a"]).status_code == 200
    assert client.post("/v1/chat/completions", json=chat(model="router-length-0.0"), headers=HEADERS["a"]).status_code == 200


def test_fallbacks_are_charged_and_stay_within_the_budget(serve, upstream):
    """Before: with max_strong_share 0 and routing overloaded, a chat went strong with the budget unchanged.
    After: the fallback goes to the model the budget allows, and every billed call is charged."""
    ingress, client = serve(api__limits__max_strong_share=0.0, routing__max_in_flight=1)
    ingress.in_flight = 1  # routing overloaded: every chat falls back
    since = len(upstream.seen)
    response = client.post("/v1/chat/completions", json=chat(), headers=HEADERS["a"])
    assert response.status_code == 200 and response.headers["x-turnout-model"] == "weak"
    assert response.headers["x-turnout-fallback"] == "router_overloaded,strong_budget_exceeded"
    assert _sides(upstream, since) == ["weak"] and list(ingress.limits.budgets[ingress.keys.identify(
        f"Bearer {KEYS['a']}")].calls) == [False]
    # a zero share refuses a key's very first strong call too
    _, fresh = serve(api__limits__max_strong_share=0.0)
    assert _code(fresh.post("/v1/chat/completions", json=chat(model="router-length-0.0"), headers=HEADERS["b"]),
                 429) == "strong_budget_exceeded"


def test_a_call_cancelled_after_its_send_is_charged_but_not_learned(tmp_path, upstream):
    """A client that leaves while the upstream generates (Serve cancels the request) is still charged: the
    upstream got the call. The controller learns nothing from it: no answer was served."""
    import asyncio
    import json

    from serve.ingress import build_api

    deployment = ingress(tmp_path, upstream.base_url, api__limits__max_strong_share=0.5,
                         upstreams__strong__model="slow")  # the fake upstream answers "slow" after 2 s
    app, controller = build_api(deployment), deployment.controllers["length"]
    body = json.dumps(chat(model="router-length-0.0")).encode()
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "root_path": "", "query_string": b"",
             "headers": [(b"authorization", f"Bearer {KEYS['a']}".encode()), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())], "http_version": "1.1", "scheme": "http",
             "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1)}

    async def cancelled():
        messages = iter([{"type": "http.request", "body": body, "more_body": False}])

        async def receive():
            return next(messages, None) or await asyncio.sleep(3600)

        async def send(message):
            pass

        task = asyncio.create_task(app(scope, receive, send))
        await asyncio.sleep(0.5)  # routed, sent, the upstream generating
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    live = controller.n_live
    since = len(upstream.seen)
    asyncio.run(cancelled())
    budget = deployment.limits.budgets[deployment.keys.identify(f"Bearer {KEYS['a']}")]
    assert _sides(upstream, since) == ["slow"] and list(budget.calls) == [True] and budget.pending_strong == 0
    assert controller.n_live == live


def test_an_upstream_failover_to_strong_is_charged_and_capped(serve, upstream):
    """Weak unreachable: the failover to strong is counted in the budget, and refused once the budget is spent."""
    dead = f"http://127.0.0.1:{free_port()}/v1"
    ingress, client = serve(api__limits__max_strong_share=0.5, weak_url=dead)
    key = ingress.keys.identify(f"Bearer {KEYS['a']}")
    since = len(upstream.seen)
    first = client.post("/v1/chat/completions", json=chat(model="router-length-1.0"), headers=HEADERS["a"])
    assert first.status_code == 200 and first.headers["x-turnout-model"] == "strong"
    assert list(ingress.limits.budgets[key].calls) == [True]
    second = client.post("/v1/chat/completions", json=chat(model="router-length-1.0"), headers=HEADERS["a"])
    assert _code(second, 502) == "upstream_unavailable"
    assert "strong-call budget is spent" in second.json()["error"]["message"]
    assert _sides(upstream, since) == ["strong"] and ingress.limits.budgets[key].pending_strong == 0


def test_one_keys_flood_of_routing_calls_leaves_others_routed(serve, upstream):
    """Before: one key filling routing.max_in_flight sent every key's chats to the fallback model (strong). After:
    a key holds at most max_key_in_flight_share of the slots; past that its own calls fall back, others' are routed."""
    ingress, client = serve(routing__max_in_flight=4, routing__max_key_in_flight_share=0.5)
    flooder = ingress.keys.identify(f"Bearer {KEYS['a']}")
    ingress.key_in_flight[flooder], ingress.in_flight = 2, 2  # key a's two slots are busy
    own = client.post("/v1/chat/completions", json=chat(), headers=HEADERS["a"])
    assert own.status_code == 200 and own.headers["x-turnout-fallback"] == "router_overloaded"
    other = client.post("/v1/chat/completions", json=chat(), headers=HEADERS["b"])
    assert other.status_code == 200 and "x-turnout-fallback" not in other.headers
    assert "x-turnout-p-strong" in other.headers


# ------------------------------------------------------------------------------------ 4. the shared controller

def test_one_key_cannot_move_everyones_threshold(serve):
    """Before: 200 /v1/route {"prompt": "a"} calls from one key moved the live threshold from 0.275 to 0.002.
    After: /v1/route, a request's own threshold and refused calls teach the controller nothing, and one key's
    chats hold at most max_key_share of the window, which bounds where the threshold can go."""
    ingress, client = serve(api__limits__max_strong_share=0.9, routing__controller__max_key_share=0.25)
    controller = ingress.controllers["length"]
    statuses = [client.post("/v1/chat/completions", json=chat(text), headers=HEADERS["a"]).status_code
                for text in mixed_prompts(60)]
    assert statuses.count(200) >= 30 and set(statuses) <= {200, 429}  # past the strong budget: 429, not learned
    settled = controller.threshold
    key_b = ingress.keys.identify(f"Bearer {KEYS['b']}")
    for _ in range(200):
        client.post("/v1/route", json={"prompt": "a"}, headers=HEADERS["b"])
        client.post("/v1/chat/completions", json=chat("a", model="router-length-0.0"), headers=HEADERS["b"])
    assert controller.threshold == settled  # free decisions, own thresholds and 429-refused calls: no effect
    for _ in range(200):
        assert client.post("/v1/chat/completions", json=chat("a"), headers=HEADERS["b"]).status_code == 200
    window = controller.window
    assert window.owned(key_b) == 12 and len(window) == 50  # floor(0.25 * 50) of the full window
    others = np.array([v for v, who in window._fifo if who != key_b])
    r, c = 0.3, 12 / 50
    low, high = threshold_for_ratio(others, r / (1 - c)), threshold_for_ratio(others, (r - c) / (1 - c))
    assert low <= controller.threshold <= high, (low, controller.threshold, high)


def test_route_calls_feed_the_controller_only_when_configured(serve):
    ingress, client = serve(routing__controller__learn_from_route=True)
    for text in mixed_prompts(20):
        assert client.post("/v1/route", json={"prompt": text}, headers=HEADERS["a"]).status_code == 200
    assert ingress.controllers["length"].n_live == 20


# ------------------------------------------------------------------------------------------------- hardening

def test_only_allowlisted_fields_within_the_caps_go_upstream(serve, upstream):
    ingress, client = serve(api__limits__max_n=2, api__limits__max_tokens=100)
    for fields, fragment in [({"priority": -100}, "'priority'"), ({"request_id": "x"}, "'request_id'"),
                             ({"n": 64}, "n must be a whole number from 1 to 2"),
                             ({"max_tokens": 5000}, "max_tokens must be a whole number from 1 to 100"),
                             ({"max_tokens": True}, "max_tokens must be a whole number")]:
        response = client.post("/v1/chat/completions", json=chat(**fields), headers=HEADERS["a"])
        assert _code(response, 422) == "invalid_input" and fragment in response.json()["error"]["message"]
    since = len(upstream.seen)
    ok = client.post("/v1/chat/completions", json=chat(temperature=0.2, n=2), headers=HEADERS["a"])
    assert ok.status_code == 200, ok.text
    sent = upstream.seen[since]["body"]
    assert sent["temperature"] == 0.2 and sent["n"] == 2 and sent["max_tokens"] == 100  # the cap fills a missing limit


def test_upstream_answers_have_a_size_cap_and_a_total_deadline(serve, upstream):
    ingress, client = serve(upstreams__strong__model="huge", upstreams__weak__model="drip",
                            upstreams__strong__max_response_bytes=1 << 20, upstreams__weak__total_timeout_s=1.0)
    huge = client.post("/v1/chat/completions", json=chat(model="router-length-0.0"), headers=HEADERS["a"])
    assert _code(huge, 502) == "upstream_failed" and "larger than 1048576 bytes" in huge.text
    start = time.perf_counter()
    drip = client.post("/v1/chat/completions", json=chat(model="router-length-1.0"), headers=HEADERS["a"])
    assert _code(drip, 502) == "upstream_failed" and "within 1 s" in drip.text
    assert time.perf_counter() - start < 2.5


def test_a_502_is_not_retried_on_the_other_side_and_a_503_only_when_configured(serve, upstream):
    _, client = serve(upstreams__strong__model="fail-502")
    since = len(upstream.seen)
    response = client.post("/v1/chat/completions", json=chat(model="router-length-0.0"), headers=HEADERS["a"])
    assert response.status_code == 502 and response.json()["error"]["message"] == "fail-502"
    assert _sides(upstream, since) == ["fail-502"]  # the weak side was never called: no second bill
    _, client = serve(upstreams__strong__model="fail-503", upstreams__fallback_on_503=True)
    since = len(upstream.seen)
    response = client.post("/v1/chat/completions", json=chat(model="router-length-0.0"), headers=HEADERS["a"])
    assert response.status_code == 200 and response.headers["x-turnout-fallback"] == "upstream_503"
    assert _sides(upstream, since) == ["fail-503", "weak"]


def test_a_huge_message_list_is_one_short_error(serve):
    _, client = serve()
    start = time.perf_counter()
    response = client.post("/v1/chat/completions", json={"model": "turnout", "messages": [{}] * 70_000},
                           headers=HEADERS["a"])
    assert _code(response, 422) == "invalid_request" and len(response.content) < 2000
    assert "at most 1000 items" in response.json()["error"]["message"]
    assert time.perf_counter() - start < 5
    many = client.post("/v1/route", json={"messages": [{"role": "nope"}] * 50}, headers=HEADERS["a"])
    assert _code(many, 422) == "invalid_request" and "and 30 more errors" in many.json()["error"]["message"]


def test_client_thresholds_need_the_keys_permission(serve):
    ingress, client = serve(api__auth__client_thresholds=[digest(KEYS["a"])[:12]])
    assert client.post("/v1/route", json={"prompt": "hi", "threshold": 0.0}, headers=HEADERS["a"]).status_code == 200
    for request in [("/v1/route", {"prompt": "hi", "threshold": 0.0}), ("/v1/route", {"prompt": "hi", "strong_ratio": 1}),
                    ("/v1/chat/completions", chat(model="router-length-0.0"))]:
        assert _code(client.post(request[0], json=request[1], headers=HEADERS["b"]), 403) == "threshold_not_allowed"
    assert client.post("/v1/chat/completions", json=chat(), headers=HEADERS["b"]).status_code == 200


def test_the_rate_is_the_fleets_divided_among_ingress_replicas(serve):
    _, client = serve(api__limits__requests_per_s=0.01, api__limits__burst=6, api__limits__ingress_replicas=3)
    statuses = [client.get("/v1/models", headers=HEADERS["a"]).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]  # this replica's part of a burst of 6 over 3 replicas


def test_schema_needs_a_key_and_readiness_says_nothing_internal(serve):
    ingress, client = serve()
    assert _code(client.get("/openapi.json"), 401) == "unauthorized"
    assert "/v1/route" in client.get("/openapi.json", headers=HEADERS["a"]).json()["paths"]
    assert client.get("/healthz").status_code == 200

    async def broken():
        raise RuntimeError("connection to 10.0.0.7:6379 refused at /srv/secret/path")
    ingress.ready = broken
    response = client.get("/readyz")
    assert response.status_code == 503 and "10.0.0.7" not in response.text and "secret" not in response.text


def test_upstream_auth_failures_and_encodings(serve, upstream):
    _, client = serve(upstreams__strong__model="fail-401")
    response = client.post("/v1/chat/completions", json=chat(model="router-length-0.0"), headers=HEADERS["a"])
    assert _code(response, 502) == "upstream_auth_failed"
    _, client = serve()
    since = len(upstream.seen)
    raw = httpx.Client(base_url=client.base_url, headers={"accept-encoding": ""})  # no encoding asked for
    raw.post("/v1/chat/completions", json=chat(), headers=HEADERS["a"])
    client.post("/v1/chat/completions", json=chat(), headers={**HEADERS["a"], "accept-encoding": "gzip"})
    raw.close()
    assert [seen["accept-encoding"] for seen in upstream.seen[since:]] == ["identity", "gzip"]


def test_no_public_address_without_keys_unless_the_config_says_so(tmp_path, monkeypatch):
    """`turnout serve --host 0.0.0.0` and a KubeRay render with the keys removed refuse to start open to the
    network; the KubeRay overlays read their keys from the turnout-api-keys Secret and divide the rate by the
    ingress's max_replicas."""
    from index.errors import ConfigError
    from serve.deploy_render import API_KEYS_FILE, SCALING, serve_document
    from serve.launch import configure

    with pytest.raises(ConfigError, match="serving on 0.0.0.0 with no API keys"):
        configure(host="0.0.0.0")
    monkeypatch.setenv("TURNOUT_API_KEYS", " , ")  # set, but no key in it
    with pytest.raises(ConfigError, match="with no API keys"):
        configure(host="0.0.0.0")
    monkeypatch.setenv("TURNOUT_API_KEYS", "sk-1")
    assert configure(host="0.0.0.0").host == "0.0.0.0"
    monkeypatch.delenv("TURNOUT_API_KEYS")
    assert configure(host="127.0.0.1").host == "127.0.0.1"
    public = tmp_path / "public.yaml"  # the file's host is overridden by --host before the check
    public.write_text("http_options: {host: 0.0.0.0}\napplications:\n- import_path: serve.app:build_app\n")
    with pytest.raises(ConfigError, match=f"{public}: serving on 0.0.0.0"):
        configure(str(public))
    assert configure(str(public), host="127.0.0.1").host == "127.0.0.1"
    mine = tmp_path / "open.yaml"
    mine.write_text("applications:\n- args: {api: {auth: {api_keys_file: null}}}\n")
    with pytest.raises(ConfigError, match="with no API keys"):
        serve_document("cpu", mine)
    mine.write_text("applications:\n- args: {api: {auth: {api_keys_file: null, allow_public_without_auth: true}}}\n")
    assert serve_document("cpu", mine)["applications"][0]["args"]["api"]["auth"]["api_keys_file"] is None
    args = serve_document("cpu")["applications"][0]["args"]
    assert args["api"]["auth"]["api_keys_file"] == API_KEYS_FILE
    assert args["api"]["limits"]["ingress_replicas"] == SCALING["IngressDeployment"]["max_replicas"]
    # an empty Secret does not turn auth off: the replica refuses to start
    from serve.auth import load_digests

    empty = tmp_path / "keys"
    empty.write_text("# no keys yet\n\n")
    with pytest.raises(ConfigError, match="holds no key"):
        load_digests([], str(empty))


def test_the_fleet_size_comes_from_the_ingress_deployment():
    from serve.config import TurnoutConfig, with_fleet_size

    def size(deployment):
        return with_fleet_size(TurnoutConfig(), [{"name": "IngressDeployment", **deployment}]).api.limits.ingress_replicas

    assert size({}) == 1 and size({"num_replicas": 3}) == 3 and size({"num_replicas": "auto"}) == 100
    assert size({"autoscaling_config": {"min_replicas": 2, "max_replicas": 6}}) == 6
