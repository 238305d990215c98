"""The message that travels between nodes: a value plus the request it belongs to."""

from __future__ import annotations

import itertools
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Generic, NamedTuple, TypeVar

__all__ = ["DeadLetter", "Signal"]

T = TypeVar("T")
U = TypeVar("U")

_next_id = itertools.count(1).__next__
_EMPTY: Mapping[str, Any] = MappingProxyType({})


class _Fields(NamedTuple, Generic[T]):
    value: T
    id: Hashable
    session: str | None
    trace: str | None
    created: float
    meta: Mapping[str, Any]


class Signal(_Fields[T]):
    """A value on its way through a graph, tagged with the request it belongs to.

    Nodes keep a request's ``id`` when they pass on what they made of it (:meth:`derive`), so a
    join can pair messages by request rather than by arrival order, and an error can be reported
    against the request that caused it. Signals are immutable; a fan-out hands every target the
    same signal, so treat values as read-only too. Two signals are equal only if they are the
    same object (they may carry equal values for different requests).

    Made per message per hop, so it is a tuple underneath: creating one costs a fifth of a
    frozen dataclass.

    Attributes:
        value: The payload.
        id: The request's id, unique within a graph run (any hashable; numbered if not given).
        session: The session (user, conversation) the request belongs to, if any.
        trace: A tracing id to correlate logs across services, if any.
        created: When the request entered the graph (``time.monotonic()``); kept by ``derive``.
        meta: Further metadata; ``derive`` merges into a copy.
    """

    __slots__ = ()

    def __new__(
        cls,
        value: T,
        id: Hashable | None = None,
        session: str | None = None,
        trace: str | None = None,
        created: float | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Signal[T]:
        signal: Signal[T] = _tuple_new(
            cls,
            (
                value,
                _next_id() if id is None else id,
                session,
                trace,
                time.monotonic() if created is None else created,
                _EMPTY if meta is None else meta,
            ),
        )
        return signal

    def derive(self, value: U, **meta: Any) -> Signal[U]:
        """A signal carrying ``value`` for the same request (same id, session, trace, created)."""
        _, key, session, trace, created, old = self
        derived: Signal[U] = _tuple_new(
            Signal, (value, key, session, trace, created, {**old, **meta} if meta else old)
        )
        return derived

    @property
    def age(self) -> float:
        """Seconds since the request entered the graph."""
        return time.monotonic() - self.created

    # Identity, not tuple equality: two requests may carry equal values.
    __eq__ = object.__eq__
    __ne__ = object.__ne__
    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"Signal(value={self.value!r}, id={self.id!r}, session={self.session!r})"


_tuple_new: Any = tuple.__new__


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
