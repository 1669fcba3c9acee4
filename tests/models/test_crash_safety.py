"""A process killed (SIGKILL: no `finally`, no cleanup) while `turnout data build` or `turnout train` writes
leaves the earlier artifacts exactly as they were, and the next run works."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd

from models import data as training

REPO = Path(__file__).resolve().parents[2]
STRONG, WEAK = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"


def _battles(prompts: list[str], winner: str) -> pd.DataFrame:
    return pd.DataFrame([(p, STRONG, WEAK, winner, "src-a") for p in prompts] +
                        [(p, "some-small-model", WEAK, "model_b", "src-a") for p in prompts],
                        columns=training.BATTLE_COLUMNS)


def _training_data(battles: pd.DataFrame) -> training.TrainingData:
    ratings = training.fit_ratings(battles)
    return training.TrainingData(battles, pd.DataFrame(columns=["prompt", "model", "score", "source"]), ratings,
                                 training.assign_tiers(ratings, 3), {"sources": {}})


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def _killed(script: str, home: Path) -> None:
    """Run `script` in a fresh interpreter that SIGKILLs itself where the script says; it must die that way."""
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "HOME_DIR": str(home), "PYTHONPATH": str(REPO)}, timeout=300)
    assert run.returncode == -signal.SIGKILL, (run.returncode, run.stderr[-2000:])


def test_data_build_killed_between_files_keeps_the_earlier_set(tmp_path):
    home = tmp_path / "home"
    first = _training_data(_battles(["What is 2 + 2?", "Write a haiku about rain"], "tie"))
    first_hash = training.save(first, home / "data")
    before = _snapshot(home / "data")
    # The new set's battles are written in full, then the process dies before scores.parquet and models.json.
    _killed("""
        import os, signal, pandas as pd
        from pathlib import Path
        from tests.models.test_crash_safety import _battles, _training_data
        from models import data as training
        real, calls = pd.DataFrame.to_parquet, []
        def dying(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(self, *args, **kwargs)
        pd.DataFrame.to_parquet = dying
        training.save(_training_data(_battles(["Prove Fermat's little theorem", "Derive the Navier-Stokes equations"],
                                              "model_a")), Path(os.environ["HOME_DIR"]) / "data")
    """, home)
    assert _snapshot(home / "data") == before
    assert json.loads((home / "data" / "models.json").read_text())["data_hash"] == first_hash
    assert training.load(home / "data").battles.equals(first.battles)
    # The next build replaces the set as a whole, leftovers of the killed one notwithstanding.
    second = _training_data(_battles(["Explain quicksort"], "model_a"))
    training.save(second, home / "data")
    assert training.load(home / "data").battles.equals(second.battles)


def test_a_swap_killed_between_its_two_renames_is_put_back(tmp_path):
    """atomic_dir renames final -> .final.old, then tmp -> final: dying in between leaves only .old."""
    from index.paths import atomic_dir

    home = tmp_path / "home"
    training.save(_training_data(_battles(["What is 2 + 2?"], "tie")), home / "data")
    before = _snapshot(home / "data")
    os.replace(home / "data", home / ".data.old")  # where a kill between the renames leaves it
    with atomic_dir(home / "unrelated"):
        pass
    assert not (home / "data").exists()  # only the folder being written is repaired
    with atomic_dir(home / "data") as tmp:
        assert (home / "data").is_dir() and _snapshot(home / "data") == before  # put back before writing
        (tmp / "models.json").write_text("{}")
    assert not (home / ".data.old").exists()


def test_train_killed_while_writing_the_index_keeps_the_earlier_router(tmp_path):
    home = tmp_path / "home"
    training.save(_training_data(_battles(["What is 2 + 2?", "Write a haiku about rain", "Prove it"], "model_a")),
                  home / "data")
    args = ["train", "sw_ranking", "--home", str(home), "--embedder", "hash-8"]
    from serve.cli import main

    assert main(args) == 0
    folder = home / "routers" / "sw_ranking"
    before = _snapshot(folder)
    training.save(_training_data(_battles(["Explain quicksort", "Say hi"], "tie")), home / "data")  # new data
    _killed(f"""
        import os, signal, faiss
        faiss.write_index = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
        from serve.cli import main
        main({args!r})
    """, home)
    assert _snapshot(folder) == before
    assert main(args) == 0 and _snapshot(folder) != before  # retrained on the new data over the leftovers
