"""Fuzzing the HTTP API (issue 12, reliability and security): schemathesis against the service's own
`/openapi.json`, over real HTTP, on a real Ray Serve application (the serve tests' fixtures: tiny artifacts on the
hash-64 embedder, every router they train, both upstreams on the fake OpenAI server so that chat completions
really proxy, streams included).

`loadtest.fuzz` does the work; here about 1,000 cases in all (its PLAN: schema-valid, schema-violating and malformed
raw bodies for `/v1/route` and `/v1/chat/completions`), with Hypothesis seed 0, so every run sends the same cases.
Each answer: no 5xx, status, content type and body as the OpenAPI document declares them, every error of the
service's own in the one documented shape with a code README's Errors table lists for its status, schema-violating
and non-JSON bodies refused with a 4xx. The longer run is `python -m loadtest.fuzz --cases 5000` (RELIABILITY.md,
Fuzzing). The tests after the fuzz runs pin each bug the fuzzer found, one by one.
"""

import json
import math
import os
import time

import httpx
import pytest

try:
    import schemathesis  # noqa: F401  (the dev extra installs it)
except ImportError:
    if os.environ.get("CI"):
        raise
    pytest.skip("schemathesis is not installed (pip install -e '.[dev]')", allow_module_level=True)

from loadtest.fuzz import PLAN, app_args_for, error_shape, fuzz_run, load_schema, plan
from tests.serve.conftest import deploy_apps
from tests.serve.test_app import DOCUMENTED_CODES

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CI_CASES = 1000
SEED = 0
HUMAN = "fuzz the router"


@pytest.fixture(scope="module")
def service(ray_cluster, artifacts, upstream):
    home, reference = artifacts
    deploy_apps({"fuzz": ("/", app_args_for(home, reference, upstream.base_url), {})})
    url = ray_cluster["http"]
    with httpx.Client(base_url=url, timeout=60) as client:
        yield {"url": url, "schema": load_schema(url), "client": client, "seconds": {}}


