"""Which classifier labels carry the routed pair's signal? A linear probe on frozen embeddings, in seconds.

    python -m loadtest.label_probe [--home DIR] [--prior 5 20 100] [--out benchmarks/label_probe.json]

Fine-tuning bert or causal_llm takes many minutes per try on a CPU (see BENCHMARKS.md, 'Classifier routers'),
so label designs are compared first with a ridge regression from the (cached) MiniLM embedding of each training
prompt to its label, evaluated with the RouteLLM protocol (APGR) on MT-Bench, MMLU and GSM8K. A label that a
linear probe cannot rank evaluation prompts with is unlikely to train a good classifier. Compared:

- `pair`: models/labels.py, the per-prompt Bradley–Terry gap between the strong and the weak tier, for each
  prior strength in --prior (pseudo-battles);
- `pair+prompt ties`: the same with each prompt's own tie share instead of the global one;
- `stronger side`: the pair-agnostic label used before 2026-11-25 (w + t/2 over every battle between two tiers,
  read from the stronger tier's side).

It also reports how predictable the `pair` label is from the text at all: the rank correlation, per training
source, between the label of held-out prompts (10 %) and a probe fitted on the others.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import date
from pathlib import Path

import numpy as np


def ridge(x: np.ndarray, y: np.ndarray, lam: float = 1.0) -> np.ndarray:
    """Coefficients (with an unpenalised intercept, last) of a ridge regression."""
    xa = np.hstack([x, np.ones((len(x), 1))])
    penalty = lam * np.eye(xa.shape[1])
    penalty[-1, -1] = 0.0
    return np.linalg.solve(xa.T @ xa + penalty, xa.T @ y)


def main(argv: list[str] | None = None) -> int:
    from index.embedder import DEFAULT_EMBEDDER, load_embedder
    from models import data as training
    from models.base import DEFAULT_STRONG, DEFAULT_WEAK
    from models.benchmarks import BENCHMARKS, load_benchmark
    from models.bradley_terry import tier_battles
    from models.labels import OUTCOMES, p_strong_from_outcomes, prompt_outcomes, split_prompts
    from models.metrics import summarize
    from index.paths import artifacts_dir, data_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home")
    parser.add_argument("--prior", type=float, nargs="+", default=[5.0, 20.0, 100.0])
    parser.add_argument("--out")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    home = artifacts_dir(args.home)
    td = training.load(home / "data")
    embedder = load_embedder(DEFAULT_EMBEDDER, home / "embeddings", home / "embedders")

    outcomes = {prior: prompt_outcomes(td.battles, td.tiers, DEFAULT_STRONG, DEFAULT_WEAK, prior_battles=prior)
                for prior in args.prior}
    labels = {f"pair, prior {prior:g}": p_strong_from_outcomes(rows[list(OUTCOMES)].to_numpy())
              for prior, rows in outcomes.items()}
    rows = outcomes[args.prior[0]]
    prompts = rows["prompt"].to_numpy(dtype=object)

    # Per-prompt shares over every battle between two tiers, read from the stronger tier's side.
    keep, tier_a, tier_b = tier_battles(td.battles, td.tiers)
    battles = td.battles[keep]
    winner = battles["winner"].to_numpy()
    a_stronger = tier_a < tier_b
    strong_won = np.where(a_stronger, winner == "model_a", winner == "model_b")
    tie = winner == "tie"
    shares = (battles.assign(s=strong_won.astype(float), t=tie.astype(float))
              .groupby("prompt")[["s", "t"]].mean().loc[prompts])
    labels["stronger side"] = shares["s"].to_numpy() + shares["t"].to_numpy() / 2
    q = rows["strong"].to_numpy() / (rows["strong"] + rows["weak"]).to_numpy()
    labels[f"pair, prior {args.prior[0]:g}, prompt ties"] = (1 - shares["t"].to_numpy()) * q + shares["t"].to_numpy() / 2

    x = embedder.embed(list(prompts), batch_size=64)
    benches = {name: load_benchmark(name, data_dir(None)) for name in BENCHMARKS}
    bench_x = {name: embedder.embed(list(b.prompts), batch_size=64) for name, b in benches.items()}
    results: dict[str, dict[str, float]] = {}
    print(f"{'label':36s} " + " ".join(f"{name:>9s}" for name in benches))
    for name, y in labels.items():
        coef = ridge(x, y)
        results[name] = {}
        for bench_name, bench in benches.items():
            scores = bench_x[bench_name] @ coef[:-1] + coef[-1]
            results[name][bench_name] = round(float(summarize(scores, bench.strong, bench.weak)["apgr"]), 4)
        print(f"{name:36s} " + " ".join(f"{results[name][b]:9.3f}" for b in benches))
    # Held-out predictability of the default label, within each source (between-source offsets removed).
    from scipy.stats import spearmanr

    y = labels[f"pair, prior {args.prior[0]:g}"]
    train_idx, val_idx = split_prompts(len(y), 0.1, seed=0)
    coef = ridge(x[train_idx], y[train_idx])
    predicted = x[val_idx] @ coef[:-1] + coef[-1]
    source = td.battles.groupby("prompt")["source"].first().loc[prompts].to_numpy()[val_idx]
    held_out: dict[str, dict[str, float]] = {}
    for name in sorted(set(source)):
        mask = source == name
        if mask.sum() >= 20 and np.ptp(y[val_idx][mask]) > 1e-9:
            rho = float(spearmanr(predicted[mask], y[val_idx][mask]).correlation)
            held_out[name] = {"prompts": int(mask.sum()), "spearman": round(rho, 3)}
            print(f"held-out rank correlation, {name}: {rho:.3f} over {mask.sum()} prompts")
    if args.out:
        out = {"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
               "command": " ".join(["python -m loadtest.label_probe", *argv]), "training_prompts": len(prompts),
               "apgr": results,
               "held_out_spearman_by_source": held_out}
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
