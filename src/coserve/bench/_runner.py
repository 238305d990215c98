"""The coordinator of ``coserve bench``: load processes, measurement windows, stability.

A step (one concurrency, one rate, or one load profile) is sent to every load process
(``_load``) with a common start time. At each window boundary the coordinator snapshots the
server's ``/metrics`` and merges the processes' windows. A step is **stable** when its last
``stable_windows`` windows agree within ``tolerance`` in throughput and mean latency
(perf_analyzer's rule: max / min ≤ 1 + tolerance); it ends when stable, or unstable after
``max_windows``. Its figures are those of the last ``stable_windows`` windows, client side and
server side alike.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from multiprocessing.connection import wait
from typing import Any, Literal

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

from coserve._exceptions import CoserveError
from coserve.batching._target import LatencyTarget
from coserve.bench._load import Plan, WindowData, new_histogram, process_main
from coserve.bench._payload import Body, Target
from coserve.bench._server_stats import ServerSnapshot, ServerWindow, difference, scrape

__all__ = ["BenchError", "LoadRunner", "Step", "StepResult", "WindowPolicy", "WindowStats"]


class BenchError(CoserveError):
    """The load could not be run: a load process failed, or the target cannot be reached."""


@dataclass(frozen=True)
class Step:
    """One point of a run."""

    kind: Literal["closed", "open"]
    concurrency: int = 0
    rate: float = 0.0
    """Open loop at a constant rate (requests/s, all processes together)."""
    rate_points: tuple[tuple[float, float], ...] = ()
    """Open loop following a profile: (seconds, requests/s), linear in between."""
    arrival: Literal["poisson", "constant"] = "poisson"
    max_connections: int = 1024

    @property
    def label(self) -> str:
        """``c=16``, ``rate=500/s`` or ``profile``."""
        if self.kind == "closed":
            return f"c={self.concurrency}"
        if self.rate_points:
            return "profile"
        return f"rate={self.rate:g}/s"


@dataclass(frozen=True)
class WindowPolicy:
    """How long a step is measured."""

    window: float = 2.0
    warmup: float = 2.0
    stable_windows: int = 3
    max_windows: int = 10
    tolerance: float = 0.10
    fixed_windows: int | None = None
    """Measure exactly this many windows and judge no stability (load profiles)."""


@dataclass
class WindowStats:
    """Every process's window *k*, merged."""

    index: int
    seconds: float
    ok: int
    errors: dict[str, int]
    raw: HdrHistogram
    corrected: HdrHistogram | None
    scheduled: int
    late: int
    backlog: int
    cpu: list[float]

    @property
    def throughput(self) -> float:
        """Answered requests per second."""
        return self.ok / self.seconds

    @property
    def latency(self) -> HdrHistogram:
        """The latency that counts: corrected in open loop, raw in closed loop."""
        return self.corrected if self.corrected is not None else self.raw

    @property
    def mean_ms(self) -> float:
        """Mean latency that counts, in milliseconds."""
        return float(self.latency.get_mean_value()) / 1e3 if self.ok else 0.0


def _merge(windows: Sequence[WindowData], seconds: float, open_loop: bool) -> WindowStats:
    raw = new_histogram()
    corrected = new_histogram() if open_loop else None
    errors: dict[str, int] = {}
    for data in windows:
        if data.raw:
            raw.decode_and_add(data.raw)
        if corrected is not None and data.corrected:
            corrected.decode_and_add(data.corrected)
        for key, count in data.errors.items():
            errors[key] = errors.get(key, 0) + count
    return WindowStats(
        index=windows[0].index,
        seconds=seconds,
        ok=sum(data.ok for data in windows),
        errors=errors,
        raw=raw,
        corrected=corrected,
        scheduled=sum(data.scheduled for data in windows),
        late=sum(data.late for data in windows),
        backlog=sum(data.backlog for data in windows),
        cpu=[data.cpu for data in windows],
    )


PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def latency_summary(histogram: HdrHistogram) -> dict[str, float]:
    """p50, p90, p99, p99.9, max and mean, in milliseconds."""
    if histogram.get_total_count() == 0:
        return {}
    summary = {f"p{p:g}": histogram.get_value_at_percentile(p) / 1e3 for p in PERCENTILES}
    summary["max"] = histogram.get_max_value() / 1e3
    summary["mean"] = float(histogram.get_mean_value()) / 1e3
    return summary


def statistic_ms(histogram: HdrHistogram, target: LatencyTarget) -> float:
    """The statistic ``target`` bounds, in milliseconds (inf when nothing was answered)."""
    if histogram.get_total_count() == 0:
        return float("inf")
    if target.percentile is None:
        return float(histogram.get_mean_value()) / 1e3
    if target.percentile == 100:
        return float(histogram.get_max_value()) / 1e3
    return float(histogram.get_value_at_percentile(target.percentile)) / 1e3


