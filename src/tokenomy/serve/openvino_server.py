"""OpenVINO GenAI's continuous-batching pipeline behind an OpenAI-compatible API, run in a
process of its own: `engine: openvino` in a gateway config.

    python -m tokenomy.serve.openvino_server --model MODEL.gguf|IR_DIR --alias NAME \
        --port 8001 [--parallel 16] [--cache-gb 1]

One thread owns the pipeline and drives it (`add_request`, `step`), so every request in
flight is decoded in the same batched step; each HTTP request waits on its own queue
for the tokens the loop hands it. The GGUF is read directly (no conversion); the chat
template is the model's own. Serves /v1/models, /health and /v1/chat/completions,
streamed (with usage when asked) or not.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import queue
import threading
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

DONE = object()


class Loop(threading.Thread):
    """The pipeline's only user: adds queued requests, steps, hands tokens out."""

    def __init__(self, pipe):
        super().__init__(daemon=True, name="openvino-loop")
        self.pipe, self.incoming, self.ids = pipe, queue.Queue(), itertools.count()
        self.active: dict[int, tuple] = {}  # id -> (handle, asyncio loop, asyncio queue)

    def submit(self, prompt: str, config, aloop, out: asyncio.Queue) -> None:
        self.incoming.put((prompt, config, aloop, out))

    def run(self) -> None:
        while True:
            block = not self.active
            try:
                while True:
                    prompt, config, aloop, out = self.incoming.get(block=block, timeout=None)
                    block = False
                    rid = next(self.ids)
                    self.active[rid] = (self.pipe.add_request(rid, prompt, config), aloop, out)
            except queue.Empty:
                pass
            if self.pipe.has_non_finished_requests():
                self.pipe.step()
            self._hand_out()

    def _hand_out(self) -> None:
        for rid, (handle, aloop, out) in list(self.active.items()):
            if handle.can_read():
                for result in handle.read().values():
                    aloop.call_soon_threadsafe(out.put_nowait, list(result.generated_ids))
            if str(handle.get_status()).rsplit(".", 1)[-1] != "RUNNING" and not handle.can_read():
                aloop.call_soon_threadsafe(out.put_nowait, DONE)
                del self.active[rid]


def generation_config(body: dict, max_tokens: int):
    import openvino_genai as ov

    config = ov.GenerationConfig()
    config.max_new_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens")
                                or max_tokens)
    temperature = body.get("temperature", 1.0)
    if temperature:
        config.do_sample, config.temperature = True, float(temperature)
        config.top_p = float(body.get("top_p") or 1.0)
        if body.get("seed") is not None:
            config.rng_seed = int(body["seed"])
    stop = body.get("stop")
    if stop:
        config.stop_strings = {stop} if isinstance(stop, str) else set(stop)
    config.ignore_eos = bool(body.get("ignore_eos", False))
    return config


def create_app(pipe, alias: str, max_tokens: int) -> FastAPI:
    tokenizer, loop = pipe.get_tokenizer(), Loop(pipe)
    loop.start()
    app = FastAPI(title="tokenomy openvino engine")

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": alias, "object": "model",
                                            "owned_by": "openvino"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        try:
            messages = [{"role": m["role"], "content": _text(m.get("content"))}
                        for m in body["messages"]]
            prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
            config = generation_config(body, max_tokens)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            return JSONResponse({"error": {"message": f"invalid request: {exc}",
                                           "type": "invalid_request_error"}}, status_code=400)
        prompt_tokens = int(tokenizer.encode(prompt).input_ids.get_shape()[-1])
        out: asyncio.Queue = asyncio.Queue()
        loop.submit(prompt, config, asyncio.get_running_loop(), out)
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        base = {"id": rid, "created": created, "model": alias}
        if body.get("stream"):
            usage = (body.get("stream_options") or {}).get("include_usage")
            return StreamingResponse(_events(out, tokenizer, base, prompt_tokens, usage,
                                             config.max_new_tokens),
                                     media_type="text/event-stream")
        ids = await _collect(out)
        usage = _usage(prompt_tokens, len(ids))
        return {**base, "object": "chat.completion", "usage": usage, "choices": [{
            "index": 0, "message": {"role": "assistant", "content": tokenizer.decode(ids)},
            "finish_reason": _finish(len(ids), config.max_new_tokens)}]}

    return app


def _text(content) -> str:
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _finish(n: int, limit: int) -> str:
    return "length" if n >= limit else "stop"


async def _collect(out: asyncio.Queue) -> list[int]:
    ids: list[int] = []
    while (piece := await out.get()) is not DONE:
        ids += piece
    return ids


async def _events(out, tokenizer, base, prompt_tokens, usage, limit):
    ids, sent = [], ""
    chunk = {**base, "object": "chat.completion.chunk"}
    while (piece := await out.get()) is not DONE:
        ids += piece
        text = tokenizer.decode(ids)
        if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            continue
        delta, sent = text[len(sent):], text
        if delta:
            choice = {"index": 0, "delta": {"content": delta}, "finish_reason": None}
            yield f"data: {json.dumps({**chunk, 'choices': [choice]})}\n\n"
    last = {"index": 0, "delta": {}, "finish_reason": _finish(len(ids), limit)}
    yield f"data: {json.dumps({**chunk, 'choices': [last]})}\n\n"
    if usage:
        tail = {**chunk, "choices": [], "usage": _usage(prompt_tokens, len(ids))}
        yield f"data: {json.dumps(tail)}\n\n"
    yield "data: [DONE]\n\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--alias", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--parallel", type=int, default=16)
    parser.add_argument("--ctx-per-slot", type=int, default=2048)
    parser.add_argument("--cache-gb", type=float, default=1.0)
    args = parser.parse_args(argv)
    import openvino_genai as ov
    import uvicorn

    scheduler = ov.SchedulerConfig()
    scheduler.cache_size = max(1, round(args.cache_gb))
    scheduler.max_num_seqs = args.parallel
    scheduler.max_num_batched_tokens = max(2048, args.ctx_per_slot)
    pipe = ov.ContinuousBatchingPipeline(args.model, scheduler, "CPU")
    uvicorn.run(create_app(pipe, args.alias, args.ctx_per_slot), host=args.host,
                port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
