"""Markdown tables for BENCHMARKS.md from the committed JSON, so the document quotes only what the JSON holds.

    python -m loadtest.quality_report benchmarks        # reads quality.json, obvious.json, dev_choices.json, dev_ties.json, dev_tiers.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _ci(summary: dict) -> str:
    low, high = summary.get("apgr_ci95") or (None, None)
    return f"{summary['apgr']:.3f} [{low:.3f}, {high:.3f}]" if low is not None else f"{summary['apgr']:.3f}"


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def quality_table(quality: dict) -> str:
    """One row per (benchmark, router): APGR [95 % CI], P(> length), P(> random), CPT(50 %), CPT(80 %)."""
    lines = ["| benchmark (n, strong vs weak) | router | APGR [95% CI] | P(>length) | P(>random) | CPT 50% | CPT 80% |",
             "|---|---|---|---|---|---|---|"]
    for bench, entry in quality.items():
        label = f"{bench} ({entry['n']})"
        rows = [*entry["routers"].items()]
        if "length_baseline" in entry and "length" not in entry["routers"]:
            rows.append(("length (baseline)", entry["length_baseline"]))
        rows += [("random (10 runs)", entry["random_10_runs"]), ("oracle", entry["oracle"])]
        for name, s in rows:
            cpt = lambda k: "-" if s.get(k) is None else f"{100 * s[k]:.1f}%"  # noqa: E731
            lines.append(f"| {label} | {name} | {_ci(s)} | {_p(s.get('p_gt_length'))} | {_p(s.get('p_gt_random'))} "
                         f"| {cpt('cpt50')} | {cpt('cpt80')} |")
            label = ""
    return "\n".join(lines)


def obvious_table(report: dict) -> str:
    lines = ["| router | AUC [95% CI] (n) | AUC length-balanced [95% CI] (n) |", "|---|---|---|"]
    for name, r in report.items():
        lines.append(f"| {name} | {r['auc']:.3f} [{r['auc_ci95'][0]:.3f}, {r['auc_ci95'][1]:.3f}] ({r['n']}) | "
                     f"{r['auc_balanced']:.3f} [{r['auc_balanced_ci95'][0]:.3f}, {r['auc_balanced_ci95'][1]:.3f}] "
                     f"({r['n_balanced']}) |")
    return "\n".join(lines)


def choices_table(choices: dict) -> str:
    rows = choices["rows"]
    benches = list(rows[0]["apgr"])
    lines = ["| sources | tier fit | tiers | ties | γ | " + " | ".join(benches) + " | mean | obvious AUC | balanced |",
             "|---|---|---|---|---|" + "---|" * (len(benches) + 3)]
    for r in rows:
        values = [r["apgr"][b] for b in benches]
        cells = ["-" if v is None else f"{v:.3f}" for v in values]
        mean = "-" if None in values else f"{sum(values) / len(values):.3f}"
        # rows written before the tier count and tie rule were swept had the defaults of then: 10, half
        lines.append(f"| {r['sources']} | {r['tier_weighting']} | {r.get('n_tiers', 10)} | {r.get('ties', 'half')} "
                     f"| {r['gamma']:g} | "
                     + " | ".join(cells)
                     + f" | {mean} | {r.get('obvious_auc', float('nan')):.3f} | {r.get('obvious_auc_balanced', float('nan')):.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    folder = parser.parse_args(argv).folder
    for name, render in (("dev_choices.json", choices_table), ("dev_ties.json", choices_table),
                         ("dev_tiers.json", choices_table),
                         ("quality.json", quality_table),
                         ("obvious.json", obvious_table)):
        path = folder / name
        if path.is_file():
            print(f"### {name}\n\n{render(json.loads(path.read_text()))}\n")


if __name__ == "__main__":
    main()