def count_within(histogram: HdrHistogram, limit_s: float) -> int:
    """Requests answered within ``limit_s`` (for goodput)."""
    limit_us = limit_s * 1e6
    within = 0
    for item in histogram.get_recorded_iterator():
        if item.value_iterated_to <= limit_us:
            within += item.count_at_value_iterated_to
    return within


@dataclass
class StepResult:
    """One step's measurement."""

    step: Step
    windows: list[WindowStats]
    measured: list[WindowStats]
    stable: bool
    server: ServerWindow | None
    server_note: str | None = None
    abandoned: int = 0
    raw: HdrHistogram = field(default_factory=new_histogram)
    corrected: HdrHistogram | None = None

    def __post_init__(self) -> None:
        open_loop = self.step.kind == "open"
        self.corrected = new_histogram() if open_loop else None
        for window in self.measured:
            self.raw.add(window.raw)
            if self.corrected is not None and window.corrected is not None:
                self.corrected.add(window.corrected)

    @property
    def seconds(self) -> float:
        """Length of the measured windows."""
        return sum(window.seconds for window in self.measured)

    @property
    def ok(self) -> int:
        """Requests answered with success in the measured windows."""
        return sum(window.ok for window in self.measured)

    @property
    def errors(self) -> dict[str, int]:
        """Failed requests by status key."""
        errors: dict[str, int] = {}
        for window in self.measured:
            for key, count in window.errors.items():
                errors[key] = errors.get(key, 0) + count
        return errors

    @property
    def throughput(self) -> float:
        """Answered requests per second."""
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def offered(self) -> float | None:
        """Open loop: requests per second the arrival process asked for."""
        if self.step.kind != "open":
            return None
        return sum(window.scheduled for window in self.measured) / self.seconds

    @property
    def completed_rate(self) -> float:
        """Requests per second that got an answer, successful or not."""
        return (self.ok + sum(self.errors.values())) / self.seconds if self.seconds else 0.0

    @property
    def rate_achieved(self) -> bool:
        """Open loop: whether successful answers kept up with the offered rate (within 5%).

        A request refused (503) or failed does not count: a server that sheds load has not
        served the rate it was offered.
        """
        offered = self.offered
        return offered is None or self.throughput >= 0.95 * offered

    @property
    def late_fraction(self) -> float:
        """Open loop: the share of sends more than 1 ms after their intended time."""
        scheduled = sum(window.scheduled for window in self.measured)
        return sum(window.late for window in self.measured) / scheduled if scheduled else 0.0

    @property
    def latency(self) -> HdrHistogram:
        """The latency that counts: corrected in open loop, raw in closed loop."""
        return self.corrected if self.corrected is not None else self.raw

    @property
    def client_cpu_us(self) -> float | None:
        """The load generator's CPU per request, in microseconds."""
        requests = self.ok + sum(self.errors.values())
        cpu = sum(sum(window.cpu) for window in self.measured)
        return cpu / requests * 1e6 if requests else None

    @property
    def client_busiest(self) -> float:
        """The busiest load process's CPU use (1.0 is one core, all the time)."""
        if not self.measured:
            return 0.0
        processes = len(self.measured[0].cpu)
        return max(
            sum(window.cpu[i] for window in self.measured) / self.seconds for i in range(processes)
        )

    def goodput(self, target: LatencyTarget) -> float:
        """Requests per second answered within ``target``'s bound."""
        return count_within(self.latency, target.limit) / self.seconds if self.seconds else 0.0

    def meets(self, targets: Sequence[LatencyTarget]) -> bool:
        """Whether every target holds, nothing failed, and the offered rate was kept up."""
        return (
            self.ok > 0
            and not self.errors
            and self.rate_achieved
            and all(statistic_ms(self.latency, t) <= t.limit * 1e3 for t in targets)
        )


