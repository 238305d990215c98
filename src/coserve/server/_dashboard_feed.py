"""What the dashboard shows: snapshots of one process's statistics, and frames made of them.

A **snapshot** is cumulative and JSON-able: each model version's batcher counters, latency
histogram and batching policy, and the session apps' counters. A worker of ``--workers N`` serves
its own at ``/dashboard/snapshot?local=1``. A **frame** is what one server-sent event carries:
the snapshots of every worker differenced over the last interval (rates), the last minute (the
batch-size histogram) and the last ten seconds (latency percentiles), then summed over workers.

No I/O here: ``_dashboard`` takes the snapshots, keeps their history and streams the frames.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from coserve.batching import LatencyTarget
from coserve.graph import Graph
from coserve.models import ModelRepository
from coserve.server._metrics import Metrics
from coserve.server._sessions import SessionManager

__all__ = [
    "HISTOGRAM_WINDOW",
    "LATENCY_WINDOW",
    "History",
    "graph_view",
    "make_frame",
    "quantile",
    "snapshot",
]

Snapshot = dict[str, Any]
Frame = dict[str, Any]

HISTOGRAM_WINDOW = 60.0
"""Seconds of batches the batch-size histogram counts."""
LATENCY_WINDOW = 10.0
"""Seconds of requests the latency percentiles are over."""

_OUTCOMES = ("completed", "failed", "expired", "cancelled", "aborted")
_COUNTERS = ("submitted", *_OUTCOMES, "batches", "rejected_queue_full", "rejected_closed")


def _policy_value(value: Any) -> Any:
    return str(value) if isinstance(value, LatencyTarget) else value


def snapshot(
    repository: ModelRepository,
    sessions: SessionManager,
    metrics: Metrics,
    *,
    worker: int | None = None,
) -> Snapshot:
    """This process's statistics now, cumulative since each model version loaded."""
    latencies = metrics.latency_counts()
    models = []
    for handle in repository.handles():
        stats = handle.statistics()
        latency = latencies.get((handle.name, handle.version))
        models.append(
            {
                "key": f"{handle.name}/{handle.version}",
                "name": handle.name,
                "version": handle.version,
                **{name: getattr(stats, name) for name in _COUNTERS},
                "queued": stats.queued,
                "running": stats.running_batches,
                "in_flight": stats.in_flight,
                "batch_sizes": {str(size): n for size, n in stats.batch_sizes.items()},
                "close_reasons": dict(stats.close_reasons),
                "queue_time": dataclasses.asdict(stats.queue_time),
                "execution_time": dataclasses.asdict(stats.execution_time),
                "latency": None
                if latency is None
                else {"buckets": latency.buckets, "statuses": latency.statuses},
                "policy": {
                    option: _policy_value(getattr(handle.batching, option))
                    for option in handle.LIVE_OPTIONS
                },
                "adaptive": None if stats.adaptive is None else dataclasses.asdict(stats.adaptive),
            }
        )
    apps = {app: dataclasses.asdict(counters) for app, counters in sessions.counters.items()}
    live = [
        {"id": s.id, "app": s.app, "started": s.started, "worker": worker} for s in sessions.live()
    ]
    return {
        "time": time.time(),
        "worker": worker,
        "pid": os.getpid(),
        "latency_bounds": [b if math.isfinite(b) else None for b in _bounds(latencies)],
        "models": models,
        "sessions": {"apps": apps, "live": live},
    }


def _bounds(latencies: Mapping[Any, Any]) -> list[float]:
    for counts in latencies.values():
        return list(counts.bounds)
    return []


def quantile(q: float, bounds: Sequence[float | None], cumulative: Sequence[float]) -> float | None:
    """The ``q`` quantile of a histogram's cumulative counts, interpolated in its bucket.

    As Prometheus's ``histogram_quantile``: linear within the bucket the rank falls in; a rank
    in the last (unbounded, ``None``) bucket answers the largest finite bound. None when empty.
    """
    if not cumulative or cumulative[-1] <= 0:
        return None
    rank = q * cumulative[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, cumulative, strict=True):
        if count >= rank:
            if bound is None:
                return lower
            inside = count - below
            share = (rank - below) / inside if inside else 1.0
            return lower + (bound - lower) * share
        if bound is not None:
            lower = bound
        below = count
    return lower


