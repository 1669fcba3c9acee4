"""Obvious-prompt check: does a router rank clearly hard prompts above clearly easy ones?

RouteLLM's metrics (APGR, CPT; `models.metrics`) average over benchmark items whose difficulty is mostly in the
middle, so a router can score well there and still send "Prove Sylow's first theorem." to the weak model and a
chatty greeting to the strong one. This check asks the plainest question instead: the AUC of p_strong for
telling "hard" from "easy" prompts, i.e. the probability that a random hard prompt gets a higher p_strong than a
random easy one (ties count half).

The prompts live in `obvious_prompts.jsonl` next to this module, written by hand for this check and never used
for training. Each line is {"prompt", "label": "hard"|"easy", "kind", "balanced"}:
- "easy": any cheap 7B chat model answers it perfectly (greetings, thanks, sorting a list, capital of France);
- "hard": a frontier model is clearly needed (proofs, olympiad math, graduate physics, tricky algorithms, law);
- "balanced": the length-balanced subset of short hard prompts and long easy ones, on which the easy prompts are
  longer, so that prompt length alone ranks them the wrong way (the length router's AUC there is near 0).

`obvious_prompts_heldout.jsonl` (same schema) is a second file written later, in other styles and kinds (long chatty
easy requests with pasted text, terse hard questions from systems, medicine, law and physics), committed before
any choice of issue 22 and read once at the end of its first round; from then on it is a dev file like the first.
`obvious_prompts_heldout2.jsonl` is a third, written independently (by a helper session that read neither other
file) before the second round's choices, to break the link between topic and difficulty (easy arithmetic, one-line
code and textbook definitions; hard writing under many constraints, casual-sounding puzzles and probability), read
once at the end of that round and a dev file since. `obvious_prompts_heldout3.jsonl`, written the same way before
the third round, looks like a company gateway's traffic (support replies, pasted context, SQL, compliance, finance,
design reviews) with easy and hard prompts in every domain, and was read once at the end of the third round (a dev
file since). `obvious_prompts_heldout4.jsonl`, written the same way on 2026-12-07 (session 6) as consumer-assistant
and developer-tool traffic with easy and hard prompts in the same domains, was read once at the end of that session
with no choice pending, and is a dev file since. `obvious_prompts_heldout5.jsonl`, written the same way on 2026-12-08
(session 7) as support, education, analytics, DevOps, health, finance, creative and science traffic with easy and
hard prompts in every domain, was read once at the end of that session's choice of a blend (`loadtest.obvious_blend`)
and is a dev file since: the next choice needs a new file, written and committed before it and read once at the
end. Each balanced subset's easy prompts are all longer than its hard ones.

Targets for the served default router: AUC >= `TARGET_AUC` on the whole file and >= `TARGET_AUC_BALANCED` on the
balanced subset; for any router the service serves, `ROUTER_TARGET_AUC` and `ROUTER_TARGET_AUC_BALANCED`, on every
file. Every trained artifact carries its own check of every file (`record_check`, run by `models.pipeline.train`),
and `turnout serve` warns when it enables a router that misses those on any file (`below_target`). Measured
figures belong in BENCHMARKS.md, not here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.base import Router
from index.errors import DataNotFoundError, InputError
from models.metrics import percentile_interval

log = logging.getLogger(__name__)

OBVIOUS_PATH = Path(__file__).with_name("obvious_prompts.jsonl")
OBVIOUS_HELDOUT_PATH = Path(__file__).with_name("obvious_prompts_heldout.jsonl")  # a dev file since issue 22's first read
OBVIOUS_HELDOUT2_PATH = Path(__file__).with_name("obvious_prompts_heldout2.jsonl")  # a dev file since round 2's end
OBVIOUS_HELDOUT3_PATH = Path(__file__).with_name("obvious_prompts_heldout3.jsonl")  # a dev file since round 3's end
OBVIOUS_HELDOUT4_PATH = Path(__file__).with_name("obvious_prompts_heldout4.jsonl")  # a dev file since session 6
OBVIOUS_HELDOUT5_PATH = Path(__file__).with_name("obvious_prompts_heldout5.jsonl")  # a dev file since session 7
# Every file after the committed one, in the order written: `turnout eval --obvious-heldout` scores them all.
OBVIOUS_LATER_PATHS = (OBVIOUS_HELDOUT_PATH, OBVIOUS_HELDOUT2_PATH, OBVIOUS_HELDOUT3_PATH, OBVIOUS_HELDOUT4_PATH,
                       OBVIOUS_HELDOUT5_PATH)
CHECK_PATHS = (OBVIOUS_PATH, *OBVIOUS_LATER_PATHS)  # what a trained artifact's own check scores
LABELS = ("hard", "easy")
COLUMNS = ("prompt", "label", "kind", "balanced")
TARGET_AUC = 0.8
TARGET_AUC_BALANCED = 0.7
ROUTER_TARGET_AUC = 0.75
ROUTER_TARGET_AUC_BALANCED = 0.65
CHECK_FILE = "obvious.json"  # in a trained router's artifact folder
# The length baseline is computed here (p_strong = characters), so the report always shows the floor.
LENGTH = "length"


def load_obvious(path: Path | None = None) -> pd.DataFrame:
    """The check prompts as a DataFrame: prompt, label, kind, balanced (bool) and is_hard (bool)."""
    path = Path(path) if path is not None else OBVIOUS_PATH
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataNotFoundError(f"cannot read obvious-prompt file {path}: {exc.strerror or exc}") from exc
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataNotFoundError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
        rows.append(_check_row(row, path, number))
    if not rows:
        raise DataNotFoundError(f"obvious-prompt file {path} has no prompts")
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    missing = [label for label in LABELS if not (frame["label"] == label).any()]
    if missing:
        raise DataNotFoundError(f"obvious-prompt file {path} has no {' or '.join(missing)} prompts")
    frame["balanced"] = frame["balanced"].astype(bool)
    frame["is_hard"] = frame["label"] == "hard"
    return frame


def _check_row(row: Any, path: Path, number: int) -> dict[str, Any]:
    where = f"{path}:{number}"
    if not isinstance(row, dict):
        raise DataNotFoundError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [key for key in COLUMNS if key not in row]
    if missing:
        raise DataNotFoundError(f"{where}: missing {', '.join(missing)}")
    if not isinstance(row["prompt"], str) or not row["prompt"].strip():
        raise DataNotFoundError(f"{where}: prompt must be a non-empty string")
    if row["label"] not in LABELS:
        raise DataNotFoundError(f"{where}: label must be 'hard' or 'easy', got {row['label']!r}")
    if not isinstance(row["balanced"], bool):
        raise DataNotFoundError(f"{where}: balanced must be true or false, got {row['balanced']!r}")
    return {key: row[key] for key in COLUMNS}


def _pair(p_strong: Any, is_hard: Any) -> tuple[np.ndarray, np.ndarray]:
    """float64 p_strong and bool is_hard, equal length, finite, both classes present."""
    p_strong = np.asarray(p_strong, dtype=np.float64)
    is_hard = np.asarray(is_hard)
    if p_strong.ndim != 1 or is_hard.shape != p_strong.shape:
        raise InputError(f"p_strong and is_hard must be 1-d of equal length, got {p_strong.shape} and {is_hard.shape}")
    if not np.isfinite(p_strong).all():
        raise InputError("p_strong must be finite")
    if is_hard.dtype != bool:
        if not np.isin(is_hard, (0, 1)).all():
            raise InputError("is_hard must be boolean (or 0/1)")
        is_hard = is_hard.astype(bool)
    if is_hard.all() or not is_hard.any():
        raise InputError("AUC needs at least one hard and one easy prompt")
    return p_strong, is_hard


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span (what scipy.stats.rankdata does by default)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def _auc(p_strong: np.ndarray, is_hard: np.ndarray) -> float:
    n_hard = int(is_hard.sum())
    n_easy = len(is_hard) - n_hard
    rank_sum = _average_ranks(p_strong)[is_hard].sum()
    return float((rank_sum - n_hard * (n_hard + 1) / 2.0) / (n_hard * n_easy))


def auc(p_strong: Any, is_hard: Any) -> float:
    """P(p_strong of a random hard prompt > that of a random easy one), ties counting half (Mann-Whitney U)."""
    return _auc(*_pair(p_strong, is_hard))


def auc_interval(p_strong: Any, is_hard: Any, n_bootstrap: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the AUC, bootstrapping hard and easy prompts separately (class sizes fixed)."""
    p_strong, is_hard = _pair(p_strong, is_hard)
    if n_bootstrap < 1:
        raise InputError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
    hard, easy = p_strong[is_hard], p_strong[~is_hard]
    labels = np.concatenate([np.ones(len(hard), dtype=bool), np.zeros(len(easy), dtype=bool)])
    rng = np.random.default_rng(seed)
    draws = np.empty(n_bootstrap)
    for i in range(n_bootstrap):
        sample = np.concatenate([rng.choice(hard, len(hard)), rng.choice(easy, len(easy))])
        draws[i] = _auc(sample, labels)
    low, high = percentile_interval(draws)
    return low, high


