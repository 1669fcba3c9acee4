"""Measurements behind the targets BENCHMARKS.md reports as not met (issue 9).

1. faithful-cot-dev: what MiniLM embeddings carry for the pair with its own labels on the same split (k-NN over
   Faithful-CoT's train prompts, ridge on the embedding, ridge on embedding + log length), beside length.
2. The obvious-prompts check: mean p_strong of the served router (`sw_ranking` from <home>/routers) per kind.

    python -m loadtest.quality_probes --out benchmarks/quality_probes.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _ridge(train_x: np.ndarray, y: np.ndarray, test_x: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    a = np.hstack([train_x, np.ones((len(train_x), 1))])
    b = np.hstack([test_x, np.ones((len(test_x), 1))])
    return b @ np.linalg.solve(a.T @ a + alpha * np.eye(a.shape[1]), a.T @ y)


def faithful_probes(data: Path, embedder) -> dict:
    from models import data as training
    from models.benchmarks import load_benchmark
    from models.metrics import summarize

    bench = load_benchmark("faithful-cot-dev", data)
    scores = training.correctness_scores(training.faithful_cot_matrices(data))
    train_side = scores[~training.is_dev(scores["key"].tolist())]
    wide = train_side.pivot_table(index="prompt", columns="model", values="score")
    wide = wide[[bench.strong_model, bench.weak_model]].dropna()
    gain = (wide[bench.strong_model] - wide[bench.weak_model]).to_numpy()
    train_x, test_x = embedder.embed(wide.index.tolist()), embedder.embed(bench.prompts)
    log_len = lambda prompts: np.log([len(p) for p in prompts])[:, None]  # noqa: E731
    apgr = lambda p: summarize(p, bench.strong, bench.weak)["apgr"]  # noqa: E731
    nearest = np.argsort(-(test_x @ train_x.T), axis=1)
    out = {f"knn{k}": apgr(gain[nearest[:, :k]].mean(axis=1)) for k in (25, 100, 400)}
    out["ridge_embedding"] = apgr(_ridge(train_x, gain, test_x))
    out["ridge_embedding_log_length"] = apgr(_ridge(np.hstack([train_x, log_len(wide.index)]), gain,
                                                     np.hstack([test_x, log_len(bench.prompts)])))
    out["length"] = apgr(log_len(bench.prompts)[:, 0])
    out["n_train"], out["n_dev"] = len(wide), len(bench)
    return out


def obvious_by_kind(home: Path, embedder) -> dict:
    from models.obvious import load_obvious
    from models.sw_ranking import SWRankingRouter

    router = SWRankingRouter.from_artifacts(home / "routers", embedder=embedder)
    frame = load_obvious()
    frame["p_strong"] = router.score(frame["prompt"].tolist())
    means = frame.groupby(["label", "kind"])["p_strong"].mean().sort_values()
    return {"gamma": router.gamma, "mean_p_strong": {f"{label}/{kind}": round(float(v), 4) for (label, kind), v in means.items()}}


def main(argv: list[str] | None = None) -> None:
    from index.embedder import DEFAULT_EMBEDDER, load_embedder
    from index.paths import artifacts_dir, data_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/quality_probes.json"))
    args = parser.parse_args(argv)
    home = artifacts_dir(None)
    embedder = load_embedder(DEFAULT_EMBEDDER, cache_dir=home / "embeddings", models_dir=home / "embedders")
    report = {"faithful_cot_dev_apgr": faithful_probes(data_dir(None), embedder),
              "obvious_sw_ranking": obvious_by_kind(home, embedder)}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
