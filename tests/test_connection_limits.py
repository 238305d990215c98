"""What a client can make the server hold on uvicorn's side of a connection: time, head, buffers.

Every request that is not a plain inference request (health, metadata, TF Serving, WebSocket
handshakes) is served by ``AsgiHttpProtocol``. These tests run the real server in process, on
real sockets, with short limits, and talk to it with raw asyncio streams: partial heads and
bodies time out with 408, oversized heads get 431, and a client that pipelines without reading
is held back with bounded memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from coserve.server._limits import ServerLimits
from test_protocol import serve as serve_app
from test_protocol import wait_until

SHORT = ServerLimits(head_timeout=0.5, body_timeout=0.5)
GET_V2 = b"GET /v2 HTTP/1.1\r\nHost: test\r\n\r\n"


@contextlib.asynccontextmanager
async def serve(folder: Path, limits: ServerLimits) -> AsyncIterator[tuple[int, uvicorn.Server]]:
    """The app with ``limits`` under uvicorn and coserve's protocol, as ``coserve serve`` runs."""
    servers: list[uvicorn.Server] = []
    async with serve_app(folder, "coserve", limits=limits, servers=servers) as (port, _):
        yield port, servers[0]


@contextlib.asynccontextmanager
async def connection(
    port: int, *, sock: socket.socket | None = None
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    if sock is None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    else:
        try:
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            reader, writer = await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise
    try:
        yield reader, writer
    finally:
        writer.transport.abort()  # close() would first send what the server no longer reads


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bytes]:
    """One response: its status, its head (lower case) and its body (Content-Length framed)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    body = await asyncio.wait_for(reader.readexactly(length), timeout=30)
    return status, head.lower(), body


async def read_refusal(reader: asyncio.StreamReader) -> tuple[int, str]:
    """A refusal: its status and error message, after which the server closes the connection."""
    status, head, body = await read_response(reader)
    assert b"connection: close" in head
    assert await asyncio.wait_for(reader.read(), timeout=30) == b""  # closed
    error = json.loads(body)["error"]
    assert isinstance(error, str)
    return status, error


async def served(port: int, request: bytes = GET_V2) -> int:
    """The status another client gets for ``request`` on a connection of its own."""
    async with connection(port) as (reader, writer):
        writer.write(request)
        await writer.drain()
        status, _, _ = await read_response(reader)
        return status


async def send_ignoring_close(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Write and drain, as a client would that does not notice the server closed."""
    with contextlib.suppress(ConnectionError):
        writer.write(data)
        await writer.drain()


def predict_request(body: bytes, *, length: int | None = None) -> bytes:
    """A TF Serving predict on the 'slow' model (served through ASGI), with its Content-Length."""
    return (
        b"POST /v1/models/slow:predict HTTP/1.1\r\nHost: test\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body) if length is None else length, body)
    )