def paired_p_greater(p_strong: Any, other: Any, is_hard: Any, n_bootstrap: int = 1000, seed: int = 0) -> float:
    """P(AUC of `p_strong` > AUC of `other`) over prompt resamples shared by both (drawn as `auc_interval` draws)."""
    p_strong, is_hard = _pair(p_strong, is_hard)
    other = np.asarray(other, dtype=np.float64)
    hard, easy = np.flatnonzero(is_hard), np.flatnonzero(~is_hard)
    rng = np.random.default_rng(seed)
    wins = 0
    for _ in range(n_bootstrap):
        idx = np.concatenate([rng.choice(hard, len(hard)), rng.choice(easy, len(easy))])
        wins += _auc(p_strong[idx], is_hard[idx]) > _auc(other[idx], is_hard[idx])
    return wins / n_bootstrap


def file_aucs(p_strong: np.ndarray, frame: pd.DataFrame) -> dict[str, float]:
    """{"auc", "auc_balanced"} of `p_strong` on one file's prompts (`load_obvious`); the balanced AUC is NaN where
    that subset holds one label only."""
    p_strong = np.asarray(p_strong, dtype=np.float64)
    is_hard, balanced = frame["is_hard"].to_numpy(), frame["balanced"].to_numpy()
    both = is_hard[balanced].any() and not is_hard[balanced].all()
    return {"auc": auc(p_strong, is_hard),
            "auc_balanced": auc(p_strong[balanced], is_hard[balanced]) if both else float("nan")}


