"""The gateway: an OpenAI-compatible FastAPI app in front of the engines.

Each request: validate -> authenticate -> route (`model: auto`) -> cache -> admit against
the key's budget and rate limit (atomic, in the ledger) -> call the upstream with
timeouts, retries and fallbacks -> meter -> record. State lives on `app.state`; the app
holds no globals, so tests build as many as they like.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import anyio
import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from tokenomy.serve.cache import ResponseCache
from tokenomy.serve.config import Deployment, GatewayConfig
from tokenomy.serve.ledger import ANONYMOUS, AdmissionError, Ledger
from tokenomy.serve.meter import Meter
from tokenomy.serve.metrics import Metrics
from tokenomy.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ErrorResponse,
    error,
    estimate_prompt_tokens,
)

log = logging.getLogger("tokenomy.serve")

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}


@dataclass
class Upstream:
    deployment: Deployment
    base_url: str  # ending in /v1
    model_id: str  # what to send as `model`
    headers: dict[str, str] = field(default_factory=dict)


class UpstreamFailed(Exception):
    def __init__(self, status: int, body: dict, deployment: str):
        super().__init__(f"{deployment}: {status}")
        self.status, self.body, self.deployment = status, body, deployment


class GatewayState:
    def __init__(self, config: GatewayConfig, upstreams: dict[str, Upstream],
                 ledger: Ledger | None = None, router=None, embedder=None):
        self.config = config
        self.upstreams = upstreams
        self.ledger = ledger or Ledger(config.db_url)
        self.meter = Meter(config)
        self.metrics = Metrics()
        self.router = router
        self.cache = (ResponseCache(config.cache, embedder)
                      if config.cache.exact or config.cache.semantic else None)
        self.inflight: dict[str, int] = dict.fromkeys(upstreams, 0)
        self.pool = ThreadPoolExecutor(32, thread_name_prefix="tokenomy-db")
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
            timeout=None)

    async def db(self, fn, *args, **kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, lambda: fn(*args, **kwargs))

    async def aclose(self) -> None:
        await self.client.aclose()
        self.pool.shutdown(wait=True)
        self.ledger.close()


def create_app(state: GatewayState) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        recovered = await state.db(state.ledger.recover, older_than_s=_max_request_s(state))
        if recovered:
            log.warning("marked %d requests left in flight by an earlier gateway as "
                        "interrupted", recovered)
        yield
        await state.aclose()

    app = FastAPI(title="tokenomy gateway", version=_version(), lifespan=lifespan,
                  responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse},
                             429: {"model": ErrorResponse}, 502: {"model": ErrorResponse}})
    app.state.gateway = state

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":  # its loc holds a character position
            return error(400, "invalid request: the body is not valid JSON: "
                         f"{(first.get('ctx') or {}).get('error', first['msg'])}")
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        return error(400, f"invalid request: {param or 'body'}: {first['msg']}", param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail),
                     type_="not_found_error" if exc.status_code == 404 else
                     "invalid_request_error")

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "deployments": sorted(state.upstreams),
                "in_flight": dict(state.inflight)}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict:
        names = sorted({u.deployment.model_name for u in state.upstreams.values()})
        if state.router is not None:
            names.append("auto")
        return {"object": "list", "data": [
            {"id": n, "object": "model", "created": 0, "owned_by": "tokenomy"} for n in names]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await _handle(state, request, body, "chat/completions")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await _handle(state, request, body, "completions")

    return app


# ------------------------------------------------------------------------------------
async def _handle(state: GatewayState, request: Request,
                  body: ChatCompletionRequest | CompletionRequest, endpoint: str):
    started = time.monotonic()
    payload = body.model_dump(exclude_none=True)
    key_id = await _authenticate(state, request)
    if isinstance(key_id, JSONResponse):
        return key_id

    try:
        candidates, route = await _route(state, body)
    except LookupError as exc:
        state.metrics.rejected.labels(reason="model_not_found").inc()
        return error(404, str(exc), type_="not_found_error", code="model_not_found",
                     param="model")

    scope = "shared" if state.config.cache.shared_across_keys else key_id
    cache_on = state.cache is not None and _cacheable(payload)
    if cache_on:
        hit = await state.cache.get(payload, scope)
        if hit is not None:
            return await _serve_cached(state, body, payload, endpoint, key_id, hit, started)
        state.metrics.cache_misses.inc()

    usage_id = await _admit(state, key_id, _reservation(state, candidates, body), body,
                            endpoint)
    if isinstance(usage_id, JSONResponse):
        return usage_id
    ticket = _Ticket(state, usage_id, key_id, body, payload, endpoint, route, started,
                     scope if cache_on else None)
    if body.stream:
        return await _stream(state, request, candidates, ticket)
    return await _complete(state, request, candidates, ticket)


async def _admit(state: GatewayState, key_id: str, estimate: float, body,
                 endpoint: str) -> str | JSONResponse:
    """The usage id of the admitted request, or the refusal to send."""
    try:
        return await state.db(state.ledger.admit, key_id, estimate, endpoint=endpoint,
                              model=body.model, stream=body.stream)
    except AdmissionError as exc:
        state.metrics.rejected.labels(reason=exc.code).inc()
        return error(exc.status, str(exc), type_="rate_limit_error" if exc.status == 429
                     else "authentication_error", code=exc.code,
                     headers={"Retry-After": "60"} if exc.code == "rate_limit_exceeded"
                     else None)


def _reservation(state: GatewayState, candidates: list[Upstream], body) -> float:
    """The most this request may cost: its estimated prompt and its token limit at the
    dearest rate among the deployments that may serve it (fallbacks included), at one
    request in flight or at the current load, whichever is dearer."""
    prompt, completion = estimate_prompt_tokens(body.text()), body.budget_tokens()
    return max(state.meter.rate(up.deployment.id, load).cost(prompt, completion)
               for up in candidates for load in (1.0, state.inflight[up.deployment.id] + 1))


async def _authenticate(state: GatewayState, request: Request) -> str | JSONResponse:
    header = request.headers.get("authorization", "")
    secret = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    if not secret:
        if state.config.general.require_api_key:
            state.metrics.rejected.labels(reason="missing_api_key").inc()
            return error(401, "this gateway requires an API key: send `Authorization: Bearer "
                         "<key>` (create one with `tokenomy keys create NAME`)",
                         type_="authentication_error", code="invalid_api_key")
        return ANONYMOUS
    key = await state.db(state.ledger.lookup, secret)
    if key is None and not state.config.general.require_api_key:
        return ANONYMOUS  # keys are optional here: an unknown one (e.g. "x") is anonymous
    if key is None or key.revoked:
        state.metrics.rejected.labels(reason="invalid_api_key").inc()
        return error(401, "invalid or revoked API key", type_="authentication_error",
                     code="invalid_api_key")
    return key.id


async def _route(state: GatewayState, body) -> tuple[list[Upstream], str | None]:
    """The upstreams to try in order, and the router's reason when it chose."""
    groups: dict[str, list[Upstream]] = {}
    for up in state.upstreams.values():
        groups.setdefault(up.deployment.model_name, []).append(up)
    route = None
    name = body.model
    if name == "auto":
        if state.router is None:
            raise LookupError("model 'auto' needs the router: set router.calibration in the "
                              "gateway config (make one with `tokenomy route calibrate`)")
        decision = await state.db(state.router.decide, body.last_user_text(), sorted(groups))
        name, route = decision.deployment, decision.reason
        state.metrics.routed.labels(deployment=name).inc()
    if name not in groups:
        known = ", ".join(sorted(groups) + (["auto"] if state.router else []))
        raise LookupError(f"model {body.model!r} is not served here; available: {known}")
    order = [name, *state.config.general.fallbacks.get(name, [])]
    return [up for group in order for up in groups.get(group, [])], route


