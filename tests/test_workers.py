"""``coserve serve --workers N``: several server processes behind one port, one supervisor.

Real processes on real sockets, serving Python models (quick to load): requests spread over
the workers, ``/metrics`` gathers every worker's series, a dead worker is replaced, SIGTERM
drains every worker, and start-up failures stop everything with exit status 1.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import ServerProcess
from server_models import SLOW_CONFIG, TYPES_REQUEST, add_python_models

pytestmark = pytest.mark.slow  # starts real server processes

COMPLETED = re.compile(
    r'^coserve_requests_total\{model="types",outcome="completed",version="1"'
    r'(?:,worker="(\d+)")?\} (\S+)$',
    re.MULTILINE,
)
COMMAND = [sys.executable, "-m", "coserve.cli", "serve", "--no-grpc"]
ANNOUNCED = re.compile(r"starting 2 workers on http://127\.0\.0\.1:(\d+)")
SLOW_REQUEST = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [2.0]}]}


def python_repository(root: Path) -> Path:
    # Room for every test request in one worker's queue: the kernel, not the test, picks the
    # worker of each connection.
    slow_config = SLOW_CONFIG.replace("max_queue_size = 2", "max_queue_size = 8")
    assert slow_config != SLOW_CONFIG
    return add_python_models(root, slow_config=slow_config)


def start(repository: Path, *args: str) -> ServerProcess:
    server = ServerProcess(
        "--workers", "2", "--model-repository", str(repository), "--graceful-timeout", "20", *args
    )
    server.wait_ready()
    return server


def workers_of(server: ServerProcess) -> list[int]:
    pid = server.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return sorted(int(child) for child in children)


def completed_by_worker(server: ServerProcess) -> dict[str | None, float]:
    text = httpx.get(f"{server.url}/metrics").text
    return {worker: float(value) for worker, value in COMPLETED.findall(text)}


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def both_workers_ready(server: ServerProcess) -> bool:
    return set(completed_by_worker(server)) == {"0", "1"} and len(workers_of(server)) == 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start(python_repository(tmp_path_factory.mktemp("repository")), "--admin")
    try:
        wait_until(lambda: both_workers_ready(process), "both workers")
        yield process
    finally:
        process.close()


def test_requests_spread_over_the_workers_and_metrics_gather_them(server: ServerProcess) -> None:
    """Connections reach both workers; /metrics on either counts every worker's requests."""
    before = completed_by_worker(server)
    for _ in range(40):  # a new connection each time: the kernel picks a worker per connection
        response = httpx.post(f"{server.url}/v2/models/types/infer", json=TYPES_REQUEST)
        assert response.status_code == 200
        assert response.json()["outputs"][1]["data"] == [False]
    after = completed_by_worker(server)
    assert set(after) == {"0", "1"}
    served = {worker: after[worker] - before.get(worker, 0.0) for worker in after}
    assert sum(served.values()) == 40
    assert all(count > 0 for count in served.values()), served


def batching_option(server: ServerProcess, option: str) -> dict[str, float]:
    """The slow model's ``option`` in force, by worker, from the gathered /metrics."""
    pattern = re.compile(
        rf'^coserve_batching_option\{{model="slow",option="{option}",version="1",'
        rf'worker="(\d+)"\}} (\S+)$',
        re.MULTILINE,
    )
    return {w: float(v) for w, v in pattern.findall(httpx.get(f"{server.url}/metrics").text)}


def test_admin_changes_under_load_lose_no_request(server: ServerProcess) -> None:
    """Requests keep being answered, each exactly once, while the batching changes under them."""
    url = f"{server.url}/v2/admin/models/types/batching"
    before = completed_by_worker(server)
    options_before = httpx.get(url).json()["batching"]

    def client() -> list[int]:
        with httpx.Client() as http:
            return [
                http.post(f"{server.url}/v2/models/types/infer", json=TYPES_REQUEST).status_code
                for _ in range(50)
            ]

    with ThreadPoolExecutor(max_workers=4) as pool:
        clients = [pool.submit(client) for _ in range(4)]
        changes = 0
        while not all(c.done() for c in clients) or changes < 4:
            options = {
                "max_batch_size": 2 if changes % 2 else 64,
                "max_wait": 0.001 * (changes % 3),
                "target_latency": "p99<5ms" if changes % 4 < 2 else None,
            }
            assert httpx.post(url, json=options).status_code == 200
            changes += 1
        statuses = [status for c in clients for status in c.result()]
    assert statuses == [200] * 200
    after = completed_by_worker(server)
    assert sum(after.values()) - sum(before.values()) == 200
    restore = {k: options_before[k] for k in ("max_batch_size", "max_wait", "target_latency")}
    assert httpx.post(url, json=restore).status_code == 200


