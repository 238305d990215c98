"""uvicorn's httptools HTTP/1.1 protocol, with one write per response.

The connections that coserve's own protocol (``_protocol``) hands over, everything but plain
inference requests, run on this. Profiling the server under load (benchmarks/README.md) found a
third of the event loop's time in ``transport.write``: uvicorn writes a response's head and body
separately, so every response cost two ``send`` system calls and two TCP segments, and woke the
client twice. Here writes made during one pass of the event loop are joined and sent once at the
end of it. Everything else, parsing, keep-alive, pipelining, flow control and WebSocket upgrades,
is uvicorn's own code.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["AsgiHttpProtocol"]


class _CoalescingTransport:
    """A transport whose writes wait for the end of the current loop pass, then go as one."""

    __slots__ = ("_buffer", "_loop", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._buffer: list[bytes] = []

    def write(self, data: bytes) -> None:
        buffer = self._buffer
        if not buffer:
            self._loop.call_soon(self.flush)
        buffer.append(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Send what is buffered now."""
        buffer = self._buffer
        if not buffer:
            return
        data = buffer[0] if len(buffer) == 1 else b"".join(buffer)
        buffer.clear()
        if not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self._buffer.clear()
        self.transport.abort()

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() + sum(map(len, self._buffer))

    def __getattr__(self, name: str) -> Any:
        # is_closing, get_extra_info, pause_reading, set_protocol, ...: the real transport's.
        return getattr(self.transport, name)


class AsgiHttpProtocol(HttpToolsProtocol):
    """uvicorn's ``HttpToolsProtocol`` with coalesced writes."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Set up the connection as uvicorn does, then buffer its writes."""
        super().connection_made(transport)
        self._coalescing: _CoalescingTransport | None = _CoalescingTransport(transport, self.loop)
        self.transport = self._coalescing  # type: ignore[assignment]

    def eof_received(self) -> None:
        """The client half-closed: send what is buffered before the transport closes itself."""
        if self._coalescing is not None:
            self._coalescing.flush()
        super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop what is buffered (nobody to send it to), then clean up as uvicorn does."""
        if self._coalescing is not None:
            self._coalescing._buffer.clear()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        """Hand the real transport to the WebSocket protocol: it does its own framing."""
        if self._coalescing is not None:
            self._coalescing.flush()
            self.transport = self._coalescing.transport
            self._coalescing = None
        super().handle_websocket_upgrade()