def rss() -> int:
    """This process's resident memory, in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def uvicorn_connections(server: uvicorn.Server) -> list[Any]:
    return [c for c in server.server_state.connections if isinstance(c, HttpToolsProtocol)]


# -- timeouts ----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_a_head_that_never_ends_gets_408_and_is_closed(tmp_path: Path) -> None:
    """A head cut off before its blank line is answered 408 and closed, head_timeout after."""
    async with serve(tmp_path, SHORT) as (port, server), connection(port) as (reader, writer):
        writer.write(b"GET /v2 HTTP/1.1\r\nHost: test\r\n")
        await writer.drain()
        status, error = await read_refusal(reader)
        # The server lets go of the connection too (its descriptor), though the client holds on.
        await wait_until(lambda: not uvicorn_connections(server), "the server to close it")
    assert status == 408
    assert "head" in error


@pytest.mark.timeout(60)
async def test_a_head_dripping_in_is_still_cut_at_its_timeout(tmp_path: Path) -> None:
    """Bytes trickling in do not restart the head's clock: it runs from the head's first byte."""
    async with serve(tmp_path, SHORT) as (port, _), connection(port) as (reader, writer):

        async def drip() -> None:  # a header byte per 0.1 s: 30 s for the whole head
            await send_ignoring_close(writer, b"GET /v2 HTTP/1.1\r\nX-Slow: ")
            for _ in range(300):
                await asyncio.sleep(0.1)
                await send_ignoring_close(writer, b"a")

        dripping = asyncio.create_task(drip())
        try:
            status, _ = await read_refusal(reader)
            assert not dripping.done()  # cut long before the head could have ended
        finally:
            dripping.cancel()
    assert status == 408


@pytest.mark.timeout(60)
async def test_a_body_one_byte_short_gets_408_and_is_closed(tmp_path: Path) -> None:
    """A body that stops short of its Content-Length is answered 408 after body_timeout."""
    body = b'{"instances": [0.0]}'
    async with serve(tmp_path, SHORT) as (port, _), connection(port) as (reader, writer):
        writer.write(predict_request(body[:-1], length=len(body)))
        await writer.drain()
        status, error = await read_refusal(reader)
    assert status == 408
    assert "body" in error


@pytest.mark.timeout(60)
async def test_a_body_trickling_below_the_minimum_rate_is_closed(tmp_path: Path) -> None:
    """A body that never pauses for body_timeout, but averages under min_body_rate, gets 408.

    A byte every 0.05 s is 20 bytes/s against a 64 KiB/s minimum: without the rate rule the
    2,000-byte body would hold the connection for 100 s.
    """
    body = b'{"instances": [0.0]}'.ljust(2000)
    async with serve(tmp_path, SHORT) as (port, _), connection(port) as (reader, writer):
        head, _ = predict_request(body).split(b"\r\n\r\n", 1)

        async def trickle() -> None:
            await send_ignoring_close(writer, head + b"\r\n\r\n")
            for byte in body:
                await asyncio.sleep(0.05)
                await send_ignoring_close(writer, bytes([byte]))

        trickling = asyncio.create_task(trickle())
        try:
            status, _ = await read_refusal(reader)
            assert not trickling.done()
        finally:
            trickling.cancel()
    assert status == 408


@pytest.mark.timeout(60)
async def test_a_slow_but_adequate_body_is_served(tmp_path: Path) -> None:
    """A body that takes longer than body_timeout but averages over min_body_rate is served."""
    limits = ServerLimits(body_timeout=2.0, min_body_rate=100)
    body = b'{"instances": [0.25]}'.ljust(6000)  # 60 pieces of 100 bytes, one per 0.05 s
    async with serve(tmp_path, limits) as (port, _), connection(port) as (reader, writer):
        request = predict_request(body)
        head_size = len(request) - len(body)
        writer.write(request[:head_size])
        for offset in range(head_size, len(request), 100):  # 2,000 bytes/s, over 3 s
            await asyncio.sleep(0.05)
            writer.write(request[offset : offset + 100])
            await writer.drain()
        status, _, answer = await read_response(reader)
    assert status == 200
    assert json.loads(answer) == {"predictions": [0.25]}


@pytest.mark.timeout(60)
async def test_a_body_stalling_after_its_answer_closes_the_connection(tmp_path: Path) -> None:
    """A request answered before its body is read (405) is not answered twice: it just closes."""
    async with serve(tmp_path, SHORT) as (port, _), connection(port) as (reader, writer):
        writer.write(b"POST /v2 HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n0123456789")
        await writer.drain()
        status, _, _ = await read_response(reader)
        assert status == 405
        assert await asyncio.wait_for(reader.read(), timeout=30) == b""


async def test_a_large_body_answered_before_it_is_read_closes_the_connection(
    tmp_path: Path,
) -> None:
    """A 413 sent from the declared length, its body all sent but unread: the socket closes."""
    limits = ServerLimits(max_json_size=1024)
    body = b'{"instances": [' + b"1.0, " * 40_000 + b"1.0]}"  # 200 KB: over every read bound
    request = (
        b"POST /v1/models/slow:predict HTTP/1.1\r\nHost: test\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    async with serve(tmp_path, limits) as (port, _), connection(port) as (reader, writer):
        writer.write(request)
        status, _, _ = await read_response(reader)
        assert status == 413
        assert await asyncio.wait_for(reader.read(), timeout=30) == b""  # was: held for ever


@pytest.mark.timeout(60)
async def test_a_request_timed_out_behind_a_running_one_is_answered_after_it(
    tmp_path: Path,
) -> None:
    """A partial head pipelined behind a running request gets its 408 after that answer."""
    running = predict_request(b'{"instances": [1.0]}')  # the model sleeps 1 s
    limits = ServerLimits(head_timeout=0.2)
    async with serve(tmp_path, limits) as (port, _), connection(port) as (reader, writer):
        writer.write(running + b"GET /v2 HTTP/1.1\r\nHost")
        await writer.drain()
        status, _, answer = await read_response(reader)
        assert (status, json.loads(answer)) == (200, {"predictions": [1.0]})
        status, _ = await read_refusal(reader)
    assert status == 408


@pytest.mark.timeout(60)
async def test_a_websocket_handshake_with_a_body_gets_400_at_once(tmp_path: Path) -> None:
    """A WebSocket upgrade carrying a body is refused with 400 before any upgrade."""
    handshake = (
        b"GET /v2/models/slow/infer/ws HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nContent-Length: 100\r\n\r\nhello"
    )
    limits = ServerLimits(head_timeout=60, body_timeout=60)  # so "at once" is not a timeout
    async with serve(tmp_path, limits) as (port, _), connection(port) as (reader, writer):
        writer.write(handshake)
        await writer.drain()
        status, error = await read_refusal(reader)
    assert status == 400
    assert "WebSocket" in error


@pytest.mark.timeout(60)
async def test_blank_lines_between_requests_start_no_deadline(tmp_path: Path) -> None:
    """A blank line after a request (as old clients send) is not a head that times out."""
    async with serve(tmp_path, SHORT) as (port, _), connection(port) as (reader, writer):
        writer.write(GET_V2 + b"\r\n")
        await writer.drain()
        assert (await read_response(reader))[0] == 200
        await asyncio.sleep(1.5)  # three head timeouts
        writer.write(GET_V2)
        await writer.drain()
        assert (await read_response(reader))[0] == 200


# -- head size ---------------------------------------------------------------------------------


def head_of_size(size: int, *, path: bytes = b"/v2") -> bytes:
    """A GET head of exactly ``size`` bytes, blank line included, padded in one header."""
    head = b"GET %s HTTP/1.1\r\nHost: test\r\nX-Pad: \r\n\r\n" % path
    return head.replace(b"X-Pad: ", b"X-Pad: " + b"a" * (size - len(head)))


@pytest.mark.timeout(60)
async def test_a_megabyte_header_gets_431_while_others_are_served(tmp_path: Path) -> None:
    """A 1 MiB header value gets 431 and a close, costs little memory, and stalls nobody."""
    head = head_of_size(1 << 20)
    async with serve(tmp_path, ServerLimits()) as (port, _), connection(port) as (reader, writer):
        before = rss()
        await send_ignoring_close(writer, head[: 1 << 19])
        assert await served(port) == 200  # meanwhile, another client is answered
        await send_ignoring_close(writer, head[1 << 19 :])
        status, error = await read_refusal(reader)
        grown = rss() - before
    assert status == 431
    assert "head" in error
    assert grown < 32 << 20  # the client's own megabyte, and buffers: not the header's copies


@pytest.mark.timeout(60)
async def test_a_head_one_byte_over_the_limit_gets_431(tmp_path: Path) -> None:
    """A head of max_header_size + 1 bytes is refused with 431 and the connection closed."""
    limits = ServerLimits(max_header_size=8192)
    async with serve(tmp_path, limits) as (port, _), connection(port) as (reader, writer):
        writer.write(head_of_size(8193))
        await writer.drain()
        status, _ = await read_refusal(reader)
    assert status == 431


@pytest.mark.timeout(60)
async def test_a_head_of_exactly_the_limit_is_served(tmp_path: Path) -> None:
    """A head of max_header_size bytes, its blank line included, is served as usual."""
    limits = ServerLimits(max_header_size=8192)
    async with serve(tmp_path, limits) as (port, _):
        assert await served(port, head_of_size(8192)) == 200


@pytest.mark.timeout(60)
async def test_a_head_split_across_reads_at_its_blank_line_is_served(tmp_path: Path) -> None:
    """A head whose blank line arrives in two pieces, at the very limit, is still served."""
    limits = ServerLimits(max_header_size=8192)
    head = head_of_size(8192) + GET_V2
    async with serve(tmp_path, limits) as (port, _), connection(port) as (reader, writer):
        for piece in (head[:8190], head[8190:]):  # "...\r\n\r" | "\n" and the next request
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.1)
        statuses = [(await read_response(reader))[0] for _ in range(2)]
    assert statuses == [200, 200]


def chunked_predict(instances: bytes) -> bytes:
    body = b'{"instances": %s}' % instances
    return (
        b"POST /v1/models/slow:predict HTTP/1.1\r\nHost: test\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    )


@pytest.mark.timeout(60)
async def test_requests_pipelined_behind_a_chunked_body_are_served(tmp_path: Path) -> None:
    """A chunked body's end is found by the parser: the requests behind it are answered."""
    async with serve(tmp_path, ServerLimits()) as (port, _), connection(port) as (reader, writer):
        writer.write(chunked_predict(b"[0.5]") + GET_V2 + head_of_size(20_000))
        await writer.drain()
        status, _, answer = await read_response(reader)
        assert (status, json.loads(answer)) == (200, {"predictions": [0.5]})
        assert [(await read_response(reader))[0] for _ in range(2)] == [200, 200]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
