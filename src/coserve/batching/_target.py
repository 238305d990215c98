"""Latency targets written as ``p99<20ms``: the adaptive batcher's goal and ``coserve bench``'s SLO.

One parser for both, so ``[batching] target_latency``, ``coserve bench --slo`` and
``coserve tune --slo`` read the same text the same way.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["LatencyTarget", "parse_duration", "parse_targets"]

_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(us|µs|ms|s)\s*")
_TARGET = re.compile(r"\s*(?:p(\d+(?:\.\d+)?)|(mean|max))\s*(<=?)\s*(.+?)\s*")


def parse_duration(text: str) -> float:
    """``20ms``, ``1.5s``, ``250us`` → seconds (a unit is required: a bare number is ambiguous).

    Raises:
        ValueError: Not a duration with a unit.
    """
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration such as 20ms, 1.5s or 250us")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class LatencyTarget:
    """A bound on one latency statistic: ``p99<20ms`` is ``LatencyTarget(99.0, 0.020)``.

    ``percentile`` is in (0, 100]; 100 means the maximum. ``mean`` is the arithmetic mean.
    """

    percentile: float | None
    """The percentile bounded, or None for the mean."""
    limit: float
    """The bound, in seconds."""

    def __post_init__(self) -> None:
        percentile = self.percentile
        if percentile is not None and not 0 < percentile <= 100:
            raise ValueError(f"a latency target's percentile must be in (0, 100], got {percentile}")
        if not 0 < self.limit < math.inf:  # also refuses NaN
            raise ValueError(f"a latency target's bound must be > 0 seconds, got {self.limit}")

    @classmethod
    def parse(cls, text: str) -> LatencyTarget:
        """``p99<20ms``, ``p99.9<50ms``, ``p50<=2ms``, ``mean<5ms``, ``max<1s``.

        ``<`` and ``<=`` mean the same (latencies are measured, not counted).

        Raises:
            ValueError: Not a latency target.
        """
        match = _TARGET.fullmatch(text)
        if match is None:
            raise ValueError(
                f"{text!r} is not a latency target such as p99<20ms, p99.9<50ms or mean<5ms"
            )
        number, word, _, bound = match.groups()
        if word == "mean":
            percentile: float | None = None
        elif word == "max":
            percentile = 100.0
        else:
            percentile = float(number)
            if not 0 < percentile <= 100:
                raise ValueError(f"{text!r}: the percentile must be in (0, 100]")
        limit = parse_duration(bound)
        if not 0 < limit < math.inf:
            raise ValueError(f"{text!r}: the bound must be > 0")
        return cls(percentile, limit)

    @property
    def statistic(self) -> str:
        """The statistic's name: ``p99``, ``p99.9``, ``mean``, ``max``."""
        if self.percentile is None:
            return "mean"
        if self.percentile == 100:
            return "max"
        return f"p{self.percentile:g}"

    def __str__(self) -> str:
        return f"{self.statistic}<{_format_seconds(self.limit)}"


def parse_targets(text: str) -> tuple[LatencyTarget, ...]:
    """A comma-separated list of targets: ``p50<5ms,p99<20ms``.

    Raises:
        ValueError: One of them is not a latency target, or the list is empty.
    """
    parts = [part for part in text.split(",") if part.strip()]
    if not parts:
        raise ValueError("no latency target given (such as p99<20ms)")
    return tuple(LatencyTarget.parse(part) for part in parts)


def _format_seconds(value: float) -> str:
    if value >= 1:
        return f"{value:g}s"
    if value >= 1e-3:
        return f"{value * 1e3:g}ms"
    return f"{value * 1e6:g}us"
