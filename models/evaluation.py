"""Evaluate routers on RouteLLM's benchmarks (Ong et al., arXiv 2406.18665, §5): metrics, table, plots.

For each benchmark every router scores all prompts once; the paper's qcut protocol and a dense sweep are
computed from those scores (models/metrics.py), next to the references every result is read against: the random
router (10 runs, APGR ≈ 0.5), the length baseline (p_strong = prompt length, the floor a learned router must
beat, DESIGN.md §3) and the oracle (strong model exactly where it helps).

The paper reports single APGRs; here each one also carries a prompt-bootstrap 95 % interval, and each router a
paired P(router > length) and P(router > random) read on the same resamples (`models.metrics.bootstrap_curves`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from models.base import Router
from models.benchmarks import Benchmark, load_benchmark
from index.errors import ConfigError
from models.length_router import LengthRouter
from models.metrics import (
    BootstrapCurves,
    apgr,
    bootstrap_curves,
    curve_band,
    curve_summary,
    oracle_curve,
    p_greater,
    percentile_interval,
    random_curve,
    summarize,
)
from index.paths import atomic_path

logger = logging.getLogger(__name__)

DEFAULT_BOOTSTRAP = 1000


def _references(strong: np.ndarray, weak: np.ndarray) -> tuple[dict[str, Any], dict[str, Any]]:
    strong_mean, weak_mean = float(strong.mean()), float(weak.mean())
    random = curve_summary(*random_curve(strong, weak), strong_mean, weak_mean)
    random["apgr_dense"] = None  # a random ranking's dense curve is the straight line: 0.5 in expectation
    oracle = curve_summary(*oracle_curve(strong, weak), strong_mean, weak_mean)
    # Exact curve (a point at every k/N): concave, so it bounds every router's APGR under both protocols; the
    # 11-point one can be beaten by a hair when a router's qcut shares miss the multiples of 10% (small N).
    exact = np.arange(len(strong) + 1) / len(strong)
    oracle["apgr_dense"] = apgr(*oracle_curve(strong, weak, exact), strong_mean, weak_mean)
    # RouteLLM's get_optimal_accuracy: spare strong calls are free, so its curve ends above the strong model.
    oracle["apgr_at_most"] = apgr(*oracle_curve(strong, weak, at_most=True), strong_mean, weak_mean)
    return random, oracle


def _band(
    summary: dict[str, Any], strong_share: np.ndarray, quality: np.ndarray, boot: BootstrapCurves,
    strong: float, weak: float,
) -> dict[str, list[float]]:
    """The 95 % pointwise band of the bootstrap curves at the shares of the summary's own curve.

    The band is taken in PGR (each resample against its own strong/weak means, as its APGR is) and drawn on the
    full benchmark's quality scale, so it is the uncertainty of the routing curve, not of the two models' levels.
    """
    at = np.asarray(summary["curve"]["strong_share"], dtype=np.float64)
    low, high = curve_band(strong_share, quality, at, strong_mean=boot.strong_mean, weak_mean=boot.weak_mean)
    scale = lambda pgr: (weak + pgr * (strong - weak)).tolist()  # noqa: E731
    return {"strong_share": at.tolist(), "low": scale(low), "high": scale(high)}


def _add_intervals(
    entry: dict[str, Any], scores: list[np.ndarray], strong: np.ndarray, weak: np.ndarray, n_resamples: int,
    seed: int,
) -> None:
    """Bootstrap every router and the length baseline (last in `scores`) on shared resamples; fill `entry`."""
    start = time.perf_counter()
    boot: BootstrapCurves = bootstrap_curves(scores, strong, weak, n_resamples, seed=seed)
    strong_mean, weak_mean = float(strong.mean()), float(weak.mean())
    length_apgr = boot.apgr[-1]
    summaries = [*entry["routers"].values(), entry["length"]]
    for r, summary in enumerate(summaries):
        summary["apgr_ci95"] = percentile_interval(boot.apgr[r])
        summary["p_gt_random"] = p_greater(boot.apgr[r], boot.random_apgr)
        summary["curve_band"] = _band(summary, boot.strong_share[r], boot.quality[r], boot, strong_mean, weak_mean)
        summary["n_bootstrap"] = n_resamples
        summary["n_bootstrap_skipped"] = boot.n_skipped
        if r < len(summaries) - 1:
            summary["p_gt_length"] = p_greater(boot.apgr[r], length_apgr)
    random = entry["random"]
    random["apgr_ci95"] = percentile_interval(boot.random_apgr)
    random["curve_band"] = _band(random, boot.random_share, boot.random_quality, boot, strong_mean, weak_mean)
    entry["bootstrap"] = {"n": n_resamples, "seed": seed, "skipped": boot.n_skipped}
    if boot.n_skipped:
        # Resamples where strong and weak means coincide have no gap to recover; they are left out, not zeroed.
        logger.warning("%s: %d of %d bootstrap resamples skipped (strong mean = weak mean)",
                       entry["benchmark"], boot.n_skipped, n_resamples)
    logger.info("%s: %d bootstrap resamples of %d routers in %.2f s",
                entry["benchmark"], n_resamples, len(scores), time.perf_counter() - start)


def evaluate(
    routers: dict[str, Router] | Callable[[Benchmark], dict[str, Router]],
    benches: list[str | Benchmark],
    data: Path | None,
    out_dir: Path | None = None,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> dict[str, Any]:
    """Score every benchmark with every router; return metrics per bench (and write plots + JSON to out_dir).

    `bootstrap` prompt resamples (0: none) give every APGR a 95 % interval and every router P(> length) and
    P(> random) on the same resamples, seeded by `seed`. A bench is a name (loaded from `data`) or a loaded
    `Benchmark` (a file of the user's traffic, say), which needs no `data`. `routers` may be a function of the
    benchmark: the dev benchmarks each have their own strong/weak pair, and a router is built for one pair.
    """
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)) or bootstrap < 0:
        raise ConfigError(f"bootstrap must be a non-negative number of resamples, got {bootstrap!r}")
    results: dict[str, Any] = {}
    for item in benches:
        bench = item if isinstance(item, Benchmark) else load_benchmark(item, data)
        name = bench.name
        random, oracle = _references(bench.strong, bench.weak)
        # The floor of DESIGN.md §3, computed here whatever routers are evaluated, so P(> length) always exists.
        length_p_strong = LengthRouter().score(bench.prompts)
        entry: dict[str, Any] = {
            "benchmark": name,
            "routers": {},
            "random": random,
            "length": summarize(length_p_strong, bench.strong, bench.weak),
            "oracle": oracle,
            "strong": float(bench.strong.mean()),
            "weak": float(bench.weak.mean()),
            "strong_model": bench.strong_model,
            "weak_model": bench.weak_model,
            "n": len(bench),
        }
        scores = []
        for router_name, router in (routers(bench) if callable(routers) else routers).items():
            start = time.perf_counter()
            p_strong = router.score(bench.prompts)
            seconds = time.perf_counter() - start
            logger.info(
                "%s on %s: %d prompts in %.2f s (%.2f ms/prompt)",
                router_name, name, len(bench), seconds, 1000 * seconds / len(bench),
            )
            summary = summarize(p_strong, bench.strong, bench.weak)
            # The paper's "(+x%)": relative APGR improvement over the random router's APGR.
            summary["improvement_over_random"] = summary["apgr"] / random["apgr"] - 1.0
            summary["seconds"] = seconds
            entry["routers"][router_name] = summary
            scores.append(p_strong)
        if bootstrap:
            _add_intervals(entry, [*scores, length_p_strong], bench.strong, bench.weak, int(bootstrap), seed)
        results[name] = entry
        if out_dir is not None:
            plot_curves(entry, Path(out_dir) / f"{name}.png")
    if out_dir is not None:
        write_results(results, Path(out_dir) / "results.json")
    return results


RANDOM_LABEL = "random (10 runs)"  # the reference, distinct from a `random` router evaluated like the others
LENGTH_LABEL = "length (baseline)"  # the floor P(> length) is read against, shown when `length` is not evaluated
LENGTH_ROUTER = "length"
INTERVAL_KEYS = ("apgr_ci95", "p_gt_length", "p_gt_random")


def _rows(entry: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, summary) for every evaluated router, then the references (length only if not already a router)."""
    length = [] if LENGTH_ROUTER in entry["routers"] or "length" not in entry else [(LENGTH_LABEL, entry["length"])]
    return [*entry["routers"].items(), *length, (RANDOM_LABEL, entry["random"]), ("oracle", entry["oracle"])]


def quality_summary(results: dict[str, Any]) -> dict[str, Any]:
    """The compact form committed as benchmarks/quality.json: APGR and CPTs per router, plus the references.

    With a bootstrap, each router also carries its APGR interval and P(> length), P(> random); the random and
    length references their interval.
    """
    keys = ("apgr", "cpt50", "cpt80", "apgr_dense")

    def pick(summary: dict[str, Any]) -> dict[str, Any]:
        return {k: summary[k] for k in keys} | {k: summary[k] for k in INTERVAL_KEYS if k in summary}

    compact: dict[str, Any] = {}
    for bench, e in results.items():
        compact[bench] = {
            "routers": {name: pick(s) for name, s in e["routers"].items()},
            "random_10_runs": pick(e["random"]),
            "oracle": pick(e["oracle"]),
            "strong": e["strong"],
            "weak": e["weak"],
            "n": e["n"],
        }
        if "length" in e:
            compact[bench]["length_baseline"] = pick(e["length"])
        if "bootstrap" in e:
            compact[bench]["bootstrap"] = e["bootstrap"]
    return compact


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None or not math.isfinite(value) else fmt.format(value)


def _apgr_cell(summary: dict[str, Any]) -> str:
    """APGR, followed by its [low, high] interval when there is one."""
    point = _cell(summary["apgr"], "{:.3f}")
    interval = summary.get("apgr_ci95")
    if interval is None or not all(v is not None and math.isfinite(v) for v in interval):
        return point
    return f"{point} [{interval[0]:.3f}, {interval[1]:.3f}]"


def format_table(results: dict[str, Any]) -> str:
    """Paper-style text table: one row per (benchmark, router), the references last.

    With a bootstrap the APGR cell carries its 95 % interval and P>length, P>random are the paired bootstrap
    shares of resamples where the router's APGR beats the baseline's.
    """
    header = ("benchmark", "router", "APGR [95% CI]", "vs random", "P>length", "P>random", "CPT(50%)", "CPT(80%)",
              "APGR dense")
    rows = [header]
    for bench, entry in results.items():
        for name, summary in _rows(entry):
            improvement = None if name == RANDOM_LABEL else summary["apgr"] / entry["random"]["apgr"] - 1.0
            rows.append((
                bench,
                name,
                _apgr_cell(summary),
                _cell(improvement, "{:+.1%}"),
                _cell(summary.get("p_gt_length"), "{:.3f}"),
                _cell(summary.get("p_gt_random"), "{:.3f}"),
                _cell(summary["cpt50"], "{:.1%}"),
                _cell(summary["cpt80"], "{:.1%}"),
                _cell(summary["apgr_dense"], "{:.3f}"),
            ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    footer = []
    for bench, e in results.items():
        line = f"{bench}: n={e['n']}, strong {e['strong']:.4f}, weak {e['weak']:.4f}"
        if "bootstrap" in e:
            boot = e["bootstrap"]
            line += f", {boot['n']} prompt resamples (seed {boot['seed']}, {boot['skipped']} skipped)"
        footer.append(line)
    return "\n".join(lines + [""] + footer)


def plot_curves(bench_result: dict[str, Any], path: Path) -> Path:
    """Quality vs strong-call % for every router and reference, the strong/weak levels dashed.

    With a bootstrap each curve has a shaded 95 % pointwise band and its legend the APGR interval.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A bare Figure on the Agg canvas: no pyplot global state, safe in threads and servers.
    fig = Figure(figsize=(7, 5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    curves = _rows(bench_result)
    style = {RANDOM_LABEL: {"linestyle": ":", "color": "tab:gray"}, "oracle": {"linestyle": "-.", "color": "black"},
             LENGTH_LABEL: {"linestyle": "--", "color": "tab:brown"}}
    for name, summary in curves:
        share, quality = summary["curve"]["strong_share"], summary["curve"]["quality"]
        (line,) = ax.plot(100 * np.asarray(share), quality, marker=".", label=f"{name} (APGR {_apgr_cell(summary)})",
                          **style.get(name, {}))
        band = summary.get("curve_band")
        if band is not None:
            ax.fill_between(100 * np.asarray(band["strong_share"], dtype=np.float64),
                            np.asarray(band["low"], dtype=np.float64), np.asarray(band["high"], dtype=np.float64),
                            color=line.get_color(), alpha=0.15, linewidth=0)
    ax.axhline(bench_result["strong"], linestyle="--", color="red", label=f"strong: {bench_result['strong_model']}")
    ax.axhline(bench_result["weak"], linestyle="--", color="grey", label=f"weak: {bench_result['weak_model']}")
    ax.set_xlabel("Strong model calls (%)")
    ax.set_ylabel("Quality of served answers")
    title = f"{bench_result['benchmark']} (n={bench_result['n']})"
    if "bootstrap" in bench_result:
        title += f", bands: 95 % over {bench_result['bootstrap']['n']} prompt resamples"
    ax.set_title(title)
    ax.legend(fontsize="small")
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    logger.info("wrote %s", path)
    return Path(path)


def _plain(value: Any) -> Any:
    """JSON-ready copy: numpy types to Python, non-finite floats (an unreached CPT) to null."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_results(results: dict[str, Any], path: Path) -> Path:
    """Write `evaluate`'s results as JSON, atomically."""
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(json.dumps(_plain(results), indent=2, allow_nan=False) + "\n")
    logger.info("wrote %s", path)
    return Path(path)


# ------------------------------------------------------------------------- what `turnout eval` runs


def parse_benches(value: str, strong: str, weak: str) -> tuple[list, dict[str, str]]:
    """--bench: known benchmark names stay names; .jsonl/.csv/.parquet paths become Benchmark objects of the
    --strong/--weak pair. Also returns the pair routers must be loaded for ({} for the default pair)."""
    from models.base import DEFAULT_STRONG, DEFAULT_WEAK
    from models.benchmarks import BENCHMARKS
    from models.model_names import canonical
    from models.registry import parse_names
    from models.user_data import SUFFIXES, read_bench_file

    items = [b.strip() for b in value.split(",") if b.strip()]
    if "all" in items:  # every shared-data benchmark, in the order they are read: dev ones first
        items = [b for i in items for b in (BENCHMARKS if i == "all" else (i,))]
    files = [b for b in items if b not in BENCHMARKS and b.lower().endswith(SUFFIXES)]
    names = [b for b in items if b not in files]
    if names or not files:
        parse_names(",".join(names), list(BENCHMARKS), "benchmark")
    strong, weak = canonical(strong), canonical(weak)
    default = (strong, weak) == (DEFAULT_STRONG, DEFAULT_WEAK)
    if not default and names:
        raise ConfigError(f"--strong/--weak apply to --bench files only; {', '.join(names)} have their own strong/weak "
                          "pair: evaluate them in a separate run")
    loaded = {f: read_bench_file(Path(f), strong, weak) for f in files}
    taken = [loaded[f].name for f in files] + names
    twice = sorted({n for n in taken if taken.count(n) > 1})
    if twice:
        raise ConfigError(f"--bench names {', '.join(twice)} more than once (a file is named by its stem); rename the file")
    return [loaded.get(b, b) for b in items], ({} if default else {"strong": strong, "weak": weak})


def warn_trained_on(benches: list, home: Path) -> None:
    """A held-out file whose prompts the routers were trained on (added with --add) reads too well: say so."""
    from models import data as training

    files = [b for b in benches if not isinstance(b, str)]
    if not files or not (home / "data" / "models.json").exists():
        return
    seen = set(training.load(home / "data").battles["prompt"].map(training.normalize))
    for bench in files:
        shared = sum(training.normalize(p) in seen for p in bench.prompts)
        if shared:
            logger.warning("%s: %d of %d prompts are in the training data (<home>/data): its APGR is biased upward; "
                        "keep the held-out file out of `data build --add`", bench.name, shared, len(bench))


class CachedScores(Router):
    """A router whose scores are kept on disk (`index.row_cache.RowCache` under `<home>/cache/scores`), keyed by
    prompt and by everything the score depends on: the checkpoint (its meta file's bytes, rewritten by every
    training), the strong/weak pair and the load options. For the classifiers that score text with a model of
    their own (bert, causal_llm): without it every evaluation pushes MMLU's 14k prompts through both again, and a
    rerun that changes only the report would take as long as the first."""

    def __init__(self, inner: Router, cache_root: Path, identity: str):
        from index.row_cache import RowCache, folder_name

        self.inner = inner
        self.name = inner.name
        self.cache = RowCache(Path(cache_root) / folder_name(f"{inner.name}-{identity}"), "score cache")

    def _score(self, prompts: list[str]) -> np.ndarray:
        return self.cache.rows(prompts, self.inner.score)[:, 0]


def _cached_scores(ws, name: str, router: Router, strong: str, weak: str, options: dict) -> Router:
    """`router` itself, or wrapped in CachedScores where scoring is slow (a trained router that reads the text
    with its own model, not the shared embedding, which has its own cache)."""
    import hashlib

    from models.registry import entry

    spec = entry(name)
    if not spec.trained or spec.shares_embedding:
        return router
    meta = (ws.routers / name / spec.meta_file).read_bytes()
    identity = hashlib.sha256(meta + json.dumps([strong, weak, options], sort_keys=True, default=str).encode())
    return CachedScores(router, ws.home / "cache" / "scores", identity.hexdigest()[:16])


def routers_by_pair(names: list[str], ws, pair: dict[str, str], options: dict[str, dict] | None = None):
    """(routers_for(bench), scored_pairs): each benchmark's routers built for its own strong/weak pair.

    A classifier checkpoint is trained for one pair's tiers and refuses another: it is then scored for the pair
    it was trained for (its ranking of prompts is what APGR reads), and `scored_pairs[bench][router]` says so.
    The classifiers' scores are cached on disk (`CachedScores`).
    """
    from models.base import DEFAULT_STRONG, DEFAULT_WEAK
    from models.pipeline import load

    cache: dict[tuple[str, str], dict] = {}
    fallbacks: dict[tuple[str, str], list[str]] = {}
    scored_pairs: dict[str, dict[str, tuple[str, str]]] = {}

    def routers_for(bench) -> dict:
        key = (bench.strong_model, bench.weak_model) if not pair else (pair["strong"], pair["weak"])
        if key not in cache:
            built, fallbacks[key] = {}, []
            for name in names:
                opts, scored = (options or {}).get(name, {}), key
                try:
                    router = load(ws, name, strong=key[0], weak=key[1], **opts)
                except ConfigError as exc:
                    if pair or key == (DEFAULT_STRONG, DEFAULT_WEAK):
                        raise
                    logger.warning("%s cannot route %s vs %s (%s); scoring it for its default pair", name, *key, exc)
                    router, scored = load(ws, name, **opts), (DEFAULT_STRONG, DEFAULT_WEAK)
                    fallbacks[key].append(name)
                built[name] = _cached_scores(ws, name, router, *scored, opts)
            cache[key] = built
        for name in fallbacks[key]:
            scored_pairs.setdefault(bench.name, {})[name] = (DEFAULT_STRONG, DEFAULT_WEAK)
        return cache[key]

    return routers_for, scored_pairs


def obvious_check(routers_for, out: Path, bootstrap: int, path: Path | None = None) -> dict:
    """AUC of every router on an obvious-prompts file (served pair; the committed one by default); writes and
    returns `<out>/<file>.json`, named as the file less its `_prompts` (obvious.json, obvious_heldout.json, ...)."""
    from models.obvious import OBVIOUS_PATH, obvious_report

    served = Benchmark("obvious", [], None, None)  # only the pair matters: the default one, as served
    path = path or OBVIOUS_PATH
    report = obvious_report(routers_for(served), path, n_bootstrap=max(bootstrap, 1))
    with atomic_path(out / (path.stem.replace("_prompts", "") + ".json")) as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
    return report