def _entry(p_strong: np.ndarray, frame: pd.DataFrame, n_bootstrap: int, seed: int) -> dict[str, Any]:
    is_hard = frame["is_hard"].to_numpy()
    balanced = frame["balanced"].to_numpy()
    aucs = file_aucs(p_strong, frame)
    return {
        "auc": aucs["auc"],
        "auc_ci95": auc_interval(p_strong, is_hard, n_bootstrap, seed),
        "n": int(len(frame)),
        "n_balanced": int(balanced.sum()),
        "auc_balanced": aucs["auc_balanced"],
        "auc_balanced_ci95": (auc_interval(p_strong[balanced], is_hard[balanced], n_bootstrap, seed)
                              if np.isfinite(aucs["auc_balanced"]) else (float("nan"), float("nan"))),
    }


def obvious_report(
    routers: dict[str, Router], path: Path | None = None, n_bootstrap: int = 1000, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """{router: {auc, auc_ci95, auc_balanced, auc_balanced_ci95, n, n_balanced}}, "length" always included.

    Each router scores the whole file in one `router.score(prompts)` batch. "length" (p_strong = characters) is
    computed here unless `routers` brings its own; any monotone length map gives the same AUC.
    """
    frame = load_obvious(path)
    prompts = frame["prompt"].tolist()
    report: dict[str, dict[str, Any]] = {}
    if LENGTH not in routers:
        chars = frame["prompt"].str.len().to_numpy(dtype=np.float64)
        report[LENGTH] = _entry(chars, frame, n_bootstrap, seed)
    for name, router in routers.items():
        log.info("scoring %d obvious prompts with %s", len(prompts), name)
        report[name] = _entry(router.score(prompts), frame, n_bootstrap, seed)
    return report


def targets_met(whole: float, balanced: float) -> str:
    """"default" (the served default router's targets, which include the per-router ones), "router" (those of any
    router the service serves) or "no"."""
    if whole >= TARGET_AUC and balanced >= TARGET_AUC_BALANCED:
        return "default"
    return "router" if whole >= ROUTER_TARGET_AUC and balanced >= ROUTER_TARGET_AUC_BALANCED else "no"


def format_obvious(report: dict[str, dict[str, Any]]) -> str:
    """A plain-text table of `obvious_report`, one row per router, with the targets it meets (`targets_met`)."""
    header = ("router", "AUC", "95% CI", "AUC balanced", "95% CI", "n", "n_bal", "meets target")
    rows = [header]
    for name, entry in report.items():
        rows.append(
            (
                name,
                f"{entry['auc']:.3f}",
                _interval(entry["auc_ci95"]),
                f"{entry['auc_balanced']:.3f}",
                _interval(entry["auc_balanced_ci95"]),
                str(entry["n"]),
                str(entry["n_balanced"]),
                targets_met(entry["auc"], entry["auc_balanced"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines.append(f"targets: default: AUC >= {TARGET_AUC}, balanced AUC >= {TARGET_AUC_BALANCED} (the served default "
                 f"router); router: AUC >= {ROUTER_TARGET_AUC}, balanced AUC >= {ROUTER_TARGET_AUC_BALANCED} (any "
                 "router the service serves)")
    return "\n".join(lines)


def _interval(bounds: tuple[float, float]) -> str:
    return f"[{bounds[0]:.3f}, {bounds[1]:.3f}]"


def record_check(name: str, router: Router, folder: Path) -> dict[str, Any]:
    """Score every obvious file (`CHECK_PATHS`) with a freshly trained router and keep the AUCs beside its
    artifact: {"files": {file name: {"auc", "auc_balanced"}}}."""
    frames = {path.name: load_obvious(path) for path in CHECK_PATHS}
    p_strong = router.score([p for frame in frames.values() for p in frame["prompt"]])  # one call: one engine start
    files, start = {}, 0
    for file, frame in frames.items():
        p, start = p_strong[start: start + len(frame)], start + len(frame)
        files[file] = {key: round(value, 4) for key, value in file_aucs(p, frame).items()}
    check = {"files": files}
    (Path(folder) / CHECK_FILE).write_text(json.dumps(check) + "\n")
    return check


def recorded_check(folder: Path) -> dict[str, dict[str, float]] | None:
    """{file name: {"auc", "auc_balanced"}} from the artifact's check (one file in a check recorded before every
    file was scored), or None when there is none or it does not parse."""
    try:
        check = json.loads((Path(folder) / CHECK_FILE).read_text())
        files = check["files"] if "files" in check else {check["file"]: check}
        return {file: {"auc": float(e["auc"]), "auc_balanced": float(e["auc_balanced"])} for file, e in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def check_is_current(folder: Path) -> bool:
    """Whether the artifact's check scored exactly the obvious files there are now."""
    files = recorded_check(folder)
    return files is not None and set(files) == {path.name for path in CHECK_PATHS}


def worst_margin(files: dict[str, dict[str, float]]) -> float:
    """How far the worst file is from the router targets (negative: below), whole file or balanced subset."""
    return min(min(e["auc"] - ROUTER_TARGET_AUC, e["auc_balanced"] - ROUTER_TARGET_AUC_BALANCED) for e in files.values())


def below_target(name: str, folder: Path) -> str | None:
    """A one-line warning when the artifact's recorded check misses the router targets on any file; None when it
    meets them on every one or when no check was recorded (an artifact trained before checks were kept)."""
    files = recorded_check(folder)
    if not files:
        return None
    missed = [file for file, e in files.items() if targets_met(e["auc"], e["auc_balanced"]) == "no"]
    if not missed:
        return None
    worst_file = min(missed, key=lambda file: worst_margin({file: files[file]}))
    worst = files[worst_file]
    return (f"{name} misses the obvious-prompt targets (AUC >= {ROUTER_TARGET_AUC}, length-balanced >= "
            f"{ROUTER_TARGET_AUC_BALANCED}) on {len(missed)} of {len(files)} files; worst {worst_file}: AUC "
            f"{worst['auc']:.2f}, balanced {worst['auc_balanced']:.2f}: on prompts like those its decisions look close "
            "to random or backwards; BENCHMARKS.md, 'Why the classifiers routed backwards'")

