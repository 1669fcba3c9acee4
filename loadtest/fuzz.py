"""Fuzzing the HTTP API with schemathesis, from the service's own `/openapi.json`, over real HTTP.

    python -m loadtest.fuzz --cases 5000 --out benchmarks/fuzz.json

`POST /v1/route` and `POST /v1/chat/completions` of a real Ray Serve application, started here as the serve tests
start theirs (`tests/serve/conftest.py`: tiny sw_ranking, mf and bert artifacts on the hash-64 embedder, `app_args`,
`deploy_apps` on a 2-CPU local Ray), both upstreams on the tests' fake OpenAI server (`tests/serve/fakes.py`) so
that chat completions really proxy, streams included; `--url` fuzzes a service that is already running instead.
Three kinds of case per endpoint, each one Hypothesis run with a fixed seed (the same cases every run):

- positive: schemathesis's schema-valid bodies, three in four steered, in ways that keep them schema-valid, towards
  what the server accepts beyond the schema (a router or chat model name that exists, roles, a user turn with text,
  thresholds in [0, 1], one of prompt/messages), so that cases get past the validators to routing and the upstream;
- negative: schemathesis's schema-violating bodies (wrong types, missing required fields, unknown fields on
  /v1/route); each must be refused with a 4xx (negative_data_rejection);
- malformed: raw bodies outside what schemathesis sends, for every router: random bytes, truncated JSON, NaN and
  Infinity, numbers past float range or past Python's 4,300-digit limit, lone UTF-16 surrogates (escaped, and
  encoded in UTF-8), nesting from 1 to 100,000 levels, other top-level values, a UTF-8 BOM, UTF-16 and UTF-32, a body
  over `api.max_body_bytes`, other content types. One that is not JSON by RFC 8259 must get a 4xx.

Checks on every answer: no status >= 500; status, content type and body as the OpenAPI document declares them
(schemathesis's status_code_conformance, content_type_conformance, response_schema_conformance); every error of the
service's own has the body `{"error": {"message", "type", "code"}}` with a code README's Errors table lists for that
status (an upstream's own answer, marked by `x-turnout-model`, is passed through as it came). Failures are
collected, not raised, so that one run counts them all: the report gives per run (operation, kind) the cases, status
counts, error codes, one example per status and code, and each distinct failure with examples. The CI test
(`tests/serve/test_fuzz.py`) runs the same `fuzz_run` with about 1,000 cases in all and seed 0; this command defaults
to seed 1, other cases.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any, Iterator

# share of the cases per (operation, kind); they sum to 1
PLAN = {
    ("/v1/route", "positive"): 0.30, ("/v1/route", "negative"): 0.15, ("/v1/route", "malformed"): 0.075,
    ("/v1/chat/completions", "positive"): 0.25, ("/v1/chat/completions", "negative"): 0.15,
    ("/v1/chat/completions", "malformed"): 0.075,
}
ROUTERS = ("sw_ranking", "mf", "length", "random", "bert")  # what the fuzzed application serves
CHAT_MODELS = ("turnout", "router-mf", "router-sw_ranking", "router-bert", "router-length-0.5", "router-random-0.0",
               "router-mf-1", "router-bert-0.5", "router-length-1e-3", "router-mf-nan", "router-mf-inf", "router-nope")
SCHEMA_CHECKS = ("status_code_conformance", "content_type_conformance", "response_schema_conformance")
OWN_CHECKS = ("malformed_json_rejection", "documented error shape", "transport error")
MAX_EXAMPLES_KEPT = 3  # per distinct failure
TIMEOUT_S = 60.0


def plan(total: int) -> dict[tuple[str, str], int]:
    """Cases per (operation, kind) for `total` cases in all (at least one each)."""
    return {key: max(1, round(total * share)) for key, share in PLAN.items()}


# ------------------------------------------------------------------------------------------------- strategies

def _steer(data, path: str, body: Any) -> Any:
    """A schema-valid body, changed (three times in four) only in ways that keep it schema-valid, towards what the
    server accepts beyond the schema: which router and model names exist, which roles are allowed, that there is
    a user turn with text to score, that thresholds lie in [0, 1] and that /v1/route takes exactly one of prompt
    and messages."""
    from hypothesis import strategies as st

    if not isinstance(body, dict) or not data.draw(st.sampled_from((True, True, True, False)), label="steer"):
        return body  # a quarter as generated
    body = dict(body)
    text = st.text(min_size=1, max_size=200).filter(str.strip)
    if path == "/v1/route":
        keep = data.draw(st.sampled_from(("prompt", "messages")), label="keep")
        body.pop("messages" if keep == "prompt" else "prompt", None)
        if keep == "prompt" and not (isinstance(body.get("prompt"), str) and body["prompt"].strip()):
            body["prompt"] = data.draw(text, label="prompt")
        router = data.draw(st.sampled_from((None, "as generated") + ROUTERS), label="router")
        if router is None:
            body.pop("router", None)
        elif router != "as generated":
            body["router"] = router
        if "threshold" in body and "strong_ratio" in body:
            body.pop(data.draw(st.sampled_from(("threshold", "strong_ratio")), label="drop"))
        for field in ("threshold", "strong_ratio"):
            value = body.get(field)
            if isinstance(value, (int, float)) and not 0.0 <= value <= 1.0:
                body[field] = data.draw(st.floats(0.0, 1.0), label=field)
    else:
        body["model"] = data.draw(st.sampled_from(CHAT_MODELS + (body.get("model"),)), label="model")
        keep = "messages"
    if keep == "messages":
        messages = body.get("messages") if isinstance(body.get("messages"), list) else []
        body["messages"] = [_steer_message(data, m, text) if isinstance(m, dict) else m for m in messages]
        if not any(isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str)
                   and m["content"].strip() for m in body["messages"]):
            body["messages"].append({"role": "user", "content": data.draw(text, label="turn")})
    return body


def _steer_message(data, message: dict, text) -> dict:
    """A valid role, and content parts the validator takes (each an object with a type; text parts with text)."""
    from hypothesis import strategies as st

    from serve.protocol import ROLES

    message = {**message, "role": data.draw(st.sampled_from(("user",) * 3 + ROLES), label="role")}
    content = message.get("content")
    if isinstance(content, list):
        valid = [part for part in content if isinstance(part, dict) and isinstance(part.get("type"), str)
                 and (part["type"] != "text" or isinstance(part.get("text"), str))]
        message["content"] = valid + [{"type": "text", "text": data.draw(text, label="part")}]
    return message


def _nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def malformed_bodies(path: str):
    """(content bytes, content type or None): raw bodies outside what schemathesis generates, for any router."""
    from hypothesis import strategies as st

    @st.composite
    def bodies(draw):
        router = draw(st.sampled_from(ROUTERS))
        if path == "/v1/route":
            valid = {"prompt": "fuzz the router", "router": router}
            head = f'"router": "{router}"'
            text_body = '{{"prompt": {text}, ' + head + '}}'
            number_body = '{{"prompt": "hi", ' + head + ', "threshold": {number}}}'
            extra_body = '{{"messages": [{{"role": "user", "content": "hi", "x": {value}}}], ' + head + '}}'
        else:
            valid = {"model": f"router-{router}", "messages": [{"role": "user", "content": "fuzz the router"}]}
            head = f'"model": "router-{router}"'
            text_body = '{{' + head + ', "messages": [{{"role": "user", "content": {text}}}]}}'
            number_body = '{{' + head + ', "messages": [{{"role": "user", "content": "hi"}}], "temperature": {number}}}'
            extra_body = '{{' + head + ', "messages": [{{"role": "user", "content": "hi"}}], "x": {value}}}'
        text = json.dumps(valid)
        return draw(st.one_of(
            st.binary(max_size=300),
            st.integers(0, len(text) - 1).map(lambda n: text[:n].encode()),  # truncated
            st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" * 5000, "0." + "0" * 400 + "1",
                             "123456789012345678901234567890", "true", "null", '"0.5"', "[0.5]", "-0", "1E-400"])
            .map(lambda n: number_body.format(number=n).encode()),
            st.sampled_from(["\\ud800", "\\udfff", "a\\ud800b", "\\udbff\\udfff", "\\u0000", "\\ud83d", "\\ufffe",
                             "x\\ud800" * 100, "\\ud800" * 3000])
            .map(lambda t: text_body.format(text=f'"{t}"').encode()),
            st.one_of(st.integers(1, 1100), st.sampled_from([5000, 100_000]))  # around every recursion limit
            .map(lambda d: extra_body.format(value=_nested(d)).encode()),
            st.sampled_from(["null", "[]", "{}", '"text"', "0", "true", "[{}]", '{"": null}', text + text,
                             text[:-1] + ', "a": 1, "a": 2}', " " * 10 + text, text + "\n garbage"]).map(str.encode),
            st.just(b"\xef\xbb\xbf" + text.encode()),  # a UTF-8 byte order mark
            st.sampled_from(["utf-16", "utf-16-le", "utf-16-be", "utf-32"]).map(text.encode),
            st.just(text.replace("fuzz", "\ud800").encode("utf-8", "surrogatepass")),  # UTF-8-encoded surrogate
            st.just(json.dumps({**valid, "padding": "x" * ((1 << 20) + 10)}).encode()),  # over api.max_body_bytes
        ))

    content_types = st.sampled_from(["application/json"] * 4 + [
        "application/json; charset=utf-8", None, "text/plain", "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x", "application/vnd.api+json", "application/json; charset=latin-1"])
    return st.tuples(bodies(), content_types)


def not_json(content: bytes) -> str | None:
    """Why a body is not JSON as RFC 8259 has it, in a few words (not UTF-8, UTF-16/32, NaN or Infinity, a number
    out of range, or what json.loads says), or None."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8"
    if json.detect_encoding(content) not in ("utf-8", "utf-8-sig"):
        return "UTF-16/32"

    def constant(name):
        raise ValueError("NaN or Infinity")

    def number(literal):
        value = float(literal)
        if value in (float("inf"), float("-inf")):
            raise ValueError("a number out of range")
        return value

    try:
        json.loads(text.removeprefix("\ufeff"), parse_constant=constant, parse_float=number)
    except RecursionError:
        return "nested past the parser's limit"
    except ValueError as exc:
        reason = str(exc)
        return reason if reason in ("NaN or Infinity", "a number out of range") else "not parseable"
    return None


