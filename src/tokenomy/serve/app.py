"""The gateway: an OpenAI-compatible FastAPI app in front of the engines.

Each request: validate -> authenticate -> route (`model: auto`) -> cache -> admit against
the key's budget and rate limit (atomic, in the ledger) -> call the upstream with
timeouts, retries and fallbacks -> meter -> record. State lives on `app.state`; the app
holds no globals, so tests build as many as they like.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from tokenomy.serve import http1
from tokenomy.serve.admission import bound_for
from tokenomy.serve.asgi import BodyLimit, Completions
from tokenomy.serve.attribution import AttributionError, attribute, fingerprint
from tokenomy.serve.budgets import Notifier
from tokenomy.serve.cache import ResponseCache, cacheable
from tokenomy.serve.config import GatewayConfig
from tokenomy.serve.dashboard import mount as mount_dashboard
from tokenomy.serve.ledger import ANONYMOUS, AdmissionError, Ledger, hash_key
from tokenomy.serve.ledger_fast import LoopLedger
from tokenomy.serve.meter import Meter
from tokenomy.serve.metrics import Metrics
from tokenomy.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ErrorResponse,
    error,
)
from tokenomy.serve.proxy import Ticket, Upstream, UpstreamFailed, complete, stream
from tokenomy.serve.telemetry import Telemetry
from tokenomy.serve.upkeep import checkpoint_wal, keep_lease, recover

log = logging.getLogger("tokenomy.serve")

__all__ = ["GatewayState", "Upstream", "UpstreamFailed", "create_app"]

KEY_TAGS_TTL_S = 30.0  # a key's default tags reach a running gateway within this


class GatewayState:
    def __init__(self, config: GatewayConfig, upstreams: dict[str, Upstream],
                 ledger: Ledger | None = None, router=None, embedder=None, clock=None):
        """`clock()`: seconds since the epoch for budgets and the ledger's times (the
        ledger's own clock unless given; tests control it)."""
        self.config = config
        self.upstreams = upstreams
        self.ledger = ledger or Ledger(config.db_url)
        if clock is not None:
            self.ledger.clock = clock
        self.requests = LoopLedger(self.ledger, self.db)  # the request path's ledger steps
        self.meter = Meter(config)
        self.metrics = Metrics()
        self.router = router
        self.cache = (ResponseCache(config.cache, embedder)
                      if config.cache.exact or config.cache.semantic else None)
        self.inflight: dict[str, int] = dict.fromkeys(upstreams, 0)
        self.bounds = {i: bound_for(up.deployment) for i, up in upstreams.items()}
        # secret hash -> (id, default tags, when read) of keys seen valid
        self.known_keys: dict[str, tuple[str, tuple[str, ...], float]] = {}
        self.key_tags: dict[str, tuple[str, ...]] = {}  # key id -> its default tags
        self.groups: dict[str, list[Upstream]] = {}  # by model_name, in config order
        for up in upstreams.values():
            self.groups.setdefault(up.deployment.model_name, []).append(up)
        self.pool = ThreadPoolExecutor(32, thread_name_prefix="tokenomy-db")
        self.client = httpx.AsyncClient(  # streams, APIs, engine metrics, tokenize
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
            timeout=None)
        self.direct = http1.Pool()  # whole completions from engines on plain HTTP
        self.notifier = Notifier(self.client)  # soft-limit webhooks, off the request path
        self.telemetry = Telemetry(config.telemetry) if config.telemetry else None
        self.requests.on_soft_limit = self.notifier

    async def db(self, fn, *args, **kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, lambda: fn(*args, **kwargs))

    async def aclose(self) -> None:
        await self.notifier.drain()
        await self.client.aclose()
        self.direct.close()
        if self.cache is not None:
            await self.cache.close()
        self.pool.shutdown(wait=True)
        if self.telemetry is not None:
            self.telemetry.close()
        await self.requests.aclose()
        self.ledger.close()


