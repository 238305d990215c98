"""Batcher overhead: coserve vs async-batcher 0.2.2 vs batched 0.1.5, side by side in one run.

With a no-op batch function (returns its list unchanged), in both an async and a sync form, it
measures items/s at 1, 64 and 1024 concurrent submitters, and the latency a batcher adds at
concurrency 1 over calling the function directly. Every library gets max batch 64, no linger,
one batch at a time. Cells run round-robin across libraries, ``--repeats`` times; medians are
reported. Run ``python benchmarks/batcher_overhead.py`` (``--quick`` for a short smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from async_batcher.batcher import AsyncBatcher
from batched.aio import AsyncBatchProcessor

from coserve import Batcher

Submit = Callable[[int], Awaitable[int]]
LIBRARIES = ("coserve", "async-batcher", "batched")
FNS = ("async", "sync")
CONCURRENCY = (1, 64, 1024)
BATCH, QUEUE = 64, 100_000
TARGET_US = 50.0
RESULTS = Path(__file__).resolve().parent / "results" / "batcher_overhead.json"


async def noop_async(items: list[int]) -> list[int]:
    return items


def noop_sync(items: list[int]) -> list[int]:
    return items


class _AsyncNoopBatcher(AsyncBatcher[int, int]):
    async def process_batch(self, batch: list[int]) -> list[int]:
        return batch


class _SyncNoopBatcher(AsyncBatcher[int, int]):
    def process_batch(self, batch: list[int]) -> list[int]:  # type: ignore[override]
        return batch  # a sync process_batch runs in the executor


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` until it ends (3.11's ``wait_for`` can swallow a cancel), then reap it."""
    while task is not None and not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.01)
    if task is not None and not task.cancelled() and task.exception() is not None:
        raise RuntimeError("the batcher's task failed") from task.exception()


@contextlib.asynccontextmanager
async def open_coserve(fn: str, _opts: argparse.Namespace) -> AsyncIterator[Submit]:
    func = noop_async if fn == "async" else noop_sync  # sync: the batcher's own 1-thread pool
    kw = {"max_batch_size": BATCH, "max_wait": 0.0, "max_concurrent_batches": 1}
    async with Batcher(func, max_queue_size=QUEUE, **kw) as batcher:
        yield batcher.submit


@contextlib.asynccontextmanager
async def open_async_batcher(fn: str, _opts: argparse.Namespace) -> AsyncIterator[Submit]:
    cls = _AsyncNoopBatcher if fn == "async" else _SyncNoopBatcher
    pool = ThreadPoolExecutor(max_workers=1) if fn == "sync" else None
    batcher = cls(
        max_batch_size=BATCH, max_queue_time=0.0, concurrency=1, max_queue_size=QUEUE, executor=pool
    )
    try:
        yield batcher.process  # its run() task starts lazily on the first process()
    finally:
        # A graceful stop() waits for run(), which polls its queue with a 1 s timeout; every
        # submitter has its answer by now, so stop(force=True): it cancels run() once, but
        # run() can swallow that cancel (it sits in wait_for), so keep cancelling until it ends.
        task = batcher._current_task
        await batcher.stop(force=True)
        await cancel_and_wait(task)
        if pool is not None:
            pool.shutdown(wait=True)


@contextlib.asynccontextmanager
async def open_batched(fn: str, opts: argparse.Namespace) -> AsyncIterator[Submit]:
    func = noop_async if fn == "async" else noop_sync  # sync: asyncio.to_thread
    proc = AsyncBatchProcessor(func, batch_size=BATCH, timeout_ms=opts.batched_timeout_ms)
    try:
        yield proc  # its loop task starts lazily on the first call
    finally:
        await cancel_and_wait(proc._task)  # it has no public stop: cancel its loop task
        proc._loop = None  # so its __del__ does nothing


OPENERS = {"coserve": open_coserve, "async-batcher": open_async_batcher, "batched": open_batched}


@contextlib.asynccontextmanager
async def open_bare_futures(fn: str, _opts: argparse.Namespace) -> AsyncIterator[Submit]:
    """Reference, not a batcher: a future per item, resolved 64 at a time, no bookkeeping at all.

    The event loop's own ceiling for "await a future that a batch resolves"; no batcher that
    keeps deadlines, cancellation, priorities or statistics can go faster on the same loop.
    """
    loop = asyncio.get_running_loop()
    queue: list[tuple[int, asyncio.Future[int]]] = []
    wake: list[asyncio.Future[None]] = []

    def submit(x: int) -> asyncio.Future[int]:
        future: asyncio.Future[int] = loop.create_future()
        queue.append((x, future))
        if wake and not wake[0].done():
            wake[0].set_result(None)
        return future

    async def dispatch() -> None:
        while True:
            if not queue:
                wake[:] = [loop.create_future()]
                await wake[0]
            batch = queue[:BATCH]
            del queue[:BATCH]
            for (_, future), result in zip(
                batch, await noop_async([x for x, _ in batch]), strict=False
            ):
                future.set_result(result)

    dispatcher = asyncio.create_task(dispatch())
    try:
        yield submit
    finally:
        await cancel_and_wait(dispatcher)


