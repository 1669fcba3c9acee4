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
