"""The message that travels between nodes: a value plus the request it belongs to."""

from __future__ import annotations

import itertools
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, TypeVar

__all__ = ["DeadLetter", "Signal"]

T = TypeVar("T")
U = TypeVar("U")

_next_id = itertools.count(1).__next__
_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True, eq=False)  # identity: two requests may carry equal values
class Signal(Generic[T]):
    """A value on its way through a graph, tagged with the request it belongs to.

    Nodes keep a request's ``id`` when they pass on what they made of it (:meth:`derive`), so a
    join can pair messages by request rather than by arrival order, and an error can be reported
    against the request that caused it. Signals are immutable; a fan-out hands every target the
    same signal, so treat values as read-only too.

    Attributes:
        value: The payload.
        id: The request's id, unique within a graph run (any hashable; numbered if not given).
        session: The session (user, conversation) the request belongs to, if any.
        trace: A tracing id to correlate logs across services, if any.
        created: When the request entered the graph (``time.monotonic()``); kept by ``derive``.
        meta: Further metadata; ``derive`` merges into a copy.
    """

    value: T
    id: Hashable = field(default_factory=_next_id)
    session: str | None = None
    trace: str | None = None
    created: float = field(default_factory=time.monotonic)
    meta: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    def derive(self, value: U, **meta: Any) -> Signal[U]:
        """A signal carrying ``value`` for the same request (same id, session, trace, created)."""
        merged = {**self.meta, **meta} if meta else self.meta
        return Signal(value, self.id, self.session, self.trace, self.created, merged)

    @property
    def age(self) -> float:
        """Seconds since the request entered the graph."""
        return time.monotonic() - self.created


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the graph could not finish, with the reason; see ``Graph(on_dead_letter=...)``.

    Attributes:
        signal: The message as the failing node held it.
        error: Why it was not finished: the node's crash, an :class:`~coserve.UnmatchedSignal`
            from a join, a :class:`~coserve.GraphStopped` at shutdown, or what the node passed
            to ``Node.fail``.
        node: The name of the node that held it.
    """

    signal: Signal[Any]
    error: BaseException
    node: str