# ---------------------------------------------------------------------------------------------------- checks

def documented_codes() -> dict[str, set[int]]:
    """README's Errors table (the serve tests' parser): code -> the statuses it is listed with."""
    from tests.serve.test_app import DOCUMENTED_CODES

    return DOCUMENTED_CODES


def error_shape(response, codes: dict[str, set[int]]) -> str | None:
    """Why (a short reason, then "; " and details) an error answer of the service's own is not `{"error": {"message", "type", "code"}}` with a code the
    README lists for its status; None when it is (or when it is not an error, or is the upstream's own answer)."""
    status = response.status_code
    if status < 400 or "x-turnout-model" in response.headers:  # chosen upstream's answer, passed through as sent
        return None
    try:
        body = response.json()
    except ValueError:
        return f"{status} body is not JSON; {response.text[:200]!r}"
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or set(body) != {"error"}:
        return f"{status} body is not {{'error': {{...}}}}; {response.text[:200]}"
    for field in ("message", "type", "code"):
        if not isinstance(error.get(field), str) or not error[field]:
            return f"{status} error.{field} is not a non-empty string; {response.text[:200]}"
    if status not in codes.get(error["code"], ()):
        return f"{status} with code {error['code']!r}, which README's Errors table does not list for {status}"
    if "Traceback" in response.text:
        return f"{status} body carries a traceback"
    return None


