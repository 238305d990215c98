"""The graph: nodes wired output-to-input, run and watched by a supervisor.

Building, running and changing a graph all happen on one event loop, and every wiring method is
synchronous: a sequence of calls with no ``await`` between them is atomic, which is what lets a
running graph be rewired without losing or doubling a message (see :mod:`coserve.graph._ports`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self, TypeVar, overload

from coserve._exceptions import (
    BrokenChannelError,
    GraphError,
    GraphFailed,
    GraphStopped,
    PortTypeError,
)
from coserve.channels import ReceiveChannel, SendChannel
from coserve.graph._node import FunctionNode, Node, NodeStatistics
from coserve.graph._ports import Input, Link, Output, assignable, type_name, unlink
from coserve.graph._signal import DeadLetter, Signal

__all__ = ["Graph", "GraphState", "GraphStatistics", "Strategy", "Supervision"]

logger = logging.getLogger("coserve.graph")

A = TypeVar("A")
B = TypeVar("B")
N = TypeVar("N", bound=Node)
T = TypeVar("T")

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
GraphState = Literal["idle", "running", "stopping", "done", "failed"]


@dataclass(frozen=True, slots=True)
class Supervision:
    """How a graph reacts when a node's ``run`` raises (after Erlang/OTP supervisors).

    Attributes:
        strategy: ``one_for_one`` restarts the crashed node; ``one_for_all`` restarts every
            node; ``rest_for_one`` restarts the crashed node and the nodes added after it.
        max_restarts: Restarts allowed within ``period``; one more and the graph fails with
            :class:`~coserve.GraphFailed` (0: the first crash fails the graph).
        period: The window, in seconds, over which restarts are counted.
    """

    strategy: Strategy = "one_for_one"
    max_restarts: int = 3
    period: float = 5.0

    def __post_init__(self) -> None:
        if self.strategy not in ("one_for_one", "one_for_all", "rest_for_one"):
            raise ValueError(f"unknown supervision strategy {self.strategy!r}")
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {self.max_restarts!r}")
        if self.period <= 0:
            raise ValueError(f"period must be > 0 seconds, got {self.period!r}")


@dataclass(frozen=True, slots=True)
class GraphStatistics:
    """A snapshot of a graph, as returned by ``Graph.statistics()``.

    Attributes:
        name: The graph's name.
        state: idle, running, stopping, done or failed.
        nodes: Each node's statistics by node name.
        restarts: Node restarts made by the supervisor.
        dead_letters: Messages the graph could not finish.
    """

    name: str
    state: GraphState
    nodes: dict[str, NodeStatistics]
    restarts: int
    dead_letters: int


class _Outlet(Node):
    """The far end of ``Graph.outlet``: an input read from outside, never run as a task."""

    inp: Input[Any]


class Graph:
    """Nodes wired by typed ports, run under a supervisor: ``async with graph: ...``.

    Args:
        name: For logs, statistics and diagrams.
        supervision: What to do when a node crashes (default: restart that node, at most 3
            times in 5 s, then fail the graph).
        on_dead_letter: Called (on the loop; keep it quick) with every message the graph could
            not finish. The default logs it at ERROR. Either way each is counted. It is also an
            attribute, so whoever runs the graph (a session server) can route them.
    """

    def __init__(
        self,
        name: str = "graph",
        *,
        supervision: Supervision | None = None,
        on_dead_letter: Callable[[DeadLetter], None] | None = None,
    ) -> None:
        self.name = name
        self.supervision = supervision if supervision is not None else Supervision()
        self.on_dead_letter = on_dead_letter
        self._nodes: dict[str, Node] = {}
        self._tasks: dict[Node, asyncio.Task[None]] = {}
        self._inlets: list[SendChannel[Any]] = []
        self._removals: dict[Node, asyncio.Future[None]] = {}
        self._restart_requested: set[Node] = set()
        self._restart_times: deque[float] = deque()
        self._state: GraphState = "idle"
        self._done: asyncio.Future[None] | None = None
        self._failure: GraphFailed | None = None
        self.restarts = 0
        self.dead_letters = 0

    # -- building ------------------------------------------------------------------------------

    @overload
    def add(self, node: N, *, name: str | None = None) -> N: ...
    @overload
    def add(
        self, node: Callable[[A], Awaitable[B]], *, name: str | None = None
    ) -> FunctionNode[A, B]: ...
    def add(self, node: Any, *, name: str | None = None) -> Any:
        """Add a node (or an ``async def f(value) -> result``, as a :class:`FunctionNode`).

        On a running graph the node starts once the current synchronous block of wiring calls
        is done, so connect it in the same block. Names are made unique with a ``-2`` suffix.

        Returns:
            The node, to reach its ports: ``adder = graph.add(Add())``, ``adder.left``.
        """
        self._check_changeable()
        if not isinstance(node, Node):
            if not callable(node):
                raise TypeError(f"expected a Node or an async function, got {node!r}")
            node = FunctionNode(node)
        if node._graph is not None:
            raise GraphError(f"node {node.name!r} already belongs to graph {node._graph.name!r}")
        base = name or node.name
        unique, suffix = base, 2
        while unique in self._nodes:
            unique, suffix = f"{base}-{suffix}", suffix + 1
        node.name = unique
        node._graph = self
        self._nodes[unique] = node
        if self._state in ("running", "stopping") and not isinstance(node, _Outlet):
            self._start_node(node)
            if self._state == "stopping" and not node._inputs:
                self._tasks[node].cancel()  # sources do not run during a stop
        return node

    def connect(self, output: Output[Any], *inputs: Input[Any]) -> None:
        """Wire ``output`` to each of ``inputs`` (several: fan-out copies to each).

        Several outputs may feed one input (fan-in merges them). Raises before changing anything.

        Raises:
            PortTypeError: An output's message type does not fit an input's; names both ports.
            GraphError: A port is not in this graph, or the link exists, or the input has ended.
        """
        self._check_changeable()
        if not inputs:
            raise ValueError("connect needs at least one input")
        self._check_port(output, Output)
        for target in inputs:
            self._check_port(target, Input)
            _check_fits(output, target)
            if any(link.input is target for link in output.links):
                raise GraphError(f"{output.full_name} is already connected to {target.full_name}")
        for target in inputs:
            link = Link(output, target, target._open_sender())
            output.links.append(link)
            output.linked = True
            target.links.append(link)

    def disconnect(self, output: Output[Any], target: Input[Any]) -> None:
        """Remove the link from ``output`` to ``target``.

        Messages already in ``target``'s buffer stay there; a send blocked on this link goes to
        links connected in the same synchronous block. If this was the input's last link on a
        running graph, its stream ends once drained.

        Raises:
            GraphError: The ports are not linked.
        """
        self._check_changeable()
        for link in output.links:
            if link.input is target:
                unlink(link)
                return
        raise GraphError(f"{output.full_name} is not connected to {target.full_name}")

    def insert(self, node: N, output: Output[Any], target: Input[Any]) -> N:
        """Put ``node`` (one input, one output) on the link from ``output`` to ``target``.

        Atomic on a running graph: messages already queued for ``target`` still reach it, and
        later ones go through ``node``.
        """
        self._check_changeable()
        node_in, node_out = self._single_ports(node)
        if not any(link.input is target for link in output.links):
            raise GraphError(f"{output.full_name} is not connected to {target.full_name}")
        _check_fits(output, node_in)  # both checked before anything changes
        _check_fits(node_out, target)
        if node._graph is None:
            self.add(node)
        self.connect(output, node_in)
        self.connect(node_out, target)
        output._replaced(target, node_in)
        self.disconnect(output, target)
        return node

    def remove(self, node: Node, *, bridge: bool = False) -> asyncio.Future[None]:
        """Take ``node`` out; on a running graph, after it has finished what it holds.

        Its inputs are disconnected at once, so it drains what is buffered and its ``run``
        returns (a node without inputs is cancelled); its outputs close when it finishes. With
        ``bridge=True`` every output that fed it is first connected to every input it fed, so
        the pipeline closes around the gap in the same atomic step. Every message is still
        delivered exactly once, but not in order: what the node still holds or has buffered
        reaches the downstream inputs after it, so newer messages sent around it may overtake
        those older ones.

        Returns:
            A future that completes when the node has finished and left the graph.
        """
        self._check_changeable()
        if self._nodes.get(node.name) is not node:
            raise GraphError(f"node {node.name!r} is not in graph {self.name!r}")
        fed = [
            port.full_name
            for port in node._inputs.values()
            if any(not inlet.closed for inlet in self._inlets_of(port))
        ]
        if fed:  # an inlet cannot be rerouted, and the node could never finish while it is open
            raise GraphError(
                f"cannot remove {node.name}: {', '.join(fed)} is fed by an open inlet; "
                "close the inlet first, or put a node between the inlet and this one"
            )
        upstream = [link for port in node._inputs.values() for link in port.links]
        if bridge:
            downstream = [link for port in node._outputs.values() for link in port.links]
            pairs = [
                (up.output, down.input, up.input)
                for up in upstream
                for down in downstream
                if not any(link.input is down.input for link in up.output.links)
            ]
            for source, target, _ in pairs:  # check every pair before changing anything
                if not assignable(source.type, target.type):
                    raise PortTypeError(
                        f"cannot bridge {source.full_name} ({type_name(source.type)}) to "
                        f"{target.full_name} ({type_name(target.type)}) around {node.name}"
                    )
            for source, target, bypassed in pairs:
                self.connect(source, target)
                source._replaced(bypassed, target)
        # A node already leaving keeps its one future: a second remove must not orphan the first.
        removed = self._removals.get(node)
        if removed is None:
            removed = asyncio.get_running_loop().create_future()
        for link in upstream:
            unlink(link)
        task = self._tasks.get(node)
        if task is None:  # not running: take it out now
            self._forget(node)
            removed.set_result(None)
            return removed
        self._removals[node] = removed
        if not node._inputs:
            task.cancel()
        return removed

    def inlet(self, target: Input[T]) -> SendChannel[Signal[T]]:
        """A send channel into ``target`` from outside the graph (e.g. a WebSocket reader).

        Close it to end the stream; ``stop`` closes it too.

        Raises:
            GraphError: The graph is stopping or has ended (a new inlet would keep it open).
        """
        self._check_changeable()
        if self._state == "stopping":
            raise GraphError(f"graph {self.name!r} is stopping: it takes no new inlets")
        self._check_port(target, Input)
        sender: SendChannel[Signal[T]] = target._open_sender()
        self._inlets.append(sender)
        return sender

    def outlet(
        self,
        output: Output[T],
        *,
        capacity: int = 16,
        on_send: Callable[[Signal[T]], None] | None = None,
    ) -> ReceiveChannel[Signal[T]]:
        """A receive channel fed by ``output``, to read from outside the graph.

        It ends when the graph's nodes feeding it finish. Closing it tells them nobody listens.
        ``on_send`` is called with each message as ``output``'s node begins sending it, before
        anything awaits: the moment to :meth:`snapshot` the state that message reflects.
        """
        if on_send is not None:
            output.on_send = on_send
        outlet = _Outlet()
        outlet.inp = outlet._inputs["inp"] = Input(
            outlet, "inp", output.type, capacity=capacity, required=True
        )
        outlet._input_ports = (outlet.inp,)
        self.add(outlet, name=f"outlet-{output.node.name}-{output.name}")
        self.connect(output, outlet.inp)
        if self._state in ("running", "stopping"):
            outlet.inp._seal()
        receiver: ReceiveChannel[Signal[T]] = outlet.inp._receiver
        return receiver

    def snapshot(self) -> dict[str, Any]:
        """Every stateful node's :meth:`Node.snapshot`, by node name, in the order added."""
        states: dict[str, Any] = {}
        for name, node in self._nodes.items():
            if not isinstance(node, _Outlet) and (state := node.snapshot()) is not None:
                states[name] = state
        return states

    def restore(self, states: dict[str, Any]) -> None:
        """Set back a :meth:`snapshot` into this graph, built and not yet started.

        Nodes are restored in the snapshot's order, so a node that a restore inserts (as
        its graph once did at run time) is there for its own state.

        Raises:
            GraphError: The graph has started, or has no node of a name in ``states``.
        """
        if self._state != "idle":
            raise GraphError(f"graph {self.name!r} has started: restore before start()")
        for name, state in states.items():
            node = self._nodes.get(name)
            if node is None:
                raise GraphError(
                    f"graph {self.name!r} has no node {name!r} to restore its state into"
                )
            node.restore(state)

    @property
    def nodes(self) -> dict[str, Node]:
        """The graph's nodes by name, in the order they were added."""
        return dict(self._nodes)

    @property
    def state(self) -> GraphState:
        """idle, running, stopping, done or failed."""
        return self._state

    def validate(self) -> None:
        """Check the wiring: every required input connected, no cycle without a feedback node.

        Raises:
            GraphError: Naming the unconnected inputs, or the cycle.
        """
        unconnected = [
            port.full_name
            for node in self._nodes.values()
            for port in node._inputs.values()
            if port.required
            and not port.links
            and not port._root.closed
            and not any(not inlet.closed for inlet in self._inlets_of(port))
        ]
        if unconnected:
            raise GraphError(f"required inputs not connected: {', '.join(unconnected)}")
        cycle = self._find_cycle()
        if cycle is not None:
            path = " -> ".join(node.name for node in cycle)
            raise GraphError(
                f"cycle {path}: set 'feedback = True' on a node in it if the loop is intended"
            )

    def _inlets_of(self, port: Input[Any]) -> list[SendChannel[Any]]:
        state = port._receiver._state  # inlets are clones of the input's own channel
        return [inlet for inlet in self._inlets if inlet._state is state]

    def _find_cycle(self) -> list[Node] | None:
        colour: dict[Node, int] = {}  # 1: on the current path, 2: finished
        path: list[Node] = []

        def visit(node: Node) -> list[Node] | None:
            colour[node] = 1
            path.append(node)
            for port in node._outputs.values():
                for link in port.links:
                    nxt = link.input.node
                    if colour.get(nxt) == 1:
                        cycle = [*path[path.index(nxt) :], nxt]
                        if not any(member.feedback for member in cycle):
                            return cycle
                    elif nxt not in colour:
                        found = visit(nxt)
                        if found is not None:
                            return found
            path.pop()
            colour[node] = 2
            return None

        for node in self._nodes.values():
            if node not in colour:
                found = visit(node)
                if found is not None:
                    return found
        return None

    def links(self) -> list[tuple[str, str, str, str]]:
        """Every link as ``(node, output, target node, input)``, by names, in wiring order."""
        return [
            (node.name, port.name, link.input.node.name, link.input.name)
            for node in self._nodes.values()
            for port in node._outputs.values()
            for link in port.links
        ]

    def to_mermaid(self) -> str:
        """The graph as a Mermaid flowchart, one edge per link labelled ``output → input``."""
        ids = {node: f"n{index}" for index, node in enumerate(self._nodes.values())}
        lines = ["flowchart LR"]
        for node, ident in ids.items():
            kind = node._kind()
            label = node.name if kind == node.name else f"{node.name}<br/>{kind}"
            shape = ('[/"', '"/]') if isinstance(node, _Outlet) else ('["', '"]')
            lines.append(f"    {ident}{shape[0]}{_escape(label)}{shape[1]}")
        for node, ident in ids.items():
            for port in node._outputs.values():
                for link in port.links:
                    label = _escape(f"{port.name} → {link.input.name}")
                    lines.append(f'    {ident} -->|"{label}"| {ids[link.input.node]}')
        return "\n".join(lines)

    # -- running -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Validate, then start every node under the supervisor.

        Raises:
            GraphError: The wiring is invalid, or the graph was already started.
        """
        if self._state != "idle":
            raise GraphError(f"graph {self.name!r} was already started")
        self.validate()
        self._done = asyncio.get_running_loop().create_future()
        self._state = "running"
        for node in list(self._nodes.values()):
            if isinstance(node, _Outlet):
                node.inp._seal()
            else:
                self._start_node(node)
        self._check_done()

    async def wait(self) -> None:
        """Wait until every node has finished.

        Raises:
            GraphFailed: A node crashed more often than the supervision allows.
        """
        if self._done is None:
            raise GraphError(f"graph {self.name!r} has not been started")
        await asyncio.shield(self._done)
        if self._failure is not None:
            raise self._failure

    async def stop(self, *, drain: bool = True, timeout: float | None = None) -> None:  # noqa: ASYNC109 - a drain deadline, then cancel
        """Stop the graph: end its sources, let in-flight messages reach the sinks, then cancel.

        Sources (nodes without inputs) are cancelled and inlets closed, so every stream ends; with
        ``drain`` the other nodes get ``timeout`` seconds (None: no limit) to finish what they
        hold; whatever is still running then is cancelled, and the messages it held become
        dead letters with :class:`~coserve.GraphStopped`. Returns when every task has ended.
        Does not raise the graph's failure; ``wait`` does.
        """
        if self._state == "idle":
            self._state = "done"
            return
        if self._state == "running":
            self._state = "stopping"
        for inlet in self._inlets:
            inlet.close()
        for node, task in list(self._tasks.items()):
            if not node._inputs:
                task.cancel()
        if drain:
            await self._drain(timeout)
        remaining = list(self._tasks.values())
        for task in remaining:
            task.cancel()
        if remaining:
            await asyncio.gather(*remaining, return_exceptions=True)

    async def _drain(self, timeout: float | None) -> None:  # noqa: ASYNC109 - a drain deadline
        """Wait for every task, including nodes added while draining, until the deadline."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self._tasks:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return
            _, pending = await asyncio.wait(list(self._tasks.values()), timeout=left)
            if pending:
                return

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            await self.stop(drain=False)
            return
        try:
            await self.wait()
        except asyncio.CancelledError:
            await self.stop(drain=False)
            raise

    def statistics(self) -> GraphStatistics:
        """A snapshot of the graph and every node in it."""
        return GraphStatistics(
            name=self.name,
            state=self._state,
            nodes={name: node.statistics() for name, node in self._nodes.items()},
            restarts=self.restarts,
            dead_letters=self.dead_letters,
        )

    # -- supervision ---------------------------------------------------------------------------

    def _start_node(self, node: Node) -> None:
        task = asyncio.create_task(
            self._supervise(node), name=f"coserve.graph:{self.name}:{node.name}"
        )
        task.add_done_callback(functools.partial(self._task_done, node))
        self._tasks[node] = task

    async def _supervise(self, node: Node) -> None:
        """Run one node: restart it on a crash while the supervision allows, then clean up."""
        # Wiring done in the block that started us is complete now: from here on the inputs
        # end when their links do.
        for port in node._inputs.values():
            port._seal()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        stopped: BaseException | None = None
        try:
            while True:
                node.state = "running"
                began = loop.time()
                try:
                    await node.run()
                    node.state = "done"
                    return
                except BrokenChannelError as error:  # nobody downstream listens any more
                    node.state = "done"
                    stopped = GraphStopped(f"{node.name} ended: {error}")
                    return
                except asyncio.CancelledError:
                    if node not in self._restart_requested or self._state != "running":
                        node.state = "cancelled"
                        stopped = GraphStopped(f"{node.name} was stopped")
                        raise
                    self._restart_requested.discard(node)
                    task.uncancel()
                    await self._release(node, GraphStopped(f"{node.name} was restarted"))
                except Exception as error:
                    node.errors += 1
                    logger.error(
                        "graph %s: node %s crashed: %r", self.name, node.name, error, exc_info=error
                    )
                    await self._release(node, error)
                    if not self._may_restart(node, error):
                        node.state = "failed"
                        return
                finally:
                    node.run_time += loop.time() - began
                node.state = "restarting"
                node.restarts += 1
                self.restarts += 1
                try:
                    node.on_restart()
                except Exception as error:  # a broken reset: the node cannot go on
                    node.errors += 1
                    logger.error(
                        "graph %s: node %s failed to restart: %r",
                        self.name,
                        node.name,
                        error,
                        exc_info=error,
                    )
                    node.state = "failed"
                    if self._state == "running":
                        self._fail(node, error, f"could not restart: on_restart raised {error!r}")
                    return
        finally:
            await self._retire(node, stopped)

    def _may_restart(self, node: Node, error: Exception) -> bool:
        """Count a restart; False (and the graph failed) beyond the intensity limit."""
        if self._state != "running":
            return False
        policy = self.supervision
        now = asyncio.get_running_loop().time()
        times = self._restart_times
        times.append(now)
        while times and times[0] <= now - policy.period:
            times.popleft()
        if len(times) > policy.max_restarts:
            self._fail(
                node,
                error,
                f"crashed ({error!r}) after {policy.max_restarts} restart(s) "
                f"within {policy.period:g} s",
            )
            return False
        if policy.strategy != "one_for_one":
            order = list(self._nodes.values())
            if policy.strategy == "rest_for_one":
                order = order[order.index(node) + 1 :]
            for other in order:
                running = self._tasks.get(other)
                if (
                    other is not node
                    and other.state != "idle"  # not started yet: it will start fresh anyway
                    and running is not None
                    and not running.done()
                ):
                    self._restart_requested.add(other)
                    running.cancel()
        return True

    def _fail(self, node: Node, error: Exception, how: str) -> None:
        """The graph fails because of ``node``: record why and cancel every other node."""
        failure = GraphFailed(f"graph {self.name!r} failed: node {node.name!r} {how}")
        failure.__cause__ = error
        self._failure = failure
        self._state = "failed"
        logger.error("%s", failure)
        for other, task in self._tasks.items():
            if other is not node:
                task.cancel()

    async def _release(self, node: Node, error: BaseException) -> None:
        """After a failed attempt: dead-letter what it held, then stop its selects."""
        held = node._held()  # first, before any await: a cancel meanwhile must not lose them
        node._in_hand.clear()
        for port in node._inputs.values():
            port._last = None
        for signal in held:
            node._dead_letter(DeadLetter(signal, error, node.name))
        for select in list(node._selects):
            await select.aclose()

    async def _retire(self, node: Node, stopped: BaseException | None) -> None:
        """A node has finished for good: close its ports, account for every message left."""
        if stopped is not None:
            await self._release(node, stopped)
        else:
            for select in list(node._selects):
                await select.aclose()
        if node.state == "failed" and self._failure is not None:
            await self._release(node, self._failure)
        self._close_ports(node)

    def _task_done(self, node: Node, task: asyncio.Task[None]) -> None:
        """A task cancelled before its first step never ran its cleanup: do it here."""
        if self._tasks.get(node) is task:
            node.state = "cancelled"
            self._close_ports(node)

    def _close_ports(self, node: Node) -> None:
        for port in node._inputs.values():
            for link in list(port.links):
                unlink(link)
            for signal in port._close():
                node._dead_letter(
                    DeadLetter(
                        signal, GraphStopped(f"{node.name} ended before reading it"), node.name
                    )
                )
        for output in node._outputs.values():
            for link in list(output.links):
                unlink(link)
        del self._tasks[node]
        removed = self._removals.pop(node, None)
        if removed is not None:
            self._forget(node)
            if not removed.done():
                removed.set_result(None)
        self._check_done()

    def _check_done(self) -> None:
        if self._tasks or self._done is None or self._done.done():
            return
        if self._state in ("running", "stopping"):
            self._state = "done"
        self._done.set_result(None)

    def _dead_letter(self, letter: DeadLetter) -> None:
        self.dead_letters += 1
        callback = self.on_dead_letter
        if callback is None:
            logger.error(
                "graph %s: message %r not finished by %s: %r",
                self.name,
                letter.signal.id,
                letter.node,
                letter.error,
            )
            return
        try:
            callback(letter)
        except Exception:  # the callback's bug must not take the node down with it
            logger.exception("graph %s: on_dead_letter failed", self.name)

    # -- helpers -------------------------------------------------------------------------------

    def _forget(self, node: Node) -> None:
        for port in node._inputs.values():
            for link in list(port.links):
                unlink(link)
        for output in node._outputs.values():
            for link in list(output.links):
                unlink(link)
        del self._nodes[node.name]
        node._graph = None

    def _check_changeable(self) -> None:
        # Rewiring stays allowed while stopping: a node may meet a queued command that reshapes
        # the pipeline during the drain, and refusing it would crash the node mid-drain.
        if self._state in ("done", "failed"):
            raise GraphError(f"graph {self.name!r} is {self._state}: it can no longer change")

    def _check_port(self, port: Input[Any] | Output[Any], kind: type) -> None:
        if not isinstance(port, kind):
            raise GraphError(f"expected an {kind.__name__} port, got {port!r}")
        if self._nodes.get(port.node.name) is not port.node:
            raise GraphError(f"{port.full_name} belongs to a node that is not in {self.name!r}")

    @staticmethod
    def _single_ports(node: Node) -> tuple[Input[Any], Output[Any]]:
        if len(node._inputs) != 1 or len(node._outputs) != 1:
            raise GraphError(f"{node.name} needs exactly one input and one output to be inserted")
        return next(iter(node._inputs.values())), next(iter(node._outputs.values()))

    def __repr__(self) -> str:
        return f"<Graph {self.name!r} {self._state}, {len(self._nodes)} nodes>"


def _check_fits(output: Output[Any], target: Input[Any]) -> None:
    if not assignable(output.type, target.type):
        raise PortTypeError(
            f"cannot connect {output.full_name} ({type_name(output.type)}) to "
            f"{target.full_name} ({type_name(target.type)}): the types do not fit"
        )


def _escape(text: str) -> str:
    return text.replace('"', "#quot;")
