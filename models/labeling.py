"""Labels from your own prompts: the models' answers, graded with gold answers or an LLM judge (`turnout label`).

RouteLLM (arXiv 2406.18665, section 5) augments Arena battles with in-domain prompts labelled two ways, and both
make its routers beat random where Arena data alone does not:

- **gold**: each model's answer is compared with a reference answer (MMLU's letter, GSM8K's final number). Output:
  the scores kind of `models.user_data` (prompt, model, score 0/1).
- **judge**: an LLM judge compares two models' answers. Asked once per order (A/B, then B/A) to cancel its position
  bias; a pair whose two verdicts disagree counts as a tie, as the paper and Arena-Hard do. Output: the battles kind
  (prompt, model_a, model_b, winner), and the judge's replies beside it (`*.judgements.jsonl`). The judge prompt is
  a file (`models/judge_pairwise.txt` by default, `--judge-prompt` to replace it) with `{question}`, `{answer_a}`
  and `{answer_b}`; its reply must end with [[A]], [[B]] or [[C]] (a tie). A reply without one is counted and
  reported, never read as a tie.

Prompts come from a file or from the capture folder of a running service (`serve/capture.py`), whose served and
shadow answers are used as they are: only missing answers are paid for. Every call goes through the OpenAI client
(bounded concurrency, its retries with backoff that honour Retry-After on 429 and 5xx) and is journalled as soon as
it returns (`*.journal.jsonl` beside the output), so a run that is killed and started again pays for no answer or
verdict twice. `--max-usd` caps the spend, journalled calls included: a call starts only while the spend so far
plus the calls in flight, each reserved at its largest cost (prompt and `max_tokens` at the model's prices), stays
under the cap.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from index.errors import ConfigError, TurnoutError

log = logging.getLogger(__name__)

DEFAULT_JUDGE_PROMPT = Path(__file__).with_name("judge_pairwise.txt")
VERDICT = re.compile(r"\[\[([ABC])\]\]")
CHARS_PER_TOKEN = 4  # for reserving a call's prompt cost before the upstream counts its tokens


class LabelError(TurnoutError):
    """A run that cannot go on: an upstream unreachable after the client's retries, refusing the key, ..."""

    http_status = 502
    code = "label_failed"


@dataclass(frozen=True)
class Endpoint:
    """One model behind an OpenAI-compatible endpoint, by the name labels carry."""

    name: str
    base_url: str
    model: str  # the name sent upstream
    api_key: str | None = None
    price_input_usd_per_mtok: float | None = None
    price_output_usd_per_mtok: float | None = None

    @property
    def priced(self) -> bool:
        return self.price_input_usd_per_mtok is not None and self.price_output_usd_per_mtok is not None

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        if not self.priced:
            return 0.0
        return (prompt_tokens * self.price_input_usd_per_mtok + completion_tokens * self.price_output_usd_per_mtok) / 1e6


@dataclass
class Item:
    """One prompt to label: its id (the captured request id, or a digest of the messages), the text routers score,
    the messages sent to the models, answers already known by model name, and the gold answer."""

    id: str
    prompt: str
    messages: list[dict]
    answers: dict[str, str] = field(default_factory=dict)
    reference: str | None = None


def item_id(messages: list[dict]) -> str:
    return "p-" + hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:24]


# ------------------------------------------------------------------------------------------------ gold grading

_LETTER_PATTERNS = [
    re.compile(r"(?i:answer)\s*(?:(?i:is)|:)?\s*\(?([A-J])\)?\b"),  # "the answer is (C)", "Answer: C"
    re.compile(r"\(([A-J])\)"),
    re.compile(r"\b([A-J])\b"),
]
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def gold_kind(reference: str) -> str:
    """letter (A-J), number, or exact: how a reference answer is compared."""
    text = reference.strip()
    if re.fullmatch(r"\(?[A-J]\)?", text):
        return "letter"
    if re.fullmatch(r"-?[\d,]*\.?\d+", text):
        return "number"
    return "exact"


def extracted_letter(answer: str) -> str | None:
    """The choice an answer settles on: the last "answer is X", else the last "(X)", else the last lone capital."""
    for pattern in _LETTER_PATTERNS:
        found = pattern.findall(answer)
        if found:
            return found[-1]
    return None


