"""deploy/k8s: both overlays build with `kubectl kustomize`, every manifest passes the KubeRay CRD schema in strict
mode and the operator's rules (serve/deploy_render.py `check_rayservice`), serveConfigV2 is exactly what
`turnout deploy render` makes from the config model, and the pods agree with it (paths, env, ports, probes).

Needs kubectl (deploy/ci/k8s_tools.sh installs it) and ../shared/data/kuberay-crds: without them these tests skip,
and fail under CI.
"""

from __future__ import annotations

import copy
import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from index.errors import ConfigError
from serve import deploy_render
from serve.config import CLASSIFIER, EMBEDDING, INGRESS, load_serve_file
from serve.deploy_render import OVERLAYS, check_rayservice, render, write
from tests.deploy import missing

OVERLAY_NAMES = list(OVERLAYS)


def _missing(reason: str) -> None:
    """A tool or file these tests need is absent: a failure under CI, a skip elsewhere."""
    missing(reason, " (CI is set; run deploy/ci/k8s_tools.sh)")


@functools.lru_cache(maxsize=None)
def _kubectl() -> str | None:
    """kubectl on PATH, or the one deploy/ci/k8s_tools.sh installs from PyPI beside this Python's scripts."""
    import sysconfig

    for path in (shutil.which("kubectl"), str(Path(sysconfig.get_path("scripts")) / "kubectl")):
        if path and os.access(path, os.X_OK):
            probe = subprocess.run([path, "kustomize", "--help"], capture_output=True, text=True, timeout=60)
            if probe.returncode == 0:
                return path
    return None


