"""The gateway's ASGI layers beneath FastAPI: the request-size limit, and the completion
endpoints' direct path.

FastAPI's routing, dependency solving and middleware cost about 0.3 ms a request on these
machines, about a third of what the gateway spent on a request. `Completions`
answers `POST /v1/chat/completions` and `/v1/completions` without them: it reads the
body, validates it with the same pydantic model and hands it to the same handler. It
takes only what FastAPI's route would have taken to the same result: a JSON content type
and a body the model accepts. Anything else (another content type, a body that does not
parse or validate, other paths and methods) goes on to FastAPI untouched, with the body
replayed, and is answered exactly as before: the 400s keep their wording, and the
OpenAPI schema still comes from the routes. (tokenomy.serve.app puts it in front of
FastAPI's whole stack while FastAPI's OpenTelemetry is off, and inside it always.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from tokenomy.serve.protocol import error

# handle(request, parsed body, endpoint) -> the response
Handler = Callable[[Request, BaseModel, str], Awaitable[Response]]


class BodyTooLarge(StarletteHTTPException):
    """Raised from the body stream: FastAPI re-raises HTTP exceptions met while reading a
    body (others become a generic 400), and the gateway's handler renders it."""

    def __init__(self, max_bytes: int):
        super().__init__(413, f"request body over {max_bytes} bytes: send less, or raise "
                         "general.max_body_bytes in the gateway config")


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413 before they are read whole: by
    Content-Length when sent, else by counting the chunks as they arrive."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = _header(scope, b"content-length").decode()
        if length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        try:
            await self.app(scope, limited, send)
        except BodyTooLarge:  # read outside a FastAPI route (Completions): same answer
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope, receive, send):
        await error(413, BodyTooLarge(self.max_bytes).detail)(scope, receive, send)


class Completions:
    """The completion endpoints without FastAPI's routing (see the module docstring).
    `routes`: {path: (request model, endpoint name)}."""

    def __init__(self, app, handle: Handler, routes: dict[str, tuple[type[BaseModel], str]]):
        self.app, self.handle, self.routes = app, handle, routes

    async def __call__(self, scope, receive, send):
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if (route is None or scope["method"] != "POST"
                or not _is_json(_header(scope, b"content-type"))):
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left mid-body
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        raw = b"".join(chunks)
        model, endpoint = route
        try:
            body = model.model_validate_json(raw)
        except ValidationError:  # FastAPI parses it again and says what is wrong
            return await self.app(scope, _replay(raw, receive), send)
        response = await self.handle(Request(scope, receive), body, endpoint)
        await response(scope, receive, send)


def _header(scope, name: bytes) -> bytes:
    return next((v for k, v in scope.get("headers") or () if k == name), b"")


def _is_json(content_type: bytes) -> bool:
    """`application/json`, with parameters or not, as FastAPI's routes accept it (they
    also take `application/*+json`: that is left to them)."""
    return content_type.split(b";", 1)[0].strip().lower() == b"application/json"


def _replay(raw: bytes, receive):
    """`receive` for the app downstream: the body already read, then the client's."""
    pending = [{"type": "http.request", "body": raw, "more_body": False}]

    async def replayed():
        return pending.pop() if pending else await receive()

    return replayed
