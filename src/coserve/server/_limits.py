"""The limits every connection and request is held to: one place for their defaults.

A server that stays up under overload and abuse bounds everything a client can make it hold:
bytes (a body, a head, buffered pipelined requests), time (a head or body that never ends) and
connections. :class:`ServerLimits` gathers those bounds; ``coserve serve`` sets them from its
flags, ``create_app(limits=...)`` takes them, and both HTTP protocols read them from the app's
state. What a client gets when it hits each one is listed in the README ("Limits").
"""

from __future__ import annotations

import dataclasses
import resource
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DRAIN_IDLE_GRACE",
    "RESERVED_DESCRIPTORS",
    "ServerLimits",
    "connection_budget",
    "limits_of",
    "raise_descriptor_limit",
]

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Bounds on what one client may make the server hold.

    Attributes:
        max_request_size: The largest request body, in bytes; a larger declared body gets 413
            before it is read.
        max_json_size: The largest JSON document in an inference or predict request, in bytes
            (413). Big tensors travel faster as binary data (the binary tensor extension), which
            this limit does not count. The default, 32 MiB, holds one decode (in a decoder
            process) to ~0.2 s and ~130 MiB on a 2-core machine; binary data is a memcpy.
        max_header_size: The most bytes in a request's head (request line and headers); more
            gets 431 and the connection closes.
        max_headers: The most header lines in a request (431).
        head_timeout: Seconds a request's head may take to arrive once its first byte has; then
            408 and the connection closes.
        body_timeout: Seconds a request body may go without a byte arriving (408, closed).
        min_body_rate: Bytes per second a body must bring over each window of
            ``body_timeout`` seconds (408, closed): neither a trickle nor a body sent fast and
            then dripped can hold a connection for long.
        max_connections: Open HTTP and WebSocket connections at once; one more is answered 503
            and closed at once. By default the process's file-descriptor limit less
            ``RESERVED_DESCRIPTORS``, so the server refuses quickly where it would otherwise
            fail to accept (and lose the descriptors its models and logs need).
    """

    max_request_size: int = 64 * MiB
    max_json_size: int = 32 * MiB
    max_header_size: int = 32 * KiB
    max_headers: int = 100
    head_timeout: float = 10.0
    body_timeout: float = 10.0
    min_body_rate: int = 64 * KiB
    max_connections: int = dataclasses.field(default_factory=lambda: connection_budget())

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{field.name} must be a positive number, got {value!r}")

    def replace(self, **changes: float) -> ServerLimits:
        """A copy with some limits changed."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


DRAIN_IDLE_GRACE = 1.0
"""Seconds an idle connection stays open once shutdown begins, for a request on its way.

A client that got an answer without ``Connection: close`` just before the signal may already
have sent its next request; closing at once would lose it.
"""

RESERVED_DESCRIPTORS = 512
"""File descriptors kept for everything but connections: model files, logs, worker sockets."""


def raise_descriptor_limit() -> int:
    """Raise this process's soft file-descriptor limit to its hard limit; return the new one.

    Many servers do (nginx's ``worker_rlimit_nofile``): the soft limit is often 1,024, which
    a few hundred slow clients exhaust.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft


def connection_budget() -> int:
    """The default ``max_connections``: the descriptor limit less the reserved ones."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(64, soft - RESERVED_DESCRIPTORS)


def limits_of(app: Any) -> ServerLimits:
    """The limits of a coserve app (``create_app``'s), or the defaults for any other app."""
    limits = getattr(getattr(app, "state", None), "limits", None)
    return limits if isinstance(limits, ServerLimits) else ServerLimits()
