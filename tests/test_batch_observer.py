"""The batch observer: what a finished batch reports about the requests someone tagged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from coserve.batching import Batcher, CloseReason
from coserve.batching._observe import BatchRecord, request_tag, set_batch_observer


@pytest.fixture
def records() -> Iterator[list[BatchRecord]]:
    seen: list[BatchRecord] = []
    previous = set_batch_observer(seen.append)
    try:
        yield seen
    finally:
        set_batch_observer(previous)


def submit_tagged(batcher: Batcher[int, int], item: int, tag: object) -> asyncio.Future[int]:
    token = request_tag.set(tag)
    try:
        return batcher.submit_nowait(item)
    finally:
        request_tag.reset(token)


async def test_a_batch_reports_its_tagged_requests(records: list[BatchRecord]) -> None:
    async def double(items: list[int]) -> list[int | Exception]:
        return [ValueError("odd") if i == 3 else i * 2 for i in items]

    async with Batcher(double, max_batch_size=4, max_wait=60, name="double") as batcher:
        futures = [submit_tagged(batcher, 1, "a"), batcher.submit_nowait(2)]
        futures += [submit_tagged(batcher, 3, "c"), submit_tagged(batcher, 4, "d")]
        results = await asyncio.gather(*futures, return_exceptions=True)
    assert results[0] == 2
    (record,) = records
    assert record.batcher == "double"
    assert (record.rows, record.requests) == (4, 4)
    assert record.reason is CloseReason.FULL
    assert not record.failed
    assert record.failed_items == 1
    assert [tag for tag, _ in record.tags] == ["a", "c", "d"]  # the untagged one is not named
    assert all(queued <= record.started <= record.finished for _, queued in record.tags)
    assert abs(record.finished + record.wall_offset - time.time()) < 60  # the wall clock


async def test_a_raising_batch_function_is_reported_failed(records: list[BatchRecord]) -> None:
    async def broken(items: list[int]) -> list[int]:
        raise RuntimeError("no")

    async with Batcher(broken, max_batch_size=1, name="broken") as batcher:
        with pytest.raises(Exception, match="no"):
            await submit_tagged(batcher, 1, "a")
    (record,) = records
    assert record.failed
    assert record.failed_items == 1


async def test_untagged_batches_are_not_reported(records: list[BatchRecord]) -> None:
    async def same(items: list[int]) -> list[int]:
        return items

    async with Batcher(same, max_batch_size=1) as batcher:
        assert await batcher.submit_nowait(5) == 5
    assert records == []


async def test_the_first_requests_tag_does_not_follow_the_dispatcher(
    records: list[BatchRecord],
) -> None:
    """The dispatcher task starts with the first request; it must not inherit its tag."""

    async def inner_fn(items: list[int]) -> list[int]:
        return items

    inner = Batcher(inner_fn, max_batch_size=1, name="inner")

    async def outer_fn(items: list[int]) -> list[int]:
        # A batch function that calls another batcher (a model calling a model).
        return [await inner.submit(i) for i in items]

    outer = Batcher(outer_fn, max_batch_size=1, name="outer")  # started by its first request
    async with inner:
        try:
            assert await submit_tagged(outer, 1, "first") == 1
            assert await outer.submit_nowait(2) == 2
        finally:
            await outer.aclose()
    assert [(r.batcher, [tag for tag, _ in r.tags]) for r in records] == [("outer", ["first"])]
