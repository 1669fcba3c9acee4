"""Training data: every source in ../shared/data turned into one battles table.

A battle is (prompt, model_a, model_b, winner ∈ {model_a, model_b, tie}, source). Sources (train splits only):

- AlpacaEval pairwise GPT-4 annotations (chat prompts), as two sources.
  `alpaca-eval-1`: GPT-4 judges 52 models against text-davinci-003; 1 -> baseline, 2 -> model, 0 (their draw)
  or 1.5 -> tie, empty -> dropped. Read as pass/fail: a model passes a prompt when the judge prefers its answer
  to the baseline's (a draw is half), and every pair of models on a prompt is a battle of those scores, as for
  the correctness sources. Two models that both beat the baseline tie: on "hi, how are you?" every model does,
  so the prompt says "the weak answer will do". Taken as raw preferences instead (`alpaca-eval-1-raw`: every
  battle is a model against text-davinci-003), a GPT-4 judge prefers the stronger model on easy prompts too,
  and easy chat prompts ranked above proofs (BENCHMARKS.md).
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
- MMLU-Pro's non-MMLU questions (`mmlu-pro`: 32 runs incl. gpt-4o and Mixtral-8x7B-Instruct), Faithful-CoT's
  math word problems (`faithful-cot`: GPT-4, gpt-3.5-turbo and four older OpenAI models) and TheoremQA's
  college math/science problems (`theoremqa`: GPT-4, ChatGPT, Claude, ...), the same way. Correct beats wrong
  is the routing question itself ("would the weak model's answer do?"), which preference labels on chat
  prompts are not: a judge prefers the stronger model's answer to "hi, how are you?" too.
- Optionally Chatbot Arena battles in the Hugging Face schema (`load_arena`).

Dev split: a fixed, seeded 20 % of every source's prompts (`is_dev`, keyed on the normalised question text, so
a question shared by two sources lands on the same side) is never trained on; models/benchmarks.py turns the
correctness sources' dev prompts into in-domain benchmarks where design choices are made.

Every training prompt that matches an evaluation prompt (normalised exact match, or embedding cosine ≥ 0.95)
is dropped. Strength tiers come from one global Bradley–Terry fit, by default over the correctness sources
only, each source family weighted equally (`build`'s `tier_weighting` says why).
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
from typing import NamedTuple
from pathlib import Path

import numpy as np
import pandas as pd

from models import bradley_terry
from index.errors import ArtifactError, ConfigError, DataNotFoundError
from models.model_names import canonical
from index.paths import atomic_dir, require_file

log = logging.getLogger(__name__)

WINNERS = ("model_a", "model_b", "tie")
N_TIERS = 20  # equal-count strength tiers (RouteLLM: 10); chosen on the dev benchmarks, BENCHMARKS.md
BATTLE_COLUMNS = ["prompt", "model_a", "model_b", "winner", "source"]
ROUTERDC_TRAIN = ["mmlu_train", "gsm8k-train", "arc_challenge_train", "arc_easy_train", "cmmlu_train", "humaneval_train"]
# Files whose scores are the share of correct samples, not 0/prob (the test files: loadtest/learning_loop.py's traffic)
FRACTION_SCORED = {"gsm8k-train", "gsm8k-test", "humaneval_train", "mbpp"}
ROUTERBENCH_TRAIN = ["arc_challenge_train", "mbpp_train", "winograde_train"]
DECONTAM_COSINE = 0.95
SOURCES = ("alpaca-eval-1", "alpaca-eval-1-raw", "alpaca-eval-2", "routerdc", "routerbench", "mmlu-pro",
           "faithful-cot", "theoremqa")
DEFAULT_SOURCES = ("alpaca-eval-1", "routerdc", "routerbench", "mmlu-pro", "faithful-cot", "theoremqa")
DEV_FRACTION = 0.2
DEV_SEED = "turnout-dev-v1"  # changing it moves prompts between train and dev: a new data version
# Faithful-CoT prompt whose answers are kept: NL+SL has the model write a program that is then executed, and
# re-scoring it reproduces the paper's GPT-4 accuracies exactly; the chain-of-thought columns were re-extracted
# from free text and are noisier labels of the same questions.
FAITHFUL_PROMPT = "NL+SL"
FAITHFUL_MODELS = {"gpt4": "gpt-4-0613", "gpt-3.5-turbo": "gpt-3.5-turbo-0613"}  # the 2023 API snapshots
THEOREMQA_RUNS = {  # chain-of-thought runs only: one answer per model (PoT is another prompt of the same models)
    "gpt-4(0613-era,CoT)", "chatgpt(gpt-3.5-turbo,CoT)", "GPT3.5-run(text-davinci-003?,CoT)",
    "GPT3-run(text-davinci-002?,CoT)", "claude-v1", "claude-instant-v1", "claude-2", "alpaca-13b", "vicuna-13b",
    "pythia-12b",
}
MMLU_PRO_SKIP = {"merged-2602(unknown,~86%)"}  # an unnamed model: no alias could ever link it to anything


def split_key(text: str) -> str:
    """The text a prompt's train/dev side is decided on: its normalised question."""
    return normalize(text)


