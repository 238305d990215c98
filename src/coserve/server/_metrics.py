"""``GET /metrics``: Prometheus metrics per model and version, read from the batchers at scrape.

Nothing is counted twice: the batcher already counts every outcome, so a custom collector turns
its ``statistics()`` into metric families when Prometheus scrapes, and the request path pays
nothing for metrics beyond one histogram observation of its own latency.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    SummaryMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from coserve.batching import AdaptiveState
from coserve.models import ModelRepository
from coserve.server._sessions import SessionManager

__all__ = ["LatencyCounts", "Metrics"]

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Fine enough between 10 ms and 1 s to read a p99 under overload, where a request's time is
# about the time to drain the queue.
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.25,
    0.35,
    0.5,
    0.75,
    1,
    2.5,
    5,
    10,
)
_OUTCOMES = ("completed", "failed", "expired", "cancelled", "aborted")


def _adaptive_values(state: AdaptiveState) -> list[tuple[str, float]]:
    values = [
        ("intercept_seconds", state.intercept),
        ("slope_seconds_per_row", state.slope),
        ("spread_seconds", state.spread),
        ("arrival_rate", state.arrival_rate),
        ("batch_target", float(state.batch_target)),
        ("batch_cap", float(state.batch_cap)),
        ("linger_seconds", state.linger),
        ("margin", state.margin),
    ]
    if state.measured is not None:
        values.append(("measured_seconds", state.measured))
    return values


class _BatcherCollector(Collector):
    def __init__(self, repository: ModelRepository) -> None:
        self._repository = repository

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version"]
        outcomes = CounterMetricFamily(
            "coserve_requests",
            "Requests that reached the batcher, by outcome",
            labels=[*labels, "outcome"],
        )
        rejected = CounterMetricFamily(
            "coserve_rejected_requests",
            "Requests refused at once, by reason (queue_full, closed)",
            labels=[*labels, "reason"],
        )
        queued = GaugeMetricFamily(
            "coserve_queued_requests", "Requests waiting in the queue", labels=labels
        )
        options = GaugeMetricFamily(
            "coserve_batching_option",
            "The batching options in force (they change with ModelHandle.configure); "
            "timeout is absent when requests have no default deadline",
            labels=[*labels, "option"],
        )
        running = GaugeMetricFamily(
            "coserve_running_batches", "Batches executing now", labels=labels
        )
        adaptive = GaugeMetricFamily(
            "coserve_adaptive",
            "The adaptive batcher's model and choices (target_latency): intercept_seconds and "
            "slope_seconds_per_row of the batch latency fit, spread_seconds, arrival_rate rows/s,"
            " batch_target and batch_cap rows, linger_seconds, margin, measured_seconds (the "
            "target's statistic over the last trim window), target_seconds",
            labels=[*labels, "value"],
        )
        failed_early = CounterMetricFamily(
            "coserve_adaptive_failed_early",
            "Requests failed at once because their deadline fell before their batch would end",
            labels=labels,
        )
        closes = CounterMetricFamily(
            "coserve_batch_close_reasons", "Why each batch was closed", labels=[*labels, "reason"]
        )
        sizes = HistogramMetricFamily("coserve_batch_size", "Rows per batch", labels=labels)
        queue_time = SummaryMetricFamily(
            "coserve_queue_time_seconds",
            "Time from submit to the start of the batch",
            labels=labels,
        )
        exec_time = SummaryMetricFamily(
            "coserve_batch_execution_seconds", "Wall time of each model call", labels=labels
        )
        bucket_labels = [*labels, "length"]
        bucket_requests = CounterMetricFamily(
            "coserve_padding_bucket_requests",
            "Requests padded to each bucket length ([padding] models)",
            labels=bucket_labels,
        )
        bucket_rows = CounterMetricFamily(
            "coserve_padding_bucket_rows", "Rows padded to each bucket length", labels=bucket_labels
        )
        bucket_batches = CounterMetricFamily(
            "coserve_padding_bucket_batches", "Batches run of each bucket", labels=bucket_labels
        )
        elements = CounterMetricFamily(
            "coserve_padding_elements",
            "Elements of the padded inputs: the requests' own (real) and after padding (padded);"
            " padded / real is the padding ratio",
            labels=[*bucket_labels, "kind"],
        )
        for handle in self._repository.handles():
            if handle.padder is not None:
                for bucket in handle.padder.statistics():
                    where = [handle.name, handle.version, str(bucket.length)]
                    bucket_requests.add_metric(where, bucket.requests)
                    bucket_rows.add_metric(where, bucket.rows)
                    bucket_batches.add_metric(where, bucket.batches)
                    elements.add_metric([*where, "real"], bucket.real)
                    elements.add_metric([*where, "padded"], bucket.padded)
            stats = handle.statistics()
            key = [handle.name, handle.version]
            for option in handle.LIVE_OPTIONS:
                value = getattr(handle.batching, option)
                if isinstance(value, int | float):  # the target is text: in the adaptive gauges
                    options.add_metric([*key, option], float(value))
            state = stats.adaptive
            if state is not None:
                target = handle.batching.target_latency
                if target is not None:
                    adaptive.add_metric([*key, "target_seconds"], target.limit)
                for name, value in _adaptive_values(state):
                    adaptive.add_metric([*key, name], value)
                failed_early.add_metric(key, state.failed_early)
            for outcome in _OUTCOMES:
                outcomes.add_metric([*key, outcome], getattr(stats, outcome))
            rejected.add_metric([*key, "queue_full"], stats.rejected_queue_full)
            rejected.add_metric([*key, "closed"], stats.rejected_closed)
            queued.add_metric(key, stats.queued)
            running.add_metric(key, stats.running_batches)
            for reason, count in stats.close_reasons.items():
                closes.add_metric([*key, reason], count)
            buckets = [
                (str(bound), sum(n for size, n in stats.batch_sizes.items() if size <= bound))
                for bound in _BATCH_BUCKETS
            ]
            buckets.append(("+Inf", stats.batches))
            total_rows = sum(size * n for size, n in stats.batch_sizes.items())
            sizes.add_metric(key, buckets, total_rows)
            for family, summary in (
                (queue_time, stats.queue_time),
                (exec_time, stats.execution_time),
            ):
                family.add_metric(key, summary.count, summary.mean * summary.count)
        yield from (outcomes, rejected, queued, running, closes, sizes, queue_time, exec_time)
        yield options
        yield from (adaptive, failed_early)
        yield from (bucket_requests, bucket_rows, bucket_batches, elements)


class _SessionCollector(Collector):
    def __init__(self, sessions: SessionManager) -> None:
        self._sessions = sessions

    def collect(self) -> Iterator[Metric]:
        active = GaugeMetricFamily(
            "coserve_sessions_active", "Open WebSocket sessions, by app", labels=["app"]
        )
        families = {
            name: CounterMetricFamily(f"coserve_sessions_{name}", text, labels=["app"])
            for name, text in (
                ("created", "Sessions started, by app"),
                ("expired", "Sessions closed for being idle, by app"),
                ("refused", "Sessions refused at the session cap, by app"),
                ("errors", "Session failures: graph failures and messages answered with 5xx"),
                ("messages", "Messages received from session clients, by app"),
                ("lost_answers", "Answers dropped because their session closed first"),
                ("resumed", "Sessions resumed from the session store with a resume token"),
                ("taken_over", "Connections closed because their session resumed on another"),
            )
        }
        for app, counters in self._sessions.counters.items():
            active.add_metric([app], counters.active)
            for name, family in families.items():
                family.add_metric([app], getattr(counters, name))
        yield active
        yield from families.values()


class LatencyCounts:
    """One model version's latency histogram: cumulative counts at each bound, and by status."""

    __slots__ = ("bounds", "buckets", "statuses")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = list(bounds)
        """The buckets' upper bounds in seconds, ``inf`` last."""
        self.buckets = [0] * len(bounds)
        """Requests at most each bound (cumulative)."""
        self.statuses: dict[str, int] = {}
        """Requests by status (HTTP status, or gRPC status name)."""


