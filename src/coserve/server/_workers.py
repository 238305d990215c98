"""Several worker processes behind one port: ``coserve serve --workers N``.

One event loop drives one core at most (the GIL), and under load a single coserve process
leaves about a third of a 2-core machine idle (benchmarks/README.md). With ``--workers N`` the
command becomes a supervisor: it starts N copies of the server, each with its own models,
batchers and sessions, all listening on the same address with ``SO_REUSEPORT`` so that the
kernel spreads connections across them. The supervisor loads no model and serves nothing itself.

- **Metrics.** Every worker also listens on a private Unix socket in the supervisor's runtime
  folder. ``/metrics`` on any worker gathers ``/metrics?local=1`` from every worker over those
  sockets and labels each series with ``worker="i"``; ``?local=1`` asks one worker only.
- **Start-up.** A worker marks itself ready (a file in the runtime folder) once its models are
  loaded. A worker that exits before that is a start-up failure: the supervisor stops the others
  and exits 1.
- **Crashes.** A ready worker that dies is replaced, at most ``MAX_RESTARTS`` times in
  ``RESTART_PERIOD`` seconds; beyond that the supervisor stops everything and exits 1.
- **Shutdown.** SIGTERM or SIGINT to the supervisor sends SIGTERM to every worker; each drains its
  accepted requests within ``--graceful-timeout`` as a single server does. The supervisor exits 0
  when every worker has exited 0. A second signal tells the workers to quit without draining.
  Workers run in sessions of their own, so a terminal's Ctrl+C reaches only the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "MAX_RESTARTS",
    "RESTART_PERIOD",
    "WorkerInfo",
    "bind",
    "bind_unix",
    "gather_metrics",
    "local_request",
    "run_supervisor",
]

logger = logging.getLogger("coserve.server")

MAX_RESTARTS = 5
"""Crashed workers replaced within ``RESTART_PERIOD`` seconds before the supervisor gives up."""
RESTART_PERIOD = 60.0
_STOP_MARGIN = 15.0  # seconds past --graceful-timeout before a worker is killed
_SUPERVISOR_PID = "COSERVE_SUPERVISOR_PID"


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """Who a worker process is: its index, how many there are, and the shared runtime folder."""

    index: int
    count: int
    directory: Path

    def socket_path(self, index: int | None = None) -> Path:
        """The private Unix socket of worker ``index`` (default: this one)."""
        return self.directory / f"worker-{self.index if index is None else index}.sock"

    def ready_path(self, index: int | None = None) -> Path:
        """The file a worker creates once its models are loaded."""
        return self.directory / f"ready-{self.index if index is None else index}"

    def mark_ready(self) -> None:
        """Tell the supervisor that this worker has started."""
        self.ready_path().touch()


def bind(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A TCP socket bound to the address, not yet listening.

    uvicorn starts listening on it once the models are loaded, so until then connections are
    refused rather than left waiting (and with ``reuse_port`` a restarting worker takes no
    connections while it loads); binding first reports a taken address at once.

    Raises:
        OSError: The address is in use (by something that does not share it) or not available.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def bind_unix(path: Path) -> socket.socket:
    """A Unix socket bound at ``path`` (replacing a stale one left by a crashed worker)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
    except BaseException:
        sock.close()
        raise
    return sock


def die_with_parent() -> None:
    """Ask Linux to send this worker SIGTERM if its supervisor dies (no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    supervisor = os.environ.get(_SUPERVISOR_PID)
    if supervisor is not None and os.getppid() != int(supervisor):
        # The supervisor died before the request above took effect: nobody would stop us.
        raise SystemExit("the supervisor of this worker has already exited")


# -- metrics across workers -----------------------------------------------------------------


async def local_request(
    path: Path,
    method: str,
    target: str,
    body: bytes = b"",
    *,
    timeout: float,  # noqa: ASYNC109 - one deadline for the whole exchange
) -> tuple[int, bytes] | None:
    """One HTTP/1.0 request to a worker over its Unix socket: (status, body), or None.

    None when the worker does not answer in time, or not in HTTP (restarting, say).
    """
    head = f"{method} {target} HTTP/1.0\r\nHost: coserve-worker\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(str(path))
            try:
                writer.write(head.encode() + b"\r\n" + body)
                response = await reader.read()  # HTTP/1.0: the worker closes when done
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return None
    headers, _, answer = response.partition(b"\r\n\r\n")
    parts = headers.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        return None
    if b"transfer-encoding: chunked" in headers.lower():  # not read here; every answer has a length
        return None
    return int(parts[1]), answer


async def _fetch_local_metrics(path: Path, timeout: float) -> bytes | None:  # noqa: ASYNC109 - one deadline for the whole exchange
    """``GET /metrics?local=1`` over a worker's Unix socket; None if it does not answer."""
    answer = await local_request(path, "GET", "/metrics?local=1", timeout=timeout)
    return answer[1] if answer is not None and answer[0] == 200 else None


class _Families:
    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> list[Any]:
        return self.families


