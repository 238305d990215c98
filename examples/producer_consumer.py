"""The talk's CSP producer/consumer, rewritten on coserve channels.

The talk used an ``asyncio.Queue`` with ``task_done``/``join`` and cancelled the consumer at the
end. With channels none of that is needed: each producer closes its send handle when it is done,
and the consumers' ``async for`` ends by itself once every producer has closed. The channel is
bounded, so fast producers wait for slow consumers (backpressure) instead of filling memory.

Run it with ``python examples/producer_consumer.py``.
"""

from __future__ import annotations

import asyncio
import random

from coserve import ReceiveChannel, SendChannel, open_channel


async def producer(name: str, jobs: SendChannel[str], count: int) -> None:
    """Make ``count`` jobs, then close this producer's handle."""
    async with jobs:  # closing our clone is how the consumers learn we are done
        for i in range(count):
            await asyncio.sleep(random.uniform(0, 0.002))
            await jobs.send(f"{name}-{i}")  # waits while the channel is full


async def consumer(name: str, jobs: ReceiveChannel[str], done: list[str]) -> None:
    """Handle jobs until every producer has closed."""
    async with jobs:
        async for job in jobs:  # ends when the last producer closes: no sentinel needed
            await asyncio.sleep(random.uniform(0, 0.004))
            done.append(f"{job} by {name}")


async def main() -> None:
    """Three producers and two consumers over one bounded channel."""
    send, receive = open_channel[str](capacity=4)
    done: list[str] = []
    async with asyncio.TaskGroup() as tasks:
        # Every worker gets its own clone; our originals close as this block ends, *before* the
        # task group waits, so only the workers' clones keep the channel open.
        with send, receive:
            for p in ("alpha", "beta", "gamma"):
                tasks.create_task(producer(p, send.clone(), count=5))
            for c in ("c1", "c2"):
                tasks.create_task(consumer(c, receive.clone(), done))
    print(f"{len(done)} jobs handled, none lost:")
    for line in sorted(done):
        print(" ", line)


if __name__ == "__main__":
    asyncio.run(main())
