"""Connections that send ``coserve bench``'s requests: raw HTTP/1.1, WebSocket, gRPC.

HTTP is a bare ``asyncio.Protocol`` (keep-alive, one request in flight, the response found by
its ``Content-Length``): a general-purpose client costs several times more CPU per request, and
on a small machine the load generator shares the cores with the server it measures. WebSocket
and gRPC multiplex many requests over one connection, matched by request id.

A call returns a status key: the HTTP status (``"200"``), the gRPC code name (``"OK"``,
``"UNAVAILABLE"``), or what went wrong on the client side (``"connection-error"``,
``"timeout"``). :data:`SUCCESS` holds the keys that count as answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Sequence
from typing import Any, cast

import orjson

from coserve.bench._payload import Body, Target

__all__ = [
    "CONNECTION_ERROR",
    "SUCCESS",
    "TIMEOUT",
    "CallTimeoutError",
    "Connection",
    "ConnectionLostError",
    "Connector",
]

SUCCESS = frozenset({"200", "OK"})
CONNECTION_ERROR = "connection-error"
TIMEOUT = "timeout"
_MAX_HEAD = 64 * 1024


class ConnectionLostError(Exception):
    """The connection closed or failed; the call's request has no answer."""


class CallTimeoutError(ConnectionLostError):
    """No answer within the timeout (the connection is closed: a late answer has no taker)."""


class Connection:
    """One connection; ``capacity`` requests may be in flight on it at once."""

    capacity = 1

    async def call(self, index: int) -> str:
        """Send request variant ``index`` and wait for its answer's status key."""
        raise NotImplementedError

    def close(self) -> None:
        """Close at once; calls in flight raise :class:`ConnectionLostError`."""
        raise NotImplementedError

    def expire(self, sent_before: int) -> None:
        """Fail the calls sent before ``sent_before`` (``time.monotonic_ns``) with a timeout."""

    @property
    def closed(self) -> bool:
        """Whether the connection can take no more calls."""
        raise NotImplementedError


def _http_requests(target: Target, bodies: Sequence[Body]) -> list[bytes]:
    host, port = target.host_port
    path = target.infer_path()
    out = []
    for body in bodies:
        head = [
            f"POST {path} HTTP/1.1",
            f"Host: {host}:{port}",
            f"Content-Length: {len(body.data)}",
        ]
        if body.header_length is None:
            head.append("Content-Type: application/json")
        else:
            head.append("Content-Type: application/octet-stream")
            head.append(f"Inference-Header-Content-Length: {body.header_length}")
        out.append(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body.data)
    return out


def _parse_head(head: bytes) -> tuple[str, int, bool] | str:
    """(status, body length, whether the server closes after it), or why it cannot be read."""
    lines = head.split(b"\r\n")
    version, status = lines[0][:8], lines[0][9:12]
    length: int | None = None
    close = version == b"HTTP/1.0"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return "a bad Content-Length"
        elif name == b"connection":
            close = b"close" in value or (close and b"keep-alive" not in value)
        elif name == b"transfer-encoding" and b"chunked" in value:
            return "chunked responses are not supported"
    if length is None:
        if status[:1] == b"1" or status in (b"204", b"304"):
            length = 0
        else:
            return "a response without Content-Length"
    return status.decode("latin-1"), length, close


class _HttpConnection(asyncio.Protocol, Connection):
    def __init__(self, requests: Sequence[bytes]) -> None:
        self._requests = requests
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._body_end = -1
        self._status = ""
        self._close_after = False
        self._waiter: asyncio.Future[str] | None = None
        self._sent = 0
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionLostError(str(exc or "closed by the server")))

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if self._body_end < 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > _MAX_HEAD:
                    self._fail("response head too large")
                return
            parsed = _parse_head(bytes(buffer[:end]))
            if isinstance(parsed, str):
                self._fail(parsed)
                return
            self._status, length, self._close_after = parsed
            self._body_end = end + 4 + length
        if len(buffer) >= self._body_end:
            del buffer[: self._body_end]
            self._body_end = -1
            waiter, self._waiter = self._waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(self._status)
            if self._close_after:
                self.close()

    def _fail(self, reason: str) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionLostError(reason))
        self.close()

    async def call(self, index: int) -> str:
        if self._closed or self._transport is None:
            raise ConnectionLostError("closed")
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self._sent = time.monotonic_ns()
        self._transport.write(self._requests[index % len(self._requests)])
        status: str = await waiter
        return status

    def expire(self, sent_before: int) -> None:
        waiter = self._waiter
        if waiter is not None and self._sent < sent_before:
            self._waiter = None
            if not waiter.done():
                waiter.set_exception(CallTimeoutError("no answer in time"))
            self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._transport is not None:
                self._transport.close()
            self.connection_lost(None)

    @property
    def closed(self) -> bool:
        return self._closed


