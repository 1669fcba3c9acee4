"""`turnout label` (issue 23): gold grading and the two-order judge, against a fake OpenAI-compatible server on
loopback (a real HTTP server and the real OpenAI client: its retries, Retry-After, errors), through the CLI."""

import json
import re
import threading

import pytest

pytest.importorskip("openai")
pytest.importorskip("fastapi")

from models.labeling import combined, extracted_letter, extracted_number, gold_kind, grade, verdict
from serve.cli import main
from tests.serve.fakes import LoopbackServer

PROMPTS = [f"What is {a} plus {b}?" for a, b in ((40, 2), (1200, 34), (7, 8))]


def _sum(text: str) -> int:
    a, b = map(int, re.findall(r"\d+", text)[:2])
    return a + b


def fake_models(calls: dict):
    """good answers right, bad one too high; judge picks the right sum, judge-first always says A, judge-mute
    never gives a verdict; flaky answers 429 (Retry-After) on its first call for each prompt."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI()
    lock = threading.Lock()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        model, text = body["model"], body["messages"][-1]["content"]
        with lock:
            calls[model] = calls.get(model, 0) + 1
            calls[(model, text)] = calls.get((model, text), 0) + 1
            first = calls[(model, text)] == 1
        if model == "flaky" and first:
            return JSONResponse({"error": {"message": "slow down"}}, status_code=429, headers={"retry-after": "0.2"})
        if model in ("good", "flaky"):
            reply = f"Adding them, the answer is {_sum(text):,}."
        elif model == "bad":
            reply = f"I think it is {_sum(text) + 1}."
        elif model == "judge":
            question = text.split("=== Request ===")[1]
            right = _sum(question)
            a = text.split("=== Reply A ===")[1].split("=== Reply B ===")[0]
            b = text.split("=== Reply B ===")[1]
            a_ok, b_ok = extracted_number(a) == right, extracted_number(b) == right
            reply = "A is right." + ("\n[[A]]" if a_ok and not b_ok else "\n[[B]]" if b_ok and not a_ok else "\n[[C]]")
        elif model == "judge-first":
            reply = "The first one.\n[[A]]"
        else:
            reply = "I cannot tell."
        return {"id": "x", "object": "chat.completion", "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
    return app


@pytest.fixture
def models():
    calls = {}
    with LoopbackServer(fake_models(calls)) as server:
        yield f"{server.url}/v1", calls


def _upstreams(url, *names):
    return [arg for name in names for arg in ("--upstream", f"{name}={url}")]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def files(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps({"prompt": p, "answer": str(_sum(p))}) + "\n" for p in PROMPTS))
    return prompts, gold


# -------------------------------------------------------------------------------------------------- graders

def test_gold_answers_are_compared_as_letters_numbers_or_text():
    assert [gold_kind(r) for r in ("C", "(B)", "1,234", "-3.5", "Paris")] == ["letter", "letter", "number", "number",
                                                                              "exact"]
    assert extracted_letter("Between A and B, the answer is (C). I'm sure.") == "C"
    assert extracted_letter("Answer: D") == "D" and extracted_letter("I pick (B)") == "B"
    assert extracted_letter("no choice here") is None
    assert extracted_number("first 3, then 1,234.") == 1234.0 and extracted_number("none") is None
    assert grade("so the answer is (C)", "C") == 1.0 and grade("the answer is B", "C") == 0.0
    assert grade("It comes to 1,234 apples", "1234") == 1.0 and grade("1233", "1234") == 0.0
    assert grade("  paris! ", "Paris") == 1.0 and grade("Lyon", "Paris") == 0.0


def test_the_two_orders_combine_and_disagreements_are_ties():
    assert verdict("because...\n[[B]]") == "B" and verdict("[[A]] no wait [[C]]") == "C" and verdict("none") is None
    assert combined("A", "B") == "model_a"  # model_a shown first won, and shown second won again
    assert combined("B", "A") == "model_b"
    assert combined("A", "A") == "tie"  # position bias: whoever came first
    assert combined("C", "C") == "tie" and combined("A", "C") == "tie"
    assert combined(None, "A") is None


# -------------------------------------------------------------------------------------------------- runs

def test_gold_labels_are_written_and_a_rerun_pays_for_nothing(models, files, tmp_path, capsys):
    url, calls = models
    prompts, gold = files
    out = tmp_path / "labels.jsonl"
    args = ["label", "--prompts", str(prompts), "--models", "good,bad", "--grader", "gold", "--gold", str(gold),
            "--out", str(out), *_upstreams(url, "good", "bad")]
    assert main(args) == 0
    rows = _rows(out)
    assert sorted((r["model"], r["score"]) for r in rows) == [("bad", 0.0)] * 3 + [("good", 1.0)] * 3
    assert calls["good"] == calls["bad"] == 3
    assert "6 label rows for 3 of 3 prompts" in capsys.readouterr().out
    assert main(args) == 0  # resumed from the journal: the same labels, no call made
    assert calls["good"] == calls["bad"] == 3 and _rows(out) == rows
    assert "answers: 0 called, 6 reused" in capsys.readouterr().out


def test_the_judge_is_asked_in_both_orders(models, files, tmp_path):
    url, calls = models
    prompts, _ = files
    out = tmp_path / "labels.jsonl"
    common = ["label", "--prompts", str(prompts), "--models", "good,bad", "--grader", "judge",
              *_upstreams(url, "good", "bad", "judge", "judge-first", "judge-mute")]
    assert main([*common, "--judge", "judge", "--out", str(out)]) == 0
    assert [(r["model_a"], r["model_b"], r["winner"]) for r in _rows(out)] == [("good", "bad", "model_a")] * 3
    assert calls["judge"] == 6
    judgements = _rows(tmp_path / "labels.judgements.jsonl")
    assert all(j["verdicts"] == ["A", "B"] and len(j["reasoning"]) == 2 for j in judgements)
    biased = tmp_path / "biased.jsonl"
    assert main([*common, "--judge", "judge-first", "--out", str(biased)]) == 0
    assert {r["winner"] for r in _rows(biased)} == {"tie"}


def test_a_judge_reply_without_a_verdict_is_counted_not_read_as_a_tie(models, files, tmp_path, capsys):
    url, _ = models
    prompts, _ = files
    out = tmp_path / "mute.jsonl"
    assert main(["label", "--prompts", str(prompts), "--models", "good,bad", "--grader", "judge", "--judge",
                 "judge-mute", "--out", str(out), *_upstreams(url, "good", "bad", "judge-mute")]) == 0
    assert _rows(out) == []
    assert "6 without a verdict" in capsys.readouterr().out
    assert [j["winner"] for j in _rows(tmp_path / "mute.judgements.jsonl")] == [None] * 3


def test_the_spend_cap_stops_new_calls_and_a_rerun_goes_on_without_paying_twice(models, files, tmp_path, capsys):
    url, calls = models
    prompts, gold = files
    out = tmp_path / "labels.jsonl"
    # $1 per million tokens in and out: a call reserves (prompt chars / 4 + 1 + 100 max_tokens), about 106
    # millionths, and costs 15: under a cap of 150 millionths the fourth call finds no room (45 + 106 > 150)
    args = ["label", "--prompts", str(prompts), "--models", "good,bad", "--grader", "gold", "--gold", str(gold),
            "--out", str(out), "--max-tokens", "100", "--concurrency", "1", *_upstreams(url, "good", "bad"),
            "--price", "good=1,1", "--price", "bad=1,1"]
    assert main([*args, "--max-usd", "0.00015"]) == 0
    first = calls.get("good", 0) + calls.get("bad", 0)
    assert first == 3 and "stopped at the spend cap" in capsys.readouterr().out
    journal = tmp_path / "labels.jsonl.journal.jsonl"
    with journal.open("a") as f:
        f.write('{"kind": "answer", "item": "cut by a ki')  # a kill in the middle of a line
    assert main([*args, "--max-usd", "1"]) == 0
    assert calls["good"] + calls["bad"] == 6  # every answer bought once
    assert len(_rows(out)) == 6
    assert "$0.0001" in capsys.readouterr().out  # 6 calls x 15 millionths, over both runs


def test_429_with_retry_after_is_retried(models, files, tmp_path):
    url, calls = models
    prompts, gold = files
    out = tmp_path / "labels.jsonl"
    assert main(["label", "--prompts", str(prompts), "--models", "flaky", "--grader", "gold", "--gold", str(gold),
                 "--out", str(out), *_upstreams(url, "flaky")]) == 0
    assert [r["score"] for r in _rows(out)] == [1.0] * 3 and calls["flaky"] == 6


def test_labels_from_a_capture_folder_reuse_the_captured_answers(models, tmp_path):
    from serve.capture import CaptureWriter

    url, calls = models
    root = tmp_path / "capture"
    writer = CaptureWriter(root, "r1", queue_size=100, rotate_rows=100, rotate_s=60, max_total_bytes=1 << 30)
    for i, prompt in enumerate(PROMPTS):
        messages = json.dumps([{"role": "user", "content": prompt}])
        writer.offer("requests", {"request_id": f"req-{i}", "prompt": prompt, "messages": messages})
        writer.offer("answers", {"request_id": f"req-{i}", "model": "bad", "side": "weak", "status": 200,
                                 "answer": f"It is {_sum(prompt) + 1}", "shadow": False})
    writer.offer("requests", {"request_id": "req-private", "prompt": None, "prompt_sha256": "ab"})
    writer.close()
    out = tmp_path / "labels.jsonl"
    assert main(["label", "--captured", str(root), "--models", "good,bad", "--grader", "judge", "--judge", "judge",
                 "--out", str(out), *_upstreams(url, "good", "bad", "judge")]) == 0
    assert calls["good"] == 3 and "bad" not in calls  # the captured answers were used as they are
    assert [r["winner"] for r in _rows(out)] == ["model_a"] * 3


def test_bad_input_is_one_line_and_exit_2(models, files, tmp_path, capsys):
    url, _ = models
    prompts, gold = files
    out = tmp_path / "labels.jsonl"
    out.write_text("earlier labels\n")
    base = ["label", "--prompts", str(prompts), "--out", str(out)]
    template = tmp_path / "judge.txt"
    template.write_text("no placeholders")
    short_gold = tmp_path / "short.jsonl"
    short_gold.write_text(json.dumps({"prompt": PROMPTS[0], "answer": "42"}) + "\n")
    for args, message in [
        ([*base, "--models", "nobody", "--grader", "gold", "--gold", str(gold)], "unknown model(s) nobody"),
        ([*base, "--models", "good", "--grader", "gold", *_upstreams(url, "good")], "needs --gold"),
        ([*base, "--models", "good", "--grader", "judge", "--judge", "good", *_upstreams(url, "good")],
         "at least two --models"),
        ([*base, "--models", "good,bad", "--grader", "judge", "--judge", "judge", "--judge-prompt", str(template),
          *_upstreams(url, "good", "bad", "judge")], "missing {question}"),
        ([*base, "--models", "good", "--grader", "gold", "--gold", str(gold), "--max-usd", "1",
          *_upstreams(url, "good")], "needs the prices of good"),
        ([*base, "--models", "good", "--grader", "gold", "--gold", str(short_gold), *_upstreams(url, "good")],
         "no answer for 2 of 3 prompts"),
        ([*base, "--models", "down", "--grader", "gold", "--gold", str(gold), "--retries", "0",
          "--upstream", "down=http://127.0.0.1:9/v1"], "down (http://127.0.0.1:9/v1): APIConnectionError"),
        ([*base, "--models", "good", "--grader", "gold", "--gold", str(gold), "--upstream", "good=ftp://x"],
         "expected NAME=http"),
    ]:
        assert main(args) == 2, args
        err = capsys.readouterr().err  # the progress bar (stderr) may have started, then one line
        assert "Traceback" not in err and err.splitlines()[-1].startswith("turnout: error: "), (args, err)
        assert message in err.splitlines()[-1], (args, err)
        assert out.read_text() == "earlier labels\n"  # never half-written, never overwritten by a failed run
