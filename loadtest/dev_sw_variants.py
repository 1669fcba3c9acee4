"""SW variants tried against the obvious-prompts miss, scored on the dev benchmarks and the obvious check.

With battle weighting the SW router put easy arithmetic and unit conversions above most hard prompts
(BENCHMARKS.md "Choices" and "Against the targets"). Three changes to the kernel or the fit, each a plausible fix,
are measured here with the served data, tiers and tie rule (nothing is retrained; the prompt weighting and the
tier window 0 won and are served):

- `length_penalty` λ: similarity S_i − λ·|log(1 + words_q) − log(1 + words_i)| in the weight γ^(1 + S'/max S'),
  so that neighbours are also alike in length (within a topic, longer word problems take more steps).
- `tier_window` m: fit Bradley–Terry only over the tiers from the pair's upper tier − m to its lower tier + m,
  so that battles of far weaker models (code-davinci-001 in Faithful-CoT) do not move the pair's gap.
- `prompt_weighting`: "battles" (the paper's: a prompt weighs by its battle count) or "prompt" (served since it
  won here: every prompt's tier counts scaled to the mean battle count, `bradley_terry.equal_prompt_weight`).
  A correctness source turns n model runs on one question into n(n−1)/2 battles, so an MMLU-Pro or Faithful-CoT
  question (30+ runs) outweighs a RouterDC one (7 runs) twentyfold in the kernel, though each is one question;
  "prompt" makes the kernel weigh questions, as it does for Arena data.

It also writes, per prompt weighting, each obvious-prompt kind's mean p_strong and the share of its weight in the
fit (kernel weight × the prompt's counted battles) that each training source carries (what "their neighbours are
word problems" rests on).

    python -m loadtest.dev_sw_variants --out benchmarks/dev_sw_variants.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
from pathlib import Path

import numpy as np

from models import bradley_terry
from models.sw_ranking import SWRankingRouter

log = logging.getLogger(__name__)


def log_words(texts: list[str]) -> np.ndarray:
    return np.log1p(np.array([len(t.split()) for t in texts], dtype=np.float32))


class SWVariant(SWRankingRouter):
    """SWRankingRouter (exact mode) with a length penalty in the kernel."""

    def __init__(self, *args, prompt_log_words: np.ndarray, length_penalty: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.prompt_log_words, self.length_penalty = prompt_log_words, length_penalty

    def score_prompts(self, prompts: list[str]) -> np.ndarray:
        return self.p_strong(self.embedder.embed(prompts), log_words(prompts))

    def weights(self, queries: np.ndarray, query_log_words: np.ndarray) -> np.ndarray:
        """The served kernel γ^(1 + S'/max S') over every indexed prompt, S' = S less the length penalty."""
        sims = queries.astype(np.float32) @ self._all_vectors.T
        if self.length_penalty:
            sims = sims - self.length_penalty * np.abs(query_log_words[:, None] - self.prompt_log_words[None])
        return self.gamma ** (1.0 + sims / np.maximum(sims.max(axis=1, keepdims=True), 1e-6))

    def p_strong(self, queries: np.ndarray, query_log_words: np.ndarray) -> np.ndarray:
        n_prompts, n_tiers = self.counts.shape[:2]
        out = np.empty(len(queries))
        for start in range(0, len(queries), self.batch_size):
            batch = slice(start, start + self.batch_size)
            weights = self.weights(queries[batch], query_log_words[batch])
            out[batch] = self.pair_p_strong((weights @ self.counts.reshape(n_prompts, -1)).reshape(-1, n_tiers, n_tiers))
        return out


PROMPT_WEIGHTINGS = {"battles": lambda counts: counts, "prompt": bradley_terry.equal_prompt_weight}


