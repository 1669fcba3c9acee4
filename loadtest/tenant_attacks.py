"""The multi-tenant attacks of the security review (issue 24), measured: what each achieves against the ingress app.

    python -m loadtest.tenant_attacks [--out benchmarks/tenant_attacks.json]

The app is the one `serve.ingress.build_api` gives Ray Serve, served by uvicorn on a free 127.0.0.1 port (no Ray:
every attack is on the ingress's own code), routing with the `length` router (local, no artifact), both upstreams
on the fake OpenAI server of `tests.serve.fakes`, two API keys. Every request goes to 127.0.0.1 and is bounded in
time. The config uses only fields older checkouts have too, so the same file measures a checkout before the fixes
(RELIABILITY.md, 'Multi-tenant', gives both columns and how the earlier one was run). The tests in
`tests/serve/test_tenant_safety.py` pin the fixed behaviour with the same harness (`ingress`, `served`).
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np

KEYS = {"a": "sk-tenant-a", "b": "sk-tenant-b"}
HEADERS = {name: {"authorization": f"Bearer {key}"} for name, key in KEYS.items()}


def mixed_prompts(n: int, seed: int = 0) -> list[str]:
    """Prompts of 1 to 400 words: the length router's p_strong spreads over its range."""
    rng = np.random.default_rng(seed)
    return [" ".join(["word"] * int(k)) for k in rng.integers(1, 400, n)]


def ingress(home: Path, upstream_url: str, *, weak_url: str | None = None, auth: bool = True, **sections):
    """An IngressDeployment serving `length` and `random` from `home`, both sides on `upstream_url` unless told
    otherwise, each controller's window seeded with reference scores as `turnout prepare` writes them.
    `sections` set config fields by path: `api__limits__max_strong_share=0.2`."""
    from serve.artifacts import prepare
    from serve.auth import digest
    from serve.config import parse_app_args
    from serve.ingress import IngressDeployment

    reference = home / "reference.txt"
    reference.write_text("\n".join(mixed_prompts(200, seed=1)) + "\n")
    args: dict[str, Any] = {
        "routers": {"enabled": ["length", "random"], "default": "length"},
        "routing": {"strong_ratio": 0.3, "controller": {"window": 50, "min_live": 10}},
        "artifacts": {"home": str(home), "build_missing": False, "embedder": "hash-64"},
        "calibration": {"reference": str(reference)},
        "upstreams": {"strong": {"base_url": upstream_url, "model": "strong"},
                      "weak": {"base_url": weak_url or upstream_url, "model": "weak"}},
        "api": {"auth": {"api_keys_sha256": [digest(k) for k in KEYS.values()] if auth else []}},
    }
    for path, value in sections.items():
        *parents, leaf = path.split("__")
        node = args
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return IngressDeployment(prepare(parse_app_args(args)))


@contextmanager
def served(deployment) -> Iterator[str]:
    """The deployment's app on a loopback port; yields its base URL."""
    from serve.ingress import build_api
    from tests.serve.fakes import LoopbackServer

    with LoopbackServer(build_api(deployment)) as server:
        yield server.url


def chat(text: str = "hi", model: str = "turnout", **fields) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], **fields}


def stalled_body(url: str, headers: dict[str, str], wait_s: float, path: str = "/v1/chat/completions",
                 method: str = "POST") -> dict:
    """Send the head of a request announcing 100 kB of body and 13 bytes of it, then stall: what comes back, and
    when."""
    host, port = url.removeprefix("http://").split(":")
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{head}"
                     "content-length: 100000\r\n\r\n".encode() + b'{"model": "tu')
        sock.settimeout(wait_s)
        start = time.perf_counter()
        try:
            answer = sock.recv(65536)
        except socket.timeout:
            answer = b""
        waited = time.perf_counter() - start
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else None
    return {"status": status, "answered_after_s": round(waited, 3) if status else None, "waited_up_to_s": wait_s}


def threshold(client, router: str = "length") -> float:
    return client.get("/v1/routers", headers=HEADERS["a"]).json()["routers"][router]["threshold"]


