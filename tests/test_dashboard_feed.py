"""The dashboard's frames from snapshots (``_dashboard_feed``), on numbers made up here."""

from __future__ import annotations

import math
from typing import Any

import pytest

from coserve.server._dashboard_feed import (
    HISTOGRAM_WINDOW,
    History,
    make_frame,
    quantile,
)

BOUNDS: list[float | None] = [0.001, 0.01, 0.1, None]


def model(**counts: Any) -> dict[str, Any]:
    """One model version's cumulative snapshot entry; ``counts`` override the zeros."""
    entry: dict[str, Any] = {
        "key": "m/1",
        "name": "m",
        "version": "1",
        "submitted": 0,
        "completed": 0,
        "failed": 0,
        "expired": 0,
        "cancelled": 0,
        "aborted": 0,
        "batches": 0,
        "rejected_queue_full": 0,
        "rejected_closed": 0,
        "queued": 0,
        "running": 0,
        "in_flight": 0,
        "batch_sizes": {},
        "close_reasons": {"full": 0, "max_wait": 0},
        "queue_time": {"count": 0, "mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0},
        "execution_time": {"count": 0, "mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0},
        "latency": {"buckets": [0, 0, 0, 0], "statuses": {}},
        "policy": {"max_batch_size": 8},
        "adaptive": None,
    }
    entry.update(counts)
    return entry


def shot(at: float, *models: dict[str, Any], worker: int | None = None) -> dict[str, Any]:
    return {
        "time": at,
        "worker": worker,
        "pid": 1,
        "latency_bounds": BOUNDS,
        "models": list(models),
        "sessions": {"apps": {"app": {"active": 1, "created": 2}}, "live": []},
    }


def test_quantile_interpolates_within_the_bucket() -> None:
    # 10 requests under 1 ms, 10 more under 10 ms: the median is the first bucket's top.
    assert quantile(0.5, BOUNDS, [10, 20, 20, 20]) == pytest.approx(0.001)
    assert quantile(0.75, BOUNDS, [10, 20, 20, 20]) == pytest.approx(0.0055)
    # A rank in the unbounded bucket answers the largest finite bound.
    assert quantile(0.99, BOUNDS, [0, 0, 1, 10]) == pytest.approx(0.1)
    assert quantile(0.5, BOUNDS, [0, 0, 0, 0]) is None


def test_rates_are_over_the_last_interval_and_totals_cumulative() -> None:
    history = History()
    history.add(None, shot(100.0, model(submitted=10, completed=10, batches=5)))
    history.add(None, shot(102.0, model(submitted=30, completed=26, failed=2, batches=9, queued=2)))
    frame = make_frame(history, 7, interval=1.0)
    (entry,) = frame["models"]
    assert frame["seq"] == 7
    assert frame["time"] == 102.0
    assert entry["rates"]["requests"] == pytest.approx(10.0)  # 20 more in 2 s
    assert entry["rates"]["completed"] == pytest.approx(8.0)
    assert entry["rates"]["errors"] == pytest.approx(1.0)
    assert entry["rates"]["batches"] == pytest.approx(2.0)
    assert entry["totals"]["completed"] == 26
    assert entry["queued"] == 2
    assert entry["workers"] == []  # one source: no per-worker rows


def test_a_counter_that_starts_again_never_makes_a_negative_rate() -> None:
    history = History()
    history.add(None, shot(0.0, model(completed=50)))
    history.add(None, shot(1.0, model(completed=3)))  # the version reloaded
    (entry,) = make_frame(history, 1, interval=1.0)["models"]
    assert entry["rates"]["completed"] == 0.0


def test_the_histogram_counts_the_last_minute_only() -> None:
    history = History()
    history.add(None, shot(0.0, model(batch_sizes={"1": 100})))
    history.add(None, shot(30.0, model(batch_sizes={"1": 100, "4": 10})))
    history.add(None, shot(HISTOGRAM_WINDOW + 1, model(batch_sizes={"1": 103, "4": 12, "8": 1})))
    (entry,) = make_frame(history, 1, interval=1.0)["models"]
    # Against the snapshot at t=0 (the newest at or before a minute ago).
    assert entry["histogram"] == {"1": 3, "4": 12, "8": 1}
    history.add(None, shot(95.0, model(batch_sizes={"1": 103, "4": 12, "8": 1})))
    (entry,) = make_frame(history, 2, interval=1.0)["models"]
    assert entry["histogram"] == {"1": 3, "4": 2, "8": 1}  # against t=30 now


def test_latency_percentiles_and_mean_times_over_the_window() -> None:
    history = History()
    zero = {"count": 0, "mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
    history.add(None, shot(0.0, model(queue_time=zero, execution_time=zero)))
    history.add(
        None,
        shot(
            1.0,
            model(
                latency={"buckets": [10, 20, 20, 20], "statuses": {"200": 19, "429": 1}},
                queue_time={**zero, "count": 4, "mean": 0.002, "p99": 0.004},
                execution_time={**zero, "count": 2, "mean": 0.010, "p99": 0.012},
            ),
        ),
    )
    (entry,) = make_frame(history, 1, interval=1.0)["models"]
    assert entry["p50_ms"] == pytest.approx(1.0)
    assert entry["p99_ms"] == pytest.approx(1.0 + 9.0 * 0.98)
    assert entry["queue_ms"] == pytest.approx(2.0)
    assert entry["exec_ms"] == pytest.approx(10.0)
    assert entry["queue_p99_ms"] == pytest.approx(4.0)
    assert entry["statuses"] == {"200": 19.0, "429": 1.0}
    assert entry["status_totals"] == {"200": 19, "429": 1}


def test_workers_are_summed_and_listed() -> None:
    history = History()
    for worker, done in ((0, 10), (1, 30)):
        history.add(worker, shot(0.0, model(), worker=worker))
        history.add(worker, shot(1.0, model(completed=done, queued=worker + 1), worker=worker))
    frame = make_frame(history, 1, interval=1.0)
    (entry,) = frame["models"]
    assert [w["worker"] for w in frame["workers"]] == [0, 1]
    assert entry["rates"]["completed"] == pytest.approx(40.0)
    assert entry["queued"] == 3
    assert [(w["worker"], w["completed"]) for w in entry["workers"]] == [(0, 10), (1, 30)]
    assert frame["sessions"]["apps"]["app"] == {"active": 2, "created": 4}
    history.forget([1])
    assert [w["worker"] for w in make_frame(history, 2, interval=1.0)["workers"]] == [1]


def test_history_keeps_the_longest_window_only() -> None:
    history = History(keep=10.0)
    for at in range(30):
        history.add(None, shot(float(at), model()))
    (shots,) = history.sources().values()
    assert shots[-1]["time"] - shots[0]["time"] <= 11.0
    assert not math.isnan(shots[0]["time"])
