"""``coserve tune``'s output: the table of configurations, the Pareto front, its plots.

The front is taken over every measured point (each configuration at each concurrency), on
throughput against the SLO's statistic (p99 for ``p99<20ms``); a configuration is marked as on
the front when one of its points is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from coserve.bench._report import Series, terminal_scatter, write_scatter
from coserve.bench._tune_search import RampPoint, TuneConfig, pareto_front

__all__ = [
    "ConfigResult",
    "config_table",
    "front_of",
    "front_series",
    "front_table",
    "plot_front",
]


@dataclass
class ConfigResult:
    """A configuration's ramp: every point measured, and why it stopped or was skipped."""

    config: TuneConfig
    points: list[RampPoint] = field(default_factory=list)
    skipped: str | None = None
    """Why it was not measured (the server refused the options)."""

    @property
    def best(self) -> RampPoint | None:
        """The highest-throughput point that met the SLO."""
        meeting = [p for p in self.points if p.meets_slo]
        return max(meeting, key=lambda p: p.throughput) if meeting else None

    @property
    def shown(self) -> RampPoint | None:
        """The point a summary shows: the best, else the first measured (it missed)."""
        return self.best or (self.points[0] if self.points else None)

    def as_dict(self) -> dict[str, Any]:
        """For ``--json``."""
        best = self.best
        return {
            "config": self.config.as_dict(),
            "label": self.config.label,
            "skipped": self.skipped,
            "best": point_dict(best) if best else None,
            "points": [point_dict(p, record=True) for p in self.points],
        }


def point_dict(point: RampPoint, *, record: bool = False) -> dict[str, Any]:
    """A point, for ``--json`` (with bench's whole step record when ``record``)."""
    data: dict[str, Any] = {
        "config": point.config.as_dict(),
        "concurrency": point.concurrency,
        "throughput_per_s": point.throughput,
        "latency_ms": point.latency_ms,
        "p50_ms": point.p50_ms,
        "p99_ms": point.p99_ms,
        "meets_slo": point.meets_slo,
        "mean_batch": point.mean_batch,
    }
    if record:
        data["step"] = point.record
    return data


def front_of(results: Sequence[ConfigResult]) -> list[RampPoint]:
    """The Pareto front of every measured point, by throughput."""
    points = [p for result in results for p in result.points]
    return [points[i] for i in pareto_front([(p.throughput, p.latency_ms) for p in points])]


def _ms(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def config_table(
    results: Sequence[ConfigResult],
    statistic: str,
    front: Sequence[RampPoint],
    winner: RampPoint | None,
) -> Table:
    """One row per configuration: its best point under the SLO (or its first, which missed)."""
    on_front = {p.config for p in front}
    table = Table(title="coserve tune: configurations", title_justify="left", header_style="bold")
    for name in ("configuration", "c", "ok/s", "p50 ms", "p99 ms"):
        table.add_column(name, justify="left" if name == "configuration" else "right")
    if statistic not in ("p50", "p99"):
        table.add_column(f"{statistic} ms", justify="right")
    for name in ("batch", "steps", "meets SLO", "Pareto"):
        table.add_column(name, justify="right")
    for result in results:
        point = result.shown
        if point is None:
            cells = ["-"] * (len(table.columns) - 2)
            table.add_row(result.config.label, *cells, f"skipped: {result.skipped}")
            continue
        row = [
            result.config.label + (" ◀ best" if winner and winner.config == result.config else ""),
            str(point.concurrency),
            f"{point.throughput:.0f}",
            _ms(point.p50_ms),
            _ms(point.p99_ms),
        ]
        if statistic not in ("p50", "p99"):
            row.append(_ms(point.latency_ms))
        row += [
            f"{point.mean_batch:.1f}" if point.mean_batch is not None else "-",
            str(len(result.points)),
            "yes" if point.meets_slo else "NO",
            "★" if result.config in on_front else "",
        ]
        table.add_row(*row)
    return table


def front_table(front: Sequence[RampPoint], statistic: str) -> Table:
    """The Pareto front's points: no other point has more throughput and less latency."""
    table = Table(
        title=f"Pareto front (throughput vs {statistic})", title_justify="left", header_style="bold"
    )
    for name in ("configuration", "c", "ok/s", f"{statistic} ms", "meets SLO"):
        table.add_column(name, justify="left" if name == "configuration" else "right")
    for point in front:
        table.add_row(
            point.config.label,
            str(point.concurrency),
            f"{point.throughput:.0f}",
            _ms(point.latency_ms),
            "yes" if point.meets_slo else "NO",
        )
    return table


def front_series(
    results: Sequence[ConfigResult], front: Sequence[RampPoint], limit_ms: float
) -> list[Series]:
    """What the plots draw: every point, the front as a line, and the SLO's bound."""
    points = [p for r in results for p in r.points if math.isfinite(p.latency_ms)]
    series = [
        Series("all points", [p.throughput for p in points], [p.latency_ms for p in points]),
        Series(
            "Pareto front",
            [p.throughput for p in front],
            [p.latency_ms for p in front],
            joined=True,
            labels=tuple(f"{p.config.label} c={p.concurrency}" for p in front),
        ),
    ]
    if points:
        xs = [p.throughput for p in points]
        series.append(
            Series("SLO", [min(xs), max(xs)], [limit_ms, limit_ms], joined=True, bound=True)
        )
    return series


def plot_front(
    path: Path | None,
    results: Sequence[ConfigResult],
    front: Sequence[RampPoint],
    *,
    statistic: str,
    limit_ms: float,
    title: str,
    table: Any,
    width: int | None,
) -> str | None:
    """Write ``path`` (PNG, SVG or HTML) if given; return the terminal plot if ``width``.

    Raises:
        ValueError: ``path`` is not a .png, .svg or .html file.
        ImportError: matplotlib is not installed.
    """
    series = front_series(results, front, limit_ms)
    if path is not None:
        write_scatter(
            path,
            series,
            title,
            xlabel="throughput (requests/s)",
            ylabel=f"{statistic} latency (ms)",
            table=table,
        )
    if width is None:
        return None
    return terminal_scatter(
        series, f"{statistic} latency (ms) against throughput (requests/s)", width=width
    )
