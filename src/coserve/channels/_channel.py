"""Bounded, closable in-memory channels with Trio's semantics, on asyncio.

One shared :class:`_ChannelState` holds the buffer and the queues of waiting tasks; any number of
send and receive handles (made with ``clone()``) point at it and are counted, so the channel knows
when the last sender or the last receiver is gone.

Cancellation safety, the part asyncio's own queue gets only half right:

* A value is handed *directly* to a waiting receiver (``future.set_result``). If that receiver is
  cancelled before it resumes, it puts the value back at the head of the channel and re-raises, so
  a cancelled ``receive`` never loses an item.
* A waiting sender's value is taken by a receiver the same way. If that sender is cancelled after
  its value was taken, the send *did* happen: ``send`` returns normally and the cancellation is
  re-armed so it is delivered at the task's next await (Trio's rule: an operation either completes
  or is cancelled without effect). A ``send`` that raises ``CancelledError`` therefore never
  delivered its value.
"""

from __future__ import annotations

import asyncio
import warnings
from collections import OrderedDict, deque
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from coserve._exceptions import (
    BrokenChannelError,
    ClosedChannelError,
    EndOfChannel,
    WouldBlock,
)

__all__ = ["ChannelStatistics", "ReceiveChannel", "SendChannel", "open_channel"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ChannelStatistics:
    """A snapshot of a channel's state, as returned by ``statistics()``.

    Attributes:
        buffer_used: Values buffered and not yet received.
        capacity: The buffer's bound (0 is a rendezvous channel).
        open_send_channels: Send handles (clones included) not yet closed.
        open_receive_channels: Receive handles (clones included) not yet closed.
        tasks_waiting_send: Tasks blocked in ``send``.
        tasks_waiting_receive: Tasks blocked in ``receive``.
    """

    buffer_used: int
    capacity: int
    open_send_channels: int
    open_receive_channels: int
    tasks_waiting_send: int
    tasks_waiting_receive: int


class _ChannelState(Generic[T]):
    """What every handle of one channel shares."""

    __slots__ = (
        "buffer",
        "capacity",
        "open_receive",
        "open_send",
        "waiting_receivers",
        "waiting_senders",
    )

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.buffer: deque[T] = deque()
        self.open_send = 0
        self.open_receive = 0
        # Insertion-ordered so waiters are served first come, first served; popitem(last=False)
        # and removal by key are both O(1).
        self.waiting_senders: OrderedDict[asyncio.Future[None], T] = OrderedDict()
        self.waiting_receivers: OrderedDict[asyncio.Future[T], None] = OrderedDict()

    def statistics(self) -> ChannelStatistics:
        return ChannelStatistics(
            buffer_used=len(self.buffer),
            capacity=self.capacity,
            open_send_channels=self.open_send,
            open_receive_channels=self.open_receive,
            tasks_waiting_send=len(self.waiting_senders),
            tasks_waiting_receive=len(self.waiting_receivers),
        )

    def give_back(self, value: T) -> None:
        """Return a value that a cancelled receiver was handed, ahead of everything else."""
        while self.waiting_receivers:
            future, _ = self.waiting_receivers.popitem(last=False)
            if not future.done():
                future.set_result(value)
                return
        # May exceed the capacity by one for a moment; losing the value would be worse.
        self.buffer.appendleft(value)


def _delivered(future: asyncio.Future[Any]) -> bool:
    """Whether a waiter's future completed its hand-over (not failed, not cancelled)."""
    return future.done() and not future.cancelled() and future.exception() is None


class _Handle(Generic[T]):
    """What send and receive handles have in common: closing, context management, statistics."""

    __slots__ = ("__weakref__", "_closed", "_quiet", "_state", "_waiting")

    def __init__(self, state: _ChannelState[T]) -> None:
        self._state = state
        self._closed = False
        # Set (coserve-internal) on handles a graph owns: it closes them when it runs, and a
        # graph built but never run is not a leak worth a warning.
        self._quiet = False
        # This handle's own blocked operations, failed with ClosedChannelError by close().
        self._waiting: set[asyncio.Future[Any]] = set()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedChannelError(f"this {type(self).__name__} was closed")

    @property
    def closed(self) -> bool:
        """Whether this handle has been closed (other clones may still be open)."""
        return self._closed

    def statistics(self) -> ChannelStatistics:
        """A snapshot of the channel's buffer, open handles and waiting tasks."""
        return self._state.statistics()

    def close(self) -> None:
        """Close this handle. Idempotent and synchronous, so it is safe in cancelled code."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _fail_own_waiters(self) -> None:
        for future in list(self._waiting):
            if not future.done():
                future.set_exception(ClosedChannelError(f"this {type(self).__name__} was closed"))
        self._waiting.clear()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True) and not self._quiet:
            warnings.warn(
                f"unclosed {type(self).__name__}: close it, or use it with 'with'",
                ResourceWarning,
                stacklevel=1,
            )


class SendChannel(_Handle[T]):
    """The sending side of a channel made by :func:`open_channel`."""

    __slots__ = ()

    def __init__(self, state: _ChannelState[T]) -> None:
        super().__init__(state)
        state.open_send += 1

    def send_nowait(self, value: T) -> None:
        """Send ``value`` if a receiver is waiting or the buffer has room.

        Raises:
            WouldBlock: The buffer is full and no receiver is waiting.
            BrokenChannelError: Every receive side is closed.
            ClosedChannelError: This handle is closed.
        """
        if self._closed:
            raise ClosedChannelError("this SendChannel was closed")
        state = self._state
        if state.open_receive == 0:
            raise BrokenChannelError("every receive side of this channel is closed")
        receivers = state.waiting_receivers
        while receivers:
            future, _ = receivers.popitem(last=False)
            if not future.done():
                future.set_result(value)
                return
        if len(state.buffer) < state.capacity:
            state.buffer.append(value)
            return
        raise WouldBlock

    async def send(self, value: T) -> None:
        """Send ``value``, waiting while the buffer is full.

        Cancellation-safe: if this raises ``CancelledError`` the value was not delivered; if the
        value was delivered as the cancellation arrived, this returns and the task is cancelled at
        its next await instead.

        Raises:
            BrokenChannelError: Every receive side is (or becomes) closed.
            ClosedChannelError: This handle is (or becomes) closed.
        """
        try:
            self.send_nowait(value)
            return
        except WouldBlock:
            pass
        await self._wait_send(value)

    async def _wait_send(self, value: T) -> None:
        """The waiting half of ``send``, for callers that already tried ``send_nowait``."""
        state = self._state
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        state.waiting_senders[future] = value
        waiting = self._waiting
        waiting.add(future)
        try:
            await future
        except asyncio.CancelledError:
            if not _delivered(future):
                state.waiting_senders.pop(future, None)
                raise
            # A receiver took the value before we could observe the cancellation: the send
            # happened. Report it, and re-arm the cancellation for the next await.
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()
            task.cancel()
        finally:
            waiting.discard(future)

    def clone(self) -> SendChannel[T]:
        """Another send handle on the same channel; the channel ends when every one is closed.

        Raises:
            ClosedChannelError: This handle is closed.
        """
        self._check_open()
        clone = SendChannel(self._state)
        clone._quiet = self._quiet
        return clone

    def close(self) -> None:
        """Close this handle. When the last send handle closes, receivers see the end of stream."""
        if self._closed:
            return
        self._closed = True
        state = self._state
        state.open_send -= 1
        for future in self._waiting:
            state.waiting_senders.pop(future, None)
        self._fail_own_waiters()
        if state.open_send == 0:
            receivers = state.waiting_receivers
            while receivers:
                future, _ = receivers.popitem(last=False)
                if not future.done():
                    future.set_exception(EndOfChannel())


class ReceiveChannel(_Handle[T]):
    """The receiving side of a channel made by :func:`open_channel`, iterable with ``async for``."""

    __slots__ = ()

    def __init__(self, state: _ChannelState[T]) -> None:
        super().__init__(state)
        state.open_receive += 1

    def receive_nowait(self) -> T:
        """Receive a value if one is buffered or a sender is waiting.

        Raises:
            WouldBlock: Nothing is available yet.
            EndOfChannel: Every send side is closed and nothing is left.
            ClosedChannelError: This handle is closed.
        """
        if self._closed:
            raise ClosedChannelError("this ReceiveChannel was closed")
        state = self._state
        senders = state.waiting_senders
        if state.buffer:
            value = state.buffer.popleft()
            # Room in the buffer: move the longest-waiting sender's value in.
            while senders:
                sender, pending = senders.popitem(last=False)
                if not sender.done():
                    state.buffer.append(pending)
                    sender.set_result(None)
                    break
            return value
        while senders:  # a rendezvous: take straight from a blocked sender
            sender, pending = senders.popitem(last=False)
            if not sender.done():
                sender.set_result(None)
                return pending
        if state.open_send == 0:
            raise EndOfChannel
        raise WouldBlock

    async def receive(self) -> T:
        """Receive the next value, waiting until one is sent.

        Cancellation-safe: a cancelled ``receive`` leaves the value in the channel.

        Raises:
            EndOfChannel: Every send side is closed and nothing is left.
            ClosedChannelError: This handle is (or becomes) closed.
        """
        try:
            return self.receive_nowait()
        except WouldBlock:
            pass
        return await self._wait_receive()

    async def _wait_receive(self) -> T:
        """The waiting half of ``receive``, for callers that already tried ``receive_nowait``."""
        state = self._state
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        state.waiting_receivers[future] = None
        waiting = self._waiting
        waiting.add(future)
        try:
            return await future
        except asyncio.CancelledError:
            if not _delivered(future):
                state.waiting_receivers.pop(future, None)
            else:
                # Handed a value just as we were cancelled: put it back for someone else.
                state.give_back(future.result())
            raise
        finally:
            waiting.discard(future)

    def _put_back(self, value: T) -> None:
        """Return a value received here but not used, ahead of everything else.

        coserve-internal: a graph's select gives back what it took for a node that stopped.
        """
        self._state.give_back(value)

    def clone(self) -> ReceiveChannel[T]:
        """Another receive handle on the same channel; clones share (not copy) the values.

        Raises:
            ClosedChannelError: This handle is closed.
        """
        self._check_open()
        clone = ReceiveChannel(self._state)
        clone._quiet = self._quiet
        return clone

    def close(self) -> None:
        """Close this handle. When the last receive handle closes, senders fail from then on.

        Values still buffered at that point can never be received and are dropped.
        """
        if self._closed:
            return
        self._closed = True
        state = self._state
        state.open_receive -= 1
        for future in self._waiting:
            state.waiting_receivers.pop(future, None)
        self._fail_own_waiters()
        if state.open_receive == 0:
            state.buffer.clear()
            senders = state.waiting_senders
            while senders:
                future, _ = senders.popitem(last=False)
                if not future.done():
                    future.set_exception(
                        BrokenChannelError("every receive side of this channel is closed")
                    )

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.receive()
        except EndOfChannel:
            raise StopAsyncIteration from None


class open_channel(tuple[SendChannel[T], ReceiveChannel[T]]):  # noqa: N801 - reads as a function
    """Open a bounded channel and return its ``(send_channel, receive_channel)`` pair.

    ``capacity`` is how many values the channel buffers before ``send`` waits; ``0`` makes every
    send wait for a receiver (a rendezvous). There is deliberately no unbounded option. Write
    ``open_channel[int](10)`` to give the value type.

    Args:
        capacity: The buffer's bound, at least 0.

    Raises:
        ValueError: ``capacity`` is negative or not an integer.
    """

    def __new__(cls, capacity: int) -> open_channel[T]:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"capacity must be an integer >= 0, got {capacity!r}")
        state: _ChannelState[T] = _ChannelState(capacity)
        return tuple.__new__(cls, (SendChannel(state), ReceiveChannel(state)))

    def __init__(self, capacity: int) -> None:
        pass
