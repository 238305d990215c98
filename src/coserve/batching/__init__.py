"""Adaptive request batching: the :class:`Batcher` and the :func:`batched` decorator.

Pure asyncio (and numpy for statistics); no web or ML imports. See ``Batcher`` for the dispatch
policy and its guarantees: every submitted item gets exactly one outcome.
"""

from coserve.batching._adaptive import AdaptiveState
from coserve.batching._batcher import (
    UNSET,
    AsyncBatchFunction,
    Batcher,
    BatchFunction,
    BatchingOptions,
    SyncBatchFunction,
)
from coserve.batching._decorator import Batched, BatchedMethod, batched
from coserve.batching._statistics import BatcherStatistics, CloseReason, DurationSummary
from coserve.batching._target import LatencyTarget

__all__ = [
    "UNSET",
    "AdaptiveState",
    "AsyncBatchFunction",
    "BatchFunction",
    "Batched",
    "BatchedMethod",
    "Batcher",
    "BatcherStatistics",
    "BatchingOptions",
    "CloseReason",
    "DurationSummary",
    "LatencyTarget",
    "SyncBatchFunction",
    "batched",
]