class Metrics:
    """The server's metrics registry: batcher and session statistics, request latency."""

    def __init__(self, repository: ModelRepository, sessions: SessionManager) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_BatcherCollector(repository))
        self.registry.register(_SessionCollector(sessions))
        self.request_latency = Histogram(
            "coserve_request_duration_seconds",
            "Inference request latency as its protocol driver saw it, by protocol (http, "
            "websocket, grpc, grpc-stream, tfserving-http, tfserving-grpc), model, version and "
            "status (HTTP status, or gRPC status name)",
            ["protocol", "model", "version", "status"],
            registry=self.registry,
            buckets=_LATENCY_BUCKETS,
        )

        self._latency_by_label: dict[tuple[str, str, str, int | str], Any] = {}

    def observe_request(
        self, protocol: str, model: str, version: str, status: int | str, seconds: float
    ) -> None:
        """Record one inference request's latency."""
        # labels() takes a lock and builds a key on every call; the children are reused.
        key = (protocol, model, version, status)
        child = self._latency_by_label.get(key)
        if child is None:
            child = self._latency_by_label[key] = self.request_latency.labels(
                protocol, model, version, str(status)
            )
        child.observe(seconds)

    def latency_counts(self) -> dict[tuple[str, str], LatencyCounts]:
        """Each model version's request latency histogram, over every protocol and status.

        The buckets' cumulative counts (as Prometheus keeps them, ``+Inf`` last) and each
        status's count: what the dashboard differences for its percentiles and statuses.
        """
        counts: dict[tuple[str, str], LatencyCounts] = {}
        bounds = [*_LATENCY_BUCKETS, math.inf]
        for metric in self.request_latency.collect():
            for sample in metric.samples:
                labels = sample.labels
                key = (labels["model"], labels["version"])
                entry = counts.get(key)
                if entry is None:
                    entry = counts[key] = LatencyCounts(bounds)
                if sample.name.endswith("_bucket"):
                    index = bounds.index(float(labels["le"]))
                    entry.buckets[index] += int(sample.value)
                elif sample.name.endswith("_count"):
                    status = labels["status"]
                    entry.statuses[status] = entry.statuses.get(status, 0) + int(sample.value)
        return counts

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
