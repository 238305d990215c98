"""Coroutine graphs: declaring nodes, wiring, running, joins, supervision, shutdown, live changes.

Waiting is deterministic: tests either run a graph to completion, step it with ``settle()``
(only ready tasks run, no wall clock), or use looptime's virtual clock for timeouts.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from coserve import (
    DeadLetter,
    EndOfChannel,
    FunctionNode,
    Graph,
    GraphError,
    GraphFailed,
    GraphStopped,
    Input,
    Node,
    Output,
    PortTypeError,
    Signal,
    Supervision,
    UnmatchedSignal,
    port,
)
from helpers import settle

# -- nodes used across the tests ------------------------------------------------------------


class Numbers(Node):
    """Sends 0..count-1, each with its own number as the request id."""

    out: Output[int]

    def __init__(self, count: int, *, ids: list[int] | None = None) -> None:
        self.count = count
        self.ids = ids

    async def run(self) -> None:
        ids = self.ids if self.ids is not None else list(range(self.count))
        for i in ids:
            await self.out.send(Signal(i, id=i))


class Forever(Node):
    """A source that never ends by itself."""

    out: Output[int]

    async def run(self) -> None:
        i = 0
        while True:
            await self.out.send(Signal(i, id=("forever", i)))
            i += 1


class Add(Node):
    """The talk's Add: waits for both operands of the same request."""

    left: Input[int]
    right: Input[int]
    total: Output[int]

    def __init__(self, timeout: float = 10.0, max_pending: int = 1024) -> None:
        self.timeout = timeout
        self.max_pending = max_pending

    async def run(self) -> None:
        async for a, b in self.join(
            self.left, self.right, timeout=self.timeout, max_pending=self.max_pending
        ):
            await self.total.send(a.derive(a.value + b.value))


class Collect(Node):
    """A sink that keeps every signal it receives."""

    inp: Input[Any]

    def __init__(self) -> None:
        self.seen: list[Signal[Any]] = []

    async def run(self) -> None:
        async for signal in self.inp:
            self.seen.append(signal)

    @property
    def values(self) -> list[Any]:
        return [signal.value for signal in self.seen]


class Pass(Node):
    """One in, one out, unchanged."""

    inp: Input[int]
    out: Output[int]

    async def run(self) -> None:
        async for signal in self.inp:
            await self.out.send(signal)


class Gate(Node):
    """Passes messages on only while its gate is open: holds one in hand while closed."""

    inp: Input[int]
    out: Output[int]

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()

    async def run(self) -> None:
        async for signal in self.inp:
            await self.gate.wait()
            await self.out.send(signal)


class Crashy(Node):
    """Passes messages on, but crashes on the values in ``crash_on`` (once each)."""

    inp: Input[int]
    out: Output[int]

    def __init__(self, crash_on: set[int]) -> None:
        self.crash_on = set(crash_on)
        self.runs = 0

    async def run(self) -> None:
        self.runs += 1
        async for signal in self.inp:
            if signal.value in self.crash_on:
                self.crash_on.discard(signal.value)
                raise RuntimeError(f"crash on {signal.value}")
            await self.out.send(signal)


def letters() -> tuple[list[DeadLetter], Any]:
    found: list[DeadLetter] = []
    return found, found.append


def pipeline(*middle: Node, count: int = 10) -> tuple[Graph, Numbers, Collect, list[DeadLetter]]:
    dead, record = letters()
    graph = Graph("pipeline", on_dead_letter=record)
    source = graph.add(Numbers(count))
    sink = graph.add(Collect())
    previous: Output[Any] = source.out
    for node in middle:
        graph.add(node)
        node_in, node_out = next(iter(node.inputs.values())), next(iter(node.outputs.values()))
        graph.connect(previous, node_in)
        previous = node_out
    graph.connect(previous, sink.inp)
    return graph, source, sink, dead


# -- declaring nodes --------------------------------------------------------------------------


def test_ports_come_from_annotations_one_set_per_instance() -> None:
    """Annotated Input/Output attributes become ports of each instance, with their types."""
    first, second = Add(), Add()
    assert set(first.inputs) == {"left", "right"}
    assert set(first.outputs) == {"total"}
    assert first.left is not second.left
    assert first.left.type is int
    assert first.total.node is first


