"""Similarity-weighted (SW) ranking router (RouteLLM, Ong et al. 2024, arXiv 2406.18665, §4.1).

For a query q with cosine similarity S_i to training prompt i, every battle on prompt i gets weight
w_i = γ^(1 + S_i / max_j S_j) (RouteLLM: γ = 10; here GAMMA), a Bradley–Terry model over strength tiers is fitted to the weighted
battles, and p_strong = σ(ξ_tier(strong) − ξ_tier(weak)).

RouteLLM refits sklearn per query over every battle (2.9 req/s on 8 CPUs). Two observations make it fast here:
1. Battles only enter the fit through per-prompt tier win counts C_i (T×T), so the weighted win matrix is
   Σ_i w_i C_i over unique prompts, not battles.
2. FAISS returns the k most similar prompts. The others get one shared weight, the weight at their mean
   similarity, which is exact to compute: Σ_all S_i = q·Σ_all e_i. So
       W = w_rest·C_total + Σ_{i∈top-k} (w_i − w_rest)·C_i,
   and with k = all prompts this is the exact weighted fit of the paper's method (a test checks it against a
   brute-force refit). k = None (the default) is that exact fit; it costs one (B × P)·(P × T²) matmul per
   batch, cheap for the ~10k prompts here. Set k for indexes of millions of prompts, where top-k keeps the
   cost per query flat.
The small T×T fits for a whole batch are a few vectorised Newton steps (`models.bradley_terry`).

Prompt weighting. The paper weights every battle by its prompt's similarity alone, so a prompt counts as often
as it was fought over. The sources differ there by an order of magnitude: a correctness source (MMLU-Pro,
Faithful-CoT) turns n runs on one question into n(n-1)/2 battles, an arena prompt has one or two. Unscaled, an
easy chat prompt's nearest neighbours are outvoted by the few exam questions in its kernel, which is why short
easy prompts went strong. `train` scales each prompt's tier counts to the mean battle count
(`bradley_terry.equal_prompt_weight`), so the fit is the paper's with each battle also weighted by
mean / (its prompt's battle count). The choice was made on the dev benchmarks (`loadtest/dev_sw_variants.py
--prompt-weightings`, BENCHMARKS.md).

Difficulty (issue 22). The Bradley–Terry fit says how far apart the pair's tiers are near a query, not whether
the query is easy: on correctness data "both right" and "both wrong" are the same tie, and on an easy prompt
that both models answer the strong one is wasted however large the gap. So the gap ξ_strong − ξ_weak is read as
the ability gap of the Rasch model (models/irt.py), the query's difficulty b is the mean fitted difficulty of its
`difficulty_k` nearest training prompts that have correctness scores, and

    p_strong = 1/2 + (σ(θ_weak + ξ_strong − ξ_weak − b) − σ(θ_weak − b)) / 2

with θ_weak the weak model's fitted ability: P(strong wins) + P(tie)/2 with the two answers independent given
the prompt. `difficulty_k` = 0 is the paper's p_strong = σ(ξ_strong − ξ_weak), which is also what an artifact
trained on preference battles alone serves (its manifest says `difficulty: none`). The neighbour count was chosen
on the dev benchmarks and the first two obvious-prompt files (`loadtest/dev_sw_difficulty.py`, BENCHMARKS.md).

The exact mode follows the paper, not RouteLLM's released code, and the two differ on same-tier battles.
turnout leaves them out (`bradley_terry.tier_battles`): a battle inside one tier says nothing about the gap
between tiers. RouteLLM's code keeps them in its logistic regression, and because it writes model_a's +ln10
and then model_b's −ln10 into the columns of their tiers, a same-tier row ends up with one −ln10 entry: a game
of that tier against a fixed anchor, which pulls the tier toward the anchor. With the same-tier battles removed
from its input the two agree closely; `loadtest/routellm_compare.py` measures both cases against the installed
routellm package, and BENCHMARKS.md has the figures.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models import bradley_terry, irt
from models.base import DEFAULT_STRONG, DEFAULT_WEAK, Router
from index.errors import ArtifactError, ConfigError
from index.paths import atomic_dir

log = logging.getLogger(__name__)

# RouteLLM's γ is 10: the nearest prompt then weighs at most 10x the farthest, and over ~15k training prompts
# from six sources the fit is nearly global (p_strong hardly moves between prompts). γ was chosen on the dev
# benchmarks together with the tier count (loadtest/dev_choices.py, BENCHMARKS.md): the mean dev APGR is nearly
# flat in γ, while the obvious-prompts check needs some locality and loses it again when γ is very large.
GAMMA = 1e3
# The Bradley–Terry fit covers the tiers from the pair's upper one − TIER_WINDOW to its lower one + TIER_WINDOW
# (None: every tier). With 0, battles of far weaker models (Faithful-CoT's code-davinci-001, tiers below the weak
# model) do not move the pair's gap. Chosen on the dev benchmarks with the prompt weighting (BENCHMARKS.md).
TIER_WINDOW: int | None = 0
# How `train` weights the per-prompt counts (module docstring), recorded in the manifest and checked on load.
PROMPT_WEIGHTING = "equal"
# Neighbours whose mean difficulty is the query's (module docstring, "Difficulty"); 0 turns it off.
DIFFICULTY_K = 64
# How `train` fits difficulties, recorded in the manifest and checked on load; NO_DIFFICULTY when the training data
# has no correctness scores (preference battles only), and the artifact then serves the paper's p_strong.
DIFFICULTY = "rasch-1pl"
NO_DIFFICULTY = "none"
# Past k ≥ P / DENSE_FRACTION neighbours a dense (B × P) weight matrix and one matmul beat gathering k count rows.
DENSE_FRACTION = 8


class SWRankingRouter(Router):
    name = "sw_ranking"

    def __init__(self, store, counts: np.ndarray, embedding_sum: np.ndarray, tiers: dict[str, int], embedder=None, *,
                 difficulty: np.ndarray | None = None, abilities: dict[str, float] | None = None,
                 strong: str = DEFAULT_STRONG, weak: str = DEFAULT_WEAK, gamma: float = GAMMA, k: int | None = None,
                 tier_window: int | None = TIER_WINDOW, difficulty_k: int = DIFFICULTY_K, l2: float = 1e-2,
                 n_steps: int = 8, batch_size: int = 64) -> None:
        self.store = store
        self.embedder = embedder
        self.counts = counts.astype(np.float32)  # float32 halves the gather traffic; sums stay float64
        self.total = counts.sum(axis=0)
        self.tiers = tiers
        for role, model in (("strong", strong), ("weak", weak)):
            if model not in tiers:
                raise ConfigError(f"{role} model {model!r} is not in the tier table (known: {len(tiers)} models)")
        self.strong_tier, self.weak_tier = tiers[strong], tiers[weak]
        if self.strong_tier == self.weak_tier:
            raise ConfigError(f"strong {strong!r} and weak {weak!r} share tier {self.strong_tier}; SW cannot tell them apart")
        if tier_window is not None and (not isinstance(tier_window, int) or tier_window < 0):
            raise ConfigError(f"tier_window must be a whole number ≥ 0 or null (every tier), got {tier_window}")
        self.gamma, self.k, self.tier_window = gamma, k, tier_window
        if not isinstance(difficulty_k, int) or difficulty_k < 0:
            raise ConfigError(f"difficulty_k must be a whole number ≥ 0 (0: no difficulty), got {difficulty_k}")
        self.difficulty_k = difficulty_k
        if difficulty_k:
            if difficulty is None or abilities is None:
                raise ConfigError("difficulty_k > 0 needs the fitted difficulties and abilities (set it to 0 for the "
                                  "paper's p_strong)")
            self.difficulty = np.asarray(difficulty, dtype=np.float64)
            if weak not in abilities:
                raise ConfigError(f"weak model {weak!r} has no correctness data to fit its ability on; set "
                                  "routers.options.sw_ranking.difficulty_k to 0 for the paper's p_strong")
            self.ability_weak = float(abilities[weak])
            self.mean_difficulty = float(np.nanmean(self.difficulty)) if np.isfinite(self.difficulty).any() else 0.0
        self.l2, self.n_steps, self.batch_size = l2, n_steps, batch_size
        # Σ of all indexed prompt embeddings: gives the exact mean similarity of the prompts outside the top-k.
        self.embedding_sum = np.asarray(embedding_sum, dtype=np.float64)
        # The exact scan needs every indexed vector; load them now so the first request does not pay for it.
        self._all_vectors = np.ascontiguousarray(store.vectors(), dtype=np.float32) if k is None else None

    # ------------------------------------------------------------------------------------------ scoring

    def _score(self, prompts: list[str]) -> np.ndarray:
        if self.embedder is None:
            raise ConfigError("this SW router was built without an embedder; use score_embeddings()")
        return self.score_embeddings(self.embedder.embed(prompts, batch_size=self.batch_size))

    def win_matrices(self, queries: np.ndarray) -> np.ndarray:
        """Weighted tier win matrices (B, T, T) for unit-norm query embeddings (B, d)."""
        return self._wins_and_nearest(queries, 0)[0]

    def _wins_and_nearest(self, queries: np.ndarray, n_nearest: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The win matrices and, from the same similarities where they hold them, the ids of each query's
        `n_nearest` most similar training prompts (None for 0), so that the difficulty costs no second search."""
        n_prompts, n_tiers = len(self.counts), self.counts.shape[1]
        if self.k is None or self.k >= n_prompts:
            # Exact: every similarity, no top-k sort.
            if self._all_vectors is None:
                self._all_vectors = np.ascontiguousarray(self.store.vectors(), dtype=np.float32)
            sims = queries.astype(np.float32) @ self._all_vectors.T
            weights = self.gamma ** (1.0 + sims / np.maximum(sims.max(axis=1, keepdims=True), 1e-6))
            wins = (weights @ self.counts.reshape(n_prompts, -1)).reshape(-1, n_tiers, n_tiers).astype(np.float64)
            if not n_nearest:
                return wins, None
            if n_nearest >= n_prompts:
                return wins, np.broadcast_to(np.arange(n_prompts), (len(queries), n_prompts))
            return wins, np.argpartition(-sims, n_nearest - 1, axis=1)[:, :n_nearest]
        sims, ids = self.store.search(queries, max(self.k, n_nearest))
        nearest = ids[:, :n_nearest] if n_nearest else None  # the search returns them most similar first
        sims, ids = sims[:, :self.k], ids[:, :self.k]
        # An approximate index (IVF, HNSW) may return fewer than k hits: empty slots come back as id -1 with a
        # similarity of -3.4e38. They are not neighbours: those prompts count with the rest at the shared weight.
        found = ids >= 0
        sims = np.where(found, sims.astype(np.float64), 0.0)
        ids = np.where(found, ids, 0)
        n_found = found.sum(axis=1)
        top = np.where(found, sims, -np.inf).max(axis=1, keepdims=True)
        s_max = np.maximum(np.where(np.isfinite(top), top, 0.0), 1e-6)  # a query orthogonal to everything: all γ
        weights = self.gamma ** (1.0 + sims / s_max)
        rest_mean = (queries.astype(np.float64) @ self.embedding_sum - sims.sum(axis=1)) / np.maximum(n_prompts - n_found, 1)
        w_rest = self.gamma ** (1.0 + rest_mean[:, None] / s_max)
        delta = np.where(found, weights - w_rest, 0.0).astype(np.float32)
        k = ids.shape[1]
        if DENSE_FRACTION * k >= n_prompts:
            dense = np.zeros((len(queries), n_prompts), dtype=np.float32)
            # add, not put: an empty slot's id 0 (delta 0) must not overwrite a real neighbour 0's weight
            np.add.at(dense, (np.arange(len(queries))[:, None], ids), delta)
            local = dense @ self.counts.reshape(n_prompts, -1)
        else:
            local = np.einsum("bk,bkn->bn", delta, self.counts.reshape(n_prompts, -1)[ids])
        return w_rest[:, :, None] * self.total[None] + local.reshape(-1, n_tiers, n_tiers), nearest

    def score_embeddings(self, queries: np.ndarray) -> np.ndarray:
        out = np.empty(len(queries))
        for start in range(0, len(queries), self.batch_size):
            batch = queries[start: start + self.batch_size]
            wins, nearest = self._wins_and_nearest(batch, self.difficulty_k)
            p = self.pair_p_strong(wins)
            if self.difficulty_k:
                p = np.clip(p, 1e-12, 1 - 1e-12)
                gap = np.log(p) - np.log1p(-p)
                p = irt.pair_p_strong(self.ability_weak, gap, self._mean_difficulty(nearest))
            out[start: start + self.batch_size] = p
        return out

    def query_difficulty(self, queries: np.ndarray) -> np.ndarray:
        """Mean difficulty of each query's `difficulty_k` nearest training prompts that have one (their overall
        mean where none of them has), by a search of its own (`score_embeddings` takes them from its scan)."""
        return self._mean_difficulty(self.store.search(queries, self.difficulty_k)[1])

    def _mean_difficulty(self, ids: np.ndarray) -> np.ndarray:
        near = np.where(ids >= 0, self.difficulty[np.maximum(ids, 0)], np.nan)
        known = np.isfinite(near)
        total = np.where(known, near, 0.0).sum(axis=1)
        return np.where(known.any(axis=1), total / np.maximum(known.sum(axis=1), 1), self.mean_difficulty)

    def pair_p_strong(self, wins: np.ndarray) -> np.ndarray:
        """p_strong from weighted tier win matrices (B, T, T): Bradley–Terry over the pair's tier window only."""
        lo, hi = self.tier_range
        xi = bradley_terry.fit(np.ascontiguousarray(wins[:, lo:hi + 1, lo:hi + 1], dtype=np.float64), self.l2, self.n_steps)
        return 1.0 / (1.0 + np.exp(-(xi[:, self.strong_tier - lo] - xi[:, self.weak_tier - lo])))

    @property
    def tier_range(self) -> tuple[int, int]:
        """(first, last) tier in the fit: from the pair's upper tier − tier_window to its lower tier + tier_window."""
        n_tiers = self.counts.shape[1]
        if self.tier_window is None:
            return 0, n_tiers - 1
        upper, lower = sorted((self.strong_tier, self.weak_tier))
        return max(upper - self.tier_window, 0), min(lower + self.tier_window, n_tiers - 1)

    # ----------------------------------------------------------------------------------------- artifacts

    @classmethod
    def from_artifacts(cls, root: Path, embedder=None, **options) -> "SWRankingRouter":
        from index.store import VectorStore

        folder = Path(root) / "sw_ranking"
        store = VectorStore.load(folder, embedder=getattr(embedder, "name", None))
        for key, values, what in (("prompt_weighting", (PROMPT_WEIGHTING,), "per-prompt weighting"),
                                  ("difficulty", (DIFFICULTY, NO_DIFFICULTY), "item difficulties")):
            if store.manifest.get(key) not in values:  # built by an older turnout
                raise ArtifactError(f"SW artifact at {folder} was built without {what} by an older turnout; "
                                    "rebuild with `turnout train sw_ranking`")
        if store.manifest["difficulty"] == NO_DIFFICULTY:  # trained on preference data alone (`train`)
            options.setdefault("difficulty_k", 0)
        try:
            counts = np.load(folder / "counts.npy")
            embedding_sum = np.load(folder / "embedding_sum.npy")
            tiers = json.loads((folder / "tiers.json").read_text())
            options = {"difficulty": np.load(folder / "difficulty.npy"),
                       "abilities": json.loads((folder / "abilities.json").read_text()), **options}
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"SW artifact at {folder} is incomplete or corrupted ({type(exc).__name__}); rebuild with `turnout train sw_ranking`") from exc
        if (counts.ndim != 3 or len(counts) != store.ntotal or embedding_sum.shape != (store.dim,)
                or options["difficulty"].shape != (store.ntotal,)):
            raise ArtifactError(f"SW artifact at {folder} is inconsistent (counts {counts.shape}, index {store.ntotal}); rebuild it")
        return cls(store, counts, embedding_sum, tiers, embedder, **options)


