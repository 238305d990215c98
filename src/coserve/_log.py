"""Logging a repeated error once, with a count, instead of once per occurrence.

A flood of one error (a client sending thousands of bad messages, a model failing every
request) would otherwise write one line each: megabytes of log that say one thing. A
:class:`RepeatedLog` logs the first occurrence of a *key* (a caller-chosen kind of event, such
as ``("failed", node, type(error))``) at once, then keeps quiet about that key for ``interval``
seconds, counting. The next occurrence after the interval is logged with the count of the ones
in between::

    session 4f…: message 17 failed in reject: RuntimeError('no') (and 61,980 more like it in the
    last 10 s)

:meth:`RepeatedLog.flush` writes the pending counts at once (e.g. when a session ends), so none
is left unsaid. Every occurrence is accounted for exactly: it has a line of its own, or it is in
the count of the next line for its key. There is no background task; the clock is read only
when something is logged, so the summary goes out with the next occurrence or the flush.

This module is standalone (only the standard library), for use from any layer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["RepeatedLog", "log_repeated"]


@dataclass(slots=True)
class _Key:
    """What a key has done since its last line."""

    since: float  # when its last line went out
    quiet: int = 0  # occurrences since then that had no line of their own
    last: tuple[int, str, tuple[Any, ...]] | None = None  # the latest of those: level, msg, args


class RepeatedLog:
    """Logs each kind of event once per interval, with a count of the repeats in between.

    Args:
        logger: Where the lines go.
        interval: Seconds after a key's line during which its repeats are only counted.
        clock: Monotonic seconds (injectable for tests).
        max_keys: Keys remembered at once; when a new key would exceed it, the pending counts
            are flushed and every key forgotten, so memory stays bounded whatever the keys.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 1024,
    ) -> None:
        if interval < 0:
            raise ValueError(f"interval must be >= 0, got {interval!r}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys!r}")
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self.max_keys = max_keys
        self._keys: dict[Hashable, _Key] = {}

    def log(self, level: int, key: Hashable, msg: str, *args: Any) -> bool:
        """Log ``msg % args`` now, or count it if ``key`` was logged within the interval.

        A line after a quiet spell ends with ``(and N more like it in the last T s)``.

        Returns:
            Whether a line went out for this occurrence.
        """
        now = self.clock()
        state = self._keys.get(key)
        if state is not None and now - state.since < self.interval:
            state.quiet += 1
            state.last = (level, msg, args)
            return False
        if state is None:
            if len(self._keys) >= self.max_keys:
                self.flush()
                self._keys.clear()
            self._keys[key] = _Key(since=now)
        else:
            self._emit(state, level, msg, args, now)
            state.quiet = 0
            state.last = None
            state.since = now
            return True
        self.logger.log(level, msg, *args)
        return True

    def flush(self) -> int:
        """Write every key's pending count now (its latest repeat, with the rest counted).

        Returns:
            How many lines went out.
        """
        now = self.clock()
        lines = 0
        for state in self._keys.values():
            if state.last is None:
                continue
            level, msg, args = state.last
            state.quiet -= 1  # the latest repeat gets the line; the count is of the others
            self._emit(state, level, msg, args, now)
            state.quiet = 0
            state.last = None
            state.since = now
            lines += 1
        return lines

    def _emit(self, state: _Key, level: int, msg: str, args: tuple[Any, ...], now: float) -> None:
        if not self.logger.isEnabledFor(level):
            return
        if state.quiet == 0:
            self.logger.log(level, msg, *args)
            return
        self.logger.log(
            level,
            "%s (and %s more like it in the last %.3g s)",
            _render(msg, args),
            f"{state.quiet:,}",
            now - state.since,
        )


def _render(msg: str, args: tuple[Any, ...]) -> str:
    """``msg % args`` as logging would do it, never raising (a log call must not fail)."""
    values: Any = args
    if len(args) == 1 and isinstance(args[0], Mapping) and args[0]:
        values = args[0]  # logging's "%(name)s" form
    try:
        return msg % values if args else msg
    except (TypeError, ValueError, KeyError):
        return f"{msg} {args!r}"


_shared: dict[str, RepeatedLog] = {}


def log_repeated(logger: logging.Logger, level: int, key: Hashable, msg: str, *args: Any) -> bool:
    """:meth:`RepeatedLog.log` on a process-wide ``RepeatedLog`` for ``logger`` (10 s interval).

    Its counts go out with the key's next occurrence after the interval; use a
    :class:`RepeatedLog` of your own where they must be flushed at a known point.

    Returns:
        Whether a line went out for this occurrence.
    """
    repeated = _shared.get(logger.name)
    if repeated is None:
        repeated = _shared[logger.name] = RepeatedLog(logger)
    return repeated.log(level, key, msg, *args)
