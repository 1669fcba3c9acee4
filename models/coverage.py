"""How well training prompts cover a sample of traffic: RouteLLM's benchmark–dataset similarity (arXiv 2406.18665, §5.2).

For benchmark prompts b_1..b_n and training prompts d_1..d_m with embeddings ε,

    S(B, D) = (1/n) Σ_i max_j cos(ε_{b_i}, ε_{d_j}),

the mean over the traffic of each prompt's nearest training neighbour. The paper finds that routers gain most where
S is high (its Arena + judge-augmented data scores highest on MT-Bench, where its routers do best). Here S is
computed per training source and over all of them, together with the share of prompts whose nearest training prompt
is below cosine `LOW_COSINE`: prompts the training data hardly speaks about, where in-domain labels help most.
Free functions over arrays, in the manner of faiss `contrib`; the search is an exact chunked matmul (cosine of
unit rows = inner product), so the numbers do not depend on an index's approximation.
"""

from __future__ import annotations

import numpy as np

from index.errors import InputError

LOW_COSINE = 0.5
CHUNK_BYTES = 1 << 27  # ~128 MiB of float32 similarities per block


def _unit(rows: np.ndarray, what: str) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim != 2:
        raise InputError(f"{what} must be a 2-d array (rows = vectors), got shape {rows.shape}")
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)  # cosine, whatever the scale; an all-zero row stays zero


def nearest(queries: np.ndarray, keys: np.ndarray, chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For each query row: the maximum cosine similarity to any key row, and that key's index."""
    queries, keys = _unit(queries, "queries"), _unit(keys, "keys")
    if len(keys) == 0:
        raise InputError("no key vectors to compare with")
    if queries.shape[1] != keys.shape[1]:
        raise InputError(f"queries have dimension {queries.shape[1]}, keys {keys.shape[1]}")
    chunk = chunk or max(1, CHUNK_BYTES // (4 * len(keys)))
    best = np.empty(len(queries), dtype=np.float64)
    index = np.empty(len(queries), dtype=np.int64)
    for start in range(0, len(queries), chunk):
        sims = queries[start: start + chunk] @ keys.T
        index[start: start + chunk] = sims.argmax(axis=1)
        best[start: start + chunk] = sims[np.arange(len(sims)), index[start: start + chunk]]
    return best, index


def nearest_by_source(prompt_vectors: np.ndarray, train_vectors_by_source: dict[str, np.ndarray],
                      chunk: int | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(sources, similarity (n, S), index (n, S)): each prompt's nearest training prompt within every source."""
    if len(prompt_vectors) == 0:
        raise InputError("no prompts to measure coverage for")
    sources = [s for s, v in train_vectors_by_source.items() if len(v)]
    if not sources:
        raise InputError("no training vectors in any source")
    pairs = [nearest(prompt_vectors, train_vectors_by_source[s], chunk) for s in sources]
    return sources, np.stack([p[0] for p in pairs], axis=1), np.stack([p[1] for p in pairs], axis=1)


def summarize(similarity: np.ndarray, low: float = LOW_COSINE) -> dict[str, float]:
    """Coverage score (mean nearest-neighbour cosine), share below `low`, and quantiles of a similarity vector."""
    similarity = np.asarray(similarity, dtype=np.float64)
    return {
        "score": float(similarity.mean()),
        "share_below": float((similarity < low).mean()),
        "p10": float(np.quantile(similarity, 0.1)),
        "median": float(np.median(similarity)),
    }


def summarize_nearest(sources: list[str], similarity: np.ndarray, n_train: dict[str, int],
                      low: float = LOW_COSINE) -> dict:
    """The coverage report of `nearest_by_source`'s output: overall and per source."""
    overall = similarity.max(axis=1)
    owner = similarity.argmax(axis=1)  # which source holds each prompt's nearest training prompt
    return {
        "n_prompts": int(len(similarity)),
        "low_cosine": low,
        "overall": {**summarize(overall, low), "n_train": int(sum(n_train[s] for s in sources))},
        "sources": {
            source: {**summarize(similarity[:, i], low), "n_train": int(n_train[source]),
                     "nearest_share": float((owner == i).mean())}
            for i, source in enumerate(sources)
        },
    }


def coverage(prompt_vectors: np.ndarray, train_vectors_by_source: dict[str, np.ndarray], low: float = LOW_COSINE) -> dict:
    """RouteLLM's benchmark–dataset similarity of `prompt_vectors` to every source and to all of them together.

    Returns {"n_prompts", "low_cosine", "overall": {score, share_below, p10, median, n_train},
    "sources": {source: {score, share_below, p10, median, n_train, nearest_share}}}; `nearest_share` is the share
    of prompts whose nearest training prompt (over all sources) lies in that source.
    """
    sources, similarity, _ = nearest_by_source(prompt_vectors, train_vectors_by_source)
    n_train = {s: len(train_vectors_by_source[s]) for s in sources}
    return summarize_nearest(sources, similarity, n_train, low)


LEAST_COVERED = 10  # prompts listed in the coverage report with their nearest training prompt


def coverage_report(ws, prompts: list[str], prompts_file: str, router: str | None = None) -> dict:
    """`turnout coverage`: per training source of <home>/data, how close its prompts come to `prompts`, plus the
    least-covered prompts with their nearest training prompt. `ws` is a models.pipeline.Workspace."""
    from models import data as training

    embedder = ws.embedder
    td = training.load(ws.home / "data")  # every trained router is trained on all of it: `router` changes nothing yet
    train_prompts = td.battles["prompt"].unique()
    position = {p: i for i, p in enumerate(train_prompts)}
    members = {source: np.unique(group.map(position).to_numpy())
               for source, group in td.battles.groupby("source")["prompt"]}
    train_vectors = embedder.embed(list(train_prompts), progress=True, what="training prompts")
    prompt_vectors = embedder.embed(prompts, progress=True, what="prompts of your traffic")
    sources, similarity, index = nearest_by_source(prompt_vectors, {s: train_vectors[m] for s, m in members.items()})
    report = summarize_nearest(sources, similarity, {s: len(m) for s, m in members.items()})
    report["overall"]["n_train"] = len(train_prompts)  # a prompt in two sources counts once here
    owner = similarity.argmax(axis=1)
    least = np.argsort(similarity.max(axis=1), kind="stable")[:LEAST_COVERED]
    report.update(
        prompts_file=prompts_file, embedder=embedder.name, router=router, data_hash=td.report.get("data_hash"),
        least_covered=[{
            "prompt": prompts[i], "similarity": float(similarity[i, owner[i]]), "source": sources[owner[i]],
            "nearest_training_prompt": str(train_prompts[members[sources[owner[i]]][index[i, owner[i]]]]),
        } for i in least],
    )
    return report
