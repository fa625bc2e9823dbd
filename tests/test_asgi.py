"""The gateway's ASGI layers beneath FastAPI (tokenomy.serve.asgi): which requests the
completions' direct path takes and which it leaves to FastAPI (with the body replayed),
the request-size limit by Content-Length and by counting, and what a client sees from the
real gateway for bodies that are not JSON, wrong methods and paths, and bodies too large.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from fake_upstream import Behaviour, ServerThread
from fake_upstream import create_app as fake_app
from gateway_harness import assert_error, chat, deployment
from tokenomy.serve.app import GatewayState, Upstream, create_app
from tokenomy.serve.asgi import BodyLimit, Completions, _replay
from tokenomy.serve.config import GatewayConfig
from tokenomy.serve.protocol import ChatCompletionRequest, CompletionRequest

ROUTES = {"/v1/chat/completions": (ChatCompletionRequest, "chat/completions"),
          "/v1/completions": (CompletionRequest, "completions")}
CHAT = json.dumps(chat()).encode()
PROMPT = json.dumps({"model": "m", "prompt": "hi"}).encode()


class Stack:
    """Completions in front of a FastAPI app with the same two routes, each side saying
    which one answered; BodyLimit outside both, as the gateway stacks them."""

    def __init__(self, max_bytes: int = 10_000):
        self.direct: list[tuple[str, str]] = []  # (endpoint, request model)
        fastapi = FastAPI()

        @fastapi.post("/v1/chat/completions")
        async def chat_completions(body: ChatCompletionRequest):
            return {"via": "fastapi", "model": body.model}

        @fastapi.post("/v1/completions")
        async def completions(body: CompletionRequest):
            return {"via": "fastapi", "model": body.model}

        @fastapi.get("/other")
        async def other():
            return {"via": "fastapi"}

        self.app = BodyLimit(Completions(fastapi, self.handle, ROUTES), max_bytes=max_bytes)

    async def handle(self, request: Request, body, endpoint: str):
        self.direct.append((endpoint, type(body).__name__))
        return JSONResponse({"via": "direct", "model": body.model,
                             "agent": request.headers.get("user-agent")})


async def call(app, method: str, path: str, chunks=(b"",), headers=(),
               disconnect_after: int | None = None) -> tuple[int, dict, bytes]:
    """One request through `app`, its body sent as `chunks` (more_body between them):
    (status, headers, body); status 0 when nothing was sent."""
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                for i, c in enumerate(chunks)]
    if disconnect_after is not None:
        messages = messages[:disconnect_after]
    sent: list[dict] = []

    async def receive():
        if messages:
            return messages.pop(0)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "scheme": "http", "server": ("testserver", 80),
             "client": ("127.0.0.1", 5000),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers]}
    await app(scope, receive, send)
    start = next((m for m in sent if m["type"] == "http.response.start"), None)
    if start is None:
        return 0, {}, b""
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


JSON = [("content-type", "application/json")]


@pytest.mark.parametrize(("path", "body", "content_type", "endpoint"), [
    ("/v1/chat/completions", CHAT, "application/json", "chat/completions"),
    ("/v1/completions", PROMPT, "application/json", "completions"),
    ("/v1/chat/completions", CHAT, "application/json; charset=utf-8", "chat/completions"),
    ("/v1/chat/completions", CHAT, " Application/JSON ;charset=UTF-8", "chat/completions"),
], ids=["chat", "completions", "charset", "case-and-spaces"])
def test_valid_json_posts_take_the_direct_path(path, body, content_type, endpoint):
    stack = Stack()
    status, _, answer = asyncio.run(call(stack.app, "POST", path, (body,),
                                         [("content-type", content_type),
                                          ("user-agent", "t/1")]))
    assert (status, json.loads(answer)) == (200, {"via": "direct", "model": "m",
                                                  "agent": "t/1"})
    model = "ChatCompletionRequest" if endpoint == "chat/completions" else \
        "CompletionRequest"
    assert stack.direct == [(endpoint, model)]


def test_a_body_in_many_pieces_is_read_whole():
    stack = Stack()
    pieces = [CHAT[i:i + 7] for i in range(0, len(CHAT), 7)]
    status, _, answer = asyncio.run(call(stack.app, "POST", "/v1/chat/completions",
                                         pieces, JSON))
    assert (status, json.loads(answer)["via"]) == (200, "direct")


@pytest.mark.parametrize(("method", "path", "body", "headers", "status"), [
    ("POST", "/v1/chat/completions", CHAT, [("content-type", "text/plain")], 422),
    ("POST", "/v1/chat/completions", CHAT, [], 422),
    ("POST", "/v1/chat/completions", CHAT, [("content-type", "application/vnd.x+json")],
     200),
    ("GET", "/v1/chat/completions", b"", JSON, 405),
    ("PUT", "/v1/completions", PROMPT, JSON, 405),
    ("POST", "/v1/chat/completions/", CHAT, JSON, 307),
    ("POST", "/v1/chat", CHAT, JSON, 404),
    ("GET", "/other", b"", [], 200),
], ids=["text-plain", "no-content-type", "plus-json", "get", "put", "trailing-slash",
        "other-path", "other-route"])
def test_anything_else_goes_to_fastapi(method, path, body, headers, status):
    stack = Stack()
    got, _, answer = asyncio.run(call(stack.app, method, path, (body,), headers))
    assert got == status, answer
    assert stack.direct == [], "the direct path took it"
    if status == 200:
        assert json.loads(answer)["via"] == "fastapi"


@pytest.mark.parametrize("body", [
    b"{nope", CHAT + b" trailing", b"", b"[1, 2]", b'"chat"', b'{"model": "m"}',
    b'{"model": "m", "messages": []}', b"\xff\xfe{}", json.dumps(chat(temperature="hot"))
    .encode(),
], ids=["not-json", "trailing", "empty", "array", "string", "no-messages",
        "empty-messages", "not-utf-8", "wrong-type"])
def test_a_body_the_model_refuses_goes_to_fastapi_replayed(body):
    """FastAPI parses the same bytes again and says what is wrong (422 in a bare app;
    the gateway's handler makes it a 400): never a 500, never the handler."""
    stack = Stack()
    pieces = (body[:3], body[3:]) if len(body) > 3 else (body,)
    status, _, answer = asyncio.run(call(stack.app, "POST", "/v1/chat/completions",
                                         pieces, JSON))
    assert status in (400, 422), answer
    assert stack.direct == []


def test_a_client_gone_mid_body_gets_nothing():
    stack = Stack()
    status, _, _ = asyncio.run(call(stack.app, "POST", "/v1/chat/completions",
                                    (CHAT[:10], CHAT[10:]), JSON, disconnect_after=1))
    assert status == 0 and stack.direct == []


def test_the_replay_gives_the_body_once_then_the_client():
    later = [{"type": "http.disconnect"}]

    async def receive():
        return later.pop()

    async def run():
        replayed = _replay(b"abc", receive)
        return [await replayed(), await replayed()]

    assert asyncio.run(run()) == [{"type": "http.request", "body": b"abc",
                                   "more_body": False}, {"type": "http.disconnect"}]


@pytest.mark.parametrize("scope_type", ["lifespan", "websocket"])
def test_other_scopes_pass_through_untouched(scope_type):
    seen = []

    async def inner(scope, receive, send):
        seen.append((scope["type"], await receive()))

    async def receive():
        return {"type": f"{scope_type}.startup"}

    async def nothing(_message):
        raise AssertionError("nothing is sent for it")

    async def refuse(*_args):
        raise AssertionError("the handler was called")

    app = BodyLimit(Completions(inner, refuse, ROUTES), max_bytes=1)
    scope = {"type": scope_type, "path": "/v1/chat/completions", "headers": [
        (b"content-length", b"999")]}
    asyncio.run(app(scope, receive, nothing))
    assert seen == [(scope_type, {"type": f"{scope_type}.startup"})]


# -- the size limit --------------------------------------------------------------------
@pytest.mark.parametrize(("path", "headers", "pieces"), [
    ("/v1/chat/completions", JSON, 2),
    ("/v1/chat/completions", [("content-type", "text/plain")], 2),
    ("/v1/completions", JSON, 40),
], ids=["direct", "fastapi", "direct-many-pieces"])
def test_a_body_over_the_limit_without_a_length_is_counted(path, headers, pieces):
    body = json.dumps(chat("x" * 2000)).encode() if "chat" in path else \
        json.dumps({"model": "m", "prompt": "x" * 2000}).encode()
    stack = Stack(max_bytes=1000)
    size = -(-len(body) // pieces)
    chunks = [body[i:i + size] for i in range(0, len(body), size)]
    status, _, answer = asyncio.run(call(stack.app, "POST", path, chunks, headers))
    assert status == 413, answer
    assert b"over 1000 bytes" in answer  # FastAPI's shape here: the gateway's below
    assert stack.direct == []


def test_a_content_length_over_the_limit_is_refused_before_reading():
    stack = Stack(max_bytes=100)
    reads = 0

    async def run():
        nonlocal reads
        sent = []

        async def receive():
            nonlocal reads
            reads += 1
            return {"type": "http.request", "body": CHAT, "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
                 "headers": [(b"content-type", b"application/json"),
                             (b"content-length", b"101")]}
        await stack.app(scope, receive, send)
        return sent

    sent = asyncio.run(run())
    assert sent[0]["status"] == 413 and reads == 0
    error = json.loads(sent[1]["body"])["error"]
    assert error["type"] == "invalid_request_error"
    assert "general.max_body_bytes" in error["message"]


def test_a_body_of_exactly_the_limit_passes():
    stack = Stack(max_bytes=len(CHAT))
    length = [("content-length", str(len(CHAT)))]
    for pieces in ((CHAT,), (CHAT[:5], CHAT[5:])):
        status, _, _ = asyncio.run(call(stack.app, "POST", "/v1/chat/completions",
                                        pieces, JSON + length))
        assert status == 200
    status, _, _ = asyncio.run(call(stack.app, "POST", "/v1/chat/completions",
                                    (CHAT, b" "), JSON + length))  # the length lied
    assert status == 413


# -- through the real gateway ----------------------------------------------------------
BIG = json.dumps(chat("x" * 3000)).encode()  # over the gateway's 2000 bytes below
BAD = [  # method, path, body, content type; status, error type, param, message fragment
    pytest.param("POST", "/v1/chat/completions", b"{nope", "application/json",
                 400, "invalid_request_error", None, "not valid JSON", id="not-json"),
    pytest.param("POST", "/v1/completions", b'{"model": "m", "prompt": ',
                 "application/json", 400, "invalid_request_error", None, "not valid JSON",
                 id="completions-not-json"),
    pytest.param("POST", "/v1/chat/completions", CHAT + b"}", "application/json",
                 400, "invalid_request_error", None, "not valid JSON", id="trailing-brace"),
    pytest.param("POST", "/v1/chat/completions", b"\xff\xfe", "application/json",
                 400, "invalid_request_error", None, "", id="not-utf-8"),
    pytest.param("POST", "/v1/chat/completions", b"", "application/json",
                 400, "invalid_request_error", None, "", id="empty"),
    pytest.param("POST", "/v1/chat/completions", b"[]", "application/json",
                 400, "invalid_request_error", None, "", id="array"),
    pytest.param("POST", "/v1/completions", b'{"model": "m"}', "application/json",
                 400, "invalid_request_error", "prompt", "Field required", id="no-prompt"),
    pytest.param("POST", "/v1/chat/completions", CHAT, "text/plain",
                 400, "invalid_request_error", None, "", id="text-plain"),
    pytest.param("GET", "/v1/chat/completions", b"", "application/json",
                 405, "invalid_request_error", None, "Method Not Allowed", id="get"),
    pytest.param("DELETE", "/v1/completions", b"", "application/json",
                 405, "invalid_request_error", None, "Method Not Allowed", id="delete"),
    pytest.param("POST", "/v1/nothing", CHAT, "application/json",
                 404, "not_found_error", None, "Not Found", id="unknown-path"),
    pytest.param("POST", "/v1/chat/completions", BIG, "application/json",
                 413, "invalid_request_error", None, "general.max_body_bytes",
                 id="too-large"),
    pytest.param("POST", "/v1/chat/completions", BIG, "text/plain",
                 413, "invalid_request_error", None, "general.max_body_bytes",
                 id="too-large-text"),
]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """(url, app) of one gateway for the table (conftest.py's fixtures start one a test)."""
    with contextlib.ExitStack() as stack:
        fake = stack.enter_context(ServerThread(fake_app(Behaviour())))
        cfg = GatewayConfig.model_validate({
            "model_list": [deployment("m", fake.url)], "general": {"max_body_bytes": 2000},
            "database_url": f"sqlite:///{tmp_path_factory.mktemp('asgi') / 'usage.db'}"})
        state = GatewayState(cfg, {d.id: Upstream(d, d.params.api_base, d.params.model)
                                   for d in cfg.model_list})
        app = create_app(state)
        yield stack.enter_context(ServerThread(app)).url, app


@pytest.mark.parametrize("streamed", [False, True], ids=["length", "chunked"])
@pytest.mark.parametrize(("method", "path", "body", "content_type", "status", "type_",
                          "param", "fragment"), BAD)
def test_the_gateway_answers_bad_requests_in_openai_shape(gateway, method, path, body,
                                                          content_type, status, type_,
                                                          param, fragment, streamed):
    if streamed and not body:
        pytest.skip("no body to stream")
    content = (lambda: iter([body[:len(body) // 2], body[len(body) // 2:]])) \
        if streamed else (lambda: body)
    r = httpx.request(method, gateway[0] + path, content=content(), timeout=10,
                      headers={"Content-Type": content_type})
    assert r.status_code != 500
    error = assert_error(r, status, type_, param=param)
    assert fragment in error["message"], error
    assert "Traceback" not in r.text


def test_the_gateway_answers_a_good_request_on_either_path(gateway):
    """The direct path and FastAPI's (a JSON content type it leaves to FastAPI) answer
    the same request alike."""
    gateway_url, app = gateway
    assert isinstance(app.front, BodyLimit) and isinstance(app.front.app, Completions), \
        "the direct path is not in front while serving"
    direct = httpx.post(gateway_url + "/v1/chat/completions", content=CHAT, timeout=10,
                        headers={"Content-Type": "application/json"})
    routed = httpx.post(gateway_url + "/v1/chat/completions", content=CHAT, timeout=10,
                        headers={"Content-Type": "application/merge-patch+json"})
    assert direct.status_code == routed.status_code == 200, (direct.text, routed.text)
    assert direct.json()["choices"][0]["message"] == routed.json()["choices"][0]["message"]
    assert httpx.get(gateway_url + "/health", timeout=10).status_code == 200