async def executor_round_trip_us(n: int) -> float:
    """Reference: median µs of one ``run_in_executor`` hop to a 1-thread pool and back."""
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=1) as pool:
        await time_calls(
            lambda x: loop.run_in_executor(pool, noop_sync, [x]), n // 10, awaited=True
        )
        return await time_calls(
            lambda x: loop.run_in_executor(pool, noop_sync, [x]), n, awaited=True
        )


async def run_submitters(submit: Submit, concurrency: int, duration: float) -> tuple[int, float]:
    """Each submitter loops ``await submit(x)`` until the deadline; returns (items, seconds)."""
    clock = time.perf_counter
    deadline = clock() + duration

    async def submitter(first: int) -> int:
        n = 0
        while clock() < deadline:
            x = first + n
            if await submit(x) != x:
                raise RuntimeError(f"result for {x} is not {x}: the no-op batcher is broken")
            n += 1
        return n

    start = clock()
    counts = await asyncio.gather(*(submitter(i << 32) for i in range(concurrency)))
    return sum(counts), clock() - start


async def time_calls(call: Callable[[int], Any], n: int, *, awaited: bool) -> float:
    """Median latency of ``n`` sequential calls in microseconds; checks the no-op results."""
    clock, samples = time.perf_counter_ns, [0] * n
    for i in range(n):
        if awaited:
            t0 = clock()
            r = await call(i)
            samples[i] = clock() - t0
        else:
            t0 = clock()
            r = call(i)
            samples[i] = clock() - t0
        if r != i and r != [i]:
            raise RuntimeError(f"result for {i} is {r!r}: the no-op call is broken")
    return statistics.median(samples) / 1000


def check_no_leftover_tasks(where: str) -> None:
    left = asyncio.all_tasks() - {asyncio.current_task()}
    if left:
        raise RuntimeError(f"{where}: tasks left running after shutdown: {left}")


async def throughput_cell(lib: str, fn: str, c: int, opts: argparse.Namespace) -> float:
    gc.collect()
    opener = open_bare_futures if lib == "bare futures" else OPENERS[lib]
    async with opener(fn, opts) as submit:
        await run_submitters(submit, c, opts.warmup)
        items, seconds = await run_submitters(submit, c, opts.duration)
    check_no_leftover_tasks(f"{lib}/{fn}/c={c}")
    return items / seconds


