"""Offline calibration: the threshold that sends a target share of reference traffic to the strong model.

The decision is `p_strong >= threshold`, so the threshold for share r is the r-quantile from the top of the
reference scores. Ties at the cut can make the realised share exceed r; we report the share actually realised.

Two files per router hold the offline calibration, both keyed by everything the scores depend on (router,
strong/weak pair, artifact version, embedder, reference set): a reader ignores a file whose key differs, so a
retrained artifact or another model pair never starts from a stale threshold.
- `<home>/serve/reference/<router>.npz`: reference p_strong (`p_strong`, `key`), written by `turnout prepare` /
  `turnout serve`; it maps any strong_ratio to a threshold and seeds the live controller's window.
- `<home>/calibration/<router>.json`: one threshold for one strong_ratio, written by `turnout calibrate`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from index.errors import ConfigError, DataNotFoundError
from models.base import Router

log = logging.getLogger(__name__)

MAX_TRAINING_REFERENCE = 5000  # a random sample of training prompts is plenty for one quantile


def threshold_for_ratio(p_strong: np.ndarray, strong_ratio: float) -> float:
    """Smallest-share threshold t with mean(p_strong >= t) >= strong_ratio (t > max for a ratio of 0)."""
    if not 0.0 <= strong_ratio <= 1.0:
        raise ConfigError(f"strong_ratio must be in [0, 1], got {strong_ratio}")
    scores = np.sort(np.asarray(p_strong, dtype=np.float64))[::-1]
    if len(scores) == 0:
        raise ConfigError("cannot calibrate on an empty reference set")
    n_strong = int(np.ceil(strong_ratio * len(scores) - 1e-9))
    if n_strong == 0:
        return float(np.nextafter(scores[0], np.inf))
    return float(scores[n_strong - 1])


def calibrate(router: Router, prompts: list[str], strong_ratio: float) -> dict:
    p_strong = router.score(prompts)
    threshold = threshold_for_ratio(p_strong, strong_ratio)
    return {
        "threshold": threshold,
        "strong_ratio": strong_ratio,
        "realised_strong_ratio": float(np.mean(p_strong >= threshold)),
        "n": len(prompts),
    }


def reference_prompts(reference: str, home: Path, data: Callable[[], Path]) -> list[str]:
    """Prompts to calibrate on: 'training', a benchmark name, or a .txt (one per line) / .jsonl ('prompt') file."""
    from models.benchmarks import BENCHMARKS, load_benchmark

    if reference in BENCHMARKS:
        return list(load_benchmark(reference, data()).prompts)
    if reference == "training":
        from models import data as training

        prompts = training.load(home / "data").battles["prompt"].unique()
        rng = np.random.default_rng(0)
        return list(rng.choice(prompts, size=min(MAX_TRAINING_REFERENCE, len(prompts)), replace=False))
    path = Path(reference)
    if not path.is_file():
        raise DataNotFoundError(f"reference {reference!r} is not 'training', a benchmark ({', '.join(BENCHMARKS)}) or a file")
    if path.suffix == ".jsonl":
        try:
            prompts = [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: every line must be a JSON object with a 'prompt' string") from exc
    else:
        prompts = [line for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ConfigError(f"{path} holds no prompts")
    return prompts


# ------------------------------------------------------------------------------------- keyed calibration files


def artifact_version(folder: Path) -> str | None:
    """Digest of an artifact's small JSON files (manifest, meta, tiers): changes whenever it is retrained."""
    import hashlib

    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def key(home: Path, name: str, strong: str, weak: str, embedder: str | None, reference: str, **extra: Any) -> str:
    """What a router's offline scores depend on, as a JSON string (sorted keys): equal keys, same scores."""
    fields = {"router": name, "strong": strong, "weak": weak, "embedder": embedder, "reference": reference,
              "artifact": artifact_version(Path(home) / "routers" / name), **extra}
    return json.dumps(fields, sort_keys=True)


def reference_path(home: Path, name: str) -> Path:
    return Path(home) / "serve" / "reference" / f"{name}.npz"


def save_reference(home: Path, name: str, p_strong: np.ndarray, key: str) -> Path:
    from index.paths import atomic_path

    path = reference_path(home, name)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, p_strong=np.asarray(p_strong, dtype=np.float64), key=np.array(key))
    return path


def load_reference(home: Path, name: str, key: str, quiet: bool = False) -> np.ndarray | None:
    """Reference p_strong if the file was written for exactly `key`, else None (with a log line saying why)."""
    path = reference_path(home, name)
    why, scores = None, None
    if not path.is_file():
        why = "missing"
    else:
        try:
            with np.load(path, allow_pickle=False) as data:
                scores, saved = data["p_strong"], str(data["key"])
        except (OSError, ValueError, KeyError) as exc:
            why = f"unreadable ({exc})"
        else:
            if saved != key:
                scores, why = None, "prepared for another config or artifact version"
            elif not np.all(np.isfinite(scores)):
                scores, why = None, "holds non-finite scores"
    if why and not quiet:
        log.warning("reference scores %s %s: the %s controller starts without them", path, why, name)
    return scores


def calibration_path(home: Path, name: str) -> Path:
    return Path(home) / "calibration" / f"{name}.json"


def save_calibration(home: Path, name: str, result: dict, key: str) -> Path:
    from index.paths import atomic_path

    path = calibration_path(home, name)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({**result, "key": key}, indent=1))
    return path


def calibrated_threshold(home: Path, name: str, key: str, strong_ratio: float) -> float | None:
    """The threshold `turnout calibrate` wrote for `name`, if written for this key and this strong_ratio."""
    try:
        saved = json.loads(calibration_path(home, name).read_text())
    except (OSError, ValueError):
        return None
    if (isinstance(saved, dict) and saved.get("key") == key and saved.get("strong_ratio") == strong_ratio
            and isinstance(saved.get("threshold"), float)):
        return saved["threshold"]
    return None