async def gather_metrics(worker: WorkerInfo, own: bytes, *, timeout: float = 5.0) -> bytes:  # noqa: ASYNC109 - per sibling
    """Every worker's metrics in one exposition, each series labelled with its ``worker``.

    A worker that does not answer in time (restarting, say) is left out of this scrape.
    """
    siblings = [i for i in range(worker.count) if i != worker.index]
    answers = await asyncio.gather(
        *(_fetch_local_metrics(worker.socket_path(i), timeout) for i in siblings)
    )
    texts = {worker.index: own}
    texts.update((i, body) for i, body in zip(siblings, answers, strict=True) if body is not None)
    merged: dict[str, Any] = {}
    for index in sorted(texts):
        label = str(index)
        for family in text_string_to_metric_families(texts[index].decode()):
            samples = [s._replace(labels={**s.labels, "worker": label}) for s in family.samples]
            if family.name in merged:
                merged[family.name].samples.extend(samples)
            else:
                family.samples = samples
                merged[family.name] = family
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(merged.values())))
    return generate_latest(registry)


# -- the supervisor -------------------------------------------------------------------------


class _Supervisor:
    def __init__(self, argv: Sequence[str], count: int, graceful_timeout: float) -> None:
        self.argv = list(argv)
        self.count = count
        self.graceful_timeout = graceful_timeout
        self.directory = Path(tempfile.mkdtemp(prefix="coserve-workers-"))
        self.info = WorkerInfo(0, count, self.directory)
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self.waits: dict[int, asyncio.Task[int]] = {}
        self.restarts: deque[float] = deque()
        self.failed = False

    async def spawn(self, index: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.info.ready_path(index).unlink()
        command = [
            sys.executable,
            "-m",
            "coserve.cli",
            *self.argv,
            "--worker-index",
            str(index),
            "--worker-dir",
            str(self.directory),
        ]
        # A session of its own: a terminal's Ctrl+C reaches the supervisor only, which then
        # sends each worker one SIGTERM (uvicorn takes SIGINT after SIGTERM as "force quit").
        process = await asyncio.create_subprocess_exec(
            *command,
            start_new_session=True,
            env={**os.environ, _SUPERVISOR_PID: str(os.getpid())},
        )
        self.processes[index] = process
        self.waits[index] = asyncio.ensure_future(process.wait())
        logger.info("worker %d started (pid %d)", index, process.pid)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_signal() -> None:
            if stop.is_set():  # asked twice: stop draining, quit now
                logger.warning("second signal: telling the workers to quit without draining")
                self.signal_workers(signal.SIGINT)
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        stopping = asyncio.ensure_future(stop.wait())
        try:
            for index in range(self.count):
                await self.spawn(index)
            while not stop.is_set():
                await asyncio.wait(
                    [stopping, *self.waits.values()], return_when=asyncio.FIRST_COMPLETED
                )
                for index, wait in list(self.waits.items()):
                    if wait.done() and not stop.is_set():
                        await self.exited(index, wait.result(), stop)
            return await self.shut_down()
        finally:
            stopping.cancel()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            for process in self.processes.values():  # only on an error path: none left running
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            shutil.rmtree(self.directory, ignore_errors=True)

    async def exited(self, index: int, code: int, stop: asyncio.Event) -> None:
        """A worker ended while the supervisor was not stopping: replace it, or give up."""
        del self.waits[index]
        del self.processes[index]
        if not self.info.ready_path(index).exists():
            logger.error("worker %d failed to start (exit status %d); stopping", index, code)
            self.failed = True
            stop.set()
            return
        now = time.monotonic()
        self.restarts.append(now)
        while self.restarts and self.restarts[0] <= now - RESTART_PERIOD:
            self.restarts.popleft()
        if len(self.restarts) > MAX_RESTARTS:
            logger.error(
                "worker %d exited (status %d): more than %d restarts in %g s; stopping",
                index,
                code,
                MAX_RESTARTS,
                RESTART_PERIOD,
            )
            self.failed = True
            stop.set()
            return
        logger.error("worker %d exited unexpectedly (status %d); starting a new one", index, code)
        await self.spawn(index)

    def signal_workers(self, sig: int) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(sig)

    async def shut_down(self) -> int:
        """SIGTERM every worker, wait for their drains, kill whatever outlives the deadline."""
        self.signal_workers(signal.SIGTERM)
        waits = list(self.waits.values())
        if waits:
            _, late = await asyncio.wait(waits, timeout=self.graceful_timeout + _STOP_MARGIN)
            for index, process in self.processes.items():
                if process.returncode is None:
                    logger.error("worker %d did not stop in time; killing it", index)
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            if late:
                await asyncio.wait(late)
        codes = {index: wait.result() for index, wait in self.waits.items()}
        # A worker still starting has no handler yet, so the SIGTERM ends it at once; it had
        # accepted nothing, so that is a clean stop too.
        bad = {
            index: code
            for index, code in codes.items()
            if code != 0
            and not (code == -signal.SIGTERM and not self.info.ready_path(index).exists())
        }
        if bad:
            logger.error("workers exited with errors: %s", bad)
        else:
            logger.info("all workers stopped")
        return 1 if self.failed or bad else 0


def run_supervisor(argv: Sequence[str], count: int, graceful_timeout: float) -> int:
    """Run ``count`` workers of ``coserve`` with ``argv`` until SIGTERM/SIGINT; exit status."""
    return asyncio.run(_Supervisor(argv, count, graceful_timeout).run())