def _cacheable(payload: dict) -> bool:
    from tokenomy.serve.cache import cacheable

    return cacheable(payload)


class _Ticket:
    """One admitted request: everything needed to record its outcome exactly once."""

    def __init__(self, state, usage_id, key_id, body, payload, endpoint, route, started, scope):
        self.state, self.usage_id, self.key_id = state, usage_id, key_id
        self.body, self.payload, self.endpoint, self.route = body, payload, endpoint, route
        self.started, self.cache_scope = started, scope
        self.done = False

    async def finish(self, status: str, deployment: str | None, prompt: int = 0,
                     completion: int = 0, token_counts: str | None = None,
                     ttft: float | None = None, error_text: str | None = None,
                     load: float = 1.0) -> float:
        if self.done:
            return 0.0
        self.done = True
        state = self.state
        cost, basis = 0.0, None
        if deployment is not None:
            rate = state.meter.rate(deployment, load)
            cost, basis = rate.cost(prompt, completion), rate.basis
        await asyncio.shield(state.db(
            state.ledger.finish, self.usage_id, self.key_id, status=status, cost_usd=cost,
            deployment=deployment, prompt_tokens=prompt, completion_tokens=completion,
            token_counts=token_counts, ttft_s=ttft, price_basis=basis, route=self.route,
            error=error_text))
        m = state.metrics
        dep = deployment or "none"
        m.requests.labels(model=self.body.model, deployment=dep, status=status).inc()
        m.tokens.labels(deployment=dep, kind="prompt").inc(prompt)
        m.tokens.labels(deployment=dep, kind="completion").inc(completion)
        m.cost.labels(deployment=dep).inc(cost)
        m.latency.labels(deployment=dep).observe(time.monotonic() - self.started)
        if ttft is not None:
            m.ttft.labels(deployment=dep).observe(ttft)
        return cost


