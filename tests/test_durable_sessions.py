"""Sessions that survive: resume across workers, restarts and kills, against real servers.

One ``coserve serve --workers 2 --session-store sqlite:...`` for the module serves the digit
assistant; a reconnect is retried until the other worker's pid answers its hello, so a test
knows it moved. The restart test starts its own single-worker servers on one SQLite file. No
test waits on a fixed sleep: they wait on the servers' own answers.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import websockets
from sklearn.datasets import load_digits

from helpers import ServerProcess

pytestmark = pytest.mark.slow  # starts real server processes


@pytest.fixture(scope="module")
def store_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sessions") / "sessions.db"


@pytest.fixture(scope="module")
def server(store_file: Path) -> Iterator[ServerProcess]:
    process = ServerProcess("--workers", "2", "--session-store", f"sqlite:{store_file}")
    try:
        process.wait_ready()
        yield process
    finally:
        process.close()


@pytest.fixture(scope="module")
def images() -> dict[int, list[list[float]]]:
    data = load_digits()
    return {d: data.images[int(np.flatnonzero(data.target == d)[0])].tolist() for d in range(10)}


def url(server: ServerProcess, resume: str | None = None) -> str:
    base = server.url.replace("http://", "ws://") + "/sessions/digits"
    return base if resume is None else f"{base}?resume={resume}"


async def connect(server: ServerProcess, resume: str | None = None) -> tuple[Any, dict[str, Any]]:
    socket = await websockets.connect(url(server, resume))
    hello = json.loads(await socket.recv())
    assert hello["event"] == "session"
    return socket, hello


async def ask(socket: Any, message: dict[str, Any]) -> dict[str, Any]:
    await socket.send(json.dumps(message))
    answer: dict[str, Any] = json.loads(await socket.recv())
    assert "error" not in answer, answer
    return answer


async def resume_elsewhere(
    server: ServerProcess, token: str, away_from: int
) -> tuple[Any, dict[str, Any]]:
    """Reconnect with ``token`` until a worker other than ``away_from`` answers."""
    for _ in range(200):
        socket, hello = await connect(server, token)
        if hello["worker"] != away_from:
            return socket, hello
        await socket.close()
    # Seen once in CI (2026-12-03), not reproduced: the server's log says what the other
    # worker was doing.
    raise AssertionError(
        f"every reconnect landed on the same worker; the server said:\n{server.output()[-6000:]}"
    )


async def closed_with(socket: Any) -> int:
    """The close code the server sent, after any messages still on their way."""
    try:
        while True:
            await socket.recv()
    except websockets.ConnectionClosed as closed:
        frame = closed.rcvd
    assert frame is not None, "closed without a close frame"
    return frame.code


async def test_state_follows_the_session_to_another_worker(
    server: ServerProcess, images: dict[int, list[list[float]]]
) -> None:
    """Number, history and careful mode (its gate rewired in) continue on the other worker."""
    socket, hello = await connect(server)
    assert hello["resumed"] is False
    assert hello["version"] == 1
    for digit in (3, 1, 4):
        await ask(socket, {"image": images[digit]})
    mode = await ask(socket, {"id": "m", "command": "mode", "mode": "careful", "threshold": 0.5})
    assert "ConfidenceGate" in mode["message"]
    await socket.close()

    moved, again = await resume_elsewhere(server, hello["resume"], hello["worker"])
    assert again["resumed"] is True
    assert again["session"] == hello["session"]
    assert again["last"] == "m"  # the last answered message
    assert again["version"] == 5  # the hello's checkpoint and four answers
    state = await ask(moved, {"command": "history"})
    assert state["number"] == "314"
    assert state["mode"] == "careful"
    assert state["history"] == ["read 3", "read 1", "read 4", "mode careful (0.5)"]
    # The gate is wired in again, not only the mode's name: quick mode takes it out.
    quick = await ask(moved, {"command": "mode", "mode": "quick"})
    assert quick["message"] == "quick mode: model:digits -> Assistant"
    assert (await ask(moved, {"image": images[1]}))["number"] == "3141"
    await moved.close()


async def test_a_killed_worker_loses_nothing_acknowledged(
    server: ServerProcess, images: dict[int, list[list[float]]]
) -> None:
    """A worker killed (-9) mid-session: the resume has every message whose answer came back."""
    socket, hello = await connect(server)
    answered = ""
    for digit in (2, 7, 1, 8):
        answered = (await ask(socket, {"image": images[digit]}))["number"]
    # More in flight as it dies: each may or may not have been answered.
    for digit in (2, 8):
        await socket.send(json.dumps({"image": images[digit]}))
    os.kill(hello["worker"], signal.SIGKILL)
    try:
        while True:
            answered = json.loads(await socket.recv())["number"]
    except websockets.ConnectionClosed:
        pass

    moved, again = await resume_elsewhere(server, hello["resume"], hello["worker"])
    state = await ask(moved, {"command": "history"})
    assert state["number"] == answered
    # The hello's checkpoint and one for each of the four answers awaited in turn; the two
    # sent together may share one.
    assert 5 <= again["version"] <= 1 + len(answered)
    await moved.close()


async def test_a_newer_connection_takes_the_session_over(
    server: ServerProcess, images: dict[int, list[list[float]]]
) -> None:
    """Two connections race for one session: the older owner is fenced off and closed."""
    old, hello = await connect(server)
    await ask(old, {"image": images[5]})
    new, again = await connect(server, hello["resume"])
    assert again["resumed"] is True
    assert (await ask(new, {"image": images[6]}))["number"] == "56"
    # The old connection's next answer would overwrite a newer state: it is closed instead,
    # and the answer is never sent.
    await old.send(json.dumps({"image": images[9]}))
    assert await closed_with(old) == 4409
    assert (await ask(new, {"command": "history"}))["number"] == "56"
    await new.close()


async def test_a_bad_token_is_refused(server: ServerProcess) -> None:
    socket, hello = await connect(server)
    await socket.close()
    session = hello["session"]
    for token in (f"{session}.wrong", "nonsense", f"{'0' * 32}.x"):
        async with websockets.connect(url(server, token)) as refused:
            assert await closed_with(refused) == 4410


async def test_restart_resumes_and_no_store_refuses(
    tmp_path: Path, images: dict[int, list[list[float]]]
) -> None:
    """SIGTERM mid-session, start again on the same store: the session resumes."""
    store = f"sqlite:{tmp_path / 'restart.db'}"
    first = ServerProcess("--session-store", store)
    try:
        await asyncio.to_thread(first.wait_ready)
        socket, hello = await connect(first)
        for digit in (9, 0):
            await ask(socket, {"image": images[digit]})
        await socket.send(json.dumps({"command": "undo"}))
        assert json.loads(await socket.recv())["number"] == "9"
        assert await asyncio.to_thread(first.stop) == 0
        await closed_with(socket)
    finally:
        first.close()
    second = ServerProcess("--session-store", store)
    plain = ServerProcess()
    try:
        await asyncio.to_thread(second.wait_ready)
        socket, again = await connect(second, hello["resume"])
        assert again["resumed"] is True
        state = await ask(socket, {"command": "history"})
        assert state["number"] == "9"
        assert state["history"] == ["read 9", "read 0", "undo 0"]
        await socket.close()
        metrics = (await asyncio.to_thread(httpx.get, f"{second.url}/metrics")).text
        assert 'coserve_sessions_resumed_total{app="digits"} 1.0' in metrics
        await asyncio.to_thread(plain.wait_ready)  # a server without a store says it cannot resume
        async with websockets.connect(url(plain, hello["resume"])) as refused:
            assert await closed_with(refused) == 4410
    finally:
        second.close()
        plain.close()