def _schemathesis_checks(kind: str) -> list:
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    return checks + [negative_data_rejection] if kind == "negative" else checks


def _failures(case, response, checks) -> list[tuple[str, str]]:
    """(check name, message) for each schemathesis check the answer fails."""
    from schemathesis.core.failures import Failure, FailureGroup

    def named(failure) -> tuple[str, str]:
        check = (getattr(type(failure), "checks", None) or (failure.title,))[0]
        return check, f"{failure.title}: {failure.message}"

    try:
        case.validate_response(response, checks=checks)
    except FailureGroup as group:
        return [named(f) for f in group.exceptions]
    except Failure as failure:
        return [named(failure)]
    return []


# ------------------------------------------------------------------------------------------------------- run

class Record:
    """What one run saw: statuses, error codes, distinct failures with a few examples each."""

    def __init__(self, operation: str, kind: str):
        self.operation, self.kind = operation, kind
        self.cases, self.statuses, self.codes = 0, Counter(), Counter()
        self.failures: dict[tuple, dict] = {}
        self.examples: dict[str, dict] = {}  # "status code" -> the first case answered so
        self.transport_errors = 0
        self.media_types: Counter = Counter()  # of the answers
        self.proxied = 0  # answered by the upstream the case was routed to (x-turnout-model set)

    def add(self, request: dict, response, problems: list[tuple[str, str]]) -> None:
        """One case; a failure is counted under its check, status, the answer's error code and, for this module's
        own checks, the short reason its message starts with, so that distinct bugs stay apart."""
        self.cases += 1
        if response is None:
            self.transport_errors += 1
            status = 0
        else:
            status = response.status_code
            self.statuses[str(status)] += 1
            self.media_types[(_header(response, "content-type") or "none").split(";")[0]] += 1
            self.proxied += "x-turnout-model" in response.headers
            code = _error_code(response)
            if code:
                self.codes[code] += 1
            self.examples.setdefault(f"{status} {code or ''}".strip(),
                                     {"request": request, "response": response.text[:300]})
        code = None if response is None else _error_code(response)
        for check, message in problems:
            what = message.split("; ")[0] if check in OWN_CHECKS else ""
            entry = self.failures.setdefault((check, status, code, what), {
                "check": check, "status": status, "code": code, **({"what": what} if what else {}), "count": 0,
                "examples": []})
            entry["count"] += 1
            if len(entry["examples"]) < MAX_EXAMPLES_KEPT:
                entry["examples"].append({"message": message[:600], "request": request,
                                          "response": None if response is None else response.text[:300]})

    def summary(self, seconds: float) -> dict:
        return {"operation": self.operation, "kind": self.kind, "cases": self.cases,
                "statuses": dict(sorted(self.statuses.items())), "error_codes": dict(sorted(self.codes.items())),
                "media_types": dict(sorted(self.media_types.items())), "proxied": self.proxied,
                "server_errors": sum(n for s, n in self.statuses.items() if int(s) >= 500),
                "transport_errors": self.transport_errors,
                "failures": sorted(self.failures.values(), key=lambda f: -f["count"]),
                "examples": dict(sorted(self.examples.items())),
                "seconds": round(seconds, 1)}


