"""Session benchmark: concurrent WebSocket sessions on ``coserve serve``, and graph overhead.

Part A starts ``coserve serve`` (the bundled demo models and the ``digits`` session app) and
runs ``--rounds`` rounds of ``--sessions`` concurrent WebSocket sessions at /sessions/digits.
A round opens every session first (at most ``--connect-concurrency`` handshakes at once), then
every session sends ``--messages`` images from scikit-learn's digits (known labels), keeping at
most ``--window`` of them unanswered, and reads the answers; then every socket is closed.

Checked per round: every message answered exactly once (a ``history`` command sent afterwards
must be the next answer), answers in order by id, each answer's ``number`` is that session's own
digits so far, the digits against the labels, ``coserve_sessions_created_total`` grown by the
number of sessions, and ``coserve_sessions_active`` back to 0 after the close. Measured:
messages/s, latency per message (send to answer, including waiting behind the session's earlier
messages), the digits model's mean batch size (from /metrics), the server's RSS (baseline after
a warm-up, peak during each round, after each round) and CPU per message of client and server.

Part B measures coserve.graph's in-process overhead: messages/s through a 5-node linear graph
(a source, three nodes adding 1, a counting sink) against the same pipeline of plain coroutines
joined by ``asyncio.Queue(maxsize=16)`` with an end sentinel, interleaved, on asyncio's own loop
and on uvloop.

``--stores off,sqlite,redis`` runs part A once per session store, in that order (``sqlite``: a
file in a temporary folder; ``redis``: a ``redis-server`` started on a free loopback port), and
compares each store's median messages/s and p99 with the store off: what checkpointing every
answer before it is sent costs.

Run: ``python benchmarks/sessions.py`` (about 2 minutes on a 2-core VM); ``--part a`` or
``--part b`` runs one half; ``--profile`` adds a cProfile of the graph pipeline.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import re
import resource
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from signal import SIGTERM
from typing import Any

import httpx
import numpy as np
import uvloop
from websockets.asyncio.client import ClientConnection, connect
from websockets.protocol import State

from coserve.graph import Graph, Input, Node, Output, Signal

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "sessions.json"
APP = "digits"
DEFAULT_MAX_SESSIONS = 1000  # coserve serve's --max-sessions default
TICKS = os.sysconf("SC_CLK_TCK")
TARGET_BATCH = 8.0
TARGET_RATIO = 1.5
QUEUE_SIZE = 16  # the plain pipeline's queues, as coserve's default input capacity

LoopFactory = Callable[[], asyncio.AbstractEventLoop]
LOOPS: dict[str, LoopFactory] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


# -- the machine -----------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return match.group(1).strip() if match else "unknown CPU"


def machine_lines() -> list[str]:
    """Markdown lines naming the machine, the Python and the command."""
    return [
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}; CPython {platform.python_version()}.",
        f"Command: `{shlex.join([Path(sys.executable).name, *sys.argv])}` "
        f"(`{sys.executable}`), {time.strftime('%Y-%m-%d')}.",
    ]


def raise_fd_limit(needed: int) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to ``needed`` (within the hard limit); (old, new) soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return soft, target
    return soft, soft


# -- part A: the server ----------------------------------------------------------------------


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text to ``{'name{labels}': value}``."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


class Server:
    """``coserve serve`` as a subprocess: start, readiness, /metrics, RSS, CPU, SIGTERM."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        command = [
            sys.executable,
            "-m",
            "coserve.cli",
            "serve",
            "--no-grpc",
            "--port",
            str(self.port),
        ]
        self.process = subprocess.Popen(
            [*command, "--log-level", "warning", *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )

    @property
    def session_url(self) -> str:
        """The WebSocket URL of the digits session app."""
        return f"ws://127.0.0.1:{self.port}/sessions/{APP}"

    def output(self) -> str:
        """The tail of what the server printed."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Poll /v2/health/ready until the models are loaded; the seconds it took."""
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"coserve serve exited:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return time.monotonic() - began
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"coserve serve not ready after {timeout:.0f} s:\n{self.output()}")

    async def metrics(self, client: httpx.AsyncClient) -> dict[str, float]:
        """The server's /metrics, parsed."""
        response = await client.get(f"{self.url}/metrics")
        response.raise_for_status()
        return parse_metrics(response.text)

    def rss_mib(self) -> float:
        """The server's resident set size (VmRSS) in MiB."""
        return read_rss_mib(self.process.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process (all its threads) so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within 30 s; the exit status."""
        try:
            if self.process.poll() is None:
                self.process.send_signal(SIGTERM)
            try:
                return self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                return None
        finally:
            self.log.close()


def read_rss_mib(pid: int) -> float:
    """VmRSS of a process from /proc/<pid>/status, in MiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB$", text, re.M)
    if match is None:
        raise RuntimeError(f"no VmRSS for process {pid}")
    return int(match.group(1)) / 1024


class PeakRss:
    """Samples a process's RSS on a background thread and keeps the highest value."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval = pid, interval
        self.peak = read_rss_mib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.peak = max(self.peak, read_rss_mib(self.pid))
            except (OSError, RuntimeError):
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def metric_key(name: str, **labels: str) -> str:
    """The key ``parse_metrics`` gives a sample, labels in Prometheus' (sorted) order."""
    inner = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    return f"{name}{{{inner}}}"


BATCH_SUM = metric_key("coserve_batch_size_sum", model=APP, version="1")
BATCH_COUNT = metric_key("coserve_batch_size_count", model=APP, version="1")
SESSION_METRICS = {
    name: metric_key(f"coserve_sessions_{name}", app=APP)
    for name in (
        "active",
        "created_total",
        "refused_total",
        "errors_total",
        "expired_total",
        "messages_total",
    )
}


async def wait_no_sessions(server: Server, client: httpx.AsyncClient, limit: float = 60) -> float:
    """Wait until coserve_sessions_active{app="digits"} is 0; the seconds it took."""
    began = time.monotonic()
    while time.monotonic() - began < limit:
        if (await server.metrics(client))[SESSION_METRICS["active"]] == 0:
            return time.monotonic() - began
        await asyncio.sleep(0.1)
    raise RuntimeError(f"sessions still active {limit:.0f} s after every client closed")


# -- part A: the client ----------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """What the sessions send: digit images as JSON text, with their labels."""

    images: list[str]  # each image as a JSON array of 8 rows of 8 ints in 0..16
    labels: list[int]
    messages: int  # per session
    window: int  # unanswered messages a session keeps at most

    @classmethod
    def load(cls, messages: int, window: int) -> Workload:
        """scikit-learn's 1,797 digits, encoded once."""
        from sklearn.datasets import load_digits  # type: ignore[import-untyped]

        data = load_digits()
        images = [json.dumps(image.astype(int).tolist()) for image in data.images]
        return cls(images, [int(label) for label in data.target], messages, window)

    def for_session(self, index: int) -> tuple[list[str], list[int]]:
        """Session ``index``'s messages (ids 0, 1, ...) and their labels; sessions differ."""
        picks = [(index * self.messages + k) % len(self.images) for k in range(self.messages)]
        payloads = [f'{{"id":{k},"image":{self.images[p]}}}' for k, p in enumerate(picks)]
        return payloads, [self.labels[p] for p in picks]


@dataclass
class SessionOutcome:
    """What one session saw."""

    latencies: list[float] = field(default_factory=list)  # seconds, send to answer, per image
    turns: list[float] = field(default_factory=list)  # seconds, its turn (see read_answers)
    answered: int = 0  # images answered (first answer per id; further ones count as extra)
    correct: int = 0  # answered digits equal to the label
    out_of_order: int = 0  # answers whose id is not the next one expected
    bad_numbers: int = 0  # answers whose "number" is not this session's digits so far
    extra: int = 0  # answers beyond one per message (seen before the closing command's answer)
    errors: list[str] = field(default_factory=list)
    finished: float = 0.0  # perf_counter() when the last image's answer arrived


async def open_sessions(url: str, count: int, concurrency: int) -> list[ClientConnection]:
    """Open ``count`` sessions, at most ``concurrency`` handshakes at once; all or none."""
    gate = asyncio.Semaphore(concurrency)

    async def open_one() -> ClientConnection:
        async with gate:
            websocket = await connect(url, open_timeout=120, proxy=None, max_queue=None)
            try:
                hello = json.loads(await asyncio.wait_for(websocket.recv(), 60))
                if hello.get("event") != "session" or hello.get("app") != APP:
                    raise RuntimeError(f"unexpected hello {hello!r}")
            except BaseException:
                await websocket.close()
                raise
            return websocket

    results = await asyncio.gather(*(open_one() for _ in range(count)), return_exceptions=True)
    sockets = [item for item in results if isinstance(item, ClientConnection)]
    failures = [item for item in results if not isinstance(item, ClientConnection)]
    if failures:
        await close_sessions(sockets)
        raise RuntimeError(f"{len(failures)} of {count} sessions failed to open: {failures[0]!r}")
    return sockets


async def close_sessions(sockets: Iterable[ClientConnection]) -> int:
    """Close every socket (close handshake included); how many ended up closed."""
    sockets = list(sockets)
    await asyncio.gather(*(websocket.close() for websocket in sockets), return_exceptions=True)
    return sum(websocket.state is State.CLOSED for websocket in sockets)


async def drive_session(
    websocket: ClientConnection, payloads: list[str], labels: list[int], window: int
) -> SessionOutcome:
    """Send the images (at most ``window`` unanswered), read and check one answer for each."""
    outcome = SessionOutcome()
    sent_at = [0.0] * len(payloads)
    credit = asyncio.Semaphore(window)

    async def send_all() -> None:
        for k, payload in enumerate(payloads):
            await credit.acquire()
            sent_at[k] = time.perf_counter()
            await websocket.send(payload)

    sender = asyncio.create_task(send_all())
    try:
        async with asyncio.timeout(120):
            await read_answers(websocket, labels, sent_at, credit, outcome)
            await sender
            await check_no_extra_answers(websocket, outcome)
    except TimeoutError:
        outcome.errors.append(f"timed out with {outcome.answered} answers")
    except Exception as error:
        outcome.errors.append(repr(error))
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    outcome.finished = outcome.finished or time.perf_counter()
    return outcome


async def read_answers(
    websocket: ClientConnection,
    labels: list[int],
    sent_at: list[float],
    credit: asyncio.Semaphore,
    outcome: SessionOutcome,
) -> None:
    """Read one answer per image and check id order, digit and running number.

    Besides send-to-answer latency it records each image's time from its turn: from the later
    of its send and the previous answer, since a session's messages are served one by one.
    """
    seen = [0] * len(labels)
    number = ""
    previous = 0.0
    for expected in range(len(labels)):
        answer = json.loads(await websocket.recv())
        now = time.perf_counter()
        credit.release()
        request = answer.get("id")
        if not isinstance(request, int) or not 0 <= request < len(labels):
            outcome.errors.append(f"answer with unknown id: {answer!r}"[:200])
            continue
        seen[request] += 1
        if seen[request] > 1:
            outcome.extra += 1
            continue
        outcome.answered += 1
        outcome.latencies.append(now - sent_at[request])
        outcome.turns.append(now - max(sent_at[request], previous))
        previous = now
        outcome.out_of_order += request != expected
        if "error" in answer:
            outcome.errors.append(f"id {request}: {answer['error']}")
            continue
        number += str(answer["digit"])
        outcome.correct += answer["digit"] == labels[request]
        outcome.bad_numbers += answer.get("number") != number
    outcome.finished = time.perf_counter()


async def check_no_extra_answers(websocket: ClientConnection, outcome: SessionOutcome) -> None:
    """Send a ``history`` command: answers are in order, so it must be the next one read."""
    await websocket.send('{"id":"end","command":"history"}')
    while True:
        answer = json.loads(await websocket.recv())
        if answer.get("id") == "end":
            return
        outcome.extra += 1


@dataclass
class RoundResult:
    """One round of concurrent sessions, as the client and the server saw it."""

    sessions: int
    messages: int
    answered: int
    out_of_order: int
    bad_numbers: int
    extra: int
    correct: int
    errors: list[str]
    seconds: float
    p50_ms: float
    p99_ms: float
    turn_p50_ms: float
    turn_p99_ms: float
    connect_seconds: float
    closed: int
    mean_batch: float
    batches: int
    created: int
    refused: int
    server_errors: int
    expired: int
    server_messages: int
    client_cpu_us: float
    server_cpu_us: float
    peak_rss_mib: float = 0.0
    rss_after_mib: float = 0.0
    drain_seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Image messages answered per second, from the first send to the last answer."""
        return self.messages / self.seconds if self.seconds else 0.0

    @property
    def accuracy(self) -> float:
        """Share of answered images whose digit is the label."""
        return self.correct / self.messages if self.messages else 0.0


def percentile_ms(seconds: list[float], q: float) -> float:
    """The q-th percentile of durations in seconds, in milliseconds (NaN if none)."""
    return float(np.percentile(seconds, q)) * 1e3 if seconds else float("nan")


def delta(after: dict[str, float], before: dict[str, float], key: str) -> float:
    """How much a counter grew between two /metrics snapshots."""
    return after.get(key, 0.0) - before.get(key, 0.0)


async def run_round(
    server: Server, client: httpx.AsyncClient, workload: Workload, sessions: int, concurrency: int
) -> RoundResult:
    """Open ``sessions`` sessions, run them all at once, close them all; check and measure."""
    before = await server.metrics(client)
    began = time.perf_counter()
    sockets = await open_sessions(server.session_url, sessions, concurrency)
    closed = 0
    try:
        connect_seconds = time.perf_counter() - began
        work = [workload.for_session(index) for index in range(sessions)]
        cpu_server, cpu_client = server.cpu_seconds(), time.process_time()
        start = time.perf_counter()
        outcomes = await asyncio.gather(
            *(
                drive_session(websocket, payloads, labels, workload.window)
                for websocket, (payloads, labels) in zip(sockets, work, strict=True)
            )
        )
        cpu_server = server.cpu_seconds() - cpu_server
        cpu_client = time.process_time() - cpu_client
        served = await server.metrics(client)
    finally:
        closed = await close_sessions(sockets)
    after = await server.metrics(client)
    latencies = [latency for outcome in outcomes for latency in outcome.latencies]
    turns = [turn for outcome in outcomes for turn in outcome.turns]
    messages = sessions * workload.messages
    batches = delta(served, before, BATCH_COUNT)
    return RoundResult(
        sessions=sessions,
        messages=messages,
        answered=sum(outcome.answered for outcome in outcomes),
        out_of_order=sum(outcome.out_of_order for outcome in outcomes),
        bad_numbers=sum(outcome.bad_numbers for outcome in outcomes),
        extra=sum(outcome.extra for outcome in outcomes),
        correct=sum(outcome.correct for outcome in outcomes),
        errors=[error for outcome in outcomes for error in outcome.errors][:20],
        seconds=max(outcome.finished for outcome in outcomes) - start,
        p50_ms=percentile_ms(latencies, 50),
        p99_ms=percentile_ms(latencies, 99),
        turn_p50_ms=percentile_ms(turns, 50),
        turn_p99_ms=percentile_ms(turns, 99),
        connect_seconds=connect_seconds,
        closed=closed,
        mean_batch=delta(served, before, BATCH_SUM) / batches if batches else 0.0,
        batches=int(batches),
        created=int(delta(after, before, SESSION_METRICS["created_total"])),
        refused=int(delta(after, before, SESSION_METRICS["refused_total"])),
        server_errors=int(delta(after, before, SESSION_METRICS["errors_total"])),
        expired=int(delta(after, before, SESSION_METRICS["expired_total"])),
        server_messages=int(delta(after, before, SESSION_METRICS["messages_total"])),
        client_cpu_us=cpu_client / messages * 1e6,
        server_cpu_us=cpu_server / messages * 1e6,
    )


async def measured_round(
    server: Server, client: httpx.AsyncClient, workload: Workload, opts: argparse.Namespace
) -> RoundResult:
    """A round with the server's peak RSS sampled throughout and its RSS once drained."""
    with PeakRss(server.process.pid) as peak:
        result = await run_round(server, client, workload, opts.sessions, opts.connect_concurrency)
        result.drain_seconds = await wait_no_sessions(server, client)
    result.peak_rss_mib = peak.peak
    result.rss_after_mib = server.rss_mib()
    return result


@dataclass
class SessionsReport:
    """Everything part A measured."""

    ready_seconds: float
    baseline_rss_mib: float
    warmup: RoundResult
    rounds: list[RoundResult]
    exit_status: int | None = None


async def sessions_benchmark(server: Server, opts: argparse.Namespace) -> SessionsReport:
    """Warm up with a few sessions, take the baseline RSS, then run the measured rounds."""
    workload = Workload.load(opts.messages, opts.window)
    async with httpx.AsyncClient(timeout=30) as client:
        warmup = await run_round(server, client, workload, opts.warmup_sessions, 8)
        await wait_no_sessions(server, client)
        baseline = server.rss_mib()
        rounds = []
        for number in range(1, opts.rounds + 1):
            result = await measured_round(server, client, workload, opts)
            rounds.append(result)
            print(
                f"round {number}: {result.rate:,.0f} msg/s, mean batch {result.mean_batch:.1f}, "
                f"RSS after {result.rss_after_mib:.1f} MiB",
                file=sys.stderr,
                flush=True,
            )
    return SessionsReport(0.0, baseline, warmup, rounds)


class StoreServer:
    """What ``--session-store`` a run passes, with the redis-server it needs, if any."""

    def __init__(self, store: str, folder: Path) -> None:
        self.store = store
        self.redis: subprocess.Popen[bytes] | None = None
        if store == "off":
            self.args: tuple[str, ...] = ()
        elif store == "sqlite":
            self.args = ("--session-store", f"sqlite:{folder / 'sessions.db'}")
        else:
            port = free_port()
            self.redis = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(folder),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if self.redis.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("redis-server did not start") from None
                    time.sleep(0.05)
            self.args = ("--session-store", f"redis://127.0.0.1:{port}/0")

    def close(self) -> None:
        """Stop the redis-server, if one was started."""
        if self.redis is not None:
            self.redis.terminate()
            self.redis.wait(10)


def run_part_a(opts: argparse.Namespace, store: str = "off") -> SessionsReport:
    """Start the server, run the sessions benchmark on the client loop, stop it with SIGTERM."""
    old, new = raise_fd_limit(opts.sessions + 512)  # the server inherits the raised limit
    if new != old:
        print(f"RLIMIT_NOFILE soft limit raised from {old} to {new}", file=sys.stderr)
    folder = tempfile.TemporaryDirectory()
    backing = StoreServer(store, Path(folder.name))
    try:
        return _run_part_a(opts, backing)
    finally:
        backing.close()
        folder.cleanup()


def _run_part_a(opts: argparse.Namespace, backing: StoreServer) -> SessionsReport:
    print(f"session store: {backing.store}", file=sys.stderr, flush=True)
    server = Server(*backing.args)
    try:
        ready = server.wait_ready()
        print(f"coserve serve ready in {ready:.1f} s", file=sys.stderr, flush=True)
        with asyncio.Runner(loop_factory=LOOPS[opts.client_loop]) as runner:
            report = runner.run(sessions_benchmark(server, opts))
    finally:
        status = server.stop()
    report.ready_seconds, report.exit_status = ready, status
    return report


def round_row(label: str, result: RoundResult) -> str:
    """One Markdown table row for a round."""
    checks = (
        f"{result.answered:,}/{result.messages:,}",
        "yes" if result.out_of_order == 0 and result.bad_numbers == 0 else "**no**",
        str(result.extra),
    )
    return (
        f"| {label} | {result.sessions} | {checks[0]} | {checks[1]} | {checks[2]} "
        f"| {result.accuracy:.2%} | {result.rate:,.0f} | {result.p50_ms:.0f} / {result.p99_ms:.0f} "
        f"| {result.turn_p50_ms:.0f} / {result.turn_p99_ms:.0f} "
        f"| {result.mean_batch:.1f} | {result.created} | {result.closed}/{result.sessions} "
        f"| {result.peak_rss_mib:.1f} | {result.rss_after_mib:.1f} "
        f"| {result.client_cpu_us:.0f} | {result.server_cpu_us:.0f} |"
    )


def print_part_a(report: SessionsReport, opts: argparse.Namespace, store: str = "off") -> bool:
    """Print part A's tables; whether every correctness check passed."""
    rounds = report.rounds
    print(
        f"\n## A. {opts.sessions} concurrent sessions on `coserve serve` (/sessions/{APP}),"
        f" session store {store}\n"
    )
    print(
        f"Each session sends {opts.messages} images (scikit-learn digits, ids 0 to"
        f" {opts.messages - 1}, at most {opts.window} unanswered), reads the answers, then"
        f" sends a `history` command that must be the next answer. Sessions are opened first"
        f" ({opts.connect_concurrency} handshakes at once), then all run together; client event"
        f" loop: {opts.client_loop}. Server ready in {report.ready_seconds:.1f} s; baseline RSS"
        f" after a warm-up of {report.warmup.sessions} sessions:"
        f" **{report.baseline_rss_mib:.1f} MiB**.\n"
    )
    print(
        "| round | sessions | answered | in order | extra answers | accuracy | msg/s "
        "| p50 / p99 ms from send | p50 / p99 ms from its turn | mean batch | created Δ "
        "| sockets closed | peak RSS MiB | RSS after MiB | client CPU µs/msg | server CPU µs/msg |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for number, result in enumerate(rounds, 1):
        print(round_row(str(number), result))
    ok = all(round_ok(result) for result in [report.warmup, *rounds])
    print_a_checks(report, opts, ok)
    return ok


def print_store_costs(sessions: list[tuple[str, SessionsReport]]) -> None:
    """Each store's median msg/s and p99 over its rounds, against the store off."""
    by_store: dict[str, list[RoundResult]] = {}
    for store, report in sessions:
        by_store.setdefault(store, []).extend(report.rounds)
    medians = {
        store: (
            statistics.median(r.rate for r in rounds),
            statistics.median(r.p99_ms for r in rounds),
            statistics.median(r.server_cpu_us for r in rounds),
        )
        for store, rounds in by_store.items()
    }
    base = medians.get("off")
    print("\n## Session store cost (medians over each store's rounds)\n")
    print("| store | rounds | msg/s | p99 ms | server CPU µs/msg | msg/s vs off | p99 vs off |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for store, (rate, p99, cpu) in medians.items():
        ratios = ("", "") if base is None else (f"{rate / base[0]:.2f}x", f"{p99 / base[1]:.2f}x")
        print(
            f"| {store} | {len(by_store[store])} | {rate:,.0f} | {p99:.0f} | {cpu:.0f} "
            f"| {ratios[0]} | {ratios[1]} |"
        )


def round_ok(result: RoundResult) -> bool:
    """Whether a round passed every correctness check."""
    return (
        result.answered == result.messages
        and result.out_of_order == 0
        and result.bad_numbers == 0
        and result.extra == 0
        and not result.errors
        and result.created == result.sessions
        and result.closed == result.sessions
        and result.refused == 0
        and result.server_errors == 0
        and result.server_messages == result.messages + result.sessions
    )


def print_a_checks(report: SessionsReport, opts: argparse.Namespace, ok: bool) -> None:
    """The checks and targets under part A's table."""
    rounds = report.rounds
    batches = [result.mean_batch for result in rounds]
    print("\n| check | result | verdict |")
    print("|---|---|---|")
    print(
        f"| every image answered exactly once (all answered, no extra), in order, with its "
        f"session's own number | "
        f"{'all rounds' if ok else 'see the errors below'} | {'met' if ok else '**failed**'} |"
    )
    print(counters_row(rounds))
    print(
        f"| mean batch of `{APP}` > {TARGET_BATCH:g} | "
        f"{', '.join(f'{b:.1f}' for b in batches)} | "
        f"{'met' if min(batches) > TARGET_BATCH else '**missed**'} |"
    )
    print(rss_row(report))
    print(
        f"\nBatches mix sessions: the session graph's ModelNode keeps one request in flight "
        f"(concurrency 1), each request is one row, and nothing else calls `{APP}` during a "
        f"round, so a batch of B rows holds B different sessions; a mean batch above 1 means "
        f"batches mix sessions. {opts.sessions} sessions fit under the default `--max-sessions` "
        f"({DEFAULT_MAX_SESSIONS}). Latency *from send* runs from sending an image to its "
        f"answer, so it includes the wait behind the session's own earlier images (up to "
        f"{opts.window} in flight, served one at a time); *from its turn* starts at the later of "
        f"the send and the previous answer. RSS is sampled every 50 ms from /proc; *after* is "
        f"read once `coserve_sessions_active` is back to 0. CPU per image: the client and the "
        f"server share the {os.cpu_count()} cores. Server exit status after SIGTERM: "
        f"{report.exit_status}."
    )
    errors = [error for result in [report.warmup, *rounds] for error in result.errors]
    if errors:
        print("\nErrors (first 10):\n")
        for error in errors[:10]:
            print(f"- {error}")


def counters_row(rounds: list[RoundResult]) -> str:
    """The check row for the server's session counters, over every round."""
    seen = {(r.created, r.refused, r.server_errors, r.expired, r.server_messages) for r in rounds}
    described = "; ".join(
        f"created {c:,}, refused {f}, errors {e}, expired {x}, messages {m:,}"
        for c, f, e, x, m in sorted(seen)
    )
    good = all(
        r.created == r.sessions
        and r.refused == r.server_errors == r.expired == 0
        and r.server_messages == r.messages + r.sessions
        for r in rounds
    )
    drained = max(r.drain_seconds for r in rounds)
    return (
        f"| server counters, Δ per round (images + 1 command per session) | {described}; "
        f"`coserve_sessions_active` back to 0 within {drained:.1f} s of the last close | "
        f"{'met' if good else '**failed**'} |"
    )


def rss_row(report: SessionsReport) -> str:
    """The check row for memory: does RSS settle, or grow with every round?"""
    after = [result.rss_after_mib for result in report.rounds]
    first_rise = after[0] - report.baseline_rss_mib
    later = (after[-1] - after[0]) / (len(after) - 1) if len(after) > 1 else float("nan")
    if len(after) < 2:
        verdict = "one round: cannot tell"
    elif later <= 0.1 * max(first_rise, 1.0):
        verdict = "steady"
    else:
        verdict = "**grows per round**"
    return (
        f"| RSS back to a steady level | baseline {report.baseline_rss_mib:.1f} MiB; after "
        f"each round {', '.join(f'{a:.1f}' for a in after)} MiB: round 1 "
        f"{first_rise:+.1f} MiB, then {later:+.1f} MiB per round; peak "
        f"{max(r.peak_rss_mib for r in report.rounds):.1f} MiB | {verdict} |"
    )


# -- part B: graph overhead ------------------------------------------------------------------


class Source(Node):
    """Sends ``count`` signals carrying 0, 1, 2, ..."""

    out: Output[int]

    def __init__(self, count: int) -> None:
        self.count = count

    async def run(self) -> None:
        """Send the numbers, then end (which closes the output)."""
        send = self.out.send
        for number in range(self.count):
            await send(Signal(number, number))


class AddOne(Node):
    """The per-hop work: add 1."""

    inp: Input[int]
    out: Output[int]

    async def run(self) -> None:
        """Pass every message on, plus one."""
        send = self.out.send
        async for signal in self.inp:
            await send(signal.derive(signal.value + 1))


class Counter(Node):
    """The sink: counts and sums what arrives."""

    inp: Input[int]

    def __init__(self) -> None:
        self.count = 0
        self.total = 0

    async def run(self) -> None:
        """Count until the stream ends."""
        async for signal in self.inp:
            self.count += 1
            self.total += signal.value


def expected_total(count: int) -> int:
    """The sum the sink must see: every number plus 3."""
    return count * (count - 1) // 2 + 3 * count


async def graph_pipeline(count: int) -> float:
    """Messages/s through source -> 3 x AddOne -> Counter as a coserve graph."""
    graph = Graph("overhead")
    nodes: list[Node] = [
        graph.add(Source(count)),
        *(graph.add(AddOne(), name=f"add{i}") for i in range(3)),
    ]
    sink = graph.add(Counter())
    for upstream, downstream in zip(nodes, [*nodes[1:], sink], strict=True):
        graph.connect(upstream.outputs["out"], downstream.inputs["inp"])
    began = time.perf_counter()
    async with graph:
        pass
    elapsed = time.perf_counter() - began
    if sink.count != count or sink.total != expected_total(count):
        raise RuntimeError(f"graph pipeline lost messages: {sink.count} of {count}")
    return count / elapsed


_END = object()


async def queue_pipeline(count: int) -> float:
    """Messages/s through the same 5-stage shape, coroutines joined by asyncio.Queue."""
    queues: list[asyncio.Queue[Any]] = [asyncio.Queue(QUEUE_SIZE) for _ in range(4)]
    seen = [0, 0]

    async def source(out: asyncio.Queue[Any]) -> None:
        for number in range(count):
            await out.put(number)
        await out.put(_END)

    async def add_one(inp: asyncio.Queue[Any], out: asyncio.Queue[Any]) -> None:
        while (value := await inp.get()) is not _END:
            await out.put(value + 1)
        await out.put(_END)

    async def counter(inp: asyncio.Queue[Any]) -> None:
        while (value := await inp.get()) is not _END:
            seen[0] += 1
            seen[1] += value

    began = time.perf_counter()
    await asyncio.gather(
        source(queues[0]),
        *(add_one(queues[i], queues[i + 1]) for i in range(3)),
        counter(queues[3]),
    )
    elapsed = time.perf_counter() - began
    if seen != [count, expected_total(count)]:
        raise RuntimeError(f"queue pipeline lost messages: {seen[0]} of {count}")
    return count / elapsed


async def tagged_queue_pipeline(count: int) -> float:
    """The queue pipeline again, carrying each request's id with its value as ``(id, value)``.

    What a hand-wired pipeline must do to answer the right caller; the graph's Signal does it.
    """
    queues: list[asyncio.Queue[Any]] = [asyncio.Queue(QUEUE_SIZE) for _ in range(4)]
    seen = [0, 0]

    async def source(out: asyncio.Queue[Any]) -> None:
        for number in range(count):
            await out.put((number, number))
        await out.put(_END)

    async def add_one(inp: asyncio.Queue[Any], out: asyncio.Queue[Any]) -> None:
        while (item := await inp.get()) is not _END:
            await out.put((item[0], item[1] + 1))
        await out.put(_END)

    async def counter(inp: asyncio.Queue[Any]) -> None:
        while (item := await inp.get()) is not _END:
            seen[0] += 1
            seen[1] += item[1]

    began = time.perf_counter()
    await asyncio.gather(
        source(queues[0]),
        *(add_one(queues[i], queues[i + 1]) for i in range(3)),
        counter(queues[3]),
    )
    elapsed = time.perf_counter() - began
    if seen != [count, expected_total(count)]:
        raise RuntimeError(f"tagged queue pipeline lost messages: {seen[0]} of {count}")
    return count / elapsed


PIPELINES: dict[str, Callable[[int], Coroutine[Any, Any, float]]] = {
    "graph": graph_pipeline,
    "queue": queue_pipeline,
    "tagged": tagged_queue_pipeline,
}


def measure_overhead(loop: str, count: int, repeats: int) -> dict[str, list[float]]:
    """Interleaved runs (graph, queue, graph, ...) on one loop of the given type."""
    rates: dict[str, list[float]] = {name: [] for name in PIPELINES}
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        for pipeline in PIPELINES.values():  # warm-up
            runner.run(pipeline(max(count // 20, 1)))
        for _ in range(repeats):
            for name, pipeline in PIPELINES.items():
                gc.collect()
                rates[name].append(runner.run(pipeline(count)))
    return rates


def run_part_b(opts: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """Part B on every loop type, in turn."""
    results = {}
    for loop in LOOPS:
        results[loop] = measure_overhead(loop, opts.count, opts.repeats)
        graph, queue, _ = (statistics.median(results[loop][name]) for name in PIPELINES)
        print(
            f"{loop}: graph {graph:,.0f} msg/s, queue {queue:,.0f} msg/s",
            file=sys.stderr,
            flush=True,
        )
    return results


def print_part_b(results: dict[str, dict[str, list[float]]], opts: argparse.Namespace) -> None:
    """Print part B's table and verdicts."""
    print("\n## B. coserve.graph overhead in process: a 5-node linear pipeline\n")
    print(
        f"{opts.count:,} messages from a source through three nodes that add 1 to a sink that "
        f"counts (4 hops): a coserve `Graph` (default input capacity 16; each node sends "
        f"`signal.derive(value + 1)`, a new `Signal` per hop, as graph nodes do) vs 5 coroutines "
        f"joined by `asyncio.Queue(maxsize={QUEUE_SIZE})` passing bare ints (the strict baseline; "
        f"the verdict is against it), and the same passing `(id, value)` tuples, as a hand-wired "
        f"pipeline must to answer the right caller. End sentinels. {opts.repeats} interleaved "
        f"repeats per loop, medians; end to end, start to sink done.\n"
    )
    times = "\N{MULTIPLICATION SIGN}"
    print(
        "| loop | coserve graph msg/s | queue (ints) msg/s | queue (id, value) msg/s "
        f"| ints / graph | (id, value) / graph | graph µs/msg | queue µs/msg "
        f"| extra µs per hop | within 1.5{times} |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for loop, rates in results.items():
        graph, queue, tagged = (statistics.median(rates[name]) for name in PIPELINES)
        ratio = queue / graph
        per_hop = (1e6 / graph - 1e6 / queue) / 4
        print(
            f"| {loop} | {graph:,.0f} | {queue:,.0f} | {tagged:,.0f} | {ratio:.2f}{times} "
            f"| {tagged / graph:.2f}{times} | {1e6 / graph:.2f} | {1e6 / queue:.2f} "
            f"| {per_hop:.2f} | {'met' if ratio <= TARGET_RATIO else '**missed**'} |"
        )
    spread = {
        f"{loop} {name}": f"{min(values):,.0f} to {max(values):,.0f}"
        for loop, rates in results.items()
        for name, values in rates.items()
    }
    print("\nRange over repeats: " + "; ".join(f"{k} {v}" for k, v in spread.items()) + ".")


def profile_graph(count: int, top: int = 15) -> str:
    """Profile the graph pipeline on asyncio's loop; the top functions by own time."""
    profiler = cProfile.Profile()
    with asyncio.Runner() as runner:
        profiler.enable()
        runner.run(graph_pipeline(count))
        profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).strip_dirs().sort_stats("tottime").print_stats(top)
    return stream.getvalue()


# -- main ------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--part", choices=("a", "b", "both"), default="both", help="A: sessions; B: overhead"
    )
    parser.add_argument("--sessions", type=int, default=500, help="concurrent sessions per round")
    parser.add_argument("--messages", type=int, default=20, help="images per session")
    parser.add_argument("--window", type=int, default=20, help="unanswered images per session")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of --sessions sessions")
    parser.add_argument(
        "--warmup-sessions", type=int, default=8, help="sessions run before the baseline RSS"
    )
    parser.add_argument("--connect-concurrency", type=int, default=50, help="handshakes at once")
    parser.add_argument(
        "--client-loop", choices=tuple(LOOPS), default="uvloop", help="event loop of the client"
    )
    parser.add_argument(
        "--stores",
        type=lambda text: text.split(","),
        default=["off"],
        help="part A once per session store, in order: off, sqlite, redis (comma-separated)",
    )
    parser.add_argument("--count", type=int, default=200_000, help="part B: messages per run")
    parser.add_argument("--repeats", type=int, default=5, help="part B: runs of each pipeline")
    parser.add_argument("--profile", action="store_true", help="part B: cProfile the graph too")
    parser.add_argument("--output", type=Path, default=RESULTS, help="raw results (JSON)")
    opts = parser.parse_args()
    if not 1 <= opts.sessions <= DEFAULT_MAX_SESSIONS:
        parser.error(f"--sessions must be 1..{DEFAULT_MAX_SESSIONS} (the server's default cap)")
    if not opts.stores or set(opts.stores) - {"off", "sqlite", "redis"}:
        parser.error("--stores takes off, sqlite and redis, comma-separated")
    if min(opts.messages, opts.window, opts.rounds, opts.warmup_sessions, opts.count) < 1:
        parser.error("--messages, --window, --rounds, --warmup-sessions, --count must be >= 1")
    return opts


def main() -> None:
    opts = parse_args()
    began = time.monotonic()
    raw: dict[str, Any] = {"command": shlex.join([sys.executable, *sys.argv])}
    ok = True
    stores = opts.stores if opts.part in ("a", "both") else []
    sessions = [(store, run_part_a(opts, store)) for store in stores]
    overhead = run_part_b(opts) if opts.part in ("b", "both") else None
    profile = profile_graph(opts.count // 4) if opts.profile else None

    print("\n# coserve sessions benchmark\n")
    print("\n".join(machine_lines()))
    for store, report in sessions:
        ok = print_part_a(report, opts, store) and ok
    if sessions:
        raw["sessions"] = [{"store": store, **asdict(report)} for store, report in sessions]
    if len({store for store, _ in sessions}) > 1:
        print_store_costs(sessions)
    if overhead is not None:
        print_part_b(overhead, opts)
        raw["overhead"] = overhead
    if profile is not None:
        print(f"\ncProfile, graph pipeline, {opts.count // 4:,} messages, asyncio loop:\n")
        print("```\n" + profile.strip() + "\n```")
    print(f"\nTotal run time: {time.monotonic() - began:.0f} s.")
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    opts.output.write_text(json.dumps(raw, indent=2) + "\n")
    print(f"wrote {opts.output}", file=sys.stderr)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
