"""ClassifierDeployment: the causal_llm checkpoint in vLLM's classify runner, micro-batched.

The causal LM reads the instruction and the query in its chat template (`models.causal_llm.PromptBuilder`, the
same token ids as training and offline scoring); vLLM's classify runner turns the lm_head rows of the label
tokens [[1]]..[[5]] into a 5-way head, so one prefill and no decode gives the label distribution and
p_strong = 1 − P([[4]]) − P([[5]]) (RouteLLM, arXiv 2406.18665, §4.1). The engine is built by
`models.causal_llm.VLLMScorer` (runner "pooling", convert "classify", `classifier_from_token`,
`no_post_processing`), so a request scores exactly what `CausalLLMRouter.score` returns offline.

Engine: vLLM's synchronous `LLM` with its engine core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), owned
by one worker thread. Micro-batching (`serve.batching.MicroBatcher`): whatever requests queued while the engine
was busy go into its next call (up to `classifier.max_batch_size`), a request that finds the engine idle runs at
once, and requests past their deadline never reach the engine. That is what the engine's own scheduler does for
`AsyncLLM`, without its processes:

- Not `AsyncLLM`: in vLLM 0.32 it has no in-process engine client (it always starts the engine core in a child
  process), and on CPU the model then runs in a third process (the CPU platform always uses the multiprocessing
  executor), so every step crosses two process hops and three processes share the cores. Measured on the 2-core
  machine (trained SmolLM2-135M checkpoint, evaluation prompts, closed-loop callers in one process, 12 s per
  level, load average ~2 from other jobs), p50 in ms:

      callers                       1                4                 8
      AsyncLLM (its scheduler)      7.3 req/s, 132   9.1 req/s, 434    10.0 req/s, 731
      LLM + this batching           8.8 req/s, 102   12.0 req/s, 328   15.3 req/s, 502

  and AsyncLLM took ~20 s to start against ~7 s. Classify requests are prefill only, so continuous batching has
  no decode steps to interleave them with: one engine call per micro-batch loses nothing.
- Not `@serve.batch`: see `serve.batching` (batches of 1.07 requests at 8 callers, measured here).

A plain class: `serve.app.build_app` turns it into a deployment (the only `.bind()` site).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from typing import Any

import numpy as np

from serve.config import TurnoutConfig

log = logging.getLogger(__name__)

ROUTER = "causal_llm"


class ClassifierDeployment:
    def __init__(self, config: TurnoutConfig):
        from concurrent.futures import ThreadPoolExecutor

        from models.causal_llm import NAME, PromptBuilder, VLLMScorer, label_ids, load_tokenizer
        from models.labels import read_meta
        from serve.artifacts import home_dir
        from serve.batching import MicroBatcher
        from serve.metrics import ServeMetrics

        start = time.perf_counter()
        self.config = config
        settings = config.classifier
        folder = home_dir(config) / "routers" / NAME
        meta = read_meta(folder, NAME, config.routers.strong_model, config.routers.weak_model)
        tokenizer = load_tokenizer(folder)
        self.max_length = int(meta.get("max_length", 256))
        self.builder = PromptBuilder(tokenizer, self.max_length)
        self.ids = label_ids(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.max_batch_size = settings.max_batch_size
        # The config is what runs: these override the environment (VLLMScorer only fills in what is unset).
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core in this process: no IPC per step
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(settings.kv_cache_gib)
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = settings.cpu_threads_bind
        # One thread owns the engine: `LLM` is not thread-safe, and a blocking engine call must not stall the
        # replica's event loop, which keeps accepting requests (the next micro-batch) while a batch runs. The
        # engine is built in that thread too: vLLM's CPU worker sets up OpenMP (threads, binding) for the thread
        # that creates it, and OpenMP teams are per calling thread.
        self.engine_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vllm-classify")
        threads = settings.threads or max(1, math.ceil(config.deployments.classifier.ray_actor_options.num_cpus))

        def start_engine() -> VLLMScorer:
            import torch

            torch.set_num_threads(threads)  # before vLLM's CPU worker, which disables set_num_threads afterwards
            return VLLMScorer(folder, self.max_length, dtype=settings.dtype, max_num_seqs=settings.max_batch_size,
                              kv_cache_gib=settings.kv_cache_gib)

        self.scorer = self.engine_thread.submit(start_engine).result()
        self.truncated = 0  # queries cut to fit the context since start (each batch with a cut is logged too)
        self.metrics = ServeMetrics()
        self.batcher = MicroBatcher(self._score_batch, settings.max_batch_size, "classifier",
                                    on_drop=lambda n: self.metrics.dropped("classifier", n))
        # The first engine call allocates its buffers: not on a user's request.
        self.engine_thread.submit(self._classify, ["warm-up"]).result()
        log.info("classifier ready in %.1fs: %s (%s, context %d, batch %d, %d threads)", time.perf_counter() - start,
                 folder, settings.dtype, self.max_length, settings.max_batch_size, threads)

    async def score(self, text: str, deadline: float | None = None) -> dict | None:
        """{"p_strong", "classify_ms"}, or None when `deadline` (time.time() s) passed before the engine got to it."""
        return await self.batcher.submit(text, deadline)

    def _classify(self, texts: list[str]) -> np.ndarray:
        """p_strong per text: tokenise (cutting long queries in the middle), one engine call for all of them."""
        from models.causal_llm import p_strong_from_labels

        token_ids, cut = self.builder(texts)
        if cut:
            self.truncated += cut
            log.warning("causal_llm: %d of %d queries longer than the %d-token context were cut (head and tail "
                        "kept); %d since start", cut, len(texts), self.max_length, self.truncated)
        probs = self.scorer(token_ids, self.ids, self.pad_id)
        return np.clip(p_strong_from_labels(probs), 0.0, 1.0)

    async def _score_batch(self, texts: list[str]) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        p_strong = await asyncio.get_running_loop().run_in_executor(self.engine_thread, self._classify, texts)
        classify_ms = (time.perf_counter() - t0) * 1000.0
        for _ in texts:
            self.metrics.stage("classify", ROUTER, classify_ms)
        return [{"p_strong": float(p), "classify_ms": classify_ms} for p in p_strong]

    def ready(self) -> list[str]:
        return [ROUTER]
