"""Calling the upstreams: attempts with retries, backoff and fallbacks, non-streaming
completions, streams relayed chunk by chunk, and the bookkeeping of each admitted request
(`Ticket`), written exactly once whatever happens to the client or the gateway.

Whole completions from an engine on plain HTTP go through `http1` (a twentieth of httpx's
CPU per call); streams, https APIs and proxied upstreams through httpx."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import httpx
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tokenomy.serve import http1
from tokenomy.serve.config import Deployment
from tokenomy.serve.protocol import JSON, dumps, error, loads

if TYPE_CHECKING:
    from tokenomy.serve.app import GatewayState

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}


@dataclass
class Upstream:
    deployment: Deployment
    base_url: str  # ending in /v1
    model_id: str  # what to send as `model`
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):  # what each call sends, worked out once
        self.json_headers = {**self.headers, "Content-Type": "application/json"}
        self.direct = http1.target(self.base_url, self.headers)  # None: through httpx


class UpstreamFailed(Exception):
    def __init__(self, status: int, body: dict, deployment: str):
        super().__init__(f"{deployment}: {status}")
        self.status, self.body, self.deployment = status, body, deployment


class Ticket:
    """One admitted request: everything needed to record its outcome exactly once."""

    def __init__(self, state, usage_id, key_id, body, payload, endpoint, route, started, scope,
                 reserved_usd: float, admitted_at: float, feature: str | None = None,
                 end_user: str | None = None):
        self.state, self.usage_id, self.key_id = state, usage_id, key_id
        self.feature = feature  # a metrics label (capped there), from the attribution
        self.end_user = end_user  # for telemetry spans, when the config allows it
        self.body, self.payload, self.endpoint, self.route = body, payload, endpoint, route
        self.started, self.cache_scope = started, scope
        self.reserved_usd, self.admitted_at = reserved_usd, admitted_at  # the usage row's
        self.done = False

    async def finish(self, status: str, deployment: str | None, prompt: int = 0,
                     completion: int = 0, token_counts: str | None = None,
                     ttft: float | None = None, error_text: str | None = None,
                     load: float = 1.0, finish_reason: str | None = None) -> float:
        if self.done:
            return 0.0
        self.done = True
        state = self.state
        cost, basis = 0.0, None
        if deployment is not None:
            rate = state.meter.rate(deployment, load)
            cost, basis = rate.cost(prompt, completion), rate.basis
        await state.requests.finish(
            self.usage_id, self.key_id, reserved_usd=self.reserved_usd,
            started_at=self.admitted_at, status=status, cost_usd=cost, deployment=deployment,
            prompt_tokens=prompt, completion_tokens=completion, token_counts=token_counts,
            ttft_s=ttft, price_basis=basis, route=self.route, error=error_text,
            finish_reason=finish_reason)
        elapsed = time.monotonic() - self.started
        state.metrics.record(self.body.model, deployment or "none", status, prompt,
                             completion, cost, elapsed, ttft, self.feature)
        if state.telemetry is not None:
            state.telemetry.request(
                endpoint=self.endpoint, model=self.body.model, deployment=deployment,
                status=status, started_wall=time.time() - elapsed, prompt=prompt,
                completion=completion, cost=cost, basis=basis, key_id=self.key_id,
                feature=self.feature, end_user=self.end_user, body=self.payload,
                finish_reason=finish_reason, ttft=ttft, error=error_text,
                usage_id=self.usage_id)
        return cost


async def _attempts(state: GatewayState, candidates: list[Upstream]):
    """(upstream, attempt number) in order: retries with backoff, then the next one."""
    for up in candidates:
        for attempt in range(up.deployment.params.max_retries + 1):
            if attempt:
                state.metrics.retries.labels(deployment=up.deployment.id).inc()
                await asyncio.sleep(min(0.25 * 2 ** (attempt - 1), 4.0))
            yield up, attempt
        if up is not candidates[-1]:
            state.metrics.fallbacks.labels(deployment=up.deployment.id).inc()


def _upstream_body(up: Upstream, payload: dict, stream: bool) -> dict:
    body = {**payload, "model": up.model_id}
    if stream:
        body["stream_options"] = {**(payload.get("stream_options") or {}), "include_usage": True}
    return body


async def complete(state: GatewayState, request: Request, candidates: list[Upstream],
                    ticket: Ticket):
    last: UpstreamFailed | None = None
    try:
        async for up, _ in _attempts(state, candidates):
            dep = up.deployment.id
            state.inflight[dep] += 1
            load = state.inflight[dep]
            try:
                status, raw = await _unless_disconnected(_post(state, up, ticket), request)
            except _Disconnected:
                await ticket.finish("cancelled", dep, error_text="client disconnected",
                                    load=load)
                return Response(status_code=499)
            except httpx.HTTPError as exc:
                last = UpstreamFailed(502, _upstream_error(exc, dep), dep)
                continue
            finally:
                state.inflight[dep] -= 1
            data = _json_bytes(raw)
            if status in RETRYABLE_STATUS:
                last = UpstreamFailed(status, data, dep)
                continue
            if status != 200:  # the client's mistake: relay, no fallback
                await ticket.finish("error", dep, error_text=json.dumps(data)[:2000], load=load)
                return JSON(data, status_code=status)
            usage = data.get("usage") or {}
            prompt, completion = int(usage.get("prompt_tokens", 0)), int(
                usage.get("completion_tokens", 0))
            choices = data.get("choices") or [{}]
            cost = await ticket.finish("ok", dep, prompt, completion, "usage", load=load,
                                       finish_reason=_reason(choices[0]))
            data["model"] = ticket.body.model if ticket.body.model != "auto" else \
                up.deployment.model_name
            data["tokenomy"] = {"deployment": dep, "cost_usd": cost, "route": ticket.route}
            if ticket.cache_scope is not None:
                await ticket.state.cache.put(ticket.payload, ticket.cache_scope,
                                             {**data, "tokenomy_deployment": dep})
            return JSON(data)
    except asyncio.CancelledError:
        await ticket.finish("cancelled", None, error_text="gateway shutting down")
        raise
    return await all_failed(ticket, last)


async def _post(state: GatewayState, up: Upstream, ticket: Ticket) -> tuple[int, bytes]:
    """One attempt at a whole completion: (status, body)."""
    body = dumps(_upstream_body(up, ticket.payload, False))
    timeout = up.deployment.params.timeout_s  # to connect, and between reads
    if up.direct is not None:
        return await state.direct.post(up.direct, "/" + ticket.endpoint, body, timeout)
    response = await state.client.post(f"{up.base_url}/{ticket.endpoint}", content=body,
                                       headers=up.json_headers, timeout=timeout)
    return response.status_code, response.content


async def all_failed(ticket: Ticket, last: UpstreamFailed | None):
    message = (f"every upstream failed; last: {last.deployment} answered {last.status}: "
               f"{json.dumps(last.body)[:500]}" if last else "no upstream available")
    await ticket.finish("error", None, error_text=message)
    return error(502, message, type_="upstream_error", code="upstream_failed")


class _Disconnected(Exception):
    pass


async def _unless_disconnected(call: Awaitable, request: Request):
    """Await `call`, cancelling it (and so the upstream request) if the client leaves:
    whether it has is asked every half second while the call runs, from a timer (no task
    of its own per request)."""
    task, loop = asyncio.current_task(), asyncio.get_running_loop()
    watch = {"done": False, "left": False}

    def ask() -> None:
        if not watch["done"]:
            asyncio.ensure_future(request.is_disconnected()).add_done_callback(answered)

    def answered(probe: asyncio.Future) -> None:
        if watch["done"]:
            return
        if not probe.cancelled() and probe.exception() is None and probe.result():
            watch["left"] = True
            task.cancel()
        else:
            watch["timer"] = loop.call_later(0.5, ask)

    watch["timer"] = loop.call_later(0.5, ask)
    try:
        return await call
    except asyncio.CancelledError:
        if watch["left"] and task.uncancel() == 0:  # ours alone, not a shutdown's too
            raise _Disconnected from None
        raise
    finally:
        watch["done"] = True
        watch["timer"].cancel()


async def stream(state: GatewayState, request: Request, candidates: list[Upstream],
                  ticket: Ticket):
    """Open the upstream stream (retries and fallbacks are possible until its first byte),
    then relay it."""
    last: UpstreamFailed | None = None
    async for up, _ in _attempts(state, candidates):
        dep = up.deployment.id
        req = state.client.build_request(
            "POST", f"{up.base_url}/{ticket.endpoint}", headers=up.headers,
            json=_upstream_body(up, ticket.payload, True),
            timeout=httpx.Timeout(up.deployment.params.timeout_s))
        try:
            response = await state.client.send(req, stream=True)
        except httpx.HTTPError as exc:
            last = UpstreamFailed(502, _upstream_error(exc, dep), dep)
            continue
        if response.status_code != 200:
            body = await response.aread()
            await response.aclose()
            data = _json_bytes(body, json.loads)
            if response.status_code in RETRYABLE_STATUS:
                last = UpstreamFailed(response.status_code, data, dep)
                continue
            await ticket.finish("error", dep, error_text=json.dumps(data)[:2000])
            return JSONResponse(data, status_code=response.status_code)
        return StreamingResponse(_relay(state, up, response, ticket),
                                 media_type="text/event-stream",
                                 headers={"X-Tokenomy-Deployment": dep})
    return await all_failed(ticket, last)


async def _relay(state: GatewayState, up: Upstream, response: httpx.Response,
                 ticket: Ticket) -> AsyncIterator[bytes]:
    dep = up.deployment.id
    state.inflight[dep] += 1
    load = state.inflight[dep]
    chunks, usage, ttft, status, err = 0, None, None, "cancelled", "client disconnected"
    parts: list[str] = []
    finish_reason = None
    first: dict | None = None
    try:
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                continue
            event = _json_bytes(data.encode(), json.loads)
            if event.get("error"):  # the engine failed mid-stream: pass it on, record it
                status, err = "error", f"upstream error mid-stream: {data[:500]}"
                yield f"data: {data}\n\n".encode()
                return
            if event.get("usage"):
                usage = event["usage"]
            choices = event.get("choices") or []
            if choices:
                first = first or event
                piece = (choices[0].get("delta") or {}).get("content") \
                    if ticket.endpoint == "chat/completions" else choices[0].get("text")
                if piece:
                    chunks += 1
                    parts.append(piece)
                    if ttft is None:
                        ttft = time.monotonic() - ticket.started
                finish_reason = choices[0].get("finish_reason") or finish_reason
            if ticket.body.model == "auto" and "model" in event:
                event["model"] = up.deployment.model_name
                data = json.dumps(event)
            wants_usage = (ticket.payload.get("stream_options") or {}).get("include_usage")
            if event.get("usage") and not choices and not wants_usage:
                continue  # the client did not ask for the usage chunk
            yield f"data: {data}\n\n".encode()
        if first is None and usage is None:  # nothing but [DONE]: not an answer
            status, err = "error", "the upstream sent an empty stream (no choices, no usage)"
            yield _sse_error(err)
            return
        if (ticket.payload.get("stream_options") or {}).get("include_usage") and not usage:
            # asked for and not sent by the engine: the gateway's own count, said so
            yield _usage_chunk(first, await _count_prompt_tokens(state, up, ticket), chunks)
        status, err = "ok", None
    except httpx.HTTPError as exc:
        status, err = "error", f"upstream stream broke: {exc.__class__.__name__}: {exc}"
        yield _sse_error(err)
    finally:
        state.inflight[dep] -= 1
        # A client that leaves cancels this generator (Starlette's cancel scope): shield the
        # bookkeeping, or the row would stay in flight with its reservation held.
        with anyio.CancelScope(shield=True):
            await response.aclose()
            if usage:
                prompt, completion, counts = (int(usage.get("prompt_tokens", 0)),
                                              int(usage.get("completion_tokens", 0)), "usage")
            else:
                prompt = await _count_prompt_tokens(state, up, ticket)
                completion, counts = chunks, "counted"
            await ticket.finish(status, dep, prompt, completion, counts, ttft, err, load,
                                finish_reason)
            if status == "ok" and ticket.cache_scope is not None and first is not None:
                await state.cache.put(ticket.payload, ticket.cache_scope, _assembled(
                    first, "".join(parts), finish_reason, ticket.endpoint, prompt, completion,
                    dep))
    if status == "ok":  # after the row is written: a client that saw [DONE] was metered
        yield b"data: [DONE]\n\n"


def _reason(choice) -> str | None:
    reason = choice.get("finish_reason") if isinstance(choice, dict) else None
    return reason if isinstance(reason, str) else None


def _sse_error(message: str) -> bytes:
    """An error as OpenAI sends one inside a stream."""
    body = {"error": {"message": message, "type": "upstream_error", "param": None,
                      "code": "upstream_failed"}}
    return f"data: {json.dumps(body)}\n\n".encode()


def _usage_chunk(first: dict | None, prompt: int, completion: int) -> bytes:
    base = {k: (first or {}).get(k) for k in ("id", "created", "model", "object")}
    usage = {"prompt_tokens": prompt, "completion_tokens": completion,
             "total_tokens": prompt + completion}
    return f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n".encode()


async def _count_prompt_tokens(state: GatewayState, up: Upstream, ticket: Ticket) -> int:
    """An upstream that streams without usage (llama-cpp-python's server): tokenize the
    prompt text with its own tokenizer (chat-template tokens are not included)."""
    root = up.base_url.removesuffix("/v1")
    try:
        r = await state.client.post(f"{root}/extras/tokenize", json={
            "input": ticket.body.text(), "model": up.model_id}, timeout=10)
        if r.status_code == 200:
            return len(r.json().get("tokens", []))
    except httpx.HTTPError:
        pass
    return state.bounds[up.deployment.id].prompt_tokens(ticket.body)  # an upper bound


def _assembled(first: dict, text: str, finish_reason, endpoint: str, prompt: int,
               completion: int, dep: str) -> dict:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion,
             "total_tokens": prompt + completion}
    if endpoint == "chat/completions":
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "finish_reason": finish_reason}
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish_reason}
        kind = "text_completion"
    return {"id": first.get("id"), "object": kind, "created": first.get("created"),
            "model": first.get("model"), "choices": [choice], "usage": usage,
            "tokenomy_deployment": dep}


def _json_bytes(raw: bytes, parse=loads) -> dict:
    try:
        data = parse(raw)
        return data if isinstance(data, dict) else {"data": data}
    except ValueError:
        return {"error": {"message": raw[:500].decode(errors="replace"),
                          "type": "upstream_error"}}


def _upstream_error(exc: httpx.HTTPError, dep: str) -> dict:
    return {"error": {"message": f"{dep}: {exc.__class__.__name__}: {exc}",
                      "type": "upstream_error"}}
