"""Limits on coserve's own HTTP path: slow or partial requests, framing, connections, shedding.

Every test talks to a real server (uvicorn with ``CoserveHttpProtocol``, in process) over raw
sockets, with short time limits so that what a slow client gets is seen quickly. The waits
are generous: what is asserted is the outcome (an answer and a closed socket), never a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn

from coserve.models import ModelRepository
from coserve.server._limits import ServerLimits
from test_protocol import (
    infer_request,
    read_response,
    read_response_with_head,
    serve,
    wait_until,
)

LIMITS = ServerLimits(head_timeout=0.5, body_timeout=0.5, min_body_rate=10_000)


@pytest.fixture
async def native(tmp_path: Path) -> AsyncIterator[tuple[int, ModelRepository]]:
    async with serve(tmp_path, "coserve", limits=LIMITS) as running:
        yield running


async def answer_then_close(reader: asyncio.StreamReader) -> tuple[int, dict[str, object]]:
    """The one response the server sends before it closes the connection."""
    async with asyncio.timeout(20):
        status, body = await read_response(reader)
        assert await reader.read() == b""  # then the server closed the connection
    return status, body


async def test_a_head_that_never_ends_gets_408_and_is_closed(
    native: tuple[int, ModelRepository],
) -> None:
    """An inference head that stops before its blank line is answered 408 at head_timeout."""
    port, _ = native
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: test\r\n")
    status, body = await answer_then_close(reader)
    writer.close()
    assert status == 408
    assert "head" in str(body["error"])


async def test_a_head_sent_a_byte_at_a_time_still_times_out(
    native: tuple[int, ModelRepository],
) -> None:
    """Bytes that keep coming do not extend the head's deadline: it counts from the first."""
    port, _ = native
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v2/models/slow/infer HTTP/1.1\r\n")

    async def drip() -> None:
        for _ in range(200):  # 20 s of header bytes, far past the 0.5 s limit
            writer.write(b"x")
            await asyncio.sleep(0.1)

    dripping = asyncio.create_task(drip())
    try:
        status, _ = await answer_then_close(reader)
    finally:
        dripping.cancel()
        writer.close()
    assert status == 408


async def test_a_body_one_byte_short_gets_408_and_is_closed(
    native: tuple[int, ModelRepository],
) -> None:
    """A body that stops before its Content-Length is complete is not held for ever."""
    port, repository = native
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(infer_request(0.0, "short")[:-1])
    status, body = await answer_then_close(reader)
    writer.close()
    assert status == 408
    assert "body" in str(body["error"])
    assert repository.get("slow").statistics().submitted == 0


async def test_a_body_trickling_under_the_minimum_rate_is_closed(
    native: tuple[int, ModelRepository],
) -> None:
    """A body that keeps coming, but slower than min_body_rate, is cut off with 408."""
    port, _ = native
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n\r\n"
    )

    async def trickle() -> None:
        for _ in range(400):  # 1,000 bytes/s against a 10,000 bytes/s minimum
            writer.write(b" " * 100)
            await asyncio.sleep(0.1)

    trickling = asyncio.create_task(trickle())
    try:
        status, body = await answer_then_close(reader)
    finally:
        trickling.cancel()
        writer.close()
    assert status == 408
    assert "bytes/s" in str(body["error"])


async def test_a_body_sent_in_pieces_at_a_fair_rate_is_served(
    native: tuple[int, ModelRepository],
) -> None:
    """A body that takes longer than body_timeout but keeps to the minimum rate is served."""
    port, _ = native
    request = infer_request(0.0, "steady", headers="")
    head, body = request.split(b"\r\n\r\n", 1)
    padded = body[:-1] + b" " * 20_000 + b"}"  # JSON allows the spaces
    head = head.replace(
        f"Content-Length: {len(body)}".encode(), b"Content-Length: %d" % len(padded)
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + b"\r\n\r\n")
        for offset in range(0, len(padded), 2_000):  # 20,000 bytes/s for about a second
            writer.write(padded[offset : offset + 2_000])
            await asyncio.sleep(0.1)
        async with asyncio.timeout(20):
            status, answer = await read_response(reader)
    finally:
        writer.close()
    assert (status, answer["id"]) == (200, "steady")


async def test_a_bare_lf_head_on_the_inference_path_gets_400_at_once(
    native: tuple[int, ModelRepository],
) -> None:
    """A head whose lines end in LF alone is refused at once, not awaited for ever."""
    port, _ = native
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v2/models/slow/infer HTTP/1.1\nHost: test\nContent-Length: 2\n\n{}")
    async with asyncio.timeout(0.4):  # under head_timeout: this is not the timeout's answer
        head = await reader.readuntil(b"\r\n")
    writer.close()
    assert head.startswith(b"HTTP/1.1 400")