class History:
    """The snapshots of each source (a worker, or this process) within the longest window."""

    def __init__(self, keep: float = HISTOGRAM_WINDOW + 2.0) -> None:
        self.keep = keep
        self._sources: dict[Any, deque[Snapshot]] = {}

    def add(self, source: Any, shot: Snapshot) -> None:
        """Remember a snapshot; forget those older than the longest window."""
        shots = self._sources.setdefault(source, deque())
        shots.append(shot)
        while len(shots) > 2 and shots[-1]["time"] - shots[1]["time"] >= self.keep:
            shots.popleft()

    def forget(self, keep: Iterable[Any]) -> None:
        """Drop the sources not in ``keep`` (workers gone)."""
        wanted = set(keep)
        for source in list(self._sources):
            if source not in wanted:
                del self._sources[source]

    def sources(self) -> dict[Any, deque[Snapshot]]:
        """Each source's snapshots, oldest first."""
        return self._sources


def _at_or_before(shots: deque[Snapshot], when: float) -> Snapshot:
    """The newest snapshot taken at or before ``when`` (the oldest if none is that old)."""
    chosen = shots[0]
    for shot in shots:
        if shot["time"] > when:
            break
        chosen = shot
    return chosen


def _by_key(shot: Snapshot) -> dict[str, dict[str, Any]]:
    return {model["key"]: model for model in shot["models"]}


def _delta(now: Mapping[str, Any], then: Mapping[str, Any] | None, name: str) -> float:
    # A model version reloaded starts its counters again: never a negative rate.
    return max(0.0, float(now[name] - (then[name] if then is not None else now[name])))


def _mapping_delta(now: Mapping[str, int], then: Mapping[str, int] | None) -> dict[str, int]:
    """Counts since ``then``; none when there is no ``then`` (no interval to rate over)."""
    if then is None:
        return dict.fromkeys(now, 0)
    return _since(now, then)


def _since(now: Mapping[str, int], then: Mapping[str, int] | None) -> dict[str, int]:
    """Counts since ``then``; all of them when ``then`` is None (the model loaded since)."""
    if then is None:
        return dict(now)
    return {key: max(0, count - then.get(key, 0)) for key, count in now.items()}


def _duration_mean(now: Mapping[str, Any], then: Mapping[str, Any] | None) -> float | None:
    """The mean duration over the interval, from two cumulative (count, mean) pairs."""
    if then is None:
        return None
    count = now["count"] - then["count"]
    if count <= 0:
        return None
    total = float(now["mean"] * now["count"] - then["mean"] * then["count"])
    return max(0.0, total / float(count))


class _Model:
    """One model version's frame entry, summed over the sources that serve it."""

    def __init__(self, model: Mapping[str, Any]) -> None:
        self.entry: dict[str, Any] = {
            "key": model["key"],
            "name": model["name"],
            "version": model["version"],
            "policy": model["policy"],
            "adaptive": model["adaptive"],
            "queued": 0,
            "running": 0,
            "rates": dict.fromkeys(("requests", "completed", "errors", "batches", "rows"), 0.0),
            "totals": dict.fromkeys((*_COUNTERS, "rejected"), 0),
            "histogram": {},
            "close_reasons": {},
            "close_totals": {},
            "rejections": {"queue_full": 0.0, "closed": 0.0},
            "statuses": {},
            "status_totals": {},
            "queue_ms": None,
            "exec_ms": None,
            "queue_p99_ms": 0.0,
            "exec_p99_ms": 0.0,
            "p50_ms": None,
            "p99_ms": None,
            "workers": [],
        }
        self.latency: list[float] = []
        self.rows = 0
        self._queue: list[tuple[float, int]] = []
        self._exec: list[tuple[float, int]] = []