async def test_an_oversized_head_behind_a_chunked_body_gets_431_after_its_answer(
    tmp_path: Path, split: bool
) -> None:
    """A head over the limit right behind a chunked body is refused, after the body's answer.

    Sent whole, the head is parsed with the body's end; split, its first part is.
    """
    limits = ServerLimits(max_header_size=8192)
    data = chunked_predict(b"[0.5]") + head_of_size(10_000)
    cut = len(data) - 5000 if split else len(data)
    async with serve(tmp_path, limits) as (port, _), connection(port) as (reader, writer):
        writer.write(data[:cut])
        await writer.drain()
        status, _, answer = await read_response(reader)
        assert (status, json.loads(answer)) == (200, {"predictions": [0.5]})
        await send_ignoring_close(writer, data[cut:])
        status, _ = await read_refusal(reader)
    assert status == 431


@pytest.mark.timeout(60)
async def test_too_many_headers_get_431(tmp_path: Path) -> None:
    """A head with more than max_headers header lines is refused with 431."""
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(100))  # and Host: 101 lines
    async with serve(tmp_path, ServerLimits()) as (port, _), connection(port) as (reader, writer):
        writer.write(b"GET /v2 HTTP/1.1\r\nHost: test\r\n" + headers + b"\r\n")
        await writer.drain()
        status, error = await read_refusal(reader)
    assert status == 431
    assert "headers" in error


