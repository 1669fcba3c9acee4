"""Where data and artifacts live, and how artifacts are written without ever leaving a half-written file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from index.errors import DataNotFoundError

DATA_ENV = "TURNOUT_DATA_DIR"
HOME_ENV = "TURNOUT_HOME"
REPO_ROOT = Path(__file__).resolve().parents[1]


def data_dir(flag: str | os.PathLike | None = None) -> Path:
    """Resolve the shared data folder: flag > $TURNOUT_DATA_DIR > ../shared/data (beside the checkout)."""
    if flag:
        candidates = [Path(flag)]
    elif os.environ.get(DATA_ENV):
        candidates = [Path(os.environ[DATA_ENV])]
    else:
        # The cwd-relative path is what the docs promise; the repo-relative one makes `turnout` work from any cwd.
        candidates = [Path.cwd() / "../shared/data", REPO_ROOT / "../shared/data"]
    for path in candidates:
        if path.is_dir():
            return path.resolve()
    raise DataNotFoundError(
        f"data directory not found: {candidates[0]} (pass --data-dir or set {DATA_ENV})"
    )


def require_file(path: Path) -> Path:
    """Return `path` if it is a file, else raise a one-line DataNotFoundError naming it."""
    if not path.is_file():
        raise DataNotFoundError(f"missing data file: {path}")
    return path


def artifacts_dir(flag: str | os.PathLike | None = None) -> Path:
    """Artifact root (git-ignored): flag > $TURNOUT_HOME > <repo>/artifacts."""
    root = Path(flag) if flag else Path(os.environ.get(HOME_ENV, REPO_ROOT / "artifacts"))
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temp path beside `final`; rename it over `final` only if the block succeeds.

    A failure (exception, Ctrl-C) removes the temp file and leaves any earlier `final` untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o644)  # mkstemp makes 0600; artifacts are meant to be read by other users and services
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temp directory; on success it replaces `final` as a whole, on failure it is removed.

    For artifacts made of several files (index + manifest + arrays) that must never be seen half-written.
    The swap is two renames (final -> .old, tmp -> final); a process killed between them leaves only .old, which
    the next call puts back before it starts, so the earlier artifact is never lost.
    """
    import shutil

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    old = final.with_name(f".{final.name}.old")
    if old.exists() and not final.exists():
        os.replace(old, final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700; like the files, artifact folders are meant to be shared
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
