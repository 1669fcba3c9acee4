"""loadtest.embed_memory: bad arguments are one usage line and exit code 2; a tiny run records what it says."""

import pytest

from loadtest import embed_memory


@pytest.mark.parametrize("argv", [["--pad", "0"], ["--calls", "0"]])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        embed_memory.main(argv)
    assert exited.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def test_tiny_run_records_growth_and_time(monkeypatch):
    import index.embedder

    monkeypatch.setattr(index.embedder, "PAD_TOKENS", index.embedder.PAD_TOKENS)  # run_one sets it; undo after
    run = embed_memory.run_one(pad=16, calls=3)
    assert run["pad"] == 16 and run["calls"] == 3 and set(run["rss_growth_mb"]) == {3} and run["ms_per_call"] > 0
