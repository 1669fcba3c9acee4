"""RowCache: float32 rows on disk keyed by sha256 of a text, for work that is slow to redo and safe to redo.

The embedding cache (`index.embedder.CachedEmbedder`: one vector per prompt) and the evaluation's score cache
(`models.evaluation`: one p_strong per prompt for a classifier checkpoint) both sit on it.

Layout: `<directory>/shard-*.npz`, each shard holding `keys` (n, 32) uint8 digests and `rows` (n, width) float32.
Every `put` writes one new shard atomically, so a crash never touches existing entries; many small shards are
merged once they pass `MAX_SHARDS`. An unreadable shard is logged and skipped: its texts are computed again.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from index.errors import first_line
from index.paths import atomic_path

logger = logging.getLogger(__name__)


def folder_name(name: str) -> str:
    """A folder name for `name`: sanitised, plus a hash of the original so that "a/b" and "a_b" stay apart."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "cache"
    return f"{safe[:80]}-{hashlib.sha256(name.encode('utf-8')).hexdigest()[:10]}"


class RowCache:
    MAX_SHARDS = 32
    SHARD_GLOB = "shard-*.npz"

    def __init__(self, directory: Path, what: str = "cache"):
        self.directory = Path(directory)
        self.what = what  # for log lines: "embedding cache", "score cache"
        self.hits = 0
        self.misses = 0
        self._rows: dict[bytes, np.ndarray] = {}
        self._shards: list[Path] = []
        self._load()

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self, texts: Sequence[str], compute: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """One row per text: cached ones read, the others (each distinct text once) from `compute`, then stored."""
        keys = [hashlib.sha256(t.encode("utf-8")).digest() for t in texts]
        missing = {k: t for k, t in zip(keys, texts) if k not in self._rows}  # dict: repeated texts computed once
        if missing:
            computed = np.asarray(compute(list(missing.values())), dtype=np.float32)
            if computed.ndim == 1:
                computed = computed[:, None]
            new_keys = np.frombuffer(b"".join(missing), dtype=np.uint8).reshape(-1, 32)
            self._add(new_keys, computed)
            self._persist(new_keys, computed)
        self.misses += len(missing)
        self.hits += len(texts) - len(missing)
        return np.stack([self._rows[k] for k in keys])

    def _load(self) -> None:
        for path in sorted(self.directory.glob(self.SHARD_GLOB)):
            try:
                keys, rows = _read_shard(path)
            except Exception as exc:  # corrupted, truncated or foreign: the cache is rebuildable, never fatal
                logger.warning("ignoring unreadable %s shard %s: %s", self.what, path, first_line(exc))
                continue
            if self._rows and rows.shape[1] != len(next(iter(self._rows.values()))):
                logger.warning("ignoring %s shard %s: width %d disagrees", self.what, path, rows.shape[1])
                continue
            self._add(keys, rows)
            self._shards.append(path)
        if self._rows:
            logger.info("%s %s: %d entries in %d shards", self.what, self.directory, len(self), len(self._shards))

    def _add(self, keys: np.ndarray, rows: np.ndarray) -> None:
        flat = keys.tobytes()
        # Rows are views into the shard matrix: no copy per entry.
        self._rows.update((flat[i * 32 : (i + 1) * 32], rows[i]) for i in range(len(keys)))

    def _persist(self, keys: np.ndarray, rows: np.ndarray) -> None:
        try:
            self._shards.append(_write_shard(self.directory / f"shard-{uuid.uuid4().hex}.npz", keys, rows))
            if len(self._shards) > self.MAX_SHARDS:
                self._compact()
        except OSError as exc:  # a read-only or full disk costs speed next time, not this call
            logger.warning("could not write %s %s: %s", self.what, self.directory, first_line(exc))

    def _compact(self) -> None:
        # Write the merged shard before deleting the old ones: a crash in between leaves duplicates, not gaps.
        keys = np.frombuffer(b"".join(self._rows), dtype=np.uint8).reshape(-1, 32)
        merged = _write_shard(self.directory / f"shard-{uuid.uuid4().hex}.npz", keys, np.stack(list(self._rows.values())))
        for path in self._shards:
            path.unlink(missing_ok=True)
        self._shards = [merged]


def _write_shard(path: Path, keys: np.ndarray, rows: np.ndarray) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, keys=keys, vectors=np.asarray(rows, dtype=np.float32))
    return path


def _read_shard(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        keys, rows = data["keys"], data["vectors"]  # "vectors": the name existing embedding caches were written with
    if keys.dtype != np.uint8 or keys.ndim != 2 or keys.shape[1] != 32:
        raise ValueError(f"bad keys {keys.dtype} {keys.shape}")
    if rows.dtype != np.float32 or rows.ndim != 2 or len(rows) != len(keys):
        raise ValueError(f"bad rows {rows.dtype} {rows.shape} for {len(keys)} keys")
    if not np.isfinite(rows).all():
        raise ValueError("non-finite rows")
    return keys, rows