def test_port_options_set_capacity_and_optional_inputs() -> None:
    """port(capacity=..., required=False) configures the declared input."""

    class Tuned(Node):
        data: Input[int] = port(capacity=3)
        hint: Input[str] = port(required=False)

    tuned = Tuned()
    assert tuned.data.capacity == 3
    assert tuned.hint.required is False
    with pytest.raises(ValueError, match="capacity"):
        port(capacity=-1)


def test_function_node_takes_its_types_from_annotations() -> None:
    """An async function becomes a one-in, one-out node typed by its annotations."""

    async def halve(x: int) -> float:
        return x / 2

    graph = Graph()
    node = graph.add(halve)
    assert isinstance(node, FunctionNode)
    assert node.inp.type is int
    assert node.out.type is float
    assert node.name == "halve"


def test_a_blocking_function_is_refused() -> None:
    """A plain (sync) function is not accepted as a node: it would block the loop."""

    def double(x: int) -> int:
        return 2 * x

    with pytest.raises(TypeError, match="not an async function"):
        Graph().add(double)  # type: ignore[arg-type]


# -- wiring -----------------------------------------------------------------------------------


def test_connecting_mismatched_types_names_both_ports() -> None:
    """A type mismatch raises PortTypeError at connect, naming both ports and their types."""

    async def shout(text: str) -> str:
        return text.upper()

    graph = Graph()
    source = graph.add(Numbers(1))
    node = graph.add(shout)
    with pytest.raises(PortTypeError, match=r"Numbers\.out \(int\) to shout\.inp \(str\)"):
        graph.connect(source.out, node.inp)
    assert not source.out.links  # nothing changed


def test_compatible_types_connect() -> None:
    """Int flows into float, anything into Any or object, members into unions."""

    async def as_float(x: float) -> float:
        return x

    async def as_union(x: int | str) -> object:
        return x

    graph = Graph()
    source = graph.add(Numbers(1))
    graph.connect(source.out, graph.add(as_float).inp, graph.add(as_union).inp)
    graph.connect(source.out, graph.add(Collect()).inp)
    assert len(source.out.links) == 3


def test_wiring_errors_are_clear() -> None:
    """Linking twice, or to a node of another graph, raises GraphError."""
    graph, other = Graph("a"), Graph("b")
    source = graph.add(Numbers(1))
    sink = graph.add(Collect())
    stranger = other.add(Collect())
    graph.connect(source.out, sink.inp)
    with pytest.raises(GraphError, match="already connected"):
        graph.connect(source.out, sink.inp)
    with pytest.raises(GraphError, match="not in 'a'"):
        graph.connect(source.out, stranger.inp)
    with pytest.raises(GraphError, match="already belongs"):
        other.add(sink)


def test_validate_rejects_unconnected_required_inputs() -> None:
    """validate() names every required input left unconnected; optional ones are fine."""

    class TwoIn(Node):
        a: Input[int]
        b: Input[int] = port(required=False)

    graph = Graph()
    graph.add(TwoIn())
    with pytest.raises(GraphError, match=r"TwoIn\.a") as caught:
        graph.validate()
    assert "TwoIn.b" not in str(caught.value)


def test_validate_rejects_cycles_unless_a_node_handles_feedback() -> None:
    """A cycle is an error unless a node in it declares feedback = True."""

    class Loop(Pass):
        pass

    class Feedback(Pass):
        feedback = True

    for kind, ok in ((Loop, False), (Feedback, True)):
        graph = Graph()
        first, second = graph.add(kind()), graph.add(Pass())
        graph.connect(first.out, second.inp)
        graph.connect(second.out, first.inp)
        if ok:
            graph.validate()
        else:
            with pytest.raises(GraphError, match="cycle"):
                graph.validate()


def test_to_mermaid_draws_nodes_and_labelled_edges() -> None:
    """to_mermaid() gives a flowchart with every node and one labelled edge per link."""
    graph = Graph()
    a, b, add = graph.add(Numbers(1)), graph.add(Numbers(1)), graph.add(Add())
    graph.connect(a.out, add.left)
    graph.connect(b.out, add.right)
    text = graph.to_mermaid()
    assert text.startswith("flowchart LR")
    assert '["Numbers"]' in text
    assert '["Numbers-2<br/>Numbers"]' in text
    assert '-->|"out → left"|' in text
    assert '-->|"out → right"|' in text


# -- running --------------------------------------------------------------------------------


