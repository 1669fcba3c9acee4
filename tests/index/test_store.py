import json

import numpy as np
import pytest

from index.store import VectorStore
from index.errors import ArtifactError, ConfigError, InputError

DIM = 32


def unit(rng, n, dim=DIM):
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return unit(rng, 64), unit(rng, 10)


def brute_force(vectors, queries, k):
    sims = queries @ vectors.T
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, axis=1), ids


def recall(ids, truth):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids, truth)])


def test_flat_is_exact(data):
    vectors, queries = data
    store = VectorStore.build(vectors, embedder="hash-32")
    sims, ids = store.search(queries, 5)
    ref_sims, ref_ids = brute_force(vectors, queries, 5)
    assert sims.dtype == np.float32 and ids.dtype == np.int64 and sims.shape == (10, 5)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(sims, ref_sims, rtol=1e-5, atol=1e-6)
    assert store.ntotal == 64 and store.dim == DIM and not store.on_gpu


def test_vectors_are_normalised(data):
    vectors, queries = data
    store = VectorStore.build(vectors * 7.0, embedder="e")  # cosine, whatever the scale
    sims, ids = store.search(queries[0] * 3.0, 1)  # a 1-D query is one query
    assert ids.shape == (1, 1) and sims[0, 0] <= 1.0 + 1e-5
    np.testing.assert_allclose(sims, brute_force(vectors, queries[:1], 1)[0], rtol=1e-5)


@pytest.mark.parametrize("factory,min_recall", [("IVF4,Flat", 0.9), ("HNSW16", 0.9)])
def test_approximate_recall(data, factory, min_recall):
    vectors, queries = data
    store = VectorStore.build(vectors, embedder="e", factory=factory)
    _, ids = store.search(queries, 5)
    assert recall(ids, brute_force(vectors, queries, 5)[1]) >= min_recall
    assert store.manifest["search_params"]


def test_k_is_clipped(data):
    vectors, queries = data
    sims, ids = VectorStore.build(vectors[:3], embedder="e").search(queries, 10)
    assert ids.shape == (10, 3) and sorted(ids[0]) == [0, 1, 2]


def test_bad_inputs(data):
    vectors, queries = data
    with pytest.raises(ConfigError):
        VectorStore.build(vectors, embedder="e", factory="NotAnIndex42")
    with pytest.raises(InputError):
        VectorStore.build(vectors, embedder="e", factory="IVF128,Flat")  # more lists than vectors
    for bad in (vectors[0], vectors[:0], np.full((3, DIM), np.nan), np.array([["a"] * DIM])):
        with pytest.raises(InputError):
            VectorStore.build(bad, embedder="e")
    with pytest.raises(ConfigError):
        VectorStore.build(vectors, embedder="e", extra={"count": 1})
    store = VectorStore.build(vectors, embedder="e")
    with pytest.raises(InputError, match="dim"):
        store.search(unit(np.random.default_rng(1), 2, DIM + 1), 3)
    with pytest.raises(InputError):
        store.search(queries, 0)


@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat", "HNSW16"])
def test_save_load_round_trip(tmp_path, data, factory):
    vectors, queries = data
    store = VectorStore.build(vectors, embedder="hash-32", factory=factory, data_hash="abc", extra={"note": 1})
    store.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    for key in ("embedder", "dim", "count", "factory", "data_hash", "faiss_version", "created", "note"):
        assert key in manifest
    assert (manifest["count"], manifest["dim"], manifest["data_hash"]) == (64, DIM, "abc")
    loaded = VectorStore.load(tmp_path / "idx", embedder="hash-32", dim=DIM)
    assert loaded.manifest == store.manifest
    for a, b in zip(store.search(queries, 5), loaded.search(queries, 5)):
        np.testing.assert_array_equal(a, b)


@pytest.fixture
def saved(tmp_path, data):
    directory = tmp_path / "idx"
    VectorStore.build(data[0], embedder="hash-32").save(directory)
    return directory


def test_load_refuses_other_embedder(saved):
    with pytest.raises(ArtifactError, match="built with 'hash-32', refusing embedder 'minilm'"):
        VectorStore.load(saved, embedder="minilm")


def test_load_refuses_missing(tmp_path, saved):
    with pytest.raises(ArtifactError, match="missing"):
        VectorStore.load(tmp_path / "nowhere")
    (saved / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="manifest"):
        VectorStore.load(saved)


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: len(b) // 2],  # truncated
        lambda b: b"",  # empty
        lambda b: bytes(len(b)),  # same size, zeroed
        lambda b: b + b"trailing",  # wrong size
    ],
)
def test_load_refuses_corrupted_index(saved, damage):
    path = saved / "index.faiss"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ArtifactError, match="index"):
        VectorStore.load(saved)


def test_load_refuses_zeroed_index_without_size_check(saved):
    manifest = json.loads((saved / "manifest.json").read_text())
    del manifest["index_bytes"]  # so faiss itself must notice
    (saved / "manifest.json").write_text(json.dumps(manifest))
    (saved / "index.faiss").write_bytes(b"\x00" * 100)
    with pytest.raises(ArtifactError, match="corrupted"):
        VectorStore.load(saved)


@pytest.mark.parametrize("edit", [{"count": 63}, {"dim": 16}, {"embedder": None, "count": None}])
def test_load_refuses_inconsistent_manifest(saved, edit):
    manifest = json.loads((saved / "manifest.json").read_text())
    for key, value in edit.items():
        if value is None:
            del manifest[key]
        else:
            manifest[key] = value
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError):
        VectorStore.load(saved)


def test_load_refuses_garbage_manifest_and_wrong_dim(saved):
    with pytest.raises(ArtifactError, match="dim"):
        VectorStore.load(saved, dim=384)
    (saved / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable manifest"):
        VectorStore.load(saved)


def test_failed_save_keeps_previous_store(saved, data, monkeypatch):
    import faiss

    before = {p.name: p.read_bytes() for p in saved.iterdir()}

    def boom(index, path):
        open(path, "wb").write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(faiss, "write_index", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        VectorStore.build(data[0][:10], embedder="other").save(saved)
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before  # no temp files left either
    monkeypatch.undo()
    assert VectorStore.load(saved, embedder="hash-32").ntotal == 64


def _faiss_gpu() -> bool:
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@pytest.mark.gpu
@pytest.mark.skipif(not _faiss_gpu(), reason="needs faiss with GPU support and a CUDA device")
def test_gpu_matches_cpu(tmp_path, data):
    vectors, queries = data
    gpu = VectorStore.build(vectors, embedder="e", use_gpu=True)
    assert gpu.on_gpu
    cpu = VectorStore.build(vectors, embedder="e", use_gpu=False)
    np.testing.assert_array_equal(gpu.search(queries, 5)[1], cpu.search(queries, 5)[1])
    gpu.save(tmp_path / "g")
    assert not VectorStore.load(tmp_path / "g", use_gpu=False).on_gpu
    assert VectorStore.load(tmp_path / "g").on_gpu  # auto-detected
