"""Nodes: long-running coroutines with typed ports, declared by annotation.

A node subclass names its ports as annotated class attributes; each instance gets its own
:class:`~coserve.graph.Input` and :class:`~coserve.graph.Output` objects, so ``self.left`` is a
real port that mypy knows the message type of::

    class Add(Node):
        left: Input[int]
        right: Input[int]
        total: Output[int]

        async def run(self) -> None:
            async for a, b in self.join(self.left, self.right):
                await self.total.send(a.derive(a.value + b.value))
"""

from __future__ import annotations

import inspect
import logging
import re
import sys
import typing
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

from coserve.graph._ports import (
    Input,
    Output,
    PortOptions,
    PortStatistics,
)
from coserve.graph._select import Join, Select
from coserve.graph._signal import DeadLetter, Signal

if TYPE_CHECKING:
    from coserve.graph._graph import Graph

__all__ = ["FunctionNode", "Node", "NodeState", "NodeStatistics"]

logger = logging.getLogger("coserve.graph")

A = TypeVar("A")
B = TypeVar("B")

NodeState = Literal["idle", "running", "restarting", "done", "failed", "cancelled"]
_PORT_ANNOTATION = re.compile(r"^\s*(?:\w+\.)*(Input|Output)\s*(?:\[(.*)\])?\s*$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class NodeStatistics:
    """A snapshot of one node, as returned by ``Node.statistics()``.

    Attributes:
        name: The node's name in its graph.
        kind: The node's class name (or the function's, for a function node).
        state: idle, running, restarting, done, failed or cancelled.
        messages_in: Messages received on all inputs.
        messages_out: Messages sent on all outputs.
        errors: Crashes of ``run`` plus messages failed with ``Node.fail``.
        restarts: Times the supervisor restarted ``run``.
        dead_letters: Messages this node could not finish (see ``Graph(on_dead_letter=...)``).
        in_hand: Messages received and not yet passed on.
        run_time: Seconds spent inside ``run``, across restarts.
        inputs: Each input's statistics by port name.
        outputs: Each output's statistics by port name.
    """

    name: str
    kind: str
    state: NodeState
    messages_in: int
    messages_out: int
    errors: int
    restarts: int
    dead_letters: int
    in_hand: int
    run_time: float
    inputs: dict[str, PortStatistics]
    outputs: dict[str, PortStatistics]


@dataclass(frozen=True, slots=True)
class _PortSpec:
    name: str
    kind: type[Input[Any]] | type[Output[Any]]
    type: Any
    options: PortOptions


def _resolve(annotation: Any, owner: type) -> tuple[type, Any] | None:
    """``(Input|Output, message type)`` for a port annotation, else None."""
    if isinstance(annotation, str):
        module = sys.modules.get(owner.__module__)
        namespace = dict(vars(module)) if module is not None else {}
        try:
            annotation = eval(annotation, namespace, dict(vars(owner)))
        except Exception:  # a name local to a function: keep the kind, check no type
            match = _PORT_ANNOTATION.match(annotation)
            if match is None:
                return None
            return (Input if match.group(1) == "Input" else Output), Any
    origin = typing.get_origin(annotation) or annotation
    if origin not in (Input, Output):
        return None
    args = typing.get_args(annotation)
    return origin, (args[0] if args else Any)


def _port_specs(cls: type[Node]) -> tuple[_PortSpec, ...]:
    cached: tuple[_PortSpec, ...] | None = cls.__dict__.get("_coserve_ports")
    if cached is not None:
        return cached
    specs: dict[str, _PortSpec] = {}
    for klass in reversed(cls.__mro__):
        for name, annotation in vars(klass).get("__annotations__", {}).items():
            resolved = _resolve(annotation, klass)
            if resolved is None:
                continue
            kind, message_type = resolved
            options = getattr(klass, name, None)
            if not isinstance(options, PortOptions):
                options = PortOptions()
            specs[name] = _PortSpec(name, kind, message_type, options)
    found = tuple(specs.values())
    cls._coserve_ports = found
    return found


class Node:
    """A long-running coroutine with typed input and output ports; subclass and write ``run``.

    ``run`` reads its inputs (``async for signal in self.inp``, ``self.select``, ``self.join``)
    and sends :class:`Signal` messages to its outputs. When it returns, the graph closes its
    outputs, so downstream nodes see the end of their streams: the usual ``run`` is one loop over
    its inputs. If ``run`` raises, the graph's supervisor restarts it (calling
    :meth:`on_restart` first) or gives up; the messages it held become dead letters.

    A node with state worth keeping (a session's) declares it: list the attributes in
    ``state_fields``, or override :meth:`snapshot` and :meth:`restore`. A session server with a
    store checkpoints that state after each answer and restores it into a fresh graph when the
    client resumes, on any process (coroutines cannot be pickled; their state can).

    Class attributes:
        feedback: Set to True on a node that is meant to sit in a cycle (it must not wait on
            its own output); ``Graph.validate`` rejects cycles without one.
        state_fields: The attributes :meth:`snapshot` saves and :meth:`restore` sets back.
    """

    feedback: ClassVar[bool] = False
    state_fields: ClassVar[tuple[str, ...]] = ()
    _coserve_ports: ClassVar[tuple[_PortSpec, ...]]

    name: str
    state: NodeState
    errors: int
    restarts: int
    dead_letters: int
    run_time: float
    _graph: Graph | None
    _in_hand: dict[Hashable, Signal[Any]]
    _hops: dict[Hashable, float]  # when each traced request's signal arrived (``_hops``)
    _selects: list[Select]
    _inputs: dict[str, Input[Any]]
    _outputs: dict[str, Output[Any]]
    _input_ports: tuple[Input[Any], ...]

    def __new__(cls, *args: Any, **kwargs: Any) -> typing.Self:
        self = super().__new__(cls)
        # In __new__ so that a subclass's __init__ need not call super().__init__().
        self.name = cls.__name__
        self._graph = None
        self._in_hand = {}
        self._hops = {}
        self._selects = []
        self._inputs = {}
        self._outputs = {}
        self.state = "idle"
        self.errors = 0
        self.restarts = 0
        self.dead_letters = 0
        self.run_time = 0.0
        for spec in _port_specs(cls):
            port: Input[Any] | Output[Any]
            if spec.kind is Input:
                port = Input(
                    self,
                    spec.name,
                    spec.type,
                    capacity=spec.options.capacity,
                    required=spec.options.required,
                )
                self._inputs[spec.name] = port
            else:
                port = Output(self, spec.name, spec.type)
                self._outputs[spec.name] = port
            setattr(self, spec.name, port)
        self._input_ports = tuple(self._inputs.values())
        return self

    async def run(self) -> None:
        """The node's work: read inputs, send to outputs, return when the inputs end."""
        raise NotImplementedError(f"{type(self).__name__} must implement 'async def run(self)'")

    def on_restart(self) -> None:
        """Called before ``run`` starts again after a crash; reset state that may be corrupt."""

    def snapshot(self) -> Any:
        """The node's state as JSON-able values, or None for a node without state.

        The default reads ``state_fields``. It is called on the loop between two of the node's
        steps and serialized at once, so it may return the live objects.
        """
        if not self.state_fields:
            return None
        return {name: getattr(self, name) for name in self.state_fields}

    def restore(self, state: Any) -> None:
        """Set back a state :meth:`snapshot` returned, before the graph starts.

        The default sets ``state_fields``. A node that rewired its graph at run time (inserted
        a node, say) rewires it here again: the graph is being built, so wiring calls work.
        """
        if not isinstance(state, dict):
            raise TypeError(f"{self.name}: expected the dict snapshot() makes, got {state!r}")
        for name in self.state_fields:
            if name in state:
                setattr(self, name, state[name])

    @property
    def inputs(self) -> dict[str, Input[Any]]:
        """The node's input ports by name."""
        return dict(self._inputs)

    @property
    def outputs(self) -> dict[str, Output[Any]]:
        """The node's output ports by name."""
        return dict(self._outputs)

    @property
    def graph(self) -> Graph | None:
        """The graph this node was added to, if any."""
        return self._graph

    def select(self, *inputs: Input[Any]) -> Select:
        """Receive from several inputs in arrival order: ``async for port, signal in ...``."""
        return Select(self, inputs or tuple(self._inputs.values()))

    def join(self, *inputs: Input[Any], timeout: float = 10.0, max_pending: int = 1024) -> Join:
        """Pair messages from several inputs by request id: ``async for a, b in ...``.

        Args:
            inputs: The inputs to pair (default: all of the node's inputs, in declared order).
            timeout: Seconds a message waits for its partners before it becomes a dead letter.
            max_pending: How many messages may wait at once; beyond it the oldest gives way.
        """
        return Join(
            self,
            inputs or tuple(self._inputs.values()),
            timeout=timeout,
            max_pending=max_pending,
        )

    def fail(self, signal: Signal[Any], error: BaseException) -> None:
        """Give up on one message without crashing: it becomes a dead letter with ``error``.

        The node carries on; use this for per-message errors (bad input, a failed model call)
        so that the requester hears of them.
        """
        if self._in_hand.get(signal.id) is signal:
            del self._in_hand[signal.id]
        for port in self._input_ports:
            if port._last is signal:
                port._last = None
        self.errors += 1
        self._dead_letter(DeadLetter(signal, error, self.name))

    def _dead_letter(self, letter: DeadLetter) -> None:
        self.dead_letters += 1
        if self._graph is not None:
            self._graph._dead_letter(letter)
        else:
            logger.error(
                "%s: message %r not finished: %s", self.name, letter.signal.id, letter.error
            )

    def statistics(self) -> NodeStatistics:
        """A snapshot of this node and its ports."""
        inputs = {name: port.statistics() for name, port in self._inputs.items()}
        outputs = {name: port.statistics() for name, port in self._outputs.items()}
        return NodeStatistics(
            name=self.name,
            kind=self._kind(),
            state=self.state,
            messages_in=sum(port.messages for port in inputs.values()),
            messages_out=sum(port.messages for port in outputs.values()),
            errors=self.errors,
            restarts=self.restarts,
            dead_letters=self.dead_letters,
            in_hand=len(self._held()),
            run_time=self.run_time,
            inputs=inputs,
            outputs=outputs,
        )

    def _held(self) -> list[Signal[Any]]:
        """Every message the node has received and not yet passed on, failed or let go."""
        held = {id(signal): signal for signal in self._in_hand.values()}
        for port in self._input_ports:
            if port._last is not None:
                held.setdefault(id(port._last), port._last)
        return list(held.values())

    def _kind(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        return f"<{self._kind()} {self.name!r} {self.state}>"


class FunctionNode(Node, Generic[A, B]):
    """A one-in, one-out node around ``async def f(value) -> result``.

    Made by ``Graph.add(f)``. Each message's value goes through ``f`` and the result is sent on
    with the same request id. If ``f`` raises, that message becomes a dead letter with the error
    and the node carries on: a per-message error is not a crash. The ports take the types of
    ``f``'s annotations, so wiring checks them.
    """

    inp: Input[A]
    out: Output[B]

    def __init__(self, function: Callable[[A], Awaitable[B]]) -> None:
        if not inspect.iscoroutinefunction(function):
            raise TypeError(
                f"{function!r} is not an async function; a function node must not block the loop"
            )
        self._function = function
        self.name = getattr(function, "__name__", "function")
        parameters = list(inspect.signature(function).parameters.values())
        if len(parameters) != 1:
            raise TypeError(
                f"a function node takes one argument; {self.name} takes {len(parameters)}"
            )
        try:
            hints = typing.get_type_hints(function)
        except Exception:  # unresolvable annotations: no type check at wiring
            hints = {}
        self.inp.type = hints.get(parameters[0].name, Any)
        self.out.type = hints.get("return", Any)

    async def run(self) -> None:
        """Map every message through the function."""
        function = self._function
        out = self.out
        async for signal in self.inp:
            try:
                result = await function(signal.value)
            except Exception as error:
                logger.debug("%s failed on message %r", self.name, signal.id, exc_info=True)
                self.fail(signal, error)
                continue
            await out.send(signal.derive(result))

    def _kind(self) -> str:
        return f"function {self._function.__qualname__}"