async def test_the_talks_graph_adds_pairs_by_request() -> None:
    """Random, Random -> Add -> Printer: Add pairs operands by id even when they arrive shuffled."""
    graph = Graph("talk")
    a = graph.add(Numbers(0, ids=[0, 1, 2, 3, 4]))
    b = graph.add(Numbers(0, ids=[4, 2, 0, 3, 1]))
    add = graph.add(Add())
    sink = graph.add(Collect())
    graph.connect(a.out, add.left)
    graph.connect(b.out, add.right)
    graph.connect(add.total, sink.inp)
    async with graph:
        pass
    assert sorted((s.id, s.value) for s in sink.seen) == [(i, 2 * i) for i in range(5)]
    assert graph.state == "done"


async def test_fan_out_copies_and_fan_in_merges() -> None:
    """An output wired to two inputs sends each message to both; two outputs into one merge."""
    graph = Graph()
    first, second = graph.add(Numbers(5)), graph.add(Numbers(0, ids=[10, 11]))
    left, right, merged = graph.add(Collect()), graph.add(Collect()), graph.add(Collect())
    graph.connect(first.out, left.inp, right.inp)
    graph.connect(first.out, merged.inp)
    graph.connect(second.out, merged.inp)
    async with graph:
        pass
    assert left.values == right.values == [0, 1, 2, 3, 4]
    assert sorted(merged.values) == [0, 1, 2, 3, 4, 10, 11]


async def test_end_of_stream_closes_outputs_and_completes_the_graph() -> None:
    """When a source returns, each downstream node's input ends, it returns, and so on."""
    graph, _, sink, dead = pipeline(Pass(), Pass(), count=4)
    async with graph:
        pass
    assert sink.values == [0, 1, 2, 3]
    assert all(node.state == "done" for node in graph.nodes.values())
    assert not dead


async def test_a_sink_that_stops_early_stops_its_producer() -> None:
    """If nothing downstream listens any more, the producer's send fails and it ends."""

    class TakeTwo(Node):
        inp: Input[int]

        async def run(self) -> None:
            await self.inp.receive()
            await self.inp.receive()

    dead, record = letters()
    graph = Graph(on_dead_letter=record)
    source = graph.add(Forever())
    taker = graph.add(TakeTwo())
    graph.connect(source.out, taker.inp)
    async with graph:
        pass
    assert source.state == "done"
    # Whatever was queued behind the two is reported, not silently dropped.
    assert all(isinstance(letter.error, GraphStopped) for letter in dead)


async def test_function_node_errors_are_dead_letters_and_the_node_carries_on() -> None:
    """A function that raises for one message fails that message only."""

    async def invert(x: int) -> float:
        return 1 / x

    dead, record = letters()
    graph = Graph(on_dead_letter=record)
    source, node, sink = graph.add(Numbers(4)), graph.add(invert), graph.add(Collect())
    graph.connect(source.out, node.inp)
    graph.connect(node.out, sink.inp)
    async with graph:
        pass
    assert sink.values == [1.0, 0.5, 1 / 3]
    assert [(letter.signal.id, type(letter.error)) for letter in dead] == [(0, ZeroDivisionError)]
    assert node.statistics().errors == 1
    assert node.restarts == 0


async def test_inlet_and_outlet_connect_the_graph_to_outside_code() -> None:
    """inlet() feeds an input from outside; outlet() reads an output from outside."""

    async def double(x: int) -> int:
        return 2 * x

    graph = Graph()
    node = graph.add(double)
    inlet = graph.inlet(node.inp)
    outlet = graph.outlet(node.out)
    async with graph:
        for i in range(3):
            await inlet.send(Signal(i, id=f"r{i}", session="s1"))
        inlet.close()
        answers = [signal async for signal in outlet]
    assert [(s.id, s.value, s.session) for s in answers] == [
        ("r0", 0, "s1"),
        ("r1", 2, "s1"),
        ("r2", 4, "s1"),
    ]


async def test_statistics_count_messages_per_node_and_port() -> None:
    """statistics() reports messages in and out, per port, and the graph's totals."""
    graph, _source, _sink, _ = pipeline(Pass(), count=7)
    async with graph:
        pass
    stats = graph.statistics()
    assert stats.nodes["Numbers"].messages_out == 7
    assert stats.nodes["Pass"].messages_in == stats.nodes["Pass"].messages_out == 7
    assert stats.nodes["Collect"].inputs["inp"].messages == 7
    assert stats.nodes["Pass"].inputs["inp"].capacity == 16
    assert stats.state == "done"
    assert stats.restarts == 0
    assert stats.dead_letters == 0
    assert stats.nodes["Pass"].run_time >= 0
    assert stats.nodes["Pass"].in_hand == 0


