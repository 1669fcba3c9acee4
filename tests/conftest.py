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
