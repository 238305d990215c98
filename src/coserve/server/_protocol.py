"""uvicorn's httptools HTTP/1.1 protocol, with one write per response and a disconnect hook.

Profiling the server under load (benchmarks/README.md) found a third of the event loop's time in
``transport.write``: uvicorn writes a response's head and body separately, so every response
costs two ``send`` system calls and two TCP segments, and wakes the client twice. Here writes
made during one pass of the event loop are joined and sent once at the end of it.

The second change lets the inference path learn that its client has gone without a watcher task
per request: a request puts a callback in its scope under :data:`DISCONNECT_HOOK`, and the
protocol calls it if the connection is lost before the response is complete.

Everything else, parsing, keep-alive, pipelining, flow control and WebSocket upgrades, is
uvicorn's own code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["CLIENT_GONE", "DISCONNECT_HOOK", "CoserveHttpProtocol"]

DISCONNECT_HOOK = "coserve.disconnect_hook"
"""Scope key: the protocol sets it to None; a request may replace it with a callback."""

CLIENT_GONE: Any = object()
"""What :data:`DISCONNECT_HOOK` holds if the client left before the request set its callback."""


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


class CoserveHttpProtocol(HttpToolsProtocol):
    """uvicorn's ``HttpToolsProtocol`` with coalesced writes and :data:`DISCONNECT_HOOK`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Set up the connection as uvicorn does, then buffer its writes."""
        super().connection_made(transport)
        self._coalescing: _CoalescingTransport | None = _CoalescingTransport(transport, self.loop)
        self.transport = self._coalescing  # type: ignore[assignment]
        self._running: Any = None  # the running cycle: older than self.cycle when pipelined

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def on_message_complete(self) -> None:
        """The request is read: read on, so that a client leaving is noticed while it is served.

        uvicorn pauses reading when a large body fills its buffer and resumes only when the app
        asks for more; the inference path does not ask again after the body, so without this a
        client that leaves during a long decode would still have its work run.
        """
        super().on_message_complete()
        # Only for the request being served: a pipelined one queued behind it keeps reading
        # paused, uvicorn's bound on how much a client can queue on one connection.
        if self.flow is not None and self.cycle is self._running:
            self.flow.resume_reading()

    def eof_received(self) -> None:
        """The client half-closed: send what is buffered before the transport closes itself."""
        if self._coalescing is not None:
            self._coalescing.flush()
        super().eof_received()

    def on_message_begin(self) -> None:
        """Start a request's scope, offering the disconnect hook."""
        super().on_message_begin()
        self.scope[DISCONNECT_HOOK] = None  # type: ignore[literal-required]

    def connection_lost(self, exc: Exception | None) -> None:
        """Tell the requests still in progress that their client has gone, then clean up."""
        for cycle in {id(c): c for c in (self._running, self.cycle) if c is not None}.values():
            if cycle.response_complete:
                continue
            scope: Any = cycle.scope
            hook: Callable[[], None] | None = scope.get(DISCONNECT_HOOK)
            if hook is None:  # not waiting yet (reading or decoding): it checks when it would
                scope[DISCONNECT_HOOK] = CLIENT_GONE
            elif hook is not CLIENT_GONE:
                hook()
        if self._coalescing is not None:
            self._coalescing._buffer.clear()  # nobody to send it to
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        """Hand the real transport to the WebSocket protocol: it does its own framing."""
        if self._coalescing is not None:
            self._coalescing.flush()
            self.transport = self._coalescing.transport
            self._coalescing = None
        super().handle_websocket_upgrade()
