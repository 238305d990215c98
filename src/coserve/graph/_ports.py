"""Typed input and output ports: the ends of the bounded channels that connect nodes.

An :class:`Input` owns one bounded channel; every connection into it holds a clone of its send
handle, so fan-in merges for free and the input sees the end of the stream once every upstream
output has closed (or been disconnected) and the buffer is drained. An :class:`Output` holds one
:class:`Link` per connected input and sends each message to all of them (fan-out).

Wiring can change while the graph runs. The rule that keeps messages from being lost or doubled:
a send blocked on a link that is disconnected fails for that link only (the channel's "cancelled
without effect"), and the output then delivers the message to links added since the send began,
to inputs that do not have it yet. Rewiring in one synchronous block (no ``await`` between the
calls) therefore moves in-flight messages to the new target exactly once. ``Graph.insert`` and
``Graph.remove(bridge=True)`` also tell the output which new input stands in for which old one,
so a fan-out send that had already reached the old input does not send to its stand-in too.
"""

from __future__ import annotations

import asyncio
import itertools
import types
import typing
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

from coserve._exceptions import (
    BrokenChannelError,
    ClosedChannelError,
    EndOfChannel,
    GraphError,
    GraphStopped,
    WouldBlock,
)
from coserve.channels import SendChannel, open_channel
from coserve.graph import _hops
from coserve.graph._signal import Signal

if TYPE_CHECKING:
    from coserve.graph._node import Node

__all__ = [
    "Input",
    "Link",
    "Output",
    "PortOptions",
    "PortStatistics",
    "assignable",
    "port",
    "type_name",
    "unlink",
]

T = TypeVar("T")

DEFAULT_CAPACITY = 16
_link_serial = itertools.count(1).__next__


@dataclass(frozen=True, slots=True)
class PortOptions:
    """Per-port settings given as a class attribute's value; see :func:`port`."""

    capacity: int = DEFAULT_CAPACITY
    required: bool = True


def port(*, capacity: int = DEFAULT_CAPACITY, required: bool = True) -> Any:
    """Options for a port declared by annotation, given as its value.

    For example ``left: Input[int] = port(capacity=64)``.

    Args:
        capacity: How many messages an input buffers before senders wait (inputs only).
        required: Whether ``Graph.validate`` insists the input is connected (inputs only).
    """
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
        raise ValueError(f"capacity must be an integer >= 0, got {capacity!r}")
    return PortOptions(capacity, required)


@dataclass(frozen=True, slots=True)
class PortStatistics:
    """A snapshot of one port, as found in ``Node.statistics()``.

    Attributes:
        name: ``node.port``.
        type: The declared message type, as written.
        messages: Messages received (inputs) or sent (outputs).
        connections: Links into (inputs) or out of (outputs) the port.
        buffered: Messages waiting in the input's buffer (0 for outputs).
        capacity: The input's buffer bound (0 for outputs).
        dropped: Messages an output sent with nothing connected, or that a finished input
            could not take (each also reported as a dead letter if nobody received it).
    """

    name: str
    type: str
    messages: int
    connections: int
    buffered: int
    capacity: int
    dropped: int


def type_name(tp: Any) -> str:
    """A readable name for a type or type expression (``int``, ``list[str]``, ``Any``)."""
    if tp is Any:
        return "Any"
    if tp is None or tp is type(None):
        return "None"
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__qualname__
    return repr(tp).replace("typing.", "")


