"""A tiny OpenAI-compatible upstream for serve tests: uvicorn in a thread on a free loopback port.

It answers `/v1/chat/completions` with the model name it was sent, streams three SSE chunks when asked, and
records each request's model, Authorization and Accept-Encoding headers and body. Models that misbehave on
purpose: `fail-503` / `fail-502` / `fail-401` answer that status; `slow` answers after 2 s; `gzip` streams
gzip-encoded (Content-Encoding: gzip); `cut` streams one chunk and then drops the connection; `huge` answers 2 MiB;
`drip` sends its answer a few bytes every 0.2 s for 3 s.

`LoopbackServer` serves any ASGI app with uvicorn in a thread on a free loopback port (the upstream, or the
ingress app itself in tests without Ray).
"""

import asyncio
import gzip
import json
import socket
import threading
import time

CHUNKS = ["Hel", "lo", "!"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_upstream(seen: list[dict]):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        seen.append({"model": body.get("model"), "authorization": request.headers.get("authorization"), "body": body,
                     "accept-encoding": request.headers.get("accept-encoding")})
        model = body.get("model")
        if model == "fail-503":
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
        if model in ("fail-502", "fail-401"):
            return JSONResponse({"error": {"message": f"{model}"}}, status_code=int(model[-3:]))
        if model == "huge":
            return JSONResponse({"padding": "x" * (2 << 20)})
        if model == "drip":
            async def drip():
                for _ in range(15):
                    yield b"   "
                    await asyncio.sleep(0.2)
                yield b"{}"
            return StreamingResponse(drip(), media_type="application/json")
        if model == "slow":
            await asyncio.sleep(2.0)
        if model == "gzip" and body.get("stream"):
            raw = "".join(_event(model, piece) for piece in CHUNKS) + "data: [DONE]\n\n"
            compressed = gzip.compress(raw.encode())

            def gzipped():
                yield compressed[: len(compressed) // 2]
                yield compressed[len(compressed) // 2:]
            return StreamingResponse(gzipped(), media_type="text/event-stream", headers={"content-encoding": "gzip"})
        if model == "cut" and body.get("stream"):
            def cut():
                yield _event(model, CHUNKS[0])
                raise ConnectionError("upstream died mid-stream")  # uvicorn aborts the response
            return StreamingResponse(cut(), media_type="text/event-stream")
        if body.get("temperature") == -1:
            return JSONResponse({"error": {"message": "temperature must be >= 0"}}, status_code=400)
        if body.get("stream"):
            def events():
                for piece in CHUNKS:
                    yield _event(model, piece)
                    time.sleep(0.05)
                yield "data: [DONE]\n\n"
            return StreamingResponse(events(), media_type="text/event-stream")
        return {"id": "c1", "object": "chat.completion", "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer from {model}"},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}}

    return app


def _event(model: str, piece: str) -> str:
    chunk = {"id": "c1", "object": "chat.completion.chunk", "model": model,
             "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
    return f"data: {json.dumps(chunk)}\n\n"


class LoopbackServer:
    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("loopback server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class FakeUpstream(LoopbackServer):
    def __init__(self):
        self.seen: list[dict] = []
        super().__init__(build_upstream(self.seen))
        self.base_url = f"{self.url}/v1"
