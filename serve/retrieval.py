"""RetrievalDeployment: the embedder and the FAISS-backed routers (sw_ranking, mf) in one replica.

Both routers score a prompt from its embedding (`score_embeddings`), so a batch of prompts is embedded once and
every router is served from the same vectors. Requests are micro-batched with `@serve.batch` (applied in
`__init__`, so batch size and wait come from the config): one embedding call for the batch, then one
`score_embeddings` call per router named in it.

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
        from ray import serve

        from index.embedder import load_embedder
        from serve.artifacts import load_routers
        from serve.metrics import ServeMetrics

        start = time.perf_counter()
        self.config = config
        # No on-disk cache here: live prompts rarely repeat, and a cache write per request would cost more.
        self.embedder = load_embedder(config.artifacts.embedder)
        self.routers = load_routers(config, config.retrieval_routers, self.embedder)
        self.embedder.embed(["warm-up"])  # load the model now, not on the first request
        self.metrics = ServeMetrics()
        batch = config.deployments.retrieval_batch
        self.score = serve.batch(max_batch_size=batch.max_batch_size,
                                 batch_wait_timeout_s=batch.batch_wait_timeout_s)(self._score_batch)
        log.info("retrieval ready in %.1fs: %s with %s", time.perf_counter() - start, list(self.routers), self.embedder)

    async def _score_batch(self, texts: list[str], routers: list[str]) -> list[dict]:
        """p_strong for each (text, router) pair, with the embed and search time each request waited for."""
        t0 = time.perf_counter()
        vectors = self.embedder.embed(texts, batch_size=max(len(texts), 1))
        embed_ms = (time.perf_counter() - t0) * 1000.0
        p_strong = np.empty(len(texts))
        search_ms = {}
        names = np.asarray(routers, dtype=object)
        for name in dict.fromkeys(routers):  # each router once, in first-seen order
            rows = np.flatnonzero(names == name)
            t1 = time.perf_counter()
            p_strong[rows] = self.routers[name].score_embeddings(vectors[rows])
            search_ms[name] = (time.perf_counter() - t1) * 1000.0
        for name in routers:
            self.metrics.stage("embed", name, embed_ms)
            self.metrics.stage("search", name, search_ms[name])
        return [{"p_strong": float(np.clip(p, 0.0, 1.0)), "embed_ms": embed_ms, "search_ms": search_ms[name]}
                for p, name in zip(p_strong, routers)]

    def ready(self) -> list[str]:
        return list(self.routers)

