"""Data build, training, and load-or-train: the one place that decides when an artifact is (re)built.

The CLI (`turnout data build / train / eval / calibrate / prepare`), `turnout serve` and the evaluation all go
through here, so one rule holds everywhere:

- An artifact is **missing** when `<home>/routers/<name>/<meta_file>` is absent, **stale** when the data hash it
  records differs from the one `<home>/data` holds now (`turnout data build` was rerun), else **ok**.
- Missing or stale: routers whose registry entry says `train_on_demand` (sw_ranking, mf: minutes on a CPU) are
  trained first, with their progress bars; the others (bert, causal_llm: long CPU runs) stop with one line
  naming `turnout train <name>`. `build_missing=False` turns the first case into the same error. `turnout train`
  always trains.

Long steps report through `on_status` (a status line per step) and tqdm bars (embedding, training, scoring).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from index.embedder import DEFAULT_EMBEDDER
from index.errors import ArtifactError, ConfigError
from models.base import DEFAULT_STRONG, DEFAULT_WEAK, Router
from models.registry import RouterEntry, entry

log = logging.getLogger(__name__)

Status = Callable[[str], None]


@dataclass
class Workspace:
    """Where a run reads and writes: the artifact folder, the shared data folder (resolved on first use), the embedder."""

    home: Path
    data_flag: str | None
    embedder: Any
    on_status: Status = log.info

    def data(self) -> Path:
        from index.paths import data_dir

        return data_dir(self.data_flag)

    @property
    def routers(self) -> Path:
        return self.home / "routers"


def workspace(home: str | None = None, data_dir: str | None = None, embedder: str = DEFAULT_EMBEDDER,
              on_status: Status = log.info) -> Workspace:
    """A Workspace with the embedder loaded (its on-disk cache under <home>/embeddings)."""
    from index.embedder import load_embedder
    from index.paths import artifacts_dir

    root = artifacts_dir(home)
    return Workspace(root, data_dir, load_embedder(embedder, cache_dir=root / "embeddings", models_dir=root / "embedders",
                                                    on_status=on_status), on_status)


# ------------------------------------------------------------------------------------------------- data


def training_data(ws: Workspace, *, rebuild: bool = False, arena: str | None = None, n_tiers: int | None = None,
                  sources: str | None = None, extra_battles: list | None = None, extra_scores: list | None = None,
                  added: list[dict] | None = None, tier_weighting: str = "correctness"):
    """<home>/data, built first when absent or `rebuild`. `extra_battles`/`extra_scores`: user files' tables
    (models.user_data.UserData.battles/.scores); `added`: their summaries, kept in the report."""
    from models import data as training
    from models.benchmarks import evaluation_prompts
    from models.registry import parse_names

    folder = ws.home / "data"
    if not rebuild and (folder / "models.json").exists():
        return training.load(folder)
    chosen = tuple(parse_names(sources, list(training.SOURCES), "source")) if sources else training.DEFAULT_SOURCES
    data_path = ws.data()
    ws.on_status(f"building training data from {data_path} (sources: {', '.join(chosen)}) ...")
    embed = lambda texts, what: ws.embedder.embed(texts, progress=True, what=what)  # noqa: E731
    td = training.build(data_path, sorted(evaluation_prompts(data_path)), embed, arena=arena,
                        n_tiers=n_tiers or training.N_TIERS,
                        sources=chosen, extra_battles=list(extra_battles or []),
                        extra_scores=list(extra_scores or []), tier_weighting=tier_weighting)
    if added:
        td.report["added"] = added
    td.report["data_hash"] = training.save(td, folder)
    ws.on_status(f"training data: {len(td.battles)} battles, data hash {td.report['data_hash']}")
    return td


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # absent or unreadable: the loader that needs it reports it properly
    return value if isinstance(value, dict) else {}


def _data_hash(path: Path) -> str | None:
    return _read_json(path).get("data_hash")


# ------------------------------------------------------------------------------------------------ train


def trainer_config(name: str, options: dict[str, Any] | None = None, home: Path | None = None) -> Any:
    """The router's trainer config with `options` (None values skipped) set on it; unknown options are errors."""
    spec = entry(name)
    cls = spec.config_class()
    options = {k: v for k, v in (options or {}).items() if v is not None}
    if cls is None:
        if options:
            raise ConfigError(f"{name} takes no training options, got {', '.join(sorted(options))}")
        return None
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ConfigError(f"{name} has no training option {', '.join(unknown)}; it has: {', '.join(sorted(fields))}")
    if "max_steps" in options and options["max_steps"] < 1:
        raise ConfigError(f"max_steps must be >= 1, got {options['max_steps']}")
    config = cls(**options)
    if "cache_dir" in fields and getattr(config, "cache_dir") is None and home is not None:
        config.cache_dir = str(home / "base_models")  # converted base checkpoints are kept with the artifacts
    return config


