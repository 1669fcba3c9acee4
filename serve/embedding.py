"""EmbeddingDeployment: the embedder and every router with the embedding backend (sw_ranking, mf, bert) in one replica.

Routers that share the embedding (registry `shares_embedding`: sw_ranking, mf) score a prompt from its vector
(`score_embeddings`), so a batch is embedded once and every such router is served from the same vectors; the
others here (bert: its own fine-tuned encoder) score the batch's texts directly. Requests are micro-batched by
`serve.batching.MicroBatcher` (what queued while the previous batch ran, up to `embedding.max_batch_size`; a lone
request runs at once): at most one embedding call per batch, in length-sorted chunks of `embed_batch_size`, then
one scoring call per router named in it. Requests past their deadline are dropped unprocessed.

A plain class: `serve.app.build_app` turns it into a deployment (the only `.bind()` site).
"""

from __future__ import annotations

import logging
import os
import threading
import time

import numpy as np

from index.errors import ScoringError, TurnoutError
from serve.config import TurnoutConfig

log = logging.getLogger(__name__)


def embedder_threads(config: TurnoutConfig) -> int | None:
    """The embedder's CPU threads: the config's, else the runtime's own choice where it makes a good one
    (`index.backends.OWN_THREADS`), else the CPUs Ray reserved for the replica (its OMP_NUM_THREADS)."""
    from index.backends import OWN_THREADS

    if config.embedding.threads is not None:
        return config.embedding.threads
    if config.artifacts.embedder.removeprefix("minilm-") in OWN_THREADS:
        return None
    return int(os.environ.get("OMP_NUM_THREADS") or 0) or None


