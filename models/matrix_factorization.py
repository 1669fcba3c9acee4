"""Matrix-factorisation router (RouteLLM, Ong et al. 2024, arXiv 2406.18665, §4.1; after recommender-system MF).

A model's quality on a prompt is a bilinear score δ(M, q) = w₂ᵀ(v_M ⊙ (W₁ e_q)), where e_q is the prompt's
embedding, W₁ projects it into the model-vector space and v_M is a learned vector per model. For a battle,
P(a beats b | q) = σ(δ(a, q) − δ(b, q)); training minimises BCE over battles (a tie is the target 0.5).
At routing time p_strong = σ(δ(strong, q) − δ(weak, q)).

Trained with torch; the trained weights are three small arrays, so scoring is numpy (no torch in serving).
"""

from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from models.base import DEFAULT_STRONG, DEFAULT_WEAK, Router
from index.errors import ArtifactError, ConfigError
from index.paths import atomic_dir

log = logging.getLogger(__name__)

TARGET = {"model_a": 1.0, "model_b": 0.0, "tie": 0.5}


@dataclass
class MFConfig:
    dim: int = 128  # model-vector size, as RouteLLM
    epochs: int = 12
    batch_size: int = 2048
    lr: float = 3e-3
    weight_decay: float = 1e-4
    tie_weight: float = 1.0  # loss weight of tie battles relative to decided ones
    val_fraction: float = 0.05  # share of prompts (not battles) held out to pick the best epoch
    # Every source family gets the same total loss weight: MMLU-Pro's 32 runs make ~80 % of all battles, and
    # unweighted they decide the one linear direction a pair routes on everywhere else too.
    balance_sources: bool = False
    # Every prompt gets the same total loss weight: a correctness source turns n runs on a question into
    # n(n-1)/2 battles, so without it MMLU-Pro and Faithful-CoT questions outweigh an arena prompt many times over.
    # On by default since it won on the dev benchmarks (BENCHMARKS.md, "Choices").
    balance_prompts: bool = True
    seed: int = 0