def make_frame(
    history: History, seq: int, *, interval: float, sessions: list[Any] | None = None
) -> Frame:
    """The frame of the sources' newest snapshots against their older ones."""
    models: dict[str, _Model] = {}
    apps: dict[str, dict[str, int]] = {}
    live: list[dict[str, Any]] = []
    bounds: list[float | None] = []
    newest = 0.0
    workers = []
    for _, shots in sorted(history.sources().items(), key=lambda kv: str(kv[0])):
        now = shots[-1]
        newest = max(newest, now["time"])
        workers.append({"worker": now["worker"], "pid": now["pid"]})
        bounds = bounds or now["latency_bounds"]
        previous = _by_key(shots[-2]) if len(shots) > 1 else {}
        minute = _by_key(_at_or_before(shots, now["time"] - HISTOGRAM_WINDOW))
        recent = _by_key(_at_or_before(shots, now["time"] - LATENCY_WINDOW))
        elapsed = now["time"] - shots[-2]["time"] if len(shots) > 1 else interval
        elapsed = elapsed if elapsed > 0 else interval
        for model in now["models"]:
            key = model["key"]
            entry = models.get(key)
            if entry is None:
                entry = models[key] = _Model(model)
            _add_source(entry, model, previous.get(key), minute.get(key), recent.get(key), elapsed)
            row = _worker_row(now["worker"], model, previous.get(key), elapsed)
            entry.entry["workers"].append(row)
        for app, counters in now["sessions"]["apps"].items():
            total = apps.setdefault(app, dict.fromkeys(counters, 0))
            for name, value in counters.items():
                total[name] = total.get(name, 0) + value
        live.extend(now["sessions"]["live"])
    out = []
    for entry in models.values():
        frame_entry = entry.entry
        frame_entry["p50_ms"] = _ms(quantile(0.5, bounds, entry.latency))
        frame_entry["p99_ms"] = _ms(quantile(0.99, bounds, entry.latency))
        frame_entry["queue_ms"] = _weighted(entry._queue)
        frame_entry["exec_ms"] = _weighted(entry._exec)
        batches = frame_entry["totals"]["batches"]
        frame_entry["mean_batch"] = entry.rows / batches if batches else 0.0
        if len(workers) < 2:
            frame_entry["workers"] = []
        out.append(frame_entry)
    frame: Frame = {
        "seq": seq,
        "time": newest or time.time(),
        "interval": interval,
        "histogram_window": HISTOGRAM_WINDOW,
        "latency_window": LATENCY_WINDOW,
        "workers": workers,
        "models": out,
        "sessions": {"apps": apps, "live": sorted(live, key=lambda s: s["started"])},
    }
    if sessions is not None:
        frame["sessions"]["graphs"] = sessions
    return frame


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def _weighted(means: list[tuple[float, int]]) -> float | None:
    """Milliseconds: the per-source interval means, weighted by their counts."""
    count = sum(n for _, n in means)
    if not count:
        return None
    return sum(mean * n for mean, n in means) / count * 1e3


