"""A user's own labelled prompts: the paper's answer to "route *my* traffic well" (RouteLLM §5.2, §6).

RouteLLM's routers gain most where the training data resembles the traffic (benchmark–dataset similarity), and a
small amount of in-domain labels (gold correctness or an LLM judge's verdicts) is what closes the gap. This module
reads such labels from one file in either of the two kinds the paper uses:

- **scores** — one row per (prompt, model): `prompt`, `model`, `score` (correctness 0/1, or a judge's score such
  as MT-Bench's 1–10). Per prompt, every pair of models that both have a score is a battle: the higher score
  wins, equal scores tie (the same rule as the correctness sources in models/data.py). Several scores for one
  (prompt, model) are averaged.
- **battles** — Chatbot Arena's schema: `prompt`, `model_a`, `model_b` and either `winner` ∈ {model_a, model_b,
  tie} ("tie (bothbad)", the Arena dump's other tie, counts as tie) or the Hugging Face 0/1 flags
  `winner_model_a`, `winner_model_b`, `winner_tie` (exactly one of them 1). When both are present, `winner` is read.

Files are `.jsonl`, `.csv` or `.parquet`; column names are matched case-insensitively, other columns are ignored.
A prompt may be the Arena's JSON list of user turns: the router routes on the first one. Model names go through
`models.model_names.canonical`. Every unusable row is reported by its 1-based data row number (CSV: the first
line after the header is row 1; JSON lines: line N is row N; blank lines count but are not rows), never silently
dropped; a file with no usable row, an unknown extension or a layout matching neither kind is a one-line
`ConfigError` (a missing file a `DataNotFoundError`).

`read_bench_file` reads a held-out slice of the user's traffic in the scores kind, long as above or wide
(`prompt` plus one score column per model), as a `models.benchmarks.Benchmark` for `turnout eval --bench FILE`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.benchmarks import Benchmark
from models.data import BATTLE_COLUMNS, _first_turn, _pairwise_battles
from index.errors import ConfigError
from models.model_names import canonical
from index.paths import require_file

log = logging.getLogger(__name__)

SUFFIXES = (".jsonl", ".csv", ".parquet")
SCORE_COLUMNS = ["prompt", "model", "score", "source"]
FLAG_COLUMNS = ("winner_model_a", "winner_model_b", "winner_tie")
RESERVED = ("prompt", "model", "score", "model_a", "model_b", "winner", *FLAG_COLUMNS)
WINNER_VALUES = {"model_a": "model_a", "model_b": "model_b", "tie": "tie", "tie (bothbad)": "tie"}
REPORT_ROWS = 20  # bad rows listed by number in a report; the count is always complete
SCHEMA_HINT = ("scores: prompt, model, score; battles: prompt, model_a, model_b and winner "
               "(or winner_model_a, winner_model_b, winner_tie)")


@dataclass
class UserData:
    """One user file, ready for `models.data.build(extra_battles=[.battles], extra_scores=[.scores])`."""

    path: Path
    source: str  # "user:<file stem>": the `source` of every row, and its line in the data build report
    kind: str  # "scores" or "battles"
    battles: pd.DataFrame  # BATTLE_COLUMNS: prompt, model_a, model_b, winner, source
    scores: pd.DataFrame  # SCORE_COLUMNS: prompt, model, score, source (empty for a battles file)
    bad_rows: list[tuple[int, str]] = field(default_factory=list)  # (1-based data row number, reason)
    n_rows: int = 0  # data rows read (blank lines excluded), good and bad
    unpaired_prompts: int = 0  # scores kind: prompts scored for one model only, which make no battle

    def summary(self) -> dict[str, Any]:
        """What the data build report records about this file."""
        return {
            "file": str(self.path), "source": self.source, "kind": self.kind, "rows": self.n_rows,
            "bad_rows": len(self.bad_rows), "battles": len(self.battles), "prompts": int(self.battles["prompt"].nunique()),
            "unpaired_prompts": self.unpaired_prompts, "first_bad_rows": [list(r) for r in self.bad_rows[:REPORT_ROWS]],
        }


def format_bad_rows(path: str | Path, bad_rows: list[tuple[int, str]], n_rows: int, limit: int = REPORT_ROWS) -> str:
    """One line: how many rows of `path` were skipped, and the first `limit` of them with their reasons."""
    shown = "; ".join(f"row {row}: {reason}" for row, reason in bad_rows[:limit])
    more = f"; … and {len(bad_rows) - limit} more" if len(bad_rows) > limit else ""
    return f"{path}: skipped {len(bad_rows)} of {n_rows} rows ({shown}{more})"


# ------------------------------------------------------------------------------------------- reading


def _read_jsonl(path: Path) -> tuple[pd.DataFrame, np.ndarray, list[tuple[int, str]]]:
    records, rows, bad = [], [], []
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                value = None
            if not isinstance(value, dict):
                bad.append((number, "not a JSON object"))
                continue
            records.append(value)
            rows.append(number)
    if not records:
        raise ConfigError(f"{path}: no line is a JSON object" + (f" (line {bad[0][0]} is not)" if bad else " (empty file)"))
    return pd.DataFrame.from_records(records), np.asarray(rows), bad


def _read_frame(path: Path, reader: Callable[[Path], pd.DataFrame], what: str) -> pd.DataFrame:
    try:
        return reader(path)
    except pd.errors.EmptyDataError as exc:
        raise ConfigError(f"{path}: empty file") from exc
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:  # pyarrow's errors are ValueErrors
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path}: cannot read it as {what} ({reason})") from exc


def read_table(path: str | Path) -> tuple[pd.DataFrame, np.ndarray, list[tuple[int, str]]]:
    """(rows, their 1-based data row numbers, rows already unusable) of a .jsonl/.csv/.parquet file.

    Reserved column names (prompt, model, score, model_a, …) are lower-cased; blank rows are left out.
    """
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ConfigError(f"{path}: unknown format {path.suffix or '(no extension)'!r}; expected {', '.join(SUFFIXES)}")
    require_file(path)
    suffix = path.suffix.lower()
    bad: list[tuple[int, str]] = []
    if suffix == ".jsonl":
        try:
            frame, rows, bad = _read_jsonl(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read it as JSON lines ({type(exc).__name__})") from exc
    else:
        if suffix == ".csv":
            # Every cell as text ("" when empty), so that a bad score is reported as written; blank lines kept so
            # that row numbers match the file's lines.
            frame = _read_frame(path, lambda p: pd.read_csv(p, dtype=str, keep_default_na=False, skip_blank_lines=False,
                                                            encoding="utf-8-sig"), "CSV")
        else:
            frame = _read_frame(path, pd.read_parquet, "parquet")
        frame = frame.reset_index(drop=True)
        rows = np.arange(1, len(frame) + 1)
        blank = frame.map(_missing).all(axis=1).to_numpy(dtype=bool)
        frame, rows = frame[~blank].reset_index(drop=True), rows[~blank]
    renamed: dict[Any, str] = {}
    for column in frame.columns:
        key = str(column).strip().lower()
        if key in RESERVED:
            if key in renamed.values():
                raise ConfigError(f"{path}: column {key!r} appears twice")
            renamed[column] = key
    return frame.rename(columns=renamed), rows, bad


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _text(value: Any) -> str | None:
    """A model name or label as text; None when missing or not text-like."""
    if _missing(value) or isinstance(value, (list, dict, np.ndarray)):
        return None
    return str(value).strip()


def _prompt(value: Any) -> str | None:
    if isinstance(value, (list, np.ndarray)) or (isinstance(value, str) and value.startswith("[")):
        value = _first_turn(value)  # the Arena's JSON list of user turns: route on the first
    if _missing(value) or isinstance(value, dict):
        return None
    return str(value)


def _number(value: Any) -> float | str:
    """The score as a float, or the reason it is not one."""
    if _missing(value):
        return "missing score"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return f"score {str(value)[:40]!r} is not a number"
    return number if math.isfinite(number) else f"score {value!r} is not a finite number"


def _kind(path: Path, columns: set[str]) -> str:
    battles = {"model_a", "model_b"} <= columns
    scores = {"model", "score"} <= columns
    shown = ", ".join(sorted(map(str, columns))[:20]) or "none"
    if "prompt" not in columns or battles == scores:
        what = "has both schemas' columns" if battles and scores else "matches neither schema"
        raise ConfigError(f"{path} {what} ({SCHEMA_HINT}); its columns: {shown}")
    if battles and "winner" not in columns and not set(FLAG_COLUMNS) <= columns:
        raise ConfigError(f"{path} has model_a/model_b but no winner column nor {', '.join(FLAG_COLUMNS)}; its columns: {shown}")
    return "battles" if battles else "scores"


# ------------------------------------------------------------------------------------ user training data


def _score_rows(frame: pd.DataFrame, rows: np.ndarray, bad: list[tuple[int, str]]) -> pd.DataFrame:
    good = []
    for row, prompt, model, score in zip(rows, frame["prompt"], frame["model"], frame["score"]):
        prompt, name, value = _prompt(prompt), _text(model), _number(score)
        reason = ("empty prompt" if prompt is None else "missing model" if not name
                  else value if isinstance(value, str) else None)
        if reason:
            bad.append((int(row), reason))
        else:
            good.append((int(row), prompt, canonical(name), value))
    return pd.DataFrame(good, columns=["row", "prompt", "model", "score"])


def _flag(value: Any) -> int | None:
    if isinstance(value, str):
        value = {"true": 1, "false": 0}.get(value.strip().lower(), value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number in (0.0, 1.0) else None


def _winner(record: dict[str, Any], use_flags: bool) -> str:
    """'model_a' | 'model_b' | 'tie', or a reason starting with '!'."""
    if not use_flags:
        raw = record["winner"]
        if _missing(raw):
            return "!missing winner"
        winner = WINNER_VALUES.get(str(raw).strip().lower())
        return winner or f"!unknown winner {str(raw)[:40]!r} (expected model_a, model_b or tie)"
    flags = [_flag(record[c]) for c in FLAG_COLUMNS]
    if None in flags:
        return "!winner flags must be 0 or 1 (" + ", ".join(f"{c}={record[c]!r}" for c in FLAG_COLUMNS) + ")"
    if sum(flags) != 1:
        return "!exactly one winner flag must be 1 (" + ", ".join(f"{c}={f}" for c, f in zip(FLAG_COLUMNS, flags)) + ")"
    return ("model_a", "model_b", "tie")[flags.index(1)]


def _battle_rows(frame: pd.DataFrame, rows: np.ndarray, bad: list[tuple[int, str]], source: str) -> pd.DataFrame:
    use_flags = "winner" not in frame.columns
    columns = ["prompt", "model_a", "model_b", *(FLAG_COLUMNS if use_flags else ("winner",))]
    good = []
    for row, record in zip(rows, frame[columns].to_dict("records")):
        prompt = _prompt(record["prompt"])
        a, b = _text(record["model_a"]), _text(record["model_b"])
        a, b = (canonical(a) if a else None), (canonical(b) if b else None)
        winner = _winner(record, use_flags)
        reason = ("empty prompt" if prompt is None else "missing model_a" if not a else "missing model_b" if not b
                  else f"model_a and model_b are both {a!r}" if a == b
                  else winner[1:] if winner.startswith("!") else None)
        if reason:
            bad.append((int(row), reason))
        else:
            good.append((prompt, a, b, winner, source))
    return pd.DataFrame(good, columns=BATTLE_COLUMNS)


def read_user_file(path: str | Path) -> UserData:
    """Read one user file (either kind; see the module docstring) into battles and scores tables.

    Raises a one-line ConfigError (DataNotFoundError when missing) for an unusable file; bad rows are returned in
    `bad_rows`, not raised.
    """
    path = Path(path)
    frame, rows, bad = read_table(path)
    kind = _kind(path, set(frame.columns))
    source = f"user:{path.stem}"
    n_rows = len(rows) + len(bad)
    empty_scores = pd.DataFrame(columns=SCORE_COLUMNS)
    if kind == "battles":
        battles = _battle_rows(frame, rows, bad, source)
        bad.sort()
        if battles.empty:
            raise ConfigError(f"{path}: no valid row; {format_bad_rows(path, bad, n_rows)}")
        return UserData(path, source, kind, battles, empty_scores, bad, n_rows)

    long = _score_rows(frame, rows, bad)
    bad.sort()
    if long.empty:
        raise ConfigError(f"{path}: no valid row; {format_bad_rows(path, bad, n_rows)}")
    long = long.groupby(["prompt", "model"], sort=False)["score"].mean().reset_index()  # repeats are averaged
    models = long["model"].unique().tolist()
    if len(models) < 2:
        raise ConfigError(f"{path}: scores for one model only ({models[0]!r}); a battle needs two models scored on the same prompt")
    wide = long.pivot_table(index="prompt", columns="model", values="score", aggfunc="mean", sort=False)
    paired = wide.notna().sum(axis=1) >= 2
    if not paired.any():
        raise ConfigError(f"{path}: no prompt has scores for two models, so there is no battle to learn from")
    battles = _pairwise_battles(wide.index.tolist(), wide, source)[BATTLE_COLUMNS].reset_index(drop=True)
    unpaired = int((~paired).sum())
    if unpaired:
        log.warning("%s: %d prompt(s) have a score for one model only and make no battle", path, unpaired)
    return UserData(path, source, kind, battles, long.assign(source=source)[SCORE_COLUMNS], bad, n_rows, unpaired)


# ------------------------------------------------------------------------------------- held-out benchmark


def _models_note(models: list[str]) -> str:
    return ", ".join(map(repr, models[:20])) + (f" and {len(models) - 20} more" if len(models) > 20 else "")


def read_bench_file(path: str | Path, strong: str, weak: str) -> Benchmark:
    """A held-out file of the user's traffic as a Benchmark scoring `strong` against `weak`.

    Scores kind, long (prompt, model, score) or wide (prompt plus one score column per model). Each item needs
    both models' scores: an item lacking one, and every unusable row, is logged by row number and skipped. A
    file without the strong or the weak model at all is a one-line ConfigError naming the models it has.
    """
    path = Path(path)
    strong, weak = canonical(strong), canonical(weak)
    if strong == weak:
        raise ConfigError(f"strong and weak model are both {strong!r}")
    frame, rows, bad = read_table(path)
    columns = set(frame.columns)
    if {"model_a", "model_b"} <= columns:
        raise ConfigError(f"{path} holds battles; a benchmark needs each model's score per prompt (prompt, model, score, or one column per model)")
    if "prompt" not in columns:
        raise ConfigError(f"{path} has no prompt column ({SCHEMA_HINT}; or wide: prompt plus one score column per model)")
    n_rows = len(rows) + len(bad)
    if {"model", "score"} <= columns:
        prompts, strong_scores, weak_scores = _long_bench(path, frame, rows, bad, strong, weak)
    else:
        prompts, strong_scores, weak_scores = _wide_bench(path, frame, rows, bad, strong, weak)
    bad.sort()
    if bad:
        log.warning("%s", format_bad_rows(path, bad, n_rows))
    if not prompts:
        raise ConfigError(f"{path}: no prompt has scores for both {strong!r} and {weak!r}")
    bench = Benchmark(name=path.stem, prompts=prompts, strong=np.asarray(strong_scores, dtype=np.float64),
                      weak=np.asarray(weak_scores, dtype=np.float64), strong_model=strong, weak_model=weak)
    log.info("%s: %d items, strong %.4f, weak %.4f", path, len(bench), bench.strong.mean(), bench.weak.mean())
    return bench


def _long_bench(path: Path, frame: pd.DataFrame, rows: np.ndarray, bad: list[tuple[int, str]], strong: str,
                weak: str) -> tuple[list[str], list[float], list[float]]:
    long = _score_rows(frame, rows, bad)
    models = long["model"].unique().tolist()
    for role, model in (("strong", strong), ("weak", weak)):
        if model not in models:
            raise ConfigError(f"{path} has no scores for the {role} model {model!r}; its models: {_models_note(models) or 'none'}")
    first_row = long.groupby("prompt", sort=False)["row"].min()
    means = long.groupby(["prompt", "model"], sort=False)["score"].mean().unstack("model").reindex(first_row.index)
    prompts, strong_scores, weak_scores = [], [], []
    for prompt, s, w in zip(means.index, means[strong], means[weak]):
        missing = [role for role, value in ((f"strong model {strong!r}", s), (f"weak model {weak!r}", w)) if np.isnan(value)]
        if missing:
            bad.append((int(first_row[prompt]), f"prompt has no score for the {' nor the '.join(missing)}"))
            continue
        prompts.append(prompt)
        strong_scores.append(float(s))
        weak_scores.append(float(w))
    return prompts, strong_scores, weak_scores


def _wide_bench(path: Path, frame: pd.DataFrame, rows: np.ndarray, bad: list[tuple[int, str]], strong: str,
                weak: str) -> tuple[list[str], list[float], list[float]]:
    by_name: dict[str, Any] = {}
    for column in frame.columns:
        if column == "prompt":
            continue
        name = canonical(str(column))
        if name in by_name:
            raise ConfigError(f"{path}: columns {by_name[name]!r} and {column!r} are both model {name!r}")
        by_name[name] = column
    for role, model in (("strong", strong), ("weak", weak)):
        if model not in by_name:
            raise ConfigError(f"{path} has no score column for the {role} model {model!r}; its columns: "
                              f"{_models_note([str(c) for c in by_name.values()]) or 'none'}")
    prompts, strong_scores, weak_scores = [], [], []
    for row, prompt, s, w in zip(rows, frame["prompt"], frame[by_name[strong]], frame[by_name[weak]]):
        text, s, w = _prompt(prompt), _number(s), _number(w)
        reason = "empty prompt" if text is None else None
        for model, value in ((strong, s), (weak, w)):
            if reason is None and isinstance(value, str):
                reason = f"{value} for {model!r}"
        if reason:
            bad.append((int(row), reason))
            continue
        prompts.append(text)
        strong_scores.append(s)
        weak_scores.append(w)
    return prompts, strong_scores, weak_scores


# ------------------------------------------------------------------------------------------- prompts


def read_prompts(path: str | Path) -> list[str]:
    """Prompts of a traffic sample: .txt (one per line) or .jsonl/.csv/.parquet with a `prompt` column."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        require_file(path)
        try:
            prompts = [line for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read it as UTF-8 text ({type(exc).__name__})") from exc
    else:
        if path.suffix.lower() not in SUFFIXES:
            raise ConfigError(f"{path}: unknown format {path.suffix or '(no extension)'!r}; expected .txt, {', '.join(SUFFIXES)}")
        frame, rows, bad = read_table(path)
        if "prompt" not in frame.columns:
            raise ConfigError(f"{path} has no prompt column; its columns: {', '.join(map(str, frame.columns[:20]))}")
        prompts = []
        for row, value in zip(rows, frame["prompt"]):
            text = _prompt(value)
            if text is None or not text.strip():
                bad.append((int(row), "empty prompt"))
            else:
                prompts.append(text)
        if bad:
            log.warning("%s", format_bad_rows(path, sorted(bad), len(rows) + len(bad)))
    if not prompts:
        raise ConfigError(f"{path} holds no prompts")
    return prompts


def read_added(paths: list[str]) -> list:
    """Every --add file read and checked before anything is built, so a bad one leaves <home>/data as it was."""
    added = [read_user_file(p) for p in paths]
    sources = [u.source for u in added]
    twice = sorted({s for s in sources if sources.count(s) > 1})
    if twice:
        raise ConfigError(f"--add files share a name ({', '.join(twice)}): each file's stem names its source; rename one")
    for user in added:
        if user.bad_rows:
            log.warning("%s", format_bad_rows(user.path, user.bad_rows, user.n_rows))
    return added
