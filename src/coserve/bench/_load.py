"""One load-generating process of ``coserve bench``: closed or open loop, timed into windows.

The coordinator (``_runner``) starts several of these and sends each a :class:`Plan` per step;
the process answers with one :class:`WindowData` per measurement window, then ``done`` when told
to stop. Windows are aligned on ``time.monotonic_ns`` (CLOCK_MONOTONIC on Linux, the same clock
in every process), so the coordinator can merge window *k* of every process.

Open loop (a rate): each request has an intended send time from the arrival process (Poisson
or constant); a 1 ms tick sends every request due within half a tick, on an idle connection, a
new one, or, at the connection cap, as soon as one frees up. Latency is measured from the
intended time ("corrected": no coordinated omission, as in wrk2) and from the actual send
("raw"); a send more than 1 ms late is counted. Closed loop (a concurrency): each slot sends
its next request when the last one is answered, so only raw latency exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from typing import Any, Literal

import numpy as np
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

from coserve.bench._engines import (
    CONNECTION_ERROR,
    SUCCESS,
    TIMEOUT,
    CallTimeoutError,
    Connection,
    ConnectionLostError,
    Connector,
)
from coserve.bench._payload import Body, Target

__all__ = ["LATE_NS", "Plan", "WindowData", "new_histogram", "process_main"]

LATE_NS = 1_000_000
"""A send later than this after its intended time counts as late (perf_analyzer's "delayed")."""
_HIGHEST_US = 3_600_000_000
_TICK_NS = 1_000_000
CLIENT_ERROR = "client-error"


def new_histogram() -> HdrHistogram:
    """Latencies in microseconds, 1 µs to one hour, three significant digits."""
    return HdrHistogram(1, _HIGHEST_US, 3)


@dataclass(frozen=True)
class Plan:
    """What one process does in one step."""

    kind: Literal["closed", "open"]
    start_ns: int
    """Start of window 0; the load begins ``warmup_ns`` before it."""
    warmup_ns: int
    window_ns: int
    timeout_ns: int
    concurrency: int = 0
    """Closed loop: this process's slots."""
    rate_points: tuple[tuple[float, float], ...] = ()
    """Open loop: (seconds from ``start_ns``, requests/s of this process), linear in between."""
    arrival: Literal["poisson", "constant"] = "poisson"
    max_connections: int = 1024
    seed: int = 0


@dataclass
class WindowData:
    """What one process measured in one window (requests counted by when they ended)."""

    index: int
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    raw: bytes = b""
    """Encoded HDR histogram of the answered requests' latency from their actual send (µs)."""
    corrected: bytes = b""
    """The same from their intended send (open loop only)."""
    scheduled: int = 0
    """Open loop: requests whose intended time fell in this window."""
    late: int = 0
    backlog: int = 0
    """Open loop: requests due and not yet sent at the window's end."""
    in_flight: int = 0
    cpu: float = 0.0
    """CPU seconds this process used in the window."""


class _Window:
    __slots__ = ("corrected", "errors", "late", "ok", "raw", "scheduled")

    def __init__(self, open_loop: bool) -> None:
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.raw = new_histogram()
        self.corrected = new_histogram() if open_loop else None
        self.scheduled = 0
        self.late = 0


class _Recorder:
    def __init__(self, plan: Plan) -> None:
        self._start = plan.start_ns
        self._window = plan.window_ns
        self._open = plan.kind == "open"
        self._windows: dict[int, _Window] = {}
        self._taken = -1
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def begin(self) -> None:
        """A request was sent."""
        self.in_flight += 1
        self.idle.clear()

    def end(self) -> None:
        """A request was answered, failed or timed out."""
        self.in_flight -= 1
        if not self.in_flight:
            self.idle.set()

    def _at(self, ns: int) -> _Window | None:
        index = (ns - self._start) // self._window
        if index < 0:
            return None  # warm-up
        # Something recorded after its window was sent counts in the next one, not nowhere.
        index = max(index, self._taken + 1)
        window = self._windows.get(index)
        if window is None:
            window = self._windows[index] = _Window(self._open)
        return window

    def record(self, key: str, intended: int, sent: int, end: int) -> None:
        window = self._at(end)
        if window is None:
            return
        if key in SUCCESS:
            window.ok += 1
            window.raw.record_value(max(1, (end - sent) // 1000))
            if window.corrected is not None:
                # A send up to half a tick early counts from the send (the server saw it then).
                window.corrected.record_value(max(1, (end - min(intended, sent)) // 1000))
        else:
            window.errors[key] = window.errors.get(key, 0) + 1

    def scheduled(self, intended: int) -> None:
        window = self._at(intended)
        if window is not None:
            window.scheduled += 1

    def sent_late(self, intended: int) -> None:
        """A request left more than ``LATE_NS`` after its intended time."""
        window = self._at(intended)
        if window is not None:
            window.late += 1

    def take(self, index: int) -> WindowData:
        self._taken = index
        window = self._windows.pop(index, None)
        data = WindowData(index, in_flight=self.in_flight)
        if window is not None:
            data.ok = window.ok
            data.errors = window.errors
            data.raw = window.raw.encode() if window.ok else b""
            if window.corrected is not None and window.ok:
                data.corrected = window.corrected.encode()
            data.scheduled = window.scheduled
            data.late = window.late
        return data


async def _sleep_until(ns: int) -> None:
    """Sleep until ``time.monotonic_ns() >= ns`` (uvloop's timers may fire a little early)."""
    while (left := ns - time.monotonic_ns()) > 0:  # noqa: ASYNC110 (a clock, not an event)
        await asyncio.sleep(max(left / 1e9, 0.0005))


async def _ask(connection: Connection, index: int) -> str:
    """Send request variant ``index``; its status key, whatever happens."""
    try:
        return await connection.call(index)
    except CallTimeoutError:
        return TIMEOUT
    except ConnectionLostError:
        return CONNECTION_ERROR
    except Exception:  # a client library's own failure: counted, not fatal
        connection.close()
        return CLIENT_ERROR


class _Step:
    """One step in one process: its connections, its load, its windows."""

    def __init__(self, plan: Plan, connector: Connector, pipe: Pipe, offset: int) -> None:
        self.plan = plan
        self._connector = connector
        self._pipe = pipe
        self._offset = offset
        self._recorder = _Recorder(plan)
        self._stop = asyncio.Event()
        self._connections: set[Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._backlog: deque[int] = deque()
        self._next_index = offset
        self._pool: dict[int, asyncio.Task[Connection]] = {}
        self._opens: set[asyncio.Task[Connection]] = set()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        """Run until stopped; returns the number of requests abandoned at the end."""
        loop = asyncio.get_running_loop()
        owned = [loop.create_task(self._windows()), loop.create_task(self._watchdog())]
        if self.plan.kind == "closed":
            owned += [loop.create_task(self._slot(i)) for i in range(self.plan.concurrency)]
        else:
            owned.append(loop.create_task(self._dispatch()))
        await self._stop.wait()
        # Let what is in flight finish (it may still land in a measured window), then go.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._recorder.idle.wait(), self.plan.timeout_ns / 1e9)
        abandoned = self._recorder.in_flight
        pending: list[asyncio.Task[Any]] = [*owned, *self._tasks, *self._opens]
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, ConnectionLostError):
                await task
        for connection in self._connections:
            connection.close()
        return abandoned

    async def _windows(self) -> None:
        index = 0
        await _sleep_until(self.plan.start_ns)  # the warm-up's CPU is not window 0's
        cpu = time.process_time()
        while True:
            await _sleep_until(self.plan.start_ns + (index + 1) * self.plan.window_ns)
            data = self._recorder.take(index)
            now_cpu = time.process_time()
            data.cpu, cpu = now_cpu - cpu, now_cpu
            data.backlog = len(self._backlog)
            self._pipe.send(("window", data))
            index += 1

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            sent_before = time.monotonic_ns() - self.plan.timeout_ns
            for connection in list(self._connections):
                connection.expire(sent_before)

    async def _open_connection(self) -> Connection:
        connection = await self._connector.open()
        self._connections.add(connection)
        return connection

    def _forget(self, connection: Connection) -> None:
        self._connections.discard(connection)

    # Closed loop ---------------------------------------------------------------------------

    async def _slot(self, slot: int) -> None:
        recorder = self._recorder
        capacity = self._connector.capacity
        shared = capacity > 1
        index = self._offset + slot
        connection: Connection | None = None
        while not self._stop.is_set():
            if connection is None or connection.closed:
                if connection is not None:
                    self._forget(connection)
                try:
                    connection = await (
                        self._shared(slot // capacity) if shared else self._open_connection()
                    )
                except ConnectionLostError:
                    now = time.monotonic_ns()
                    recorder.record(CONNECTION_ERROR, now, now, now)
                    connection = None
                    await asyncio.sleep(0.05)
                    continue
            sent = time.monotonic_ns()
            recorder.begin()
            key = await _ask(connection, index)
            recorder.end()
            recorder.record(key, sent, sent, time.monotonic_ns())
            index += 1

    def _shared(self, number: int) -> asyncio.Task[Connection]:
        """The multiplexed connection ``number``, opened by the first slot that needs it."""
        task = self._pool.get(number)
        if task is None or (task.done() and (task.exception() or task.result().closed)):
            task = self._pool[number] = asyncio.get_running_loop().create_task(
                self._open_connection()
            )
            self._opens.add(task)  # cancelled at stop if still opening
            task.add_done_callback(self._opens.discard)
        return task

    # Open loop -----------------------------------------------------------------------------

    def _rate(self, t: float) -> float:
        points = self.plan.rate_points
        if t <= points[0][0]:
            return points[0][1]
        for (t0, r0), (t1, r1) in itertools.pairwise(points):
            if t < t1:
                return r0 + (r1 - r0) * (t - t0) / (t1 - t0) if t1 > t0 else r1
        return points[-1][1]

    async def _dispatch(self) -> None:
        plan = self.plan
        rng = np.random.default_rng(plan.seed)
        gaps: Iterator[float] = iter(())
        self._available: list[Connection] = []
        self._load: dict[Connection, int] = {}
        self._opening = 0
        for _ in range(min(4, plan.max_connections)):
            self._grow()
        intended = self._first_arrival(plan.start_ns - plan.warmup_ns)
        while not self._stop.is_set():
            now = time.monotonic_ns()
            # Send what is due within half a tick: each send is then within about half a
            # millisecond of its intended time, early or late, rather than always late.
            horizon = now + _TICK_NS // 2
            while intended <= horizon:
                self._fire(intended)
                rate = self._rate((intended - plan.start_ns) / 1e9)
                if plan.arrival == "constant":
                    gap = 1.0
                else:
                    drawn = next(gaps, None)
                    if drawn is None:
                        gaps = iter(rng.exponential(1.0, 4096).tolist())
                        drawn = next(gaps)
                    gap = drawn
                intended = self._first_arrival(intended + max(1, int(gap * 1e9 / rate)))
            # The tick: never less than 1 ms. uvloop's timers count whole milliseconds, so a
            # shorter sleep returns at once and the loop would spin a core.
            wake = intended - _TICK_NS // 2
            await asyncio.sleep(max(_TICK_NS, wake - time.monotonic_ns()) / 1e9)

    def _first_arrival(self, at: int) -> int:
        """``at``, or the first millisecond after it where the profile's rate is above 0.

        Past the profile's last point a rate of 0 stays 0: then an hour on (the step is
        stopped long before).
        """
        last = self.plan.start_ns + int(self.plan.rate_points[-1][0] * 1e9)
        while self._rate((at - self.plan.start_ns) / 1e9) <= 0:
            if at > last:
                return at + 3600 * 10**9
            at += _TICK_NS
        return at

    def _fire(self, intended: int) -> None:
        self._recorder.scheduled(intended)
        # An idle connection the server closed (its keep-alive timeout) is dropped here.
        while self._available and self._available[-1].closed:
            self._drop(self._available.pop())
        if self._available:
            self._start(self._available[-1], intended)
        else:
            self._backlog.append(intended)
            if self._opening < 1 + len(self._backlog) // 8:
                self._grow()

    def _grow(self) -> None:
        if len(self._load) + self._opening >= self.plan.max_connections:
            return
        self._opening += 1
        task = asyncio.get_running_loop().create_task(self._connect())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self) -> None:
        try:
            connection = await self._open_connection()
        except ConnectionLostError:
            self._opening -= 1
            if self._backlog:  # the request waiting for this connection fails
                self._backlog.popleft()
                now = time.monotonic_ns()
                self._recorder.record(CONNECTION_ERROR, now, now, now)
            await asyncio.sleep(0.05)
            return
        self._opening -= 1
        self._load[connection] = 0
        self._available.append(connection)
        self._drain(connection)

    def _drop(self, connection: Connection) -> None:
        self._forget(connection)
        self._load.pop(connection, None)
        if self._backlog or not self._load:
            self._grow()

    def _drain(self, connection: Connection) -> None:
        while self._backlog and connection in self._available:
            self._start(connection, self._backlog.popleft())

    def _start(self, connection: Connection, intended: int) -> None:
        load = self._load[connection] + 1
        self._load[connection] = load
        if load >= self._connector.capacity:
            self._available.remove(connection)
        index = self._next_index
        self._next_index += 1
        self._recorder.begin()
        task = asyncio.get_running_loop().create_task(self._call(connection, index, intended))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(self, connection: Connection, index: int, intended: int) -> None:
        sent = time.monotonic_ns()
        if sent - intended > LATE_NS:
            self._recorder.sent_late(intended)
        key = await _ask(connection, index)
        self._recorder.end()
        self._recorder.record(key, intended, sent, time.monotonic_ns())
        if connection.closed:
            if connection in self._available:
                self._available.remove(connection)
            self._drop(connection)
            return
        load = self._load[connection] - 1
        self._load[connection] = load
        if load == self._connector.capacity - 1:
            self._available.append(connection)
        self._drain(connection)


async def _serve(pipe: Pipe, target: Target, bodies: Sequence[Body], number: int) -> None:
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[Any] = asyncio.Queue()

    def read() -> None:
        try:
            commands.put_nowait(pipe.recv())
        except (EOFError, OSError):  # the coordinator is gone: stop, do not spin on the fd
            loop.remove_reader(pipe.fileno())
            commands.put_nowait(("exit",))

    loop.add_reader(pipe.fileno(), read)
    pipe.send(("ready", number))
    step: _Step | None = None
    runner: asyncio.Task[int] | None = None
    while True:
        command = await commands.get()
        if command[0] == "step":
            plan: Plan = command[1]
            connector = Connector(target, bodies, plan.timeout_ns / 1e9)
            step = _Step(plan, connector, pipe, offset=number * 7919)
            runner = loop.create_task(step.run())
        elif command[0] == "stop" and step is not None and runner is not None:
            step.stop()
            abandoned = await runner
            pipe.send(("done", abandoned))
            step = runner = None
        elif command[0] == "exit":
            return


def process_main(
    pipe: Pipe, target: Target, bodies: Sequence[Body], number: int, cpus: Sequence[int]
) -> None:
    """Entry point of one load process (multiprocessing ``spawn``)."""
    import os

    if cpus:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, cpus)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(_serve(pipe, target, bodies, number))
    except Exception as error:
        with contextlib.suppress(OSError):
            pipe.send(("error", f"{type(error).__name__}: {error}"))
    except KeyboardInterrupt:
        pass