def assignable(source: Any, target: Any) -> bool:
    """Whether messages of type ``source`` may flow into a port that takes ``target``.

    A pragmatic structural check, not a full type checker: ``Any`` and ``object`` fit anything,
    unions fit when every member fits, generics compare their origins (``list[int]`` to ``list``)
    and then their arguments where both give them, and ``int`` fits ``float`` (PEP 484).
    """
    if source is Any or target is Any or target is object:
        return True
    if isinstance(source, TypeVar) or isinstance(target, TypeVar):
        return True
    if _is_union(source):
        return all(assignable(member, target) for member in typing.get_args(source))
    if _is_union(target):
        return any(assignable(source, member) for member in typing.get_args(target))
    if source is None or source is type(None):
        return target is None or target is type(None)
    source_origin = typing.get_origin(source) or source
    target_origin = typing.get_origin(target) or target
    if source_origin is typing.Annotated:
        return assignable(typing.get_args(source)[0], target)
    if target_origin is typing.Annotated:
        return assignable(source, typing.get_args(target)[0])
    if not isinstance(source_origin, type) or not isinstance(target_origin, type):
        return bool(source == target)
    if source_origin is int and target_origin in (float, complex):
        return True
    if not issubclass(source_origin, target_origin):
        return False
    source_args, target_args = typing.get_args(source), typing.get_args(target)
    if not source_args or not target_args or len(source_args) != len(target_args):
        return True  # unparameterised on either side: the origins decide
    return all(
        a is Ellipsis or b is Ellipsis or assignable(a, b)
        for a, b in zip(source_args, target_args, strict=True)
    )


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


class Link:
    """One connection: an output, the input it feeds, and the send handle between them."""

    __slots__ = ("handle", "input", "output", "serial")

    def __init__(self, output: Output[Any], input: Input[Any], handle: SendChannel[Any]) -> None:
        self.output = output
        self.input = input
        self.handle = handle
        self.serial = _link_serial()  # orders links by creation: "added since the send began"

    def __repr__(self) -> str:
        return f"<Link {self.output.full_name} -> {self.input.full_name}>"


class _Port(Generic[T]):
    """What inputs and outputs share: a name, an owner and a declared type."""

    __slots__ = ("links", "messages", "name", "node", "type")

    def __init__(self, node: Node, name: str, type_: Any) -> None:
        self.node = node
        self.name = name
        self.type = type_
        self.links: list[Link] = []
        self.messages = 0

    @property
    def full_name(self) -> str:
        """``node.port``, as used in error messages and diagrams."""
        return f"{self.node.name}.{self.name}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.full_name}: {type_name(self.type)}>"


class Input(_Port[T]):
    """A node's input port: receive :class:`Signal` messages with ``receive`` or ``async for``.

    Declare one on a :class:`~coserve.graph.Node` subclass by annotation, ``left: Input[int]``;
    the graph checks the type when something is connected to it. Iteration ends when every
    upstream output has closed and the buffer is drained.
    """

    __slots__ = ("_last", "_receiver", "_root", "capacity", "required")

    def __init__(self, node: Node, name: str, type_: Any, *, capacity: int, required: bool) -> None:
        super().__init__(node, name, type_)
        self.capacity = capacity
        self.required = required
        self._root, self._receiver = open_channel[Signal[T]](capacity)
        self._root._quiet = self._receiver._quiet = True
        self._last: Signal[T] | None = None

    async def receive(self) -> Signal[T]:
        """The next message, waiting for one.

        The message counts as in the node's hands until the node sends something with its id
        or asks this input for the next one; if the node crashes meanwhile, or is stopped, the
        message becomes a dead letter rather than vanishing.

        Raises:
            EndOfChannel: Every upstream output has closed and nothing is left.
        """
        # Coming back for more means the node is done with the last message from here. The
        # bookkeeping is two attribute writes: this is the hot path of every hop.
        self._last = None
        receiver = self._receiver
        try:
            signal = receiver.receive_nowait()
        except WouldBlock:
            signal = await receiver._wait_receive()
        self._last = signal
        self.messages += 1
        if signal.trace is not None and _hops.observer is not None:
            _hops.received(self.node, signal)
        return signal

    def receive_nowait(self) -> Signal[T]:
        """The next message if one is buffered.

        Raises:
            WouldBlock: Nothing is buffered.
            EndOfChannel: Every upstream output has closed and nothing is left.
        """
        self._last = None
        signal = self._receiver.receive_nowait()
        self._last = signal
        self.messages += 1
        if signal.trace is not None and _hops.observer is not None:
            _hops.received(self.node, signal)
        return signal

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Signal[T]:
        receiver = self._receiver
        try:
            try:
                signal = receiver.receive_nowait()
            except WouldBlock:
                self._last = None  # done with the last one while we wait (else overwritten)
                signal = await receiver._wait_receive()
        except EndOfChannel:
            self._last = None
            raise StopAsyncIteration from None
        self._last = signal
        self.messages += 1
        if signal.trace is not None and _hops.observer is not None:
            _hops.received(self.node, signal)
        return signal

    # -- used by the graph ----------------------------------------------------------------

    def _open_sender(self) -> SendChannel[Signal[T]]:
        """A new send handle into this input, cloned from one that is still open."""
        if not self._root.closed:
            return self._root.clone()
        for link in self.links:
            if not link.handle.closed:
                return link.handle.clone()
        raise GraphError(f"cannot connect to {self.full_name}: its stream has already ended")

    def _seal(self) -> None:
        """Drop the input's own send handle: from now on it ends when its links do."""
        self._root.close()

    def _close(self) -> list[Signal[T]]:
        """Close the receiving end; return what was buffered and will never be read."""
        self._root.close()
        left: list[Signal[T]] = []
        receiver = self._receiver
        while True:
            try:
                left.append(receiver.receive_nowait())
            except (EndOfChannel, ClosedChannelError):
                break
            except WouldBlock:  # empty, and every clone of the root is gone or will never send
                break
        receiver.close()
        return left

    @property
    def ended(self) -> bool:
        """Whether the receiving end is closed (the node finished with this input)."""
        return self._receiver.closed

    def statistics(self) -> PortStatistics:
        """A snapshot of this input."""
        channel = self._receiver.statistics()
        return PortStatistics(
            name=self.full_name,
            type=type_name(self.type),
            messages=self.messages,
            connections=len(self.links),
            buffered=channel.buffer_used,
            capacity=self.capacity,
            dropped=0,
        )


