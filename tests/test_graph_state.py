"""Graph state: nodes' snapshot/restore, and the checkpoint hook on an outlet."""

from __future__ import annotations

from typing import Any

import pytest

from coserve import GraphError
from coserve.graph import Graph, Input, Node, Output, Signal


class Counter(Node):
    """Counts messages, answering each with the count so far."""

    inp: Input[int]
    out: Output[int]
    state_fields = ("count", "seen")

    def __init__(self) -> None:
        self.count = 0
        self.seen: list[int] = []

    async def run(self) -> None:
        async for signal in self.inp:
            self.count += 1
            self.seen.append(signal.value)
            await self.out.send(signal.derive(self.count))


class Plain(Node):
    inp: Input[int]
    out: Output[int]

    async def run(self) -> None:
        async for signal in self.inp:
            await self.out.send(signal)


def build() -> tuple[Graph, Counter, Plain]:
    graph = Graph("state")
    plain = graph.add(Plain())
    counter = graph.add(Counter())
    graph.connect(plain.out, counter.inp)
    return graph, counter, plain


async def test_each_checkpoint_holds_exactly_the_answered_messages() -> None:
    """on_send sees the state as of the message being sent, not of later ones."""
    graph, counter, plain = build()
    taken: list[tuple[int, dict[str, Any]]] = []
    inlet = graph.inlet(plain.inp)
    outlet = graph.outlet(
        counter.out,
        capacity=64,  # room for every answer: the counter runs ahead of the reader
        on_send=lambda signal: taken.append((signal.value, graph.snapshot())),
    )
    async with graph:
        for value in range(5):
            await inlet.send(Signal(value * 10, id=value))
        inlet.close()
        answers = [signal.value async for signal in outlet]
    assert answers == [1, 2, 3, 4, 5]
    # A snapshot's lists are live objects (the session server serializes at once), so
    # compare the counts, which were copied by value.
    assert [(answer, states["Counter"]["count"]) for answer, states in taken] == [
        (n, n) for n in range(1, 6)
    ]
    assert "Plain" not in taken[0][1]  # no state declared, none saved
    assert counter.snapshot() == {"count": 5, "seen": [0, 10, 20, 30, 40]}


async def test_restore_sets_state_into_a_fresh_graph() -> None:
    graph, counter, _ = build()
    graph.restore({"Counter": {"count": 7, "seen": [1]}})
    assert (counter.count, counter.seen) == (7, [1])
    with pytest.raises(GraphError, match="no node 'Missing'"):
        graph.restore({"Missing": {}})
    with pytest.raises(TypeError, match="expected the dict"):
        graph.restore({"Counter": [1, 2]})
    inlet = graph.inlet(graph.nodes["Plain"].inputs["inp"])
    graph.outlet(counter.out)
    async with graph:
        with pytest.raises(GraphError, match="restore before start"):
            graph.restore({"Counter": {"count": 1}})
        inlet.close()  # let the graph finish
