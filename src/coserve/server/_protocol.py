"""coserve's HTTP/1.1 protocol: inference requests served natively, everything else by uvicorn.

Profiling ``coserve serve`` under load (benchmarks/README.md) found the event loop spending more
time per inference request in uvicorn's per-request machinery (scope and cycle objects, a task,
ASGI messages, a keep-alive timer per response) than in decoding, batching and encoding
together; and since the loop shares the GIL with the thread that runs the model, every
microsecond of it also delayed the batches. So a connection starts here: requests whose head
:func:`~coserve.server._head.parse_head` accepts (a plain ``POST .../infer`` with a
Content-Length) are served by an :class:`~coserve.server._exchange.InferenceExchange`, with one
write per response. At the first request it does not accept, the connection, with every byte not
yet served, is handed to uvicorn's protocol (``AsgiHttpProtocol``) for the rest of its life, so
health checks, metadata, metrics, TF Serving, WebSockets and any malformed request behave exactly
as under uvicorn.

Requests on one connection are served one at a time, in order: a pipelined request waits in the
buffer until the one before it is answered (reading pauses when the buffer is large). A client
that disconnects has its request withdrawn before it runs. Keep-alive connections are closed
after uvicorn's ``timeout_keep_alive`` idle seconds, by one timer per connection rather than one
per response. Server shutdown closes idle connections at once and the others once the requests
already received are answered.

uvicorn options that act per request inside its own protocol (``limit_concurrency``,
``root_path``, proxy headers in the access log) do not apply to natively served requests;
``coserve serve`` sets none of them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from coserve.server._asgi_protocol import AsgiHttpProtocol
from coserve.server._exchange import InferenceExchange
from coserve.server._head import HANDOFF, INCOMPLETE, RequestHead, parse_head
from coserve.server._infer import Headers, InferenceRoute

__all__ = ["CoserveHttpProtocol"]

_HIGH_WATER = 64 * 1024  # buffered bytes beyond one request's needs that pause reading

access_logger = logging.getLogger("uvicorn.access")


class CoserveHttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection: native inference requests, then uvicorn for anything else.

    Takes the arguments uvicorn gives its HTTP protocols (``http=`` in ``uvicorn.Config``). With
    an app that is not coserve's (``create_app``), every connection goes to uvicorn at once.
    """

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.loop = _loop or asyncio.get_event_loop()
        app = config.app
        self._route: InferenceRoute | None = app if isinstance(app, InferenceRoute) else None
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._head: RequestHead | None = None  # the request whose body is being read...
        self._reading: InferenceExchange | None = None  # ...and its exchange
        self._serving: InferenceExchange | None = None  # the request waiting on its model
        self._discard = 0  # body bytes of a refused request still to skip
        self._keep_alive = True  # False once the client asked to close (or a body was refused)
        self._draining = False  # the server is shutting down: close once nothing is pending
        self._handed_off = False
        self._advancing = False
        self._read_paused = False
        self._write_paused = False
        self._active_at = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._access_log = bool(config.access_log) and access_logger.hasHandlers()

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Serve the connection, or give it to uvicorn at once if the app is not coserve's."""
        self._transport = cast(asyncio.Transport, transport)  # uvloop's do not subclass it
        if self._route is None:
            self._hand_off()
            return
        self.server_state.connections.add(self)
        self._active_at = self.loop.time()
        self._arm_idle_timer(self._active_at)

    def data_received(self, data: bytes) -> None:
        """Buffer the bytes; serve the next request unless one is being served."""
        self._active_at = self.loop.time()
        self._buffer += data
        if self._serving is None:
            self._advance()
        else:
            self._regulate_reading()

    def eof_received(self) -> bool:
        """The client closed its side: like uvicorn, close ours (its request is withdrawn)."""
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """Withdraw the request being served, if any, and forget the connection."""
        self.server_state.connections.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        for exchange in (self._reading, self._serving):
            if exchange is not None:
                exchange.client_gone()
        self._reading = self._serving = None

    def pause_writing(self) -> None:
        """The client is not reading its answers: serve no more until it does."""
        self._write_paused = True

    def resume_writing(self) -> None:
        """The client caught up: serve what is buffered."""
        self._write_paused = False
        if self._serving is None:
            self._advance()

    # -- uvicorn's server calls this on shutdown ---------------------------------------------

    def shutdown(self) -> None:
        """Answer the requests already received, then close; close an idle connection at once.

        "Received" is the request in progress and any complete one waiting in the buffer.
        """
        self._draining = True
        if self._serving is None:
            self._advance()

    # -- serving -----------------------------------------------------------------------------

    def _advance(self) -> None:
        """Serve buffered requests in order until one waits on its model or bytes run out."""
        if self._advancing:
            return  # an answer given synchronously inside this loop: it goes on by itself
        self._advancing = True
        try:
            self._serve_buffered()
        finally:
            self._advancing = False
        if self._handed_off:
            return
        transport = self._transport
        assert transport is not None
        idle = self._serving is None and self._reading is None
        if self._draining and idle and not self._write_paused:
            transport.close()  # shutting down, and no complete request is left to answer
        else:
            self._regulate_reading()

    def _serve_buffered(self) -> None:
        transport = self._transport
        assert transport is not None
        route = self._route
        assert route is not None
        buffer = self._buffer
        while self._serving is None and not self._write_paused and not transport.is_closing():
            if self._discard:
                skipped = min(self._discard, len(buffer))
                del buffer[:skipped]
                self._discard -= skipped
                if self._discard:
                    break
            head = self._head
            if head is None:
                if not buffer:
                    break
                parsed = parse_head(buffer)
                if parsed is INCOMPLETE:
                    break
                if parsed is HANDOFF:
                    self._hand_off()
                    return
                assert isinstance(parsed, RequestHead)
                head = parsed
                del buffer[: head.size]
                too_large = head.content_length > route.state.max_request_size
                if not head.keep_alive or too_large:
                    self._keep_alive = False  # a refused large body is never read: close
                exchange = InferenceExchange(
                    route, head.model, head.version, head.headers, self._reply
                )
                if exchange.finished:  # refused from its head (404, 413, not ready)
                    self._discard = head.content_length
                    continue
                self._head, self._reading = head, exchange
            size = head.content_length
            if len(buffer) < size:
                break  # reading goes on: a body is at most the request size limit
            body = bytes(buffer[:size])
            del buffer[:size]
            serving = self._reading
            assert serving is not None
            self._head = self._reading = None
            self._serving = serving
            serving.body_complete(body)

    def _reply(self, status: int, headers: Headers, body: bytes) -> None:
        """Send an exchange's answer in one write, then serve the next buffered request."""
        self._serving = None
        transport = self._transport
        assert transport is not None
        if transport.is_closing():
            return
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content += (name, b": ", value, b"\r\n")
        for name, value in headers:
            content += (name, b": ", value, b"\r\n")
        content.append(b"content-length: %d\r\n" % len(body))
        if not self._keep_alive:
            content.append(b"connection: close\r\n")
        content += (b"\r\n", body)
        transport.write(b"".join(content))
        self.server_state.total_requests += 1
        self._active_at = self.loop.time()
        if self._access_log:
            self._log_access(status)
        if not self._keep_alive:
            transport.close()
        elif self._buffer or self._draining or self._read_paused:
            self._advance()  # the next request, the shutdown, or reading to resume

    def _log_access(self, status: int) -> None:
        transport = self._transport
        assert transport is not None
        peer = transport.get_extra_info("peername")
        client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "-"
        access_logger.info('%s - "POST (inference) HTTP/1.1" %d', client, status)

    def _regulate_reading(self) -> None:
        """Read on while the buffer holds at most the body being read plus ``_HIGH_WATER``.

        A client that pipelines requests faster than they are answered (or does not read its
        answers) is held back here, as uvicorn holds back a pipelined request.
        """
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        head = self._head
        limit = _HIGH_WATER + (head.content_length if head is not None else 0)
        if len(self._buffer) > limit:
            if not self._read_paused:
                self._read_paused = True
                transport.pause_reading()
        elif self._read_paused:
            self._read_paused = False
            transport.resume_reading()

    # -- keep-alive --------------------------------------------------------------------------

    def _arm_idle_timer(self, since: float) -> None:
        deadline = since + self.config.timeout_keep_alive
        self._idle_timer = self.loop.call_at(deadline, self._idle_check)

    def _idle_check(self) -> None:
        """Close a connection idle for ``timeout_keep_alive`` seconds; else check again then."""
        self._idle_timer = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        idle = self._serving is None and self._reading is None and not self._buffer
        if idle and self.loop.time() >= self._active_at + self.config.timeout_keep_alive:
            transport.close()
            return
        self._arm_idle_timer(max(self._active_at, self.loop.time()))

    # -- handing over to uvicorn -------------------------------------------------------------

    def _hand_off(self) -> None:
        """Give the connection, and every byte not yet served, to uvicorn's protocol."""
        transport = self._transport
        assert transport is not None
        self._handed_off = True
        self.server_state.connections.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()
        protocol = AsgiHttpProtocol(
            config=self.config,
            server_state=self.server_state,
            app_state=self.app_state,
            _loop=self.loop,
        )
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        data = bytes(self._buffer)
        self._buffer.clear()
        if data:
            protocol.data_received(data)
