"""A stand-in for the Ray base image, for building deploy/docker/cpu.Dockerfile where no image can be pulled (CI).

What it is, and how it differs from rayproject/ray:<version>-py311-cpu: deploy/docker/README.md ('The stand-in
base'). In short, the Ray image's layout (python 3.11 with pip and ray in /home/ray/anaconda3, first on PATH; user
ray = 1000:100) on a Debian root file system:

1. `debootstrap --variant=minbase` of Debian bookworm with Debian's python3, a venv at /home/ray/anaconda3 and the
   user ray; kept as a tarball in the cache folder, since it is the slow step and depends on nothing of this
   machine's.
2. Copied from this machine's Python environment, file by file as each distribution's RECORD lists them: pip,
   setuptools, ray (with its serve and data extras, as the Ray image holds it) and torch, with everything they
   require. These are the installed files of the versions CI has just installed, not a download. torch is not in
   the Ray image: having it in the base keeps the image build within CI's time (the real build installs it from
   PyTorch's CPU index).
3. A wheelhouse at /opt/wheelhouse with the rest of what `pip install ".[cpu,serve]"` needs (this machine's
   versions, downloaded once with `pip download` into the cache folder), and PIP_NO_INDEX plus PIP_FIND_LINKS in
   the image's environment, so that the Dockerfile's unchanged `pip install` lines resolve from it under
   `docker build --network=none`.

The root file system, the copied distributions and the wheelhouse go into `docker import` as one tar stream.
Run as root with DOCKER_HOST pointing at a daemon: `python deploy/docker/standin_base.py --tag NAME`. The cache
folder is $TURNOUT_CI_DOCKER_CACHE, else /var/cache/turnout-ci-docker (outside the checkout, so that CI's fresh
clones find it).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as metadata
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
CACHE_ENV = "TURNOUT_CI_DOCKER_CACHE"
DEFAULT_CACHE = Path("/var/cache/turnout-ci-docker")

SUITE = "bookworm"  # its python3 is 3.11, the minor version of the Ray image's py311 python
DEBIAN_PACKAGES = ("python3",)
# The Ray image's layout, which cpu.Dockerfile relies on.
RAY_USER, RAY_UID, RAY_GID, RAY_GROUP = "ray", 1000, 100, "users"
PREFIX = "/home/ray/anaconda3"
SITE_PACKAGES = f"{PREFIX}/lib/python3.11/site-packages"
WHEELHOUSE = "/opt/wheelhouse"
# What the base holds ready installed: the Ray image's pip, setuptools and ray, and torch to save the image build
# its longest step.
BASE_REQUIREMENTS = ("pip", "setuptools", "ray[serve,data]", "torch")
IMAGE_EXTRAS = ("cpu", "serve")  # what cpu.Dockerfile installs


class StandInError(RuntimeError):
    """The stand-in cannot be made on this machine (not root, a tool missing, a package not installed here)."""


def cache_dir() -> Path:
    path = Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-20:]
        raise StandInError(f"{' '.join(args[:3])} ... failed ({result.returncode}):\n" + "\n".join(tail))
    return result


# ------------------------------------------------------------------------------------------ root file system


def apt_mirror() -> str | None:
    """The Debian archive this machine's apt uses (debootstrap's own default when none is found)."""
    for path in sorted(Path("/etc/apt").glob("sources.list.d/*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.+)$", stanza, flags=re.M))
            if SUITE in fields.get("Suites", "").split() and "main" in fields.get("Components", "").split():
                return fields["URIs"].split()[0]
    lists = Path("/etc/apt/sources.list")
    for line in lists.read_text().splitlines() if lists.is_file() else []:
        words = re.sub(r"\[[^]]*\]", "", line).split()
        if len(words) >= 4 and words[0] == "deb" and words[2] == SUITE and "main" in words[3:]:
            return words[1]
    return None


def rootfs_key() -> str:
    recipe = {"suite": SUITE, "packages": DEBIAN_PACKAGES, "user": [RAY_USER, RAY_UID, RAY_GID], "prefix": PREFIX}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def rootfs_tar(cache: Path, on_status: Callable[[str], None] = print) -> Path:
    """The cached tarball of the Debian root file system with the venv and the user; made when absent."""
    final = cache / f"{SUITE}-minbase-{rootfs_key()}.tar"
    if final.is_file():
        return final
    if os.geteuid() != 0:
        raise StandInError("debootstrap and chroot need root")
    for tool in ("debootstrap", "chroot"):
        if shutil.which(tool) is None:
            raise StandInError(f"{tool} is not installed (run deploy/ci/docker_tools.sh)")
    work = Path(tempfile.mkdtemp(prefix=".rootfs-", dir=cache))
    try:
        rootfs = work / "rootfs"
        mirror = apt_mirror()
        on_status(f"debootstrap --variant=minbase {SUITE} (once; kept in {final}) ...")
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}", SUITE, str(rootfs),
              *([mirror] if mirror else [])], timeout=1200)
        _run(["chroot", str(rootfs), "useradd", "--uid", str(RAY_UID), "--gid", str(RAY_GID), "--create-home",
              "--shell", "/bin/bash", RAY_USER])
        # Without pip: pip and setuptools are copied in with the rest (step 2), at this machine's versions.
        _run(["chroot", str(rootfs), "python3", "-m", "venv", "--without-pip", PREFIX])
        _run(["chroot", str(rootfs), "chown", "-R", f"{RAY_UID}:{RAY_GID}", f"/home/{RAY_USER}"])
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):  # what the real image would not carry
            for item in (rootfs / leftover).glob("*"):
                if item.is_file():
                    item.unlink()
        tmp = work / "rootfs.tar"
        _run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tmp), "."])
        os.replace(tmp, final)
        for old in cache.glob(f"{SUITE}-minbase-*.tar"):  # an earlier recipe's
            if old != final:
                old.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


# ---------------------------------------------------------------------------------------- Python distributions


def closure(requirements: Iterable[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions `requirements` need here, extras and environment markers applied, by name."""
    found: dict[str, tuple[metadata.Distribution, set[str]]] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise StandInError(f"{req} is required but not installed in {sys.prefix}") from None
        known = found.get(name)
        if known is not None and set(req.extras) <= known[1]:
            continue
        extras = set(req.extras) | (known[1] if known else set())
        found[name] = (dist, extras)
        environments = [{"extra": extra} for extra in sorted(extras) or [""]]
        for line in dist.requires or []:
            dep = Requirement(line)
            if dep.marker is None or any(dep.marker.evaluate(env) for env in environments):
                todo.append(dep)
    return {name: dist for name, (dist, _) in found.items()}


