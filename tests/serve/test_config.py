"""Service config: defaults in one place, the generated YAML, overlays, Ray's overrides checked where Ray is lenient,
and every mistake as one ConfigError line naming the field."""

import copy

import pytest
import yaml

from index.errors import ConfigError
from serve.config import (
    DEPLOYMENT_DEFAULTS,
    EMBEDDING,
    INGRESS,
    TurnoutConfig,
    default_document,
    load_serve_file,
    parse_app_args,
    render_yaml,
    with_fleet_size,
)


def _doc():
    return copy.deepcopy(default_document())


def _args():
    return _doc()["applications"][0]["args"]


def test_default_config_is_valid_and_offline():
    served = load_serve_file()
    config = served.config
    assert served.host == "127.0.0.1" and served.port == 8000 and served.route_prefix == "/"
    assert config.routers.enabled == ["sw_ranking", "length", "random"] and config.routers.default == "sw_ranking"
    assert config.embedding_routers == ["sw_ranking"] and config.local_routers == ["length", "random"]
    assert config.artifacts.embedder == "minilm-openvino-int8" and config.routing.strong_ratio == 0.5
    for side in ("strong", "weak"):
        assert getattr(config.upstreams, side).base_url.startswith("http://127.0.0.1")
    assert config.deployments() == [EMBEDDING, INGRESS]  # no classifier without causal_llm


def test_deployment_defaults_pass_rays_own_schema():
    from ray.serve.schema import DeploymentSchema

    for name, options in DEPLOYMENT_DEFAULTS.items():
        DeploymentSchema.model_validate({"name": name, **options})
    assert DEPLOYMENT_DEFAULTS[EMBEDDING]["max_queued_requests"] == 32  # a burst beyond this is refused at once


def test_print_config_is_the_defaults_with_their_descriptions():
    """The generated YAML parses back to exactly the defaults, and documents each field."""
    text = render_yaml(default_document())
    parsed = yaml.safe_load(text)
    assert parsed == default_document()
    app = parsed["applications"][0]
    # the defaults, with the ingress replica count the limits are divided by taken from the deployments
    assert TurnoutConfig.model_validate(app["args"]) == with_fleet_size(TurnoutConfig(), app["deployments"])
    assert app["args"]["api"]["limits"]["ingress_replicas"] == 1
    description = TurnoutConfig.model_fields["routing"].annotation.model_fields["max_in_flight"].description
    assert f"# {description.split()[0]} {description.split()[1]}" in text


def test_an_embedding_deployment_on_a_gpu_embeds_with_torch_unless_the_args_say_otherwise():
    from index.embedder import DEFAULT_EMBEDDER
    from serve.config import with_deployments

    on_gpu = [{"name": "EmbeddingDeployment", "ray_actor_options": {"num_gpus": 1}}]
    assert TurnoutConfig().artifacts.embedder == DEFAULT_EMBEDDER
    assert with_deployments(TurnoutConfig(), on_gpu).artifacts.embedder == "minilm"
    assert with_deployments(TurnoutConfig(), [{"name": "EmbeddingDeployment"}]).artifacts.embedder == DEFAULT_EMBEDDER
    named = parse_app_args({"artifacts": {"embedder": "minilm-onnx"}})
    assert with_deployments(named, on_gpu).artifacts.embedder == "minilm-onnx"


def test_the_embedder_threads_are_the_configs_else_openvinos_own_else_the_reserved_cpus(monkeypatch):
    from serve.embedding import embedder_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # what Ray sets from the replica's reserved CPUs
    assert embedder_threads(parse_app_args({"artifacts": {"embedder": "minilm-openvino-int8"}})) is None
    assert embedder_threads(parse_app_args({"artifacts": {"embedder": "minilm-openvino"}})) is None
    for embedder in ("minilm", "minilm-onnx-int8", "hash-64"):
        assert embedder_threads(parse_app_args({"artifacts": {"embedder": embedder}})) == 3
    named = {"artifacts": {"embedder": "minilm-openvino-int8"}, "embedding": {"threads": 1}}
    assert embedder_threads(parse_app_args(named)) == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert embedder_threads(parse_app_args({"artifacts": {"embedder": "minilm"}})) is None


def test_an_overlay_gets_every_other_default(tmp_path):
    """deploy/causal.yaml names only what differs; the rest comes from the models, as under `serve run`."""
    from pathlib import Path

    served = load_serve_file(path=Path(__file__).parents[2] / "deploy" / "causal.yaml")
    config = served.config
    assert "causal_llm" in config.routers.enabled and config.classifier.dtype == "bfloat16"
    assert config.routing == TurnoutConfig().routing and config.upstreams == TurnoutConfig().upstreams
    filled = served.filled()["applications"][0]
    assert [d["name"] for d in filled["deployments"]] == config.deployments()
    assert len(served.app["args"]) <= 3  # an overlay, not a copy of the defaults