def measure(home: Path, upstream) -> dict[str, Any]:
    """Each attack once; figures as the client and the upstream see them."""
    import httpx

    out: dict[str, Any] = {}
    seen = upstream.seen

    def deploy(name: str, **options):
        (home / name).mkdir()
        return ingress(home / name, upstream.base_url, **options)

    def run(name: str, **options):
        return served(deploy(name, **options))

    # 1. an unauthenticated client that stalls its body
    with run("slow_body") as url:
        out["1_unauthenticated_slow_body"] = stalled_body(url, {}, wait_s=4.0)
    # 2. free /v1/route decisions before each forced-strong chat, strong share capped at 0.2
    with run("dilution", api__limits__max_strong_share=0.2) as url, httpx.Client(base_url=url, timeout=30) as client:
        before, passed = len(seen), 0
        for _ in range(20):
            for _ in range(4):
                client.post("/v1/route", json={"prompt": "hi", "threshold": 1.0}, headers=HEADERS["a"])
            passed += client.post("/v1/chat/completions", json=chat(model="router-length-0.0"),
                                  headers=HEADERS["a"]).status_code == 200
        out["2_route_calls_dilute_budget"] = {"forced_strong_chats": 20, "answered": passed,
                                              "strong_upstream_calls": [s["model"] for s in seen[before:]].count("strong")}
    # 3. routing overloaded, strong share capped at 0: where the fallback goes
    deployment = deploy("fallback", api__limits__max_strong_share=0.0, routing__max_in_flight=1)
    deployment.in_flight = 1  # every routing call is refused at the door: chats fall back
    with served(deployment) as url, httpx.Client(base_url=url, timeout=30) as client:
        before = len(seen)
        response = client.post("/v1/chat/completions", json=chat(), headers=HEADERS["a"])
        out["3_fallback_skips_budget"] = {"status": response.status_code,
                                          "upstreams_called": [s["model"] for s in seen[before:]],
                                          "fallback": response.headers.get("x-turnout-fallback")}
    # 4. one key's traffic against the shared controller (strong_ratio 0.3, window 50)
    with run("steer") as url, httpx.Client(base_url=url, timeout=30) as client:
        probes = mixed_prompts(100, seed=2)

        def strong_share() -> float:
            """Of ordinary prompts, at the live threshold read once (each probe brings it as its own threshold, so
            that probing cannot move it, before the fixes either)."""
            live = threshold(client)
            return sum(client.post("/v1/route", json={"prompt": p, "threshold": live}, headers=HEADERS["a"]).json()
                       ["model"] == "strong" for p in probes) / len(probes)

        for text in mixed_prompts(200):
            client.post("/v1/chat/completions", json=chat(text), headers=HEADERS["a"])
        steps = {"threshold_after_200_mixed_chats_key_a": threshold(client)}
        share_before = strong_share()
        for _ in range(200):
            client.post("/v1/route", json={"prompt": "a"}, headers=HEADERS["b"])
        steps["threshold_after_200_route_calls_key_b"] = threshold(client)
        for _ in range(200):
            client.post("/v1/chat/completions", json=chat("a"), headers=HEADERS["b"])
        steps["threshold_after_200_chats_key_b"] = threshold(client)
        out["4_one_key_moves_threshold"] = {**{k: round(v, 4) for k, v in steps.items()},
                                            "strong_share_of_100_ordinary_prompts": {
                                                "before_key_b": share_before, "after_key_b": strong_share()}}
    # 5, 6, 9, 12, 13: one service with a 2 KiB body limit
    with run("hardening", api__max_body_bytes=2048) as url, httpx.Client(base_url=url, timeout=30) as client:
        before = len(seen)

        def chunks():
            yield json.dumps(chat()).encode()
            time.sleep(0.3)  # a parseable prefix arrives on its own before the limit is passed
            yield b" " * 4096
        response = client.post("/v1/chat/completions", content=chunks(), headers={**HEADERS["a"], "content-type": "application/json"})
        out["5_oversized_chunked_body"] = {"status": response.status_code, "upstream_called": len(seen) > before}
        before = len(seen)
        response = client.post("/v1/chat/completions", json=chat(n=64, priority=-100), headers=HEADERS["a"])
        forwarded = seen[before]["body"] if len(seen) > before else {}
        out["6_client_fields_forwarded"] = {"status": response.status_code,
                                            "upstream_got": {k: forwarded[k] for k in ("n", "priority") if k in forwarded}}
    with run("messages") as url, httpx.Client(base_url=url, timeout=60) as client:
        start = time.perf_counter()
        response = client.post("/v1/chat/completions", json={"model": "turnout", "messages": [{}] * 70_000},
                               headers=HEADERS["a"])
        out["9_70000_empty_messages"] = {"status": response.status_code, "answer_bytes": len(response.content),
                                         "seconds": round(time.perf_counter() - start, 3)}
        out["12_schema_without_key"] = {"status": client.get("/openapi.json").status_code}
        before = len(seen)
        with httpx.Client(base_url=url, timeout=30, headers={"accept-encoding": ""}) as plain:
            plain.post("/v1/chat/completions", json=chat(), headers=HEADERS["a"])
        out["13_accept_encoding_sent_upstream_for_a_client_asking_none"] = seen[before].get("accept-encoding")
    with run("upstream_401", upstreams__strong__model="fail-401") as url, httpx.Client(base_url=url, timeout=30) as c:
        response = c.post("/v1/chat/completions", json=chat(model="router-length-0.0"), headers=HEADERS["a"])
        out["13_upstream_401_reaches_client_as"] = response.status_code
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.tenant_attacks", description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="write the JSON report here too")
    args = parser.parse_args(argv)
    from tests.serve.fakes import FakeUpstream

    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp, FakeUpstream() as upstream:
        report = {"command": "python -m loadtest.tenant_attacks " + " ".join(argv or sys.argv[1:]),
                  "revision": revision, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "machine": f"{platform.machine()}, {platform.python_version()}",
                  "attacks": measure(Path(tmp), upstream)}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
