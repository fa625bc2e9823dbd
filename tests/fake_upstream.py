"""A deterministic OpenAI-compatible upstream on 127.0.0.1, for tests whose point is the
gateway's own logic (budgets, retries, cancellation, fuzzing). Real HTTP, real SSE."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


@dataclass
class Behaviour:
    token_delay_s: float = 0.0
    fail_with: int | None = None  # answer every request with this status
    fail_first: int = 0  # answer the first N requests with 503
    stream_usage: bool = True  # send the usage chunk when asked
    # a worst-case tokenizer: one prompt token per UTF-8 byte of the messages, plus a
    # 32-token template (otherwise: the words of the messages' JSON)
    byte_tokens: bool = False
    error_after: int | None = None  # streams: an error event after this many tokens
    empty_stream: bool = False  # streams: nothing but [DONE]
    calls: int = 0
    cancelled: int = 0  # streams the client (gateway) abandoned
    completed: int = 0
    bodies: list = field(default_factory=list)


def answer_words(body: dict) -> list[str]:
    if "messages" in body:
        text = " ".join(str(m.get("content", "")) for m in body["messages"])
    else:
        prompt = body.get("prompt", "")
        text = prompt if isinstance(prompt, str) else " ".join(prompt)
    words = ["echo:", *text.split()][: body.get("max_tokens") or 16]
    return words or ["echo:"]


def create_app(b: Behaviour) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "fake", "object": "model"}]}

    @app.post("/extras/tokenize")
    async def tokenize(request: Request):
        body = await request.json()
        return {"tokens": list(range(len(body.get("input", "").split())))}

    async def handle(request: Request, kind: str):
        body = await request.json()
        b.calls += 1
        b.bodies.append(body)
        if b.fail_with or b.calls <= b.fail_first:
            return JSONResponse({"error": {"message": "fake failure", "type": "server_error"}},
                                status_code=b.fail_with or 503)
        words = answer_words(body)
        prompt = len(json.dumps(body.get("messages") or body.get("prompt")).split())
        if b.byte_tokens:
            prompt = 32 + sum(len(str(m.get("content", "")).encode())
                              for m in body.get("messages", []))
        usage = {"prompt_tokens": prompt, "completion_tokens": len(words),
                 "total_tokens": prompt + len(words)}
        base = {"id": f"fake-{b.calls}", "created": int(time.time()), "model": body["model"]}
        if not body.get("stream"):
            await asyncio.sleep(b.token_delay_s * len(words))
            b.completed += 1
            text = " ".join(words)
            choice = ({"index": 0, "message": {"role": "assistant", "content": text},
                       "finish_reason": "stop"} if kind == "chat" else
                      {"index": 0, "text": text, "finish_reason": "stop"})
            return {**base, "object": "chat.completion" if kind == "chat" else
                    "text_completion", "choices": [choice], "usage": usage}

        async def events():
            try:
                if b.empty_stream:
                    yield "data: [DONE]\n\n"
                    return
                for i, w in enumerate(words):
                    if b.error_after is not None and i == b.error_after:
                        error = {"error": {"message": "fake engine crashed", "code": 500}}
                        yield f"data: {json.dumps(error)}\n\n"
                        return
                    await asyncio.sleep(b.token_delay_s)
                    piece = w if i == 0 else " " + w
                    choice = ({"index": 0, "delta": {"content": piece}, "finish_reason": None}
                              if kind == "chat" else {"index": 0, "text": piece,
                                                      "finish_reason": None})
                    yield f"data: {json.dumps({**base, 'choices': [choice]})}\n\n"
                last = ({"index": 0, "delta": {}, "finish_reason": "stop"} if kind == "chat"
                        else {"index": 0, "text": "", "finish_reason": "stop"})
                yield f"data: {json.dumps({**base, 'choices': [last]})}\n\n"
                if b.stream_usage and (body.get("stream_options") or {}).get("include_usage"):
                    yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n"
                yield "data: [DONE]\n\n"
                b.completed += 1
            except asyncio.CancelledError:
                b.cancelled += 1
                raise

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await handle(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await handle(request, "text")

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """Any ASGI app served by uvicorn on a free loopback port, in a thread."""

    def __init__(self, app, port: int | None = None):
        self.port = port or free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(20)
