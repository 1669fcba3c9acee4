"""loadtest.obvious_all on the serve tests' tiny artifacts: every obvious file, routers from this home, with an
option changed, and from another home with its own embedder."""

import json

from loadtest import obvious_all
from models.obvious import OBVIOUS_LATER_PATHS, OBVIOUS_PATH
from tests.serve.conftest import build_tiny_artifacts


def test_every_file_and_routers_from_another_home(tmp_path):
    here, there = tmp_path / "here", tmp_path / "there"
    for home in (here, there):
        build_tiny_artifacts(home)
    out = tmp_path / "all.json"
    assert obvious_all.main(["--router", "sw_ranking", "--home", str(here), "--embedder", "hash-64",
                             "--strong", "strong-1", "--weak", "weak-1",
                             "--option", "paper=sw_ranking:difficulty_k=0",
                             "--home-router", f"other=sw_ranking:{there}:hash-64", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report) == [p.name for p in (OBVIOUS_PATH, *OBVIOUS_LATER_PATHS)]
    for entries in report.values():
        assert set(entries) == {"sw_ranking", "paper", "other", "random", "length"}
        # the same training data and embedder in both homes: the same router, the same AUC
        assert entries["other"]["auc"] == entries["sw_ranking"]["auc"]
        assert entries["length"]["auc_balanced"] <= 0.3
