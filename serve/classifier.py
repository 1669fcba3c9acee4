"""ClassifierDeployment: the causal_llm checkpoint in vLLM's classify runner, micro-batched.

The causal LM reads the instruction and the query in its chat template (`models.causal_llm.PromptBuilder`, the
same token ids as training and offline scoring); vLLM's classify runner turns the lm_head rows of the label
tokens [[1]]..[[5]] into a 5-way head, so one prefill and no decode gives the label distribution and
p_strong = 1 − P([[4]]) − P([[5]]) (RouteLLM, arXiv 2406.18665, §4.1). The engine is built by
`models.causal_llm.VLLMScorer` (runner "pooling", convert "classify", `classifier_from_token`,
`no_post_processing`) inside the offline `CausalLLMRouter`, so a request scores exactly what it returns offline.

Engine: vLLM's synchronous `LLM` with its engine core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), owned
by one worker thread. Micro-batching (`serve.batching.MicroBatcher`): whatever requests queued while the engine
was busy go into its next call (up to `classifier.max_batch_size`), a request that finds the engine idle runs at
once, and requests past their deadline never reach the engine. That is what the engine's own scheduler does for
`AsyncLLM`, without its processes:

- Not `AsyncLLM`: in vLLM 0.32 it has no in-process engine client (it always starts the engine core in a child
  process), and on CPU the model then runs in a third process (the CPU platform always uses the multiprocessing
  executor), so every step crosses two process hops and three processes share the cores. Measured on the 2-core
  machine with closed-loop callers, the in-process `LLM` with this batching had more throughput and a lower p50
  than AsyncLLM at 1, 4 and 8 callers, and started much faster (see BENCHMARKS.md, 'causal_llm route'; the p50s
  per level in BENCHMARKS.md, 'Figures moved from code comments'). Classify requests are prefill only, so
  continuous batching has no decode steps to interleave them with: one engine call per micro-batch loses nothing.
- Not `@serve.batch`: see `serve.batching` (its batches stayed at about one request even at 8 callers; see
  BENCHMARKS.md, 'causal_llm route').

A plain class: `serve.app.build_app` turns it into a deployment (the only `.bind()` site).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from typing import Any

from serve.config import TurnoutConfig

log = logging.getLogger(__name__)

ROUTER = "causal_llm"


class ClassifierDeployment:
    def __init__(self, config: TurnoutConfig):
        from concurrent.futures import ThreadPoolExecutor

        from models.causal_llm import CausalLLMRouter
        from serve.artifacts import home_dir
        from serve.batching import MicroBatcher
        from serve.metrics import ServeMetrics

        start = time.perf_counter()
        self.config = config
        settings = config.classifier
        # The config is what runs: these override the environment (VLLMScorer only fills in what is unset).
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core in this process: no IPC per step
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(settings.kv_cache_gib)
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = settings.cpu_threads_bind
        # One thread owns the engine: `LLM` is not thread-safe, and a blocking engine call must not stall the
        # replica's event loop, which keeps accepting requests (the next micro-batch) while a batch runs. The
        # engine is built in that thread too: vLLM's CPU worker sets up OpenMP (threads, binding) for the thread
        # that creates it, and OpenMP teams are per calling thread.
        self.engine_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vllm-classify")
        threads = settings.threads or max(1, math.ceil(_reserved_cpus()))

        def start_engine() -> CausalLLMRouter:
            import torch

            torch.set_num_threads(threads)  # before vLLM's CPU worker, which disables set_num_threads afterwards
            # The offline router itself (prompt building, truncation count, label tokens) on the vLLM backend.
            return CausalLLMRouter.from_artifacts(
                home_dir(config) / "routers", strong=config.routers.strong_model, weak=config.routers.weak_model,
                backend="vllm", batch_size=settings.max_batch_size, dtype=settings.dtype, device=settings.device,
                gpu_memory_utilization=settings.gpu_memory_utilization, enforce_eager=settings.enforce_eager)

        self.router = self.engine_thread.submit(start_engine).result()
        self.metrics = ServeMetrics()
        self.batcher = MicroBatcher(self._score_batch, settings.max_batch_size, "classifier",
                                    on_drop=lambda n: self.metrics.dropped("classifier", n))
        # The first engine call allocates its buffers: not on a user's request.
        self.engine_thread.submit(self.router.score, ["warm-up"]).result()
        log.info("classifier ready in %.1fs: %s (%s, context %d, batch %d, %d threads)", time.perf_counter() - start,
                 self.router.folder, settings.dtype, self.router.max_length, settings.max_batch_size, threads)

    async def score(self, text: str, budget_s: float | None = None) -> dict | None:
        """{"p_strong", "stages": {"classify": ms}}, or None when the caller's remaining `budget_s` ran out before
        the engine got to it."""
        return await self.batcher.submit(text, budget_s)

    async def _score_batch(self, texts: list[str]) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        p_strong = await asyncio.get_running_loop().run_in_executor(self.engine_thread, self.router.score, texts)
        classify_ms = (time.perf_counter() - t0) * 1000.0
        for _ in texts:
            self.metrics.stage("classify", ROUTER, classify_ms)
        return [{"p_strong": float(p), "stages": {"classify": classify_ms}} for p in p_strong]

    def ready(self) -> list[str]:
        return [ROUTER]


def _reserved_cpus() -> float:
    """CPUs Ray reserved for this replica (its ray_actor_options.num_cpus); 1 outside Ray."""
    import ray

    if not ray.is_initialized():
        return 1.0
    return float(ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0))