def _documented(response, status: int, fragment: str = "") -> dict:
    """An error answer of the service's own: its status, the documented body and code, a message with `fragment`."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert error_shape(response, DOCUMENTED_CODES) is None, error_shape(response, DOCUMENTED_CODES)
    error = response.json()["error"]
    assert fragment in error["message"], error["message"]
    return error


# ------------------------------------------------------------------------------------------------ the fuzz runs

@pytest.mark.parametrize("operation, kind", list(PLAN), ids=[f"{op.rsplit('/', 1)[-1]}-{kind}" for op, kind in PLAN])
def test_fuzz(service, operation, kind):
    cases = plan(CI_CASES)[(operation, kind)]
    run = fuzz_run(service["schema"], service["url"], operation, kind, cases, SEED, DOCUMENTED_CODES)
    service["seconds"][(operation, kind)] = run["seconds"]
    assert run["failures"] == [], json.dumps(run["failures"], indent=1)[:8000]
    assert run["server_errors"] == 0 and run["transport_errors"] == 0, run["statuses"]
    assert run["cases"] >= 0.9 * cases, run["cases"]  # Hypothesis ran (about) what was asked
    if kind == "positive":  # steered cases get past the validators: routing and the proxy are fuzzed too
        assert run["statuses"].get("200", 0) >= 0.15 * run["cases"], run["statuses"]
        if operation == "/v1/chat/completions":  # proxied for real, streams included
            assert run["proxied"] >= 0.15 * run["cases"] and run["media_types"].get("text/event-stream", 0) > 0, run
    if kind == "negative":  # negative_data_rejection says the same per case; here the whole run at a glance
        assert all(400 <= int(status) < 500 for status in run["statuses"]), run["statuses"]


def test_the_cases_add_up_to_the_ci_budget():
    assert 950 <= sum(plan(CI_CASES).values()) <= 1050


def test_a_seed_draws_the_same_cases(service):
    """Cases are drawn before any is sent (their draws would otherwise vary with the server's response times), so a
    seed gives the same cases; another seed gives others."""
    from loadtest.fuzz import draw_cases

    def bodies(kind, seed):
        drawn = draw_cases(service["schema"], "/v1/chat/completions", kind, 20, seed)
        return [repr(case) if kind == "malformed" else repr(case.body) for case in drawn]

    for kind in ("positive", "negative", "malformed"):
        assert bodies(kind, SEED) == bodies(kind, SEED) != bodies(kind, SEED + 1), kind


# ---------------------------------------------------------------------- what the OpenAPI document declares

def test_openapi_declares_the_error_body_for_every_status(service):
    """Before: only FastAPI's 422 with its `{"detail": [...]}` model, which the service never answers, and none of
    400/401/413/429/5xx, so every one of those answers was undocumented to clients."""
    doc = service["client"].get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert schemas["ErrorResponse"]["required"] == ["error"]
    assert set(schemas["ErrorDetail"]["required"]) == {"message", "type", "code"}
    assert "HTTPValidationError" not in schemas
    expected = {"/v1/route": {400, 401, 403, 408, 413, 422, 429, 500, 503},
                "/v1/chat/completions": {400, 401, 403, 408, 413, 422, 429, 500, 502},
                "/v1/feedback": {400, 401, 404, 408, 413, 422, 429, 500, 503}}
    feedback_only = {"unknown_request_id", "capture_busy"}
    for path, statuses in expected.items():
        responses = doc["paths"][path]["post"]["responses"]
        assert {int(s) for s in responses} == statuses | {200}, (path, sorted(responses))
        for status in statuses:
            schema = responses[str(status)]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (path, status)
            # the description names the codes README lists for that status (404/405 belong to no route; a
            # stream cut is an event inside a 200)
            for code in (c for c, listed in DOCUMENTED_CODES.items() if status in listed):
                if code in ("not_found", "method_not_allowed", "upstream_stream_cut"):
                    continue
                if (code in feedback_only) != (path == "/v1/feedback") and status in (404, 503):
                    continue
                assert f"`{code}`" in responses[str(status)]["description"], (path, status, code)
    chat_ok = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert set(chat_ok) == {"application/json", "text/event-stream"}


def test_a_stream_matches_the_declared_event_schema(service):
    """Before: the 200 declared application/json only, and a stream (text/event-stream) failed content-type
    conformance; a string schema for it then failed each event, which schemathesis reads as an object."""
    from loadtest.fuzz import _failures, _schemathesis_checks

    api = service["schema"]["/v1/chat/completions"]["POST"]
    body = {"model": "router-length-0.0", "stream": True, "messages": [{"role": "user", "content": HUMAN}]}
    case = api.Case(body=body, media_type="application/json")
    response = case.call(base_url=service["url"], timeout=30)
    assert response.status_code == 200 and response.headers["content-type"][0].startswith("text/event-stream")
    assert _failures(case, response, _schemathesis_checks("positive")) == []


# ------------------------------------------------------------------------------- regressions, one per finding

@pytest.mark.parametrize("path, template", [
    ("/v1/route", '{{"messages": [{{"role": "user", "content": "hi", "x": {}}}], "router": "length"}}'),
    ("/v1/chat/completions",
     '{{"model": "router-length", "messages": [{{"role": "user", "content": "hi"}}], "response_format": {}}}'),
], ids=["route", "chat"])
def test_deep_nesting_is_refused_at_every_depth(service, path, template):
    """Before: a 500 at two places. Sent as JSON, a body nested ~970 levels deep parsed, then overflowed the stack
    when it was serialised again for the upstream (below that depth it was forwarded, above it the parser failed
    and the message said "not UTF-8 text"); sent with another Content-Type, the validation handler's own json.loads
    overflowed at any depth past ~1000. Now: MAX_JSON_DEPTH (100) levels pass, deeper is 400 malformed_json."""
    from serve.protocol import MAX_JSON_DEPTH

    client = service["client"]
    json_type = {"content-type": "application/json"}
    ok = template.format("[" * (MAX_JSON_DEPTH - 3) + "]" * (MAX_JSON_DEPTH - 3))  # the body itself nests 3 levels
    assert client.post(path, content=ok, headers=json_type).status_code == 200
    for depth in [MAX_JSON_DEPTH, 500, *range(940, 1010, 3), 1500, 5000, 100_000]:
        body = template.format("[" * depth + "]" * depth)
        _documented(client.post(path, content=body, headers=json_type), 400, "malformed JSON body: nested")
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"content-type": content_type} if content_type else {}
        body = template.format("[" * 100_000 + "]" * 100_000)
        _documented(client.post(path, content=body, headers=headers), 400, "malformed JSON body: nested too deeply")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "cesu"])
def test_bodies_not_in_utf8_are_malformed_json(service, encoding):
    """Before: json.loads reads UTF-16 and UTF-32 (and surrogates encoded in UTF-8) too, so such bodies were
    answered 200 and forwarded, although README says a body that is not UTF-8 is 400 malformed_json."""
    client = service["client"]
    for path, body in [("/v1/route", {"prompt": HUMAN, "router": "length"}),
                       ("/v1/chat/completions",
                        {"model": "router-length", "messages": [{"role": "user", "content": HUMAN}]})]:
        text = json.dumps(body, ensure_ascii=False)
        raw = (text.replace("fuzz", "\ud800").encode("utf-8", "surrogatepass") if encoding == "cesu"
               else text.encode(encoding))
        _documented(client.post(path, content=raw, headers={"content-type": "application/json"}), 400,
                    "malformed JSON body: not UTF-8 text")
        # UTF-8 with a byte order mark is still UTF-8 (RFC 8259 lets a parser ignore the mark)
        bom = client.post(path, content=b"\xef\xbb\xbf" + text.encode(), headers={"content-type": "application/json"})
        assert bom.status_code == 200, bom.text


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_malformed_json(service, literal):
    """Before: Python's parser takes NaN and Infinity (not JSON) and turns 1e999 into inf; an extra chat field
    carrying one was forwarded upstream re-serialised as `NaN`/`Infinity`, a body no strict JSON parser reads."""
    client = service["client"]
    body = f'{{"model": "router-length", "messages": [{{"role": "user", "content": "hi"}}], "temperature": {literal}}}'
    _documented(client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"}), 400,
                "is not a JSON number")
    route = f'{{"prompt": "hi", "router": "length", "threshold": {literal}}}'
    _documented(client.post("/v1/route", content=route, headers={"content-type": "application/json"}), 400,
                "is not a JSON number")


def test_an_integer_past_pythons_digit_limit_says_so(service):
    """Before: any parse failure other than a syntax error was reported as "not UTF-8 text"."""
    body = '{"prompt": "hi", "router": "length", "threshold": ' + "1" * 5000 + "}"
    error = _documented(service["client"].post("/v1/route", content=body, headers={"content-type": "application/json"}),
                        400, "malformed JSON body: ")
    assert "UTF-8" not in error["message"] and "digits" in error["message"], error["message"]


@pytest.mark.parametrize("text", ["\\ud800", "\\udfff", "a\\ud800b", "\\ud83d hello", "\\ud800" * 50],
                         ids=["high", "low", "inside", "unpaired-high", "fifty"])
def test_lone_surrogates_are_scored_not_a_backend_failure(service, text):
    """Before: a lone UTF-16 surrogate (a legal JSON escape, not a Unicode character) reached bert's tokenizer,
    which raised TypeError in the embedding deployment: /v1/route answered 503 router_unavailable and chat fell back,
    counted as a backend failure. The MiniLM embedder behind sw_ranking and mf in production has the same tokenizer."""
    client = service["client"]
    json_type = {"content-type": "application/json"}
    for router in ("bert", "sw_ranking", "mf", "length"):
        route = client.post("/v1/route", content=f'{{"prompt": "{text}", "router": "{router}"}}', headers=json_type)
        assert route.status_code == 200, (router, route.text)
        assert math.isfinite(route.json()["p_strong"])
    chat = client.post("/v1/chat/completions", headers=json_type,
                       content=f'{{"model": "router-bert", "messages": [{{"role": "user", "content": "{text}"}}]}}')
    assert chat.status_code == 200 and "x-turnout-fallback" not in chat.headers, (chat.headers, chat.text)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_json_sent_with_another_content_type_names_the_content_type(service, content_type):
    """Before: `curl -d '{"prompt": "hi"}'` (form-encoded by default) got 422 "Input should be a valid dictionary or
    object", which reads as if the JSON were wrong. The body stays refused (FastAPI's strict content type: a web page
    cannot post JSON cross-site without a preflight), with a message that says why."""
    headers = {"content-type": content_type} if content_type else {}
    for path, body in [("/v1/route", {"prompt": HUMAN}),
                       ("/v1/chat/completions",
                        {"model": "turnout", "messages": [{"role": "user", "content": HUMAN}]})]:
        _documented(service["client"].post(path, content=json.dumps(body), headers=headers), 422,
                    f"the body is JSON but its Content-Type is {content_type!r}: send it as application/json")


def test_json_problem_and_scorable():
    """The pure checks behind the regressions above."""
    from serve.protocol import MAX_JSON_DEPTH, json_problem, scorable

    def problem(raw: bytes):
        return json_problem(raw, json.loads(raw))

    assert problem(b'{"a": [1, {"b": 0.5}]}') is None
    assert problem(b"\xef\xbb\xbf{}") is None
    assert problem('{"a": 1}'.encode("utf-16")) == "not UTF-8 text"
    assert problem('{"a": 1}'.encode("utf-16-le")) == "not UTF-8 text"  # no BOM: valid UTF-8 bytes, NULs and all
    assert problem(b'"\xed\xa0\x80"') == "not UTF-8 text"
    assert "NaN" in problem(b'{"a": [NaN]}') and "out of range" in problem(b'{"a": 1e999}')
    assert problem(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH) is None
    deeper = b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1)
    assert problem(deeper) == f"nested deeper than {MAX_JSON_DEPTH} levels"
    started = time.perf_counter()
    wide = json.dumps({"messages": [{"role": "user", "content": "x" * 100}] * 5000}).encode()
    assert problem(wide) is None and time.perf_counter() - started < 0.5
    assert scorable("plain") == "plain" and scorable("a\ud800b\udfff") == "a\ufffdb\ufffd"
    assert scorable(json.loads('"\\ud83d\\ude00"')) == "\U0001f600"  # a proper pair is one character: kept