def create_app(state: GatewayState) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await state.db(state.ledger.register)
        await recover(state)
        tasks = [asyncio.create_task(keep_lease(state))]
        if state.requests.inline:
            tasks.append(asyncio.create_task(checkpoint_wal(state)))
        if state.cache is not None:
            await state.cache.start()
        telemetry = getattr(app, "_native_telemetry", None)  # FastAPI's OpenTelemetry
        if telemetry is None or not telemetry.enabled():
            app.front = BodyLimit(Completions(functools.partial(FastAPI.__call__, app),
                                              **direct), max_bytes=max_bytes)
        yield
        app.front = None
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await state.db(state.ledger.deregister)
        await state.aclose()

    keyed = state.config.general.require_api_key  # then the docs and schema need a key too
    app = _Gateway(title="tokenomy gateway", version=_version(), lifespan=lifespan,
                  responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse},
                             429: {"model": ErrorResponse}, 502: {"model": ErrorResponse}},
                  **({"docs_url": None, "redoc_url": None, "openapi_url": None} if keyed
                     else {}))
    app.state.gateway = state
    direct = {"handle": functools.partial(_handle, state), "routes": {
        "/v1/chat/completions": (ChatCompletionRequest, "chat/completions"),
        "/v1/completions": (CompletionRequest, "completions")}}
    max_bytes = state.config.general.max_body_bytes
    app.add_middleware(Completions, **direct)
    app.add_middleware(BodyLimit, max_bytes=max_bytes)  # outside it

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
                "in_flight": dict(state.inflight),
                "cache": await state.cache.stats() if state.cache is not None else None}

    @app.get("/health", include_in_schema=False)
    async def health() -> Response:  # as vLLM and SGLang answer probes and load generators
        return Response(status_code=200)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        if keyed:  # spend by key and model is not for anyone who can reach the port
            refused = await _authenticate(state, request)
            if isinstance(refused, JSONResponse):
                return refused
        return Response(await state.metrics.exposition(state.client, state.upstreams),
                        media_type=CONTENT_TYPE_LATEST)  # the engines' own included

    if keyed:
        _keyed_docs(app, state)
    mount_dashboard(app, state)  # GET /dashboard, admin keys only

    @app.get("/v1/models")
    async def models(request: Request):
        refused = await _authenticate(state, request)
        if isinstance(refused, JSONResponse):
            return refused
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


