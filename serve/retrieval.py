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

    async def _score_batch(self, texts: list[str], routers: list[str],
                           deadlines: list[float | None]) -> list[dict | None]:
        """p_strong for each (text, router) pair, with the embed and search time each request waited for.

        Requests whose deadline (time.time() seconds) has passed get None and cost nothing: under overload the
        queue holds requests their callers gave up on, and embedding them would starve the live ones.
        """
        now = time.time()
        live = [i for i, d in enumerate(deadlines) if d is None or d > now]
        results: list[dict | None] = [None] * len(texts)
        if len(live) < len(texts):
            self.metrics.dropped("retrieval", len(texts) - len(live))
        if not live:
            return results
        texts = [texts[i] for i in live]
        names = np.asarray([routers[i] for i in live], dtype=object)
        t0 = time.perf_counter()
        vectors = self.embedder.embed(texts, batch_size=self.config.deployments.retrieval_batch.embed_batch_size)
        embed_ms = (time.perf_counter() - t0) * 1000.0
        p_strong = np.empty(len(texts))
        search_ms = {}
        for name in dict.fromkeys(names):  # each router once, in first-seen order
            rows = np.flatnonzero(names == name)
            t1 = time.perf_counter()
            p_strong[rows] = self.routers[name].score_embeddings(vectors[rows])
            search_ms[name] = (time.perf_counter() - t1) * 1000.0
        for i, p, name in zip(live, p_strong, names):
            self.metrics.stage("embed", name, embed_ms)
            self.metrics.stage("search", name, search_ms[name])
            results[i] = {"p_strong": float(np.clip(p, 0.0, 1.0)), "embed_ms": embed_ms, "search_ms": search_ms[name]}
        return results

    def ready(self) -> list[str]:
        return list(self.routers)

