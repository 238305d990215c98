"""Admission for handles whose bound is their requests in flight, not a batcher's queue.

An ensemble (its requests run through the composing models' batchers) and a sequence model (its
requests wait in their sequences' queues before the batcher) both admit up to
``batching.max_queue_size`` requests in flight, refuse one more with ``QueueFull`` (counted),
and give each freed place to the next caller waiting for room, first come first served.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from coserve._exceptions import QueueFull, Unsupported
from coserve.models._config import BatchingConfig

__all__ = ["InFlightAdmission"]


class InFlightAdmission:
    """``queue_full``, ``refuse_if_full`` and the room waiters, over ``_in_flight()``.

    The handle sets ``batching``, ``_closing``, ``_room_waiters`` (a deque),
    ``_refused_queue_full`` (0) and implements ``_in_flight``; it calls
    :meth:`_wake_room_waiters` whenever a request leaves, and when it closes.
    """

    batching: BatchingConfig
    _closing: bool
    _room_waiters: deque[Callable[[], bool]]
    _refused_queue_full: int

    def _in_flight(self) -> int:
        raise NotImplementedError

    def configure(self, changes: Mapping[str, Any]) -> BatchingConfig:
        """Refused: these handles schedule requests themselves, around their models' batchers.

        Raises:
            Unsupported: Always; change the composing model's batching instead, or the config.
        """
        raise Unsupported(
            f"model {getattr(self, 'name', '?')!r}: the batching of an ensemble or a sequence "
            "model cannot be changed while it serves (an ensemble's composing models' can)"
        )

    @property
    def queue_full(self) -> bool:
        """Whether as many requests are in flight as the handle takes."""
        return self._in_flight() >= self.batching.max_queue_size

    def refuse_if_full(self) -> None:
        """Raise ``QueueFull`` (counted as a refusal) if the handle is at its bound."""
        if self.queue_full:
            self._refused_queue_full += 1
            raise QueueFull(
                f"model {getattr(self, 'name', '?')!r} has {self._in_flight()} requests in "
                "flight, its maximum; retry later"
            )

    @property
    def waiting_for_room(self) -> int:
        """How many callers wait for a place."""
        return len(self._room_waiters)

    def notify_when_room(self, callback: Callable[[], bool]) -> None:
        """Call ``callback()`` once a request may be admitted (or the handle closes)."""
        self._room_waiters.append(callback)
        self._wake_room_waiters()

    def _wake_room_waiters(self) -> None:
        # First come, first served, one per free place; a callback whose caller has gone
        # (returns False) gives its turn to the next. Closing wakes everyone: they are refused.
        free = self.batching.max_queue_size - self._in_flight()
        while self._room_waiters and (free > 0 or self._closing):
            if self._room_waiters.popleft()():
                free -= 1
