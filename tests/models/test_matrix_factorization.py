import numpy as np
import pytest

from index.embedder import HashEmbedder
from models import matrix_factorization as mf
from index.errors import ArtifactError, ConfigError
from tests.models.test_sw_ranking import _training_data

TINY = mf.MFConfig(dim=8, epochs=40, batch_size=128, lr=3e-2, weight_decay=0.0, seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("routers")
    embedder = HashEmbedder(32)
    mf.train(_training_data(n_battles=4000), embedder, root, TINY, progress=False)
    return embedder, root


def test_learns_where_the_strong_model_helps(trained):
    embedder, root = trained
    router = mf.MFRouter.from_artifacts(root, embedder=embedder, strong="strong-1", weak="weak-1")
    math = router.score([f"math equation algebra item {i}" for i in range(1, 20, 2)])
    chat = router.score([f"chat greeting hello item {i}" for i in range(0, 20, 2)])
    assert math.min() > chat.max()
    assert math.mean() > 0.6  # strong tier wins clearly on math prompts


def test_numpy_scoring_matches_the_bilinear_formula(trained):
    embedder, root = trained
    router = mf.MFRouter.from_artifacts(root, embedder=embedder, strong="strong-1", weak="tiny")
    w = np.load(root / "mf" / "weights.npz")
    models = mf.json.loads((root / "mf" / "meta.json").read_text())["models"]
    e = embedder.embed(["math equation item 3"])[0]

    def delta(m):
        return w["head"] @ (w["model_vectors"][models.index(m)] * (w["proj"] @ e))

    want = 1 / (1 + np.exp(-(delta("strong-1") - delta("tiny"))))
    np.testing.assert_allclose(router.score(["math equation item 3"]), [want], rtol=1e-9)


def test_training_is_seeded(tmp_path, trained):
    embedder, root = trained
    mf.train(_training_data(n_battles=4000), embedder, tmp_path, TINY, progress=False)
    a = np.load(root / "mf" / "weights.npz")["proj"]
    b = np.load(tmp_path / "mf" / "weights.npz")["proj"]
    np.testing.assert_array_equal(a, b)


def test_refuses_unknown_model_other_embedder_and_corruption(trained, tmp_path):
    embedder, root = trained
    with pytest.raises(ConfigError, match="not in the MF training data"):
        mf.MFRouter.from_artifacts(root, embedder=embedder, strong="gpt-9", weak="weak-1")
    with pytest.raises(ArtifactError, match="refusing embedder"):
        mf.MFRouter.from_artifacts(root, embedder=HashEmbedder(16), strong="strong-1", weak="weak-1")
    (tmp_path / "mf").mkdir()
    (tmp_path / "mf" / "meta.json").write_text("{}")
    (tmp_path / "mf" / "weights.npz").write_bytes(b"")
    with pytest.raises(ArtifactError, match="turnout train mf"):
        mf.MFRouter.from_artifacts(tmp_path, embedder=embedder, strong="strong-1", weak="weak-1")