def is_dev(keys: "pd.Series | list[str]") -> np.ndarray:
    """Boolean mask: the seeded DEV_FRACTION of questions that are never trained on (stable across runs)."""
    def side(key: str) -> bool:
        digest = hashlib.blake2b(f"{DEV_SEED}\x00{key}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2.0**64 < DEV_FRACTION
    return np.fromiter((side(k) for k in keys), dtype=bool, count=len(keys))


# ---------------------------------------------------------------------------------------------- sources


class CorrectnessMatrix(NamedTuple):
    """One file of a correctness source: per-prompt scores of every model, before it becomes battles."""

    prompts: list[str]
    correct: pd.DataFrame  # prompt × model (source spelling; NaN = not run)
    source: str
    keys: list[str] | None = None  # what the dev split is decided on (default: the prompts)


def _pairwise_battles(prompts: list[str], scores: pd.DataFrame, source: str,
                      keys: list[str] | None = None) -> pd.DataFrame:
    """Battles from a (prompt × model) correctness matrix: each model pair on a prompt, NaN skipped.

    `keys` (default: the prompts) decide the dev split; MMLU-Pro passes its question without the options.
    """
    models = list(scores.columns)
    values = scores.to_numpy(dtype=np.float64)
    key_array = np.asarray([split_key(k) for k in (prompts if keys is None else keys)], dtype=object)
    frames = []
    for i, j in itertools.combinations(range(len(models)), 2):
        a, b = values[:, i], values[:, j]
        ok = ~(np.isnan(a) | np.isnan(b))
        winner = np.where(a > b, "model_a", np.where(a < b, "model_b", "tie"))[ok]
        frames.append(pd.DataFrame({
            "prompt": np.asarray(prompts, dtype=object)[ok], "model_a": canonical(models[i]),
            "model_b": canonical(models[j]), "winner": winner, "source": source, "key": key_array[ok],
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


def alpaca_pass_fail(battles: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """AlpacaEval-1's model-vs-baseline battles as per-model pass/fail scores and their pairwise battles.

    Score 1 when the judge preferred the model to the baseline, 0 when it preferred the baseline, 0.5 for a
    draw; the baseline itself scores 0.5 (it ties itself), so a passing model still beats it and a failing one
    still loses to it, as in the raw battles.
    """
    baseline = battles["model_a"].mode().iloc[0]
    score = battles["winner"].map({"model_b": 1.0, "model_a": 0.0, "tie": 0.5})
    matrix = pd.DataFrame({"prompt": battles["prompt"], "model": battles["model_b"], "score": score})
    wide = matrix.pivot_table(index="prompt", columns="model", values="score", aggfunc="mean")
    wide[baseline] = 0.5
    return correctness_battles([CorrectnessMatrix(wide.index.tolist(), wide.reset_index(drop=True), "alpaca-eval-1")])


def routerdc_matrices(data: Path, names: tuple[str, ...] | list[str] = tuple(ROUTERDC_TRAIN)) -> list[CorrectnessMatrix]:
    """RouterDC's seven-model files `names` (the training ones by default) as correctness matrices."""
    folder = data / "routerdc" / "datasets" / "split2_model7"
    matrices = []
    for name in names:
        rows = json.loads(require_file(folder / f"{name}.json").read_text())
        prompts = [r["question"] for r in rows]
        matrix = pd.DataFrame([r["scores"] for r in rows], dtype=np.float64)
        correct = (matrix >= 0.5) if name in FRACTION_SCORED else (matrix > 0)
        matrices.append(CorrectnessMatrix(prompts, correct.astype(np.float64).where(matrix.notna()), f"routerdc/{name}"))
    return matrices


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


def routerbench_matrices(data: Path) -> list[CorrectnessMatrix]:
    folder = data / "routerdc" / "datasets" / "routerbench_zs"
    matrices = []
    for name in ROUTERBENCH_TRAIN:
        frame = pd.read_csv(require_file(folder / f"{name}.csv"))
        models = [c for c in frame.columns if "|" not in c and c not in {"Unnamed: 0", "sample_id", "prompt", "eval_name", "oracle_model_to_route_to"}]
        prompts = _strip_shared([_unwrap(p) for p in frame["prompt"].astype(str)])
        matrices.append(CorrectnessMatrix(prompts, frame[models].astype(np.float64), f"routerbench/{name}"))
    return matrices


def _long_scores(prompts: list[str], matrix: pd.DataFrame, source: str, keys: list[str] | None = None) -> pd.DataFrame:
    keys = [split_key(k) for k in (prompts if keys is None else keys)]
    long = matrix.assign(prompt=prompts, key=keys).melt(id_vars=["prompt", "key"], var_name="model",
                                                        value_name="score").dropna()
    long["model"] = long["model"].map(canonical)
    long["source"] = source
    return long


def correctness_battles(matrices: list[CorrectnessMatrix]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(battles, long scores) of a source's correctness matrices: every model pair on a prompt is a battle."""
    battles = [_pairwise_battles(m.prompts, m.correct, m.source, m.keys) for m in matrices]
    return pd.concat(battles, ignore_index=True), correctness_scores(matrices)


def correctness_scores(matrices: list[CorrectnessMatrix]) -> pd.DataFrame:
    """The long (prompt, key, model, score, source) table alone: what a dev benchmark needs, without the battles
    (MMLU-Pro's 32 runs make ~1.4M of them)."""
    return pd.concat([_long_scores(m.prompts, m.correct, m.source, m.keys) for m in matrices], ignore_index=True)


def mmlu_pro_prompt(question: str, options: str) -> str:
    """MMLU-Pro question + lettered options, one per line (RouteLLM's MMLU prompts are laid out the same way)."""
    try:
        choices = ast.literal_eval(options)
    except (ValueError, SyntaxError):
        choices = []
    letters = "ABCDEFGHIJKLMNOP"
    lines = [f"{letters[i]}. {c}" for i, c in enumerate(choices[: len(letters)])]
    return "\n".join([question.strip(), *lines])


def mmlu_pro_matrices(data: Path) -> list[CorrectnessMatrix]:
    frame = pd.read_csv(require_file(data / "mmlu-pro" / "mmlu_pro_nonmmlu.csv"))
    meta = {"question_id", "category", "src", "question", "options", "answer"}
    models = [c for c in frame.columns if c not in meta and c not in MMLU_PRO_SKIP]
    prompts = [mmlu_pro_prompt(q, o) for q, o in zip(frame["question"].astype(str), frame["options"].astype(str))]
    # Keyed on the question alone: its `theoremQA-*` rows are TheoremQA's problems with options added.
    return [CorrectnessMatrix(prompts, frame[models].astype(np.float64), "mmlu-pro", frame["question"].astype(str).tolist())]


def faithful_cot_matrices(data: Path) -> list[CorrectnessMatrix]:
    frame = pd.read_csv(require_file(data / "faithful-cot" / "faithful_cot.csv"))
    columns = [c for c in frame.columns if c.endswith(f"|{FAITHFUL_PROMPT}")]
    correct = frame[columns].astype(np.float64)
    correct.columns = [FAITHFUL_MODELS.get(c.split("|")[0], c.split("|")[0]) for c in columns]
    return [CorrectnessMatrix(frame["question"].astype(str).tolist(), correct, "faithful-cot")]


def theoremqa_matrices(data: Path) -> list[CorrectnessMatrix]:
    frame = pd.read_csv(require_file(data / "theoremqa" / "theoremqa.csv"))
    # A text router cannot see the picture these questions need; their labels would be noise to it.
    frame = frame[~frame["has_picture"].astype(str).str.lower().isin({"true", "1"})]
    runs = [c for c in frame.columns if c in THEOREMQA_RUNS]
    return [CorrectnessMatrix(frame["question"].astype(str).tolist(), frame[runs].astype(np.float64), "theoremqa")]


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


def contaminated(train_prompts: list[str], eval_prompts: list[str], embed: Callable[..., np.ndarray] | None,
                 cosine: float = DECONTAM_COSINE, chunk: int = 2048) -> np.ndarray:
    """Boolean mask over `train_prompts`: normalised exact match or max embedding cosine ≥ `cosine` to any eval prompt
    (`embed(texts, what=label)`, the label naming what is embedded for the progress bar)."""
    eval_norm = {normalize(p) for p in eval_prompts}
    mask = np.fromiter((normalize(p) in eval_norm for p in train_prompts), dtype=bool, count=len(train_prompts))
    if embed is not None and train_prompts and eval_prompts:
        eval_vecs = embed(list(eval_prompts), what="evaluation prompts for decontamination")
        train_vecs = embed(list(train_prompts), what="training prompts for decontamination")
        for start in range(0, len(train_prompts), chunk):
            sims = train_vecs[start: start + chunk] @ eval_vecs.T
            mask[start: start + chunk] |= sims.max(axis=1) >= cosine
    return mask


# ------------------------------------------------------------------------------------------- tiers


def fit_ratings(battles: pd.DataFrame, l2: float = 1e-2, weights: np.ndarray | None = None) -> pd.Series:
    """Global Bradley–Terry ratings (Elo scale, mean 1000) over every model in `battles` (optionally weighted)."""
    names = sorted(set(battles["model_a"]) | set(battles["model_b"]))
    index = {n: i for i, n in enumerate(names)}
    a = battles["model_a"].map(index).to_numpy()
    b = battles["model_b"].map(index).to_numpy()
    outcome = battles["winner"].map({"model_a": 1.0, "model_b": 0.0, "tie": 0.5}).to_numpy()
    xi = bradley_terry.fit(bradley_terry.win_matrix(a, b, outcome, len(names), weights), l2=l2, n_steps=50)
    elo = bradley_terry.ELO_SCALE * (xi - xi.mean()) + 1000.0
    return pd.Series(elo, index=names).sort_values(ascending=False)


def assign_tiers(ratings: pd.Series, n_tiers: int = N_TIERS) -> dict[str, int]:
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


CORRECTNESS_MATRICES: dict[str, Callable[[Path], list[CorrectnessMatrix]]] = {
    "routerdc": routerdc_matrices, "routerbench": routerbench_matrices, "mmlu-pro": mmlu_pro_matrices,
    "faithful-cot": faithful_cot_matrices, "theoremqa": theoremqa_matrices,
}
CORRECTNESS_LOADERS: dict[str, Callable[[Path], tuple[pd.DataFrame, pd.DataFrame]]] = {
    name: (lambda data, matrices=matrices: correctness_battles(matrices(data)))
    for name, matrices in CORRECTNESS_MATRICES.items()
}
TIER_WEIGHTINGS = ("battles", "sources", "correctness")
PREFERENCE_FAMILIES = {"alpaca-eval-1", "alpaca-eval-1-raw", "alpaca-eval-2", "arena"}  # a judge's verdicts


def source_family(source: str) -> str:
    """`routerdc/mmlu_train` -> `routerdc`: the sub-files of one source share its labels' kind and judge."""
    return source.split("/", 1)[0]


def _with_keys(frame: pd.DataFrame) -> pd.DataFrame:
    if "key" not in frame.columns:
        frame = frame.assign(key=frame["prompt"].map(split_key))
    return frame


def _drop_cross_source_copies(table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """The same prompt text from two source families is kept from the first one only (one question, one vote).

    Questions shared with another wording (MMLU-Pro's `theoremQA-*` rows carry TheoremQA's problems with
    options added) are different tasks with their own correctness and stay; their shared key keeps them on the
    same side of the dev split. Returns the table and, per family, how many prompts were dropped.
    """
    family = table["source"].map(source_family)
    first = table.assign(family=family).drop_duplicates("prompt")[["prompt", "family"]].set_index("prompt")["family"]
    copy = family.to_numpy() != table["prompt"].map(first).to_numpy()
    dropped = table.loc[copy].assign(family=family[copy]).groupby("family")["prompt"].nunique()
    return table.loc[~copy], {str(k): int(v) for k, v in dropped.items()}


def _read_source(name: str, loader: Callable[[Path], tuple[pd.DataFrame, pd.DataFrame]],
                 data: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One source's (battles, scores); a file that exists but cannot be parsed is a one-line DataNotFoundError."""
    try:
        return loader(data)
    except (OSError, ValueError, KeyError, TypeError, pd.errors.ParserError) as exc:
        raise DataNotFoundError(f"source {name!r} in {data} is unreadable ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:200] if str(exc) else 'no detail'})") from exc


def build(data: Path, eval_prompts: list[str], embed: Callable[..., np.ndarray] | None,
          arena: str | Path | None = None, n_tiers: int = N_TIERS, sources: tuple[str, ...] = DEFAULT_SOURCES,
          extra_battles: list[pd.DataFrame] | None = None, extra_scores: list[pd.DataFrame] | None = None,
          tier_weighting: str = "correctness") -> TrainingData:
    """Assemble, split, decontaminate and rate the chosen sources (plus Arena battles and user files when given).

    `extra_battles`/`extra_scores`: a user's own labelled data (models/user_data.py), in the battles/scores
    columns. `tier_weighting`: "sources" gives every source family the same total weight in the global tier fit
    (so the family with most battles, e.g. MMLU-Pro's 32 runs, does not decide every tier alone); "battles"
    counts every battle once; "correctness" fits tiers on the correctness families only, source-weighted.
    Preference labels rarely tie and a judge prefers the stronger model's answer on easy prompts too, so on one
    Bradley–Terry scale their gaps dwarf the tie-heavy correctness gaps and every model that beat
    text-davinci-003 in AlpacaEval-1 lands above GPT-4 (BENCHMARKS.md shows the tables). With "correctness" a
    model seen only in preference data has no tier, and its battles do not enter the tier-based routers.
    """
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown or not sources:
        raise ConfigError(f"unknown or no sources {unknown}; known: {', '.join(SOURCES)}")
    if tier_weighting not in TIER_WEIGHTINGS:
        raise ConfigError(f"unknown tier weighting {tier_weighting!r}; known: {', '.join(TIER_WEIGHTINGS)}")
    battles, scores = [], []
    report: dict = {"sources": {}, "included": list(sources), "tier_weighting": tier_weighting}
    if any(s.startswith("alpaca-eval") for s in sources):
        ae = load_alpaca_eval(data)
        first = ae[ae["source"] == "alpaca-eval-1"]
        if "alpaca-eval-1" in sources:
            b, sc = alpaca_pass_fail(first)
            battles.append(b)
            scores.append(sc)
        if "alpaca-eval-1-raw" in sources:
            battles.append(first.assign(source="alpaca-eval-1-raw"))
        if "alpaca-eval-2" in sources:
            battles.append(ae[ae["source"] == "alpaca-eval-2"])
    for name, loader in CORRECTNESS_LOADERS.items():
        if name in sources:
            b, sc = _read_source(name, loader, data)
            battles.append(b)
            scores.append(sc)
    if arena is not None:
        battles.append(load_arena(arena))
    battles.extend(extra_battles or [])
    scores.extend(extra_scores or [])
    table = pd.concat([_with_keys(b) for b in battles], ignore_index=True)
    table = table[table["model_a"] != table["model_b"]]  # aliasing can fold both sides into one model
    table, report["cross_source_copies_dropped"] = _drop_cross_source_copies(table)
    table = table.reset_index(drop=True)
    score_table = (pd.concat([_with_keys(s) for s in scores], ignore_index=True) if scores
                   else pd.DataFrame(columns=["prompt", "model", "score", "source", "key"]))

    unique = table["prompt"].unique().tolist()
    bad = set(np.asarray(unique, dtype=object)[contaminated(unique, eval_prompts, embed)])
    dropped = table["prompt"].isin(bad).to_numpy()
    # A user's own files (`--add`) train in full: they hold out their own file for `turnout eval --bench`.
    dev = is_dev(table["key"].tolist()) & ~table["source"].str.startswith("user:").to_numpy()
    for source, rows in table.groupby("source").indices.items():
        kept = rows[~dropped[rows] & ~dev[rows]]
        held = rows[~dropped[rows] & dev[rows]]
        gone = rows[dropped[rows]]
        report["sources"][source] = {
            "battles": len(kept), "prompts": int(table["prompt"].iloc[kept].nunique()),
            "dev_prompts": int(table["prompt"].iloc[held].nunique()),
            "contaminated_battles": len(gone), "contaminated_prompts": int(table["prompt"].iloc[gone].nunique()),
        }
    dev_prompts = set(table.loc[dev, "prompt"])
    table = table[~dropped & ~dev].reset_index(drop=True)
    score_table = score_table[~score_table["prompt"].isin(bad | dev_prompts)].reset_index(drop=True)
    report["contaminated_prompts"] = len(bad)
    report["dev_prompts"] = len(dev_prompts - bad)
    rated = table
    if tier_weighting == "correctness":
        rated = table[~table["source"].map(source_family).isin(PREFERENCE_FAMILIES)]
        if rated.empty:
            raise ConfigError("tier weighting 'correctness' needs at least one correctness source")
    ratings = fit_ratings(rated, weights=None if tier_weighting == "battles" else source_weights(rated))
    tiers = assign_tiers(ratings, n_tiers)
    return TrainingData(table[BATTLE_COLUMNS], score_table[["prompt", "model", "score", "source"]], ratings, tiers, report)


def source_weights(battles: pd.DataFrame) -> np.ndarray:
    """Per-battle weights that give each source family the same total, mean 1 over the table."""
    return _equal_share_weights(battles["source"].map(source_family))


def prompt_weights(battles: pd.DataFrame) -> np.ndarray:
    """Per-battle weights that give each prompt the same total, mean 1 over the table."""
    return _equal_share_weights(battles["prompt"])


def _equal_share_weights(groups: pd.Series) -> np.ndarray:
    counts = groups.map(groups.value_counts()).to_numpy(dtype=np.float64)
    return len(groups) / (groups.nunique() * counts)


def save(td: TrainingData, out: Path) -> str:
    """Write battles.parquet, scores.parquet and models.json as one folder, swapped in whole; returns the data
    hash. File by file, a process killed between two renames would leave new battles beside the old models.json
    (the old hash and tiers): a mixed set that loads without complaint."""
    with atomic_dir(out) as tmp:
        td.battles.to_parquet(tmp / "battles.parquet", index=False)
        # The tiers are part of what a router is trained on: same battles with other tiers is other data.
        digest = hashlib.sha256((tmp / "battles.parquet").read_bytes())
        digest.update(json.dumps(td.tiers, sort_keys=True).encode())
        data_hash = digest.hexdigest()[:16]
        td.scores.to_parquet(tmp / "scores.parquet", index=False)
        meta = {
            "data_hash": data_hash,
            "n_tiers": td.n_tiers,
            "ratings": {k: round(float(v), 2) for k, v in td.ratings.items()},
            "tiers": td.tiers,
            "report": td.report,
        }
        (tmp / "models.json").write_text(json.dumps(meta, indent=1))
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