async def test_statistics_show_queue_depth_while_running() -> None:
    """A blocked node's input shows its buffered messages."""
    gate = Gate()
    gate.gate.clear()
    graph, _, _, _ = pipeline(gate, count=5)
    await graph.start()
    await settle()
    depth = graph.statistics().nodes["Gate"].inputs["inp"].buffered
    assert depth == 4  # one in the gate's hands, four queued
    gate.gate.set()
    await graph.wait()


# -- joins ----------------------------------------------------------------------------------


@pytest.mark.looptime
async def test_join_times_out_an_unmatched_message_as_a_dead_letter() -> None:
    """A message whose partner never comes becomes an UnmatchedSignal after the timeout."""
    dead, record = letters()
    graph = Graph(on_dead_letter=record)
    left = graph.add(Numbers(0, ids=[1, 2]))
    add = graph.add(Add(timeout=5.0))
    sink = graph.add(Collect())
    right = graph.inlet(add.right)
    graph.connect(left.out, add.left)
    graph.connect(add.total, sink.inp)
    loop = asyncio.get_running_loop()
    async with graph:
        await right.send(Signal(10, id=2))
        await asyncio.sleep(6)
        assert [letter.signal.id for letter in dead] == [1]
        assert isinstance(dead[0].error, UnmatchedSignal)
        assert "within 5 s" in str(dead[0].error)
        right.close()
    assert sink.values == [12]
    assert loop.time() < 7


async def test_join_reports_messages_whose_partner_input_ended() -> None:
    """When one input ends, messages still waiting for it are reported at once, not held."""
    dead, record = letters()
    graph = Graph(on_dead_letter=record)
    left, right = graph.add(Numbers(0, ids=[1, 2, 3])), graph.add(Numbers(0, ids=[2]))
    add, sink = graph.add(Add()), graph.add(Collect())
    graph.connect(left.out, add.left)
    graph.connect(right.out, add.right)
    graph.connect(add.total, sink.inp)
    async with graph:
        pass
    assert sink.values == [4]
    assert sorted(letter.signal.id for letter in dead) == [1, 3]
    assert all(isinstance(letter.error, UnmatchedSignal) for letter in dead)


async def test_join_bounds_the_messages_waiting_for_partners() -> None:
    """Beyond max_pending waiting messages, the oldest gives way as a dead letter."""
    dead, record = letters()
    graph = Graph(on_dead_letter=record)
    left, right = graph.add(Numbers(0, ids=[1, 2, 3, 4])), graph.add(Numbers(0, ids=[4]))
    add, sink = graph.add(Add(max_pending=2)), graph.add(Collect())
    graph.connect(left.out, add.left)
    graph.connect(right.out, add.right)
    graph.connect(add.total, sink.inp)
    async with graph:
        pass
    assert sink.values == [8]
    assert sorted(letter.signal.id for letter in dead) == [1, 2, 3]


async def test_select_merges_inputs_in_arrival_order() -> None:
    """select() yields (port, signal) from whichever input has a message, until all end."""

    class Tag(Node):
        a: Input[int]
        b: Input[int]
        out: Output[str]

        async def run(self) -> None:
            async for source, signal in self.select():
                await self.out.send(signal.derive(f"{source.name}{signal.value}"))

    graph = Graph()
    first, second = graph.add(Numbers(3)), graph.add(Numbers(0, ids=[7]))
    tag, sink = graph.add(Tag()), graph.add(Collect())
    graph.connect(first.out, tag.a)
    graph.connect(second.out, tag.b)
    graph.connect(tag.out, sink.inp)
    async with graph:
        pass
    assert sorted(sink.values) == ["a0", "a1", "a2", "b7"]


