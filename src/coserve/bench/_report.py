"""``coserve bench``'s output: the final table, ``--json``, ``--csv``, ``--compare`` and plots.

The JSON file is the record of a run (and the baseline ``--compare`` reads): every step's
client figures, the server's, the stability windows and the HDR histogram (base64, mergeable).
The CSV keeps run order and names its units in the header, one row per step.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from coserve.batching._target import LatencyTarget
from coserve.bench._runner import StepResult, latency_summary, statistic_ms

__all__ = [
    "Regression",
    "Series",
    "compare",
    "results_table",
    "step_record",
    "terminal_scatter",
    "write_csv",
    "write_json",
    "write_plot",
    "write_scatter",
]


def _ms(value: float | None) -> str:
    if value is None or math.isinf(value):
        return "-"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{key}:{count}" for key, count in sorted(errors.items())) or "0"


def results_table(results: Sequence[StepResult], slo: Sequence[LatencyTarget]) -> Table:
    """One row per step: client latency and rates beside the server's batching."""
    open_loop = any(result.step.kind == "open" for result in results)
    table = Table(title="coserve bench", title_justify="left", header_style="bold")
    table.add_column("step")
    if open_loop:
        table.add_column("offered/s", justify="right")
    table.add_column("ok/s", justify="right")
    for name in ("p50", "p90", "p99", "p99.9", "max"):
        table.add_column(f"{name} ms", justify="right")
    if open_loop:
        table.add_column("raw p99", justify="right")
    if slo:
        table.add_column(f"goodput/s ({slo[0]})", justify="right")
    table.add_column("errors", justify="right")
    table.add_column("stable")
    table.add_column("batch", justify="right")
    table.add_column("queue ms", justify="right")
    table.add_column("exec ms", justify="right")
    table.add_column("gen µs/req", justify="right")
    for result in results:
        summary = latency_summary(result.latency)
        row = [result.step.label]
        if open_loop:
            offered = result.offered
            mark = "" if result.rate_achieved else " !"
            row.append(f"{offered:.0f}{mark}" if offered is not None else "-")
        row.append(f"{result.throughput:.0f}")
        row += [_ms(summary.get(name)) for name in ("p50", "p90", "p99", "p99.9", "max")]
        if open_loop:
            row.append(_ms(latency_summary(result.raw).get("p99")))
        if slo:
            row.append(f"{result.goodput(slo[0]):.0f}")
        row.append(_errors(result.errors))
        row.append("yes" if result.stable else "NO")
        server = result.server
        mean_batch = server.mean_batch if server else None
        row.append(f"{mean_batch:.1f}" if mean_batch is not None else "-")
        row.append(_ms(server.queue_ms if server else None))
        row.append(_ms(server.execution_ms if server else None))
        cpu = result.client_cpu_us
        row.append(f"{cpu:.0f}" if cpu is not None else "-")
        table.add_row(*row)
    return table


def server_table(result: StepResult) -> Table | None:
    """The server's batch sizes and close reasons in one step's measured windows."""
    server = result.server
    if server is None or not server.batches:
        return None
    table = Table(title=f"server, {result.step.label}", title_justify="left")
    table.add_column("batch rows")
    table.add_column("batches", justify="right")
    table.add_column("share", justify="right")
    for label, count in server.batch_sizes.items():
        table.add_row(label, str(count), f"{count / server.batches:.0%}")
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(server.close_reasons.items()))
    table.caption = f"closed by {reasons}" if reasons else None
    return table


