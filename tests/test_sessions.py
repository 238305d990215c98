"""Per-session graphs over WebSocket (/sessions/{app}), against a real ``coserve serve``.

One server for the module: the bundled demo (which serves the digit assistant at
/sessions/digits) plus the test apps in session_apps.py, a cap of 4 sessions and a 3 s idle
timeout. Tests that need the cap or the idle timeout wait on the server's own answers (close
codes, /metrics), never on a fixed sleep.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sys
import time
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

MAX_SESSIONS = 4
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
IDLE_TIMEOUT = 3


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    process = ServerProcess(
        "--max-sessions",
        str(MAX_SESSIONS),
        "--session-idle-timeout",
        str(IDLE_TIMEOUT),
        "--app",
        "echo=session_apps:create_echo",
        "--app",
        "broken=session_apps:create_broken",
        "--app",
        "fragile=session_apps:create_fragile",
        "--app",
        "unwired=session_apps:create_unwired",
        "--app",
        "rejecting=session_apps:create_rejecting",
    )
    try:
        process.wait_ready()
        yield process
    finally:
        process.close()


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    return data.images, data.target


def ws_url(server: ServerProcess, app: str) -> str:
    return server.url.replace("http://", "ws://") + f"/sessions/{app}"


async def open_session(server: ServerProcess, app: str) -> Any:
    socket = await websockets.connect(ws_url(server, app))
    hello = json.loads(await socket.recv())
    assert hello["event"] == "session"
    assert hello["app"] == app
    return socket


async def ask(socket: Any, message: dict[str, Any]) -> dict[str, Any]:
    await socket.send(json.dumps(message))
    answer: dict[str, Any] = json.loads(await socket.recv())
    return answer


def metric(server: ServerProcess, name: str, app: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    match = re.search(rf'^{name}{{app="{app}"}} (\S+)$', text, re.MULTILINE)
    assert match is not None, f"{name} for {app} not in /metrics"
    return float(match.group(1))


async def wait_for_metric(server: ServerProcess, name: str, app: str, value: float) -> None:
    for _ in range(300):
        if await asyncio.to_thread(metric, server, name, app) == value:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name}{{app={app!r}}} never reached {value}")


async def refused_with(server: ServerProcess, app: str) -> int:
    """Connect to ``app`` expecting the server to close at once; the close code it sent."""
    async with websockets.connect(ws_url(server, app)) as socket:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await socket.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


def image(digits: tuple[np.ndarray, np.ndarray], wanted: int) -> list[list[float]]:
    images, labels = digits
    index = int(np.flatnonzero(labels == wanted)[0])
    return images[index].tolist()  # 0..16, as scikit-learn ships them


async def test_digit_session_reads_a_number_in_order(
    server: ServerProcess, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    """Images sent in a row are read in order, answered by id, and build up the number."""
    async with await open_session(server, "digits") as socket:
        for position, wanted in enumerate([4, 2, 7]):
            await socket.send(json.dumps({"id": f"img{position}", "image": image(digits, wanted)}))
        answers = [json.loads(await socket.recv()) for _ in range(3)]
    assert [answer["id"] for answer in answers] == ["img0", "img1", "img2"]
    assert [answer["digit"] for answer in answers] == [4, 2, 7]
    assert [answer["number"] for answer in answers] == ["4", "42", "427"]
    assert all(answer["accepted"] and 0 < answer["confidence"] <= 1 for answer in answers)


async def test_commands_edit_the_sessions_own_state(
    server: ServerProcess, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    """undo, correct, clear and history act on this session's number only."""
    async with (
        await open_session(server, "digits") as first,
        await open_session(server, "digits") as second,
    ):
        for wanted in (1, 2, 3):
            await ask(first, {"image": image(digits, wanted)})
        await ask(second, {"image": image(digits, 9)})
        assert (await ask(first, {"command": "undo"}))["number"] == "12"
        corrected = await ask(first, {"command": "correct", "digit": 5})
        assert corrected["number"] == "15"
        assert corrected["history"][-1] == "correct 2 -> 5"
        assert (await ask(second, {"command": "history"}))["number"] == "9"
        assert (await ask(first, {"command": "clear"}))["number"] == ""


