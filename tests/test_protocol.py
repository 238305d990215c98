"""The app's HTTP behaviour on both protocols: coserve's own and plain uvicorn's.

``coserve serve`` runs uvicorn with :class:`CoserveHttpProtocol` (one write per response, a
disconnect hook); the app must behave the same under any other ASGI server, where it watches
for the disconnect itself. Both run here in process, on real sockets, with a Python model.
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
from coserve.server._protocol import CoserveHttpProtocol
from server_models import add_python_models

PROTOCOLS: dict[str, Any] = {"coserve": CoserveHttpProtocol, "uvicorn": "httptools"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def serve(folder: Path, protocol: str) -> AsyncIterator[tuple[int, ModelRepository]]:
    repository = ModelRepository(add_python_models(folder))
    port = free_port()
    config = uvicorn.Config(
        create_app(repository, graceful_timeout=5),
        host="127.0.0.1",
        port=port,
        http=PROTOCOLS[protocol],
        lifespan="on",
        log_config=None,
    )
    server = uvicorn.Server(config)
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


def infer_request(seconds: float, request_id: str) -> bytes:
    body = json.dumps(
        {
            "id": request_id,
            "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [seconds]}],
        }
    )
    return (
        f"POST /v2/models/slow/infer HTTP/1.1\r\nHost: test\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, Any]]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return status, json.loads(await reader.readexactly(length))


async def test_queued_work_of_a_client_that_hangs_up_never_runs(
    served: tuple[int, ModelRepository],
) -> None:
    """On either protocol, requests whose clients hang up while queued are dropped."""
    port, repository = served
    handle = repository.get("slow")
    writers = []
    for _ in range(3):  # one runs (1 s), two wait in the queue
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(infer_request(1.0, "gone"))
        await writer.drain()
        writers.append(writer)
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
        # A body over 1 MiB is decoded in a thread; the client is gone before that ends.
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
        latency = 'coserve_request_duration_seconds_count{model="slow"'

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
