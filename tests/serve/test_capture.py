"""Capture, request ids, feedback and shadow calls (issue 23, learn from your own traffic): the parts in
serve/capture.py on their own, then the ingress app over real HTTP on loopback (uvicorn, no Ray) with the fake
upstream, built by the harness of `loadtest.tenant_attacks` (the `length` router: no artifact, no backend)."""

import threading
import time

import pytest

pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

from loadtest.tenant_attacks import HEADERS, chat, ingress, served
from serve.auth import digest
from serve.capture import CaptureWriter, RequestIds, ShadowBudget, answer_fields
from serve.config import parse_app_args
from index.errors import ConfigError


# ----------------------------------------------------------------------------------------------- request ids

def test_request_ids_are_signed_for_their_key_and_expire():
    now = [1_000_000.0]
    ids = RequestIds(b"secret", ttl_s=60, clock=lambda: now[0])
    plain, captured, shadowed = ids.issue("a"), ids.issue("a", captured=True), ids.issue("a", True, True)
    assert len({plain, captured, shadowed}) == 3 and all(i.startswith("req-") for i in (plain, captured, shadowed))
    assert ids.check(plain, "a").captured is False
    assert ids.check(captured, "a").captured is True and ids.check(captured, "a").shadowed is False
    assert ids.check(shadowed, "a").shadowed is True
    assert ids.check(captured, "b") is None  # another key's request
    assert RequestIds(b"other", ttl_s=60, clock=lambda: now[0]).check(captured, "a") is None  # another fleet's
    tampered = captured[:-3] + ("aaa" if not captured.endswith("aaa") else "bbb")
    for bad in (tampered, "req-", "req-!!!", "nonsense", "req-" + "a" * 100, ""):
        assert ids.check(bad, "a") is None, bad
    now[0] += 61
    assert ids.check(captured, "a") is None  # expired


# ------------------------------------------------------------------------------------------------ the writer

class HeldWriter(CaptureWriter):
    """A writer whose thread starts writing only once `go` is set: its queue fills meanwhile."""

    def __init__(self, *args, **kwargs):
        self.go = threading.Event()
        super().__init__(*args, **kwargs)

    def _run(self):
        self.go.wait(30)
        super()._run()


def _counting():
    counts = {}

    def on_record(table, outcome, n):
        counts[(table, outcome)] = counts.get((table, outcome), 0) + n
    return counts, on_record


def _row(i):
    return {"request_id": f"r{i}", "time": None, "score": float(i), "key": "k"}


def test_writer_rotates_whole_files_and_counts(tmp_path):
    counts, on_record = _counting()
    writer = CaptureWriter(tmp_path, "r1", queue_size=100, rotate_rows=3, rotate_s=60, max_total_bytes=1 << 30,
                           on_record=on_record)
    for i in range(7):
        assert writer.offer("feedback", _row(i))
    writer.close()
    files = sorted((tmp_path / "feedback").iterdir())
    assert [pq.read_table(f).num_rows for f in files] == [3, 3, 1]
    assert not [f for f in files if f.name.startswith(".")]  # no partial file left behind
    assert sorted(pq.read_table(tmp_path / "feedback").column("score").to_pylist()) == [float(i) for i in range(7)]
    assert counts == {("feedback", "written"): 7}


