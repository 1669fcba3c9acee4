"""Service config: the embedded default is valid, every mistake is one ConfigError line naming the field."""

import copy

import pytest
import yaml

from index.errors import ConfigError
from serve.config import DEFAULT_CONFIG_YAML, load_serve_file, parse_app_args


def _doc():
    return yaml.safe_load(DEFAULT_CONFIG_YAML)


def _args():
    return copy.deepcopy(_doc()["applications"][0]["args"])


def test_default_config_is_valid_and_offline():
    served = load_serve_file()
    config = served.config
    assert served.host == "127.0.0.1" and served.port == 8000 and served.route_prefix == "/"
    assert config.routers.enabled == ["sw_ranking", "mf", "length", "random"]
    assert config.retrieval_routers == ["sw_ranking", "mf"] and config.local_routers == ["length", "random"]
    assert config.artifacts.embedder == "minilm" and config.routing.strong_ratio == 0.5
    for side in ("strong", "weak"):
        assert getattr(config.upstreams, side).base_url.startswith("http://127.0.0.1")
    options = config.deployments.retrieval.ray_options()
    assert options["num_replicas"] == 1 and options["max_ongoing_requests"] == 32
    assert options["max_queued_requests"] == 32  # a burst beyond this is refused at once
    assert options["ray_actor_options"]["num_cpus"] == 0.5


def test_config_file_round_trip(tmp_path):
    path = tmp_path / "serve.yaml"
    doc = _doc()
    doc["applications"][0]["args"]["deployments"]["retrieval"] = {
        "num_replicas": None, "autoscaling_config": {"min_replicas": 1, "max_replicas": 3}}
    path.write_text(yaml.safe_dump(doc))
    config = load_serve_file(path=path).config
    options = config.deployments.retrieval.ray_options()
    assert "num_replicas" not in options and options["autoscaling_config"]["max_replicas"] == 3


def _mutate(edit):
    args = _args()
    edit(args)
    return args


@pytest.mark.parametrize("edit, fragment", [
    (lambda a: a["routers"].update(colour="red"), "routers.colour: Extra inputs are not permitted"),
    (lambda a: a["routers"].update(enabled=["mf", "bert"]), "not yet servable router"),
    (lambda a: a["routers"].update(default="sw_ranking", enabled=["mf"]), "default router 'sw_ranking' is not in enabled"),
    (lambda a: a["routing"].update(strong_ratio=1.5), "routing.strong_ratio"),
    (lambda a: a["routing"].update(thresholds={"mf": 2.0}), "thresholds must be in [0, 1]"),
    (lambda a: a["routing"].update(thresholds={"length": 0.5}, strong_ratio=None), "must cover"),
    (lambda a: a["routing"].update(thresholds={"nope": 0.5}), "not enabled"),
    (lambda a: a["upstreams"]["strong"].update(base_url="localhost:8001"), "must start with http"),
    (lambda a: a["upstreams"].pop("weak"), "upstreams.weak: Field required"),
    (lambda a: a["deployments"]["router"].update(autoscaling_config={"max_replicas": 2}), "not both"),
    (lambda a: a["deployments"]["router"].update(max_ongoing_requests=0), "max_ongoing_requests"),
    (lambda a: a["deployments"]["router"].update(autoscaling_config={"min_replicas": 3, "max_replicas": 2}, num_replicas=None), "min_replicas 3 > max_replicas 2"),
    (lambda a: a["scoring"].update(user_turns=0), "scoring.user_turns"),
])
def test_bad_args_are_one_line_config_errors(edit, fragment):
    with pytest.raises(ConfigError) as info:
        parse_app_args(_mutate(edit))
    message = str(info.value)
    assert fragment in message and "\n" not in message


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

