"""A lean HTTP/1.1 client for the request path's one hot call: a whole completion POSTed
to an engine over plain HTTP, on kept-alive connections, its answer parsed by httptools
(the parser uvicorn serves with).

Per call, httpx spends about 1.2 ms of CPU on these machines and aiohttp 0.3 ms; this
spends 0.05 ms (httpx was the largest part of what the gateway added to a request). It
does that one thing: no TLS, no proxy, no redirects, no compression (it asks for none),
no streaming. `target()` says None for an upstream that needs any of them (an https://
API, an HTTP proxy from the environment), and those are called through httpx as before.

Failures raise httpx's exceptions (ConnectError, ConnectTimeout, ReadTimeout,
RemoteProtocolError) so callers handle one family. A call cancelled mid-answer closes its
connection, which tells the engine to stop. Connections the engine closes while idle
leave the pool as it closes them; a POST is never sent twice by this client (the
gateway's own retries decide that).
"""

from __future__ import annotations

import asyncio
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools
import httpx

MAX_IDLE_PER_HOST = 200  # as the gateway's httpx client keeps


@dataclass(frozen=True)
class Target:
    """An engine reachable directly: where to connect, and the request head's fixed part."""

    host: str
    port: int
    path: str  # the base URL's path, e.g. /v1
    head: bytes  # Host, Content-Type and the upstream's own headers, CRLF-terminated


def target(base_url: str, headers: dict[str, str]) -> Target | None:
    """How to call `base_url` directly, or None when httpx must: https, a proxy from the
    environment, credentials or a query in the URL, headers that are not plain latin-1."""
    url = urlsplit(base_url)
    proxies = urllib.request.getproxies()
    if (url.scheme != "http" or not url.hostname or url.username or url.password
            or url.query or url.fragment or (
                ("http" in proxies or "all" in proxies)
                and not urllib.request.proxy_bypass_environment(url.hostname))):
        return None
    lines = {"Host": url.netloc, "Content-Type": "application/json",
             "Accept-Encoding": "identity", **headers}
    text = "".join(f"{k}: {v}\r\n" for k, v in lines.items())
    if text.count("\n") != len(lines) or text.count("\r") != len(lines):
        return None  # a CR or LF inside a header
    try:
        return Target(url.hostname, url.port or 80, url.path.rstrip("/"),
                      text.encode("latin-1"))
    except UnicodeEncodeError:
        return None


class Pool:
    """Kept-alive connections per engine. Use from one event loop."""

    def __init__(self):
        self._idle: dict[tuple[str, int], list[_Connection]] = {}

    async def post(self, to: Target, path: str, body: bytes, timeout: float
                   ) -> tuple[int, bytes]:
        """POST `body` (JSON) to `to.path + path`: (status, response body). `timeout`:
        to connect, and between any two reads of the answer, as httpx's."""
        conn = self._take(to) or await _connect(to, timeout)
        request = b"POST %s%s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s" % (
            to.path.encode(), path.encode(), to.head, len(body), body)
        try:
            status, answer, keep = await conn.exchange(request, timeout)
        except BaseException:
            conn.close()  # cancelled or broken mid-answer: never reused
            raise
        idle = self._idle.setdefault((to.host, to.port), [])
        # reused only if kept alive and not answered before the request went out whole
        if (keep and len(idle) < MAX_IDLE_PER_HOST
                and not conn.transport.get_write_buffer_size()):
            idle.append(conn)
        else:
            conn.close()
        return status, answer

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    def _take(self, to: Target) -> _Connection | None:
        idle = self._idle.get((to.host, to.port))
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None


async def _connect(to: Target, timeout: float) -> _Connection:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            _, conn = await loop.create_connection(_Connection, to.host, to.port)
    except TimeoutError:
        raise httpx.ConnectTimeout(f"no connection to {to.host}:{to.port} within "
                                   f"{timeout:g} s") from None
    except OSError as exc:
        raise httpx.ConnectError(str(exc)) from None
    return conn


class _Connection(asyncio.Protocol):
    """One connection: one request at a time, its answer gathered by httptools."""

    def __init__(self):
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._answer: asyncio.Future | None = None
        self._parser = None
        self._chunks: list[bytes] = []
        self._framed = False  # Content-Length or chunked: else the answer ends at EOF
        self._headed = False  # the head read whole (a body ending at EOF can only follow it)
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None

    async def exchange(self, request: bytes, timeout: float) -> tuple[int, bytes, bool]:
        if self.closed:
            raise httpx.RemoteProtocolError("the engine closed the connection")
        loop = asyncio.get_running_loop()
        self._answer, self._chunks = loop.create_future(), []
        self._framed = self._headed = False
        self._parser = httptools.HttpResponseParser(self)
        self._last_read = loop.time()
        self._timer = loop.call_at(self._last_read + timeout, self._check_idle, timeout)
        try:
            self.transport.write(request)
            return await self._answer
        finally:
            self._timer.cancel()
            self._answer = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._answer is None or self._answer.done():  # bytes nobody asked for
            self.close()
            return
        self._last_read = asyncio.get_running_loop().time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed answer from the engine: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if exc is None and self._headed and not self._framed:  # an answer delimited by EOF
            self.on_message_complete()
        self._fail(httpx.RemoteProtocolError(
            "the engine closed the connection before a whole answer"
            + (f": {exc}" if exc else "")))

    # httptools callbacks
    def on_header(self, name: bytes, _value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        self._headed = True

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_result((self._parser.get_status_code(), b"".join(self._chunks),
                                     self._parser.should_keep_alive()))

    def _check_idle(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        quiet = loop.time() - self._last_read
        if quiet < timeout:  # data came meanwhile: wait for the rest of the interval
            self._timer = loop.call_at(self._last_read + timeout, self._check_idle, timeout)
            return
        self._fail(httpx.ReadTimeout(f"no answer from the engine for {timeout:g} s"))

    def _fail(self, exc: Exception) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(exc)