@dataclass
class SWConfig:
    factory: str = "Flat"  # FAISS index factory string: Flat (exact), or IVF/HNSW for millions of prompts


def train(td, embedder, out_root: Path, config: SWConfig | None = None, progress: bool = True) -> Path:
    """Build the SW artifact: FAISS index of unique training prompts + per-prompt tier win counts."""
    from index.store import VectorStore

    config = config or SWConfig()
    prompts, counts = bradley_terry.prompt_tier_counts(td.battles, td.tiers, td.n_tiers)
    n_battles = int(round(counts.sum()))
    # One prompt, one vote (module docstring, "Prompt weighting"): a correctness source turns n runs on a question
    # into n(n-1)/2 battles, and unscaled, those questions outweigh a chat prompt many times over in every kernel sum.
    counts = bradley_terry.equal_prompt_weight(counts)
    log.info("SW: %d battles across tiers on %d unique prompts", n_battles, len(prompts))
    vectors = embedder.embed(list(prompts), progress=progress, what="training prompts for sw_ranking's index")
    rasch = irt.fit(td.scores)
    difficulty = rasch.difficulty.reindex(prompts).to_numpy(dtype=np.float64)  # NaN: no correctness scores
    if rasch.ability.empty:
        log.warning("SW: the training data has no correctness scores, so no prompt has a difficulty: the artifact "
                    "serves the paper's p_strong (manifest difficulty: %s)", NO_DIFFICULTY)
    else:
        log.info("SW: item difficulties for %d of %d prompts, abilities of %d models", np.isfinite(difficulty).sum(),
                 len(prompts), len(rasch.ability))
    store = VectorStore.build(vectors, embedder=embedder.name, factory=config.factory,
                              data_hash=td.report.get("data_hash", ""),
                              extra={"router": "sw_ranking", "battles": n_battles, "n_tiers": td.n_tiers,
                                     "prompt_weighting": PROMPT_WEIGHTING,
                                     "difficulty": NO_DIFFICULTY if rasch.ability.empty else DIFFICULTY})
    folder = Path(out_root) / "sw_ranking"
    with atomic_dir(folder) as tmp:
        np.save(tmp / "counts.npy", counts.astype(np.float32))
        np.save(tmp / "embedding_sum.npy", vectors.astype(np.float64).sum(axis=0))
        (tmp / "tiers.json").write_text(json.dumps(td.tiers, indent=1))
        np.save(tmp / "difficulty.npy", difficulty)
        (tmp / "abilities.json").write_text(json.dumps({m: round(float(v), 4) for m, v in rasch.ability.items()}, indent=1))
        store.save(tmp)  # the manifest, written last by the store, marks the folder complete
    return folder
