"""Triton's statistics extension: ``GET /v2/models[/{model}[/versions/{version}]]/stats``.

The answer is built at request time from each model version's batcher statistics, so serving
it costs the request path nothing (the batcher keeps its counters anyway, see ``_metrics``).
How coserve's counters map onto Triton's fields:

``inference_count``
    Rows of the completed requests (Triton counts each row of a batched request).
``execution_count``
    Batches started, including those whose model call raised; ``batch_stats`` counts sum to it.
``success``
    Completed requests and their summed time in the batcher, from submit to answer.
``fail``
    Requests answered with an error by the model or the batcher: failed, expired (deadline
    passed) and aborted (the batcher closed); the time from submit to the error. Requests
    their client withdrew are in neither ``success`` nor ``fail``.
``queue``
    Every request that reached a batch, and its time from submit to the start of that batch.
``compute_infer``
    The completed requests, each charged the whole wall time of the batch it ran in (it waited
    all of it, as in Triton, where each request of a batch reports the batch's compute time).
    So ``compute_infer.ns <= success.ns``.
``compute_input``, ``compute_output``
    Zero: coserve's model call converts inputs and outputs inside the time it measures for
    ``compute_infer``, and does not time them apart.
``cache_hit``, ``cache_miss``
    Zero: coserve has no response cache.
``batch_stats``
    One entry per batch size (rows) seen: ``compute_infer`` is the batches of that size and
    their summed wall time (a batch still running counts, its time comes when it ends);
    ``compute_input`` and ``compute_output`` are zero, as above.
``last_inference``
    When the model version's last batch finished, in ms since the epoch (0 before any).
"""

from __future__ import annotations

from typing import Any

from coserve.batching import BatcherStatistics
from coserve.models import ModelHandle, ModelRepository

__all__ = ["model_statistics", "select_handles"]

_NS = 1_000_000_000
_ZERO = {"count": 0, "ns": 0}


def _duration(count: int, seconds: float) -> dict[str, int]:
    return {"count": count, "ns": round(seconds * _NS)}


def _model_stat(name: str, version: str, stats: BatcherStatistics) -> dict[str, Any]:
    queue = stats.queue_time
    return {
        "name": name,
        "version": version,
        "last_inference": round(stats.last_batch_end * 1000),
        "inference_count": stats.completed_rows,
        "execution_count": stats.batches,
        "inference_stats": {
            "success": _duration(stats.completed, stats.completed_seconds),
            "fail": _duration(stats.failed + stats.expired + stats.aborted, stats.error_seconds),
            # The summary keeps the exact sum as mean * count; the product rounds back to it.
            "queue": _duration(queue.count, queue.mean * queue.count),
            "compute_input": dict(_ZERO),
            "compute_infer": _duration(stats.completed, stats.completed_execution_seconds),
            "compute_output": dict(_ZERO),
            "cache_hit": dict(_ZERO),
            "cache_miss": dict(_ZERO),
        },
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": {"count": count, "ns": 0},
                "compute_infer": _duration(count, stats.batch_execution_seconds.get(size, 0.0)),
                "compute_output": {"count": count, "ns": 0},
            }
            for size, count in sorted(stats.batch_sizes.items())
        ],
    }


def select_handles(
    repository: ModelRepository, name: str | None, version: str | None
) -> list[ModelHandle]:
    """The handles a stats request names: all, every version of ``name``, or one version.

    Raises:
        ModelNotFound: No such model, or no such version of it.
    """
    if name is None:
        return repository.handles()
    if version is not None:
        return [repository.get(name, version)]
    repository.get(name)  # raises for an unknown model
    return [h for h in repository.handles() if h.name == name]


def model_statistics(handles: list[ModelHandle]) -> dict[str, Any]:
    """Triton's ``$stats_model_response`` for ``handles``."""
    return {"model_stats": [_model_stat(h.name, h.version, h.statistics()) for h in handles]}
