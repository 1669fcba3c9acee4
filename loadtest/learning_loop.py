"""What the user's own labels buy (issue 23): the overlay (models/user_overlay.py) over the served routers, as a
curve of held-out APGR against the number of labelled prompts, with paired bootstrap intervals.

    python -m loadtest.learning_loop --out benchmarks/learning_loop.json

The user's traffic is the dev split of a correctness source (mmlu-pro-dev: gpt-4o vs Mixtral-8x7B; faithful-cot-dev:
GPT-4 vs gpt-3.5-turbo): prompts of a domain the public data covers, never trained on. Their recorded correctness
is the gold grader's answer for each prompt (what `turnout label --grader gold` writes from the models' answers).
Each benchmark's prompts are split once, with a fixed seed, into a held-out part (TEST_SHARE) and a label pool;
labels are drawn from the pool in nested samples (the 100 contain the 50), the overlay's (beta, kappa) is chosen
by cross-validation on those labels alone, and the held-out part is scored for: the routers before the loop,
the routers with the overlay, prompt length and random, on the same bootstrap resamples. Nothing in this script
chooses anything on the held-out part; the candidate grid and the split were fixed before it was first run.
Other label draws (`--seeds`) give the spread that comes from which prompts were labelled.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

BENCHES = ("mmlu-pro-dev", "faithful-cot-dev")
# Sources without a dev benchmark of their own, with the pair their runs compare (--whole-source only).
PAIRS = {"theoremqa-dev": ("gpt-4-0613", "gpt-3.5-turbo-0613")}
# Files of RouterDC's correctness matrices that no turnout build, dev split or choice has read (models/data.py
# trains on other files of the folder), set aside on 2026-12-07 as the user's traffic for the target, before
# the length-aware prior was chosen: read once, with the method chosen on the dev settings. Correct: score > 0
# (MATH_prealgebra is 0/1, the multiple-choice files the gold option's probability when it was the answer). The
# pair, fixed by rule before any routing was scored: strong the model right most often on the file, weak the
# median one (4th of 7).
HELD_OUT = {"routerdc-prealgebra": ("MATH_prealgebra",), "routerdc-arc-test": ("arc_challenge_test", "arc_easy_test"),
            "routerdc-ceval": ("ceval",)}
# Set aside on 2026-12-07 (session 6), before the difficulty target was tried on the dev settings, the last of
# RouterDC's files that no turnout build, dev split or choice had read (its MMLU and GSM8K test files share their
# questions with the paper's benchmarks, which nothing was chosen on; the models and their grades are new). The pair
# by a rule fixed before any routing was scored, so that the two models are far apart (the median rule above left
# ARC and C-Eval with pairs a few points apart): strong the model right most often on the file, weak the one right
# least often.
HELD_OUT_FAR = {"routerdc-mmlu-test": ("mmlu_test",), "routerdc-gsm8k-test": ("gsm8k-test",),
                "routerdc-mbpp": ("mbpp",)}
SIZES = (50, 100, 200, 400)
TEST_SHARE = 0.4
SPLIT_SEED = 20261207
ROUTERS = ("sw_ranking", "mf")


def outcome(strong: np.ndarray, weak: np.ndarray) -> np.ndarray:
    """1 where the strong model did better, 0 where the weak one did, 0.5 for a tie (the battles rule)."""
    return np.where(strong > weak, 1.0, np.where(strong < weak, 0.0, 0.5))


def held_out_benchmark(name: str, data: Path):
    """A HELD_OUT or HELD_OUT_FAR set as a Benchmark for its rule-chosen pair."""
    import pandas as pd

    from models.benchmarks import Benchmark
    from models.data import routerdc_matrices

    matrices = routerdc_matrices(Path(data), {**HELD_OUT, **HELD_OUT_FAR}[name])
    correct = pd.concat([m.correct for m in matrices], ignore_index=True).fillna(0.0)
    ranked = correct.mean().sort_values(ascending=False, kind="stable").index.tolist()
    strong, weak = ranked[0], ranked[-1] if name in HELD_OUT_FAR else ranked[len(ranked) // 2]
    return Benchmark(name, [p for m in matrices for p in m.prompts], correct[strong].to_numpy(),
                     correct[weak].to_numpy(), strong, weak)


def run_bench(name: str, ws, sizes, seeds: int, resamples: int, whole: bool = False, naive: list[int] | None = None,
              sources: str | None = None, rule: str = "one_se", prior: str = "router+length",
              targets: str = "pair,difficulty", routers: tuple[str, ...] = ROUTERS) -> dict:
    from index.errors import ConfigError
    from models import pipeline, user_overlay
    from models.benchmarks import load_benchmark, source_benchmark
    from models.base import DEFAULT_STRONG, DEFAULT_WEAK
    from models.data import source_family
    from models.length_router import LengthRouter
    from models.metrics import bootstrap_curves, p_greater, percentile_interval, summarize

    if whole:
        source = name.removesuffix("-dev")
        trained_on = set(pipeline.training_data(ws).battles["source"].map(source_family))
        if source in trained_on:
            raise ConfigError(f"--whole-source: the training data in {ws.home} holds {source}; build it without "
                              f"(turnout data build --sources ...) into another --home")
    held_out = name in HELD_OUT or name in HELD_OUT_FAR
    if held_out:
        bench = held_out_benchmark(name, ws.data())
    else:
        bench = source_benchmark(name, ws.data(), PAIRS.get(name)) if whole else load_benchmark(name, ws.data())
    # The dev split's pair is in the public tier table; a source left out may name models the public data never
    # saw (gpt-4o), so the routers score the served pair there, as `turnout retrain` does with the user's labels.
    pair = (DEFAULT_STRONG, DEFAULT_WEAK) if whole or held_out else (bench.strong_model, bench.weak_model)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(bench))
    n_test = int(round(TEST_SHARE * len(bench)))
    test, pool = order[:n_test], order[n_test:]
    vectors = np.asarray(ws.embedder.embed(bench.prompts, progress=True), dtype=np.float32)
    y = outcome(bench.strong, bench.weak)
    weak_failure = 1.0 - bench.weak if "difficulty" in targets.split(",") else None  # graded: scores in [0, 1]
    strong, weak = bench.strong[test], bench.weak[test]
    test_prompts = [bench.prompts[i] for i in test]
    length = np.asarray(LengthRouter().score(test_prompts))
    log_len = user_overlay.log_length(bench.prompts)
    result = {"benchmark": bench.name, "strong": bench.strong_model, "weak": bench.weak_model, "router_pair": pair,
              "prompts": len(bench), "held_out": len(test), "pool": len(pool), "routers": {}}
    if naive:
        result["naive_add"] = naive_add(bench, ws, pool, test, naive, sources)
    for router_name in routers:
        router = pipeline.load(ws, router_name, strong=pair[0], weak=pair[1])
        public = np.asarray(router.score_embeddings(vectors))
        before = public[test]
        rows = []
        for size in [s for s in sizes if s <= len(pool)] + ([len(pool)] if len(pool) not in sizes else []):
            draws = []
            for seed in range(seeds):
                labelled = np.random.default_rng(seed).permutation(pool)[:size]  # nested: a prefix per seed
                failure = None if weak_failure is None else weak_failure[labelled]
                try:
                    chosen = user_overlay.fit(vectors[labelled], y[labelled], public[labelled], seed=seed, rule=rule,
                                              log_len=None if prior == "router" else log_len[labelled],
                                              weak_failure=failure)
                except ConfigError as exc:  # too few decisive labels: retrain refuses, the routers stay as they are
                    chosen = {"prior": None, "beta": None, "kappa": float("inf"), "cv_gain": None, "cv_auc": None,
                              "refused": str(exc)}
                after = user_overlay.predict(chosen, before, vectors[test], test_prompts, vectors[labelled],
                                             y[labelled], failure)
                draws.append((chosen, after))
            chosen, after = draws[0]
            curves = bootstrap_curves([after, before, length], strong, weak, resamples, seed=0)
            apgr_new, apgr_before, apgr_length = curves.apgr
            rows.append({
                "labels": size, "target": chosen.get("target"),
                "prior": chosen["prior"]["kind"] if chosen["prior"] else "router",
                "decisive": int((y[np.random.default_rng(0).permutation(pool)[:size]] != 0.5).sum()),
                "refused": chosen.get("refused"), "beta": chosen["beta"], "cv_gain": chosen.get("cv_gain"),
                "kappa": str(chosen["kappa"]) if np.isinf(chosen["kappa"]) else chosen["kappa"],
                "cv_auc": chosen["cv_auc"],
                "apgr": summarize(after, strong, weak)["apgr"], "interval": percentile_interval(apgr_new),
                "p_gt_before": p_greater(apgr_new, apgr_before), "p_gt_length": p_greater(apgr_new, apgr_length),
                "p_gt_random": p_greater(apgr_new, curves.random_apgr),
                "apgr_other_draws": [summarize(a, strong, weak)["apgr"] for _, a in draws[1:]],
            })
            log.info("%s %s %d labels: APGR %.3f (before %.3f)", name, router_name, size, rows[-1]["apgr"],
                     summarize(before, strong, weak)["apgr"])
        curves = bootstrap_curves([before, length], strong, weak, resamples, seed=0)
        result["routers"][router_name] = {
            "before": {"apgr": summarize(before, strong, weak)["apgr"], "interval": percentile_interval(curves.apgr[0]),
                       "p_gt_length": p_greater(curves.apgr[0], curves.apgr[1])},
            "curve": rows}
    curves = bootstrap_curves([length], strong, weak, resamples, seed=0)
    result["length"] = {"apgr": summarize(length, strong, weak)["apgr"], "interval": percentile_interval(curves.apgr[0])}
    result["random"] = {"apgr": float(np.nanmean(curves.random_apgr)),
                        "interval": percentile_interval(curves.random_apgr)}
    return result


def naive_add(bench, ws, pool: np.ndarray, test: np.ndarray, sizes: list[int], sources: str | None) -> list[dict]:
    """The path before the overlay: the first n pool labels added to the public data as one more source
    (`turnout data build --add`), sw_ranking and mf retrained, routing the benchmark's own pair (now in the tier
    table), on the same held-out prompts; the public build's sources, in a fresh home beside --home whose
    embedding cache is shared."""
    import pandas as pd

    from index.embedder import DEFAULT_EMBEDDER
    from models import pipeline
    from models.metrics import summarize
    from models.user_data import read_user_file

    rows = []
    for size in sizes:
        home = ws.home.parent / f"{ws.home.name}-add-{bench.name}-{size}"
        home.mkdir(exist_ok=True)
        if not (home / "embeddings").exists():
            (home / "embeddings").symlink_to((ws.home / "embeddings").resolve())
        labelled = np.random.default_rng(0).permutation(pool)[:size]  # the overlay curve's first draw
        path = home / f"labels-{size}.csv"
        pd.DataFrame([{"prompt": bench.prompts[i], "model": model, "score": score}
                      for i in labelled for model, score in ((bench.strong_model, bench.strong[i]),
                                                             (bench.weak_model, bench.weak[i]))]).to_csv(path, index=False)
        user = read_user_file(path)
        started = time.time()
        added = pipeline.workspace(str(home), ws.data_flag, DEFAULT_EMBEDDER, log.info)
        pipeline.training_data(added, rebuild=True, sources=sources, extra_battles=[user.battles],
                               extra_scores=[user.scores], added=[user.summary()])
        row = {"labels": size, "rebuild_and_train_s": None}
        for name in ROUTERS:
            pipeline.train(added, name)
            router = pipeline.load(added, name, strong=bench.strong_model, weak=bench.weak_model)
            row[name] = summarize(np.asarray(router.score([bench.prompts[i] for i in test])),
                                  bench.strong[test], bench.weak[test])["apgr"]
        row["rebuild_and_train_s"] = round(time.time() - started, 1)
        rows.append(row)
        log.info("%s naive --add %d labels: %s", bench.name, size, row)
    return rows


def summary(records: list[dict], router: str = "sw_ranking") -> dict:
    """The issue's shape, one router's curve per source: {source: {"before": {...}, "curve": [{"n_labels", "apgr",
    "apgr_ci95", "p_gt_length", "p_gt_before", "length_apgr"}, ...]}} from one or more runs' records."""
    out = {}
    for record in records:
        for bench in record["benchmarks"]:
            routers = bench["routers"].get(router)
            if routers is None:
                continue
            length = bench["length"]["apgr"]
            out[bench["benchmark"]] = {
                "router": router, "strong": bench["strong"], "weak": bench["weak"], "held_out": bench["held_out"],
                "command": record["command"], "date": record["date"],
                "before": {"apgr": routers["before"]["apgr"], "apgr_ci95": routers["before"]["interval"],
                           "p_gt_length": routers["before"]["p_gt_length"], "length_apgr": length},
                "curve": [{"n_labels": row["labels"], "apgr": row["apgr"], "apgr_ci95": row["interval"],
                           "p_gt_length": row["p_gt_length"], "p_gt_before": row["p_gt_before"],
                           "length_apgr": length} for row in routers["curve"]]}
    return out


