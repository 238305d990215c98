"""``coserve tune``'s search logic, free of I/O: the space, the latency model, the rules.

- :class:`TuneConfig`: one point of the space (``max_batch_size``, ``max_wait``, slots, workers).
- :func:`fit_latency`: ``s(n) = c + a·n`` by least squares from (rows per batch, seconds per
  batch) pairs. Each pair is a measured step's *means* (the server's batch-size and execution
  histograms); a linear model's mean is the model at the mean, so means fit it exactly.
- :func:`prune_batch_sizes`: a request can wait for the batch that is running and then run in
  its own, so ``2·s(B)`` above the SLO makes ``B`` a bound the SLO cannot keep at full load.
- :func:`plateaued`: model_analyzer's exit, the last N steps gained less than 5%.
- :func:`ramp`: a closed-loop concurrency ramp that ends at the SLO or on a plateau.
- :func:`pareto_front`: the points no other point beats on both throughput and latency.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

__all__ = [
    "LatencyModel",
    "Pruning",
    "RampPoint",
    "TuneConfig",
    "batching_block",
    "fit_latency",
    "pareto_front",
    "plateaued",
    "prune_batch_sizes",
    "ramp",
]


def _format_wait(seconds: float) -> str:
    if seconds == 0:
        return "0"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:g}ms"
    return f"{seconds * 1e6:g}us"


@dataclass(frozen=True, order=True)
class TuneConfig:
    """One configuration tried: the live batching options, and the server's worker count."""

    workers: int
    max_concurrent_batches: int
    max_batch_size: int
    max_wait: float
    """Seconds."""

    @property
    def label(self) -> str:
        """``B=8 wait=1ms slots=1`` (and ``workers=2`` where not 1)."""
        text = (
            f"B={self.max_batch_size} wait={_format_wait(self.max_wait)} "
            f"slots={self.max_concurrent_batches}"
        )
        return text + (f" workers={self.workers}" if self.workers != 1 else "")

    def options(self) -> dict[str, Any]:
        """The admin API's body for this configuration."""
        return {
            "max_batch_size": self.max_batch_size,
            "max_wait": self.max_wait,
            "max_concurrent_batches": self.max_concurrent_batches,
        }

    def as_dict(self) -> dict[str, Any]:
        """For ``--json``."""
        return {"workers": self.workers, **self.options()}


def batching_block(config: TuneConfig, adaptive_target: str | None = None) -> str:
    """The configuration as a ready ``[batching]`` block of a model's ``config.toml``.

    ``adaptive_target``: the model's ``target_latency`` when tune began; tune measured with
    it off, so the block says to leave it out.
    """
    lines = ["[batching]"]
    if adaptive_target is not None:
        lines.append(
            f"# measured without target_latency = {adaptive_target!r}: leave it out to run "
            "these options as measured"
        )
    lines.append(f"max_batch_size = {config.max_batch_size}")
    lines.append(f"max_wait = {float(config.max_wait)!r}  # seconds")
    lines.append(f"max_concurrent_batches = {config.max_concurrent_batches}")
    text = "\n".join(lines) + "\n"
    if config.workers != 1:  # not a model option: say how to serve it
        text = f"# serve with: coserve serve --workers {config.workers}\n" + text
    return text


@dataclass(frozen=True)
class LatencyModel:
    """``s(n) = c + a·n``: the seconds one batch of ``n`` rows takes to execute."""

    c: float
    """Seconds per batch, whatever its size."""
    a: float
    """Seconds per row."""
    points: int
    """How many (rows, seconds) pairs it was fitted from."""

    def predict(self, rows: float) -> float:
        """``s(rows)``, in seconds."""
        return self.c + self.a * rows

    def as_dict(self) -> dict[str, Any]:
        """For ``--json`` (milliseconds)."""
        return {"c_ms": self.c * 1e3, "a_ms_per_row": self.a * 1e3, "points": self.points}