async def test_closing_a_select_keeps_what_it_took_and_passes_its_callers_cancel_on() -> None:
    """aclose() puts a message its receive had taken back, even when its caller is cancelled."""

    class Two(Node):
        a: Input[int]
        b: Input[int]

        async def run(self) -> None:
            raise AssertionError("never started")

    graph = Graph()
    node = graph.add(Two())
    inlet = graph.inlet(node.a)
    select = node.select()
    waiter = asyncio.ensure_future(select.next_event(None))
    await settle()  # a receive is now waiting on each input
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    inlet.send_nowait(Signal(1, id=1))  # wakes the receive on `a`: it takes the message
    closer = asyncio.ensure_future(select.aclose())
    await asyncio.sleep(0)  # the receive finishes, then aclose starts and waits for `b`'s
    closer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closer
    assert node.a.receive_nowait().id == 1  # back in its input, not lost
    assert select not in node._selects


# -- supervision ----------------------------------------------------------------------------


async def test_one_for_one_restarts_the_crashed_node_and_reports_its_message() -> None:
    """A crash restarts only that node; the message it held becomes a dead letter with the error."""
    crashy = Crashy({2})
    graph, _source, sink, dead = pipeline(crashy, Pass(), count=5)
    async with graph:
        pass
    assert sink.values == [0, 1, 3, 4]
    assert [(letter.signal.id, str(letter.error), letter.node) for letter in dead] == [
        (2, "crash on 2", "Crashy")
    ]
    assert crashy.runs == 2
    assert crashy.restarts == 1
    assert graph.nodes["Pass"].restarts == 0
    assert graph.statistics().restarts == 1


async def test_on_restart_is_called_before_run_starts_again() -> None:
    """on_restart() lets a node reset its state after a crash."""

    class Counting(Crashy):
        resets = 0

        def on_restart(self) -> None:
            self.resets += 1

    node = Counting({1, 3})
    graph, _, sink, _ = pipeline(node, count=5)
    async with graph:
        pass
    assert node.resets == 2
    assert sink.values == [0, 2, 4]


async def test_an_on_restart_that_raises_fails_the_graph() -> None:
    """A node that cannot reset itself fails the graph with that error, not silently."""

    class Unresettable(Crashy):
        def on_restart(self) -> None:
            raise ValueError("reset failed")

    node = Unresettable({1})
    graph, _, _, dead = pipeline(node, count=3)
    await graph.start()
    with pytest.raises(GraphFailed, match="reset failed") as failed:
        await graph.wait()
    assert isinstance(failed.value.__cause__, ValueError)
    assert node.state == "failed"
    assert next(letter.signal.id for letter in dead if letter.node == node.name) == 1


async def test_too_many_restarts_fail_the_graph_with_the_error() -> None:
    """Past max_restarts within the period the graph fails: GraphFailed, caused by the crash."""
    dead, record = letters()
    graph = Graph(supervision=Supervision(max_restarts=2, period=60), on_dead_letter=record)
    source, crashy, sink = (
        graph.add(Numbers(10)),
        graph.add(Crashy({1, 2, 3, 4})),
        graph.add(Collect()),
    )
    graph.connect(source.out, crashy.inp)
    graph.connect(crashy.out, sink.inp)
    with pytest.raises(GraphFailed, match="after 2 restart") as caught:
        async with graph:
            pass
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert graph.state == "failed"
    assert crashy.state == "failed"
    assert all(task.done() for task in asyncio.all_tasks() if "coserve.graph" in task.get_name())
    # Every message was either delivered or reported: none vanished.
    assert sorted(sink.values + [letter.signal.id for letter in dead]) == list(range(10))


async def test_one_for_all_restarts_every_node() -> None:
    """With one_for_all, a crash restarts the other running nodes too."""

    class Counting(Pass):
        runs = 0

        async def run(self) -> None:
            self.runs += 1
            await super().run()

    before, after = Counting(), Counting()
    crashy = Crashy({3})
    dead, record = letters()
    graph = Graph(supervision=Supervision("one_for_all"), on_dead_letter=record)
    sink = graph.add(Collect())
    for node in (before, crashy, after):
        graph.add(node)
    source = graph.inlet(before.inp)  # stays open, so every node is still running at the crash
    graph.connect(before.out, crashy.inp)
    graph.connect(crashy.out, after.inp)
    graph.connect(after.out, sink.inp)
    async with graph:
        await settle()  # every node running and waiting
        for i in range(6):
            await source.send(Signal(i, id=i))
        await settle()
        source.close()
    assert before.runs == 2
    assert after.runs == 2
    assert crashy.runs == 2
    assert sorted(sink.values + [letter.signal.id for letter in dead]) == list(range(6))