# -- a client that never reads -----------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_a_pipelining_client_that_never_reads_is_held_back_in_bounded_memory(
    tmp_path: Path,
) -> None:
    """Reading pauses while answers back up: few requests wait, memory stays flat.

    The client pipelines metadata requests (each for a different model, answered 404 with its
    name) in batches and never reads. The server must stop reading (the client's writes stall)
    without parsing what it cannot answer; once the client reads, every answer is there, in
    order, and the server goes on.
    """

    def request(i: int) -> bytes:
        return b"GET /v2/models/m%d HTTP/1.1\r\nHost: t\r\n\r\n" % i

    async with serve(tmp_path, ServerLimits()) as (port, server):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)  # little in the kernel
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
        sock.setblocking(False)
        async with connection(port, sock=sock) as (reader, writer):
            before = rss()
            sent, stalled = 0, False
            while sent < 2_000_000 and not stalled:
                writer.write(b"".join(request(i) for i in range(sent, sent + 1000)))
                sent += 1000
                try:
                    await asyncio.wait_for(writer.drain(), timeout=5)
                except TimeoutError:
                    stalled = True
                for protocol in uvicorn_connections(server):
                    assert len(protocol.pipeline) <= 100  # parsed requests waiting: few
                    assert protocol.transport.get_write_buffer_size() <= 1 << 20
                assert rss() - before < 64 << 20
            assert stalled  # the server stopped reading
            answered = server.server_state.total_requests
            assert answered < sent
            for i in range(min(sent, answered + 1000)):  # and reading lets the server go on
                status, _, body = await read_response(reader)
                assert (status, json.loads(body)["error"]) == (404, f"model 'm{i}' is not loaded")


async def test_a_body_sent_fast_then_dripped_is_cut_off(tmp_path: Path) -> None:
    """The rate is judged per window: most of a body at once, then a byte now and then, is 408."""
    limits = ServerLimits(body_timeout=0.5, min_body_rate=10_000)
    head = b"POST /v1/models/slow:predict HTTP/1.1\r\nHost: t\r\nContent-Length: 400000\r\n\r\n"
    async with serve(tmp_path, limits) as (port, _), connection(port) as (reader, writer):
        writer.write(head + b" " * 300_000)  # averaged from the start: 30 s of allowance

        async def drip() -> None:
            for _ in range(300):
                await asyncio.sleep(0.2)
                writer.write(b" ")

        dripping = asyncio.create_task(drip())
        try:
            async with asyncio.timeout(10):
                status, _ = await read_refusal(reader)
        finally:
            dripping.cancel()
    assert status == 408


@pytest.mark.timeout(60)
async def test_requests_pipelined_deep_behind_a_running_one_are_all_served_at_shutdown(
    tmp_path: Path,
) -> None:
    """At shutdown only the newest request parsed says close: none sent before it is cut off."""
    async with (
        serve(tmp_path, ServerLimits()) as (port, server),
        connection(port) as (
            reader,
            writer,
        ),
    ):
        # More than the 8 requests parsed ahead: the rest are parsed after the signal.
        writer.write(predict_request(b'{"instances": [1.0]}') + GET_V2 * 12)
        await writer.drain()
        await asyncio.sleep(0.3)  # the predict runs (1 s)
        server.should_exit = True  # what SIGTERM does
        answers = [await read_response(reader) for _ in range(13)]
        assert await asyncio.wait_for(reader.read(), timeout=30) == b""
    assert [status for status, _, _ in answers] == [200] * 13
    assert [b"connection: close" in head for _, head, _ in answers] == [False] * 12 + [True]
