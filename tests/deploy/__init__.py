"""Tests of the deployment assets under deploy/ (not a package: their modules are loaded by path)."""

import importlib.util
import sys
from pathlib import Path


def load_module(name: str, path: Path):
    """Import the file at `path` as module `name` (deploy/ holds scripts, not an installed package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def missing(message: str, ci_hint: str = "") -> None:
    """A tool these tests need is absent: a failure under CI (which installs every tool), a skip elsewhere."""
    import os

    import pytest

    if os.environ.get("CI"):
        pytest.fail(message + ci_hint)
    pytest.skip(message)


def promtool() -> str:
    """The promtool binary, or `missing` with the install line."""
    import shutil

    path = shutil.which("promtool")
    if path is None:
        missing("promtool is not installed (Debian package prometheus): run "
                "`sh deploy/ci/observability_tools.sh` as root")
    return path