def train(ws: Workspace, name: str, options: dict[str, Any] | None = None) -> Path:
    """Train `name` on <home>/data (built first if absent) and write its artifact with its obvious-prompt check
    (models/obvious.py); returns the folder."""
    from models.obvious import record_check

    spec = entry(name)
    config = trainer_config(name, options, ws.home)  # options checked before any slow step
    td = training_data(ws)
    ws.on_status(f"training {name} ...")
    folder = spec.trainer_function()(td, ws.embedder, ws.routers, config, progress=True)
    run = _read_json(folder / "meta.json")
    if run.get("step_seconds"):  # the fine-tuned classifiers (models/finetune.py): the same summary for each
        curve, best = [h["validation_loss"] for h in run.get("validation", [])], run.get("best_validation_loss")
        loss = f"{curve[0]:.4f} -> best {best:.4f}" if curve and best is not None else "not measured"
        ws.on_status(f"{name}: {run['steps']} steps, {run['step_seconds']:.2f} s per step, validation loss {loss}")
    strong, weak = (config.strong, config.weak) if hasattr(config, "strong") else (DEFAULT_STRONG, DEFAULT_WEAK)
    if strong not in td.tiers or weak not in td.tiers:
        ws.on_status(f"{name}: obvious-prompt check skipped ({strong} and {weak} are not both in this data's tiers)")
        return folder
    ws.on_status(f"{name}: scoring the obvious-prompt check ...")
    options = {"backend": "transformers"} if spec.backend == "classifier" else {}  # no engine start for 160 prompts
    record_check(name, load_trained(spec, ws.routers, ws.embedder, strong=strong, weak=weak, **options), folder)
    return folder


def artifact_state(ws: Workspace, name: str) -> tuple[str, str]:
    """("ok" | "missing" | "stale", a phrase saying why) for a trained router's artifact."""
    spec = entry(name)
    folder = ws.routers / name
    if not spec.trained:
        return "ok", "nothing to train"
    if not (folder / spec.meta_file).is_file():
        return "missing", f"no {name} artifact under {ws.routers}"
    current = _data_hash(ws.home / "data" / "models.json")
    trained_on = _data_hash(folder / spec.meta_file)
    if None not in (current, trained_on) and current != trained_on:
        return "stale", f"{name} artifact was trained on data {trained_on}, <home>/data is now {current}"
    return "ok", "up to date"


def ensure_trained(ws: Workspace, name: str, build_missing: bool = True) -> None:
    """Apply the staleness rule (module docstring): train now, or stop with one line naming the command."""
    state, why = artifact_state(ws, name)
    if state == "ok":
        return
    spec = entry(name)
    if spec.train_on_demand and build_missing:
        ws.on_status(f"{why}: training it first")
        train(ws, name)
        return
    hint = "" if spec.train_on_demand else " (a long run on a CPU, never started implicitly)"
    raise ArtifactError(f"{why}; run `turnout train {name}`{hint}")


def load(ws: Workspace, name: str, *, strong: str = DEFAULT_STRONG, weak: str = DEFAULT_WEAK,
         build_missing: bool = True, **options: Any) -> Router:
    """A router by registry name, for the strong/weak pair; trained ones from <home>/routers after `ensure_trained`.

    `options` go to the router's `from_artifacts` (e.g. causal_llm's backend and dtype).
    """
    spec = entry(name)
    ensure_trained(ws, name, build_missing)  # nothing to do for a router without a trainer
    pair = {"strong": strong, "weak": weak} if spec.trained else {}
    return load_trained(spec, ws.routers, ws.embedder, **pair, **options)


def load_trained(spec: RouterEntry, root: Path, embedder: Any = None, **options: Any) -> Router:
    """Load an artifact as it is (no staleness check): what a serving replica does with a prepared folder."""
    if not spec.trained:
        return spec.router_class()()
    return spec.router_class().from_artifacts(root, embedder=embedder if spec.shares_embedding else None, **options)