class _Delivery:
    """Where one message in flight on an output has got to, while rewiring may happen.

    ``stand_ins`` maps an input that ``Graph.insert`` or ``Graph.remove(bridge=True)`` put in
    another's place to the inputs it replaced: a message that reached one of those must not be
    sent to its replacement as well. Recorded as the rewiring happens, so it also covers a
    target that took the message just before the rewiring but after the send last looked.
    """

    __slots__ = ("delivered", "stand_ins")

    def __init__(self) -> None:
        self.delivered: set[Input[Any]] = set()
        self.stand_ins: dict[Input[Any], list[Input[Any]]] = {}

    def reached(self, target: Input[Any]) -> bool:
        """Whether the message reached ``target`` or an input that ``target`` replaced."""
        todo, seen = [target], set()
        while todo:
            port = todo.pop()
            if port in self.delivered:
                return True
            if port not in seen:
                seen.add(port)
                todo.extend(self.stand_ins.get(port, ()))
        return False


class Output(_Port[T]):
    """A node's output port: ``await out.send(signal)`` delivers to every connected input.

    Declare one by annotation, ``total: Output[int]``. A send waits while a target's buffer is
    full (backpressure). A message sent with nothing connected is counted as dropped.
    """

    __slots__ = ("_deliveries", "dropped", "linked", "on_send")

    def __init__(self, node: Node, name: str, type_: Any) -> None:
        super().__init__(node, name, type_)
        self.dropped = 0
        self.linked = False  # ever connected: losing every link then ends the sender
        self._deliveries: list[_Delivery] = []  # sends in progress that may redeliver
        self.on_send: Callable[[Signal[T]], None] | None = None
        """Called with each message as its send begins, before anything awaits: the sending
        node's state is then exactly what it was when it made the message (a checkpoint)."""

    async def send(self, signal: Signal[T]) -> None:
        """Deliver ``signal`` to every connected input, waiting while one is full.

        The request with this id leaves the node's hands once it is delivered. If every target
        goes away while the send waits, the message becomes a dead letter.
        """
        if self.on_send is not None:
            self.on_send(signal)
        if signal.trace is not None and _hops.observer is not None:
            _hops.sent(self.node, signal)
        links = self.links
        if len(links) == 1:  # the common case, without the bookkeeping of fan-out
            link = links[0]
            handle = link.handle
            try:
                try:
                    handle.send_nowait(signal)
                except WouldBlock:
                    await handle._wait_send(signal)
            except BrokenChannelError:  # its node finished reading: it takes no more
                unlink(link)
            except ClosedChannelError:
                pass  # disconnected while we waited: a replacement may have been connected
            else:
                # _sent, inlined: this is the hot path of every hop.
                self.messages += 1
                key = signal.id
                for port in self.node._input_ports:
                    last = port._last
                    if last is not None and last.id == key:
                        port._last = None
                if self.node._in_hand:
                    self.node._in_hand.pop(key, None)
                return
            # Nothing was delivered yet, so rewiring until now needs no record.
            await self._redeliver(signal, link.serial, _Delivery())
        elif links:
            since = max(link.serial for link in links)
            delivery = _Delivery()
            self._deliveries.append(delivery)
            try:
                lost = False
                for link in list(links):
                    if delivery.reached(link.input):
                        continue
                    try:
                        await link.handle.send(signal)
                        delivery.delivered.add(link.input)
                    except BrokenChannelError:
                        unlink(link)
                        lost = True
                    except ClosedChannelError:
                        lost = True
                if lost:
                    await self._redeliver(signal, since, delivery)
                else:
                    self._sent(signal)
            finally:
                self._deliveries.remove(delivery)
        elif self.linked:
            await self._redeliver(signal, 0, _Delivery())
        else:  # never connected: an unused output; count it, and let others run
            self.dropped += 1
            self._sent(signal)
            await asyncio.sleep(0)

    async def _redeliver(self, signal: Signal[T], since: int, delivery: _Delivery) -> None:
        """Deliver to links connected since the send began, to inputs that lack the message."""
        deliveries = self._deliveries
        registered = delivery in deliveries
        if not registered:
            deliveries.append(delivery)
        try:
            while True:
                newer = [
                    link
                    for link in self.links
                    if link.serial > since and not delivery.reached(link.input)
                ]
                if not newer:
                    break
                since = max(link.serial for link in self.links)
                for link in newer:
                    if delivery.reached(link.input):  # taken over by an earlier one meanwhile
                        continue
                    try:
                        await link.handle.send(signal)
                        delivery.delivered.add(link.input)
                    except BrokenChannelError:
                        unlink(link)
                    except ClosedChannelError:
                        pass
        finally:
            if not registered:
                deliveries.remove(delivery)
        if delivery.delivered:
            self._sent(signal)
            return
        self.dropped += 1
        self._forget(signal.id)  # this dead letter answers for the message the node held
        self.node.fail(signal, GraphStopped(f"{self.full_name} lost its targets while sending"))
        if not self.links:
            # Trio's rule: a producer whose consumers are gone stops (the node ends normally).
            raise BrokenChannelError(f"nothing is connected to {self.full_name} any more")

    def _replaced(self, old: Input[Any], new: Input[Any]) -> None:
        """Rewiring put ``new`` in ``old``'s place: what reached ``old`` must not go to ``new``."""
        for delivery in self._deliveries:
            delivery.stand_ins.setdefault(new, []).append(old)

    def _sent(self, signal: Signal[T]) -> None:
        """The request left the node's hands: forget it wherever the node held it."""
        self.messages += 1
        self._forget(signal.id)

    def _forget(self, key: Hashable) -> None:
        node = self.node
        for port in node._input_ports:
            last = port._last
            if last is not None and last.id == key:
                port._last = None
        if node._in_hand:
            node._in_hand.pop(key, None)

    def statistics(self) -> PortStatistics:
        """A snapshot of this output."""
        return PortStatistics(
            name=self.full_name,
            type=type_name(self.type),
            messages=self.messages,
            connections=len(self.links),
            buffered=0,
            capacity=0,
            dropped=self.dropped,
        )


def unlink(link: Link) -> None:
    """Remove a link from both of its ports and close its send handle (idempotent)."""
    if link in link.output.links:
        link.output.links.remove(link)
    if link in link.input.links:
        link.input.links.remove(link)
    link.handle.close()
