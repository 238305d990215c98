"""``/dashboard`` against a real server under a little load, in httpx and in a real browser.

Its event stream, its page with and without JavaScript, a live session's graph, and the page in
a real headless Chromium.

The browser is Debian's ``chromium`` driven by Selenium through Debian's ``chromium-driver``
(``.ci/run`` installs both). The screenshot the browser test saves is the README's, when
``COSERVE_SCREENSHOT`` names where to write it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from helpers import ServerProcess
from server_models import TYPES_CONFIG, TYPES_MODEL, TYPES_REQUEST, add_model, xy_config

pytestmark = pytest.mark.slow  # starts a real server, and a browser

# Batches of several rows: a short linger, and a model slow enough that requests pile up.
BATCHED_CONFIG = xy_config(max_batch_size=8, max_wait=0.004)
BATCHED_MODEL = """
import time

def predict(inputs):
    time.sleep(0.002)
    return {"y": inputs["x"] * 2}
"""
X_REQUEST = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.5]}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("repository")
    add_model(root, "batched", BATCHED_CONFIG, BATCHED_MODEL)
    add_model(root, "types", TYPES_CONFIG, TYPES_MODEL)
    process = ServerProcess(
        "--model-repository", str(root), "--app", "echo=session_apps:create_echo"
    )
    try:
        process.wait_ready()
        yield process
    finally:
        process.close()


class Load:
    """A few clients sending requests one after another, until stopped."""

    def __init__(self, url: str, clients: int = 4) -> None:
        self.url = url
        self.stopped = threading.Event()
        self.sent = 0
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self.stopped.is_set():
                answer = client.post("/v2/models/batched/infer", json=X_REQUEST)
                if answer.status_code != 200:
                    self.failures.append(answer.text)
                self.sent += 1
                time.sleep(0.005)  # a little load: the machine has two cores

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(timeout=15)
        assert not self.failures, self.failures[:3]


def read_events(
    url: str, count: int, *, timeout: float = 30.0
) -> tuple[httpx.Headers, list[dict[str, Any]]]:
    """The first ``count`` events of an event stream, each as its fields, parsed as SSE is."""
    events: list[dict[str, Any]] = []
    with httpx.stream("GET", url, timeout=timeout) as response:
        assert response.status_code == 200
        headers = response.headers
        fields: dict[str, Any] = {}
        for line in response.iter_lines():
            if line == "":
                if fields:
                    events.append(fields)
                    fields = {}
                    if len(events) == count:
                        break
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
    return headers, events


def test_event_stream_format_and_content(server: ServerProcess) -> None:
    with Load(server.url):
        headers, events = read_events(f"{server.url}/dashboard/events", 5)
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache"
    assert "default-src 'none'" in headers["content-security-policy"]
    # First the reconnection delay alone, then one `stats` event a frame, its id the frame's.
    assert events[0] == {"retry": "2000"}
    frames = []
    for event in events[1:]:
        assert set(event) == {"id", "event", "data"}
        assert event["event"] == "stats"
        frame = json.loads(event["data"])
        assert frame["seq"] == int(event["id"])
        frames.append(frame)
    assert [f["seq"] for f in frames] == list(range(frames[0]["seq"], frames[0]["seq"] + 4))
    models = {m["key"]: m for m in frames[-1]["models"]}
    assert set(models) == {"batched/1", "types/1"}
    batched = models["batched/1"]
    first = {m["key"]: m for m in frames[0]["models"]}["batched/1"]
    assert batched["totals"]["completed"] > first["totals"]["completed"]
    assert batched["rates"]["completed"] > 0
    assert batched["rates"]["batches"] > 0
    assert batched["p99_ms"] is not None
    assert batched["p99_ms"] >= batched["p50_ms"] > 0
    assert batched["exec_ms"] is not None
    assert batched["exec_ms"] >= 2.0
    assert sum(batched["histogram"].values()) > 0
    assert all(1 <= int(size) <= 8 for size in batched["histogram"])
    assert sum(batched["close_reasons"].values()) > 0
    assert batched["policy"]["max_batch_size"] == 8
    assert batched["policy"]["max_wait"] == pytest.approx(0.004)
    assert batched["status_totals"]["200"] >= batched["totals"]["completed"] - 8
    assert frames[-1]["sessions"]["apps"]["echo"]["active"] == 0


def test_page_reads_without_javascript(server: ServerProcess) -> None:
    httpx.post(f"{server.url}/v2/models/types/infer", json=TYPES_REQUEST).raise_for_status()
    answer = httpx.get(f"{server.url}/dashboard")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/html; charset=utf-8"
    policy = answer.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    page = answer.text
    # Nothing inline for the policy to refuse: every script is a file, no style attributes.
    assert re.findall(r"<script\b[^>]*>", page) == [
        '<script src="dashboard/static/vendor/uPlot.iife.min.js" defer>',
        '<script src="dashboard/static/dashboard.js" defer>',
    ]
    assert " style=" not in page
    assert "<style" not in page
    # The numbers are in the tables: one row per model version, one per session app.
    row = re.search(r'<tr data-key="types/1">(.*?)</tr>', page)
    assert row is not None
    completed = re.search(r'<td data-field="completed">(\d+)</td>', row.group(1))
    assert completed is not None
    assert int(completed.group(1)) >= 1
    assert '<tr data-key="batched/1">' in page
    assert '<tr data-app="echo">' in page
    assert '<meta http-equiv="refresh" content="5">' in page  # inside <noscript>


def test_static_files_and_licence(server: ServerProcess) -> None:
    for path, media_type in (
        ("dashboard.js", "text/javascript"),
        ("dashboard.css", "text/css"),
        ("vendor/uPlot.iife.min.js", "text/javascript"),
        ("vendor/uPlot.min.css", "text/css"),
        ("vendor/uPlot.LICENSE", "text/plain"),
    ):
        answer = httpx.get(f"{server.url}/dashboard/static/{path}")
        assert answer.status_code == 200, path
        assert answer.headers["content-type"].startswith(media_type)
        assert answer.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(f"{server.url}/dashboard/static/../_app.py").status_code == 404
    assert httpx.get(f"{server.url}/dashboard/static/vendor/README.md").status_code == 404
    licence = resources.files("coserve.server") / "dashboard_static" / "vendor" / "uPlot.LICENSE"
    assert "MIT License" in licence.read_text()


async def test_a_live_sessions_graph(server: ServerProcess) -> None:
    url = server.url.replace("http://", "ws://") + "/sessions/echo"
    async with websockets.connect(url) as socket:
        hello = json.loads(await socket.recv())
        for i in range(3):
            await socket.send(json.dumps({"id": i, "text": "hi"}))
            await socket.recv()
        session = hello["session"]
        answer = await asyncio.to_thread(httpx.get, f"{server.url}/dashboard/sessions/{session}")
        assert answer.status_code == 200
        graph = answer.json()
        assert graph["id"] == session
        assert graph["app"] == "echo"
        nodes = {node["name"]: node for node in graph["nodes"]}
        assert graph["links"], graph
        for link in graph["links"]:
            assert link["from"] in nodes
            assert link["to"] in nodes
            assert link["input"] in nodes[link["to"]]["inputs"]
        assert max(node["messages_in"] for node in nodes.values()) >= 3
        assert graph["mermaid"].startswith("flowchart LR")
        _, events = await asyncio.to_thread(
            read_events, f"{server.url}/dashboard/events?session={session}", 2
        )
        frame = json.loads(events[1]["data"])
        assert frame["session"]["found"] is True
        assert frame["session"]["graph"]["id"] == session
        assert [s["id"] for s in frame["sessions"]["live"]] == [session]
        assert frame["sessions"]["apps"]["echo"]["active"] == 1
    gone = await asyncio.to_thread(httpx.get, f"{server.url}/dashboard/sessions/{session}")
    assert gone.status_code == 404


def chromium() -> Any:
    """Headless Debian Chromium under Selenium, offline (no Selenium Manager download)."""
    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        pytest.fail("chromium is not installed: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1800",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(shutil.which("chromedriver") or "")
    return webdriver.Chrome(options=options, service=service)


def wait_for(driver: Any, script: str, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_page_in_a_browser(server: ServerProcess, tmp_path: Path) -> None:
    driver = chromium()
    try:
        with Load(server.url):
            url = server.url.replace("http://", "ws://") + "/sessions/echo"

            async def keep_session(ready: threading.Event, done: threading.Event) -> None:
                async with websockets.connect(url) as socket:
                    await socket.recv()
                    for i in range(5):
                        await socket.send(json.dumps({"id": i, "text": "hi"}))
                        await socket.recv()
                    ready.set()
                    await asyncio.to_thread(done.wait)

            ready, done = threading.Event(), threading.Event()
            session = threading.Thread(target=asyncio.run, args=(keep_session(ready, done),))
            session.start()
            try:
                assert ready.wait(30)
                driver.get(f"{server.url}/dashboard")
                points = "return window.coserveDashboard && coserveDashboard.points('batched/1')"
                wait_for(driver, f"{points} >= 3", "three points on the charts")
                before = driver.execute_script("return coserveDashboard.completed('batched/1')")
                first = driver.execute_script(points)
                wait_for(driver, f"{points} >= {first + 2}", "the charts to grow")
                after = driver.execute_script("return coserveDashboard.completed('batched/1')")
                assert after > before > 0
                assert driver.execute_script("return coserveDashboard.histogram('batched/1')") > 0
                # The charts are drawn: uPlot's canvases, sized, in the open cards.
                canvases = driver.execute_script(
                    "return [...document.querySelectorAll('details.model[open] canvas')]"
                    ".filter(c => c.width > 0).length"
                )
                assert canvases >= 7
                # The table is kept up to date from the stream.
                cell = driver.execute_script(
                    "return document.querySelector("
                    '\'#models-table tr[data-key="batched/1"] td[data-field="completed"]\')'
                    ".textContent"
                )
                assert int(cell) >= before
                # Choose the live session: its graph is drawn, a box per node.
                wait_for(
                    driver,
                    "return document.querySelector('#live-sessions button')",
                    "a live session",
                )
                driver.execute_script("document.querySelector('#live-sessions button').click()")
                wait_for(
                    driver,
                    "return document.querySelectorAll('#session-graph svg g.node').length >= 2",
                    "the session's graph",
                )
                # Filtering hides the other models' cards.
                driver.execute_script(
                    "const f = document.getElementById('filter'); f.value = 'types';"
                    "f.dispatchEvent(new Event('input'))"
                )
                hidden = driver.execute_script(
                    "return document.querySelector('details.model[data-key=\"batched/1\"]').hidden"
                )
                assert hidden is True
                driver.execute_script(
                    "const f = document.getElementById('filter'); f.value = '';"
                    "f.dispatchEvent(new Event('input'))"
                )
                time.sleep(1.5)  # one more frame, for the picture
                driver.save_screenshot(str(tmp_path / "dashboard.png"))
            finally:
                done.set()
                session.join(timeout=15)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        driver.quit()
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
    target = os.environ.get("COSERVE_SCREENSHOT")
    if target:
        shutil.copyfile(tmp_path / "dashboard.png", target)


def test_an_open_event_stream_ends_when_the_server_stops(tmp_path: Path) -> None:
    """SIGTERM ends the dashboard's streams at once: the shutdown does not wait them out."""
    add_model(tmp_path, "types", TYPES_CONFIG, TYPES_MODEL)
    process = ServerProcess("--model-repository", str(tmp_path), "--graceful-timeout", "60")
    frames: list[str] = []
    ended = threading.Event()

    def watch() -> None:
        with httpx.stream("GET", f"{process.url}/dashboard/events", timeout=120) as stream:
            frames.extend(line for line in stream.iter_lines() if line.startswith("event: stats"))
        ended.set()

    try:
        process.wait_ready()
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        for _ in range(600):
            if frames:
                break
            time.sleep(0.05)
        assert frames, "the stream sent no frame"
        assert process.stop() == 0
        assert ended.wait(30), "the stream did not end"
        output = process.output()
        # Had the stream stayed open, uvicorn would have waited out --graceful-timeout (60 s)
        # and then said so.
        assert "timeout graceful shutdown exceeded" not in output
    finally:
        process.close()