class MFRouter(Router):
    name = "mf"

    def __init__(self, proj: np.ndarray, model_vectors: np.ndarray, head: np.ndarray, model_names: list[str],
                 embedder=None, *, strong: str = DEFAULT_STRONG, weak: str = DEFAULT_WEAK, batch_size: int = 64) -> None:
        self.proj, self.model_vectors, self.head = proj, model_vectors, head
        self.embedder, self.batch_size = embedder, batch_size
        index = {n: i for i, n in enumerate(model_names)}
        for role, model in (("strong", strong), ("weak", weak)):
            if model not in index:
                raise ConfigError(f"{role} model {model!r} was not in the MF training data ({len(index)} models)")
        # δ(strong) − δ(weak) = (W₁ e)·((v_S − v_W) ⊙ w₂): fold the pair into one vector once.
        self.direction = proj.T @ ((model_vectors[index[strong]] - model_vectors[index[weak]]) * head)

    def _score(self, prompts: list[str]) -> np.ndarray:
        if self.embedder is None:
            raise ConfigError("this MF router was built without an embedder; use score_embeddings()")
        return self.score_embeddings(self.embedder.embed(prompts, batch_size=self.batch_size))

    def score_embeddings(self, queries: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(np.asarray(queries, dtype=np.float64) @ self.direction)))

    @classmethod
    def from_artifacts(cls, root: Path, embedder=None, **options) -> "MFRouter":
        folder = Path(root) / "mf"
        try:
            meta = json.loads((folder / "meta.json").read_text())
            weights = np.load(folder / "weights.npz")
            arrays = weights["proj"], weights["model_vectors"], weights["head"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise ArtifactError(f"MF artifact at {folder} is missing or corrupted ({type(exc).__name__}); run `turnout train mf`") from exc
        if embedder is not None and meta.get("embedder") != embedder.name:
            raise ArtifactError(f"MF was trained on {meta.get('embedder')!r} embeddings, refusing embedder {embedder.name!r}; retrain with `turnout train mf`")
        if arrays[0].shape[1] != meta.get("embedding_dim") or len(arrays[1]) != len(meta.get("models", [])):
            raise ArtifactError(f"MF artifact at {folder} is inconsistent; retrain with `turnout train mf`")
        return cls(*arrays, meta["models"], embedder, **options)


def train(td, embedder, out_root: Path, config: MFConfig | None = None, progress: bool = True) -> Path:
    """Fit MF on the battles table with torch and write `<out_root>/mf/{weights.npz, meta.json}` atomically."""
    import torch
    from tqdm.auto import tqdm

    config = config or MFConfig()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    battles = td.battles
    names = sorted(set(battles["model_a"]) | set(battles["model_b"]))
    model_index = {n: i for i, n in enumerate(names)}
    prompts, prompt_ids = np.unique(battles["prompt"].to_numpy(dtype=object), return_inverse=True)
    embeddings = torch.from_numpy(embedder.embed(list(prompts), progress=progress, what="training prompts for mf"))
    a = torch.from_numpy(battles["model_a"].map(model_index).to_numpy(dtype=np.int64, copy=True))
    b = torch.from_numpy(battles["model_b"].map(model_index).to_numpy(dtype=np.int64, copy=True))
    target = torch.from_numpy(battles["winner"].map(TARGET).to_numpy(dtype=np.float32))
    weight = torch.where(target == 0.5, config.tie_weight, 1.0)
    if config.balance_sources:
        from models.data import source_weights

        weight = weight * torch.from_numpy(source_weights(battles).astype(np.float32))
    if config.balance_prompts:
        from models.data import prompt_weights

        weight = weight * torch.from_numpy(prompt_weights(battles).astype(np.float32))
    q = torch.from_numpy(prompt_ids)

    val_prompts = rng.random(len(prompts)) < config.val_fraction
    is_val = torch.from_numpy(val_prompts[prompt_ids])
    train_rows, val_rows = torch.nonzero(~is_val)[:, 0], torch.nonzero(is_val)[:, 0]

    proj = torch.nn.Linear(embeddings.shape[1], config.dim, bias=False)
    vectors = torch.nn.Embedding(len(names), config.dim)
    head = torch.nn.Linear(config.dim, 1, bias=False)
    params = [*proj.parameters(), *vectors.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

    def logits(rows: torch.Tensor) -> torch.Tensor:
        h = proj(embeddings[q[rows]])
        return head(h * (vectors(a[rows]) - vectors(b[rows])))[:, 0]

    def loss_on(rows: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(logits(rows), target[rows], weight=weight[rows])

    best, best_state, history = float("inf"), None, []
    steps = config.epochs * ((len(train_rows) + config.batch_size - 1) // config.batch_size)
    bar = tqdm(total=steps, desc="train mf", disable=not progress, mininterval=1.0)
    for epoch in range(config.epochs):
        order = train_rows[torch.randperm(len(train_rows))]
        for start in range(0, len(order), config.batch_size):
            opt.zero_grad()
            loss = loss_on(order[start: start + config.batch_size])
            loss.backward()
            opt.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)  # redraws follow mininterval, not every step
        with torch.no_grad():
            val = loss_on(val_rows).item() if len(val_rows) else loss.item()
        history.append(round(val, 5))
        log.info("mf epoch %d: validation loss %.4f", epoch + 1, val)
        if val < best:
            best = val
            best_state = [p.detach().clone() for p in params]
    bar.close()
    with torch.no_grad():
        for p, saved in zip(params, best_state):
            p.copy_(saved)

    folder = Path(out_root) / "mf"
    with atomic_dir(folder) as tmp:
        np.savez(tmp / "weights.npz", proj=proj.weight.detach().numpy().astype(np.float64),
                 model_vectors=vectors.weight.detach().numpy().astype(np.float64),
                 head=head.weight.detach().numpy()[0].astype(np.float64))
        meta = {"router": "mf", "embedder": embedder.name, "embedding_dim": int(embeddings.shape[1]), "models": names,
                "config": asdict(config), "validation_loss": history, "battles": int(len(battles)),
                "data_hash": td.report.get("data_hash", "")}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    return folder
