"""Adaptive request batching: the :class:`Batcher` and the :func:`batched` decorator.

Pure asyncio (and numpy for statistics); no web or ML imports. See ``Batcher`` for the dispatch
policy and its guarantees: every submitted item gets exactly one outcome.
"""

from coserve.batching._batcher import AsyncBatchFunction, Batcher, BatchFunction, SyncBatchFunction
from coserve.batching._decorator import Batched, BatchedMethod, batched
from coserve.batching._statistics import BatcherStatistics, CloseReason, DurationSummary

__all__ = [
    "AsyncBatchFunction",
    "BatchFunction",
    "Batched",
    "BatchedMethod",
    "Batcher",
    "BatcherStatistics",
    "CloseReason",
    "DurationSummary",
    "SyncBatchFunction",
    "batched",
]
