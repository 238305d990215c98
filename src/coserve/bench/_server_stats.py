"""The server's side of a measured window, from coserve's ``/metrics``.

A snapshot of the model's batching series is taken at each window boundary; the difference of
two snapshots is what the server did in between: batches and their sizes, queue and execution
time, why batches closed, and the requests' outcomes. Series of every worker (``--workers N``)
and, unless a version is named, every version are summed.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["ServerSnapshot", "ServerWindow", "difference", "scrape"]


@dataclass
class ServerSnapshot:
    """Cumulative values of the model's series at one moment."""

    size_buckets: dict[float, float] = field(default_factory=dict)
    """Batch-size histogram: upper bound → batches of at most that many rows (cumulative)."""
    batches: float = 0.0
    rows: float = 0.0
    queue_sum: float = 0.0
    queue_count: float = 0.0
    exec_sum: float = 0.0
    exec_count: float = 0.0
    close_reasons: dict[str, float] = field(default_factory=dict)
    outcomes: dict[str, float] = field(default_factory=dict)
    options: dict[str, float] = field(default_factory=dict)
    """The batching options in force (a gauge: the latest value, not a difference)."""


@dataclass
class ServerWindow:
    """What the server did between two snapshots."""

    batches: int
    rows: int
    batch_sizes: dict[str, int]
    """Batches per size range (``"1"``, ``"2"``, ``"3-4"``, …, from the histogram's buckets)."""
    queue_ms: float | None
    """Mean time from submit to the start of the batch."""
    execution_ms: float | None
    """Mean wall time of one model call."""
    close_reasons: dict[str, int]
    outcomes: dict[str, int]
    options: dict[str, float]

    @property
    def mean_batch(self) -> float | None:
        """Rows per batch."""
        return self.rows / self.batches if self.batches else None

    def as_dict(self) -> dict[str, Any]:
        """For ``--json``."""
        return {
            "batches": self.batches,
            "rows": self.rows,
            "mean_batch": self.mean_batch,
            "batch_sizes": self.batch_sizes,
            "queue_ms": self.queue_ms,
            "execution_ms": self.execution_ms,
            "close_reasons": self.close_reasons,
            "outcomes": self.outcomes,
            "options": self.options,
        }


def scrape(url: str, model: str, version: str | None, timeout: float = 5.0) -> ServerSnapshot:
    """The model's series from ``url`` (a ``/metrics`` page).

    Raises:
        OSError: The page cannot be fetched.
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode("utf-8")
    except urllib.error.URLError as error:
        raise OSError(f"GET {url}: {error.reason}") from None
    snapshot = ServerSnapshot()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("model") != model or (version and labels.get("version") != version):
                continue
            _add(snapshot, sample.name, labels, sample.value)
    return snapshot


def _add(snapshot: ServerSnapshot, name: str, labels: Mapping[str, str], value: float) -> None:
    if name == "coserve_batch_size_bucket":
        bound = float(labels["le"])
        snapshot.size_buckets[bound] = snapshot.size_buckets.get(bound, 0.0) + value
    elif name == "coserve_batch_size_count":
        snapshot.batches += value
    elif name == "coserve_batch_size_sum":
        snapshot.rows += value
    elif name == "coserve_queue_time_seconds_sum":
        snapshot.queue_sum += value
    elif name == "coserve_queue_time_seconds_count":
        snapshot.queue_count += value
    elif name == "coserve_batch_execution_seconds_sum":
        snapshot.exec_sum += value
    elif name == "coserve_batch_execution_seconds_count":
        snapshot.exec_count += value
    elif name == "coserve_batch_close_reasons_total":
        reason = labels["reason"]
        snapshot.close_reasons[reason] = snapshot.close_reasons.get(reason, 0.0) + value
    elif name == "coserve_requests_total":
        outcome = labels["outcome"]
        snapshot.outcomes[outcome] = snapshot.outcomes.get(outcome, 0.0) + value
    elif name == "coserve_batching_option":
        # Workers share their options (the admin API sets them on all): keep one value.
        snapshot.options[labels["option"]] = value


def difference(start: ServerSnapshot, end: ServerSnapshot) -> ServerWindow:
    """What happened between ``start`` and ``end``."""
    sizes: dict[str, int] = {}
    previous_bound, previous = 0.0, 0.0
    for bound in sorted(end.size_buckets):
        cumulative = end.size_buckets[bound] - start.size_buckets.get(bound, 0.0)
        count = round(cumulative - previous)
        if count:
            low = int(previous_bound) + 1
            if bound == float("inf"):
                label = f">{int(previous_bound)}"
            elif low == int(bound):
                label = str(int(bound))
            else:
                label = f"{low}-{int(bound)}"
            sizes[label] = count
        previous_bound, previous = bound, cumulative
    queue_count = end.queue_count - start.queue_count
    exec_count = end.exec_count - start.exec_count
    return ServerWindow(
        batches=round(end.batches - start.batches),
        rows=round(end.rows - start.rows),
        batch_sizes=sizes,
        queue_ms=(end.queue_sum - start.queue_sum) / queue_count * 1e3 if queue_count else None,
        execution_ms=(end.exec_sum - start.exec_sum) / exec_count * 1e3 if exec_count else None,
        close_reasons={
            reason: round(value - start.close_reasons.get(reason, 0.0))
            for reason, value in end.close_reasons.items()
            if round(value - start.close_reasons.get(reason, 0.0))
        },
        outcomes={
            outcome: round(value - start.outcomes.get(outcome, 0.0))
            for outcome, value in end.outcomes.items()
            if round(value - start.outcomes.get(outcome, 0.0))
        },
        options=dict(end.options),
    )