class _Gateway(FastAPI):
    """FastAPI, with the completion endpoints taken before its own middleware stack
    (ServerErrorMiddleware, FastAPI's telemetry and body-limit layers: a few dozen µs a
    request) while its OpenTelemetry is off, as it is unless the process configures a
    provider; else they go through the stack like any request, still on `Completions`
    inside it. An exception escaping the front gets uvicorn's 500, as the stack's."""

    front = None  # BodyLimit(Completions(...)) while serving

    async def __call__(self, scope, receive, send):
        if self.front is not None and scope["type"] == "http":
            await self.front(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


# ------------------------------------------------------------------------------------
async def _handle(state: GatewayState, request: Request,
                  body: ChatCompletionRequest | CompletionRequest, endpoint: str):
    started = time.monotonic()
    payload = body.model_dump(exclude_none=True)
    try:
        who = attribute(body, request.scope["headers"])
    except AttributionError as exc:
        state.metrics.rejected.labels(reason="invalid_attribution").inc()
        return error(400, f"invalid request: {exc}", param=exc.param)
    key_id = _known_key(state, request, body) or await _authenticate(state, request)
    if isinstance(key_id, JSONResponse):
        return key_id
    who = who.with_key_tags(state.key_tags.get(key_id, ()))
    columns = {**who.columns(), **fingerprint(payload).columns()}

    # `model: auto` is decided after the cache (a hit needs no decision); an explicit
    # name is checked before it (a model no longer served is not answered from the cache)
    auto = body.model == "auto" and state.router is not None
    if not auto:
        routed = await _routed(state, body)
        if isinstance(routed, JSONResponse):
            return routed

    scope = "shared" if state.config.cache.shared_across_keys else key_id
    cache_on = (state.cache is not None and cacheable(payload)
                and not _opted_out(request.headers.get("cache-control", "")))
    if cache_on:
        hit = await state.cache.get(payload, scope)
        if hit is not None:
            return await _serve_cached(state, body, payload, endpoint, key_id, hit, started,
                                       columns)
        state.metrics.cache_misses.inc()
    if auto:
        routed = await _routed(state, body)
        if isinstance(routed, JSONResponse):
            return routed
    candidates, route = routed

    estimate, now = _reservation(state, candidates, body), state.ledger.clock()
    usage_id = await _admit(state, key_id, estimate, body, endpoint, now, columns)
    if isinstance(usage_id, JSONResponse):
        return usage_id
    ticket = Ticket(state, usage_id, key_id, body, payload, endpoint, route, started,
                    scope if cache_on else None, reserved_usd=estimate, admitted_at=now,
                    feature=columns["feature"], end_user=columns["end_user"])
    if body.stream:
        return await stream(state, request, candidates, ticket)
    return await complete(state, request, candidates, ticket)


def _opted_out(cache_control: str) -> bool:
    """HTTP's own opt-out of a cached answer."""
    directives = cache_control.lower()
    return "no-cache" in directives or "no-store" in directives


async def _routed(state: GatewayState, body) -> tuple[list[Upstream], str | None] | JSONResponse:
    try:
        return await _route(state, body)
    except LookupError as exc:
        state.metrics.rejected.labels(reason="model_not_found").inc()
        return error(404, str(exc), type_="not_found_error", code="model_not_found",
                     param="model")


async def _admit(state: GatewayState, key_id: str, estimate: float, body, endpoint: str,
                 now: float, columns: dict) -> str | JSONResponse:
    """The usage id of the request admitted at `now`, or the refusal to send."""
    try:
        return await state.requests.admit(key_id, estimate, endpoint=endpoint,
                                          model=body.model, stream=body.stream, now=now,
                                          columns=columns)
    except AdmissionError as exc:
        state.metrics.rejected.labels(reason=exc.code).inc()
        return error(exc.status, str(exc), type_="rate_limit_error" if exc.status == 429
                     else "authentication_error", code=exc.code,
                     headers={"Retry-After": "60"} if exc.code == "rate_limit_exceeded"
                     else None)


def _reservation(state: GatewayState, candidates: list[Upstream], body) -> float:
    """The most this request may cost: an upper bound of its prompt tokens (its bytes and
    the deployment's chat template) and of its answer (max_tokens, else the most the
    deployment can generate), at the dearest rate among the deployments that may serve it
    (fallbacks included), at one request in flight or at the current load."""
    costs = []
    for up in candidates:
        bound = state.bounds[up.deployment.id]
        prompt, completion = bound.prompt_tokens(body), bound.completion_tokens(body)
        costs += [state.meter.rate(up.deployment.id, load).cost(prompt, completion)
                  for load in (1.0, state.inflight[up.deployment.id] + 1)]
    return max(costs)


def _keyed_docs(app: FastAPI, state: GatewayState) -> None:
    """/openapi.json and /docs behind the API key (registered in place of FastAPI's own)."""
    from fastapi.openapi.docs import get_swagger_ui_html

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request):
        refused = await _authenticate(state, request)
        return refused if isinstance(refused, JSONResponse) else JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request):
        refused = await _authenticate(state, request)
        if isinstance(refused, JSONResponse):
            return refused
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs")


def _bearer(request: Request) -> str:
    scheme, _, credentials = request.headers.get("authorization", "").strip().partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else ""  # RFC 7235: any case


def _known_key(state: GatewayState, request: Request, body) -> str | None:
    """The id of a key this gateway has seen valid, without asking the ledger, when nothing
    a client could observe happens before admission checks the key again in its atomic
    update (a key revoked since is refused there, with the same 401): no response cache,
    and a model served here by name (so no 404 and no router before it). Else None."""
    if state.cache is not None or body.model == "auto" or body.model not in state.groups:
        return None
    secret = _bearer(request)
    known = state.known_keys.get(hash_key(secret)) if secret else None
    if known is None or time.monotonic() - known[2] > KEY_TAGS_TTL_S:
        return None  # read again: its default tags may have changed
    return known[0]


