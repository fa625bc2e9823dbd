"""The gateway's HTTP server protocol: uvicorn's httptools protocol, with what a response
writes in one turn of the event loop sent to the client in one write.

uvicorn writes a response's head and its body separately: two `send` calls, two
segments on the wire, and a client that wakes twice to read one answer (it parses the
head, then waits again for the body). On the gateway's whole completions those two
writes were about a sixth of py-spy's samples of the gateway under
benchmarks/gateway_overhead.py's sequential requests. Here the connection's transport
holds each write until the loop's current turn ends and sends them joined: a whole JSON
response (head and body written in the same turn) goes out as one, and a stream's
chunks go out as they come, each at the end of the turn that made it. Nothing else
changes: flow control, closing (what is held is sent first), aborting (what is held is
dropped, as the transport drops its own buffer) and upgrades are the transport's own.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a `_Joined` transport: `uvicorn.run(http=...)`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_Joined(transport, self.loop))


class _Joined:
    """A transport whose writes in one turn of the loop go out as one write at its end."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport, self._loop = transport, loop
        self._held: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._held is None:
            self._held = [data]
            self._loop.call_soon(self._flush)
        else:
            self._held.append(data)

    def writelines(self, lines) -> None:
        for data in lines:
            self.write(data)

    def get_write_buffer_size(self) -> int:
        held = sum(len(d) for d in self._held) if self._held else 0
        return held + self._transport.get_write_buffer_size()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held and not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def __getattr__(self, name: str):  # is_closing, pause_reading, get_extra_info, ...
        return getattr(self._transport, name)
