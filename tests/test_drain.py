"""SIGTERM under keep-alive load: every request a client sent is answered, none is dropped.

A real ``coserve serve`` (Python models, one worker and two) is stopped while keep-alive clients
send request after request on their connections, as a load generator does. Each client counts
what it sent and what came back: a connection that closes with a request outstanding is a lost
request. The clients stop sending once an answer says ``Connection: close``.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest

from helpers import ServerProcess
from server_models import SLOW_CONFIG, add_python_models

pytestmark = pytest.mark.slow

CONNECTIONS = 32


def repository(root: Path) -> Path:
    # Room in the queue for every connection's request: the test is about drain, not shedding.
    config = SLOW_CONFIG.replace("max_queue_size = 2", "max_queue_size = 256").replace(
        "max_batch_size = 1", "max_batch_size = 64"
    )
    return add_python_models(root, slow_config=config)


def request(seconds: float, request_id: str) -> bytes:
    body = json.dumps(
        {
            "id": request_id,
            "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [seconds]}],
        }
    )
    return (
        f"POST /v2/models/slow/infer HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n"
        f"{body}"
    ).encode()


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bool, dict[str, object]]:
    """Status, whether the answer closes the connection, and the JSON body."""
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
    body = json.loads(await reader.readexactly(length))
    return int(head.split(b" ", 2)[1]), b"connection: close" in head, body


class Load:
    """Counts answers across clients; set once every connection is well into its work."""

    def __init__(self, target: int) -> None:
        self.count = 0
        self.target = target
        self.reached = asyncio.Event()

    def answered(self) -> None:
        self.count += 1
        if self.count >= self.target:
            self.reached.set()


class Client:
    """One keep-alive connection sending its next request as soon as an answer arrives."""

    def __init__(self, index: int, route: str = "infer") -> None:
        self.index = index
        self.route = route
        self.sent = 0
        self.answered: list[int] = []
        self.closed_by_server = False
        self.lost = 0

    async def run(self, port: int, load: Load) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                if self.route == "infer":
                    writer.write(request(0.0, f"{self.index}-{self.sent}"))
                else:  # a route uvicorn's protocol serves
                    writer.write(b"GET /v2/models/slow HTTP/1.1\r\nHost: t\r\n\r\n")
                self.sent += 1
                try:
                    status, closing, body = await read_answer(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.lost = self.sent - len(self.answered)  # it went with no answer
                    return
                if self.route == "infer":
                    assert body["id"] == f"{self.index}-{len(self.answered)}"
                else:
                    assert body["name"] == "slow"
                self.answered.append(status)
                load.answered()
                if closing:
                    self.closed_by_server = await reader.read() == b""
                    return
        finally:
            writer.close()


async def drain_under_load(tmp_path: Path, *args: str, route: str = "infer") -> list[Client]:
    server = ServerProcess("--model-repository", str(repository(tmp_path)), *args)
    try:
        server.wait_ready()
        load = Load(20 * CONNECTIONS)  # every connection is busy when the signal comes
        clients = [Client(i, route) for i in range(CONNECTIONS)]
        tasks = [asyncio.create_task(client.run(server.port, load)) for client in clients]
        await load.reached.wait()
        server.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(40):
            await asyncio.gather(*tasks)
        assert await asyncio.to_thread(server.process.wait, 40) == 0, server.output()
    finally:
        server.close()
    return clients


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sigterm_under_keep_alive_load_loses_no_request(tmp_path: Path, workers: str) -> None:
    """Each request sent before the server said close is answered 200; each connection closes."""
    clients = await drain_under_load(tmp_path, "--workers", workers, "--graceful-timeout", "20")
    assert [client.lost for client in clients] == [0] * CONNECTIONS
    for client in clients:
        assert client.answered == [200] * client.sent
        assert client.closed_by_server


async def test_sigterm_loses_no_request_on_routes_uvicorn_serves(tmp_path: Path) -> None:
    """The same for metadata requests, served by uvicorn's protocol after the hand-off."""
    clients = await drain_under_load(tmp_path, "--graceful-timeout", "20", route="metadata")
    assert [client.lost for client in clients] == [0] * CONNECTIONS
    for client in clients:
        assert client.answered == [200] * client.sent
        assert client.closed_by_server


async def test_a_request_pipelined_behind_one_in_flight_is_served_after_sigterm(
    tmp_path: Path,
) -> None:
    """A complete request waiting behind a running one when SIGTERM comes is served, not 503."""
    server = ServerProcess(
        "--model-repository", str(repository(tmp_path)), "--graceful-timeout", "20"
    )
    try:
        server.wait_ready()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request(1.0, "running") + request(0.0, "behind"))
        await writer.drain()
        await asyncio.sleep(0.3)  # both requests are in the server
        server.process.send_signal(signal.SIGTERM)
        first = await read_answer(reader)
        second = await read_answer(reader)
        assert await reader.read() == b""
        writer.close()
        assert await asyncio.to_thread(server.process.wait, 40) == 0
    finally:
        server.close()
    assert (first[0], first[2]["id"]) == (200, "running")
    assert (second[0], second[2]["id"], second[1]) == (200, "behind", True)