async def latency_cell(lib: str, fn: str, opts: argparse.Namespace) -> float:
    gc.collect()
    async with OPENERS[lib](fn, opts) as submit:
        await time_calls(submit, opts.latency_calls // 10, awaited=True)  # warm-up
        us = await time_calls(submit, opts.latency_calls, awaited=True)
    check_no_leftover_tasks(f"{lib}/{fn}/latency")
    return us


async def direct_latency(fn: str, n: int) -> float:
    if fn == "async":
        return await time_calls(lambda x: noop_async([x]), n, awaited=True)
    return await time_calls(lambda x: noop_sync([x]), n, awaited=False)


async def measure(opts: argparse.Namespace) -> dict[str, Any]:
    tput: dict[str, list[float]] = {}
    lat: dict[str, list[float]] = {}
    for r in range(opts.repeats):
        order = LIBRARIES[r % 3 :] + LIBRARIES[: r % 3]  # rotate who goes first each round
        for fn in FNS:
            for c in CONCURRENCY:
                for lib in order:
                    tput.setdefault(f"{lib}|{fn}|{c}", []).append(
                        await throughput_cell(lib, fn, c, opts)
                    )
            lat.setdefault(f"direct|{fn}", []).append(await direct_latency(fn, opts.latency_calls))
            for lib in order:
                lat.setdefault(f"{lib}|{fn}", []).append(await latency_cell(lib, fn, opts))
        tput.setdefault("bare futures", []).append(
            await throughput_cell("bare futures", "async", 1024, opts)
        )
        lat.setdefault("executor hop", []).append(await executor_round_trip_us(opts.latency_calls))
        print(f"round {r + 1}/{opts.repeats} done", file=sys.stderr, flush=True)
    rows = []
    for lib in LIBRARIES:
        for fn in FNS:
            row: dict[str, Any] = {"library": lib, "fn": fn}
            for c in CONCURRENCY:
                row[f"items_per_s_c{c}"] = statistics.median(tput[f"{lib}|{fn}|{c}"])
                row[f"items_per_s_c{c}_samples"] = tput[f"{lib}|{fn}|{c}"]
            row["latency_us_median"] = statistics.median(lat[f"{lib}|{fn}"])
            row["direct_latency_us_median"] = statistics.median(lat[f"direct|{fn}"])
            row["added_latency_us"] = row["latency_us_median"] - row["direct_latency_us_median"]
            row["latency_us_samples"] = lat[f"{lib}|{fn}"]
            rows.append(row)
    references = {
        "bare_futures_items_per_s_c1024": statistics.median(tput["bare futures"]),
        "executor_round_trip_us": statistics.median(lat["executor hop"]),
    }
    return {"rows": rows, "references": references}


def run(coro: Awaitable[dict[str, Any]], loop: str) -> dict[str, Any]:
    """Run the measurement on the chosen event loop (uvloop is what the server uses)."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    return asyncio.run(coro)  # type: ignore[arg-type]


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=1.5, help="seconds per throughput cell")
    p.add_argument("--warmup", type=float, default=0.2, help="warm-up seconds per cell")
    p.add_argument("--repeats", type=int, default=5, help="rounds; the median is reported")
    p.add_argument("--latency-calls", type=int, default=20_000, help="calls per latency cell")
    p.add_argument("--batched-timeout-ms", type=float, default=0.0, help="batched's loop tick")
    p.add_argument("--quick", action="store_true", help="short smoke run (overrides the above)")
    p.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="event loop")
    opts = p.parse_args()
    if opts.quick:
        opts.duration, opts.warmup, opts.repeats, opts.latency_calls = 0.2, 0.05, 1, 2000
    info = {"machine": machine(), "command": shlex.join([sys.executable, *sys.argv])}
    info["config"] = {
        "loop": opts.loop,
        "duration_s": opts.duration,
        "warmup_s": opts.warmup,
        "repeats": opts.repeats,
        "latency_calls": opts.latency_calls,
        "coserve": f"max_batch_size={BATCH}, max_wait=0.0, max_concurrent_batches=1, "
        f"max_queue_size={QUEUE}; sync fn in the batcher's own 1-thread pool",
        "async-batcher": f"max_batch_size={BATCH}, max_queue_time=0.0 (accepted), concurrency=1, "
        f"max_queue_size={QUEUE}; sync process_batch in a 1-thread ThreadPoolExecutor",
        "batched": f"AsyncBatchProcessor(batch_size={BATCH}, timeout_ms={opts.batched_timeout_ms})"
        "; it validates no timeout_ms, and its loop sleeps timeout_ms whenever fewer than "
        "batch_size items wait (0: it polls with asyncio.sleep(0)); no queue bound; "
        "sync fn via asyncio.to_thread",
    }
    for key, value in info["machine"].items():
        print(f"{key}: {value}")
    print(f"command: {info['command']}")
    for key, value in info["config"].items():
        print(f"config {key}: {value}")
    started = time.perf_counter()
    results = {**info, **run(measure(opts), opts.loop)}
    results["runtime_s"] = round(time.perf_counter() - started, 1)

    print()
    print("| library | fn | items/s c=1 | items/s c=64 | items/s c=1024 "
          "| added latency c=1 (µs, median) |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|")
    for row in results["rows"]:
        rates = " | ".join(f"{row[f'items_per_s_c{c}']:,.0f}" for c in CONCURRENCY)
        print(f"| {row['library']} | {row['fn']} | {rates} | {row['added_latency_us']:.1f} |")
    direct = {row["fn"]: row["direct_latency_us_median"] for row in results["rows"]}
    print(f"\ndirect call, median µs (subtracted above): async `await fn([x])` "
          f"{direct['async']:.2f}, sync `fn([x])` {direct['sync']:.2f}; sync rows include the "
          "hop to a worker thread and back\n")  # fmt: skip
    by = {(row["library"], row["fn"]): row for row in results["rows"]}
    ratios: dict[str, Any] = {}
    for fn in FNS:
        mine = by["coserve", fn]
        peer = max((by[lib, fn] for lib in LIBRARIES[1:]), key=lambda r: r["items_per_s_c1024"])
        ratio = mine["items_per_s_c1024"] / peer["items_per_s_c1024"]
        added = mine["added_latency_us"]
        verdict = "meets" if added <= TARGET_US else "misses"
        ratios[fn] = {"c1024_vs_best_peer": ratio, "best_peer": peer["library"]}
        ratios[fn] |= {"added_latency_us": added, "meets_50us_target": added <= TARGET_US}
        print(f"{fn} fn: coserve items/s at c=1024 / best peer ({peer['library']}) = {ratio:.2f}x")
        print(f"{fn} fn: coserve added latency {added:.1f} µs {verdict} the {TARGET_US:g} µs goal")
    results["ratios"] = ratios
    refs = results["references"]
    print(
        f"reference: bare futures (loop ceiling, no bookkeeping) at c=1024: "
        f"{refs['bare_futures_items_per_s_c1024']:,.0f} items/s; coserve reaches "
        f"{by['coserve', 'async']['items_per_s_c1024'] / refs['bare_futures_items_per_s_c1024']:.0%}"  # noqa: E501
    )
    print(f"reference: one run_in_executor round trip (floor of any sync path): "
          f"{refs['executor_round_trip_us']:.1f} µs")  # fmt: skip
    print(f"runtime: {results['runtime_s']} s")
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    opts.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {opts.output}")


if __name__ == "__main__":
    main()