async def test_rest_for_one_restarts_only_nodes_added_after_the_crashed_one() -> None:
    """With rest_for_one, nodes added before the crashed one keep running."""

    class Counting(Pass):
        runs = 0

        async def run(self) -> None:
            self.runs += 1
            await super().run()

    before, after = Counting(), Counting()
    crashy = Crashy({3})
    graph = Graph(supervision=Supervision("rest_for_one"), on_dead_letter=lambda _: None)
    for node in (before, crashy, after):
        graph.add(node)
    sink = graph.add(Collect())
    source = graph.inlet(before.inp)  # stays open, so every node is still running at the crash
    graph.connect(before.out, crashy.inp)
    graph.connect(crashy.out, after.inp)
    graph.connect(after.out, sink.inp)
    async with graph:
        await settle()  # every node running and waiting
        for i in range(6):
            await source.send(Signal(i, id=i))
        await settle()
        source.close()
    assert before.runs == 1
    assert crashy.runs == 2
    assert after.runs == 2


def test_supervision_options_are_checked() -> None:
    """Bad strategies and limits are refused when the policy is made."""
    with pytest.raises(ValueError, match="strategy"):
        Supervision("one_for_some")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="period"):
        Supervision(period=0)


# -- shutdown -------------------------------------------------------------------------------


async def test_stop_with_drain_delivers_everything_in_flight() -> None:
    """stop(drain=True) stops the sources, and what they sent still reaches the sink."""
    dead, record = letters()
    graph = Graph(on_dead_letter=record)
    source, relay, sink = graph.add(Forever()), graph.add(Pass()), graph.add(Collect())
    graph.connect(source.out, relay.inp)
    graph.connect(relay.out, sink.inp)
    await graph.start()
    await settle(50)
    await graph.stop(drain=True, timeout=5)
    sent = source.out.messages
    assert sent > 0
    assert [signal.value for signal in sink.seen] == list(range(sent))
    assert not dead
    assert graph.state == "done"


@pytest.mark.looptime
async def test_stop_cancels_what_misses_the_deadline_and_reports_its_messages() -> None:
    """Past the drain timeout, running nodes are cancelled; what they held becomes dead letters."""
    gate = Gate()
    gate.gate.clear()
    graph, _, sink, dead = pipeline(gate, count=3)
    await graph.start()
    await settle()
    await graph.stop(drain=True, timeout=2)
    assert sink.values == []
    assert sorted(letter.signal.id for letter in dead) == [0, 1, 2]
    assert all(isinstance(letter.error, GraphStopped) for letter in dead)
    assert gate.state == "cancelled"
    assert not [t for t in asyncio.all_tasks() if "coserve.graph" in t.get_name()]


async def test_leaving_the_block_with_an_error_stops_the_graph() -> None:
    """An exception in the async with body cancels the graph's nodes and propagates."""
    graph, _, _, _ = pipeline(count=0)
    forever = graph.add(Forever())
    graph.connect(forever.out, graph.nodes["Collect"].inp)

    async def body() -> None:
        async with graph:
            await settle()
            raise KeyError("boom")

    with pytest.raises(KeyError):
        await body()
    assert forever.state == "cancelled"
    assert not [t for t in asyncio.all_tasks() if "coserve.graph" in t.get_name()]


# -- live changes ---------------------------------------------------------------------------


async def test_insert_a_node_into_a_running_pipeline_loses_nothing() -> None:
    """insert() puts a node on a live link: queued messages arrive, later ones pass through it."""

    class Tenfold(Node):
        inp: Input[int]
        out: Output[int]

        async def run(self) -> None:
            async for signal in self.inp:
                await self.out.send(signal.derive(signal.value * 10))

    gate = Gate()
    gate.gate.clear()
    graph, _source, sink, dead = pipeline(gate, count=0)
    inlet = graph.inlet(gate.inp)
    await graph.start()
    for i in range(3):
        await inlet.send(Signal(i, id=i))
    await settle()
    graph.insert(Tenfold(), gate.out, sink.inp)
    gate.gate.set()
    for i in range(3, 6):
        await inlet.send(Signal(i, id=i))
    inlet.close()
    await graph.wait()
    assert sorted(signal.id for signal in sink.seen) == list(range(6))
    assert sink.values == [0, 10, 20, 30, 40, 50]  # the held message went to the new node too
    assert not dead