def test_writer_closes_a_file_after_rotate_s(tmp_path):
    writer = CaptureWriter(tmp_path, "r1", queue_size=100, rotate_rows=1000, rotate_s=0.2, max_total_bytes=1 << 30)
    writer.offer("feedback", _row(0))
    deadline = time.monotonic() + 10
    while not list((tmp_path / "feedback").glob("*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(list((tmp_path / "feedback").glob("*.parquet"))) == 1  # written while the writer still runs
    writer.close()


def test_a_full_queue_drops_records_at_once_and_counts_them(tmp_path):
    counts, on_record = _counting()
    writer = HeldWriter(tmp_path, "r1", queue_size=2, rotate_rows=10, rotate_s=60, max_total_bytes=1 << 30,
                        on_record=on_record)
    start = time.perf_counter()
    accepted = [writer.offer("feedback", _row(i)) for i in range(5)]
    assert time.perf_counter() - start < 0.5
    assert accepted == [True, True, False, False, False]
    writer.go.set()
    writer.close()
    assert counts == {("feedback", "dropped_queue_full"): 3, ("feedback", "written"): 2}


def test_a_failed_write_is_counted_and_earlier_files_stay(tmp_path):
    counts, on_record = _counting()
    writer = CaptureWriter(tmp_path, "r1", queue_size=100, rotate_rows=1, rotate_s=60, max_total_bytes=1 << 30,
                           on_record=on_record)
    writer.offer("feedback", _row(0))
    writer.close()
    kept = list((tmp_path / "feedback").glob("*.parquet"))
    writer = CaptureWriter(tmp_path, "r1", queue_size=100, rotate_rows=1, rotate_s=60, max_total_bytes=1 << 30,
                           on_record=on_record)
    (tmp_path / "answers").rmdir()
    (tmp_path / "answers").write_text("not a folder")  # every write into the table fails
    writer.offer("answers", {"request_id": "x", "side": "weak"})
    writer.offer("feedback", _row(1))
    writer.close()
    assert counts[("answers", "dropped_write_failed")] == 1 and counts[("feedback", "written")] == 2
    assert all(f.exists() for f in kept)


def test_the_folder_is_bounded_oldest_files_first(tmp_path):
    writer = CaptureWriter(tmp_path, "r1", queue_size=100, rotate_rows=1, rotate_s=60, max_total_bytes=1 << 30)
    writer.offer("feedback", _row(0))
    writer.close()
    size = next((tmp_path / "feedback").glob("*.parquet")).stat().st_size
    writer = CaptureWriter(tmp_path, "r1", queue_size=100, rotate_rows=1, rotate_s=60, max_total_bytes=2 * size + 10)
    for i in range(1, 4):
        time.sleep(0.02)  # distinct modification times
        writer.offer("feedback", _row(i))
    writer.close()
    assert sorted(pq.read_table(tmp_path / "feedback").column("score").to_pylist()) == [2.0, 3.0]


# ------------------------------------------------------------------------------------------------- answers

def test_answer_fields_from_json_sse_and_gzip():
    import gzip
    import json

    body = {"choices": [{"message": {"content": "four"}}], "usage": {"prompt_tokens": 5, "completion_tokens": 1}}
    assert answer_fields(json.dumps(body).encode(), None, False) == {
        "answer": "four", "prompt_tokens": 5, "completion_tokens": 1, "error": None}
    assert answer_fields(gzip.compress(json.dumps(body).encode()), "gzip", False)["answer"] == "four"
    events = "".join(f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': p}}]})}\n\n" for p in "abc")
    events += f"data: {json.dumps({'choices': [], 'usage': {'prompt_tokens': 2, 'completion_tokens': 3}})}\n\n"
    streamed = answer_fields((events + "data: [DONE]\n\n").encode(), None, True)
    assert streamed == {"answer": "abc", "prompt_tokens": 2, "completion_tokens": 3, "error": None}
    assert answer_fields(b"not json", None, False)["error"] == "unreadable answer (JSONDecodeError)"
    assert answer_fields(b"x", "br", False)["error"] == "content-encoding br not decoded"


def test_shadow_budget_over_a_rolling_window():
    now = [0.0]
    budget = ShadowBudget(1.0, window_s=10, max_in_flight=1, clock=lambda: now[0])
    assert budget.room() is None
    budget.in_flight = 1
    assert budget.room() == "skipped_busy"
    budget.in_flight = 0
    budget.add(0.6)
    budget.add(0.5)
    assert budget.room() == "skipped_budget"
    now[0] = 10.5
    assert budget.room() is None and budget.total() == 0.0


@pytest.mark.parametrize("capture, prices, message", [
    ({"shadow_rate": 0.1, "shadow_budget_usd": 1.0}, True, "needs capture.enabled"),
    ({"enabled": True, "shadow_rate": 0.1}, True, "needs capture.shadow_budget_usd"),
    ({"enabled": True, "shadow_rate": 0.1, "shadow_budget_usd": 1.0}, False, "needs the prices"),
])
def test_shadow_calls_need_a_budget_and_prices(capture, prices, message):
    price = {"price_input_usd_per_mtok": 1.0, "price_output_usd_per_mtok": 2.0} if prices else {}
    upstreams = {side: {"base_url": "http://127.0.0.1:1/v1", "model": side, **price} for side in ("strong", "weak")}
    with pytest.raises(ConfigError, match=message):
        parse_app_args({"capture": capture, "upstreams": upstreams})


def test_a_fleet_of_ingress_replicas_needs_the_shared_secret(monkeypatch):
    from serve.capture import fleet_secret

    monkeypatch.delenv("TURNOUT_TEST_SECRET", raising=False)
    assert len(fleet_secret("TURNOUT_TEST_SECRET", replicas=1)) == 32  # one replica: its own secret will do
    with pytest.raises(ConfigError, match=r"may run 3 replicas, but \$TURNOUT_TEST_SECRET is not set"):
        fleet_secret("TURNOUT_TEST_SECRET", replicas=3)
    monkeypatch.setenv("TURNOUT_TEST_SECRET", "shared")
    assert fleet_secret("TURNOUT_TEST_SECRET", replicas=3) == b"shared"


# ------------------------------------------------------------------------------------------- over HTTP

@pytest.fixture
def serve(tmp_path, upstream):
    """serve(**options) -> (ingress, client, capture folder)."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        def start(**options):
            home = tmp_path / f"service-{len(list(tmp_path.iterdir()))}"
            home.mkdir()
            options.setdefault("capture__dir", str(home / "capture"))
            deployment = ingress(home, upstream.base_url, **options)
            if deployment.capture is not None:  # count what is offered: answers arrive after their response
                deployment.offered, offer = {}, deployment.capture.offer

                def counted(table, row):
                    deployment.offered[table] = deployment.offered.get(table, 0) + 1
                    return offer(table, row)
                deployment.capture.offer = counted
            url = stack.enter_context(served(deployment))
            client = stack.enter_context(httpx.Client(base_url=url, timeout=30))
            return deployment, client, home / "capture"
        yield start


def _tables(deployment, root, answers=0):
    """Every table written so far, once `answers` answer records were offered: closes the writer."""
    deadline = time.monotonic() + 20
    while (deployment.offered.get("answers", 0) < answers or deployment.tasks) and time.monotonic() < deadline:
        time.sleep(0.05)
    deployment.capture.close()
    return {table: pq.read_table(root / table).to_pylist() if list((root / table).glob("*.parquet")) else []
            for table in ("requests", "answers", "feedback")}


def test_every_response_carries_a_request_id(serve):
    _, client, _ = serve()
    answers = [client.get("/healthz"), client.post("/v1/route", json={"prompt": "hi"}),
               client.post("/v1/route", json={"prompt": "hi"}, headers=HEADERS["a"]),
               client.get("/nowhere", headers=HEADERS["a"]),
               client.post("/v1/chat/completions", json=chat("hi"), headers=HEADERS["a"])]
    assert [a.status_code for a in answers] == [200, 401, 200, 404, 200]
    ids = [a.headers["x-turnout-request-id"] for a in answers]
    assert len(set(ids)) == len(ids)
    # capture is off: there is nothing to give feedback on
    refused = client.post("/v1/feedback", json={"request_id": ids[2], "score": 1}, headers=HEADERS["a"])
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "unknown_request_id"


def test_routed_requests_and_their_answers_are_captured(serve, upstream):
    deployment, client, root = serve(capture__enabled=True)
    before = len(upstream.seen)
    routed = client.post("/v1/route", json={"messages": [{"role": "user", "content": "a short one"}]},
                         headers=HEADERS["a"])
    plain = client.post("/v1/chat/completions", json=chat("two words"), headers=HEADERS["a"])
    with client.stream("POST", "/v1/chat/completions", json=chat("a streamed " + "long " * 300, stream=True),
                       headers=HEADERS["b"]) as streamed:
        streamed.read()
    assert {routed.status_code, plain.status_code, streamed.status_code} == {200}
    tables = _tables(deployment, root, answers=2)
    requests = {row["request_id"]: row for row in tables["requests"]}
    assert set(requests) == {r.headers["x-turnout-request-id"] for r in (routed, plain, streamed)}
    row = requests[routed.headers["x-turnout-request-id"]]
    assert row["endpoint"] == "/v1/route" and row["prompt"] == "a short one" and row["router"] == "length"
    assert row["decision"] == routed.json()["model"] and row["p_strong"] == pytest.approx(routed.json()["p_strong"])
    assert row["prompt_sha256"] == digest("a short one") and row["embedding"] is None
    assert row["models"] == ["strong", "weak"] and row["key"] != requests[streamed.headers["x-turnout-request-id"]]["key"]
    row = requests[plain.headers["x-turnout-request-id"]]
    assert row["decision"] == plain.headers["x-turnout-model"] and '"two words"' in row["messages"]
    answers = {a["request_id"]: a for a in tables["answers"]}
    served_plain = answers[plain.headers["x-turnout-request-id"]]
    assert served_plain["answer"] == f"answer from {plain.headers['x-turnout-model']}"
    assert (served_plain["prompt_tokens"], served_plain["completion_tokens"], served_plain["shadow"]) == (3, 3, False)
    assert answers[streamed.headers["x-turnout-request-id"]]["answer"] == "Hello!"
    assert len(upstream.seen) - before == 2  # nothing was called for capture's sake


def test_capture_without_text_keeps_only_the_digest(serve):
    deployment, client, root = serve(capture__enabled=True, capture__store_text=False)
    answer = client.post("/v1/chat/completions", json=chat("private words"), headers=HEADERS["a"])
    tables = _tables(deployment, root, answers=1)
    (row,) = tables["requests"]
    assert (row["prompt"], row["messages"], row["prompt_sha256"]) == (None, None, digest("private words"))
    (served_answer,) = tables["answers"]
    assert served_answer["answer"] is None and served_answer["completion_tokens"] == 3
    assert "private" not in str(tables) and answer.status_code == 200


def test_feedback_is_kept_for_the_key_that_made_the_request(serve):
    deployment, client, root = serve(capture__enabled=True, capture__feedback_ttl_s=1.0)
    request_id = client.post("/v1/route", json={"prompt": "hi"}, headers=HEADERS["a"]).headers["x-turnout-request-id"]
    ok = client.post("/v1/feedback", json={"request_id": request_id, "score": 8}, headers=HEADERS["a"])
    assert ok.status_code == 200 and ok.json() == {"request_id": request_id, "recorded": True}
    for body, headers, status, code in [
        ({"request_id": request_id, "score": 1}, HEADERS["b"], 404, "unknown_request_id"),  # another key
        ({"request_id": "req-" + "a" * 37, "score": 1}, HEADERS["a"], 404, "unknown_request_id"),
        ({"request_id": request_id, "preferred": "weak"}, HEADERS["a"], 422, "invalid_input"),  # one answer only
        ({"request_id": request_id}, HEADERS["a"], 422, "invalid_request"),
        ({"request_id": request_id, "score": 11}, HEADERS["a"], 422, "invalid_request"),
        ({"request_id": request_id, "score": 1}, {}, 401, "unauthorized"),
    ]:
        refused = client.post("/v1/feedback", json=body, headers=headers)
        assert refused.status_code == status and refused.json()["error"]["code"] == code, (body, refused.text)
    time.sleep(2.2)
    expired = client.post("/v1/feedback", json={"request_id": request_id, "score": 1}, headers=HEADERS["a"])
    assert expired.status_code == 404
    (row,) = _tables(deployment, root)["feedback"]
    assert (row["request_id"], row["score"], row["preferred"]) == (request_id, 8.0, None)


def test_feedback_is_rate_limited_like_every_endpoint(serve):
    _, client, _ = serve(capture__enabled=True, api__limits__requests_per_s=0.01, api__limits__burst=2)
    request_id = client.post("/v1/route", json={"prompt": "hi"}, headers=HEADERS["a"]).headers["x-turnout-request-id"]
    assert client.post("/v1/feedback", json={"request_id": request_id, "score": 1}, headers=HEADERS["a"]).status_code == 200
    assert client.post("/v1/feedback", json={"request_id": request_id, "score": 1}, headers=HEADERS["a"]).status_code == 429


def test_a_shadowed_chat_calls_the_other_model_after_the_answer_within_its_budget(serve, upstream):
    deployment, client, root = serve(
        capture__enabled=True, capture__shadow_rate=1.0, capture__shadow_budget_usd=0.01,
        upstreams__strong__price_input_usd_per_mtok=1000.0, upstreams__strong__price_output_usd_per_mtok=2000.0,
        upstreams__weak__price_input_usd_per_mtok=1000.0, upstreams__weak__price_output_usd_per_mtok=2000.0)
    del upstream.seen[:]
    first = client.post("/v1/chat/completions", json=chat("compare us"), headers=HEADERS["a"])
    deadline = time.monotonic() + 20
    while len(upstream.seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    served_side = first.headers["x-turnout-model"]
    other = "weak" if served_side == "strong" else "strong"
    assert [seen["model"] for seen in upstream.seen] == [served_side, other]
    assert upstream.seen[1]["body"].get("stream") is None
    # 3 + 3 tokens at $1000 / $2000 per million: $0.009 of the $0.01 budget; a second shadow call still fits,
    # a third does not
    for text in ("again", "and again"):
        client.post("/v1/chat/completions", json=chat(text), headers=HEADERS["a"])
    request_id = first.headers["x-turnout-request-id"]
    preferred = client.post("/v1/feedback", json={"request_id": request_id, "preferred": "tie"}, headers=HEADERS["a"])
    assert preferred.status_code == 200
    tables = _tables(deployment, root, answers=5)
    shadows = [a for a in tables["answers"] if a["shadow"]]
    assert len(shadows) == 2 and len(upstream.seen) == 5
    mine = next(a for a in shadows if a["request_id"] == request_id)
    assert (mine["side"], mine["answer"], mine["cost_usd"]) == (other, f"answer from {other}", pytest.approx(0.009))
    assert all(row["shadowed"] for row in tables["requests"])
    assert tables["feedback"][0]["preferred"] == "tie"


def test_a_writer_that_falls_behind_never_holds_up_a_request(serve, tmp_path):
    deployment, client, root = serve(capture__enabled=True)
    deployment.capture.close()
    deployment.capture = HeldWriter(tmp_path / "held", "r", queue_size=1, rotate_rows=10, rotate_s=60,
                                    max_total_bytes=1 << 30, on_record=deployment.metrics.capture_record)
    answers = [client.post("/v1/chat/completions", json=chat(f"q {i}"), headers=HEADERS["a"]) for i in range(5)]
    assert [a.status_code for a in answers] == [200] * 5
    request_id = answers[-1].headers["x-turnout-request-id"]
    busy = client.post("/v1/feedback", json={"request_id": request_id, "score": 1}, headers=HEADERS["a"])
    assert busy.status_code == 503 and busy.json()["error"]["code"] == "capture_busy" and busy.headers["retry-after"]
    deployment.capture.go.set()
    deployment.capture.close()