def extracted_number(answer: str) -> float | None:
    """The last number in an answer (GSM8K's convention: the final number is the answer)."""
    found = _NUMBER.findall(answer)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def _normalised(text: str) -> str:
    return re.sub(r"[\W_]+", " ", text.casefold()).strip()


def grade(answer: str, reference: str) -> float:
    """1.0 if the answer gives the reference answer, else 0.0."""
    kind = gold_kind(reference)
    if kind == "letter":
        return float(extracted_letter(answer) == reference.strip().strip("()"))
    if kind == "number":
        got, want = extracted_number(answer), float(reference.replace(",", ""))
        return float(got is not None and math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9))
    return float(_normalised(answer) == _normalised(reference))


# ------------------------------------------------------------------------------------------------ judging

def verdict(reply: str) -> str | None:
    """A, B or C (tie) from the judge's last [[X]]; None when the reply has none."""
    found = VERDICT.findall(reply or "")
    return found[-1] if found else None


def combined(first: str | None, second: str | None) -> str | None:
    """The winner of (model_a, model_b) from the verdict with model_a shown first and the one with it shown second:
    model_a, model_b or tie; disagreeing orders are a tie; None when either verdict is missing."""
    if first is None or second is None:
        return None
    as_first = {"A": "model_a", "B": "model_b", "C": "tie"}[first]
    as_second = {"A": "model_b", "B": "model_a", "C": "tie"}[second]
    return as_first if as_first == as_second else "tie"


# ------------------------------------------------------------------------------------------------ journal