async def test_careful_mode_reshapes_the_pipeline_at_run_time(
    server: ServerProcess, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    """'mode careful' inserts a gate node that holds back unsure readings; 'quick' removes it."""
    blank = [[0.0] * 8 for _ in range(8)]  # the model is unsure what this is (p < 0.5)
    async with await open_session(server, "digits") as socket:
        quick = await ask(socket, {"image": blank})
        careful = await ask(socket, {"command": "mode", "mode": "careful", "threshold": 0.5})
        confident = await ask(socket, {"image": image(digits, 3)})
        unsure = await ask(socket, {"image": blank})
        back = await ask(socket, {"command": "mode", "mode": "quick"})
        after = await ask(socket, {"image": blank})
    assert quick["accepted"] is True
    assert quick["confidence"] < 0.5
    assert careful["mode"] == "careful"
    assert confident["accepted"] is True
    assert confident["number"] == f"{quick['digit']}3"
    assert unsure["accepted"] is False
    assert "draw it again" in unsure["message"]
    assert unsure["number"] == confident["number"]
    assert careful["message"] == "careful mode: model:digits -> ConfidenceGate -> Assistant"
    assert back["message"] == "quick mode: model:digits -> Assistant"
    assert after["accepted"] is True


async def test_bad_messages_get_an_error_and_the_session_stays_open(
    server: ServerProcess, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    """Malformed JSON, bad images and unknown commands are answered 400; the session goes on."""
    async with await open_session(server, "digits") as socket:
        await socket.send("{not json")
        malformed = json.loads(await socket.recv())
        short = await ask(socket, {"id": "short", "image": [0.5] * 10})
        unknown = await ask(socket, {"id": "what", "command": "dance"})
        good = await ask(socket, {"id": "ok", "image": image(digits, 6)})
    assert malformed["id"] is None
    assert malformed["status"] == 400
    assert short == {"id": "short", "status": 400, "error": short["error"]}
    assert "64 numbers" in short["error"]
    assert unknown["id"] == "what"
    assert unknown["status"] == 400
    assert good["id"] == "ok"
    assert good["digit"] == 6


async def test_unknown_app_closes_with_4404(server: ServerProcess) -> None:
    """A URL naming no session app closes at once with code 4404."""
    assert await refused_with(server, "nope") == 4404


async def test_an_app_that_cannot_build_a_session_closes_with_1011(server: ServerProcess) -> None:
    """If the app's factory raises, the session closes with 1011 and is counted as an error."""
    assert await refused_with(server, "broken") == 1011
    assert metric(server, "coserve_sessions_errors_total", "broken") >= 1


async def test_an_app_whose_graph_cannot_start_closes_with_1011(server: ServerProcess) -> None:
    """A graph that fails validation at start closes the session with 1011, counted."""
    errors_before = metric(server, "coserve_sessions_errors_total", "unwired")
    assert await refused_with(server, "unwired") == 1011
    assert metric(server, "coserve_sessions_errors_total", "unwired") == errors_before + 1


async def test_a_failed_graph_answers_its_message_and_closes_the_session(
    server: ServerProcess,
) -> None:
    """A crash beyond the app's supervision: the message gets an error, the socket 1011 at once."""
    async with await open_session(server, "fragile") as socket:
        assert (await ask(socket, {"id": 1}))["ok"] is True
        failed = await ask(socket, {"id": 2, "crash": True})
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await socket.recv()
    assert failed["id"] == 2
    assert failed["error"] == "asked to crash"
    assert failed["status"] == 500
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1011
    # Closed because the graph failed, not later for being idle.
    assert metric(server, "coserve_sessions_expired_total", "fragile") == 0


async def test_sessions_over_the_cap_are_refused_with_1013(server: ServerProcess) -> None:
    """With the cap reached, a new session is closed with 1013 (try again later)."""
    # The cap counts every app's sessions.
    for app in ("echo", "broken", "fragile", "unwired", "digits"):
        await wait_for_metric(server, "coserve_sessions_active", app, 0)
    refused_before = metric(server, "coserve_sessions_refused_total", "echo")
    sockets = [await open_session(server, "echo") for _ in range(MAX_SESSIONS)]
    try:
        assert await refused_with(server, "echo") == 1013
        assert metric(server, "coserve_sessions_refused_total", "echo") == refused_before + 1
        assert (await ask(sockets[0], {"id": "still"}))["echo"]["id"] == "still"
    finally:
        for socket in sockets:
            await socket.close()
    await wait_for_metric(server, "coserve_sessions_active", "echo", 0)


async def test_an_idle_session_expires_with_4408(server: ServerProcess) -> None:
    """A client silent for the idle timeout is closed with 4408 and counted as expired."""
    expired_before = metric(server, "coserve_sessions_expired_total", "echo")
    async with await open_session(server, "echo") as socket:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(socket.recv(), timeout=30)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4408
    assert metric(server, "coserve_sessions_expired_total", "echo") == expired_before + 1


async def test_closing_the_socket_right_after_sending_ends_the_session_cleanly(
    server: ServerProcess,
) -> None:
    """Messages sent just before the client closes are taken in, and the session drains.

    It ends without errors, and no answer is counted as lost.
    """
    counted = ("messages", "created", "errors", "lost_answers")
    before = {name: metric(server, f"coserve_sessions_{name}_total", "echo") for name in counted}
    async with await open_session(server, "echo") as socket:
        for i in range(20):
            await socket.send(json.dumps({"id": i}))
    await wait_for_metric(server, "coserve_sessions_active", "echo", 0)
    after = {name: metric(server, f"coserve_sessions_{name}_total", "echo") for name in counted}
    assert after["messages"] == before["messages"] + 20
    assert after["created"] == before["created"] + 1
    assert after["errors"] == before["errors"]
    assert after["lost_answers"] == before["lost_answers"]


async def test_many_sessions_share_the_models_batcher(
    server: ServerProcess, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    """Concurrent sessions each get their own answers; the model's requests count them all."""
    await wait_for_metric(server, "coserve_sessions_active", "digits", 0)
    pattern = r'^coserve_requests_total\{model="digits",outcome="completed",version="1"\} (\S+)$'

    def completed() -> float:
        text = httpx.get(f"{server.url}/metrics").text
        match = re.search(pattern, text, re.MULTILINE)
        assert match is not None
        return float(match.group(1))

    before = completed()

    async def one_session(wanted: int) -> list[int]:
        async with await open_session(server, "digits") as socket:
            for _ in range(5):
                await socket.send(json.dumps({"image": image(digits, wanted)}))
            return [json.loads(await socket.recv())["digit"] for _ in range(5)]

    results = await asyncio.gather(*(one_session(d) for d in range(MAX_SESSIONS)))
    assert results == [[d] * 5 for d in range(MAX_SESSIONS)]
    assert completed() == before + 5 * MAX_SESSIONS


async def test_the_example_client_runs_a_session(server: ServerProcess, tmp_path: Path) -> None:
    """examples/digit_session_client.py talks to the server as documented.

    With only what ``make serve`` installs: scikit-learn (a dev extra here) is made unimportable.
    """
    example = EXAMPLES / "digit_session_client.py"
    (tmp_path / "sklearn.py").write_text("raise ImportError('make serve does not install it')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "error",
        str(example),
        "--url",
        ws_url(server, "digits"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    output = stdout.decode()
    assert "drew a 4: read 4, number 4" in output
    assert "careful mode: model:digits -> ConfidenceGate -> Assistant" in output
    assert "please draw it again" in output


FLOOD = 2000  # messages: many times the 256 answers a session holds for its client
LOG_INTERVAL = 10.0  # seconds: RepeatedLog's default, which the sessions' error lines use


async def open_unread_session(server: ServerProcess, app: str) -> tuple[Any, str]:
    """A session whose client has a small fixed receive window, and its session id.

    With the kernel's receive buffer small (set before connecting, so it is not autotuned),
    answers the client does not read back up into the server within a few hundred kilobytes.
    """
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    raw.setblocking(False)
    await asyncio.get_running_loop().sock_connect(raw, ("127.0.0.1", server.port))
    # No compression, which would shrink the answers to nothing on the wire; no client pings,
    # whose pongs would wait behind the unread answers.
    client = await websockets.connect(
        ws_url(server, app), sock=raw, compression=None, ping_interval=None
    )
    hello = json.loads(await client.recv())
    assert hello["app"] == app
    return client, hello["session"]


async def messages_read_once_stalled(
    server: ServerProcess, app: str, start: float, limit: float
) -> float:
    """Poll the app's messages counter until it stops moving between ``start`` and ``limit``.

    Returns early at ``limit``. No fixed wait decides the outcome: a reader that is only slow
    keeps the loop polling, and one that takes every message ends it at ``limit``.
    """
    readings: list[float] = []
    for _ in range(600):
        readings.append(
            await asyncio.to_thread(metric, server, "coserve_sessions_messages_total", app)
        )
        if readings[-1] >= limit:
            return readings[-1]
        if readings[-1] > start and len(readings) >= 5 and len(set(readings[-5:])) == 1:
            return readings[-1]
        await asyncio.sleep(0.25)
    raise AssertionError(f"the server's reading of {app!r} messages never settled: {readings}")


async def test_a_client_that_does_not_read_is_pushed_back_and_loses_no_answer(
    server: ServerProcess,
) -> None:
    """A session whose client reads nothing stops reading its messages; no answer is dropped.

    Every message becomes an error answer through the graph's dead-letter callback. Once the
    client reads, each of its messages has exactly one answer, in the order sent.
    """
    app = "rejecting"
    lost_before = metric(server, "coserve_sessions_lost_answers_total", app)
    read_before = metric(server, "coserve_sessions_messages_total", app)
    client, _ = await open_unread_session(server, app)
    try:

        async def send_all() -> None:
            for i in range(FLOOD):  # 8 kB answers: a few hundred fill the client's socket
                await client.send(json.dumps({"id": i, "pad": 8000}))

        sending = asyncio.create_task(send_all())
        read = await messages_read_once_stalled(server, app, read_before, read_before + FLOOD)
        assert metric(server, "coserve_sessions_lost_answers_total", app) == lost_before
        assert read_before < read < read_before + FLOOD  # it stopped reading the client
        answers = [json.loads(await client.recv()) for _ in range(FLOOD)]
        await sending
    finally:
        await client.close()
    await wait_for_metric(server, "coserve_sessions_active", app, 0)
    assert [answer["id"] for answer in answers] == list(range(FLOOD))
    assert all(answer["status"] == 500 for answer in answers)
    assert all(answer["error"] == "rejected " + "x" * 8000 for answer in answers)
    assert metric(server, "coserve_sessions_messages_total", app) == read_before + FLOOD
    assert metric(server, "coserve_sessions_lost_answers_total", app) == lost_before


def repeated_lines(output: str, session: str) -> tuple[int, int]:
    """The server's lines about failed messages of one session, and the messages they cover."""
    lines = [line for line in output.splitlines() if f"session {session}: message" in line]
    covered = 0
    for line in lines:
        more = re.search(r"\(and ([\d,]+) more like it in the last [\d.e+]+ s\)$", line)
        covered += 1 + (int(more.group(1).replace(",", "")) if more else 0)
    return len(lines), covered


async def test_a_flood_of_one_error_is_logged_once_with_a_count(server: ServerProcess) -> None:
    """Thousands of messages failing alike log a line per interval whose counts sum exactly."""
    app = "rejecting"
    started = time.monotonic()
    async with await websockets.connect(ws_url(server, app)) as client:
        session = json.loads(await client.recv())["session"]
        for i in range(FLOOD):
            await client.send(json.dumps({"id": i}))
        answers = [json.loads(await client.recv()) for _ in range(FLOOD)]
    await wait_for_metric(server, "coserve_sessions_active", app, 0)  # its counts are flushed
    elapsed = time.monotonic() - started
    assert len(answers) == FLOOD
    lines, covered = repeated_lines(server.output(), session)
    # The first failure, one line per interval after it, and the flush when the session ends.
    assert 1 <= lines <= 2 + elapsed // LOG_INTERVAL
    assert covered == FLOOD
