import logging

import numpy as np
import pytest

from index.embedder import PAD_TOKENS, CachedEmbedder, Embedder, HashEmbedder, MiniLMEmbedder, load_embedder
from index.row_cache import RowCache
from index.errors import ConfigError, InputError

TEXTS = ["route this prompt", "solve 2 + 2", "write a sonnet about trains", ""]


class CountingEmbedder(HashEmbedder):
    """HashEmbedder that records every text it is asked to embed."""

    def __init__(self, dim: int = 16, name: str | None = None):
        super().__init__(dim)
        self.seen: list[str] = []
        if name:
            self.name = name

    def _embed(self, texts, batch_size, progress, what):
        self.seen.extend(texts)
        self.labels = getattr(self, "labels", []) + [what]
        return super()._embed(texts, batch_size, progress, what)


def test_progress_says_what_is_embedded_and_what_the_cache_saved(tmp_path):
    inner = CountingEmbedder()
    cached = CachedEmbedder(inner, tmp_path)
    cached.embed(TEXTS[:2])
    cached.embed(TEXTS, progress=True, what="evaluation prompts for decontamination")
    assert inner.labels[-1] == f"embedding {len(TEXTS)} evaluation prompts for decontamination: {len(TEXTS) - 2} new, 2 cached"
    inner.embed(["a", "b", "c"], what="held-out prompts")
    assert inner.labels[-1] == "embedding 3 held-out prompts"


def test_hash_embedder_is_deterministic_and_normalised():
    emb = HashEmbedder(64)
    a, b = emb.embed(TEXTS), HashEmbedder(64).embed(TEXTS)
    assert a.dtype == np.float32 and a.shape == (4, 64)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a[:3], axis=1), 1.0, rtol=1e-5)
    assert not a[3].any()  # no words: a zero row, not NaN
    assert emb.name == "hash-64"


def test_hash_embedder_shares_words():
    v = HashEmbedder(256).embed(["the train is late", "the train is delayed", "quantum chromodynamics"])
    assert v[0] @ v[1] > v[0] @ v[2]


def test_embed_validation_and_empty():
    emb = HashEmbedder(8)
    assert emb.embed([]).shape == (0, 8)
    with pytest.raises(InputError):
        emb.embed("a single string")
    with pytest.raises(InputError):
        emb.embed(["ok", 3])


def test_load_embedder_names(tmp_path):
    assert isinstance(load_embedder("hash-32"), HashEmbedder)
    assert load_embedder("hash-32").dim == 32
    assert load_embedder("minilm").name == "sentence-transformers/all-MiniLM-L6-v2"  # lazy: nothing loaded
    assert isinstance(load_embedder("some-org/some-model"), MiniLMEmbedder)
    cached = load_embedder("hash-32", cache_dir=tmp_path)
    assert isinstance(cached, CachedEmbedder) and cached.name == "hash-32"
    # truncation changes long texts' vectors, so it is part of the name the cache and the index check
    assert load_embedder("minilm@128").name == "sentence-transformers/all-MiniLM-L6-v2@max_seq_length=128"
    for bad in ("hash-x", "hash-0", "", "minilm@", "minilm@4", "minilm@x"):
        with pytest.raises(ConfigError):
            load_embedder(bad)
    with pytest.raises(ConfigError, match="precision"):
        MiniLMEmbedder(precision="fp8")


def test_cache_hits_misses_and_persistence(tmp_path):
    inner = CountingEmbedder()
    cache = CachedEmbedder(inner, tmp_path)
    first = cache.embed(TEXTS)
    assert (cache.hits, cache.misses) == (0, 4)
    again = cache.embed(TEXTS[:2] + ["new text"])
    assert (cache.hits, cache.misses) == (2, 5)
    np.testing.assert_array_equal(again[:2], first[:2])
    np.testing.assert_array_equal(first, HashEmbedder(16).embed(TEXTS))

    inner2 = CountingEmbedder()
    reopened = CachedEmbedder(inner2, tmp_path)
    assert len(reopened) == 5
    np.testing.assert_array_equal(reopened.embed(TEXTS), first)
    assert (reopened.hits, reopened.misses) == (4, 0) and inner2.seen == []


def test_cache_dedupes_within_a_call(tmp_path):
    inner = CountingEmbedder()
    cache = CachedEmbedder(inner, tmp_path)
    out = cache.embed(["a b", "c d", "a b", "a b"])
    assert inner.seen == ["a b", "c d"]
    assert (cache.hits, cache.misses) == (2, 2)
    np.testing.assert_array_equal(out[0], out[2])


def test_cache_is_namespaced_by_embedder(tmp_path):
    CachedEmbedder(CountingEmbedder(name="org/model"), tmp_path).embed(TEXTS)
    other = CachedEmbedder(CountingEmbedder(name="org_model"), tmp_path)  # same sanitised name
    other.embed(TEXTS)
    assert other.misses == 4
    assert len({p.name for p in tmp_path.iterdir()}) == 2