async def _serve_cached(state, body, payload, endpoint, key_id, hit, started):
    usage_id = await _admit(state, key_id, 0.0, body, endpoint)
    if isinstance(usage_id, JSONResponse):
        return usage_id
    response = dict(hit.response)
    usage = dict(response.get("usage") or {})
    cached = int(usage.get("total_tokens") or 0)
    await state.db(state.ledger.finish, usage_id, key_id, status="ok", cost_usd=0.0,
                   deployment=response.get("tokenomy_deployment"), cached_tokens=cached,
                   cache=hit.kind, price_basis="cache hit: $0",
                   ttft_s=time.monotonic() - started)
    state.metrics.cache_hits.labels(kind=hit.kind).inc()
    state.metrics.tokens.labels(deployment="cache", kind="cached").inc(cached)
    state.metrics.requests.labels(model=body.model, deployment="cache", status="ok").inc()
    response["usage"] = {**usage, "prompt_tokens_details": {"cached_tokens": cached}}
    response["tokenomy"] = {"cache": hit.kind, "similarity": round(hit.similarity, 4),
                            "cost_usd": 0.0}
    if not body.stream:
        return JSONResponse(response)
    wants_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
    return StreamingResponse(_replay(response, endpoint, wants_usage),
                             media_type="text/event-stream")


async def _replay(response: dict, endpoint: str, wants_usage: bool) -> AsyncIterator[bytes]:
    """A cached response as a stream: one content chunk, then usage if the client asked
    for it, then [DONE]."""
    base = {k: response.get(k) for k in ("id", "created", "model")}
    if endpoint == "chat/completions":
        message = response["choices"][0].get("message", {})
        chunk = {**base, "object": "chat.completion.chunk", "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": message.get("content")},
             "finish_reason": response["choices"][0].get("finish_reason")}]}
    else:
        chunk = {**base, "object": "text_completion", "choices": [
            {"index": 0, "text": response["choices"][0].get("text", ""),
             "finish_reason": response["choices"][0].get("finish_reason")}]}
    yield f"data: {json.dumps(chunk)}\n\n".encode()
    if wants_usage:
        usage = {**base, "choices": [], "usage": response["usage"]}
        yield f"data: {json.dumps(usage)}\n\n".encode()
    yield b"data: [DONE]\n\n"


# ------------------------------------------------------------------------------------
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


