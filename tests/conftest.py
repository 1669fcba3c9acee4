import os
import sys
from pathlib import Path

import pytest

from models.benchmarks import EVALS_DIR
from index.errors import DataNotFoundError
from index.paths import data_dir


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The shared data folder (../shared/data); tests that need it skip where it is absent."""
    try:
        path = data_dir()
    except DataNotFoundError as exc:
        pytest.skip(str(exc))
    if not (path / EVALS_DIR).is_dir():
        pytest.skip(f"no {EVALS_DIR} in {path}")
    return path


def pytest_sessionfinish(session, exitstatus):
    session.config.turnout_exitstatus = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the process without Python's finalisation once pytest has reported and cleaned up. The native libraries
    this one process has loaded (vLLM's in-process CPU engine, the OpenMP, oneDNN and OpenVINO thread pools) can crash
    in their destructors at interpreter exit after every test has passed: one full run on 2026-12-07 printed its
    summary line, every test passed, then died of a segmentation fault, which CI would count as a failure. The exit
    status stays pytest's own."""
    status = getattr(config, "turnout_exitstatus", None)
    if status is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
