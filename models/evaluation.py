"""Evaluate routers on RouteLLM's benchmarks (Ong et al., arXiv 2406.18665, §5): metrics, table, plots.

For each benchmark every router scores all prompts once; the paper's qcut protocol and a dense sweep are
computed from those scores (models/metrics.py), next to the two references every result is read against:
the random router (10 runs, APGR ≈ 0.5) and the oracle (strong model exactly where it helps).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from models.base import Router
from models.benchmarks import load_benchmark
from models.metrics import apgr, curve_summary, oracle_curve, random_curve, summarize
from models.paths import atomic_path

logger = logging.getLogger(__name__)

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


def evaluate(
    routers: dict[str, Router], benches: list[str], data: Path, out_dir: Path | None = None
) -> dict[str, Any]:
    """Score every benchmark with every router; return metrics per bench (and write plots + JSON to out_dir)."""
    results: dict[str, Any] = {}
    for name in benches:
        bench = load_benchmark(name, data)
        random, oracle = _references(bench.strong, bench.weak)
        entry: dict[str, Any] = {
            "benchmark": name,
            "routers": {},
            "random": random,
            "oracle": oracle,
            "strong": float(bench.strong.mean()),
            "weak": float(bench.weak.mean()),
            "strong_model": bench.strong_model,
            "weak_model": bench.weak_model,
            "n": len(bench),
        }
        for router_name, router in routers.items():
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
        results[name] = entry
        if out_dir is not None:
            plot_curves(entry, Path(out_dir) / f"{name}.png")
    if out_dir is not None:
        write_results(results, Path(out_dir) / "results.json")
    return results


RANDOM_LABEL = "random (10 runs)"  # the reference, distinct from a `random` router evaluated like the others


def _rows(entry: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, summary) for every evaluated router, then the two references."""
    return [*entry["routers"].items(), (RANDOM_LABEL, entry["random"]), ("oracle", entry["oracle"])]


def quality_summary(results: dict[str, Any]) -> dict[str, Any]:
    """The compact form committed as benchmarks/quality.json: APGR and CPTs per router, plus both references."""
    keys = ("apgr", "cpt50", "cpt80", "apgr_dense")
    pick = lambda s: {k: s[k] for k in keys}  # noqa: E731
    return {
        bench: {
            "routers": {name: pick(s) for name, s in e["routers"].items()},
            "random_10_runs": pick(e["random"]),
            "oracle": pick(e["oracle"]),
            "strong": e["strong"],
            "weak": e["weak"],
            "n": e["n"],
        }
        for bench, e in results.items()
    }


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None or not math.isfinite(value) else fmt.format(value)


def format_table(results: dict[str, Any]) -> str:
    """Paper-style text table: one row per (benchmark, router), random and oracle last."""
    header = ("benchmark", "router", "APGR", "vs random", "CPT(50%)", "CPT(80%)", "APGR dense")
    rows = [header]
    for bench, entry in results.items():
        for name, summary in _rows(entry):
            improvement = None if name == RANDOM_LABEL else summary["apgr"] / entry["random"]["apgr"] - 1.0
            rows.append((
                bench,
                name,
                _cell(summary["apgr"], "{:.3f}"),
                _cell(improvement, "{:+.1%}"),
                _cell(summary["cpt50"], "{:.1%}"),
                _cell(summary["cpt80"], "{:.1%}"),
                _cell(summary["apgr_dense"], "{:.3f}"),
            ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    footer = [f"{bench}: n={e['n']}, strong {e['strong']:.4f}, weak {e['weak']:.4f}" for bench, e in results.items()]
    return "\n".join(lines + [""] + footer)


def plot_curves(bench_result: dict[str, Any], path: Path) -> Path:
    """Quality vs strong-call % for every router, random and oracle, with the strong/weak levels dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A bare Figure on the Agg canvas: no pyplot global state, safe in threads and servers.
    fig = Figure(figsize=(7, 5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    curves = _rows(bench_result)
    style = {RANDOM_LABEL: {"linestyle": ":", "color": "tab:gray"}, "oracle": {"linestyle": "-.", "color": "black"}}
    for name, summary in curves:
        share, quality = summary["curve"]["strong_share"], summary["curve"]["quality"]
        ax.plot(100 * np.asarray(share), quality, marker=".", label=f"{name} (APGR {summary['apgr']:.3f})",
                **style.get(name, {}))
    ax.axhline(bench_result["strong"], linestyle="--", color="red", label=f"strong: {bench_result['strong_model']}")
    ax.axhline(bench_result["weak"], linestyle="--", color="grey", label=f"weak: {bench_result['weak_model']}")
    ax.set_xlabel("Strong model calls (%)")
    ax.set_ylabel("Quality of served answers")
    ax.set_title(f"{bench_result['benchmark']} (n={bench_result['n']})")
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
