"""The gateway's HTTP server protocol (tokenomy.serve.wire): what a response writes in one
turn of the event loop reaches the client as one write; streams, keep-alive, closing and
aborting behave as uvicorn's own."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from fake_upstream import free_port
from tokenomy.serve.wire import HttpProtocol, _Joined


class Recorder:
    """A transport that records what is written to it."""

    def __init__(self):
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default=None):
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


async def _turn() -> None:
    await asyncio.sleep(0)


async def _one_turn(joined: _Joined, transport: Recorder) -> None:
    joined.write(b"head")
    joined.write(b"body")
    assert transport.writes == [], "nothing is written before the turn ends"
    assert joined.get_write_buffer_size() == 8
    await _turn()


async def _two_turns(joined: _Joined, transport: Recorder) -> None:
    joined.write(b"chunk1")
    await _turn()
    joined.write(b"chunk2")
    await _turn()


async def _close(joined: _Joined, transport: Recorder) -> None:
    joined.write(b"last")
    joined.close()
    assert transport.closed
    await _turn()


async def _abort(joined: _Joined, transport: Recorder) -> None:
    joined.write(b"dropped")
    joined.abort()
    await _turn()


async def _closing(joined: _Joined, transport: Recorder) -> None:
    transport.closed = True  # the client left
    joined.write(b"nobody")
    await _turn()


@pytest.mark.parametrize(("scenario", "expected"), [
    (_one_turn, [b"headbody"]),
    (_two_turns, [b"chunk1", b"chunk2"]),
    (_close, [b"last"]),
    (_abort, []),
    (_closing, []),
], ids=["one-turn-one-write", "stream-each-turn", "close-sends-first", "abort-drops",
        "closing-drops"])
def test_writes_in_one_turn_go_out_as_one(scenario, expected):
    async def run():
        transport = Recorder()
        joined = _Joined(transport, asyncio.get_running_loop())
        await scenario(joined, transport)
        assert joined.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest: passed on
        return transport.writes

    assert asyncio.run(run()) == expected


async def _json(_request):
    return JSONResponse({"answer": "x" * 1000})


async def _stream(_request):
    async def chunks():
        for i in range(3):
            yield f"data: {i}\n\n".encode()
            await asyncio.sleep(0.05)

    return StreamingResponse(chunks(), media_type="text/event-stream")


@pytest.fixture
def server():
    app = Starlette(routes=[Route("/json", _json), Route("/stream", _stream)])
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, http=HttpProtocol,
                                        log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


def test_whole_responses_and_streams_through_uvicorn(server):
    with httpx.Client(base_url=server) as client:
        for _ in range(3):  # one kept-alive connection
            r = client.get("/json")
            assert r.status_code == 200 and r.json() == {"answer": "x" * 1000}
        with client.stream("GET", "/stream") as r:
            arrived = [(line, time.monotonic()) for line in r.iter_lines() if line]
        assert [line for line, _ in arrived] == ["data: 0", "data: 1", "data: 2"]
        gaps = [b - a for (_, a), (_, b) in itertools.pairwise(arrived)]
        assert min(gaps) > 0.02, f"chunks arrived together, not as made: {gaps}"
