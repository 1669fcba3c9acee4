"""Training data: every source in ../shared/data turned into one battles table.

A battle is (prompt, model_a, model_b, winner ∈ {model_a, model_b, tie}, source). Sources (train splits only):

- AlpacaEval pairwise GPT-4 annotations (chat prompts), as two sources.
  `alpaca-eval-1`: GPT-4 judges 52 models against text-davinci-003; 1 -> model_a, 2 -> model_b, 0 (their draw)
  or 1.5 -> tie, empty -> dropped.
  `alpaca-eval-2`: GPT-4-turbo judges 58 models against gpt-4-1106-preview's own outputs; `preference` is
  1 + P(generator_2 preferred): P ≥ 0.6 -> model_b, P ≤ 0.4 -> model_a, else tie. The judge *is* our strong
  model judging its own answers, so every one of these labels carries self-preference (and AlpacaEval's known
  length) bias about exactly the comparison we route on. It is left out by default (`DEFAULT_SOURCES`);
  BENCHMARKS.md shows what including it does.
- RouterDC per-query scores of 7 open models (train files only). A model is correct when its score > 0 for
  multiple choice, ≥ 0.5 for sampled-fraction scores (GSM8K, HumanEval); every model pair on a question is a
  battle (correct beats wrong, equal is a tie).
- RouterBench zero-shot train files (11 models, incl. the evaluation pair), the same way. Their few-shot
  preamble and answer instruction are shared by every row of a file and are stripped, so that the embedding
  sees the question rather than the preamble.
- Optionally Chatbot Arena battles in the Hugging Face schema (`load_arena`).

Every training prompt that matches an evaluation prompt (normalised exact match, or embedding cosine ≥ 0.95)
is dropped. Strength tiers come from one global Bradley–Terry fit over all battles.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from models import bradley_terry
from models.errors import ArtifactError, ConfigError, DataNotFoundError
from models.model_names import canonical
from models.paths import atomic_path, require_file

log = logging.getLogger(__name__)

WINNERS = ("model_a", "model_b", "tie")
BATTLE_COLUMNS = ["prompt", "model_a", "model_b", "winner", "source"]
ROUTERDC_TRAIN = ["mmlu_train", "gsm8k-train", "arc_challenge_train", "arc_easy_train", "cmmlu_train", "humaneval_train"]
FRACTION_SCORED = {"gsm8k-train", "humaneval_train"}  # scores are the share of correct samples, not 0/prob
ROUTERBENCH_TRAIN = ["arc_challenge_train", "mbpp_train", "winograde_train"]
DECONTAM_COSINE = 0.95
SOURCES = ("alpaca-eval-1", "alpaca-eval-2", "routerdc", "routerbench")
DEFAULT_SOURCES = ("alpaca-eval-1", "routerdc", "routerbench")


# ---------------------------------------------------------------------------------------------- sources


def _pairwise_battles(prompts: list[str], scores: pd.DataFrame, source: str) -> pd.DataFrame:
    """Battles from a (prompt × model) correctness matrix: each model pair on a prompt, NaN skipped."""
    models = list(scores.columns)
    values = scores.to_numpy(dtype=np.float64)
    frames = []
    for i, j in itertools.combinations(range(len(models)), 2):
        a, b = values[:, i], values[:, j]
        ok = ~(np.isnan(a) | np.isnan(b))
        winner = np.where(a > b, "model_a", np.where(a < b, "model_b", "tie"))[ok]
        frames.append(pd.DataFrame({
            "prompt": np.asarray(prompts, dtype=object)[ok], "model_a": canonical(models[i]),
            "model_b": canonical(models[j]), "winner": winner, "source": source,
        }))
    return pd.concat(frames, ignore_index=True)


def load_alpaca_eval(data: Path) -> pd.DataFrame:
    folder = data / "alpaca-eval"
    ann = pd.read_csv(require_file(folder / "pairwise_annotations.csv"))
    instructions = pd.read_csv(require_file(folder / "instructions.csv")).set_index("instruction_idx")["instruction"]
    pref = ann["preference"]
    weighted = ann["annotator"].str.startswith("weighted")
    p_b = pref - 1.0  # P(generator_2 preferred) for the weighted annotator
    winner = np.select(
        [weighted & (p_b >= 0.6), weighted & (p_b <= 0.4), weighted,
         pref == 2, pref == 1, pref.isin([0, 1.5])],
        ["model_b", "model_a", "tie", "model_b", "model_a", "tie"], default="",
    )
    # "example" is AlpacaEval's demo results folder, not a model.
    keep = (winner != "") & pref.notna() & (ann["generator_2"] != "example")
    ann = ann[keep]
    return pd.DataFrame({
        "prompt": instructions.reindex(ann["instruction_idx"]).to_numpy(),
        "model_a": ann["generator_1"].map(canonical).to_numpy(),
        "model_b": ann["generator_2"].map(canonical).to_numpy(),
        "winner": winner[keep.to_numpy()],
        # Two annotators, two sources: they differ in judge, baseline and label type (see the module docstring).
        "source": np.where(weighted[keep].to_numpy(), "alpaca-eval-2", "alpaca-eval-1"),
    })


def load_routerdc(data: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    folder = data / "routerdc" / "datasets" / "split2_model7"
    battles, scores = [], []
    for name in ROUTERDC_TRAIN:
        rows = json.loads(require_file(folder / f"{name}.json").read_text())
        prompts = [r["question"] for r in rows]
        matrix = pd.DataFrame([r["scores"] for r in rows], dtype=np.float64)
        correct = (matrix >= 0.5) if name in FRACTION_SCORED else (matrix > 0)
        correct = correct.astype(np.float64).where(matrix.notna())
        source = f"routerdc/{name}"
        battles.append(_pairwise_battles(prompts, correct, source))
        scores.append(_long_scores(prompts, correct, source))
    return pd.concat(battles, ignore_index=True), pd.concat(scores, ignore_index=True)


def _strip_shared(texts: list[str]) -> list[str]:
    """Remove the preamble and instruction that every prompt of a file shares (few-shot examples)."""
    prefix = os.path.commonprefix(texts)
    suffix = os.path.commonprefix([t[::-1] for t in texts])[::-1]
    # Cut at a line boundary so a question that happens to start like the preamble keeps its first words.
    prefix = prefix[: prefix.rfind("\n") + 1] if "\n" in prefix else ""
    suffix = suffix[suffix.find("\n"):] if "\n" in suffix else ""
    return [t[len(prefix): len(t) - len(suffix)].strip() or t for t in texts]


def _unwrap(text: str) -> str:
    """RouterBench stores each prompt as the repr of a one-element Python list."""
    if text.startswith("[") and text.endswith("]"):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return "\n".join(value)
    return text


def load_routerbench(data: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    folder = data / "routerdc" / "datasets" / "routerbench_zs"
    battles, scores = [], []
    for name in ROUTERBENCH_TRAIN:
        frame = pd.read_csv(require_file(folder / f"{name}.csv"))
        models = [c for c in frame.columns if "|" not in c and c not in {"Unnamed: 0", "sample_id", "prompt", "eval_name", "oracle_model_to_route_to"}]
        prompts = _strip_shared([_unwrap(p) for p in frame["prompt"].astype(str)])
        correct = frame[models].astype(np.float64)
        source = f"routerbench/{name}"
        battles.append(_pairwise_battles(prompts, correct, source))
        scores.append(_long_scores(prompts, correct, source))
    return pd.concat(battles, ignore_index=True), pd.concat(scores, ignore_index=True)


def _long_scores(prompts: list[str], matrix: pd.DataFrame, source: str) -> pd.DataFrame:
    long = matrix.assign(prompt=prompts).melt(id_vars="prompt", var_name="model", value_name="score").dropna()
    long["model"] = long["model"].map(canonical)
    long["source"] = source
    return long


def load_arena(path: str | Path) -> pd.DataFrame:
    """Battles from the Hugging Face Arena schema (lmsys/lmsys-arena-human-preference-55k).

    Columns: prompt, model_a, model_b, winner_model_a, winner_model_b, winner_tie. `path` is a local
    .parquet/.csv/.jsonl file, or a hub dataset id (needs network and the `datasets` package). The 55k set stores
    each conversation's user turns as a JSON list; the router routes on the first turn, so that is what we keep.
    """
    path_obj = Path(path)
    if path_obj.exists():
        readers: dict[str, Callable[[Path], pd.DataFrame]] = {
            ".parquet": pd.read_parquet, ".csv": pd.read_csv, ".jsonl": lambda p: pd.read_json(p, lines=True),
            ".json": pd.read_json,
        }
        if path_obj.suffix not in readers:
            raise DataNotFoundError(f"arena file {path_obj} must be .parquet, .csv, .jsonl or .json")
        frame = readers[path_obj.suffix](path_obj)
    else:
        try:
            import datasets  # optional: only for hub downloads
        except ImportError as exc:
            raise DataNotFoundError(f"arena data {path!s} is not a local file and `datasets` is not installed") from exc
        frame = datasets.load_dataset(str(path), split="train").to_pandas()
    required = ["prompt", "model_a", "model_b", "winner_model_a", "winner_model_b", "winner_tie"]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataNotFoundError(f"arena data {path!s} lacks columns {missing} (Hugging Face Arena schema expected)")
    flags = frame[["winner_model_a", "winner_model_b", "winner_tie"]].astype(int).to_numpy()
    valid = flags.sum(axis=1) == 1  # exactly one outcome per battle; anything else is a broken row
    frame = frame[valid]
    winner = np.array(WINNERS)[flags[valid].argmax(axis=1)]
    return pd.DataFrame({
        "prompt": frame["prompt"].map(_first_turn).to_numpy(),
        "model_a": frame["model_a"].map(canonical).to_numpy(),
        "model_b": frame["model_b"].map(canonical).to_numpy(),
        "winner": winner,
        "source": "arena",
    })


def _first_turn(prompt: object) -> str:
    if isinstance(prompt, (list, np.ndarray)):
        return str(prompt[0]) if len(prompt) else ""
    text = str(prompt)
    if text.startswith("["):
        try:
            turns = json.loads(text)
        except json.JSONDecodeError:
            return text
        if isinstance(turns, list) and turns:
            return str(turns[0])
    return text


# ------------------------------------------------------------------------------------ decontamination


def normalize(text: str) -> str:
    """Case, whitespace and punctuation folded, so formatting differences do not hide a copy."""
    return re.sub(r"[\W_]+", " ", text.lower()).strip()


def contaminated(train_prompts: list[str], eval_prompts: list[str], embed: Callable[[list[str]], np.ndarray] | None,
                 cosine: float = DECONTAM_COSINE, chunk: int = 2048) -> np.ndarray:
    """Boolean mask over `train_prompts`: normalised exact match or max embedding cosine ≥ `cosine` to any eval prompt."""
    eval_norm = {normalize(p) for p in eval_prompts}
    mask = np.fromiter((normalize(p) in eval_norm for p in train_prompts), dtype=bool, count=len(train_prompts))
    if embed is not None and train_prompts and eval_prompts:
        eval_vecs = embed(list(eval_prompts))
        train_vecs = embed(list(train_prompts))
        for start in range(0, len(train_prompts), chunk):
            sims = train_vecs[start: start + chunk] @ eval_vecs.T
            mask[start: start + chunk] |= sims.max(axis=1) >= cosine
    return mask


# ------------------------------------------------------------------------------------------- tiers


def fit_ratings(battles: pd.DataFrame, l2: float = 1e-2) -> pd.Series:
    """Global Bradley–Terry ratings (Elo scale, mean 1000) over every model in `battles`."""
    names = sorted(set(battles["model_a"]) | set(battles["model_b"]))
    index = {n: i for i, n in enumerate(names)}
    a = battles["model_a"].map(index).to_numpy()
    b = battles["model_b"].map(index).to_numpy()
    outcome = battles["winner"].map({"model_a": 1.0, "model_b": 0.0, "tie": 0.5}).to_numpy()
    xi = bradley_terry.fit(bradley_terry.win_matrix(a, b, outcome, len(names)), l2=l2, n_steps=50)
    elo = bradley_terry.ELO_SCALE * (xi - xi.mean()) + 1000.0
    return pd.Series(elo, index=names).sort_values(ascending=False)


def assign_tiers(ratings: pd.Series, n_tiers: int = 10) -> dict[str, int]:
    """Equal-count tiers by rating; tier 0 is the strongest. RouteLLM groups Arena models into tiers likewise."""
    order = ratings.sort_values(ascending=False).index
    n_tiers = max(1, min(n_tiers, len(order)))
    return {name: int(i * n_tiers // len(order)) for i, name in enumerate(order)}


# ------------------------------------------------------------------------------------------- build


@dataclass
class TrainingData:
    """The battles table plus what was learned about its models."""

    battles: pd.DataFrame
    scores: pd.DataFrame
    ratings: pd.Series
    tiers: dict[str, int]
    report: dict = field(default_factory=dict)

    @property
    def n_tiers(self) -> int:
        return max(self.tiers.values()) + 1


def build(data: Path, eval_prompts: list[str], embed: Callable[[list[str]], np.ndarray] | None,
          arena: str | Path | None = None, n_tiers: int = 10, sources: tuple[str, ...] = DEFAULT_SOURCES) -> TrainingData:
    """Assemble, decontaminate and rate the chosen training sources (plus Arena battles when given)."""
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown or not sources:
        raise ConfigError(f"unknown or no sources {unknown}; known: {', '.join(SOURCES)}")
    battles, scores, report = [], [], {"sources": {}, "included": list(sources)}
    if any(s.startswith("alpaca-eval") for s in sources):
        ae = load_alpaca_eval(data)
        battles.append(ae[ae["source"].isin(sources)])
    for name, loader in (("routerdc", load_routerdc), ("routerbench", load_routerbench)):
        if name in sources:
            b, s = loader(data)
            battles.append(b)
            scores.append(s)
    if arena is not None:
        battles.append(load_arena(arena))
    table = pd.concat(battles, ignore_index=True)
    table = table[table["model_a"] != table["model_b"]]  # aliasing can fold both sides into one model
    score_table = pd.concat(scores, ignore_index=True) if scores else pd.DataFrame(columns=["prompt", "model", "score", "source"])

    unique = table["prompt"].unique().tolist()
    bad = set(np.asarray(unique, dtype=object)[contaminated(unique, eval_prompts, embed)])
    dropped = table["prompt"].isin(bad)
    for source, group in table.groupby("source"):
        report["sources"][source] = {
            "battles": int((~dropped[group.index]).sum()),
            "prompts": int(group.loc[~dropped[group.index], "prompt"].nunique()),
            "contaminated_battles": int(dropped[group.index].sum()),
            "contaminated_prompts": int(group.loc[dropped[group.index], "prompt"].nunique()),
        }
    table = table[~dropped].reset_index(drop=True)
    score_table = score_table[~score_table["prompt"].isin(bad)].reset_index(drop=True)
    report["contaminated_prompts"] = len(bad)
    ratings = fit_ratings(table)
    tiers = assign_tiers(ratings, n_tiers)
    return TrainingData(table[BATTLE_COLUMNS], score_table, ratings, tiers, report)


def save(td: TrainingData, out: Path) -> str:
    """Write battles.parquet, scores.parquet and models.json atomically; returns the data hash."""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "battles.parquet") as tmp:
        td.battles.to_parquet(tmp, index=False)
        # The tiers are part of what a router is trained on: same battles with other tiers is other data.
        digest = hashlib.sha256(tmp.read_bytes())
        digest.update(json.dumps(td.tiers, sort_keys=True).encode())
        data_hash = digest.hexdigest()[:16]
    with atomic_path(out / "scores.parquet") as tmp:
        td.scores.to_parquet(tmp, index=False)
    meta = {
        "data_hash": data_hash,
        "n_tiers": td.n_tiers,
        "ratings": {k: round(float(v), 2) for k, v in td.ratings.items()},
        "tiers": td.tiers,
        "report": td.report,
    }
    # models.json last: its presence means the whole set is complete.
    with atomic_path(out / "models.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=1))
    return data_hash


def load(out: Path) -> TrainingData:
    """Read what `save` wrote; one-line ArtifactError if it is missing or unreadable."""
    meta_path = out / "models.json"
    if not meta_path.is_file():
        raise ArtifactError(f"no training data at {out}; run `turnout data build` first")
    try:
        meta = json.loads(meta_path.read_text())
        battles = pd.read_parquet(out / "battles.parquet")
        scores = pd.read_parquet(out / "scores.parquet")
        ratings = pd.Series(meta["ratings"], dtype=np.float64)
        tiers = {k: int(v) for k, v in meta["tiers"].items()}
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactError(f"training data at {out} is unreadable ({type(exc).__name__}); rebuild with `turnout data build`") from exc
    if battles.empty or list(battles.columns) != BATTLE_COLUMNS:
        raise ArtifactError(f"training data at {out} is empty or has the wrong columns; rebuild with `turnout data build`")
    td = TrainingData(battles, scores, ratings, tiers, meta.get("report", {}))
    td.report["data_hash"] = meta.get("data_hash", "")
    return td
