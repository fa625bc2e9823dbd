"""The engines' HTTP/1.1 client (tokenomy.serve.http1) against a scripted server on
127.0.0.1 that answers each request with the bytes a test gives: kept-alive connections
reused and broken ones never, each way an answer is framed, answers that arrive in pieces,
a server that dies mid-answer or speaks nonsense, and the timeouts."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Awaitable, Callable

import httpx
import pytest

from tokenomy.serve import http1

Reply = Callable[[asyncio.StreamWriter, bytes], Awaitable[bool]]  # False: close after


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy",
                 "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


def answer(body: bytes = b'{"ok": true}', *, status: bytes = b"200 OK",
           headers: bytes = b"") -> bytes:
    return (b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"%s\r\n%s" % (status, len(body), headers, body))


def chunked(*chunks: bytes) -> list[bytes]:
    return [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            *(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks), b"0\r\n\r\n"]


def sends(*pieces: bytes, keep: bool = True, delay: float = 0.0) -> Reply:
    """A reply that writes `pieces` `delay` seconds apart."""
    async def reply(writer, _body):
        for i, piece in enumerate(pieces):
            if i and delay:
                await asyncio.sleep(delay)
            writer.write(piece)
            await writer.drain()
        return keep
    return reply


class Engine:
    """Reads each request whole (Content-Length) and answers it with `reply`."""

    def __init__(self, reply: Reply):
        self.reply = reply
        self.connections = 0
        self.ended = 0  # connections the client ended
        self.requests: list[tuple[int, bytes, bytes]] = []  # (connection, head, body)

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=2**26)
        port = self.server.sockets[0].getsockname()[1]
        self.target = http1.target(f"http://127.0.0.1:{port}/v1/",
                                   {"Authorization": "Bearer sk-x"})
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    async def _serve(self, reader, writer):
        self.connections += 1
        number = self.connections
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    self.ended += 1
                    return
                length = int(re.search(rb"\r\nContent-Length: (\d+)\r\n", head)[1])
                body = await reader.readexactly(length)
                self.requests.append((number, head, body))
                if not await self.reply(writer, body):
                    return
        except ConnectionError:
            self.ended += 1
        finally:
            writer.close()


async def until(condition, timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


# -- target ----------------------------------------------------------------------------
@pytest.mark.parametrize(("url", "headers"), [
    ("https://api.example.com/v1", {}),
    ("http://user:pw@engine:8000/v1", {}),
    ("http://engine:8000/v1?x=1", {}),
    ("http://engine:8000/v1#f", {}),
    ("http:///v1", {}),
    ("http://engine:8000/v1", {"X-Evil": "a\r\nHost: other"}),
    ("http://engine:8000/v1", {"X-Name": "café ☕"}),
], ids=["https", "credentials", "query", "fragment", "no-host", "crlf-header",
        "not-latin-1"])
def test_target_leaves_what_it_cannot_do_to_httpx(url, headers):
    assert http1.target(url, headers) is None


def test_target_leaves_proxied_hosts_to_httpx(monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    assert http1.target("http://engine:8000/v1", {}) is None
    monkeypatch.setenv("NO_PROXY", "engine")
    assert http1.target("http://engine:8000/v1", {}) is not None


def test_target_head():
    to = http1.target("http://engine/v1/", {"Authorization": "Bearer k"})
    assert (to.host, to.port, to.path) == ("engine", 80, "/v1")
    assert to.head == (b"Host: engine\r\nContent-Type: application/json\r\n"
                       b"Accept-Encoding: identity\r\nAuthorization: Bearer k\r\n")


# -- answers ---------------------------------------------------------------------------
def test_one_connection_serves_many_requests():
    async def run():
        async with Engine(sends(answer(b'{"n": 1}'))) as engine:
            pool = http1.Pool()
            for i in range(5):
                status, body = await pool.post(engine.target, "/chat/completions",
                                               b'{"i": %d}' % i, timeout=2)
                assert (status, body) == (200, b'{"n": 1}')
            pool.close()
            await until(lambda: engine.ended == 1)
            return engine

    engine = asyncio.run(run())
    assert engine.connections == 1
    assert [body for _, _, body in engine.requests] == [b'{"i": %d}' % i for i in range(5)]
    head = engine.requests[0][1]
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nAuthorization: Bearer sk-x\r\nContent-Length: 8\r\n\r\n" in head


@pytest.mark.parametrize("pieces", [
    [answer(b'{"a": "b"}')],
    chunked(b'{"a"', b': "b"', b"}"),
    [b"HTTP/1.1 200 OK\r\ncOnTeNt-LeNgTh: 10\r\n\r\n", b'{"a": "b"}'],
    [b"HTTP/1.1 200 OK\r\nTRANSFER-ENCODING: CHUNKED\r\n\r\n", b"4\r\n",
     b'{"a"\r\n6\r\n: "b"}\r\n', b"0\r\n\r\n"],
], ids=["content-length", "chunked", "header-case", "chunked-split-oddly"])
def test_framed_answers_are_whole_and_keep_the_connection(pieces):
    async def run():
        async with Engine(sends(*pieces, delay=0.01)) as engine:
            pool = http1.Pool()
            got = [await pool.post(engine.target, "/x", b"{}", timeout=2) for _ in range(3)]
            pool.close()
            return got, engine.connections

    got, connections = asyncio.run(run())
    assert got == [(200, b'{"a": "b"}')] * 3
    assert connections == 1


@pytest.mark.parametrize(("pieces", "keep"), [
    ([b"HTTP/1.1 200 OK\r\n\r\n", b'{"to": ', b'"eof"}'], False),
    ([answer(b'{"to": "eof"}', headers=b"Connection: close\r\n")], True),
    ([b"HTTP/1.0 200 OK\r\nContent-Length: 13\r\n\r\n", b'{"to": "eof"}'], False),
], ids=["ends-at-eof", "connection-close", "http-1.0"])
def test_answers_that_end_the_connection_are_not_reused(pieces, keep):
    async def run():
        async with Engine(sends(*pieces, keep=keep, delay=0.01)) as engine:
            pool = http1.Pool()
            got = [await pool.post(engine.target, "/x", b"{}", timeout=2) for _ in range(2)]
            pool.close()
            return got, engine.connections

    got, connections = asyncio.run(run())
    assert got == [(200, b'{"to": "eof"}')] * 2
    assert connections == 2


def test_an_answer_in_pieces_waits_for_the_whole_and_times_out_only_when_quiet():
    """An SSE-like answer trickling in for longer than the timeout: the timeout is between
    two reads, as httpx's, so it arrives whole."""
    events = [b"data: {\"n\": %d}\n\n" % i for i in range(8)]

    async def run():
        async with Engine(sends(*chunked(*events), delay=0.05)) as engine:
            pool = http1.Pool()
            started = asyncio.get_running_loop().time()
            got = await pool.post(engine.target, "/x", b"{}", timeout=0.2)
            return got, asyncio.get_running_loop().time() - started

    (status, body), took = asyncio.run(run())
    assert (status, body) == (200, b"".join(events))
    assert took > 0.3, f"took {took:.2f} s: not the slow answer this test needs"