class EmbeddingDeployment:
    def __init__(self, config: TurnoutConfig):
        from index.embedder import load_embedder
        from serve.artifacts import home_dir, load_routers
        from serve.batching import MicroBatcher
        from serve.metrics import ServeMetrics

        start = time.perf_counter()
        self.config = config
        if config.embedding.threads is not None:
            import torch

            torch.set_num_threads(config.embedding.threads)
        entries = config.routers.entries()
        self.shared = {name for name in config.embedding_routers if entries[name].shares_embedding}
        # No on-disk cache here: live prompts rarely repeat, and a cache write per request would cost more. A
        # backend's build (minilm-<backend>) comes from the home, where `turnout prepare` made it.
        self.embedder = load_embedder(config.artifacts.embedder, models_dir=home_dir(config) / "embedders",
                                      threads=embedder_threads(config)) if self.shared else None
        self.routers = load_routers(config, config.embedding_routers, self.embedder)
        self.metrics = ServeMetrics()
        self.overlay = None  # the user's labels over the shared-embedding routers (models/user_overlay.py)
        self.overlay_failed: dict | None = None  # the last promoted version that did not load, and why
        if self.embedder is not None and config.routers.overlay:
            from serve.artifacts import serving_overlay

            self.overlay = serving_overlay(config, self.embedder.name)
            if self.overlay is not None:
                log.info("overlay %s over %s", self.overlay.version, sorted(self.overlay.routers))
            threading.Thread(target=self._watch_overlay, name="turnout-overlay", daemon=True).start()
        self.embed_batch_size = config.embedding.embed_batch_size or (self.embedder.serve_chunk if self.embedder else None)
        if self.embedder is not None:
            self.embedder.embed(["warm-up"])  # load the model now, not on a request
        for name in set(self.routers) - self.shared:
            self.routers[name].score(["warm-up"])
        self.batcher = MicroBatcher(self._score_batch, config.embedding.max_batch_size, "embedding",
                                    on_drop=lambda n: self.metrics.dropped("embedding", n))
        log.info("embedding ready in %.1fs: %s with %s", time.perf_counter() - start, list(self.routers), self.embedder)

    def _watch_overlay(self) -> None:
        """Swap in each newly promoted overlay version: loaded beside the one serving, then one reference
        assignment, which a batch reads once, so no request sees half of each. A version that fails to load
        leaves the old one serving and is reported."""
        from models.user_overlay import current_version
        from serve.artifacts import home_dir, serving_overlay

        seen = self.overlay.version if self.overlay is not None else None
        while True:
            # set on every pass: Ray drops a gauge from its export a few report intervals after its last set
            self.metrics.overlay_failed(self.overlay_failed is not None)
            time.sleep(self.config.routers.overlay_poll_s)
            try:
                version = current_version(home_dir(self.config))
            except OSError as exc:
                log.warning("overlay: cannot read the promoted version: %s", exc)
                continue
            if version == seen:
                continue
            seen = version
            try:
                overlay = serving_overlay(self.config, self.embedder.name)
            except TurnoutError as exc:
                self.overlay_failed = {"version": version, "reason": str(exc)}
                self.metrics.overlay_failed(True)
                log.warning("overlay %s not loaded, %s still serving: %s", version,
                            self.overlay.version if self.overlay else "none", exc)
                continue
            log.info("overlay %s -> %s", self.overlay.version if self.overlay else "none", version or "none")
            self.overlay, self.overlay_failed = overlay, None
            self.metrics.overlay_failed(False)

    def overlay_state(self) -> dict:
        """The overlay version this replica serves, and the last promoted one it could not load."""
        return {"version": self.overlay.version if self.overlay is not None else None, "failed": self.overlay_failed}

    async def score(self, text: str, router: str, budget_s: float | None = None, vector: bool = False) -> dict | None:
        """{"p_strong", "stages": {stage: ms}}, or None when the caller's remaining `budget_s` ran out while queued.
        With `vector`, also the prompt's embedding ("vector", float32) where the router scores from it (capture
        without text keeps it in place of the prompt)."""
        return await self.batcher.submit((text, router, vector), budget_s)

    async def _score_batch(self, items: list[tuple[str, str, bool]]) -> list[dict]:
        """p_strong for each (text, router) pair, with the embed and search/score time each request waited for.

        Blocks the event loop on purpose rather than running in a worker thread: a forward pass is hundreds of
        small torch ops, each taking the GIL back, and next to the replica's busy I/O thread that convoy cost
        throughput at 32 clients (see BENCHMARKS.md, 'Serving'). Requests arriving meanwhile wait in Ray's queue
        and form the next batch.
        """
        overlay = self.overlay  # read once: a swap takes effect from the next batch
        texts = [text for text, _, _ in items]
        names = [name for _, name, _ in items]
        shared_rows = [i for i, name in enumerate(names) if name in self.shared]
        embed_ms, vectors = 0.0, None
        if shared_rows:
            t0 = time.perf_counter()
            vectors = self.embedder.embed([texts[i] for i in shared_rows], batch_size=self.embed_batch_size)
            embed_ms = (time.perf_counter() - t0) * 1000.0
        position = {row: i for i, row in enumerate(shared_rows)}
        p_strong = np.empty(len(texts))
        score_ms = {}
        for name in dict.fromkeys(names):  # each router once, in first-seen order
            rows = [i for i, n in enumerate(names) if n == name]
            t1 = time.perf_counter()
            if name in self.shared:
                queries = vectors[[position[r] for r in rows]]
                p_strong[rows] = self.routers[name].score_embeddings(queries)
                if overlay is not None:
                    p_strong[rows] = overlay.adjust(name, p_strong[rows], queries, [texts[r] for r in rows])
            else:
                p_strong[rows] = self.routers[name].score([texts[r] for r in rows])
            score_ms[name] = (time.perf_counter() - t1) * 1000.0
        results: list = []
        for row, (p, name) in enumerate(zip(p_strong, names)):
            if not np.isfinite(p):  # an error for this caller only; it never reaches a controller window
                results.append(ScoringError(f"router {name} produced a non-finite p_strong ({p})"))
                continue
            # Stages: the shared embedding, then the router's own step: "search" from a vector (FAISS and the fit,
            # MF's head), "classify" from the text (bert's encoder pass).
            stages = {"embed": embed_ms, "search": score_ms[name]} if name in self.shared else {"classify": score_ms[name]}
            for stage, ms in stages.items():
                self.metrics.stage(stage, name, ms)
            result = {"p_strong": float(np.clip(p, 0.0, 1.0)), "stages": stages}
            if items[row][2] and name in self.shared:
                result["vector"] = np.asarray(vectors[position[row]], dtype=np.float32)
            results.append(result)
        return results

    def ready(self) -> list[str]:
        return list(self.routers)
