"""The embedder backends side by side (issue 25): speed on one thread, vectors against torch, and routing quality.

    python -m loadtest.embedder_backends --out benchmarks/embedder_backends.json

Speed: single-prompt latency (median over prompts embedded one at a time) and batch-32 throughput, every backend
on one thread, in interleaved rounds (backend order rotated each round) so that the machine's drift falls on all
alike. Vectors: cosine to the torch MiniLM vectors of the same prompts. Quality: for each backend, a home of its own
built as `turnout prepare` builds one (training data with decontamination embedded by that backend, sw_ranking and
mf trained), timed; then APGR on the dev benchmarks (each for its own pair) and the AUC of the obvious-prompt check
(models/obvious_prompts.jsonl, the served pair), each with the paired bootstrap against torch on the same
resamples. The paper's benchmarks are not read.

The rule the default is chosen by, written before the quality figures were read: the fastest backend (batch-32
throughput on one thread) whose APGR is not below torch's with P >= 0.9 (P(backend > torch) <= 0.1) on any dev
benchmark for either router, whose obvious-check AUC (whole file and length-balanced subset) stays within torch's
95 % interval, and whose vectors do not depend on the other prompts in a batch (onnx-int8's do: a prompt would be
routed differently depending on its neighbours).
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

BACKENDS = ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8", "static")
ROUTERS = ("sw_ranking", "mf")


def embedder_name(backend: str) -> str:
    return "minilm" if backend == "torch" else f"minilm-{backend}"


def _embedders(backends, models_dir: Path, threads: int = 1) -> dict:
    """Each backend's embedder (built under `models_dir` if need be), torch and the runtimes on `threads` threads."""
    import torch

    from index.embedder import load_embedder

    torch.set_num_threads(threads)
    return {b: load_embedder(embedder_name(b), models_dir=models_dir, threads=threads) for b in backends}


def speed(backends, prompts: list[str], models_dir: Path, rounds: int) -> dict:
    """Per backend: single-prompt p50 (ms), batch-32 prompts/s and cosine to torch, one thread each."""
    embedders = _embedders(backends, models_dir)
    reference = embedders["torch"].embed(prompts) if "torch" in embedders else None
    single = {b: [] for b in backends}
    batched = {b: [] for b in backends}
    for r in range(rounds):
        order = list(backends[r % len(backends):]) + list(backends[:r % len(backends)])
        for b in order:
            e = embedders[b]
            e.embed(prompts[:8])  # warm
            for p in prompts[:64]:
                t = time.perf_counter()
                e.embed([p])
                single[b].append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            for i in range(0, len(prompts), 32):
                e.embed(prompts[i:i + 32], batch_size=32)
            batched[b].append(len(prompts) / (time.perf_counter() - t))
    out = {}
    for b in backends:
        vectors = embedders[b].embed(prompts, batch_size=32)
        cosine = (np.sum(vectors * reference, axis=1) if reference is not None and vectors.shape == reference.shape
                  else None)
        out[b] = {"name": embedders[b].name, "dim": embedders[b].dim,
                  "single_p50_ms": float(np.median(single[b])), "single_p90_ms": float(np.percentile(single[b], 90)),
                  "batch32_per_s": float(np.median(batched[b])), "batch32_per_s_rounds": batched[b],
                  "cosine_to_torch": None if cosine is None else {"mean": float(cosine.mean()), "min": float(cosine.min())}}
        log.info("%s: %s", b, {k: v for k, v in out[b].items() if k != "batch32_per_s_rounds"})
    return out


def chunking(backends, prompts: list[str], models_dir: Path, chunks: list[int], rounds: int, threads: int = 1) -> dict:
    """Per backend and chunk size: prompts/s embedding groups of 32 prompts in length-sorted chunks of that size, as
    an embedding replica embeds a batch (EmbeddingConfig.embed_batch_size), on `threads` threads, rounds interleaved."""
    embedders = _embedders(backends, models_dir, threads)
    rates: dict = {b: {c: [] for c in chunks} for b in backends}
    for r in range(rounds):
        for b in backends[r % 2:] + backends[:r % 2]:
            for c in chunks:
                t = time.perf_counter()
                for i in range(0, len(prompts), 32):
                    embedders[b].embed(prompts[i:i + 32], batch_size=c)
                rates[b][c].append(len(prompts) / (time.perf_counter() - t))
    out = {b: {str(c): float(np.median(v)) for c, v in per.items()} for b, per in rates.items()}
    log.info("chunks: %s", out)
    return out


