"""Fixtures for serve tests: tiny artifacts (hash-64 embedder, synthetic battles), one local Ray per session.

Ray is kept small for a shared 2-core machine (num_cpus=2, no dashboard) and shut down at the end; metrics are
exported every second on a free port so that tests can scrape them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.serve.fakes import FakeUpstream, free_port

EMBEDDER = "hash-64"
REFERENCE_PROMPTS = [
    f"{'math equation algebra' if i % 2 else 'chat greeting hello'} question {i} about topic {i * 5 % 11}"
    for i in range(200)
]


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory):
    """A home with sw_ranking and mf trained on synthetic battles, and a reference prompt file."""
    home = tmp_path_factory.mktemp("serve-home")
    return home, build_tiny_artifacts(home)


def build_tiny_artifacts(home: Path) -> Path:
    """sw_ranking, mf and a tiny random bert under <home>/routers (hash-64 embedder), and the reference prompt
    file; returns the file's path. Also the fuzzer's service (loadtest/fuzz.py)."""
    from index.embedder import HashEmbedder
    from models import matrix_factorization as mf
    from models import sw_ranking
    from tests.models.test_sw_ranking import _training_data

    embedder = HashEmbedder(64)
    sw_ranking.train(_training_data(), embedder, home / "routers")
    tiny = mf.MFConfig(dim=8, epochs=10, batch_size=256, lr=3e-2, weight_decay=0.0, seed=0)
    mf.train(_training_data(n_battles=2000), embedder, home / "routers", tiny, progress=False)
    _tiny_bert(home / "routers")
    reference = home / "reference.txt"
    reference.write_text("\n".join(REFERENCE_PROMPTS) + "\n")
    return reference


def _tiny_bert(root) -> None:
    """A random-init 2-layer, 32-wide bert checkpoint for the strong-1/weak-1 pair (served, not judged on quality)."""
    transformers = pytest.importorskip("transformers")
    import torch

    from models import bert
    from models.labels import write_checkpoint

    tokenizer = transformers.AutoTokenizer.from_pretrained(bert.default_base())
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                                     num_labels=3)
    write_checkpoint(root / bert.NAME, transformers.BertForSequenceClassification(config), tokenizer,
                     {"router": bert.NAME, "max_length": 32, "tiers": {"strong-1": 0, "weak-1": 1},
                      "pair": {"strong": "strong-1", "weak": "weak-1", "tiers": [0, 1]}})


def app_args(home, reference, strong_url, weak_url, **overrides) -> dict:
    """The default args, pointed at the tiny artifacts and the given upstreams."""
    from serve.config import TurnoutConfig

    args = TurnoutConfig().model_dump(mode="json")
    # the tests pin their default router rather than follow the shipped one
    args["routers"].update(strong_model="strong-1", weak_model="weak-1", enabled=["sw_ranking", "mf", "length", "random"],
                           default="mf")
    args["artifacts"].update(home=str(home), embedder=EMBEDDER, build_missing=False)
    args["calibration"].update(reference=str(reference), max_prompts=100)
    args["routing"]["controller"].update(window=50, min_live=10)
    args["upstreams"]["strong"].update(base_url=strong_url, api_key_env="TURNOUT_TEST_STRONG_KEY")
    args["upstreams"]["weak"].update(base_url=weak_url, api_key_env=None)
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        args[section][field] = value
    return args


def small_deployments(config, **options) -> list[dict]:
    """Ray overrides that fit several applications on the tests' 2-CPU Ray: 0.1 CPU, 32 ongoing requests each."""
    return [{"name": name, "max_ongoing_requests": 32, "ray_actor_options": {"num_cpus": 0.1}, **options.get(name, {})}
            for name in config.deployments()]


def deploy_apps(apps: dict[str, tuple[str, dict, dict]], timeout_s: float = 300) -> dict:
    """Prepare each application's args and deploy them all as one Serve config document, as `serve run FILE`
    and `turnout serve` do (Ray builds them from the import path and applies the `deployments:` overrides).

    apps: name -> (route_prefix, args, {deployment name: extra Ray options}). Returns name -> prepared config.
    """
    from serve.artifacts import prepare
    from serve.config import APP_IMPORT_PATH, parse_app_args
    from serve.launch import run_document

    configs, documents = {}, []
    for name, (prefix, args, options) in apps.items():
        configs[name] = prepare(parse_app_args(args))
        documents.append({"name": name, "route_prefix": prefix, "import_path": APP_IMPORT_PATH,
                          "logging_config": {"enable_access_log": False},
                          "args": configs[name].model_dump(mode="json"),
                          "deployments": small_deployments(configs[name], **options)})
    run_document({"applications": documents}, timeout_s=timeout_s)
    return configs


@pytest.fixture(scope="session")
def upstream():
    with FakeUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray per test module (torn down before the next, which may start its own): 2 CPUs, no dashboard, metrics on a free port every second."""
    pytest.importorskip("ray.serve")
    import ray
    from ray import serve

    from serve.launch import apply_ray_env

    os.environ["TURNOUT_TEST_STRONG_KEY"] = "sk-test-strong"  # replicas inherit the driver's environment
    os.environ["TURNOUT_GAUGE_REFRESH_S"] = "0.5"  # metrics are reported every second here, not every ten
    apply_ray_env()  # the transport `turnout serve` uses
    metrics_port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, _metrics_export_port=metrics_port, log_to_driver=False,
             _system_config={"metrics_report_interval_ms": 1000})
    http_port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": http_port})
    try:
        yield {"http": f"http://127.0.0.1:{http_port}", "metrics": f"http://127.0.0.1:{metrics_port}/metrics"}
    finally:
        serve.shutdown()
        ray.shutdown()