async def test_one_connection_over_the_limit_gets_503_and_others_are_served(
    tmp_path: Path,
) -> None:
    """Past max_connections a new connection is answered 503 and closed; room comes back."""
    async with serve(tmp_path, "coserve", limits=ServerLimits(max_connections=3)) as (port, _):
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        for reader, writer in held:  # each is served, and stays open
            writer.write(infer_request(0.0, "held"))
            assert (await read_response(reader))[0] == 200
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        status, body = await answer_then_close(reader)
        writer.close()
        assert status == 503
        assert "3 connections" in str(body["error"])
        for _, writer in held:
            writer.close()
            await writer.wait_closed()
        for _ in range(100):  # the server notices the closes on its next loop passes
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(infer_request(0.0, "again"))
            status, _ = await read_response(reader)
            writer.close()
            if status == 200:
                break
            await asyncio.sleep(0.05)
        assert status == 200


async def test_a_full_queue_refuses_before_the_body_is_decoded(
    native: tuple[int, ModelRepository],
) -> None:
    """With the queue full, a request is refused 429 from its head: its body is never parsed."""
    port, repository = native
    handle = repository.get("slow")
    connections = []
    for i in range(3):  # one runs for a while, two fill the 2-place queue
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(infer_request(1.0, f"fill{i}"))
        connections.append((reader, writer))
        if i == 0:
            await wait_until(lambda: handle.statistics().running_batches == 1, "one to run")
    await wait_until(lambda: handle.statistics().queued == 2, "the queue to fill")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = b"this is not JSON"  # decoding it would answer 400
    writer.write(
        b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body)
    )
    status, answer = await read_response(reader)
    assert status == 429
    assert "full queue" in str(answer["error"])
    writer.write(infer_request(0.0, "kept"))  # the connection is still usable
    status, _ = await read_response(reader)
    assert status in (200, 429)
    writer.close()
    for reader, writer in connections:
        assert (await read_response(reader))[0] == 200
        writer.close()


def test_limits_refuse_nonsense() -> None:
    """A limit of zero, a negative one or a flag is refused when the limits are made."""
    for bad in (0, -1, True):
        with pytest.raises(ValueError, match="head_timeout"):
            ServerLimits(head_timeout=bad)


async def test_under_overload_clients_wait_in_line_and_few_are_refused(
    tmp_path: Path,
) -> None:
    """With more clients than places, each refused once at most, then served in its turn."""
    async with serve(tmp_path, "coserve", limits=LIMITS) as (port, repository):
        clients, rounds = 12, 15  # 12 connections for 1 slot and a 2-place queue
        statuses: list[int] = []

        async def client(index: int) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                for turn in range(rounds):
                    writer.write(infer_request(0.01, f"{index}-{turn}"))
                    status, _ = await read_response(reader)
                    statuses.append(status)
            finally:
                writer.close()

        async with asyncio.timeout(50):
            await asyncio.gather(*(client(i) for i in range(clients)))
        stats = repository.get("slow").statistics()
    assert len(statuses) == clients * rounds
    assert set(statuses) <= {200, 429}
    # Without the line every client would be refused on most turns (the queue holds two).
    assert statuses.count(429) <= 2 * clients
    assert stats.completed == statuses.count(200)


async def test_a_body_sent_fast_then_dripped_is_cut_off(
    native: tuple[int, ModelRepository],
) -> None:
    """The rate is judged per window: most of a body at once, then a byte now and then, is 408."""
    port, _ = native
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: test\r\nContent-Length: 400000\r\n\r\n"
        + b" " * 300_000  # averaged from the start, 10,000 bytes/s would allow 30 s
    )

    async def drip() -> None:
        for _ in range(300):
            await asyncio.sleep(0.2)
            writer.write(b" ")

    dripping = asyncio.create_task(drip())
    try:
        async with asyncio.timeout(10):
            status, body = await read_response(reader)
    finally:
        dripping.cancel()
        writer.close()
    assert status == 408
    assert "bytes/s" in str(body["error"])


async def test_a_refused_large_body_still_lets_the_client_read_its_413(tmp_path: Path) -> None:
    """A 413 sent before a large body is read arrives whole: the server does not reset it away."""
    async with serve(tmp_path, "coserve", max_request_size=1000) as (port, _):
        for _ in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: t\r\nContent-Length: 4000000\r\n\r\n"
                + b" " * 4_000_000
            )
            status, _ = await answer_then_close(reader)
            writer.close()
            assert status == 413


async def test_a_connection_handed_to_uvicorn_while_draining_is_told_to_close(
    tmp_path: Path,
) -> None:
    """A request for uvicorn's routes pipelined behind an inference one at SIGTERM says close."""
    servers: list[uvicorn.Server] = []
    async with serve(tmp_path, "coserve", limits=LIMITS, servers=servers) as (port, repository):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(infer_request(0.5, "running") + b"GET /v2 HTTP/1.1\r\nHost: t\r\n\r\n")
        handle = repository.get("slow")
        await wait_until(lambda: handle.statistics().running_batches == 1, "it to run")
        servers[0].should_exit = True  # what SIGTERM does
        status, body, _ = await read_response_with_head(reader)
        assert (status, body["id"]) == (200, "running")
        status, body, head = await read_response_with_head(reader)
        assert (status, body["name"]) == (200, "coserve")
        assert b"connection: close" in head
        assert await reader.read() == b""
        writer.close()
