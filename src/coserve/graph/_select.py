"""Waiting on several inputs: merge by arrival (:class:`Select`) or pair by id (:class:`Join`).

A join's wait is bounded, so an unmatched message becomes an error rather than a hang.
"""

from __future__ import annotations

import asyncio
import functools
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any, Final, Self

from coserve._exceptions import ClosedChannelError, EndOfChannel, UnmatchedSignal, WouldBlock
from coserve.graph import _hops
from coserve.graph._ports import Input
from coserve.graph._signal import Signal

if TYPE_CHECKING:
    from types import TracebackType

    from coserve.graph._node import Node

__all__ = ["Join", "Select"]

_TIMED_OUT: Final = None


class Select:
    """Messages from several inputs in arrival order, as ``(input, signal)`` pairs.

    Made by ``Node.select(...)``. Iteration ends when every input has ended. An input that has
    something buffered is served without creating a task; only when all are empty does the
    select wait on one receive task per input. Use it as ``async with`` to release those waits
    early; otherwise the node releases them when its ``run`` ends, and anything they had taken
    goes back to the head of its input.
    """

    def __init__(self, node: Node, inputs: Sequence[Input[Any]]) -> None:
        if not inputs:
            raise ValueError("select needs at least one input")
        for port in inputs:
            if not isinstance(port, Input) or port.node is not node:
                raise ValueError(f"{port!r} is not an input of {node.name}")
        self._node = node
        self._inputs = list(inputs)
        self._ended: set[Input[Any]] = set()
        self._waits: dict[Input[Any], asyncio.Task[Signal[Any]]] = {}
        self._turn = 0
        self._last: Signal[Any] | None = None
        node._selects.append(self)

    @property
    def ended(self) -> frozenset[Input[Any]]:
        """The inputs whose streams have ended."""
        return frozenset(self._ended)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> tuple[Input[Any], Signal[Any]]:
        node = self._node
        last = self._last
        if last is not None:  # asking for more: done with the previous message
            self._last = None
            if node._in_hand.get(last.id) is last:
                del node._in_hand[last.id]
        while True:
            event = await self.next_event(None)
            if event is _TIMED_OUT:
                continue
            port, signal = event
            if signal is not None:
                node._in_hand[signal.id] = signal
                self._last = signal
                return port, signal
            if len(self._ended) == len(self._inputs):
                raise StopAsyncIteration

    async def next_event(
        self,
        timeout: float | None,  # noqa: ASYNC109 - the join's next expiry, computed once
    ) -> tuple[Input[Any], Signal[Any] | None] | None:
        """The next message as ``(input, signal)``, or ``(input, None)`` when an input ends.

        Returns None when ``timeout`` seconds pass first; raises StopAsyncIteration once every
        input has ended.
        """
        inputs = self._inputs
        count = len(inputs)
        while True:
            for port, task in list(self._waits.items()):
                if task.done():
                    del self._waits[port]
                    return self._took(port, task)
            for step in range(count):
                index = (self._turn + step) % count
                port = inputs[index]
                if port in self._ended or port in self._waits:
                    continue
                try:
                    signal = port._receiver.receive_nowait()
                except WouldBlock:
                    continue
                except (EndOfChannel, ClosedChannelError):
                    self._ended.add(port)
                    return port, None
                self._turn = index + 1
                port.messages += 1
                if signal.trace is not None and _hops.observer is not None:
                    _hops.received(self._node, signal)
                return port, signal
            if len(self._ended) == count:
                raise StopAsyncIteration
            for port in inputs:
                if port not in self._ended and port not in self._waits:
                    self._waits[port] = asyncio.create_task(port._receiver.receive())
            done, _ = await asyncio.wait(
                self._waits.values(), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                return _TIMED_OUT

    def _took(
        self, port: Input[Any], task: asyncio.Task[Signal[Any]]
    ) -> tuple[Input[Any], Signal[Any] | None]:
        try:
            signal = task.result()
        except (EndOfChannel, ClosedChannelError):
            self._ended.add(port)
            return port, None
        port.messages += 1
        if signal.trace is not None and _hops.observer is not None:
            _hops.received(self._node, signal)
        return port, signal

    async def aclose(self) -> None:
        """Stop waiting; what a pending receive had already taken goes back to its input."""
        waits = self._waits
        self._waits = {}
        for port, task in waits.items():
            task.cancel()
            # A receive that won the race with the cancel took a message: it goes back, even
            # if whoever is closing this select is itself cancelled while waiting below.
            if task.done():
                _give_back(port, task)
            else:
                task.add_done_callback(functools.partial(_give_back, port))
        try:
            if waits:
                await asyncio.wait(waits.values())
        finally:
            if self in self._node._selects:
                self._node._selects.remove(self)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _give_back(port: Input[Any], task: asyncio.Task[Signal[Any]]) -> None:
    """Return what a cancelled receive had already taken to the front of its input."""
    if task.cancelled() or task.exception() is not None:  # nothing taken (or the input ended)
        return
    port._receiver._put_back(task.result())


class Join:
    """Messages from several inputs paired by request id: one tuple per id, in input order.

    Made by ``Node.join(...)``; the talk's Add waits for both operands of the same request,
    whatever order they arrive in. A message waits at most ``timeout`` seconds for its partners,
    and at most ``max_pending`` messages wait at once (the oldest gives way); a message that can
    no longer be paired (timed out, pushed out, a duplicate id, or a partner's input ended)
    becomes a dead letter with :class:`~coserve.UnmatchedSignal`, so its requester hears of it
    instead of hanging. Iteration ends when every input has ended.
    """

    def __init__(
        self, node: Node, inputs: Sequence[Input[Any]], *, timeout: float, max_pending: int
    ) -> None:
        if len(inputs) < 2:
            raise ValueError("a join needs at least two inputs")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending!r}")
        self._node = node
        self._select = Select(node, inputs)
        self._inputs = list(inputs)
        self._index = {port: index for index, port in enumerate(inputs)}
        self._timeout = timeout
        self._max_pending = max_pending
        self._pending: list[dict[Hashable, Signal[Any]]] = [{} for _ in inputs]
        # Arrival order is deadline order (one timeout for all), so the oldest is first.
        self._deadlines: OrderedDict[tuple[int, Hashable], float] = OrderedDict()
        self._pair_ids: list[Hashable] = []

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> tuple[Signal[Any], ...]:
        loop = asyncio.get_running_loop()
        node = self._node
        for done_id in self._pair_ids:  # asking for more: done with the previous pair
            node._in_hand.pop(done_id, None)
        self._pair_ids.clear()
        while True:
            now = loop.time()
            self._expire(now)
            wait = next(iter(self._deadlines.values())) - now if self._deadlines else None
            try:
                event = await self._select.next_event(wait)
            except StopAsyncIteration:
                self._give_up_all("every input has ended")
                raise
            if event is _TIMED_OUT:
                continue
            port, signal = event
            index = self._index[port]
            if signal is None:
                self._input_ended(index)
                continue
            pair = self._arrived(index, signal, loop.time())
            if pair is not None:
                return pair

    def _arrived(
        self, index: int, signal: Signal[Any], now: float
    ) -> tuple[Signal[Any], ...] | None:
        key = signal.id
        node = self._node
        ended = self._select.ended
        if key in self._pending[index]:
            node.fail(
                signal,
                UnmatchedSignal(
                    f"{node.name}: a second message with id {key!r} arrived on "
                    f"{self._inputs[index].name} before its partners"
                ),
            )
            return None
        for other, port in enumerate(self._inputs):
            if other != index and port in ended and key not in self._pending[other]:
                node.fail(
                    signal,
                    UnmatchedSignal(
                        f"{node.name}: no partner for id {key!r}: input {port.name} has ended"
                    ),
                )
                return None
        if all(key in pending for other, pending in enumerate(self._pending) if other != index):
            parts = []
            for other, pending in enumerate(self._pending):
                if other == index:
                    parts.append(signal)
                else:
                    parts.append(pending.pop(key))
                    del self._deadlines[(other, key)]
            node._in_hand[key] = signal
            self._pair_ids.append(key)
            return tuple(parts)
        self._pending[index][key] = signal
        self._deadlines[(index, key)] = now + self._timeout
        node._in_hand[key] = signal
        if len(self._deadlines) > self._max_pending:
            (old_index, old_key), _ = self._deadlines.popitem(last=False)
            self._give_up(
                old_index,
                old_key,
                f"more than {self._max_pending} messages were waiting for partners",
            )
        return None

    def _expire(self, now: float) -> None:
        while self._deadlines:
            (index, key), deadline = next(iter(self._deadlines.items()))
            if deadline > now:
                return
            del self._deadlines[(index, key)]
            self._give_up(index, key, f"its partners did not arrive within {self._timeout:g} s")

    def _input_ended(self, index: int) -> None:
        ended_pending = self._pending[index]
        for other, pending in enumerate(self._pending):
            if other == index:
                continue
            for key in [key for key in pending if key not in ended_pending]:
                del self._deadlines[(other, key)]
                self._give_up(other, key, f"input {self._inputs[index].name} has ended")

    def _give_up_all(self, reason: str) -> None:
        for index, key in list(self._deadlines):
            del self._deadlines[(index, key)]
            self._give_up(index, key, reason)

    def _give_up(self, index: int, key: Hashable, reason: str) -> None:
        signal = self._pending[index].pop(key)
        node = self._node
        if any(key in pending for pending in self._pending):
            # Partners still wait for this id: keep the request in hand through them.
            node._in_hand[key] = next(p[key] for p in self._pending if key in p)
        node.fail(signal, UnmatchedSignal(f"{node.name}: no partner for id {key!r}: {reason}"))

    async def aclose(self) -> None:
        """Stop waiting (pending messages stay in the node's hands, so a crash reports them)."""
        await self._select.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