class _Multiplexed(Connection):
    """A connection carrying many requests at once, each answer matched to its request's id."""

    ended = "the connection closed"

    def __init__(self) -> None:
        self._waiters: dict[str, asyncio.Future[str]] = {}
        self._sent: dict[str, int] = {}
        self._ids = itertools.count()
        self._closed = False
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _receive(self) -> None:
        """Read answers until the connection ends, calling :meth:`_answer` for each."""
        raise NotImplementedError

    async def _send(self, request_id: str, index: int) -> None:
        """Send request variant ``index`` with ``request_id``."""
        raise NotImplementedError

    def _answer(self, request_id: str, status: str) -> None:
        self._sent.pop(request_id, None)
        waiter = self._waiters.pop(request_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(status)

    async def _read(self) -> None:
        try:
            await self._receive()
        except Exception:  # the connection failed: every waiter learns below
            pass
        finally:
            self._closed = True
            for waiter in self._waiters.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionLostError(self.ended))
            self._waiters.clear()

    async def call(self, index: int) -> str:
        if self._closed:
            raise ConnectionLostError("closed")
        request_id = str(next(self._ids))
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[request_id] = waiter
        self._sent[request_id] = time.monotonic_ns()
        try:
            await self._send(request_id, index)
        except Exception as error:
            self._waiters.pop(request_id, None)
            self._sent.pop(request_id, None)
            raise ConnectionLostError(str(error)) from None
        status: str = await waiter
        return status

    def expire(self, sent_before: int) -> None:
        late = [request_id for request_id, at in self._sent.items() if at < sent_before]
        for request_id in late:
            del self._sent[request_id]
            waiter = self._waiters.pop(request_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_exception(CallTimeoutError("no answer in time"))

    def close(self) -> None:
        self._closed = True
        self._reader.cancel()

    @property
    def closed(self) -> bool:
        return self._closed


class _WebSocketConnection(_Multiplexed):
    capacity = 32
    ended = "the WebSocket closed"

    def __init__(self, socket: Any, bodies: Sequence[bytes]) -> None:
        self._socket = socket
        # The id goes first in each message: b'{"id":"N",' + the rest of the body.
        self._bodies = [body[1:] for body in bodies]
        super().__init__()

    async def _receive(self) -> None:
        async for message in self._socket:
            answer = orjson.loads(message)
            status = str(answer.get("status", 500)) if "error" in answer else "200"
            self._answer(str(answer.get("id")), status)

    async def _send(self, request_id: str, index: int) -> None:
        body = self._bodies[index % len(self._bodies)]
        await self._socket.send(b'{"id":"' + request_id.encode() + b'",' + body, text=True)

    def close(self) -> None:
        super().close()
        with contextlib.suppress(Exception):
            self._socket.transport.abort()


class _GrpcConnection(Connection):
    capacity = 64

    def __init__(self, channel: Any, bodies: Sequence[bytes], timeout: float) -> None:
        from coserve.server._protos import MODEL_INFER

        self._channel = channel
        self._bodies = bodies
        self._timeout = timeout
        self._infer = channel.unary_unary(MODEL_INFER)
        self._closed = False

    async def call(self, index: int) -> str:
        import grpc

        if self._closed:
            raise ConnectionLostError("closed")
        try:
            await self._infer(self._bodies[index % len(self._bodies)], timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return TIMEOUT
            return str(error.code().name)
        return "OK"

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _closing(self._channel.close())

    @property
    def closed(self) -> bool:
        return self._closed


_CLOSING: set[asyncio.Task[Any]] = set()


def _closing(closing: Any) -> None:
    """Run a channel's close in the background, held so it is not collected half-way."""
    task = asyncio.get_running_loop().create_task(closing)
    _CLOSING.add(task)
    task.add_done_callback(_CLOSING.discard)


def _with_id(body: bytes, request_id: str) -> bytes:
    """A serialised ModelInferRequest with its ``id`` (field 3) set: the last value wins."""
    raw = request_id.encode()
    return body + b"\x1a" + bytes([len(raw)]) + raw  # ids stay under 128 bytes


class _GrpcStreamConnection(_Multiplexed):
    capacity = 64
    ended = "the gRPC stream ended"

    def __init__(self, channel: Any, bodies: Sequence[bytes]) -> None:
        from coserve.server._protos import MODEL_STREAM_INFER

        self._channel = channel
        self._bodies = bodies
        self._stream = channel.stream_stream(MODEL_STREAM_INFER)()
        self._writing = asyncio.Lock()
        super().__init__()

    async def _receive(self) -> None:
        from coserve.server._protos import ModelStreamInferResponse

        while True:
            message = await self._stream.read()
            if not isinstance(message, bytes):  # grpc.aio.EOF
                return
            answer = ModelStreamInferResponse.FromString(message)
            self._answer(answer.infer_response.id, "ERROR" if answer.error_message else "OK")

    async def _send(self, request_id: str, index: int) -> None:
        # A gRPC stream takes one write at a time (more is GRPC_CALL_ERROR_TOO_MANY_OPERATIONS).
        async with self._writing:
            await self._stream.write(_with_id(self._bodies[index % len(self._bodies)], request_id))

    def close(self) -> None:
        if not self._closed:
            super().close()
            _closing(self._channel.close())


class Connector:
    """Opens connections of one protocol to one target, with the requests pre-encoded."""

    def __init__(self, target: Target, bodies: Sequence[Body], timeout: float) -> None:
        self.target = target
        self._timeout = timeout
        self._bodies = [body.data for body in bodies]
        self._http = _http_requests(target, bodies) if target.protocol in _REST else []
        kinds: dict[str, type[Connection]] = {
            "ws": _WebSocketConnection,
            "grpc": _GrpcConnection,
            "grpc-stream": _GrpcStreamConnection,
        }
        self.capacity = kinds.get(target.protocol, _HttpConnection).capacity
        """Requests one connection carries at once (its class's :attr:`Connection.capacity`)."""

    async def open(self) -> Connection:
        """A new connection.

        Raises:
            ConnectionLostError: It could not be opened.
        """
        try:
            return await asyncio.wait_for(self._open(), self._timeout)
        except (OSError, TimeoutError) as error:
            raise ConnectionLostError(f"cannot connect: {error or 'timed out'}") from None

    async def _open(self) -> Connection:
        protocol = self.target.protocol
        if protocol in _REST:
            host, port = self.target.host_port
            loop = asyncio.get_running_loop()
            _, connection = await loop.create_connection(
                lambda: _HttpConnection(self._http), host, port
            )
            return connection
        if protocol == "ws":
            from websockets.asyncio.client import connect

            url = self.target.base_url.replace("http", "ws", 1) + self.target.infer_path()
            try:
                socket = await connect(url, max_size=2**26, compression=None)
            except Exception as error:
                raise OSError(str(error)) from None
            return _WebSocketConnection(socket, self._bodies)
        import grpc

        channel = grpc.aio.insecure_channel(
            self.target.grpc_address,
            options=[
                ("grpc.max_receive_message_length", 2**26),
                ("grpc.max_send_message_length", 2**26),
            ],
        )
        try:
            await asyncio.wait_for(channel.channel_ready(), self._timeout)
        except TimeoutError:
            await channel.close()
            raise OSError(f"gRPC {self.target.grpc_address} did not answer") from None
        if protocol == "grpc":
            return _GrpcConnection(channel, self._bodies, self._timeout)
        return _GrpcStreamConnection(channel, self._bodies)


_REST = ("v2", "v2-binary", "tfserving")
