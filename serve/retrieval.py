"""RetrievalDeployment: the embedder and the FAISS-backed routers (sw_ranking, mf) in one replica.

Both routers score a prompt from its embedding (`score_embeddings`), so a batch of prompts is embedded once and
every router is served from the same vectors. Requests are micro-batched by `serve.batching.MicroBatcher`
(what queued while the previous batch ran, up to `retrieval_batch.max_batch_size`; a lone request runs at
once): one embedding call per batch, in length-sorted chunks of `embed_batch_size`, then one
`score_embeddings` call per router named in it. Requests past their deadline are dropped unprocessed.

A plain class: `serve.app.build_app` turns it into a deployment (the only `.bind()` site).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from serve.config import TurnoutConfig

log = logging.getLogger(__name__)


class RetrievalDeployment:
    def __init__(self, config: TurnoutConfig):
        from index.embedder import load_embedder
        from serve.artifacts import load_routers
        from serve.batching import MicroBatcher
        from serve.metrics import ServeMetrics

        start = time.perf_counter()
        self.config = config
        # No on-disk cache here: live prompts rarely repeat, and a cache write per request would cost more.
        self.embedder = load_embedder(config.artifacts.embedder)
        self.routers = load_routers(config, config.retrieval_routers, self.embedder)
        self.metrics = ServeMetrics()
        batch = config.deployments.retrieval_batch
        self.embed_batch_size = batch.embed_batch_size
        self.embedder.embed(["warm-up"])  # load the model now, not on a request
        self.batcher = MicroBatcher(self._score_batch, batch.max_batch_size, "retrieval",
                                    on_drop=lambda n: self.metrics.dropped("retrieval", n))
        log.info("retrieval ready in %.1fs: %s with %s", time.perf_counter() - start, list(self.routers), self.embedder)

    async def score(self, text: str, router: str, deadline: float | None = None) -> dict | None:
        """{"p_strong", "embed_ms", "search_ms"}, or None when `deadline` (time.time() s) passed while queued."""
        return await self.batcher.submit((text, router), deadline)

    async def _score_batch(self, items: list[tuple[str, str]]) -> list[dict]:
        """p_strong for each (text, router) pair, with the embed and search time each request waited for.

        Blocks the event loop on purpose rather than running in a worker thread: a forward pass is hundreds of
        small torch ops, each taking the GIL back, and next to the replica's busy I/O thread that convoy cost
        throughput at 32 clients (see BENCHMARKS.md, 'Serving'). Requests arriving meanwhile wait in Ray's queue
        and form the next batch.
        """
        texts = [text for text, _ in items]
        names = np.asarray([name for _, name in items], dtype=object)
        t0 = time.perf_counter()
        vectors = self.embedder.embed(texts, batch_size=self.embed_batch_size)
        embed_ms = (time.perf_counter() - t0) * 1000.0
        p_strong = np.empty(len(texts))
        search_ms = {}
        for name in dict.fromkeys(names):  # each router once, in first-seen order
            rows = np.flatnonzero(names == name)
            t1 = time.perf_counter()
            p_strong[rows] = self.routers[name].score_embeddings(vectors[rows])
            search_ms[name] = (time.perf_counter() - t1) * 1000.0
        results = []
        for p, name in zip(p_strong, names):
            self.metrics.stage("embed", name, embed_ms)
            self.metrics.stage("search", name, search_ms[name])
            results.append({"p_strong": float(np.clip(p, 0.0, 1.0)), "embed_ms": embed_ms, "search_ms": search_ms[name]})
        return results

    def ready(self) -> list[str]:
        return list(self.routers)