def fit_latency(points: Sequence[tuple[float, float]]) -> LatencyModel | None:
    """Least squares ``s(n) = c + a·n`` over (rows per batch, seconds per batch) pairs.

    None when the pairs cannot fix a line: fewer than two, or all at one batch size.
    """
    usable = [(n, s) for n, s in points if n > 0 and math.isfinite(s) and s >= 0]
    if len(usable) < 2:
        return None
    mean_n = sum(n for n, _ in usable) / len(usable)
    mean_s = sum(s for _, s in usable) / len(usable)
    spread = sum((n - mean_n) ** 2 for n, _ in usable)
    if spread < 1e-9 * max(1.0, mean_n**2):
        return None
    a = sum((n - mean_n) * (s - mean_s) for n, s in usable) / spread
    return LatencyModel(c=mean_s - a * mean_n, a=a, points=len(usable))


@dataclass(frozen=True)
class Pruning:
    """What :func:`prune_batch_sizes` kept and removed, and the bound it used."""

    kept: list[int]
    pruned: list[int]
    limit: float
    """The SLO's bound, seconds."""

    def as_dict(self) -> dict[str, Any]:
        """For ``--json``."""
        return {"kept": self.kept, "pruned": self.pruned, "limit_ms": self.limit * 1e3}


def prune_batch_sizes(sizes: Sequence[int], model: LatencyModel, limit: float) -> Pruning:
    """Remove each ``B`` with ``2·s(B) > limit``; the smallest size is always kept.

    At full load a request arrives while a batch of ``B`` runs and then runs in the next one:
    ``2·s(B)`` is its latency before any queueing, so above the bound the SLO cannot hold. The
    smallest is kept so that the sweep still says how close the model comes.
    """
    ordered = sorted(set(sizes))
    kept = [b for b in ordered if 2 * model.predict(b) <= limit]
    if ordered and ordered[0] not in kept:
        kept.insert(0, ordered[0])
    return Pruning(kept=kept, pruned=[b for b in ordered if b not in kept], limit=limit)


def plateaued(values: Sequence[float], steps: int = 4, gain: float = 0.05) -> bool:
    """Whether the last ``steps`` values gained less than ``gain`` over the best before them.

    model_analyzer's plateau exit (4 steps, 5%). Fewer than ``steps + 1`` values: not yet. A
    run of zeros (nothing met the SLO) is a plateau too: more of the same will not help.
    """
    if steps < 1 or len(values) <= steps:
        return False
    before = max(values[:-steps])
    recent = max(values[-steps:])
    return recent <= 0 or recent < (1 + gain) * before


class _Measured(Protocol):
    @property
    def throughput(self) -> float: ...

    @property
    def meets_slo(self) -> bool: ...


M = TypeVar("M", bound=_Measured)


@dataclass(frozen=True)
class RampPoint:
    """One measured point: a configuration at a concurrency."""

    config: TuneConfig
    concurrency: int
    throughput: float
    """Successful answers per second."""
    latency_ms: float
    """The SLO's statistic (p99 for ``p99<20ms``)."""
    p50_ms: float
    p99_ms: float
    meets_slo: bool
    mean_batch: float | None = None
    record: dict[str, Any] | None = None
    """bench's step record, for ``--json``."""


def ramp(
    measure: Callable[[int], M], concurrencies: Sequence[int], *, plateau_steps: int = 4
) -> list[M]:
    """Measure at each concurrency in turn until one misses the SLO or throughput plateaus.

    The point that missed is kept (it shows where the SLO broke).
    """
    points: list[M] = []
    for concurrency in concurrencies:
        point = measure(concurrency)
        points.append(point)
        if not point.meets_slo:
            break
        if plateaued([p.throughput for p in points], plateau_steps):
            break
    return points


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (throughput, latency) points no other point dominates, by throughput.

    ``q`` dominates ``p`` when it has at least ``p``'s throughput and at most its latency, and
    is better in one of them. Equal points do not dominate each other (both stay). Points
    without a finite latency or with no throughput are never on the front.
    """
    valid = [
        i
        for i, (throughput, latency) in enumerate(points)
        if throughput > 0 and math.isfinite(latency) and math.isfinite(throughput)
    ]

    def dominated(i: int) -> bool:
        tp, lat = points[i]
        return any(
            points[j][0] >= tp and points[j][1] <= lat and points[j] != (tp, lat) for j in valid
        )

    front = [i for i in valid if not dominated(i)]
    return sorted(front, key=lambda i: (points[i][0], points[i][1]))