def _header(response, name: str) -> str | None:
    """One header of a requests or a schemathesis response (whose headers are lists)."""
    value = response.headers.get(name)
    return value[0] if isinstance(value, list) else value


def _error_code(response) -> str | None:
    if response.status_code < 400:
        return None
    try:
        error = response.json().get("error")
        return error.get("code") if isinstance(error, dict) else None
    except (ValueError, AttributeError):
        return None


def _shown(body: Any, limit: int = 400) -> str:
    if isinstance(body, bytes):
        text = repr(body)
    else:
        try:
            text = json.dumps(body, ensure_ascii=True)
        except (TypeError, ValueError):
            text = repr(body)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def load_schema(base_url: str):
    import schemathesis

    return schemathesis.openapi.from_url(f"{base_url}/openapi.json", timeout=30)


def draw_cases(schema, operation: str, kind: str, cases: int, seed: int = 0) -> list:
    """The run's cases, drawn before any is sent: Case objects (positive ones steered), or (content, content type)
    for malformed bodies. Hypothesis with schemathesis's strategies draws other cases when the test body's duration
    changes (that is, with the server's response times), so drawing first is what makes a seed give the same cases."""
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    api = schema[operation]["POST"]
    strategy = (malformed_bodies(operation) if kind == "malformed"
                else api.as_strategy(generation_mode=GenerationMode(kind)))
    drawn: list = []

    @hypothesis_seed(seed)
    @settings(max_examples=cases, database=None, deadline=None, phases=[Phase.generate], verbosity=Verbosity.quiet,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy, data=st.data())
    def draw(case, data):
        if kind == "positive":
            case.body = _steer(data, operation, case.body)
        drawn.append(case)

    draw()
    return drawn


def fuzz_run(schema, base_url: str, operation: str, kind: str, cases: int, seed: int = 0,
             codes: dict[str, set[int]] | None = None) -> dict:
    """`cases` cases of one kind against one operation (drawn with `seed`), each sent and checked; the summary."""
    import requests

    codes = codes if codes is not None else documented_codes()
    api = schema[operation]["POST"]
    record = Record(operation, kind)
    checks = _schemathesis_checks(kind)
    start = time.perf_counter()
    drawn = draw_cases(schema, operation, kind, cases, seed)
    digest = hashlib.sha256()
    with requests.Session() as session:
        for item in drawn:
            if kind == "malformed":
                content, content_type = item
                case = api.Case(body={}, media_type="application/json")  # the checks read the operation only
                headers = {"content-type": content_type} if content_type else {}
                request = {"content_type": content_type, "body": _shown(content)}
                digest.update(repr(item).encode())
                send = lambda: session.post(f"{base_url}{operation}", data=content, headers=headers,  # noqa: E731
                                            timeout=TIMEOUT_S)
            else:
                case = item
                request = {"content_type": case.media_type, "body": _shown(case.body)}
                digest.update(f"{case.media_type} {case.body!r}".encode())
                send = lambda: case.call(base_url=base_url, session=session, timeout=TIMEOUT_S)  # noqa: E731
            try:
                response = send()
            except requests.RequestException as exc:
                record.add(request, None, [("transport error", f"{type(exc).__name__}; {exc}")])
                continue
            problems = _failures(case, response, checks)
            if kind == "malformed" and response.status_code < 400 and not_json(content):
                problems.append(("malformed_json_rejection", f"accepted a body that is not JSON "
                                                             f"({not_json(content)}); README: 400 malformed_json"))
            shape = error_shape(response, codes)
            if shape:
                problems.append(("documented error shape", shape))
            record.add(request, response, problems)
    return {**record.summary(time.perf_counter() - start), "cases_sha256": digest.hexdigest()[:16]}