class Journal:
    """Append-only JSON lines of the calls already paid for: answers by (item, model), verdicts by (item, model_a,
    model_b, order). Each line is written and flushed as its call returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.answers: dict[tuple[str, str], dict] = {}
        self.verdicts: dict[tuple[str, str, str, int], dict] = {}
        self.spent_usd = 0.0
        if path.exists():
            for number, line in enumerate(path.read_text().splitlines(), 1):
                try:
                    record = json.loads(line)
                except ValueError:  # a line cut by a kill: its call is paid again, nothing else is lost
                    log.warning("%s line %d is incomplete; ignored", path, number)
                    continue
                self._index(record)
        self.file = path.open("a")

    def _index(self, record: dict) -> None:
        self.spent_usd += record.get("cost_usd", 0.0)
        if record["kind"] == "answer":
            self.answers[record["item"], record["model"]] = record
        else:
            self.verdicts[record["item"], record["model_a"], record["model_b"], record["order"]] = record

    def add(self, record: dict) -> None:
        self._index(record)
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


# ------------------------------------------------------------------------------------------------ the run


@dataclass
class Tally:
    answers_called: int = 0
    answers_reused: int = 0  # captured or journalled
    verdicts_called: int = 0
    unparsed_verdicts: int = 0
    failed_calls: int = 0
    skipped_for_budget: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: list[str] = field(default_factory=list)  # one line per failed call (the first few)


class Labeller:
    """Answers and verdicts for items, through the journal and within the spend cap."""

    def __init__(self, endpoints: dict[str, Endpoint], journal: Journal, max_usd: float | None, max_tokens: int,
                 concurrency: int, max_retries: int = 4, timeout_s: float = 600.0,
                 on_progress: Callable[[Tally, float], None] = lambda tally, spent: None) -> None:
        self.endpoints, self.journal, self.max_usd, self.max_tokens = endpoints, journal, max_usd, max_tokens
        self.tally = Tally()
        self.reserved = 0.0
        self.gate = asyncio.Semaphore(concurrency)
        self.max_retries, self.timeout_s, self.on_progress = max_retries, timeout_s, on_progress
        self.clients: dict[str, Any] = {}
        self.stopped: str | None = None  # why no new call may start

    def client(self, endpoint: Endpoint):
        import openai

        if endpoint.name not in self.clients:
            self.clients[endpoint.name] = openai.AsyncOpenAI(
                base_url=endpoint.base_url, api_key=endpoint.api_key or "none", max_retries=self.max_retries,
                timeout=self.timeout_s)
        return self.clients[endpoint.name]

    @property
    def spent_usd(self) -> float:
        return self.journal.spent_usd

    async def complete(self, endpoint: Endpoint, messages: list[dict]) -> dict | None:
        """{"text", "prompt_tokens", "completion_tokens", "cost_usd"} of one call, or None when the cap has no room
        or the call failed (counted). An unreachable upstream or one refusing turnout's key stops the run."""
        import openai

        prompt_chars = sum(len(str(m.get("content") or "")) for m in messages)
        reserve = endpoint.cost(prompt_chars // CHARS_PER_TOKEN + 1, self.max_tokens)
        async with self.gate:
            if self.stopped or (self.max_usd is not None and self.spent_usd + self.reserved + reserve > self.max_usd):
                self.stopped = self.stopped or "spend cap"
                self.tally.skipped_for_budget += 1
                return None
            self.reserved += reserve
            try:
                reply = await self.client(endpoint).chat.completions.create(
                    model=endpoint.model, messages=messages, max_tokens=self.max_tokens, temperature=0.0)
            except (openai.APIConnectionError, openai.AuthenticationError, openai.PermissionDeniedError,
                    openai.NotFoundError) as exc:
                self.stopped = f"{endpoint.name} ({endpoint.base_url}): {type(exc).__name__}: {_line(exc)}"
                raise LabelError(self.stopped) from None
            except openai.APIError as exc:  # this prompt failed (after the client's retries): counted, run goes on
                self.tally.failed_calls += 1
                if len(self.tally.errors) < 20:
                    self.tally.errors.append(f"{endpoint.name}: {type(exc).__name__}: {_line(exc)}")
                return None
            finally:
                self.reserved -= reserve
        usage = reply.usage
        tokens = (usage.prompt_tokens, usage.completion_tokens) if usage else (prompt_chars // CHARS_PER_TOKEN, self.max_tokens)
        self.tally.prompt_tokens += tokens[0]
        self.tally.completion_tokens += tokens[1]
        text = reply.choices[0].message.content if reply.choices else None
        return {"text": text or "", "prompt_tokens": tokens[0], "completion_tokens": tokens[1],
                "cost_usd": endpoint.cost(*tokens)}

    async def answer(self, item: Item, model: str) -> str | None:
        if model in item.answers:
            self.tally.answers_reused += 1
            return item.answers[model]
        done = self.journal.answers.get((item.id, model))
        if done is not None:
            self.tally.answers_reused += 1
            return done["text"]
        result = await self.complete(self.endpoints[model], item.messages)
        if result is None:
            return None
        self.tally.answers_called += 1
        self.journal.add({"kind": "answer", "item": item.id, "model": model, **result})
        self.on_progress(self.tally, self.spent_usd)
        return result["text"]

    async def judged(self, item: Item, judge: Endpoint, template: str, model_a: str, model_b: str,
                     answers: dict[str, str], order: int) -> dict | None:
        key = (item.id, model_a, model_b, order)
        if key in self.journal.verdicts:
            return self.journal.verdicts[key]
        first, second = (model_a, model_b) if order == 0 else (model_b, model_a)
        prompt = template.format(question=item.prompt, answer_a=answers[first], answer_b=answers[second])
        result = await self.complete(judge, [{"role": "user", "content": prompt}])
        if result is None:
            return None
        self.tally.verdicts_called += 1
        record = {"kind": "verdict", "item": item.id, "model_a": model_a, "model_b": model_b, "order": order,
                  "judge": judge.name, "verdict": verdict(result["text"]), **result}
        self.journal.add(record)
        self.on_progress(self.tally, self.spent_usd)
        return record


async def _label_item(labeller: Labeller, item: Item, models: list[str], grader: str, judge: Endpoint | None,
                      template: str | None) -> tuple[list[dict], list[dict]]:
    """(label rows, judgement rows) of one item."""
    answers = dict(zip(models, await asyncio.gather(*(labeller.answer(item, m) for m in models))))
    answers = {m: a for m, a in answers.items() if a is not None}
    if grader == "gold":
        return [{"prompt": item.prompt, "model": m, "score": grade(a, item.reference)} for m, a in answers.items()], []
    rows, judgements = [], []
    pairs = [(a, b) for i, a in enumerate(models) for b in models[i + 1:] if a in answers and b in answers]
    for model_a, model_b in pairs:
        first, second = await asyncio.gather(*(labeller.judged(item, judge, template, model_a, model_b, answers, order)
                                               for order in (0, 1)))
        if first is None or second is None:
            continue
        if first["verdict"] is None or second["verdict"] is None:
            labeller.tally.unparsed_verdicts += (first["verdict"] is None) + (second["verdict"] is None)
        winner = combined(first["verdict"], second["verdict"])
        judgements.append({"item": item.id, "prompt": item.prompt, "model_a": model_a, "model_b": model_b,
                           "verdicts": [first["verdict"], second["verdict"]], "winner": winner,
                           "reasoning": [first["text"], second["text"]]})
        if winner is not None:
            rows.append({"prompt": item.prompt, "model_a": model_a, "model_b": model_b, "winner": winner})
    return rows, judgements


def run(items: list[Item], endpoints: dict[str, Endpoint], models: list[str], out: Path, grader: str,
        judge: Endpoint | None = None, judge_prompt: Path | None = None, max_usd: float | None = None,
        max_tokens: int = 1024, concurrency: int = 8, max_retries: int = 4, progress: bool = True) -> dict:
    """Label `items` into `out` (the labels file, .jsonl) and return a summary. Resumable through
    `<out>.journal.jsonl`; judge runs also write `<out stem>.judgements.jsonl`."""
    from tqdm.auto import tqdm

    template = None
    if grader == "judge":
        template = (judge_prompt or DEFAULT_JUDGE_PROMPT).read_text()
        missing = [k for k in ("{question}", "{answer_a}", "{answer_b}") if k not in template]
        if missing:
            raise ConfigError(f"judge prompt {judge_prompt}: missing {', '.join(missing)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    journal = Journal(out.with_name(out.name + ".journal.jsonl"))
    bar = tqdm(total=len(items), desc=f"labelling {len(items):,} prompts ({grader})", unit="prompt",
               disable=not progress)

    def on_progress(tally: Tally, spent: float) -> None:
        bar.set_postfix_str(f"{tally.prompt_tokens + tally.completion_tokens:,} tokens, ${spent:.4f}", refresh=False)

    labeller = Labeller(endpoints, journal, max_usd, max_tokens, concurrency, max_retries, on_progress=on_progress)
    spent_before = journal.spent_usd

    async def everything():
        async def one(item):
            result = await _label_item(labeller, item, models, grader, judge, template)
            bar.update()
            return result
        return await asyncio.gather(*(one(item) for item in items))

    try:
        results = asyncio.run(everything())
    finally:
        bar.close()
        journal.close()
    rows = [row for labelled, _ in results for row in labelled]
    judgements = [j for _, labelled in results for j in labelled]
    _write_jsonl(out, rows)
    if grader == "judge":
        _write_jsonl(out.with_name(out.stem + ".judgements.jsonl"), judgements)
    tally = labeller.tally
    return {"labels": str(out), "rows": len(rows), "prompts": len(items),
            "prompts_labelled": len({row["prompt"] for row in rows}), "answers_called": tally.answers_called,
            "answers_reused": tally.answers_reused, "verdicts_called": tally.verdicts_called,
            "unparsed_verdicts": tally.unparsed_verdicts, "failed_calls": tally.failed_calls,
            "skipped_for_budget": tally.skipped_for_budget, "prompt_tokens": tally.prompt_tokens,
            "completion_tokens": tally.completion_tokens, "spent_usd_this_run": journal.spent_usd - spent_before,
            "spent_usd_total": journal.spent_usd, "errors": tally.errors}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    """Written whole and renamed into place: a failed run never leaves half a labels file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    partial.replace(path)


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


# ------------------------------------------------------------------------------------------------ inputs


def prompt_items(path: str | Path) -> list[Item]:
    """Items from a prompt file (models.user_data.read_prompts), each prompt once."""
    from models.user_data import read_prompts

    return [Item(item_id([{"role": "user", "content": p}]), p, [{"role": "user", "content": p}])
            for p in dict.fromkeys(read_prompts(path))]


def with_references(items: list[Item], gold: str | Path, every: bool) -> list[Item]:
    """The items with their reference answers from a gold file (.jsonl/.csv/.parquet: prompt, answer), matched on
    the prompt text. `every`: a prompt without one is an error; else such items are left out (and counted)."""
    from models.user_data import read_table

    frame, _, _ = read_table(gold)
    columns = {str(c).lower(): c for c in frame.columns}
    if "prompt" not in frame.columns or "answer" not in columns:
        raise ConfigError(f"{gold}: needs prompt and answer columns; it has {', '.join(map(str, frame.columns[:20]))}")
    references = {str(p): str(a).strip() for p, a in zip(frame["prompt"], frame[columns["answer"]])
                  if a is not None and str(a).strip()}
    missing = [item.prompt for item in items if item.prompt not in references]
    if missing and (every or len(missing) == len(items)):
        raise ConfigError(f"{gold}: no answer for {len(missing)} of {len(items)} prompts (first: {missing[0][:60]!r})")
    if missing:
        log.warning("%s: no answer for %d of %d prompts; they are not labelled", gold, len(missing), len(items))
    kept = [item for item in items if item.prompt in references]
    for item in kept:
        item.reference = references[item.prompt]
    return kept


def captured_items(root: str | Path) -> list[Item]:
    """Items from a capture folder: the captured requests with their prompt text, and the answers already there
    (served and shadow, by upstream model name). Requests captured without text cannot be labelled: counted."""
    import pyarrow.parquet as pq

    root = Path(root)
    if not (root / "requests").is_dir() or not list((root / "requests").glob("*.parquet")):
        raise ConfigError(f"{root}: no captured requests (expected {root / 'requests'}/*.parquet)")
    requests = pq.read_table(root / "requests").to_pylist()
    answers: dict[str, dict[str, str]] = {}
    if list((root / "answers").glob("*.parquet")):
        for row in pq.read_table(root / "answers").to_pylist():
            if row["answer"] is not None and (row["status"] or 0) < 400 and not row["error"]:
                answers.setdefault(row["request_id"], {})[row["model"]] = row["answer"]
    items, textless = [], 0
    for row in requests:
        if row["prompt"] is None:
            textless += 1
            continue
        messages = json.loads(row["messages"]) if row["messages"] else [{"role": "user", "content": row["prompt"]}]
        items.append(Item(row["request_id"], row["prompt"], messages, answers.get(row["request_id"], {})))
    if textless:
        log.warning("%s: %d captured requests have no text (capture.store_text: false) and cannot be labelled",
                    root, textless)
    if not items:
        raise ConfigError(f"{root}: none of {len(requests)} captured requests has its text")
    return items


def endpoints_from(config, extra: list[str], prices: list[str]) -> dict[str, Endpoint]:
    """Endpoints by model name: the config's upstreams (by their `model`, also reachable as strong/weak), then
    `--upstream NAME=BASE_URL[@KEY_ENV]`, then `--price NAME=IN,OUT` (USD per million tokens)."""
    import os

    from serve.config import SIDES

    found: dict[str, Endpoint] = {}
    for side in SIDES:
        up = getattr(config.upstreams, side)
        key = os.environ.get(up.api_key_env) if up.api_key_env else None
        endpoint = Endpoint(up.model, up.base_url, up.model, key, up.price_input_usd_per_mtok,
                            up.price_output_usd_per_mtok)
        found[up.model] = found[side] = endpoint
    for spec in extra:
        name, _, rest = spec.partition("=")
        url, _, key_env = rest.partition("@")
        if not name or not url.startswith(("http://", "https://")):
            raise ConfigError(f"--upstream {spec!r}: expected NAME=http(s)://host/v1[@KEY_ENV]")
        found[name] = Endpoint(name, url.rstrip("/"), name, os.environ.get(key_env) if key_env else None)
    for spec in prices:
        name, _, pair = spec.partition("=")
        try:
            price_in, price_out = (float(x) for x in pair.split(","))
        except ValueError:
            raise ConfigError(f"--price {spec!r}: expected NAME=INPUT,OUTPUT (USD per million tokens)") from None
        if name not in found:
            raise ConfigError(f"--price {spec!r}: no upstream named {name!r}")
        old = found[name]
        priced = Endpoint(old.name, old.base_url, old.model, old.api_key, price_in, price_out)
        found.update({alias: priced for alias, endpoint in found.items() if endpoint == old})
    return found