def step_record(result: StepResult, slo: Sequence[LatencyTarget]) -> dict[str, Any]:
    """One step, for ``--json``."""
    return {
        "label": result.step.label,
        "kind": result.step.kind,
        "concurrency": result.step.concurrency or None,
        "rate": result.step.rate or None,
        "rate_points": [list(point) for point in result.step.rate_points] or None,
        "arrival": result.step.arrival if result.step.kind == "open" else None,
        "seconds": result.seconds,
        "offered_per_s": result.offered,
        "throughput_per_s": result.throughput,
        "completed_per_s": result.completed_rate,
        "rate_achieved": result.rate_achieved,
        "late_sends": result.late_fraction,
        "stable": result.stable,
        "errors": result.errors,
        "abandoned": result.abandoned,
        "latency_ms": latency_summary(result.latency),
        "raw_latency_ms": latency_summary(result.raw),
        "goodput_per_s": {str(t): result.goodput(t) for t in slo},
        "slo_met": {str(t): statistic_ms(result.latency, t) <= t.limit * 1e3 for t in slo},
        "windows": [
            {
                "index": window.index,
                "throughput_per_s": window.throughput,
                "offered_per_s": window.scheduled / window.seconds if window.scheduled else None,
                "mean_ms": window.mean_ms,
                "p99_ms": latency_summary(window.latency).get("p99"),
                "errors": window.errors,
                "measured": window in result.measured,
            }
            for window in result.windows
        ],
        "client": {
            "cpu_us_per_request": result.client_cpu_us,
            "busiest_process_cpu": result.client_busiest,
        },
        "server": result.server.as_dict() if result.server else None,
        "server_note": result.server_note,
        "hdr_latency_us": result.latency.encode().decode("ascii")
        if result.latency.get_total_count()
        else None,
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write the run's record."""
    document.setdefault(
        "machine",
        {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
    )
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


_CSV_COLUMNS = (
    "Step",
    "Concurrency",
    "Request Rate (offered, per sec)",
    "Inferences/Second",
    "p50 latency (usec)",
    "p90 latency (usec)",
    "p99 latency (usec)",
    "p99.9 latency (usec)",
    "Max latency (usec)",
    "Avg latency (usec)",
    "Raw p99 latency (usec)",
    "Errors",
    "Stable",
    "Server Queue (usec)",
    "Server Compute (usec)",
    "Avg Batch (rows)",
    "Client CPU (usec/request)",
)


def write_csv(path: Path, results: Sequence[StepResult]) -> None:
    """One row per step, in run order (not sorted), microseconds where the header says so."""

    def us(value: float | None) -> str:
        return "" if value is None or math.isinf(value) else f"{value * 1e3:.0f}"

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(_CSV_COLUMNS)
    for result in results:
        summary = latency_summary(result.latency)
        server = result.server
        offered = result.offered
        writer.writerow(
            [
                result.step.label,
                result.step.concurrency or "",
                f"{offered:.1f}" if offered is not None else "",
                f"{result.throughput:.1f}",
                us(summary.get("p50")),
                us(summary.get("p90")),
                us(summary.get("p99")),
                us(summary.get("p99.9")),
                us(summary.get("max")),
                us(summary.get("mean")),
                us(latency_summary(result.raw).get("p99")),
                sum(result.errors.values()),
                int(result.stable),
                us(server.queue_ms) if server else "",
                us(server.execution_ms) if server else "",
                f"{server.mean_batch:.2f}" if server and server.mean_batch else "",
                f"{result.client_cpu_us:.1f}" if result.client_cpu_us is not None else "",
            ]
        )
    path.write_text(buffer.getvalue(), encoding="utf-8")


@dataclass(frozen=True)
class Regression:
    """A step worse than the baseline's beyond the threshold."""

    label: str
    what: str
    baseline: float
    now: float

    def __str__(self) -> str:
        change = (self.now - self.baseline) / self.baseline if self.baseline else math.inf
        return f"{self.label}: {self.what} {self.baseline:.2f} → {self.now:.2f} ({change:+.0%})"


def compare(
    baseline: dict[str, Any], steps: Sequence[dict[str, Any]], threshold: float
) -> tuple[list[Regression], list[str]]:
    """Regressions of ``steps`` against a baseline run's record, by step label.

    Throughput lower, or p99 latency higher, than the baseline's by more than ``threshold``
    (a fraction) is a regression. Returns the regressions and the labels with no baseline.
    """
    before = {step["label"]: step for step in baseline.get("steps", [])}
    regressions: list[Regression] = []
    unmatched: list[str] = []
    for step in steps:
        old = before.get(step["label"])
        if old is None:
            unmatched.append(step["label"])
            continue
        if step["throughput_per_s"] < old["throughput_per_s"] * (1 - threshold):
            regressions.append(
                Regression(
                    step["label"], "throughput/s", old["throughput_per_s"], step["throughput_per_s"]
                )
            )
        old_p99 = old["latency_ms"].get("p99")
        new_p99 = step["latency_ms"].get("p99")
        if old_p99 and (new_p99 is None or new_p99 > old_p99 * (1 + threshold)):
            regressions.append(Regression(step["label"], "p99 ms", old_p99, new_p99 or math.inf))
    return regressions, unmatched


def _series(
    results: Sequence[StepResult],
) -> tuple[str, list[tuple[str, list[float], list[float]]]]:
    """What to plot: a throughput-latency curve for a sweep, time series for a profile."""
    if len(results) == 1 and results[0].step.rate_points:
        windows = results[0].windows
        times = [(w.index + 1) * w.seconds for w in windows]
        p99 = [latency_summary(w.latency).get("p99", math.nan) for w in windows]
        ok = [w.throughput for w in windows]
        offered = [w.scheduled / w.seconds for w in windows]
        return "profile", [
            ("offered/s", times, offered),
            ("ok/s", times, ok),
            ("p99 ms", times, p99),
        ]
    ordered = sorted(results, key=lambda r: r.throughput)
    return "sweep", [
        (
            "p99 ms",
            [r.throughput for r in ordered],
            [latency_summary(r.latency).get("p99", math.nan) for r in ordered],
        ),
        (
            "p50 ms",
            [r.throughput for r in ordered],
            [latency_summary(r.latency).get("p50", math.nan) for r in ordered],
        ),
    ]


def terminal_plot(results: Sequence[StepResult], width: int = 100, height: int = 24) -> str:
    """The plot as text (plotext), for the terminal."""
    import plotext  # type: ignore[import-untyped]

    kind, series = _series(results)
    plotext.clear_figure()
    plotext.plotsize(width, height)
    plotext.theme("clear")
    if kind == "profile":
        plotext.subplots(2, 1)
        plotext.subplot(1, 1)
        for name, xs, ys in series[:2]:
            plotext.plot(xs, ys, label=name)
        plotext.title("rate (requests/s) over time (s)")
        plotext.subplot(2, 1)
        name, xs, ys = series[2]
        plotext.plot(xs, ys, label=name)
        plotext.title("p99 latency (ms) over time (s)")
    else:
        for name, xs, ys in series:
            plotext.plot(xs, ys, label=name, marker="dot")
        plotext.title("latency (ms) against throughput (requests/s)")
    text: str = plotext.build()
    return text


def write_plot(path: Path, results: Sequence[StepResult], title: str) -> None:
    """``--plot FILE.png`` (matplotlib) or ``FILE.html`` (the plot as SVG, and the table).

    Raises:
        ValueError: Not a .png, .svg or .html file.
        ImportError: matplotlib is not installed (``pip install 'coserve[plot]'``).
    """
    suffix = path.suffix.lower()
    if suffix not in (".png", ".svg", ".html"):
        raise ValueError(f"--plot {path}: expected a .png, .svg or .html file")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kind, series = _series(results)
    if kind == "profile":
        figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
        for name, xs, ys in series[:2]:
            top.plot(xs, ys, label=name)
        top.set_ylabel("requests/s")
        top.legend()
        name, xs, ys = series[2]
        bottom.plot(xs, ys, color="tab:red", label=name)
        bottom.set_ylabel("p99 latency (ms)")
        bottom.set_xlabel("time (s)")
        top.set_title(title)
    else:
        figure, axes = plt.subplots(figsize=(9, 5))
        for name, xs, ys in series:
            axes.plot(xs, ys, marker="o", label=name)
        for result in results:
            p99 = latency_summary(result.latency).get("p99")
            if p99 is not None:
                axes.annotate(result.step.label, (result.throughput, p99), fontsize=8)
        axes.set_xlabel("throughput (requests/s)")
        axes.set_ylabel("latency (ms)")
        axes.set_title(title)
        axes.legend()
        axes.grid(alpha=0.3)
    _save_figure(figure, path, title, results_table(results, ()))


def _save_figure(figure: Any, path: Path, title: str, table: Any) -> None:
    """PNG or SVG as the suffix says, or an HTML page of the plot (SVG) and ``table``."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    if path.suffix.lower() == ".html":
        svg = io.StringIO()
        figure.savefig(svg, format="svg")
        console = Console(record=True, width=160, file=io.StringIO())
        console.print(table)
        page = (
            "<!doctype html><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title>"
            f"<h1>{html.escape(title)}</h1>{svg.getvalue()}"
            f"<pre>{html.escape(console.export_text())}</pre>\n"
        )
        path.write_text(page, encoding="utf-8")
    else:
        figure.savefig(path, dpi=110)
    plt.close(figure)


@dataclass(frozen=True)
class Series:
    """One set of (x, y) points for :func:`terminal_scatter` and :func:`write_scatter`."""

    name: str
    xs: list[float]
    ys: list[float]
    joined: bool = False
    """Draw a line through the points (in x order), not just markers."""
    labels: tuple[str, ...] = ()
    """A note beside each point (image plots only)."""
    bound: bool = False
    """A reference line (a limit): dashed, without markers, in the image plots."""


def terminal_scatter(
    series: Sequence[Series], title: str, width: int = 100, height: int = 24
) -> str:
    """Points (and lines) as text (plotext), for the terminal."""
    import plotext

    plotext.clear_figure()
    plotext.plotsize(width, height)
    plotext.theme("clear")
    for item in series:
        if item.joined:
            plotext.plot(item.xs, item.ys, label=item.name, marker="dot")
        else:
            plotext.scatter(item.xs, item.ys, label=item.name, marker="x")
    plotext.title(title)
    text: str = plotext.build()
    return text


def write_scatter(
    path: Path,
    series: Sequence[Series],
    title: str,
    *,
    xlabel: str,
    ylabel: str,
    table: Any = None,
) -> None:
    """Points (and lines) as ``FILE.png``, ``.svg`` or ``.html`` (with ``table`` below the plot).

    Raises:
        ValueError: Not a .png, .svg or .html file.
        ImportError: matplotlib is not installed (``pip install 'coserve[plot]'``).
    """
    if path.suffix.lower() not in (".png", ".svg", ".html"):
        raise ValueError(f"--plot {path}: expected a .png, .svg or .html file")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 5))
    for item in series:
        if item.bound:
            axes.plot(item.xs, item.ys, linestyle="--", color="tab:red", label=item.name)
        elif item.joined:
            axes.plot(item.xs, item.ys, marker="o", label=item.name)
        else:
            axes.scatter(item.xs, item.ys, marker="x", alpha=0.6, label=item.name)
        for x, y, label in zip(item.xs, item.ys, item.labels, strict=False):
            axes.annotate(label, (x, y), fontsize=7)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend()
    axes.grid(alpha=0.3)
    _save_figure(figure, path, title, table if table is not None else "")