async def test_remove_with_bridge_drains_the_node_and_closes_the_gap() -> None:
    """remove(bridge=True) reconnects around a node, which finishes its queue before leaving."""
    gate = Gate()
    gate.gate.clear()
    graph, _, sink, dead = pipeline(count=0)
    relay = graph.add(Pass())
    graph.add(gate)
    graph.disconnect(graph.nodes["Numbers"].out, sink.inp)
    graph.connect(relay.out, gate.inp)
    graph.connect(gate.out, sink.inp)
    inlet = graph.inlet(relay.inp)
    await graph.start()
    for i in range(4):
        await inlet.send(Signal(i, id=i))
    await settle()
    removed = graph.remove(gate, bridge=True)
    assert "Gate" in graph.nodes  # still finishing what it holds
    for i in range(4, 8):
        await inlet.send(Signal(i, id=i))
    await settle()
    assert sorted(sink.values) == [4, 5, 6, 7]  # new messages already bypass the gate
    gate.gate.set()
    await removed
    assert "Gate" not in graph.nodes
    inlet.close()
    await graph.wait()
    assert sorted(sink.values) == list(range(8))
    assert not dead


async def test_a_failed_insert_leaves_the_wiring_as_it_was() -> None:
    """insert() checks both links' types before changing anything."""

    class ToText(Node):
        inp: Input[int]
        out: Output[str]

        async def run(self) -> None:
            async for signal in self.inp:
                await self.out.send(signal.derive(str(signal.value)))

    relay = Pass()
    graph, source, sink, _ = pipeline(relay, count=3)
    with pytest.raises(PortTypeError, match=r"ToText\.out"):
        graph.insert(ToText(), source.out, relay.inp)
    assert [link.input for link in source.out.links] == [relay.inp]
    assert "ToText" not in graph.nodes
    async with graph:
        pass
    assert sink.values == [0, 1, 2]


async def test_a_node_may_rewire_the_graph_while_it_drains() -> None:
    """A command still queued when stop(drain=True) begins may reshape the pipeline."""

    class Switcher(Node):
        """Inserts a Pass in front of the sink when it sees -1; passes everything else on."""

        inp: Input[int]
        out: Output[int]

        async def run(self) -> None:
            async for signal in self.inp:
                if signal.value == -1:
                    assert self.graph is not None
                    self.graph.insert(Pass(), self.out, sink.inp)
                    continue
                await self.out.send(signal)

    switcher = Switcher()
    graph, _, sink, dead = pipeline(switcher, count=0)
    inlet = graph.inlet(switcher.inp)
    await graph.start()
    for value in (0, -1, 1, 2):
        await inlet.send(Signal(value, id=value))
    await graph.stop(drain=True, timeout=10)
    assert sink.values == [0, 1, 2]
    assert graph.nodes["Pass"].state == "done"
    assert not dead
    assert graph.state == "done"


async def test_a_stopping_graph_takes_no_new_inlets_and_starts_no_new_sources() -> None:
    """While draining, a new inlet is refused and a source added then never runs."""
    gate = Gate()
    gate.gate.clear()
    graph, _, sink, dead = pipeline(gate, count=0)
    inlet = graph.inlet(gate.inp)
    await graph.start()
    await inlet.send(Signal(0, id=0))
    await settle()
    stopper = asyncio.ensure_future(graph.stop(drain=True, timeout=10))
    await settle()
    assert graph.state == "stopping"
    with pytest.raises(GraphError, match="stopping"):
        graph.inlet(gate.inp)
    late = graph.add(Forever())
    await settle()
    assert late.state == "cancelled"
    gate.gate.set()
    await stopper
    assert sink.values == [0]
    assert not dead


async def test_a_node_added_to_a_running_graph_starts_and_finishes() -> None:
    """add() + connect() on a running graph start the new node once the wiring block is done."""
    graph = Graph()
    sink = graph.add(Collect())
    inlet = graph.inlet(sink.inp)
    await graph.start()
    late = graph.add(Numbers(3))
    graph.connect(late.out, sink.inp)
    await settle()
    inlet.close()
    await graph.wait()
    assert sink.values == [0, 1, 2]


async def test_a_finished_graph_refuses_changes() -> None:
    """Once done, the graph cannot be changed or started again."""
    graph, _, _, _ = pipeline(count=1)
    async with graph:
        pass
    with pytest.raises(GraphError, match="done"):
        graph.add(Pass())
    with pytest.raises(GraphError, match="already started"):
        await graph.start()


