"""Coroutine dataflow graphs: long-running nodes wired by typed, bounded ports.

A :class:`Node` declares its ports by annotation and implements ``async def run(self)``;
messages travel as :class:`Signal` values tagged with their request's id. A :class:`Graph` wires
outputs to inputs (fan-out copies, fan-in merges), checks the types as it wires, runs every node
under a supervisor, and can be rewired while it runs::

    class Random(Node):
        out: Output[float]

        async def run(self) -> None:
            for i in range(10):
                await self.out.send(Signal(random.random(), id=i))

    class Add(Node):
        left: Input[float]
        right: Input[float]
        total: Output[float]

        async def run(self) -> None:
            async for a, b in self.join(self.left, self.right):
                await self.total.send(a.derive(a.value + b.value))

    graph = Graph("adder")
    a, b, add = graph.add(Random()), graph.add(Random()), graph.add(Add())
    printer = graph.add(show)                    # async def show(x: float) -> None
    graph.connect(a.out, add.left)
    graph.connect(b.out, add.right)
    graph.connect(add.total, printer.inp)
    async with graph:                            # runs until the sinks finish
        pass

Pure asyncio: no web or ML imports. Model calls join a graph through
:class:`coserve.ModelNode`, which shares the model's batcher with every other caller.
"""

from coserve.graph._graph import Graph, GraphState, GraphStatistics, Strategy, Supervision
from coserve.graph._node import FunctionNode, Node, NodeState, NodeStatistics
from coserve.graph._ports import Input, Output, PortStatistics, port
from coserve.graph._select import Join, Select
from coserve.graph._signal import DeadLetter, Signal

__all__ = [
    "DeadLetter",
    "FunctionNode",
    "Graph",
    "GraphState",
    "GraphStatistics",
    "Input",
    "Join",
    "Node",
    "NodeState",
    "NodeStatistics",
    "Output",
    "PortStatistics",
    "Select",
    "Signal",
    "Strategy",
    "Supervision",
    "port",
]
