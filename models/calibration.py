"""Offline calibration: the threshold that sends a target share of reference traffic to the strong model.

The decision is `p_strong >= threshold`, so the threshold for share r is the r-quantile from the top of the
reference scores. Ties at the cut can make the realised share exceed r; we report the share actually realised.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from models.base import Router
from models.errors import ConfigError, DataNotFoundError

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


def reference_prompts(reference: str, home: Path, data: Callable[[], Path], embedder=None) -> list[str]:
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
