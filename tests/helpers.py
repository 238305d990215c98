"""Shared test helpers: letting tasks settle, and a recording batch function held at a gate."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def settle(rounds: int = 20) -> None:
    """Let every ready task run until it blocks (deterministic: no wall-clock time involved)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class RecordingModel:
    """An async batch function that records each batch (and when it started) and can be held.

    While ``hold()`` is in force, a batch waits at the gate after recording itself, so the test
    can pile up requests behind a busy execution slot and then ``release()`` it.
    """

    def __init__(self, transform: Callable[[int], object] = lambda x: x * 10) -> None:
        self.transform = transform
        self.batches: list[list[int]] = []
        self.started_at: list[float] = []
        self._gate = asyncio.Event()
        self._gate.set()

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    @property
    def seen(self) -> list[int]:
        return [item for batch in self.batches for item in batch]

    async def __call__(self, items: list[int]) -> list[object]:
        self.batches.append(list(items))
        self.started_at.append(asyncio.get_running_loop().time())
        await self._gate.wait()
        return [self.transform(item) for item in items]