def _add_source(
    entry: _Model,
    model: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    minute: Mapping[str, Any] | None,
    recent: Mapping[str, Any] | None,
    elapsed: float,
) -> None:
    out = entry.entry
    out["queued"] += model["queued"]
    out["running"] += model["running"]
    rates = out["rates"]
    rates["requests"] += _delta(model, previous, "submitted") / elapsed
    rates["completed"] += _delta(model, previous, "completed") / elapsed
    rates["errors"] += sum(_delta(model, previous, name) for name in _OUTCOMES[1:]) / elapsed
    rates["batches"] += _delta(model, previous, "batches") / elapsed
    totals = out["totals"]
    for name in _COUNTERS:
        totals[name] += model[name]
    totals["rejected"] += model["rejected_queue_full"] + model["rejected_closed"]
    entry.rows += sum(int(size) * n for size, n in model["batch_sizes"].items())
    # Rows per second: the rows of the batches started in the interval.
    then_sizes = None if previous is None else previous["batch_sizes"]
    rows = _mapping_delta(model["batch_sizes"], then_sizes)
    rates["rows"] += sum(int(size) * n for size, n in rows.items()) / elapsed
    histogram = out["histogram"]
    window = _since(model["batch_sizes"], None if minute is None else minute["batch_sizes"])
    for size, n in window.items():
        if n:
            histogram[size] = histogram.get(size, 0) + n
    reasons = _mapping_delta(
        model["close_reasons"], None if previous is None else previous["close_reasons"]
    )
    for reason, n in reasons.items():
        out["close_reasons"][reason] = out["close_reasons"].get(reason, 0.0) + n / elapsed
        out["close_totals"][reason] = (
            out["close_totals"].get(reason, 0) + model["close_reasons"][reason]
        )
    out["rejections"]["queue_full"] += _delta(model, previous, "rejected_queue_full") / elapsed
    out["rejections"]["closed"] += _delta(model, previous, "rejected_closed") / elapsed
    latency = model["latency"]
    if latency is not None:
        then = None if previous is None else previous["latency"]
        statuses = _mapping_delta(latency["statuses"], None if then is None else then["statuses"])
        for status, n in statuses.items():
            out["statuses"][status] = out["statuses"].get(status, 0.0) + n / elapsed
            out["status_totals"][status] = (
                out["status_totals"].get(status, 0) + latency["statuses"][status]
            )
        base = None if recent is None else recent["latency"]
        counts = [
            max(0, c - (base["buckets"][i] if base is not None else 0))
            for i, c in enumerate(latency["buckets"])
        ]
        if not entry.latency:
            entry.latency = [0.0] * len(counts)
        entry.latency = [a + b for a, b in zip(entry.latency, counts, strict=True)]
    for name, sink, p99 in (
        ("queue_time", entry._queue, "queue_p99_ms"),
        ("execution_time", entry._exec, "exec_p99_ms"),
    ):
        then = None if previous is None else previous[name]
        mean = _duration_mean(model[name], then)
        if mean is not None and then is not None:
            sink.append((mean, model[name]["count"] - then["count"]))
        out[p99] = max(out[p99], model[name]["p99"] * 1e3)


def _worker_row(
    worker: int | None,
    model: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    elapsed: float,
) -> dict[str, Any]:
    return {
        "worker": worker,
        "requests": _delta(model, previous, "submitted") / elapsed,
        "batches": _delta(model, previous, "batches") / elapsed,
        "queued": model["queued"],
        "running": model["running"],
        "completed": model["completed"],
        "exec_p99_ms": model["execution_time"]["p99"] * 1e3,
    }


def graph_view(session_id: str, app: str, graph: Graph, worker: int | None) -> dict[str, Any]:
    """A session's graph as the page draws it: nodes with their counts, links with queues."""
    stats = graph.statistics()
    nodes = []
    for name, node in stats.nodes.items():
        nodes.append(
            {
                "name": name,
                "kind": node.kind,
                "state": node.state,
                "messages_in": node.messages_in,
                "messages_out": node.messages_out,
                "errors": node.errors,
                "restarts": node.restarts,
                "in_hand": node.in_hand,
                "inputs": {
                    port: {
                        "messages": p.messages,
                        "buffered": p.buffered,
                        "capacity": p.capacity,
                        "dropped": p.dropped,
                    }
                    for port, p in node.inputs.items()
                },
                "outputs": {
                    port: {"messages": p.messages, "dropped": p.dropped}
                    for port, p in node.outputs.items()
                },
            }
        )
    return {
        "id": session_id,
        "app": app,
        "worker": worker,
        "graph": stats.name,
        "state": stats.state,
        "restarts": stats.restarts,
        "dead_letters": stats.dead_letters,
        "nodes": nodes,
        "links": [
            {"from": a, "output": out, "to": b, "input": inp} for a, out, b, inp in graph.links()
        ],
        "mermaid": graph.to_mermaid(),
    }
