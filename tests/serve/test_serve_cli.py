"""`turnout serve`: config checks as one-line errors, artifact preparation, and a real start/stop in a subprocess."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from index.errors import ArtifactError
from serve.cli import main
from serve.config import default_document, parse_app_args, render_yaml
from tests.serve.conftest import app_args
from tests.serve.fakes import free_port

REPO = Path(__file__).resolve().parents[2]


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _config_file(path, args, port=8000):
    doc = default_document()
    doc["applications"][0].update(args=args, deployments=[])
    doc["http_options"]["port"] = port
    path.write_text(yaml.safe_dump(doc))
    return path


def test_print_config_is_the_embedded_default(capsys):
    code, out, _ = _run(capsys, "serve", "--print-config")
    assert code == 0 and out == render_yaml(default_document())
    assert yaml.safe_load(out) == default_document()


def test_check_validates_and_applies_overrides(capsys, tmp_path):
    code, out, err = _run(capsys, "serve", "--check", "--port", "9001", "--embedder", "hash-64")
    assert code == 0, err
    assert "default config: valid" in out and "http://127.0.0.1:9001/" in out


@pytest.mark.parametrize("edit, fragment", [
    (lambda doc: doc["applications"][0]["args"]["routing"].update(strong_ratio=2), "applications[0].args.routing.strong_ratio"),
    (lambda doc: doc["applications"][0]["args"].update(extra_section={}), "extra_section: Extra inputs are not permitted"),
    (lambda doc: doc.update(http_options={"port": "x"}), "http_options.port"),
])
def test_bad_config_file_is_one_line_error(capsys, tmp_path, edit, fragment):
    doc = default_document()
    edit(doc)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    code, _, err = _run(capsys, "serve", "--config", str(path), "--check")
    assert code == 2 and err.count("\n") == 1 and err.startswith("turnout: error:"), err
    assert fragment in err and "Traceback" not in err


def test_missing_config_and_busy_port_are_one_line_errors(capsys, tmp_path):
    code, _, err = _run(capsys, "serve", "--config", str(tmp_path / "nope.yaml"))
    assert code == 2 and "config file not found" in err
    with __import__("socket").socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, _, err = _run(capsys, "serve", "--port", str(busy.getsockname()[1]), "--embedder", "hash-64")
    assert code == 2 and err.count("\n") == 1 and "HTTP port" in err and "not available" in err


def test_serve_proxy_failing_to_start_is_a_deploy_error(monkeypatch):
    """Regression: an HTTP proxy that died while Serve started (seen with Ray's HAProxy ingress) escaped
    `turnout serve` as Ray's ActorDiedError with its traceback."""
    import ray.serve._private.api as serve_api
    from ray.exceptions import ActorDiedError

    from serve.launch import DeployError, configure, deploy

    def dies(**_):
        raise ActorDiedError()

    monkeypatch.setattr(serve_api, "serve_start", dies)
    served = configure(embedder="hash-64", port=free_port())
    with pytest.raises(DeployError, match="did not start its HTTP proxy on 127.0.0.1:.*ActorDiedError") as err:
        deploy(served, served.config)
    assert "\n" not in str(err.value)


def test_prepare_builds_only_missing_artifacts(artifacts, tmp_path, monkeypatch):
    import shutil

    from models import pipeline
    from serve import artifacts as serve_artifacts

    home, reference = artifacts
    copy = tmp_path / "home"
    shutil.copytree(home / "routers", copy / "routers")
    shutil.rmtree(copy / "routers" / "mf")
    args = app_args(copy, reference, "http://127.0.0.1:1/v1", "http://127.0.0.1:1/v1")
    with pytest.raises(ArtifactError, match=r"no mf artifact under .*; run `turnout train mf`$"):
        serve_artifacts.prepare(parse_app_args(args))

    trained = []

    def fake_train(ws, name, options=None):  # the real one needs the shared data; tested in tests/serve/test_cli.py
        trained.append(name)
        shutil.copytree(home / "routers" / name, ws.home / "routers" / name)

    monkeypatch.setattr(pipeline, "train", fake_train)
    args["artifacts"]["build_missing"] = True
    config = serve_artifacts.prepare(parse_app_args(args))
    assert trained == ["mf"]
    assert Path(config.artifacts.home).is_absolute()
    for router in ("sw_ranking", "mf", "length", "random"):  # reference scores for every controlled router
        assert serve_artifacts.load_reference(config, router) is not None
    serve_artifacts.prepare(parse_app_args(args))
    assert trained == ["mf"]  # nothing missing the second time


def test_prepare_warns_about_a_router_below_the_obvious_targets(artifacts, tmp_path):
    import shutil

    from models.obvious import CHECK_FILE, CHECK_PATHS
    from serve import artifacts as serve_artifacts

    home, reference = artifacts
    copy = tmp_path / "home"
    shutil.copytree(home / "routers", copy / "routers")
    good = {path.name: {"auc": 0.82, "auc_balanced": 0.87} for path in CHECK_PATHS}
    one_bad = {**good, CHECK_PATHS[2].name: {"auc": 0.55, "auc_balanced": 0.70}}
    (copy / "routers" / "mf" / CHECK_FILE).write_text(json.dumps({"files": one_bad}))
    (copy / "routers" / "sw_ranking" / CHECK_FILE).write_text(json.dumps({"files": good}))
    lines: list[str] = []

    def prepare():
        args = app_args(copy, reference, "http://127.0.0.1:1/v1", "http://127.0.0.1:1/v1")
        serve_artifacts.prepare(parse_app_args(args), lines.append)

    prepare()
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: mf misses the obvious-prompt targets"), warnings
    assert f"on 1 of {len(CHECK_PATHS)} files; worst {CHECK_PATHS[2].name}: AUC 0.55" in warnings[0]
    assert not any("scoring the obvious-prompt check" in line for line in lines)  # current checks are kept
    # a check from before every file was kept (one file), or none at all: scored again, then kept
    old = {"file": "x", "auc": 0.82, "auc_balanced": 0.87}
    (copy / "routers" / "sw_ranking" / CHECK_FILE).write_text(json.dumps(old))
    (copy / "routers" / "mf" / CHECK_FILE).unlink()
    prepare()
    for name in ("sw_ranking", "mf"):
        assert f"{name}: scoring the obvious-prompt check ..." in lines
        files = json.loads((copy / "routers" / name / CHECK_FILE).read_text())["files"]
        assert set(files) == {path.name for path in CHECK_PATHS}
        assert all(0.0 <= e["auc"] <= 1.0 and 0.0 <= e["auc_balanced"] <= 1.0 for e in files.values())


def test_serve_starts_prints_url_answers_and_stops(artifacts, upstream, tmp_path):
    """The real command in a subprocess: ready line with the URL, a routed request, clean exit on SIGINT."""
    pytest.importorskip("ray.serve")
    home, reference = artifacts
    port, metrics_port = free_port(), free_port()
    config = _config_file(tmp_path / "serve.yaml", app_args(home, reference, upstream.base_url, upstream.base_url), port)
    command = [sys.executable, "-m", "serve.cli", "serve", "--config", str(config), "--metrics-port", str(metrics_port)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                break
            lines.append(line)
            if "turnout is serving at" in line:
                break
        ready_s = time.perf_counter() - start
        assert any(f"turnout is serving at http://127.0.0.1:{port}" in line for line in lines), "".join(lines)
        response = httpx.post(f"http://127.0.0.1:{port}/v1/route", json={"prompt": "math equation"}, timeout=30)
        assert response.status_code == 200 and response.json()["router"] == "mf"
        assert ready_s < 120, ready_s
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    rest = process.stdout.read()
    assert code == 0, "".join(lines) + rest
    assert "stopping" in rest


def test_reference_scores_follow_the_artifact_version(artifacts, tmp_path):
    """Retraining a router (new manifest/meta) or changing the model pair invalidates its reference scores."""
    import shutil

    from serve import artifacts as serve_artifacts

    home, reference = artifacts
    copy = tmp_path / "home"
    shutil.copytree(home / "routers", copy / "routers")
    config = serve_artifacts.prepare(parse_app_args(app_args(copy, reference, "http://127.0.0.1:1/v1", "http://127.0.0.1:1/v1")))
    assert serve_artifacts.load_reference(config, "mf") is not None
    meta = copy / "routers" / "mf" / "meta.json"
    meta.write_text(meta.read_text().replace('"router": "mf"', '"router": "mf", "retrained": true'))
    assert serve_artifacts.load_reference(config, "mf") is None
    assert serve_artifacts.load_reference(config, "sw_ranking") is not None
    other_pair = config.model_copy(update={"routers": config.routers.model_copy(update={"weak_model": "tiny"})})
    assert serve_artifacts.load_reference(other_pair, "sw_ranking") is None


def test_serve_run_starts_calibrated_from_a_prepared_folder(artifacts, upstream, tmp_path, capsys):
    """`turnout prepare --config F` then Ray's own `serve run F` (no turnout driver): the replicas find the folder
    the config names and start from the offline calibration, not from 1 - strong_ratio."""
    import shutil

    import numpy as np

    from serve import artifacts as serve_artifacts
    from serve.controller import StrongRatioController

    pytest.importorskip("ray.serve")
    home, reference = artifacts
    folder = tmp_path / "home"
    shutil.copytree(home / "routers", folder / "routers")
    port = free_port()
    args = app_args(folder, reference, upstream.base_url, upstream.base_url)
    path = _config_file(tmp_path / "serve.yaml", args, port)
    code, out, err = _run(capsys, "prepare", "--config", str(path))
    assert code == 0 and "offline calibration for sw_ranking, mf, length, random" in out, err
    config = parse_app_args(args)
    window = config.routing.controller.window
    want = {name: StrongRatioController(strong_ratio=0.5, window=window, min_live=10,
                                        reference=serve_artifacts.load_reference(config, name)).threshold
            for name in ("mf", "sw_ranking")}
    assert all(abs(t - 0.5) > 1e-3 for t in want.values())  # distinguishable from the uncalibrated 1 - strong_ratio

    serve_bin = Path(sys.executable).with_name("serve")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    process = subprocess.Popen([str(serve_bin), "run", str(path)], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, state = time.monotonic() + 180, None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/v1/routers", timeout=5)
                if response.status_code == 200:
                    state = response.json()["routers"]
                    break
            except httpx.TransportError:
                pass
            time.sleep(1.0)
        assert state is not None, "serve run did not come up"
        for name, threshold in want.items():
            assert state[name]["mode"] == "controller" and state[name]["reference_in_window"] == window, state[name]
            assert np.isclose(state[name]["threshold"], threshold), (name, state[name], threshold)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def test_router_options_reach_the_router_and_key_its_calibration(artifacts, tmp_path):
    """routers.options sets sw_ranking's k (no other way did); a wrong option is one line; the reference scores
    of another k are not reused."""
    import shutil

    from index.errors import ConfigError
    from serve import artifacts as serve_artifacts

    home, reference = artifacts
    copy = tmp_path / "home"
    shutil.copytree(home / "routers", copy / "routers")
    args = app_args(copy, reference, "http://127.0.0.1:1/v1", "http://127.0.0.1:1/v1")
    args["routers"]["options"] = {"sw_ranking": {"k": 5}}
    config = serve_artifacts.prepare(parse_app_args(args))
    assert serve_artifacts.load_routers(config, ["sw_ranking"])["sw_ranking"].k == 5
    exact = parse_app_args({**args, "routers": {**args["routers"], "options": {}}})
    assert serve_artifacts.load_reference(exact, "sw_ranking", quiet=True) is None  # scored with k=5, not exact
    args["routers"]["options"] = {"sw_ranking": {"kk": 5}}
    with pytest.raises(ConfigError, match="routers.options.sw_ranking: .*unexpected keyword argument 'kk'"):
        serve_artifacts.prepare(parse_app_args(args))
