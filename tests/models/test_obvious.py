"""The obvious-prompt check (models/obvious.py) and its hand-written file (models/obvious_prompts.jsonl)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from models import obvious
from models.base import Router
from index.errors import DataNotFoundError, InputError
from models.length_router import LengthRouter

HARD_WORDS = re.compile(r"\b(prove|derive|show that|find all|algorithm|compute|np-complete)\b", re.IGNORECASE)


class KeywordRouter(Router):
    """Toy router: p_strong = 0.9 when the prompt contains a 'hard' keyword, else 0.1."""

    name = "keyword"

    def _score(self, prompts: list[str]) -> np.ndarray:
        return np.array([0.9 if HARD_WORDS.search(p) else 0.1 for p in prompts])


@pytest.fixture(scope="module", params=[obvious.OBVIOUS_PATH, *obvious.OBVIOUS_LATER_PATHS],
                ids=["dev", "heldout", "heldout2", "heldout3", "heldout4", "heldout5"])
def frame(request):
    return obvious.load_obvious(request.param)


def test_file_loads_with_both_labels_and_a_balanced_subset(frame):
    assert len(frame) >= 120
    counts = frame["label"].value_counts()
    assert set(counts.index) == {"hard", "easy"}
    assert abs(counts["hard"] - counts["easy"]) <= 0.1 * len(frame)
    balanced = frame[frame["balanced"]]
    assert len(balanced) >= 40
    assert set(balanced["label"]) == {"hard", "easy"}
    assert abs(balanced["is_hard"].sum() - (~balanced["is_hard"]).sum()) <= 2
    assert not frame["prompt"].duplicated().any()
    assert not frame["prompt"].str.strip().str.lower().duplicated().any()
    assert frame["kind"].map(lambda k: isinstance(k, str) and bool(k)).all()


def test_balanced_easy_prompts_are_longer_so_length_alone_fails(frame):
    balanced = frame[frame["balanced"]]
    chars = balanced["prompt"].str.len()
    assert chars[~balanced["is_hard"]].mean() > chars[balanced["is_hard"]].mean()
    # The length router itself (not just raw characters) must fail the balanced subset.
    p_strong = LengthRouter().score(balanced["prompt"].tolist())
    assert obvious.auc(p_strong, balanced["is_hard"]) <= 0.3


def test_auc_hand_cases():
    is_hard = np.array([True, True, False, False])
    assert obvious.auc([0.9, 0.8, 0.2, 0.1], is_hard) == 1.0
    assert obvious.auc([0.1, 0.2, 0.8, 0.9], is_hard) == 0.0
    assert obvious.auc([0.5, 0.5, 0.5, 0.5], is_hard) == 0.5
    # 4 pairs: (0.9 > 0.5), (0.9 > 0.1), (0.3 < 0.5), (0.3 > 0.1) -> 3/4; a tie adds half a pair.
    assert obvious.auc([0.9, 0.3, 0.5, 0.1], is_hard) == 0.75
    assert obvious.auc([0.5, 0.3, 0.5, 0.1], is_hard) == pytest.approx(2.5 / 4)
    assert obvious.auc([1, 0, 0], [1, 0, 0]) == 1.0


def test_auc_matches_pairwise_count():
    rng = np.random.default_rng(3)
    p_strong = rng.integers(0, 5, 60) / 4.0  # many ties
    is_hard = rng.random(60) < 0.4
    hard, easy = p_strong[is_hard], p_strong[~is_hard]
    diff = hard[:, None] - easy[None, :]
    expected = ((diff > 0) + 0.5 * (diff == 0)).mean()
    assert obvious.auc(p_strong, is_hard) == pytest.approx(expected)


def test_auc_rejects_bad_input():
    with pytest.raises(InputError):
        obvious.auc([0.1, 0.2], [True, True])
    with pytest.raises(InputError):
        obvious.auc([0.1, 0.2, 0.3], [True, False])
    with pytest.raises(InputError):
        obvious.auc([0.1, float("nan")], [True, False])


def test_auc_interval_contains_estimate_and_is_reproducible():
    rng = np.random.default_rng(0)
    is_hard = np.arange(80) < 40
    p_strong = rng.normal(is_hard.astype(float), 1.0)
    point = obvious.auc(p_strong, is_hard)
    low, high = obvious.auc_interval(p_strong, is_hard, n_bootstrap=300, seed=1)
    assert 0.0 <= low <= point <= high <= 1.0
    assert high - low > 0.0
    assert obvious.auc_interval(p_strong, is_hard, n_bootstrap=300, seed=1) == (low, high)
    assert obvious.auc_interval([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0], n_bootstrap=50) == (1.0, 1.0)


def test_report_on_toy_router_is_finite_and_includes_length():
    report = obvious.obvious_report({"keyword": KeywordRouter()}, n_bootstrap=200)
    assert set(report) == {"length", "keyword"}
    for entry in report.values():
        assert set(entry) == {"auc", "auc_ci95", "auc_balanced", "auc_balanced_ci95", "n", "n_balanced"}
        pairs = ((entry["auc"], entry["auc_ci95"]), (entry["auc_balanced"], entry["auc_balanced_ci95"]))
        for point, (low, high) in pairs:
            assert np.isfinite([point, low, high]).all()
            assert 0.0 <= low <= point <= high <= 1.0
        assert entry["n"] >= 150 and entry["n_balanced"] >= 60
    assert report["length"]["auc_balanced"] <= 0.3
    assert report["keyword"]["auc_balanced"] > 0.7  # the keywords are in the hard prompts, not their length
    table = obvious.format_obvious(report)
    assert "keyword" in table and "length" in table and "meets target" in table


def test_the_table_says_which_targets_each_router_meets():
    def entry(whole, balanced):
        return {"auc": whole, "auc_ci95": (0.0, 1.0), "auc_balanced": balanced, "auc_balanced_ci95": (0.0, 1.0),
                "n": 150, "n_balanced": 60}

    table = obvious.format_obvious({"best": entry(0.85, 0.75), "good": entry(0.76, 0.66), "short": entry(0.76, 0.6),
                                    "poor": entry(0.6, 0.7)})
    meets = {line.split()[0]: line.split()[-1] for line in table.splitlines()[2:6]}
    assert meets == {"best": "default", "good": "router", "short": "no", "poor": "no"}
    assert f"AUC >= {obvious.ROUTER_TARGET_AUC}" in table and f"AUC >= {obvious.TARGET_AUC}" in table


def test_report_uses_a_given_length_router_instead_of_adding_one():
    report = obvious.obvious_report({"length": LengthRouter()}, n_bootstrap=20)
    assert list(report) == ["length"]
    direct = obvious.obvious_report({}, n_bootstrap=20)["length"]
    assert report["length"]["auc"] == pytest.approx(direct["auc"])


def test_load_rejects_missing_and_malformed_files(tmp_path):
    with pytest.raises(DataNotFoundError, match="cannot read"):
        obvious.load_obvious(tmp_path / "absent.jsonl")
    good = {"prompt": "hi", "label": "easy", "kind": "greeting", "balanced": False}
    cases = {
        "not-json": "{oops\n",
        "missing-key": json.dumps({"prompt": "hi", "label": "easy"}) + "\n",
        "bad-label": json.dumps({**good, "label": "medium"}) + "\n",
        "empty-prompt": json.dumps({**good, "prompt": " "}) + "\n",
        "one-label": json.dumps(good) + "\n",
        "empty": "\n",
    }
    for name, text in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(DataNotFoundError):
            obvious.load_obvious(path)


def test_trained_artifacts_carry_their_check_and_low_ones_are_named(tmp_path):
    check = obvious.record_check("keyword", KeywordRouter(), tmp_path)
    assert json.loads((tmp_path / obvious.CHECK_FILE).read_text()) == check
    assert list(check["files"]) == [path.name for path in obvious.CHECK_PATHS] and obvious.check_is_current(tmp_path)
    first = check["files"][obvious.OBVIOUS_PATH.name]
    assert 0.5 < first["auc"] <= 1.0 and 0.5 < first["auc_balanced"] <= 1.0
    # each file scored on its own prompts: the same AUC as scoring that file alone
    alone = obvious.obvious_report({"keyword": KeywordRouter()}, obvious.CHECK_PATHS[-1], n_bootstrap=10)["keyword"]
    assert check["files"][obvious.CHECK_PATHS[-1].name]["auc"] == round(alone["auc"], 4)
    others = {path.name: {"auc": 0.9, "auc_balanced": 0.8} for path in obvious.CHECK_PATHS[1:]}
    for whole, balanced, warned in ((0.9, 0.8, False), (0.38, 0.18, True), (0.9, 0.5, True), (0.7, 0.9, True)):
        files = {obvious.OBVIOUS_PATH.name: {"auc": whole, "auc_balanced": balanced}, **others}
        (tmp_path / obvious.CHECK_FILE).write_text(json.dumps({"files": files}))
        message = obvious.below_target("causal_llm", tmp_path)
        assert (message is not None) == warned
        if warned:
            assert message.startswith(f"causal_llm misses the obvious-prompt targets") and "\n" not in message
            assert f"on 1 of {len(files)} files; worst {obvious.OBVIOUS_PATH.name}: AUC {whole:.2f}" in message
    # a check kept before every file was scored: read as its one file, and not current
    (tmp_path / obvious.CHECK_FILE).write_text(json.dumps({"file": "x", "auc": 0.38, "auc_balanced": 0.18}))
    assert "on 1 of 1 files; worst x: AUC 0.38" in obvious.below_target("mf", tmp_path)
    assert not obvious.check_is_current(tmp_path)
    (tmp_path / obvious.CHECK_FILE).write_text("{")
    assert obvious.below_target("mf", tmp_path) is None  # unreadable: an old artifact, nothing to say
    assert obvious.below_target("mf", tmp_path / "missing") is None



def test_paired_p_greater_shares_the_resamples():
    is_hard = np.array([True] * 20 + [False] * 20)
    right = np.where(is_hard, 0.9, 0.1) + np.linspace(0, 0.01, 40)
    assert obvious.paired_p_greater(right, -right, is_hard, n_bootstrap=200) == 1.0
    assert obvious.paired_p_greater(right, right, is_hard, n_bootstrap=200) == 0.0  # never strictly greater
    noisy = np.random.default_rng(1).random(40)
    assert 0.0 < obvious.paired_p_greater(noisy, noisy[::-1], is_hard, n_bootstrap=200) < 1.0