async def _authenticate(state: GatewayState, request: Request) -> str | JSONResponse:
    secret = _bearer(request)
    if not secret:
        if state.config.general.require_api_key:
            state.metrics.rejected.labels(reason="missing_api_key").inc()
            return error(401, "this gateway requires an API key: send `Authorization: Bearer "
                         "<key>` (create one with `tokenomy keys create NAME`)",
                         type_="authentication_error", code="invalid_api_key")
        return ANONYMOUS
    key = await state.requests.lookup(secret)
    if key is None and not state.config.general.require_api_key:
        return ANONYMOUS  # keys are optional here: an unknown one (e.g. "x") is anonymous
    if key is None or key.revoked:
        state.metrics.rejected.labels(reason="invalid_api_key").inc()
        return error(401, "invalid or revoked API key", type_="authentication_error",
                     code="invalid_api_key")
    state.known_keys[hash_key(secret)] = (key.id, key.tags, time.monotonic())
    state.key_tags[key.id] = key.tags
    return key.id


async def _route(state: GatewayState, body) -> tuple[list[Upstream], str | None]:
    """The upstreams to try in order, and the router's reason when it chose."""
    groups = state.groups
    route = None
    name = body.model
    if name == "auto":
        if state.router is None:
            raise LookupError("model 'auto' needs the router: set router.calibration in the "
                              "gateway config (make one with `tokenomy route calibrate`)")
        decision = await state.db(state.router.decide, body.last_user_text(), sorted(groups))
        name, route = decision.deployment, decision.reason
        state.metrics.routed.labels(deployment=name).inc()
        state.metrics.difficulty.observe(decision.difficulty)
        log.info("route %s", decision.reason)
    if name not in groups:
        known = ", ".join(sorted(groups) + (["auto"] if state.router else []))
        raise LookupError(f"model {body.model!r} is not served here; available: {known}")
    order = [name, *state.config.general.fallbacks.get(name, [])]
    return [up for group in order for up in groups.get(group, [])], route


async def _serve_cached(state, body, payload, endpoint, key_id, hit, started, columns):
    now = state.ledger.clock()
    usage_id = await _admit(state, key_id, 0.0, body, endpoint, now, columns)
    if isinstance(usage_id, JSONResponse):
        return usage_id
    response = dict(hit.response)
    usage = dict(response.get("usage") or {})
    cached = int(usage.get("total_tokens") or 0)
    choices = response.get("choices") or [{}]
    await state.requests.finish(usage_id, key_id, reserved_usd=0.0, started_at=now,
                                status="ok", cost_usd=0.0,
                                deployment=response.get("tokenomy_deployment"),
                                cached_tokens=cached, cache=hit.kind,
                                price_basis="cache hit: $0", ttft_s=time.monotonic() - started,
                                finish_reason=choices[0].get("finish_reason"))
    state.metrics.cache_hits.labels(kind=hit.kind).inc()
    state.metrics.tokens.labels(deployment="cache", kind="cached",
                                feature=state.metrics.feature(columns["feature"])).inc(cached)
    state.metrics.requests.labels(model=body.model, deployment="cache", status="ok").inc()
    if state.telemetry is not None:
        elapsed = time.monotonic() - started
        state.telemetry.request(
            endpoint=endpoint, model=body.model, deployment=response.get("tokenomy_deployment"),
            status="ok", started_wall=time.time() - elapsed, prompt=0, completion=0,
            cached=cached, cost=0.0, basis="cache hit: $0", key_id=key_id,
            feature=columns["feature"], end_user=columns["end_user"], body=payload,
            finish_reason=choices[0].get("finish_reason"), ttft=elapsed, cache=hit.kind,
            usage_id=usage_id)
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
             "finish_reason": response["choices"][0].get("finish_reason")}],
            "tokenomy": response["tokenomy"]}
    else:
        chunk = {**base, "object": "text_completion", "choices": [
            {"index": 0, "text": response["choices"][0].get("text", ""),
             "finish_reason": response["choices"][0].get("finish_reason")}],
            "tokenomy": response["tokenomy"]}
    yield f"data: {json.dumps(chunk)}\n\n".encode()
    if wants_usage:
        usage = {**base, "choices": [], "usage": response["usage"]}
        yield f"data: {json.dumps(usage)}\n\n".encode()
    yield b"data: [DONE]\n\n"


def _version() -> str:
    from tokenomy import __version__

    return __version__