def quality(backends, root: Path, torch_home: str | None, data_dir: str | None, resamples: int) -> dict:
    from models import pipeline
    from models.base import DEFAULT_STRONG, DEFAULT_WEAK
    from models.benchmarks import DEV_BENCHMARKS, load_benchmark
    from models.metrics import bootstrap_curves, p_greater, percentile_interval, summarize
    from models.obvious import auc, load_obvious

    obvious = load_obvious()
    hard = obvious["is_hard"].to_numpy()
    balanced = obvious["balanced"].to_numpy(dtype=bool)
    scores, prepare_s = {}, {}
    for backend in backends:
        home = torch_home if backend == "torch" and torch_home else str(root / backend)
        ws = pipeline.workspace(home, data_dir, embedder_name(backend), log.info)
        start = time.perf_counter()
        pipeline.training_data(ws)
        for name in ROUTERS:
            pipeline.ensure_trained(ws, name)
        prepare_s[backend] = time.perf_counter() - start
        benches = {name: load_benchmark(name, ws.data()) for name in DEV_BENCHMARKS}
        scores[backend] = {}
        for name in ROUTERS:
            per = {}
            for bench_name, bench in benches.items():
                router = pipeline.load(ws, name, strong=bench.strong_model, weak=bench.weak_model)
                per[bench_name] = np.asarray(router.score(bench.prompts))
            router = pipeline.load(ws, name, strong=DEFAULT_STRONG, weak=DEFAULT_WEAK)
            per["obvious"] = np.asarray(router.score(obvious["prompt"].tolist()))
            scores[backend][name] = per
        log.info("%s: home ready in %.0fs", backend, prepare_s[backend])
    out = {b: {"prepare_s": prepare_s[b], "home_reused": b == "torch" and bool(torch_home), "routers": {}} for b in backends}
    for backend in backends:
        for name in ROUTERS:
            rows = {}
            for bench_name, bench in benches.items():
                p, ref = scores[backend][name][bench_name], scores["torch"][name][bench_name]
                curves = bootstrap_curves([p, ref], bench.strong, bench.weak, resamples, seed=0)
                rows[bench_name] = {"apgr": summarize(p, bench.strong, bench.weak)["apgr"],
                                    "interval": percentile_interval(curves.apgr[0]),
                                    "p_gt_torch": p_greater(curves.apgr[0], curves.apgr[1])}
            p, ref = scores[backend][name]["obvious"], scores["torch"][name]["obvious"]
            for label, mask in (("obvious", np.ones(len(hard), bool)), ("obvious_balanced", balanced)):
                idx = np.flatnonzero(mask)
                boot = idx[np.random.default_rng(0).integers(0, len(idx), size=(resamples, len(idx)))]
                draws = [auc(p[b], hard[b]) for b in boot]
                ref_draws = [auc(ref[b], hard[b]) for b in boot]
                rows[label] = {"auc": auc(p[idx], hard[idx]), "interval": percentile_interval(np.asarray(draws)),
                               "p_gt_torch": p_greater(np.asarray(draws), np.asarray(ref_draws))}
            out[backend]["routers"][name] = rows
    return out


def main(argv: list[str] | None = None) -> int:
    from models import pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/embedder_backends.json"))
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--quality-backends", help="backends whose quality is measured (default: --backends)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--root", type=Path, default=Path("artifacts-backends"),
                        help="a home per backend is built here (git-ignored)")
    parser.add_argument("--torch-home", help="an existing home prepared with the torch embedder (default: the usual home)")
    parser.add_argument("--data-dir")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--chunks", help="comma list of chunk sizes: measure only how each backend embeds a batch "
                        "of 32 in chunks of each size")
    parser.add_argument("--threads", type=int, default=1, help="with --chunks: threads of each embedder (default 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if "torch" not in backends:
        backends.insert(0, "torch")
    started = time.time()
    ws = pipeline.workspace(args.torch_home, args.data_dir)
    prompts = _sample_prompts(ws.data())
    record = {"command": "python -m loadtest.embedder_backends " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {_cores()} cores, no GPU",
              "prompts_timed": len(prompts)}
    if args.chunks:
        record["chunks"] = chunking(backends, prompts, args.root / "embedders",
                                    [int(c) for c in args.chunks.split(",")], args.rounds, args.threads)
    else:
        record["speed"] = speed(backends, prompts, args.root / "embedders", args.rounds)
    if not args.skip_quality and not args.chunks:
        chosen = [b.strip() for b in (args.quality_backends or args.backends).split(",") if b.strip()]
        record["quality"] = quality(["torch"] + [b for b in chosen if b != "torch"], args.root, args.torch_home,
                                    args.data_dir, args.resamples)
    record["seconds"] = round(time.time() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


def _sample_prompts(data: Path, n: int = 320) -> list[str]:
    """Dev-benchmark prompts, a fixed sample: lengths as routed traffic has them."""
    from models.benchmarks import DEV_BENCHMARKS, load_benchmark

    prompts = [p for name in DEV_BENCHMARKS for p in load_benchmark(name, data).prompts]
    return [prompts[i] for i in np.random.default_rng(0).permutation(len(prompts))[:n]]


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