def base_distributions() -> dict[str, metadata.Distribution]:
    return closure(BASE_REQUIREMENTS)


def project_requirements(project: dict, extras: Iterable[str]) -> list[str]:
    """What pyproject.toml asks for with `extras`, its own extras (turnout[serve]) expanded: read from the file
    the image is built from, not from the metadata of an earlier editable install."""
    own = canonicalize_name(project["project"]["name"])
    optional = project["project"].get("optional-dependencies", {})
    out, todo, seen = list(project["project"].get("dependencies", [])), list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for line in optional[extra]:
            req = Requirement(line)
            if canonicalize_name(req.name) == own:
                todo.extend(req.extras)
            else:
                out.append(line)
    return out


def wheel_requirements(base: dict[str, metadata.Distribution]) -> list[str]:
    """Exact pins of what the image build installs beyond the base: turnout's dependencies and its build backend."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = closure(project_requirements(project, IMAGE_EXTRAS))
    pins = [f"{name}=={dist.version}" for name, dist in sorted(needed.items()) if name not in base]
    for line in project["build-system"]["requires"]:  # pip's build isolation installs these from the wheelhouse
        req = Requirement(line)
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            version = None
        pins.append(f"{req.name}=={version}" if version and req.specifier.contains(version) else str(req))
    return pins


def wheelhouse(cache: Path, pins: list[str], on_status: Callable[[str], None] = print) -> list[Path]:
    """Wheels for `pins` in <cache>/wheels, downloaded with pip where missing; the ones the pins select."""
    folder = cache / "wheels"
    folder.mkdir(exist_ok=True)

    def present() -> dict[str, Path]:
        chosen = {}
        for path in folder.glob("*.whl"):
            name, version, _, _ = parse_wheel_filename(path.name)
            chosen[f"{name}=={version}"] = path
        return chosen

    def selected(have: dict[str, Path]) -> dict[str, Path | None]:
        out = {}
        for pin in pins:
            req = Requirement(pin)
            name = canonicalize_name(req.name)
            matches = [(Version(key.split("==")[1]), path) for key, path in have.items()
                       if key.split("==")[0] == name and req.specifier.contains(key.split("==")[1])]
            out[pin] = max(matches)[1] if matches else None
        return out

    missing = [pin for pin, path in selected(present()).items() if path is None]
    if missing:
        on_status(f"pip download of {len(missing)} wheels into {folder} ...")
        _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
              "--dest", str(folder), *missing], timeout=1200)
    chosen = selected(present())
    absent = [pin for pin, path in chosen.items() if path is None]
    if absent:
        raise StandInError(f"no wheel for {', '.join(absent)} in {folder}")
    return sorted(set(chosen.values()))


def _script(entry: metadata.EntryPoint) -> bytes:
    """A console script as pip writes one, for the stand-in's python."""
    module, _, attr = entry.value.partition(":")
    call = attr.strip() or "main"
    return (f"#!{PREFIX}/bin/python\nimport sys\nfrom {module.strip()} import {call.split('.')[0]}\n"
            f"if __name__ == '__main__':\n    sys.exit({call}())\n").encode()


