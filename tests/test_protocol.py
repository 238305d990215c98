"""The app's HTTP behaviour on both protocols: coserve's own and plain uvicorn's.

``coserve serve`` runs uvicorn with :class:`CoserveHttpProtocol`, which serves plain inference
requests itself and hands a connection to uvicorn's protocol at its first other request; the app
must behave the same under any other ASGI server, where it watches for the disconnect itself.
Both run here in process, on real sockets, with a Python model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from coserve.models import ModelRepository
from coserve.server import create_app
from coserve.server._limits import ServerLimits
from coserve.server._native_http import CoserveHttpProtocol
from server_models import add_python_models

PROTOCOLS: dict[str, Any] = {"coserve": CoserveHttpProtocol, "uvicorn": "httptools"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def serve(
    folder: Path,
    protocol: str,
    *,
    max_request_size: int | None = None,
    timeout_keep_alive: int = 5,
    servers: list[uvicorn.Server] | None = None,
    limits: ServerLimits | None = None,
) -> AsyncIterator[tuple[int, ModelRepository]]:
    repository = ModelRepository(add_python_models(folder))
    port = free_port()
    config = uvicorn.Config(
        create_app(
            repository, graceful_timeout=5, max_request_size=max_request_size, limits=limits
        ),
        host="127.0.0.1",
        port=port,
        http=PROTOCOLS[protocol],
        lifespan="on",
        log_config=None,
        timeout_keep_alive=timeout_keep_alive,
    )
    server = uvicorn.Server(config)
    if servers is not None:
        servers.append(server)
    task = asyncio.create_task(server.serve())
    try:
        await wait_until(lambda: server.started, "the server to start")
        yield port, repository
    finally:
        server.should_exit = True
        await task


@pytest.fixture(params=sorted(PROTOCOLS))
async def served(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[int, ModelRepository]]:
    async with serve(tmp_path, request.param) as running:
        yield running


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(600):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def infer_request(
    seconds: float, request_id: str, *, model: str = "slow", headers: str = ""
) -> bytes:
    body = json.dumps(
        {
            "id": request_id,
            "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [seconds]}],
        }
    )
    return (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: test\r\n{headers}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


async def read_response_with_head(
    reader: asyncio.StreamReader,
) -> tuple[int, dict[str, Any], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return status, json.loads(await reader.readexactly(length)), head.lower()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, Any]]:
    status, body, _ = await read_response_with_head(reader)
    return status, body


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        await writer.wait_closed()


async def test_queued_work_of_a_client_that_hangs_up_never_runs(
    served: tuple[int, ModelRepository],
) -> None:
    """On either protocol, requests whose clients hang up while queued are dropped."""
    port, repository = served
    handle = repository.get("slow")
    writers = []
    for i in range(3):  # one runs (1 s), two wait in the queue
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(infer_request(1.0, "gone"))
        await writer.drain()
        writers.append(writer)
        if i == 0:  # three submits in one loop pass would overflow the 2-place queue
            await wait_until(lambda: handle.statistics().running_batches == 1, "one runs")
    await wait_until(lambda: handle.statistics().queued == 2, "two queued")
    for writer in writers:
        writer.close()
        await writer.wait_closed()
    await wait_until(lambda: handle.statistics().cancelled == 3, "three cancelled")
    await wait_until(lambda: handle.statistics().running_batches == 0, "the run to end")
    assert handle.statistics().batches == 1


async def test_pipelined_requests_are_answered_in_order(
    served: tuple[int, ModelRepository],
) -> None:
    """Requests sent back to back on one connection get complete responses, in order."""
    port, _ = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"".join(infer_request(0.0, f"r{i}") for i in range(5)))
        await writer.drain()
        answers = [await read_response(reader) for _ in range(5)]
    finally:
        writer.close()
        await writer.wait_closed()
    assert [status for status, _ in answers] == [200] * 5
    assert [body["id"] for _, body in answers] == [f"r{i}" for i in range(5)]
    assert [body["outputs"][0]["data"] for _, body in answers] == [[0.0]] * 5


async def test_a_client_that_half_closes_still_gets_its_response(
    served: tuple[int, ModelRepository],
) -> None:
    """A client that shuts down its sending side after the request still reads the answer."""
    port, _ = served
    for _ in range(20):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\n\r\n")
            writer.write_eof()
            head = await reader.readuntil(b"\r\n\r\n")
        finally:
            writer.close()
            await writer.wait_closed()
        assert head.startswith(b"HTTP/1.1 200")


async def test_a_client_gone_while_its_large_body_is_decoded_runs_nothing(
    tmp_path: Path,
) -> None:
    """The coserve protocol remembers a disconnect that comes before the request waits."""
    async with serve(tmp_path, "coserve") as (port, repository):
        handle = repository.get("slow")
        # A large body is decoded in a decoder process; the client is gone before that ends.
        body = json.dumps(
            {
                "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0.0]}],
                "parameters": {"padding": [0.5] * 600_000},
            }
        )
        request = (
            f"POST /v2/models/slow/infer HTTP/1.1\r\nHost: test\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
        ).encode()
        latency = 'coserve_request_duration_seconds_count{model="slow",protocol="http"'

        def answered() -> int:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
            return sum(
                int(float(line.rsplit(" ", 1)[1]))
                for line in text.splitlines()
                if line.startswith(latency)
            )

        before = await asyncio.to_thread(answered)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        for _ in range(600):
            if await asyncio.to_thread(answered) > before:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the request was never finished")
        assert handle.statistics().submitted == 0


async def test_a_queued_request_ahead_of_a_pipelined_one_is_dropped_when_its_client_goes(
    tmp_path: Path,
) -> None:
    """The coserve protocol tells the request being served, not only the newest one parsed."""
    async with serve(tmp_path, "coserve") as (port, repository):
        handle = repository.get("slow")
        _, busy = await asyncio.open_connection("127.0.0.1", port)
        busy.write(infer_request(1.0, "busy"))  # occupies the model for a second
        await busy.drain()
        await wait_until(lambda: handle.statistics().running_batches == 1, "the busy request")
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(infer_request(0.0, "first") + infer_request(0.0, "second"))
        await writer.drain()
        await wait_until(lambda: handle.statistics().queued == 1, "the first one queued")
        writer.close()
        await writer.wait_closed()
        await wait_until(lambda: handle.statistics().cancelled == 1, "the first one cancelled")
        await wait_until(lambda: handle.statistics().running_batches == 0, "the busy one done")
        busy.close()
        await busy.wait_closed()
        assert handle.statistics().batches == 1  # only the busy request ever ran


async def test_a_connection_goes_on_through_uvicorn_after_its_first_other_request(
    served: tuple[int, ModelRepository],
) -> None:
    """Inference, a health check and inference again, pipelined: all answered, in order."""
    port, _ = served
    async with connection(port) as (reader, writer):
        writer.write(
            infer_request(0.0, "a")
            + b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\n\r\n"
            + infer_request(0.0, "b")
        )
        await writer.drain()
        first = await read_response(reader)
        health = await reader.readuntil(b"\r\n\r\n")
        length = int(health.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        second = await read_response(reader)
    assert (first[0], first[1]["id"]) == (200, "a")
    assert health.startswith(b"HTTP/1.1 200")
    assert (second[0], second[1]["id"]) == (200, "b")


async def test_a_refused_request_leaves_the_connection_usable(
    served: tuple[int, ModelRepository],
) -> None:
    """An unknown model is refused from its head; its body is skipped; the next one is served."""
    port, _ = served
    async with connection(port) as (reader, writer):
        writer.write(infer_request(0.0, "lost", model="nothing") + infer_request(0.0, "found"))
        await writer.drain()
        refused = await read_response(reader)
        served_ = await read_response(reader)
    assert refused[0] == 404
    assert "nothing" in refused[1]["error"]
    assert (served_[0], served_[1]["id"]) == (200, "found")


async def test_a_body_over_the_limit_is_refused_unread_and_the_connection_closed(
    tmp_path: Path,
) -> None:
    async with (
        serve(tmp_path, "coserve", max_request_size=50) as (port, repository),
        connection(port) as (reader, writer),
    ):
        writer.write(infer_request(0.0, "big")[:-10])  # the body never arrives in full
        await writer.drain()
        status, body, head = await read_response_with_head(reader)
        assert await reader.read() == b""  # the server closed the connection
        assert repository.get("slow").statistics().submitted == 0
    assert status == 413
    assert "limit" in body["error"]
    assert b"connection: close" in head


async def test_connection_close_is_honoured(served: tuple[int, ModelRepository]) -> None:
    port, _ = served
    async with connection(port) as (reader, writer):
        writer.write(infer_request(0.0, "last", headers="Connection: close\r\n"))
        await writer.drain()
        status, body, head = await read_response_with_head(reader)
        assert await reader.read() == b""
    assert (status, body["id"]) == (200, "last")
    assert b"connection: close" in head


async def test_a_request_that_arrives_byte_by_byte_is_served(
    served: tuple[int, ModelRepository],
) -> None:
    port, _ = served
    async with connection(port) as (reader, writer):
        for byte in infer_request(0.0, "slowly"):
            writer.write(bytes([byte]))
            await writer.drain()
        status, body = await read_response(reader)
    assert (status, body["id"]) == (200, "slowly")


async def test_chunked_and_malformed_requests_are_left_to_uvicorn(
    served: tuple[int, ModelRepository],
) -> None:
    """A chunked body is served (through ASGI); a malformed head gets uvicorn's 400."""
    port, _ = served
    payload = infer_request(0.0, "chunked").split(b"\r\n\r\n", 1)[1]
    chunked = (
        b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
    )
    async with connection(port) as (reader, writer):
        writer.write(chunked)
        await writer.drain()
        status, body = await read_response(reader)
    assert (status, body["id"]) == (200, "chunked")
    async with connection(port) as (reader, writer):
        writer.write(b"POST /v2/models/slow/infer HTTP/1.1\r\nBad Header\r\n\r\n")
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")


