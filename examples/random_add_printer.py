"""The talk's coroutine graph: two Random sources -> Add -> Printer.

Add waits for both operands of the same request: it pairs messages by their id, not by the
order they arrive in (the two sources emit at different, random paces). Run it::

    python examples/random_add_printer.py --count 5
"""

from __future__ import annotations

import argparse
import asyncio
import random

from coserve import Graph, Input, Node, Output, Signal


class Random(Node):
    """Emits ``count`` random numbers, one per request id, after random short pauses."""

    out: Output[float]

    def __init__(self, count: int, seed: int) -> None:
        self.count = count
        self.random = random.Random(seed)

    async def run(self) -> None:
        """Send one number per id, in order, at an irregular pace."""
        for request in range(self.count):
            await asyncio.sleep(self.random.uniform(0, 0.01))
            await self.out.send(Signal(round(self.random.uniform(0, 10), 2), id=request))


class Add(Node):
    """Adds the two operands of each request once both have arrived."""

    left: Input[float]
    right: Input[float]
    total: Output[str]

    async def run(self) -> None:
        """Pair by request id (bounded wait), then send the sum on."""
        async for a, b in self.join(self.left, self.right, timeout=5.0):
            await self.total.send(a.derive(f"{a.value} + {b.value} = {a.value + b.value:.2f}"))


class Printer(Node):
    """Prints each result with its request id."""

    inp: Input[str]

    async def run(self) -> None:
        """Print until the stream ends."""
        async for signal in self.inp:
            print(f"request {signal.id}: {signal.value}")


async def main(count: int) -> None:
    """Wire the graph, show it, and run it to completion."""
    graph = Graph("random-add-printer")
    first, second = graph.add(Random(count, seed=1)), graph.add(Random(count, seed=2))
    adder, printer = graph.add(Add()), graph.add(Printer())
    graph.connect(first.out, adder.left)
    graph.connect(second.out, adder.right)
    graph.connect(adder.total, printer.inp)
    print(graph.to_mermaid())
    async with graph:  # runs until the sources finish and the printer has drained
        pass
    stats = graph.statistics()
    print(f"done: {stats.nodes['Add'].messages_out} sums, {stats.dead_letters} dead letters")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5, help="requests (default: %(default)s)")
    asyncio.run(main(parser.parse_args().count))