def plot(shaped: dict, path: Path) -> None:
    """APGR against labelled prompts per source, with its interval, the router before the loop and length."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    fig = Figure(figsize=(4 * max(1, len(shaped)), 3.4))
    FigureCanvasAgg(fig)
    for i, (source, data) in enumerate(shaped.items()):
        ax = fig.add_subplot(1, len(shaped), i + 1)
        n = [row["n_labels"] for row in data["curve"]]
        ax.plot(n, [row["apgr"] for row in data["curve"]], marker="o", label=f"{data['router']} + labels")
        ax.fill_between(n, *zip(*[row["apgr_ci95"] for row in data["curve"]]), alpha=0.2)
        ax.axhline(data["before"]["apgr"], color="grey", linestyle="--", label="before the loop")
        ax.axhline(data["before"]["length_apgr"], color="black", linestyle=":", label="prompt length")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(source, fontsize=9)
        ax.set_xlabel("labelled prompts")
        ax.set_ylabel("held-out APGR")
        if i == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    from models import pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/learning_loop.json"))
    parser.add_argument("--benches", default=",".join(BENCHES))
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--seeds", type=int, default=3, help="label draws per size (the first gives the intervals)")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--home", help="artifact folder with the served routers (default: the usual home)")
    parser.add_argument("--naive-add", default="", help="comma list of label counts for which the labels are also "
                        "added to the public data and the routers retrained (the path before the overlay); slow")
    parser.add_argument("--sources", help="with --naive-add: the public build's sources (turnout data build --sources)")
    parser.add_argument("--rule", default="one_se", help="how the cross-validation picks (beta, kappa): max or one_se")
    parser.add_argument("--prior", default="router+length", help="the priors the cross-validation may pick: "
                        "router (the router's own p_strong only) or router+length (also recalibrated with length)")
    parser.add_argument("--targets", default="pair,difficulty", help="what the overlay's kernel may average: pair "
                        "(the pair's outcome only) or pair,difficulty (also the weak model's failure)")
    parser.add_argument("--routers", default=",".join(ROUTERS), help="comma list of shared-embedding routers")
    parser.add_argument("--summarise", nargs="+", type=Path, metavar="RUN_JSON",
                        help="write no new run: the curves of these runs' records in the issue's shape (--out) and "
                        "a plot beside it")
    parser.add_argument("--whole-source", action="store_true",
                        help="the user's traffic is each benchmark's whole source, which the training data in "
                        "--home must have left out: a domain the public data does not cover")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.summarise:
        shaped = summary([json.loads(path.read_text()) for path in args.summarise])
        args.out.write_text(json.dumps(shaped, indent=1) + "\n")
        plot(shaped, args.out.with_suffix(".png"))
        print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
        return 0
    ws = pipeline.workspace(args.home)
    start = time.time()
    naive = [int(n) for n in args.naive_add.split(",") if n]
    results = [run_bench(name, ws, [int(s) for s in args.sizes.split(",")], args.seeds, args.resamples,
                         args.whole_source, naive, args.sources, args.rule, args.prior, args.targets,
                         tuple(args.routers.split(",")))
               for name in args.benches.split(",")]
    record = {"command": "python -m loadtest.learning_loop " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {_cores()} cores, no GPU",
              "seconds": round(time.time() - start, 1), "test_share": TEST_SHARE, "split_seed": SPLIT_SEED,
              "whole_source": args.whole_source, "rule": args.rule, "prior": args.prior, "targets": args.targets,
              "benchmarks": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