class LoadRunner:
    """The load processes of one run, reused for every step."""

    def __init__(
        self,
        target: Target,
        bodies: Sequence[Body],
        *,
        processes: int,
        timeout: float,
        metrics_url: str | None,
        cpus: Sequence[int] = (),
    ) -> None:
        self.target = target
        self._timeout = timeout
        self._metrics_url = metrics_url
        self._metrics_note: str | None = None
        context = multiprocessing.get_context("spawn")
        self._pipes: list[Pipe] = []
        self._processes: list[Any] = []
        for number in range(processes):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=process_main,
                args=(theirs, target, list(bodies), number, list(cpus)),
                name=f"coserve-bench-{number}",
                daemon=True,
            )
            process.start()
            theirs.close()
            self._pipes.append(ours)
            self._processes.append(process)
        self._steps = 0
        # Each process says when it is ready (imports done), so a step's start is not missed.
        deadline = time.monotonic() + 60.0
        for pipe in self._pipes:
            kind, _ = self._receive(pipe, deadline)
            if kind != "ready":
                raise BenchError(f"a load process sent {kind} before it was ready")

    def close(self) -> None:
        """Stop the load processes."""
        for pipe in self._pipes:
            with contextlib.suppress(OSError):
                pipe.send(("exit",))
        for process in self._processes:
            process.join(5)
            if process.is_alive():
                process.kill()
        for pipe in self._pipes:
            pipe.close()

    def __enter__(self) -> LoadRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _snapshot(self) -> ServerSnapshot | None:
        if self._metrics_url is None or self._metrics_note is not None:
            return None
        try:
            return scrape(self._metrics_url, self.target.model, self.target.version)
        except (OSError, ValueError) as error:
            self._metrics_note = f"no server statistics: {error}"
            return None

    def _plans(self, step: Step, policy: WindowPolicy, start_ns: int) -> list[Plan]:
        count = len(self._pipes)
        plans = []
        for number in range(count):
            share = 1.0 / count
            plans.append(
                Plan(
                    kind=step.kind,
                    start_ns=start_ns,
                    warmup_ns=int(policy.warmup * 1e9),
                    window_ns=int(policy.window * 1e9),
                    timeout_ns=int(self._timeout * 1e9),
                    concurrency=step.concurrency // count + (number < step.concurrency % count),
                    rate_points=tuple(
                        (t, rate * share) for t, rate in (step.rate_points or ((0.0, step.rate),))
                    ),
                    arrival=step.arrival,
                    max_connections=max(1, step.max_connections // count),
                    seed=self._steps * 1000 + number,
                )
            )
        return plans

    def _receive(self, pipe: Pipe, deadline: float) -> Any:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not wait([pipe], left):
                raise BenchError("a load process stopped answering")
            try:
                message = pipe.recv()
            except EOFError:
                raise BenchError("a load process exited") from None
            if message[0] == "error":
                raise BenchError(f"a load process failed: {message[1]}")
            return message

    def run(
        self,
        step: Step,
        policy: WindowPolicy,
        on_window: Callable[[Step, list[WindowStats], bool | None], None] | None = None,
    ) -> StepResult:
        """Measure one step; ``on_window(step, windows, stable)`` is called after each window."""
        self._steps += 1
        self._metrics_note = None  # one failed scrape does not blank every later step
        window_ns = int(policy.window * 1e9)
        start_ns = time.monotonic_ns() + int((policy.warmup + 0.2) * 1e9)
        for pipe, plan in zip(self._pipes, self._plans(step, policy, start_ns), strict=True):
            pipe.send(("step", plan))
        _sleep_until(start_ns)
        snapshots = {0: self._snapshot()}
        windows: list[WindowStats] = []
        stable: bool | None = None
        try:
            while True:
                index = len(windows)
                _sleep_until(start_ns + (index + 1) * window_ns)
                snapshots[index + 1] = self._snapshot()
                deadline = time.monotonic() + policy.window + 10.0
                parts = []
                for pipe in self._pipes:
                    kind, data = self._receive(pipe, deadline)
                    if kind != "window" or data.index != index:
                        raise BenchError(f"a load process sent {kind} out of turn")
                    parts.append(data)
                windows.append(_merge(parts, policy.window, step.kind == "open"))
                stable = self._judge(windows, policy)
                if on_window is not None:
                    on_window(step, windows, stable)
                if policy.fixed_windows is not None:
                    if len(windows) >= policy.fixed_windows:
                        stable = None
                        break
                elif stable or len(windows) >= policy.max_windows:
                    break
        except BaseException:
            with contextlib.suppress(BenchError):  # the first failure is the one to report
                self._stop_step()
            raise
        abandoned = self._stop_step()
        count = (
            len(windows)
            if policy.fixed_windows is not None
            else min(policy.stable_windows, len(windows))
        )
        measured = windows[-count:]
        first, last = snapshots.get(measured[0].index), snapshots.get(measured[-1].index + 1)
        server = difference(first, last) if first is not None and last is not None else None
        return StepResult(
            step=step,
            windows=windows,
            measured=measured,
            stable=bool(stable) if policy.fixed_windows is None else True,
            server=server,
            server_note=self._metrics_note,
            abandoned=abandoned,
        )

    @staticmethod
    def _judge(windows: Sequence[WindowStats], policy: WindowPolicy) -> bool:
        if len(windows) < policy.stable_windows:
            return False
        last = windows[-policy.stable_windows :]
        for values in ([w.throughput for w in last], [w.mean_ms for w in last]):
            low, high = min(values), max(values)
            if high == 0:
                continue
            if low <= 0 or high / low > 1 + policy.tolerance:
                return False
        return True

    def _stop_step(self) -> int:
        abandoned = 0
        for pipe in self._pipes:
            with contextlib.suppress(OSError):
                pipe.send(("stop",))
        deadline = time.monotonic() + self._timeout + 10.0
        for pipe in self._pipes:
            while True:
                kind, data = self._receive(pipe, deadline)
                if kind == "done":
                    abandoned += data
                    break
        return abandoned


def _sleep_until(ns: int) -> None:
    left = (ns - time.monotonic_ns()) / 1e9
    if left > 0:
        time.sleep(left)