async def test_an_idle_keep_alive_connection_is_closed(tmp_path: Path) -> None:
    async with (
        serve(tmp_path, "coserve", timeout_keep_alive=1) as (port, _),
        connection(port) as (reader, writer),
    ):
        writer.write(infer_request(0.0, "once"))
        await writer.drain()
        status, _ = await read_response(reader)
        assert status == 200
        assert await asyncio.wait_for(reader.read(), timeout=30) == b""


def padded_request(seconds: float, request_id: str, padding: int) -> bytes:
    """An inference request whose body carries ``padding`` unused floats (a large body)."""
    body = json.dumps(
        {
            "id": request_id,
            "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [seconds]}],
            "parameters": {"padding": [0.5] * padding},
        }
    )
    return (
        f"POST /v2/models/slow/infer HTTP/1.1\r\nHost: test\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


async def test_a_large_body_pipelined_behind_a_slow_request_is_read_and_answered(
    served: tuple[int, ModelRepository],
) -> None:
    """Reading pauses while the first request runs, and resumes for the rest of a large body.

    Half of the second request's 200 KB body arrives while the first runs (the server pauses
    reading, over its buffer limit); the other half only after the first answer.
    """
    port, repository = served
    handle = repository.get("slow")
    large = padded_request(0.0, "large", 40_000)
    async with connection(port) as (reader, writer):
        writer.write(infer_request(0.5, "slow"))
        await writer.drain()
        await wait_until(lambda: handle.statistics().running_batches == 1, "the first to run")
        writer.write(large[:100_000])
        await writer.drain()
        first = await read_response(reader)
        writer.write(large[100_000:])
        await writer.drain()
        second = await read_response(reader)
    assert [(status, body["id"]) for status, body in (first, second)] == [
        (200, "slow"),
        (200, "large"),
    ]


async def test_shutdown_answers_the_requests_received_then_closes(tmp_path: Path) -> None:
    """A request in progress and a complete one pipelined behind it both get their answers."""
    servers: list[uvicorn.Server] = []
    async with (
        serve(tmp_path, "coserve", servers=servers) as (port, repository),
        connection(port) as (reader, writer),
    ):
        writer.write(infer_request(0.5, "running") + infer_request(0.0, "waiting"))
        await writer.drain()
        handle = repository.get("slow")
        await wait_until(lambda: handle.statistics().running_batches == 1, "the first to run")
        servers[0].should_exit = True
        answers = [await read_response(reader) for _ in range(2)]
        assert await reader.read() == b""  # then the server closed the connection
    assert [(status, body["id"]) for status, body in answers] == [
        (200, "running"),
        (200, "waiting"),
    ]


async def test_a_stalled_upload_is_not_taken_for_an_idle_connection(tmp_path: Path) -> None:
    """The keep-alive timer closes idle connections, not one whose body is still coming."""
    request = infer_request(0.0, "stalled")
    async with (
        serve(tmp_path, "coserve", timeout_keep_alive=1) as (port, _),
        connection(port) as (reader, writer),
    ):
        writer.write(request[:-5])
        await writer.drain()
        await asyncio.sleep(2.5)  # longer than the keep-alive timeout
        writer.write(request[-5:])
        await writer.drain()
        status, body = await read_response(reader)
    assert (status, body["id"]) == (200, "stalled")


async def test_any_other_asgi_app_is_served_by_uvicorn_on_the_coserve_protocol() -> None:
    """With an app that is not coserve's, every connection goes to uvicorn at once."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = scope["path"].encode()
        length = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": length})
        await send({"type": "http.response.body", "body": body})

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=CoserveHttpProtocol, log_config=None
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await wait_until(lambda: server.started, "the server to start")
        async with connection(port) as (reader, writer):
            writer.write(infer_request(0.0, "x"))  # an inference path, but not coserve's app
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            body = await reader.readexactly(len(b"/v2/models/slow/infer"))
    finally:
        server.should_exit = True
        await task
    assert head.startswith(b"HTTP/1.1 200")
    assert body == b"/v2/models/slow/infer"


async def test_a_client_that_never_reads_its_answers_is_held_back(tmp_path: Path) -> None:
    """Once its answers back up, the server stops reading: the client's writes stall.

    Half a million small pipelined requests (refused from their heads, so no model runs) are
    far more than the socket buffers hold. A server that kept reading would take them all into
    memory and the client's drain would finish; this one pauses, so the drain never does.
    """
    refused = b"POST /v2/models/nothing/infer HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
    async with serve(tmp_path, "coserve") as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(refused * 500_000)  # 38 MB
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(writer.drain(), timeout=5)
            head = await reader.readuntil(b"\r\n\r\n")  # and it is still answering
            assert head.startswith(b"HTTP/1.1 404")
        finally:
            writer.transport.abort()  # close() would wait to send the 38 MB first


async def test_a_request_whose_work_is_cancelled_by_another_still_gets_an_answer(
    tmp_path: Path,
) -> None:
    """Work cancelled by something other than the client (here its chunk task) is answered."""
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [0.5, 0.0]}]}
    )
    request = (  # two rows on a model of max_batch_size 1: run as a task of two chunks
        f"POST /v2/models/slow/infer HTTP/1.1\r\nHost: test\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()

    def chunk_tasks() -> list[asyncio.Task[Any]]:
        return [
            task
            for task in asyncio.all_tasks()
            if getattr(task.get_coro(), "__qualname__", "") == "ModelHandle._infer_in_chunks"
        ]

    async with (
        serve(tmp_path, "coserve") as (port, _),
        connection(port) as (reader, writer),
    ):
        writer.write(request)
        await writer.drain()
        await wait_until(lambda: bool(chunk_tasks()), "the chunk task")
        for task in chunk_tasks():
            task.cancel()
        status, answer = await asyncio.wait_for(read_response(reader), timeout=30)
    assert status == 503
    assert "cancelled" in answer["error"]