async def _complete(state: GatewayState, request: Request, candidates: list[Upstream],
                    ticket: _Ticket):
    last: UpstreamFailed | None = None
    try:
        async for up, _ in _attempts(state, candidates):
            dep = up.deployment.id
            state.inflight[dep] += 1
            load = state.inflight[dep]
            try:
                call = asyncio.ensure_future(state.client.post(
                    f"{up.base_url}/{ticket.endpoint}", json=_upstream_body(up, ticket.payload,
                                                                           False),
                    headers=up.headers, timeout=up.deployment.params.timeout_s))
                response = await _unless_disconnected(call, request)
            except _Disconnected:
                await ticket.finish("cancelled", dep, error_text="client disconnected",
                                    load=load)
                return Response(status_code=499)
            except httpx.HTTPError as exc:
                last = UpstreamFailed(502, _upstream_error(exc, dep), dep)
                continue
            finally:
                state.inflight[dep] -= 1
            if response.status_code in RETRYABLE_STATUS:
                last = UpstreamFailed(response.status_code, _json(response), dep)
                continue
            data = _json(response)
            if response.status_code != 200:  # the client's mistake: relay, no fallback
                await ticket.finish("error", dep, error_text=json.dumps(data)[:2000], load=load)
                return JSONResponse(data, status_code=response.status_code)
            usage = data.get("usage") or {}
            prompt, completion = int(usage.get("prompt_tokens", 0)), int(
                usage.get("completion_tokens", 0))
            cost = await ticket.finish("ok", dep, prompt, completion, "usage", load=load)
            data["model"] = ticket.body.model if ticket.body.model != "auto" else \
                up.deployment.model_name
            data["tokenomy"] = {"deployment": dep, "cost_usd": cost, "route": ticket.route}
            if ticket.cache_scope is not None:
                await ticket.state.cache.put(ticket.payload, ticket.cache_scope,
                                             {**data, "tokenomy_deployment": dep})
            return JSONResponse(data)
    except asyncio.CancelledError:
        await ticket.finish("cancelled", None, error_text="gateway shutting down")
        raise
    return await _all_failed(ticket, last)


async def _all_failed(ticket: _Ticket, last: UpstreamFailed | None):
    message = (f"every upstream failed; last: {last.deployment} answered {last.status}: "
               f"{json.dumps(last.body)[:500]}" if last else "no upstream available")
    await ticket.finish("error", None, error_text=message)
    return error(502, message, type_="upstream_error", code="upstream_failed")


class _Disconnected(Exception):
    pass


async def _unless_disconnected(task: asyncio.Future, request: Request):
    """Await `task`, cancelling it (and so the upstream request) if the client leaves."""
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                raise _Disconnected
    except asyncio.CancelledError:
        task.cancel()
        raise


async def _stream(state: GatewayState, request: Request, candidates: list[Upstream],
                  ticket: _Ticket):
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
            data = _json_bytes(body)
            if response.status_code in RETRYABLE_STATUS:
                last = UpstreamFailed(response.status_code, data, dep)
                continue
            await ticket.finish("error", dep, error_text=json.dumps(data)[:2000])
            return JSONResponse(data, status_code=response.status_code)
        return StreamingResponse(_relay(state, up, response, ticket),
                                 media_type="text/event-stream",
                                 headers={"X-Tokenomy-Deployment": dep})
    return await _all_failed(ticket, last)


async def _relay(state: GatewayState, up: Upstream, response: httpx.Response,
                 ticket: _Ticket) -> AsyncIterator[bytes]:
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
            event = _json_bytes(data.encode())
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
        status, err = "ok", None
    except httpx.HTTPError as exc:
        status, err = "error", f"upstream stream broke: {exc.__class__.__name__}: {exc}"
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
            await ticket.finish(status, dep, prompt, completion, counts, ttft, err, load)
            if status == "ok" and ticket.cache_scope is not None and first is not None:
                await state.cache.put(ticket.payload, ticket.cache_scope, _assembled(
                    first, "".join(parts), finish_reason, ticket.endpoint, prompt, completion,
                    dep))
    if status == "ok":  # after the row is written: a client that saw [DONE] was metered
        yield b"data: [DONE]\n\n"


async def _count_prompt_tokens(state: GatewayState, up: Upstream, ticket: _Ticket) -> int:
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
    return estimate_prompt_tokens(ticket.body.text())


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


def _json(response: httpx.Response) -> dict:
    return _json_bytes(response.content)


def _json_bytes(raw: bytes) -> dict:
    try:
        data = json.loads(raw)
        return data if isinstance(data, dict) else {"data": data}
    except ValueError:
        return {"error": {"message": raw[:500].decode(errors="replace"),
                          "type": "upstream_error"}}


def _upstream_error(exc: httpx.HTTPError, dep: str) -> dict:
    return {"error": {"message": f"{dep}: {exc.__class__.__name__}: {exc}",
                      "type": "upstream_error"}}


def _max_request_s(state: GatewayState) -> float:
    """A request older than this cannot still be running in any gateway."""
    longest = max(d.params.timeout_s * (d.params.max_retries + 1)
                  for d in state.config.model_list)
    return 2 * longest * max(1, len(state.config.model_list))


def _version() -> str:
    from tokenomy import __version__

    return __version__
