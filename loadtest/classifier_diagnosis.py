"""Why do the classifiers route at random or backwards? Measurements on the labels they learn, in minutes.

    python -m loadtest.classifier_diagnosis [--home DIR] [--k 8 32 128] [--out benchmarks/classifier_diagnosis.json]

Issue 22, step 1. Fine-tuning takes tens of minutes per try on a CPU, so the label side is measured first, with
frozen (cached) embeddings of the served embedder:

- per source: how many labelled prompts it gives the classifiers, the mean and spread of their p_strong targets
  and the battles behind each label; the share of the targets' variance that lies between sources (what a
  classifier can learn from topic alone);
- the most a per-prompt classifier can gain over a constant prediction, in the soft cross-entropy it is trained
  on (the targets' entropy against the cross-entropy of their mean);
- causal_llm's prompt: the instruction and chat template's token count, the query budget left at the configured
  `max_length`, and how many training queries are cut to fit it;
- label variants, each through the same ridge probe from the embedding to the target, scored on the four dev
  benchmarks (APGR, each benchmark for its own pair) and on the committed obvious-prompt file (AUC, whole and
  length-balanced): `pair` (models/labels.py, what bert and causal_llm learn today), `pair − source mean`
  (topic removed), and `knn-K`, the mean label of each prompt's K nearest other training prompts (the
  averaging over neighbours the SW router does, done once on the training side).

Only dev data is read: the dev benchmarks and `models/obvious_prompts.jsonl`, never the paper's benchmarks or
the held-out obvious file.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import date
from pathlib import Path

import numpy as np


def soft_ce(targets: np.ndarray, probs: np.ndarray) -> float:
    return float(-(targets * np.log(np.clip(probs, 1e-12, 1))).sum(axis=1).mean())


def main(argv: list[str] | None = None) -> int:
    from index.embedder import DEFAULT_EMBEDDER, load_embedder
    from index.paths import artifacts_dir, data_dir
    from models import data as training
    from models.base import DEFAULT_STRONG, DEFAULT_WEAK
    from loadtest.label_probe import ridge
    from models.benchmarks import DEV_BENCHMARKS, load_benchmark
    from models.labels import OUTCOMES, informative_prompts, neighbour_mean, p_strong_from_outcomes, prompt_outcomes
    from models.metrics import summarize
    from models.obvious import auc, load_obvious

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home")
    parser.add_argument("--embedder", default=DEFAULT_EMBEDDER)
    parser.add_argument("--k", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--out")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    home = artifacts_dir(args.home)
    td = training.load(home / "data")
    embedder = load_embedder(args.embedder, home / "embeddings", home / "embedders")

    rows = prompt_outcomes(td.battles, td.tiers, DEFAULT_STRONG, DEFAULT_WEAK)
    prompts = rows["prompt"].tolist()
    y = p_strong_from_outcomes(rows[list(OUTCOMES)].to_numpy())
    source = td.battles.groupby("prompt")["source"].first().loc[prompts].map(training.source_family).to_numpy()
    report: dict = {"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
                    "command": " ".join(["python -m loadtest.classifier_diagnosis", *argv]),
                    "labelled_prompts": len(rows), "battles": int(len(td.battles))}

    by_source = {}
    for name in sorted(set(source)):
        mask = source == name
        by_source[name] = {"prompts": int(mask.sum()), "target_mean": round(float(y[mask].mean()), 4),
                           "target_std": round(float(y[mask].std()), 4),
                           "battles_median": float(np.median(rows["n"].to_numpy()[mask]))}
    report["by_source"] = by_source
    means = {name: y[source == name].mean() for name in by_source}
    source_mean = np.array([means[s] for s in source])
    report["target_std"] = round(float(y.std()), 4)
    report["between_source_variance_share"] = round(float(source_mean.var() / y.var()), 3)
    targets = rows[list(OUTCOMES)].to_numpy()
    constant = np.broadcast_to(targets.mean(axis=0), targets.shape)
    report["soft_ce"] = {"constant_prediction": round(soft_ce(targets, constant), 5),
                         "perfect_prediction": round(soft_ce(targets, targets), 5)}

    from models.causal_llm import CausalLLMConfig, PromptBuilder, default_base
    from transformers import AutoTokenizer

    causal = CausalLLMConfig()
    builder = PromptBuilder(AutoTokenizer.from_pretrained(str(default_base(home / "base_models"))), causal.max_length)
    lengths = np.array([len(ids) for ids in builder.tokenizer(prompts, add_special_tokens=False)["input_ids"]])
    report["causal_prompt"] = {"max_length": causal.max_length, "template_tokens": len(builder.prefix) + len(builder.suffix),
                               "query_budget": builder.budget, "median_query_tokens": float(np.median(lengths)),
                               "queries_cut": int((lengths > builder.budget).sum())}

    x = embedder.embed(prompts, progress=True, what="labelled training prompts")
    variants = {"pair": y, "pair - source mean": y - source_mean + y.mean()}
    informative = informative_prompts(td.battles, td.tiers, rows["prompt"], DEFAULT_STRONG, DEFAULT_WEAK)
    report["informative_prompts"] = int(informative.sum())
    for name in by_source:
        by_source[name]["informative"] = int(informative[source == name].sum())
    for k in args.k:
        variants[f"knn-{k}"] = neighbour_mean(x, y, k)
        variants[f"knn-{k} informative"] = neighbour_mean(x, y, k, informative)
    benches = {name: load_benchmark(name, data_dir(None)) for name in DEV_BENCHMARKS}
    bench_x = {name: embedder.embed(list(b.prompts), progress=True, what=f"{name} prompts") for name, b in benches.items()}
    obvious = load_obvious()
    obvious_x = embedder.embed(obvious["prompt"].tolist(), what="obvious prompts")
    hard, balanced = obvious["is_hard"].to_numpy(), obvious["balanced"].to_numpy()

    probes = {}
    for name, target in variants.items():
        coef = ridge(x, target)
        entry = {"target_std": round(float(target.std()), 4)}
        for bench_name, bench in benches.items():
            scores = bench_x[bench_name] @ coef[:-1] + coef[-1]
            entry[bench_name] = round(float(summarize(scores, bench.strong, bench.weak)["apgr"]), 4)
        scores = obvious_x @ coef[:-1] + coef[-1]
        entry["obvious_auc"] = round(auc(scores, hard), 3)
        entry["obvious_auc_balanced"] = round(auc(scores[balanced], hard[balanced]), 3)
        probes[name] = entry
        print(f"{name:22s} " + " ".join(f"{key} {value}" for key, value in entry.items()))
    report["ridge_probe"] = probes
    print(json.dumps({k: v for k, v in report.items() if k != "ridge_probe"}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