async def test_receive_after_the_end_raises_end_of_channel() -> None:
    """Input.receive() raises EndOfChannel once every upstream output has closed."""

    class Once(Node):
        inp: Input[int]

        def __init__(self) -> None:
            self.outcome: list[str] = []

        async def run(self) -> None:
            await self.inp.receive()
            with pytest.raises(EndOfChannel):
                await self.inp.receive()
            self.outcome.append("ended")

    graph = Graph()
    source, once = graph.add(Numbers(1)), graph.add(Once())
    graph.connect(source.out, once.inp)
    async with graph:
        pass
    assert once.outcome == ["ended"]


class TightGate(Gate):
    """A gate with no input buffer: its sender waits while it holds a message."""

    inp: Input[int] = port(capacity=0)


async def test_rewiring_both_targets_of_a_fan_out_mid_send_doubles_nothing() -> None:
    """A fan-out send that already reached one target does not resend there after an insert."""
    dead, record = letters()
    graph = Graph(on_dead_letter=record)
    relay, first, gate, second = (
        graph.add(Pass()),
        graph.add(Collect()),
        graph.add(TightGate()),
        graph.add(Collect()),
    )
    gate.gate.clear()
    graph.connect(relay.out, first.inp, gate.inp)
    graph.connect(gate.out, second.inp)
    inlet = graph.inlet(relay.inp)
    await graph.start()
    await inlet.send(Signal(1, id=1))  # both take 1; the gate holds it
    await inlet.send(Signal(2, id=2))  # first takes 2; the relay waits on the gate
    await settle()
    graph.insert(Pass(), relay.out, first.inp)  # first already has 2
    graph.insert(Pass(), relay.out, gate.inp)  # the waiting send moves to the new node
    gate.gate.set()
    inlet.close()
    await graph.wait()
    assert sorted(first.values) == [1, 2]
    assert sorted(second.values) == [1, 2]
    assert not dead


async def test_inserting_where_a_redelivered_message_was_just_taken_doubles_nothing() -> None:
    """A message rerouted by a bridge and taken just before an insert is not sent on again."""
    dead, record = letters()
    graph = Graph(on_dead_letter=record)
    relay, gate = graph.add(Pass()), graph.add(TightGate())
    gate.gate.clear()
    graph.connect(relay.out, gate.inp)
    outlet = graph.outlet(gate.out, capacity=0)
    inlet = graph.inlet(relay.inp)
    await graph.start()
    await inlet.send(Signal(0, id=0))  # the gate holds 0
    await inlet.send(Signal(1, id=1))  # the relay waits on the gate with 1
    await settle()
    graph.remove(gate, bridge=True)  # the relay's send of 1 moves to the outlet, and waits
    await settle()
    taken = [outlet.receive_nowait()]  # takes 1 from the waiting relay ...
    graph.insert(Pass(), relay.out, relay.out.links[0].input)  # ... before it sees that
    gate.gate.set()
    inlet.close()
    taken += [signal async for signal in outlet]
    await graph.wait()
    assert sorted(signal.id for signal in taken) == [0, 1]
    assert not dead


async def test_removing_a_leaving_node_again_gives_the_same_future() -> None:
    """A second remove() of a node still finishing returns the future that completes with it."""
    dead, record = letters()
    graph = Graph(on_dead_letter=record)
    relay, gate, sink = graph.add(Pass()), graph.add(Gate()), graph.add(Collect())
    gate.gate.clear()
    graph.connect(relay.out, gate.inp)
    graph.connect(gate.out, sink.inp)
    inlet = graph.inlet(relay.inp)
    await graph.start()
    await inlet.send(Signal(0, id=0))
    await settle()  # the gate holds 0, so it cannot leave yet
    first = graph.remove(gate, bridge=True)
    second = graph.remove(gate, bridge=True)
    assert second is first
    gate.gate.set()
    await first
    inlet.close()
    await graph.wait()
    assert sink.values == [0]
    assert not dead


async def test_a_node_fed_by_an_open_inlet_cannot_be_removed() -> None:
    """remove() refuses a node an open inlet feeds: it could never drain, so it says so."""
    graph = Graph()
    sink = graph.add(Collect())
    inlet = graph.inlet(sink.inp)
    await graph.start()
    with pytest.raises(GraphError, match="open inlet"):
        graph.remove(sink)
    inlet.close()
    await graph.wait()