def neighbour_sources(router: SWVariant, prompt_sources: np.ndarray, prompts: list[str],
                      kinds: list[str]) -> dict[str, dict[str, float]]:
    """Per kind of prompt: its mean p_strong and the share of its weight in the fit that each source carries."""
    queries, lengths = router.embedder.embed(prompts), log_words(prompts)
    weights = router.weights(queries, lengths) * router.counts.sum(axis=(1, 2))[None]
    weights /= weights.sum(axis=1, keepdims=True)
    p_strong = router.p_strong(queries, lengths)
    kinds_arr = np.asarray(kinds)
    out = {}
    for kind in sorted(set(kinds), key=lambda k: p_strong[kinds_arr == k].mean()):
        rows = kinds_arr == kind
        out[kind] = {"p_strong": float(p_strong[rows].mean()), **{
            source: float(weights[rows][:, prompt_sources == source].sum(axis=1).mean())
            for source in sorted(set(prompt_sources))}}
    return out


def main(argv: list[str] | None = None) -> None:
    from index.store import VectorStore
    from models import pipeline
    from models.base import DEFAULT_STRONG, DEFAULT_WEAK
    from models.benchmarks import DEV_BENCHMARKS, load_benchmark
    from models.metrics import summarize
    from models.obvious import auc, load_obvious

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/dev_sw_variants.json"))
    parser.add_argument("--gammas", type=float, nargs="+", default=[1e3, 1e4])
    parser.add_argument("--length-penalties", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    parser.add_argument("--tier-windows", type=int, nargs="+", default=[-1, 0, 2, 5], help="-1: every tier (served)")
    parser.add_argument("--prompt-weightings", nargs="+", default=["battles"], choices=sorted(PROMPT_WEIGHTINGS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    ws = pipeline.workspace()
    td = pipeline.training_data(ws)  # the served data and tiers (`turnout data build`)
    prompts, counts = bradley_terry.prompt_tier_counts(td.battles, td.tiers, td.n_tiers)
    prompts = list(prompts)
    vectors = ws.embedder.embed(prompts)
    store = VectorStore.build(vectors, embedder=ws.embedder.name)
    benches = {name: load_benchmark(name, ws.data()) for name in DEV_BENCHMARKS}
    obvious = load_obvious()
    hard = obvious["is_hard"].to_numpy()
    balanced = obvious["balanced"].to_numpy(dtype=bool)
    pairs = {name: (b.strong_model, b.weak_model) for name, b in benches.items()}
    pairs["obvious"] = (DEFAULT_STRONG, DEFAULT_WEAK)
    routers = {name: SWVariant(store, counts, vectors.astype(np.float64).sum(axis=0), td.tiers, ws.embedder,
                               strong=strong, weak=weak, prompt_log_words=log_words(prompts), difficulty_k=0)
               for name, (strong, weak) in pairs.items()}
    family = td.battles.drop_duplicates("prompt").set_index("prompt")["source"].str.split("/").str[0]
    weighted = {w: PROMPT_WEIGHTINGS[w](counts).astype(np.float32) for w in args.prompt_weightings}
    served = routers["obvious"]  # still at the served γ and tier window, no length penalty
    sources = {}
    for weighting in args.prompt_weightings:
        served.counts = weighted[weighting]
        sources[weighting] = neighbour_sources(served, family.loc[prompts].to_numpy(), obvious["prompt"].tolist(),
                                               (obvious["label"] + "/" + obvious["kind"]).tolist())
    rows = []
    for weighting, gamma, penalty, window in itertools.product(args.prompt_weightings, args.gammas,
                                                               args.length_penalties, args.tier_windows):
        row = {"prompt_weighting": weighting, "gamma": gamma, "length_penalty": penalty,
               "tier_window": None if window < 0 else window, "apgr": {}}
        for router in routers.values():
            router.gamma, router.length_penalty, router.tier_window = gamma, penalty, row["tier_window"]
            router.counts = weighted[weighting]
        for name, bench in benches.items():
            row["apgr"][name] = summarize(routers[name].score_prompts(bench.prompts), bench.strong, bench.weak)["apgr"]
        row["mean_dev_apgr"] = float(np.mean(list(row["apgr"].values())))
        p = routers["obvious"].score_prompts(obvious["prompt"].tolist())
        row["obvious_auc"], row["obvious_auc_balanced"] = auc(p, hard), auc(p[balanced], hard[balanced])
        log.info("%s", row)
        rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = "python -m loadtest.dev_sw_variants " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.write_text(json.dumps({"command": command, "rows": rows, "fit_share_by_source": sources}, indent=1) + "\n")


if __name__ == "__main__":
    main()