def fuzz(base_url: str, total: int, seed: int = 0, log=print) -> list[dict]:
    """Every run of PLAN for `total` cases in all."""
    schema = load_schema(base_url)
    codes = documented_codes()
    runs = []
    for (operation, kind), cases in plan(total).items():
        runs.append(fuzz_run(schema, base_url, operation, kind, cases, seed, codes))
        run = runs[-1]
        log(f"{operation} {kind}: {run['cases']} cases in {run['seconds']} s, statuses {run['statuses']}, "
            f"{run['proxied']} proxied, {sum(f['count'] for f in run['failures'])} failures")
    return runs


# ----------------------------------------------------------------------------------------- the tiny service

def app_args_for(home: Path, reference: Path, upstream_url: str) -> dict:
    """The fuzzed application: the serve tests' args with every router their artifacts have (default mf), both
    upstreams on the fake one."""
    from tests.serve.conftest import app_args

    args = app_args(home, reference, upstream_url, upstream_url)
    args["routers"].update(enabled=list(ROUTERS), default="mf")
    return args


@contextmanager
def tiny_service() -> Iterator[str]:
    """The serve tests' service on a local 2-CPU Ray (as their `ray_cluster` fixture starts it); yields its URL."""
    import ray
    from ray import serve

    from serve.launch import apply_ray_env
    from tests.serve.conftest import build_tiny_artifacts, deploy_apps
    from tests.serve.fakes import FakeUpstream, free_port

    os.environ["TURNOUT_TEST_STRONG_KEY"] = "sk-test-strong"
    apply_ray_env()
    with tempfile.TemporaryDirectory(prefix="turnout-fuzz-") as tmp, FakeUpstream() as upstream:
        home = Path(tmp)
        reference = build_tiny_artifacts(home)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            port = free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            deploy_apps({"turnout": ("/", app_args_for(home, reference, upstream.base_url), {})})
            yield f"http://127.0.0.1:{port}"
        finally:
            serve.shutdown()
            ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=5000, help="cases in all, split as PLAN says")
    parser.add_argument("--seed", type=int, default=1, help="Hypothesis seed (the CI test uses 0)")
    parser.add_argument("--url", help="fuzz this running service instead of starting the tiny one")
    parser.add_argument("--out", type=Path, help="JSON report")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)

    start = time.perf_counter()
    if args.url:
        runs = fuzz(args.url.rstrip("/"), args.cases, args.seed)
    else:
        with tiny_service() as url:
            runs = fuzz(url, args.cases, args.seed)
    report = summarise(runs, args, time.perf_counter() - start, " ".join(["python -m loadtest.fuzz", *argv]))
    print(json.dumps(report["totals"], indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0 if report["totals"]["failures"] == 0 else 1


def summarise(runs: list[dict], args, seconds: float, command: str) -> dict:
    import hypothesis
    import ray
    import schemathesis

    statuses, per_operation = Counter(), {}
    for run in runs:
        statuses.update(run["statuses"])
        op = per_operation.setdefault(run["operation"], {"cases": 0, "statuses": Counter()})
        op["cases"] += run["cases"]
        op["statuses"].update(run["statuses"])
    totals = {
        "cases": sum(r["cases"] for r in runs),
        "per_operation": {k: {"cases": v["cases"], "statuses": dict(sorted(v["statuses"].items()))}
                          for k, v in per_operation.items()},
        "statuses": dict(sorted(statuses.items())),
        "server_errors": sum(r["server_errors"] for r in runs),
        "schema_violations": sum(f["count"] for r in runs for f in r["failures"] if f["check"] in SCHEMA_CHECKS),
        "failures": sum(f["count"] for r in runs for f in r["failures"]),
        "transport_errors": sum(r["transport_errors"] for r in runs),
        "proxied": sum(r["proxied"] for r in runs),
        "streamed": sum(r["media_types"].get("text/event-stream", 0) for r in runs),
    }
    return {
        "command": command,
        "date": date.today().isoformat(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "versions": {"schemathesis": schemathesis.__version__, "hypothesis": hypothesis.__version__,
                     "ray": ray.__version__},
        "seed": args.seed, "target": args.url or "tiny service (tests/serve/conftest.py helpers, hash-64 embedder)",
        "seconds": round(seconds, 1), "totals": totals, "runs": runs,
    }


if __name__ == "__main__":
    sys.exit(main())