def test_the_adaptive_target_is_set_live_and_its_state_shows(server: ServerProcess) -> None:
    """target_latency turns adaptive batching on for every worker, and null off.

    Its state is in GET and /metrics; a bad target is a 400 that changes nothing.
    """
    url = f"{server.url}/v2/admin/models/types/batching"
    assert httpx.get(url).json()["batching"]["target_latency"] is None
    try:
        answer = httpx.post(url, json={"target_latency": "p99<20ms"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["batching"]["target_latency"] == "p99<20ms"
        for _ in range(10):
            response = httpx.post(f"{server.url}/v2/models/types/infer", json=TYPES_REQUEST)
            assert response.status_code == 200
        state = httpx.get(url).json()["adaptive"]
        assert state["target"] == "p99<20ms"
        assert state["batch_target"] >= 1
        assert state["margin"] == 0.9
        metrics = httpx.get(f"{server.url}/metrics").text
        targets = re.findall(
            r'^coserve_adaptive\{model="types",value="target_seconds",version="1",'
            r'worker="(\d+)"\} (\S+)$',
            metrics,
            re.MULTILINE,
        )
        assert sorted(targets) == [("0", "0.02"), ("1", "0.02")]
        bad = httpx.post(url, json={"target_latency": "fast"})
        assert bad.status_code == 400
        assert "not a latency target" in bad.json()["error"]
        assert httpx.get(url).json()["batching"]["target_latency"] == "p99<20ms"
    finally:
        assert httpx.post(url, json={"target_latency": None}).status_code == 200
    off = httpx.get(url).json()
    assert off["batching"]["target_latency"] is None
    assert "adaptive" not in off
    assert "coserve_adaptive{" not in httpx.get(f"{server.url}/metrics").text


def test_the_admin_api_changes_batching_on_every_worker(server: ServerProcess) -> None:
    """A POST to one worker changes the model's options on both; a bad one changes nothing."""
    url = f"{server.url}/v2/admin/models/slow/batching"
    before = httpx.get(url).json()["batching"]
    assert before["max_queue_size"] == 8
    try:
        answer = httpx.post(url, json={"max_queue_size": 4, "max_wait": 0.002})
        assert answer.status_code == 200, answer.text
        assert answer.json()["batching"]["max_queue_size"] == 4
        assert batching_option(server, "max_queue_size") == {"0": 4.0, "1": 4.0}
        assert batching_option(server, "max_wait") == {"0": 0.002, "1": 0.002}
        bad = httpx.post(url, json={"max_queue_size": 0})
        assert bad.status_code == 400
        assert "max_queue_size must be > 0" in bad.json()["error"]
        unknown = httpx.post(url, json={"labels": []})
        assert unknown.status_code == 400
        assert "cannot be changed while serving" in unknown.json()["error"]
        assert batching_option(server, "max_queue_size") == {"0": 4.0, "1": 4.0}
        # A web page in the operator's browser can reach localhost: neither its simple
        # (text/plain) POSTs nor any request with an Origin header are taken.
        text = {"content-type": "text/plain"}
        assert httpx.post(url, content=b'{"max_queue_size": 2}', headers=text).status_code == 415
        page = {"origin": "http://a.example"}
        assert httpx.post(url, json={"max_queue_size": 2}, headers=page).status_code == 403
        assert batching_option(server, "max_queue_size") == {"0": 4.0, "1": 4.0}
        assert (
            httpx.post(f"{server.url}/v2/models/slow/infer", json=SLOW_REQUEST).status_code == 200
        )
    finally:
        restore = {"max_queue_size": before["max_queue_size"], "max_wait": before["max_wait"]}
        assert httpx.post(url, json=restore).status_code == 200
    assert batching_option(server, "max_queue_size") == {"0": 8.0, "1": 8.0}


def test_local_metrics_show_one_worker_without_a_worker_label(server: ServerProcess) -> None:
    """/metrics?local=1 is the answering worker's own exposition."""
    text = httpx.get(f"{server.url}/metrics", params={"local": "1"}).text
    found = COMPLETED.findall(text)
    assert len(found) == 1
    assert found[0][0] == ""  # no worker label


def dashboard_frames(server: ServerProcess, count: int) -> list[dict[str, Any]]:
    """The first ``count`` frames of the dashboard's event stream."""
    frames: list[dict[str, Any]] = []
    with httpx.stream("GET", f"{server.url}/dashboard/events", timeout=30) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                frames.append(json.loads(line.removeprefix("data: ")))
                if len(frames) == count:
                    break
    return frames


def test_the_dashboard_gathers_every_worker(server: ServerProcess) -> None:
    """Whichever worker serves the stream, its frames count both workers' requests."""
    totals = completed_by_worker(server)
    frames = dashboard_frames(server, 2)
    frame = frames[-1]
    assert sorted(w["worker"] for w in frame["workers"]) == [0, 1]
    types = next(m for m in frame["models"] if m["key"] == "types/1")
    by_worker = {str(w["worker"]): w["completed"] for w in types["workers"]}
    assert set(by_worker) == {"0", "1"}
    # The frame came after the scrape: each worker has answered at least what it had then.
    assert all(by_worker[w] >= totals[w] for w in ("0", "1")), (by_worker, totals)
    assert types["totals"]["completed"] == sum(by_worker.values())


def test_a_worker_that_dies_is_replaced(server: ServerProcess) -> None:
    """A worker killed outright is started again; the server keeps answering meanwhile."""
    first, second = workers_of(server)
    subprocess.run(["kill", "-KILL", str(first)], check=True)
    wait_until(
        lambda: len(workers_of(server)) == 2 and first not in workers_of(server), "a new worker"
    )
    assert second in workers_of(server)
    wait_until(lambda: both_workers_ready(server), "the new worker to answer")
    for _ in range(10):
        response = httpx.post(f"{server.url}/v2/models/types/infer", json=TYPES_REQUEST)
        assert response.status_code == 200
    assert "exited unexpectedly" in server.output()


def test_sigterm_drains_every_worker_and_exits_0(tmp_path: Path) -> None:
    """Requests accepted by any worker are answered after SIGTERM; then all processes exit 0."""
    server = start(python_repository(tmp_path))
    try:
        wait_until(lambda: both_workers_ready(server), "both workers")
        workers = workers_of(server)
        # Workers have sessions of their own: a terminal's Ctrl+C (SIGINT to the foreground
        # group) reaches the supervisor alone, which forwards one SIGTERM.
        assert all(os.getsid(pid) != os.getsid(server.process.pid) for pid in workers)
        url = f"{server.url}/v2/models/slow/infer"
        with ThreadPoolExecutor(4) as pool:
            # Wherever they land, a worker runs one 2-second request at a time and queues the rest.
            answers = [
                pool.submit(httpx.post, url, json=SLOW_REQUEST, timeout=60) for _ in range(4)
            ]

            def accepted() -> bool:
                text = httpx.get(f"{server.url}/metrics").text
                counts = re.findall(
                    r'^coserve_(?:queued_requests|running_batches)\{model="slow",version="1",'
                    r'worker="\d"\} (\S+)$',
                    text,
                    re.MULTILINE,
                )
                return sum(map(float, counts)) == 4  # every request accepted: one row each

            wait_until(accepted, "the slow requests to be accepted")
            server.process.send_signal(signal.SIGTERM)
            statuses = [answer.result().status_code for answer in answers]
        assert statuses == [200] * 4
        assert server.process.wait(timeout=60) == 0
        for pid in workers:
            assert not Path(f"/proc/{pid}").exists()
        assert "all workers stopped" in server.output()
    finally:
        server.close()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, "--workers", "2", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_port_in_use_fails_at_once_with_status_1(tmp_path: Path) -> None:
    """If another program holds the port, the supervisor says so and exits 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            "--model-repository", str(python_repository(tmp_path)), "--port", str(port)
        )
    assert result.returncode == 1
    assert "cannot listen" in result.stderr


def test_a_worker_that_cannot_start_stops_the_supervisor_with_status_1(tmp_path: Path) -> None:
    """A worker that fails before it is ready ends the whole server with status 1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    repository = str(python_repository(tmp_path))
    result = run_cli(
        "--model-repository", repository, "--port", str(port), "--app", "x=no_such_module:create"
    )
    assert result.returncode == 1
    assert "failed to start" in result.stderr
    assert "no_such_module" in result.stderr


def test_port_0_gives_every_worker_the_same_free_port(tmp_path: Path) -> None:
    """With --port 0 the supervisor picks one free port and every worker serves on it."""
    repository = str(python_repository(tmp_path))
    with tempfile.TemporaryFile(mode="w+") as log:
        process = subprocess.Popen(
            [*COMMAND, "--workers", "2", "--port", "0", "--model-repository", repository],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            found: list[str] = []

            def announced() -> bool:
                log.seek(0)
                found[:] = re.findall(
                    r"starting 2 workers on http://127\.0\.0\.1:(\d+)", log.read()
                )
                return bool(found)

            wait_until(announced, "the supervisor to announce its port")
            url = f"http://127.0.0.1:{found[0]}"

            def both_answer() -> bool:
                try:
                    text = httpx.get(f"{url}/metrics", timeout=5).text
                except httpx.TransportError:
                    return False
                return {w for w, _ in COMPLETED.findall(text)} == {"0", "1"}

            wait_until(both_answer, "both workers on the chosen port")
            response = httpx.post(f"{url}/v2/models/types/infer", json=TYPES_REQUEST)
            assert response.status_code == 200
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