def test_cache_survives_corrupted_shard(tmp_path, caplog):
    cache = CachedEmbedder(CountingEmbedder(), tmp_path)
    cache.embed(TEXTS[:2])
    cache.embed(TEXTS[2:])
    shards = sorted(cache.directory.glob("shard-*.npz"))
    assert len(shards) == 2
    shards[0].write_bytes(shards[0].read_bytes()[:50])  # truncated
    (cache.directory / "shard-garbage.npz").write_bytes(b"not a zip")
    with caplog.at_level(logging.WARNING, logger="index.embedder"):
        reopened = CachedEmbedder(CountingEmbedder(), tmp_path)
    assert sum("ignoring" in r.message for r in caplog.records) == 2
    out = reopened.embed(TEXTS)
    assert reopened.misses == 2 and reopened.hits == 2  # the lost shard's texts are embedded again
    np.testing.assert_array_equal(out, HashEmbedder(16).embed(TEXTS))


def test_cache_compacts_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(RowCache, "MAX_SHARDS", 3)
    cache = CachedEmbedder(CountingEmbedder(), tmp_path)
    for i in range(5):
        cache.embed([f"text {i}"])
    assert len(list(cache.directory.glob("shard-*.npz"))) <= 3
    reopened = CachedEmbedder(CountingEmbedder(), tmp_path)
    assert len(reopened) == 5


def test_cache_handles_many_entries_quickly(tmp_path):
    import time

    class Fake(Embedder):
        name, dim = "fake-384", 384

        def _embed(self, texts, batch_size, progress, what):
            rng = np.random.default_rng(len(texts))
            v = rng.standard_normal((len(texts), 384)).astype(np.float32)
            return v / np.linalg.norm(v, axis=1, keepdims=True)

    texts = [f"prompt number {i}" for i in range(50_000)]
    CachedEmbedder(Fake(), tmp_path).embed(texts)
    start = time.perf_counter()
    cache = CachedEmbedder(Fake(), tmp_path)
    out = cache.embed(texts)
    elapsed = time.perf_counter() - start
    assert out.shape == (50_000, 384) and cache.misses == 0
    assert elapsed < 2.0, f"reloading 50k cached embeddings took {elapsed:.2f}s"


@pytest.mark.slow
def test_minilm_real_model():
    emb = load_embedder("minilm")
    v = emb.embed(
        ["How do I bake bread at home?", "What is a simple recipe for homemade bread?", "The stock market fell."]
    )
    assert v.shape == (3, 384) and v.dtype == np.float32 and emb.dim == 384
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


@pytest.mark.slow
def test_minilm_bf16_matches_fp32():
    """bf16 autocast (the default where the CPU has it) shares fp32's name, cache and index: vectors must agree."""
    texts = ["Solve 3x + 5 = 20 for x.", "Write a haiku about autumn leaves.",
             "Which of the following is a prime number? A. 21 B. 27 C. 29 D. 33 " * 8]
    exact, fast = MiniLMEmbedder(precision="fp32"), MiniLMEmbedder(precision="bf16")
    a, b = exact.embed(texts), fast.embed(texts)
    assert (exact.precision, fast.precision, fast.name) == ("fp32", "bf16", exact.name)
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, rtol=1e-5)
    assert (a * b).sum(axis=1).min() > 0.999


@pytest.mark.slow
def test_minilm_direct_forward_equals_encode():
    """The direct transformer + mean-pooling path gives sentence-transformers' encode() vectors, in any order."""
    texts = ["  Solve 3x + 5 = 20 for x. ", "Write a haiku about autumn leaves.", "hi",
             "Which of the following is a prime number? A. 21 B. 27 C. 29 D. 33 " * 40]  # past 256 tokens: cut
    emb = MiniLMEmbedder(precision="fp32")
    tokenizer = emb._load().tokenizer
    lengths, real_call = [], type(tokenizer).__call__

    def recording(self, *args, **kwargs):
        out = real_call(self, *args, **kwargs)
        lengths.append(out["input_ids"].shape[1])
        return out

    type(tokenizer).__call__ = recording
    try:
        direct = emb.embed(texts, batch_size=2)
    finally:
        type(tokenizer).__call__ = real_call
    # padded to a multiple of PAD_TOKENS (a bounded set of input shapes), except a chunk cut at max_seq_length
    assert lengths and all(n % PAD_TOKENS == 0 or n == emb._load().max_seq_length for n in lengths), lengths
    assert emb._direct is not None  # all-MiniLM-L6-v2 is transformer + mean pooling + normalise
    reference = emb._load().encode(texts, batch_size=3, convert_to_numpy=True, normalize_embeddings=True)
    np.testing.assert_allclose(direct, reference, atol=1e-5)