@functools.lru_cache(maxsize=None)
def _build(overlay: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run([_kubectl(), "kustomize", str(deploy_render.K8S_DIR / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def built(overlay: str) -> list[dict[str, Any]]:
    """The overlay's manifests as `kubectl kustomize` builds them (fresh copies: tests may break them)."""
    if _kubectl() is None:
        _missing("kubectl with the kustomize subcommand is not installed")
    return copy.deepcopy(list(_build(overlay)))


def rayservice(overlay: str) -> dict[str, Any]:
    (service,) = [d for d in built(overlay) if d["kind"] == "RayService"]
    return service


def _crd_file() -> Path:
    from index.paths import data_dir

    try:
        path = data_dir() / "kuberay-crds" / "ray.io_rayservices.yaml"
    except Exception:  # no shared data folder at all
        path = None
    if path is None or not path.is_file():
        _missing("the KubeRay CRDs (../shared/data/kuberay-crds) are not there")
    return path


def _strict(node: Any) -> Any:
    """The CRD schema as the API server applies it with strict field validation: unknown fields are errors
    wherever the CRD lists an object's properties and does not preserve unknown fields."""
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _strict(value) for key, value in node.items()}
    if (node.get("type") == "object" and isinstance(node.get("properties"), dict)
            and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields")):
        node["additionalProperties"] = False
    return node


@functools.lru_cache(maxsize=None)
def _validator():
    import jsonschema

    crd = yaml.safe_load(_crd_file().read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    assert version["served"] and version["storage"]
    return jsonschema.Draft7Validator(_strict(version["schema"]["openAPIV3Schema"]))


def schema_errors(manifest: dict[str, Any]) -> list[str]:
    """Every strict-schema violation, each as 'path.to.field: message'."""
    out = []
    for error in sorted(_validator().iter_errors(manifest), key=lambda e: list(map(str, e.absolute_path))):
        where = ".".join(str(p) for p in error.absolute_path) or "(root)"
        out.append(f"{where}: {error.message}")
    return out


def serve_file(service: dict[str, Any]):
    return load_serve_file(text=service["spec"]["serveConfigV2"])


def pods(service: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    cluster = service["spec"]["rayClusterConfig"]
    groups = [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster["workerGroupSpecs"]]
    return [(name, group["template"]["spec"]) for name, group in groups]


# --------------------------------------------------------------------------------------------- kustomize


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_overlay_builds_with_generated_names_and_images(overlay):
    docs = built(overlay)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "CronJob", "PersistentVolumeClaim", "PersistentVolumeClaim", "RayService"]
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    service = rayservice(overlay)
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    volume = next(v for v in head["volumes"] if "configMap" in v)
    # The hashed name is written into the CRD's pod template (overlays/*/kustomizeconfig.yaml), so the head
    # mounts the ConfigMap that exists, and a changed prepare.yaml changes the pod template; kustomize itself
    # rewrites the CronJob's.
    assert config_map["metadata"]["name"].startswith("turnout-prepare-")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    job = _retrain_pod(docs)
    assert next(v for v in job["volumes"] if "configMap" in v)["configMap"]["name"] == config_map["metadata"]["name"]
    for _, pod in pods(service):
        for container in pod.get("initContainers", []) + pod["containers"]:
            name, _, tag = container["image"].partition(":")
            assert name in ("turnout-cpu", "turnout-gpu") and tag, container["image"]  # kustomize `images:` applied


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_committed_files_are_a_fresh_render(overlay):
    for rel, text in render(overlay).items():
        path = deploy_render.K8S_DIR / rel
        assert path.read_text() == text, f"{path} is stale or hand-edited: run turnout deploy render --overlay {overlay}"


# ------------------------------------------------------------------------------------------ CRD schema


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_rayservice_passes_the_crd_schema_strictly(overlay):
    assert schema_errors(rayservice(overlay)) == []


@pytest.mark.parametrize("mutate, field", [
    (lambda s: s["spec"]["rayClusterConfig"]["headGroupSpec"].update(rayStartParam={"num-cpus": "0"}), "rayStartParam"),
    (lambda s: s["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(minReplicas="one"), "minReplicas"),
    (lambda s: s["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
     ["readinessProbe"]["httpGet"].update(paht="/healthz"), "paht"),
    (lambda s: s["spec"]["rayClusterConfig"]["authOptions"].update(mode="password"), "authOptions.mode"),
    (lambda s: s["spec"].update(serveConfigV2={"applications": []}), "serveConfigV2"),
])
def test_crd_schema_rejects_a_broken_manifest_naming_the_field(mutate, field):
    service = rayservice("cpu")
    mutate(service)
    errors = schema_errors(service)
    assert errors and any(field in e for e in errors), errors


# -------------------------------------------------------------------------------------- operator rules


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_rayservice_passes_the_operator_rules(overlay):
    check_rayservice(rayservice(overlay))


def _cluster(s):
    return s["spec"]["rayClusterConfig"]


def _serve_edit(edit):
    def mutate(service):
        document = yaml.safe_load(service["spec"]["serveConfigV2"])
        edit(document)
        service["spec"]["serveConfigV2"] = yaml.safe_dump(document)
    return mutate


def _drop_gpu_group(service):
    _cluster(service)["workerGroupSpecs"] = [g for g in _cluster(service)["workerGroupSpecs"] if g["groupName"] != "gpu"]


@pytest.mark.parametrize("overlay, mutate, field", [
    ("cpu", lambda s: s["metadata"].update(name="t" * 48), "metadata.name"),
    ("cpu", lambda s: s["metadata"].update(name="Turnout_1"), "metadata.name"),
    ("cpu", lambda s: s["metadata"].update(name="1turnout"), "metadata.name"),
    ("cpu", lambda s: _cluster(s)["workerGroupSpecs"][0].update(minReplicas=5, maxReplicas=4),
     "workerGroupSpecs[0].minReplicas"),
    ("cpu", lambda s: _cluster(s)["workerGroupSpecs"][0].update(maxReplicas=-1), "workerGroupSpecs[0].maxReplicas"),
    ("cpu", lambda s: _cluster(s)["headGroupSpec"].update(resources={"CPU": "1"}), "headGroupSpec.resources"),
    ("gpu", lambda s: _cluster(s)["workerGroupSpecs"][1].update(resources={"GPU": "1"}),
     "workerGroupSpecs[1].resources"),
    ("cpu", lambda s: _cluster(s)["headGroupSpec"]["rayStartParams"].update(labels="a=b"), "rayStartParams.labels"),
    ("cpu", lambda s: s["spec"]["upgradeStrategy"].update(type="Recreate"), "spec.upgradeStrategy.type"),
    ("cpu", lambda s: s["spec"]["upgradeStrategy"].update(type="NewClusterWithIncrementalUpgrade"),
     "spec.upgradeStrategy.clusterUpgradeOptions"),
    ("cpu", lambda s: _cluster(s).update(rayVersion="2.9.0"), "spec.rayClusterConfig.rayVersion"),
    ("cpu", lambda s: _cluster(s)["workerGroupSpecs"][0]["template"]["spec"].update(restartPolicy="Always"),
     "workerGroupSpecs[0].template.spec.restartPolicy"),
    ("cpu", lambda s: _cluster(s).pop("autoscalerOptions"), "workerGroupSpecs[0].idleTimeoutSeconds"),
    ("cpu", lambda s: _cluster(s)["workerGroupSpecs"][0]["template"]["spec"].update(containers=[]),
     "workerGroupSpecs[0].template.spec.containers"),
    ("cpu", lambda s: _cluster(s)["headGroupSpec"].update(headService={"metadata": {"name": "mine"}}),
     "headService.metadata.name"),
    ("cpu", lambda s: (_cluster(s).update(enableInTreeAutoscaling=False), _cluster(s)["workerGroupSpecs"][0].pop(
        "minReplicas")), "workerGroupSpecs[0]: minReplicas and maxReplicas are both required"),
    # GPU deployments only where a worker group has nvidia.com/gpu
    ("gpu", _drop_gpu_group, "ray_actor_options.num_gpus"),
    ("gpu", lambda s: _cluster(s)["workerGroupSpecs"][1]["rayStartParams"].update({"num-gpus": "0"}),
     "ray_actor_options.num_gpus"),
    # serveConfigV2 content: Ray's schema, turnout's args, strict autoscaling keys, min <= max
    ("cpu", lambda s: s["spec"].pop("serveConfigV2"), "spec.serveConfigV2"),
    ("cpu", _serve_edit(lambda d: d.update(proxy_location="Nowhere")), "proxy_location"),
    ("cpu", _serve_edit(lambda d: d["applications"][0]["args"]["routing"].update(strong_ratio=2)),
     "args.routing.strong_ratio"),
    ("cpu", _serve_edit(lambda d: d["applications"][0]["args"].update(colour="blue")), "args.colour"),
    ("cpu", _serve_edit(lambda d: d["applications"][0]["deployments"][0]["autoscaling_config"].update(min_replica=2)),
     "autoscaling_config: unknown key(s) ['min_replica']"),
    ("cpu", _serve_edit(lambda d: d["applications"][0]["deployments"][0]["autoscaling_config"].update(
        min_replicas=9, max_replicas=2)), "autoscaling_config"),
    ("cpu", _serve_edit(lambda d: d["applications"][0]["deployments"][0].update(name="Nope")), "deployments[0].name"),
])
def test_operator_rules_reject_a_broken_manifest_naming_the_field(overlay, mutate, field):
    service = rayservice(overlay)
    mutate(service)
    with pytest.raises(ConfigError) as info:
        check_rayservice(service)
    message = str(info.value)
    assert field in message and "\n" not in message, message


def test_token_auth_needs_a_recent_ray():
    service = rayservice("cpu")
    _cluster(service)["rayVersion"] = "2.51.0"
    with pytest.raises(ConfigError, match=r"spec\.rayClusterConfig\.authOptions\.mode"):
        check_rayservice(service, ray_version="2.51.0")


# ------------------------------------------------------------------------------ serveConfigV2 and pods


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_serve_config_autoscales_every_deployment(overlay):
    service = rayservice(overlay)
    served = serve_file(service)
    assert served.document["proxy_location"] == "EveryNode"
    deployments = {d["name"]: d for d in served.app["deployments"]}
    assert sorted(deployments) == sorted(served.config.deployments())
    for name, dep in deployments.items():
        scaling = dep["autoscaling_config"]
        assert "num_replicas" not in dep
        assert 1 <= scaling["min_replicas"] <= scaling["max_replicas"]
        # ray-project/ray#26455: delays below the look-back period thrash
        assert min(scaling["upscale_delay_s"], scaling["downscale_delay_s"]) >= scaling["look_back_period_s"]
        assert scaling["target_ongoing_requests"] < dep["max_ongoing_requests"]
    assert deployments[INGRESS]["autoscaling_config"]["target_ongoing_requests"] < served.config.routing.max_in_flight
    assert EMBEDDING in deployments
    groups = {g["groupName"]: g for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    if overlay == "gpu":
        classifier = deployments[CLASSIFIER]
        assert "causal_llm" in served.config.routers.enabled
        assert served.config.classifier.device == "cuda" and served.config.classifier.dtype == "bfloat16"
        assert classifier["ray_actor_options"]["num_gpus"] == 1
        gpu = groups["gpu"]
        assert gpu["minReplicas"] == 0
        assert gpu["maxReplicas"] >= classifier["autoscaling_config"]["max_replicas"]  # one GPU per replica
        limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits[deploy_render.GPU_RESOURCE]) == 1
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu["template"]["spec"]["tolerations"]
    else:
        assert CLASSIFIER not in deployments and list(groups) == ["cpu"]


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_pods_agree_with_the_serve_config(overlay):
    from serve.launch import DEFAULT_METRICS_PORT, RAY_SERVE_ENV

    docs = built(overlay)
    service = rayservice(overlay)
    spec, cluster = service["spec"], service["spec"]["rayClusterConfig"]
    served = serve_file(service)
    config = served.config
    assert spec["upgradeStrategy"]["type"] in deploy_render.UPGRADE_TYPES
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    pvcs = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert pvcs == {"turnout-artifacts", "turnout-capture"}
    key_envs = {config.upstreams.strong.api_key_env, config.upstreams.weak.api_key_env}
    for group, pod in pods(service):
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        # workers: the ingress may run there, and writes capture.dir (its own volume: the artifacts are read-only)
        assert claims == ({"artifacts": "turnout-artifacts"} | ({} if group == "head" else {"capture": "turnout-capture"}))
        for container in pod.get("initContainers", []) + pod["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            assert env["TURNOUT_HOME"]["value"] == config.artifacts.home, (group, container["name"])
            mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
            assert mounts["artifacts"] == deploy_render.VOLUME_MOUNT
            assert Path(config.artifacts.home).is_relative_to(mounts["artifacts"])
        ray = pod["containers"][0]
        env = {e["name"]: e for e in ray["env"]}
        for key, value in RAY_SERVE_ENV.items():
            assert env[key]["value"] == value, (group, key)
        ports = {p["name"]: p["containerPort"] for p in ray["ports"]}
        assert ports["metrics"] == DEFAULT_METRICS_PORT and ports["serve"] == served.port
        probes = [ray.get(k) for k in ("readinessProbe", "livenessProbe", "startupProbe") if ray.get(k)]
        assert all(p.get("httpGet", {}).get("path") != "/readyz" for p in probes)  # /readyz asks the backends
        if group == "head":
            continue
        for name in key_envs:  # the ingress may run on any worker
            assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "turnout-upstream", (group, name)
        assert env[config.capture.secret_env]["valueFrom"]["secretKeyRef"]["name"] == "turnout-capture", group
        capture = next(m for m in ray["volumeMounts"] if m["name"] == "capture")
        assert capture["mountPath"] == config.capture.dir and not capture.get("readOnly"), group
        assert ray["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "serve"}
        assert ray["lifecycle"]["preStop"]["exec"]["command"][-1] == "ray stop"
        assert all(m.get("readOnly") for m in ray["volumeMounts"] if m["name"] == "artifacts")


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_init_container_prepares_what_the_replicas_serve(overlay):
    docs = built(overlay)
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    service = rayservice(overlay)
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    (init,) = head["initContainers"]
    assert init["command"][:2] == ["turnout", "prepare"]
    config_path = Path(init["command"][init["command"].index("--config") + 1])
    mount = next(m for m in init["volumeMounts"] if m["mountPath"] == str(config_path.parent))
    volume = next(v for v in head["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    prepared = load_serve_file(text=config_map["data"][config_path.name]).config
    served = serve_file(service).config
    # the same args, except where the classifier's reference scores are made (the head has no GPU)
    assert prepared.model_dump(exclude={"classifier": {"device"}}) == served.model_dump(exclude={"classifier": {"device"}})
    assert prepared.classifier.device == "cpu"
    # `turnout prepare` checks that vLLM is installed when causal_llm is enabled: the GPU image has it
    assert init["image"].partition(":")[0] == ("turnout-gpu" if "causal_llm" in served.routers.enabled else "turnout-cpu")


def _retrain_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (cron,) = [d for d in docs if d["kind"] == "CronJob"]
    return cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_the_retrain_job_labels_what_the_service_captures_and_promotes_where_it_reads(overlay):
    from serve.cli import _parser

    docs = built(overlay)
    (cron,) = [d for d in docs if d["kind"] == "CronJob"]
    assert cron["spec"]["suspend"] is True and cron["spec"]["concurrencyPolicy"] == "Forbid"  # runs when asked
    job = _retrain_pod(docs)
    (label,), (retrain,) = job["initContainers"], job["containers"]
    served = serve_file(rayservice(overlay)).config
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in job["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"artifacts": "turnout-artifacts", "capture": "turnout-capture"}
    parsed = {c["name"]: _parser().parse_args(c["command"][1:]) for c in (label, retrain)}
    for container in (label, retrain):
        assert container["command"][0] == "turnout" and container["image"].startswith("turnout-cpu:")
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        # the overlays are written where the replicas read them: the same home on the same volume, writable here
        assert mounts["artifacts"]["mountPath"] == deploy_render.VOLUME_MOUNT and not mounts["artifacts"].get("readOnly")
        assert {e["name"]: e.get("value") for e in container["env"]}["TURNOUT_HOME"] == served.artifacts.home
        config = Path(parsed[container["name"]].config)
        assert mounts["prepare-config"]["mountPath"] == str(config.parent)
    # label reads what the ingress wrote and writes into the volume; retrain fits what label wrote
    assert parsed["label"].captured == served.capture.dir
    assert {m["name"]: m["mountPath"] for m in label["volumeMounts"]}["capture"] == served.capture.dir
    assert Path(parsed["label"].out).is_relative_to(deploy_render.VOLUME_MOUNT)
    assert parsed["retrain"].add == [parsed["label"].out] and 0 < parsed["retrain"].holdout_share < 1
    assert parsed["label"].max_usd > 0  # a scheduled job spends only within its cap


# ---------------------------------------------------------------------------------- render and its CLI


def test_render_rejects_what_cannot_be_deployed(tmp_path):
    with pytest.raises(ConfigError, match="unknown overlay 'nope'"):
        render("nope")
    bad = tmp_path / "home.yaml"
    bad.write_text("applications:\n  - args: {artifacts: {home: /tmp/elsewhere}}\n")
    with pytest.raises(ConfigError, match="artifacts.home"):
        render("cpu", bad)


def _cli(*argv: str) -> int:
    from serve.cli import main

    return main(list(argv))


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("turnout: error: ") and "\n" not in err, err
    return err


def test_cli_unknown_overlay_is_one_line_and_exit_2(capsys, tmp_path):
    assert _cli("deploy", "render", "--overlay", "nope", "--out", str(tmp_path)) == 2
    assert "unknown overlay 'nope'" in _one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_cli_renders_into_a_folder(capsys, tmp_path):
    assert _cli("deploy", "render", "--overlay", "gpu", "--out", str(tmp_path)) == 0
    out = capsys.readouterr().out
    for rel, text in render("gpu").items():
        assert (tmp_path / rel).read_text() == text
        assert f"wrote {tmp_path / rel}" in out
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["prepare.yaml", "serve-config.yaml"]


@pytest.mark.parametrize("overlay, text, field", [
    ("cpu", "applications:\n  - deployments:\n      - {name: EmbeddingDeployment, autoscaling_config: "
     "{min_replicas: 5, max_replicas: 2}}\n", "autoscaling_config"),
    ("cpu", "applications:\n  - deployments:\n      - {name: EmbeddingDeployment, ray_actor_options: "
     "{num_cpus: 0.5, num_gpus: 1}}\n", "ray_actor_options.num_gpus"),
    ("gpu", "applications:\n  - deployments:\n      - {name: ClassifierDeployment, ray_actor_options: "
     "{num_cpus: 1}}\n", "ray_actor_options.num_gpus"),
    ("cpu", "applications:\n  - deployments:\n      - {name: ClassifierDeployment, num_replicas: 1}\n",
     "deployments[2].name"),
])
def test_cli_bad_settings_are_one_line_exit_2_and_write_nothing(capsys, tmp_path, overlay, text, field):
    write(render(overlay), tmp_path)  # an earlier good render must survive a failed one untouched
    before = {p: p.read_text() for p in tmp_path.rglob("*") if p.is_file()}
    settings = tmp_path / "mine.yaml"
    settings.write_text(text)
    assert _cli("deploy", "render", "--overlay", overlay, "--config", str(settings), "--out", str(tmp_path)) == 2
    assert field in _one_line_error(capsys)
    after = {p: p.read_text() for p in tmp_path.rglob("*") if p.is_file() and p != settings}
    assert after == before


def test_user_settings_merge_over_the_overlay(tmp_path):
    settings = tmp_path / "mine.yaml"
    settings.write_text("applications:\n  - args:\n      upstreams: {strong: {base_url: 'https://llm.example/v1'}}\n"
                        "    deployments:\n      - {name: EmbeddingDeployment, autoscaling_config: {max_replicas: 3}}\n"
                        "      - {name: IngressDeployment, num_replicas: 2}\n")
    files = render("cpu", settings)
    patch = yaml.safe_load(files["overlays/cpu/serve-config.yaml"])
    served = load_serve_file(text=patch["spec"]["serveConfigV2"])
    assert served.config.upstreams.strong.base_url == "https://llm.example/v1"
    assert served.config.upstreams.weak.base_url == deploy_render.UPSTREAM_URLS["weak"]
    deployments = {d["name"]: d for d in served.app["deployments"]}
    assert deployments[EMBEDDING]["autoscaling_config"]["max_replicas"] == 3
    assert deployments[EMBEDDING]["autoscaling_config"]["min_replicas"] == 1  # the rest of the overlay's stays
    assert deployments[INGRESS]["num_replicas"] == 2 and "autoscaling_config" not in deployments[INGRESS]


def test_embedding_replicas_keep_to_the_cpus_they_reserve_unless_the_args_say(tmp_path):
    """Autoscaled replicas share a worker pod: the overlay names their threads, which OpenVINO would otherwise
    take from the whole machine."""
    def threads(text: str | None) -> int | None:
        settings = None
        if text is not None:
            settings = tmp_path / "mine.yaml"
            settings.write_text(text)
        patch = yaml.safe_load(render("cpu", settings)["overlays/cpu/serve-config.yaml"])
        return load_serve_file(text=patch["spec"]["serveConfigV2"]).config.embedding.threads

    assert threads(None) == 1  # 0.5 CPU reserved
    assert threads("applications:\n  - deployments:\n      - {name: EmbeddingDeployment, "
                   "ray_actor_options: {num_cpus: 2}}\n") == 2
    assert threads("applications:\n  - args:\n      embedding: {threads: 3}\n") == 3