# --------------------------------------------------------------------------------------------- the image


class _Tar:
    """A tar stream with the directories of every added path, owned as the Ray image's prefix is."""

    def __init__(self, out: tarfile.TarFile):
        self.out = out
        self.dirs: set[str] = set()
        self.files: set[str] = set()

    def _parents(self, arcname: str, uid: int, gid: int) -> None:
        parts = arcname.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            path = "/".join(parts[:i])
            if path not in self.dirs:
                info = tarfile.TarInfo(path)
                info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o755, uid, gid
                info.mtime = int(time.time())
                self.out.addfile(info)
                self.dirs.add(path)

    def add_file(self, source: Path, arcname: str, uid: int = RAY_UID, gid: int = RAY_GID) -> None:
        if arcname in self.files:  # a namespace package's file in several RECORDs, or one listed twice
            return
        self.files.add(arcname)
        self._parents(arcname, uid, gid)
        info = self.out.gettarinfo(str(source), arcname)
        info.uid, info.gid, info.uname, info.gname = uid, gid, "", ""
        if info.isreg():
            with open(source, "rb") as f:
                self.out.addfile(info, f)
        else:
            self.out.addfile(info)

    def add_bytes(self, data: bytes, arcname: str, mode: int = 0o644, uid: int = RAY_UID, gid: int = RAY_GID) -> None:
        self._parents(arcname, uid, gid)
        info = tarfile.TarInfo(arcname)
        info.size, info.mode, info.uid, info.gid, info.mtime = len(data), mode, uid, gid, int(time.time())
        self.out.addfile(info, io.BytesIO(data))


def import_changes() -> list[str]:
    """The image config `docker import --change` sets: the Ray image's PATH and user, and pip pointed offline."""
    path = f"{PREFIX}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env = {"PATH": path, "LANG": "C.UTF-8", "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELHOUSE,
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    changes = [f"ENV {key}={value}" for key, value in env.items()]
    return changes + [f"USER {RAY_USER}", f"WORKDIR /home/{RAY_USER}", 'CMD ["/bin/bash"]']


def build(docker: list[str], tag: str, cache: Path | None = None, env: dict[str, str] | None = None,
          on_status: Callable[[str], None] = print) -> str:
    """Import the stand-in base as `tag` into the daemon `docker` (a command, e.g. ["docker"]) talks to."""
    if sys.version_info[:2] != (3, 11):
        raise StandInError(f"the copied distributions must match the base's python 3.11, this is {sys.version}")
    cache = cache or cache_dir()
    rootfs = rootfs_tar(cache, on_status)
    base = base_distributions()
    wheels = wheelhouse(cache, wheel_requirements(base), on_status)
    on_status(f"docker import: {SUITE} + {len(base)} distributions copied from {sys.prefix} "
              f"(ray {base['ray'].version}, torch {base['torch'].version}) + {len(wheels)} wheels ...")
    proc = subprocess.Popen([*docker, "import", *(a for c in import_changes() for a in ("--change", c)), "-", tag],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})
    try:
        with tarfile.open(fileobj=proc.stdin, mode="w|", format=tarfile.PAX_FORMAT) as out:
            tar = _Tar(out)
            with tarfile.open(rootfs) as fs:
                for member in fs:
                    out.addfile(member, fs.extractfile(member) if member.isreg() else None)
                    if member.isdir():
                        tar.dirs.add(member.name.removeprefix("./").rstrip("/"))
            for dist in base.values():
                root = Path(dist.locate_file(""))
                for entry in dist.files or []:
                    if entry.parts[0] == "..":  # console scripts and data outside site-packages: written below
                        continue
                    source = root / entry
                    if source.exists() or source.is_symlink():
                        tar.add_file(source, f"{SITE_PACKAGES.lstrip('/')}/{entry.as_posix()}")
                for ep in dist.entry_points.select(group="console_scripts"):
                    tar.add_bytes(_script(ep), f"{PREFIX.lstrip('/')}/bin/{ep.name}", mode=0o755)
            for wheel in wheels:
                tar.add_file(wheel, f"{WHEELHOUSE.lstrip('/')}/{wheel.name}", uid=0, gid=0)
    except BrokenPipeError:
        pass  # docker import stopped reading: its own error is reported below
    stdout, stderr = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise StandInError(f"docker import failed ({proc.returncode}): {stderr.decode().strip()}")
    return stdout.decode().strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", required=True, help="image name to import the stand-in base as")
    parser.add_argument("--docker", default="docker", help="docker client (DOCKER_HOST selects the daemon)")
    args = parser.parse_args(argv)
    try:
        print(build([args.docker], args.tag))
    except StandInError as exc:
        print(f"standin_base: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
