"""RouteLLM's three evaluation benchmarks (Ong et al., arXiv 2406.18665, §5.1), loaded from the shared data dir.

Each benchmark is a list of prompts (what a router scores) with the per-item quality of the strong model
(gpt-4-1106-preview) and the weak one (Mixtral-8x7B-Instruct), after RouteLLM's decontamination:
- mmlu: 57 domain CSVs (14,042 rows) minus 5 contaminated prompts -> 14,037; quality = answer correct;
- gsm8k: 1,319 rows minus 12 contaminated -> 1,307; quality = answer correct;
- mt-bench: 80 two-turn questions minus 8 contaminated -> 72. The router scores turn 1 only and its decision
  covers both turns; quality = GPT-4 judge score (1-10) averaged over the two turns. RouteLLM averages over the
  2·N (question, turn) rows of the chosen model, the same number since every question has both turns.

And the in-domain dev benchmarks (DESIGN §3): the dev split of each correctness source (models/data.py
`is_dev`: never trained on), each with its own strong/weak pair, where design choices are made before the
three benchmarks above are read:
- mmlu-pro-dev: gpt-4o vs Mixtral-8x7B-Instruct (MMLU-Pro's non-MMLU questions);
- faithful-cot-dev: GPT-4 vs gpt-3.5-turbo (math word problems, the program-executing NL+SL prompt);
- routerbench-dev: gpt-4-1106-preview vs Mixtral-8x7B (ARC, MBPP, Winogrande zero-shot);
- routerdc-dev: the strongest vs the weakest of RouterDC's 7 open models (by train-split accuracy).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from models.base import DEFAULT_STRONG, DEFAULT_WEAK
from index.errors import ConfigError, DataNotFoundError
from index.paths import require_file

logger = logging.getLogger(__name__)

PAPER_BENCHMARKS = ("mt-bench", "mmlu", "gsm8k")
DEV_PAIRS: dict[str, tuple[str, str] | None] = {
    "mmlu-pro-dev": ("gpt-4o-2024-05-13", DEFAULT_WEAK),
    "faithful-cot-dev": ("gpt-4-0613", "gpt-3.5-turbo-0613"),
    "routerbench-dev": (DEFAULT_STRONG, DEFAULT_WEAK),
    "routerdc-dev": None,  # chosen from the data: the best and the worst of its 7 models
}
DEV_BENCHMARKS = tuple(DEV_PAIRS)
BENCHMARKS = PAPER_BENCHMARKS + DEV_BENCHMARKS
EVALS_DIR = Path("routellm-evals/routellm/evals")


@dataclass(frozen=True, eq=False)  # eq=False: dataclass equality on arrays would be ambiguous
class Benchmark:
    name: str
    prompts: list[str]
    strong: np.ndarray
    weak: np.ndarray
    strong_model: str = DEFAULT_STRONG
    weak_model: str = DEFAULT_WEAK

    def __len__(self) -> int:
        return len(self.prompts)


def _evals(data: Path) -> Path:
    return Path(data) / EVALS_DIR


def _read(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """Read a CSV or JSON-lines file and check that it has the columns used below."""
    require_file(path)
    frame = pd.read_json(path, lines=True) if path.suffix == ".jsonl" else pd.read_csv(path)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataNotFoundError(f"{path} lacks column(s) {', '.join(missing)}")
    return frame


def _contaminated(data: Path, name: str) -> pd.DataFrame:
    return _read(_evals(data) / name / "contaminated_prompts.jsonl", ("eval_prompt", "eval_idx"))


def _mmlu_rows(data: Path) -> pd.DataFrame:
    folder = _evals(data) / "mmlu" / "responses"
    files = sorted(folder.glob("mmlu_*.csv"))
    if not files:
        raise DataNotFoundError(f"missing data files: no mmlu_*.csv in {folder}")
    columns = ("prompt", DEFAULT_STRONG, DEFAULT_WEAK)
    return pd.concat([_read(f, columns) for f in files], ignore_index=True)


def _gsm8k_rows(data: Path) -> pd.DataFrame:
    return _read(_evals(data) / "gsm8k" / "gsm8k_responses.csv", ("prompt", DEFAULT_STRONG, DEFAULT_WEAK))


def _mt_bench_questions(data: Path) -> pd.DataFrame:
    return _read(_evals(data) / "mt_bench" / "question.jsonl", ("question_id", "turns"))


def _correctness(name: str, rows: pd.DataFrame, data: Path) -> Benchmark:
    rows = rows[~rows["prompt"].isin(_contaminated(data, name)["eval_prompt"])]
    return Benchmark(
        name=name,
        prompts=rows["prompt"].tolist(),
        strong=rows[DEFAULT_STRONG].to_numpy(dtype=np.float64),
        weak=rows[DEFAULT_WEAK].to_numpy(dtype=np.float64),
    )


def mt_bench_contaminated_ids(data: Path) -> list[int]:
    """Question ids excluded from MT-Bench: eval_idx indexes [all turn-1 prompts, then all turn-2 prompts]."""
    questions = _mt_bench_questions(data)
    positions = _contaminated(data, "mt_bench")["eval_idx"].to_numpy() % len(questions)
    return sorted(int(q) for q in questions["question_id"].iloc[positions].unique())


def _mt_bench(data: Path) -> Benchmark:
    questions = _mt_bench_questions(data)
    questions = questions[~questions["question_id"].isin(mt_bench_contaminated_ids(data))]
    path = _evals(data) / "mt_bench" / "judgements.jsonl"
    judgements = _read(path, ("question_id", "model", "turn", "score"))
    judgements = judgements[judgements["model"].isin([DEFAULT_STRONG, DEFAULT_WEAK])]
    turns = judgements.pivot_table(index="question_id", columns="model", values="turn", aggfunc="nunique")
    turns = turns.reindex(index=questions["question_id"], columns=[DEFAULT_STRONG, DEFAULT_WEAK])
    incomplete = turns.index[(turns != 2).any(axis=1)].tolist()
    if incomplete:
        # The per-question mean equals RouteLLM's mean over (question, turn) rows only when both turns exist.
        raise DataNotFoundError(f"{path} lacks a turn-1 or turn-2 judgement for question ids {incomplete}")
    scores = judgements.pivot_table(index="question_id", columns="model", values="score", aggfunc="mean")
    scores = scores.loc[questions["question_id"]]
    return Benchmark(
        name="mt-bench",
        prompts=[pair[0] for pair in questions["turns"]],
        strong=scores[DEFAULT_STRONG].to_numpy(dtype=np.float64),
        weak=scores[DEFAULT_WEAK].to_numpy(dtype=np.float64),
    )


def _dev_benchmark(name: str, data: Path, whole: bool = False, pair: tuple[str, str] | None = None) -> Benchmark:
    """The dev split of one correctness source as a benchmark for its pair (see the module docstring); `whole`:
    every row of the source, for a training build that left the source out (`source_benchmark`)."""
    from models import data as training

    source = name.removesuffix("-dev")
    scores = training.correctness_scores(training.CORRECTNESS_MATRICES[source](data))
    if pair is not None:
        strong, weak = pair
    elif DEV_PAIRS[name] is None:
        train_side = scores[~training.is_dev(scores["key"].tolist())]
        accuracy = train_side.groupby("model")["score"].mean().sort_values()
        strong, weak = accuracy.index[-1], accuracy.index[0]
    else:
        strong, weak = DEV_PAIRS[name]
    evaluation = {training.normalize(p) for p in evaluation_prompts(data)}
    side = np.ones(len(scores), dtype=bool) if whole else training.is_dev(scores["key"].tolist())
    dev = scores[side & ~scores["prompt"].map(training.normalize).isin(evaluation)]
    table = dev[dev["model"].isin([strong, weak])].pivot_table(index="prompt", columns="model", values="score",
                                                              aggfunc="mean")
    if strong not in table.columns or weak not in table.columns:
        raise DataNotFoundError(f"{name}: the {source} data has no {strong if strong not in table.columns else weak} scores")
    table = table.dropna().sort_index()  # both models answered; sorted so the benchmark is the same every run
    return Benchmark(name=name, prompts=table.index.tolist(), strong=table[strong].to_numpy(dtype=np.float64),
                     weak=table[weak].to_numpy(dtype=np.float64), strong_model=strong, weak_model=weak)


def source_benchmark(name: str, data: Path, pair: tuple[str, str] | None = None) -> Benchmark:
    """A correctness source's every row (train and dev) for a pair (a dev benchmark's own by default), named
    `<source>-all`: the user's traffic in a run whose training data left that source out (`turnout data build
    --sources`). `name` is `<source>-dev`."""
    from models import data as training

    if name.removesuffix("-dev") not in training.CORRECTNESS_MATRICES or (pair is None and name not in DEV_PAIRS):
        raise ConfigError(f"unknown source benchmark {name!r}; known: {', '.join(DEV_PAIRS)} (or a correctness "
                          "source's <name>-dev with a pair)")
    bench = _dev_benchmark(name, data, whole=True, pair=pair)
    return Benchmark(name.removesuffix("-dev") + "-all", bench.prompts, bench.strong, bench.weak, bench.strong_model,
                     bench.weak_model)


def load_benchmark(name: str, data: Path) -> Benchmark:
    """Load one of BENCHMARKS from the shared data dir (…/shared/data), decontaminated as RouteLLM does."""
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    if name in DEV_PAIRS:
        bench = _dev_benchmark(name, data)
    elif name == "mt-bench":
        bench = _mt_bench(data)
    elif name == "mmlu":
        bench = _correctness("mmlu", _mmlu_rows(data), data)
    else:
        bench = _correctness("gsm8k", _gsm8k_rows(data), data)
    logger.info(
        "%s: %d items, strong %.4f, weak %.4f", name, len(bench), bench.strong.mean(), bench.weak.mean()
    )
    return bench


def evaluation_prompts(data: Path) -> set[str]:
    """Every evaluation prompt text a training set must not contain.

    All rows, contaminated ones included, and both MT-Bench turns of all 80 questions: evaluation data never
    feeds training, whatever RouteLLM's exclusion lists say.
    """
    questions = _mt_bench_questions(data)
    return (
        set(_mmlu_rows(data)["prompt"])
        | set(_gsm8k_rows(data)["prompt"])
        | {turn for turns in questions["turns"] for turn in turns}
    )