def test_deployment_overrides_in_rays_format(tmp_path):
    path = tmp_path / "serve.yaml"
    doc = _doc()
    doc["applications"][0]["deployments"] = [
        {"name": EMBEDDING, "autoscaling_config": {"min_replicas": 1, "max_replicas": 3}},
        {"name": INGRESS, "user_config": {"strong_ratio": 0.3}}]
    path.write_text(yaml.safe_dump(doc))
    served = load_serve_file(path=path)
    filled = {d["name"]: d for d in served.filled()["applications"][0]["deployments"]}
    assert filled[EMBEDDING]["autoscaling_config"]["max_replicas"] == 3
    assert filled[EMBEDDING]["max_queued_requests"] == 32  # untouched options keep their defaults
    assert "num_replicas" not in filled[EMBEDDING]  # replaced by the autoscaling_config, as Ray merges them
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(served.filled())  # what --print-config shows can be deployed


def _with_deployments(*items):
    doc = _doc()
    doc["applications"][0]["deployments"] = list(items)
    return yaml.safe_dump(doc)


@pytest.mark.parametrize("item, fragment", [
    ({"name": "RouterDeployment"}, "deployments[0].name: 'RouterDeployment' is not a deployment of this application"),
    ({"name": "ClassifierDeployment"}, "is not a deployment of this application"),  # causal_llm not enabled
    ({"name": EMBEDDING, "autoscaling_config": {"min_replica": 1}}, "autoscaling_config: unknown key(s) ['min_replica']"),
    ({"name": EMBEDDING, "autoscaling_config": {"min_replicas": 3, "max_replicas": 2}}, "autoscaling_config"),
    ({"name": EMBEDDING, "user_config": {"strong_ratio": 0.2}}, "only IngressDeployment takes a user_config"),
    ({"name": INGRESS, "user_config": {"strong_ratio": 2}}, "user_config.strong_ratio"),
    ({"name": INGRESS, "user_config": {"threshold": 0.2}}, "user_config.threshold: Extra inputs"),
    ({"name": INGRESS, "user_config": {"thresholds": {"bert": 0.2}}}, "not enabled: ['bert']"),
    ({"name": EMBEDDING, "max_ongoing_requests": 0}, "max_ongoing_requests"),  # Ray's own schema
])
def test_bad_deployment_overrides_are_one_line_errors(item, fragment):
    with pytest.raises(ConfigError) as info:
        load_serve_file(text=_with_deployments(item))
    message = str(info.value)
    assert fragment in message and "\n" not in message, message


def _mutate(edit):
    args = _args()
    edit(args)
    return args


@pytest.mark.parametrize("edit, fragment", [
    (lambda a: a["routers"].update(colour="red"), "routers.colour: Extra inputs are not permitted"),
    (lambda a: a["routers"].update(enabled=["mf", "nope"]), "unknown router(s) ['nope']"),
    (lambda a: a["routers"].update(default="sw_ranking", enabled=["mf"]), "default router 'sw_ranking' is not in enabled"),
    (lambda a: a["routers"].update(extra={"toy": "no.such.module:TOY"}), "cannot import 'no.such.module:TOY'"),
    (lambda a: a["routers"].update(extra={"mf": "models.registry:ROUTERS"}), "would replace the built-in one"),
    (lambda a: a["routers"].update(extra={"toy": "models.registry:ROUTERS"}), "is a dict, expected a RouterEntry"),
    (lambda a: a["routers"].update(options={"bert": {"k": 3}}), "options name routers that are not enabled: ['bert']"),
    (lambda a: a["routing"].update(strong_ratio=1.5), "routing.strong_ratio"),
    (lambda a: a["routing"].update(thresholds={"mf": 2.0}), "thresholds must be in [0, 1]"),
    (lambda a: a["routing"].update(thresholds={"length": 0.5}, strong_ratio=None), "must cover"),
    (lambda a: a["routing"].update(thresholds={"nope": 0.5}), "not enabled"),
    (lambda a: a["upstreams"]["strong"].update(base_url="localhost:8001"), "must start with http"),
    (lambda a: a.update(deployments={}), "deployments: Extra inputs are not permitted"),  # Ray's section, not args
    (lambda a: a["embedding"].update(max_batch_size=0), "embedding.max_batch_size"),
    (lambda a: a["scoring"].update(user_turns=0), "scoring.user_turns"),
])
def test_bad_args_are_one_line_config_errors(edit, fragment):
    with pytest.raises(ConfigError) as info:
        parse_app_args(_mutate(edit))
    message = str(info.value)
    assert fragment in message and "\n" not in message, message


def test_ray_part_and_file_problems_are_config_errors(tmp_path):
    doc = _doc()
    doc["http_options"]["port"] = "eighty"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="http_options.port"):
        load_serve_file(path=path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_serve_file(path=tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_serve_file(text="applications: [\n")
    with pytest.raises(ConfigError, match="exactly one application"):
        load_serve_file(text="applications:\n  - name: other\n    import_path: other.app:main\n")