def test_large_bodies_both_ways():
    sent = b'{"p": "' + bytes(range(97, 123)) * 400_000 + b'"}'  # ~10 MB
    back = b"x" * 9_000_001

    async def run():
        async with Engine(sends(*chunked(back[:5_000_000], back[5_000_000:]))) as engine:
            pool = http1.Pool()
            got = await pool.post(engine.target, "/x", sent, timeout=5)
            pool.close()
            return got, engine.requests[0][2]

    (status, body), received = asyncio.run(run())
    assert status == 200 and len(body) == len(back) and body == back
    assert received == sent


def test_error_statuses_are_answers():
    error = b'{"error": {"message": "overloaded"}}'

    async def run():
        async with Engine(sends(answer(error, status=b"503 Service Unavailable"))) as engine:
            pool = http1.Pool()
            got = [await pool.post(engine.target, "/x", b"{}", timeout=2) for _ in range(2)]
            pool.close()
            return got, engine.connections

    assert asyncio.run(run()) == ([(503, error)] * 2, 1)


# -- failures --------------------------------------------------------------------------
@pytest.mark.parametrize(("pieces", "message"), [
    ([answer(b'{"cut": "short"}')[:-5]], "closed the connection before a whole answer"),
    (chunked(b'{"a": 1}')[:-1], "closed the connection before a whole answer"),
    ([b"HTTP/1.1 200 OK\r\nContent-Le"], "closed the connection before a whole answer"),
    ([b""], "closed the connection before a whole answer"),
    ([b"HTTP/1.1 abc OK\r\nContent-Length: 2\r\n\r\n{}"], "malformed answer"),
    ([b"SSH-2.0-OpenSSH_9.6\r\n\r\n"], "malformed answer"),
    ([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"],
     "malformed answer"),
], ids=["cut-body", "cut-chunks", "cut-head", "nothing", "bad-status", "not-http",
        "both-framings"])
def test_a_broken_answer_is_a_protocol_error_and_its_connection_is_dropped(pieces,
                                                                           message):
    calls = 0

    async def first_broken(writer, body):
        nonlocal calls
        calls += 1
        if calls > 1:
            return await sends(answer())(writer, body)
        await sends(*pieces)(writer, body)
        if b"malformed" not in message.encode():
            return False  # and close
        await asyncio.sleep(1)  # the client must not wait for this
        return False

    async def run():
        async with Engine(first_broken) as engine:
            pool = http1.Pool()
            with pytest.raises(httpx.RemoteProtocolError, match=message):
                await pool.post(engine.target, "/x", b"{}", timeout=2)
            got = await pool.post(engine.target, "/x", b"{}", timeout=2)
            pool.close()
            return got, engine.connections

    got, connections = asyncio.run(run())
    assert got == (200, b'{"ok": true}')
    assert connections == 2, "a broken connection was used again"


def test_a_connection_the_engine_closed_while_idle_is_not_used():
    async def run():
        async with Engine(sends(answer(), keep=False)) as engine:  # closes after answering
            pool = http1.Pool()
            await pool.post(engine.target, "/x", b"{}", timeout=2)
            await asyncio.sleep(0.1)
            got = await pool.post(engine.target, "/x", b"{}", timeout=2)
            pool.close()
            return got, engine

    got, engine = asyncio.run(run())
    assert got == (200, b'{"ok": true}')
    assert (engine.connections, len(engine.requests)) == (2, 2), "a request sent twice"


def test_a_refused_connection_is_a_connect_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    to = http1.target(f"http://127.0.0.1:{port}/v1", {})

    with pytest.raises(httpx.ConnectError):
        asyncio.run(http1.Pool().post(to, "/x", b"{}", timeout=2))


def test_a_connection_not_made_in_time_is_a_connect_timeout():
    async def run():
        loop = asyncio.get_running_loop()

        async def never(*_args, **_kwargs):
            await asyncio.sleep(60)

        loop.create_connection = never
        to = http1.target("http://10.0.0.1:9/v1", {})
        started = loop.time()
        with pytest.raises(httpx.ConnectTimeout, match=r"10\.0\.0\.1:9 within 0\.2 s"):
            await http1.Pool().post(to, "/x", b"{}", timeout=0.2)
        return loop.time() - started

    assert asyncio.run(run()) < 1


def test_silence_is_a_read_timeout_and_the_connection_is_dropped():
    calls = 0

    async def silent_once(writer, body):
        nonlocal calls
        calls += 1
        if calls == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{")
            await asyncio.sleep(5)
            return False
        return await sends(answer())(writer, body)

    async def run():
        async with Engine(silent_once) as engine:
            pool = http1.Pool()
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(httpx.ReadTimeout, match=r"for 0\.3 s"):
                await pool.post(engine.target, "/x", b"{}", timeout=0.3)
            took = loop.time() - started
            got = await pool.post(engine.target, "/x", b"{}", timeout=2)
            pool.close()
            return took, got, engine.connections

    took, got, connections = asyncio.run(run())
    assert 0.25 < took < 1.5, f"timed out after {took:.2f} s"
    assert (got, connections) == ((200, b'{"ok": true}'), 2)


def test_a_cancelled_call_closes_its_connection():
    """Closing tells the engine to stop generating; the next call opens a new one."""
    calls = 0

    async def slow_once(writer, body):
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(5)
        return await sends(answer())(writer, body)

    async def run():
        async with Engine(slow_once) as engine:
            pool = http1.Pool()
            call = asyncio.create_task(pool.post(engine.target, "/x", b"{}", timeout=10))
            await until(lambda: engine.requests)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            got = await pool.post(engine.target, "/x", b"{}", timeout=2)
            pool.close()
            return got, engine.connections

    assert asyncio.run(run()) == ((200, b'{"ok": true}'), 2)


def test_an_answer_before_the_request_is_sent_whole_drops_the_connection():
    """An engine that refuses early (413) and never reads the rest of the body: the
    connection still holds unsent bytes, which the next request would follow."""
    big = b"x" * 48_000_000  # far more than the loopback socket buffers take

    async def run():
        server_conns = []

        async def refuse_early(reader, writer):
            server_conns.append(writer)
            if len(server_conns) == 1:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(answer(b'{"error": "too large"}', status=b"413 Too Large"))
                await asyncio.sleep(3)  # reads nothing more
            else:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"Content-Length: (\d+)", head)[1])
                await reader.readexactly(length)
                writer.write(answer())
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(refuse_early, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        to = http1.target(f"http://127.0.0.1:{port}/v1", {})
        pool = http1.Pool()
        first = await pool.post(to, "/x", big, timeout=2)
        second = await pool.post(to, "/x", b"{}", timeout=2)
        pool.close()
        server.close()
        return first[0], second, len(server_conns)

    assert asyncio.run(run()) == (413, (200, b'{"ok": true}'), 2)
