"""The talk's scenario: many concurrent requests, each a child coroutine awaiting the batcher.

The "model" is a small numpy MLP (784 → 128 → 10) plus a fixed cost per call, the way a
TensorFlow SavedModel call costs ~0.7 ms however small the batch (DESIGN.md §7). So a model is
much faster per item on batches, and production traffic arrives one request at a time.

Each request is a cheap child coroutine that awaits ``Batcher.submit`` for its own row. The demo
serves the same requests twice, once calling the model per request and once through the batcher,
and prints throughput, latency and batch sizes for both.

Run it with ``make serve`` (until the inference server exists), or
``python examples/batching_demo.py --help`` for its options.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from coserve import Batcher

PER_CALL_OVERHEAD_S = 0.0007  # what one TF SavedModel call costs at batch 1 on this machine


class TinyMLP:
    """A numpy MLP with a fixed per-call cost, standing in for a TensorFlow model."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.w1 = rng.standard_normal((784, 128), dtype=np.float32) * 0.05
        self.w2 = rng.standard_normal((128, 10), dtype=np.float32) * 0.05

    def predict(self, batch: list[np.ndarray]) -> list[int]:
        """Classify a batch of flattened 28x28 images; one call, whatever the batch size."""
        time.sleep(PER_CALL_OVERHEAD_S)  # the framework's fixed cost per call
        x = np.stack(batch)
        hidden = np.maximum(x @ self.w1, 0.0)
        return [int(c) for c in np.argmax(hidden @ self.w2, axis=1)]


async def run_clients(
    infer: Callable[[np.ndarray], Awaitable[int]], images: list[np.ndarray], concurrency: int
) -> list[float]:
    """Send every image through ``infer`` from ``concurrency`` clients; return latencies."""
    latencies: list[float] = []
    todo = iter(images)

    async def client() -> None:
        # The actor pattern: each request is a child coroutine awaiting its own answer.
        for image in todo:
            start = time.perf_counter()
            await infer(image)
            latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies


def report(name: str, latencies: list[float], elapsed: float, batches: str) -> None:
    """Print one row of the results table."""
    quantiles = statistics.quantiles(latencies, n=100)
    print(
        f"{name:<12} {len(latencies) / elapsed:>9,.0f} {quantiles[49] * 1e3:>9.2f}"
        f" {quantiles[98] * 1e3:>9.2f}   {batches}"
    )


async def main(requests: int, concurrency: int, max_batch_size: int) -> None:
    """Serve the same requests without and with batching, and compare."""
    model = TinyMLP()
    rng = np.random.default_rng(1)
    images = list(rng.random((requests, 784), dtype=np.float32))
    loop = asyncio.get_running_loop()
    print(f"{requests} requests from {concurrency} concurrent clients, model cost ≈ 0.7 ms/call\n")
    print(f"{'mode':<12} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9}   batches")

    with ThreadPoolExecutor(max_workers=1) as pool:

        async def one_by_one(image: np.ndarray) -> int:
            (label,) = await loop.run_in_executor(pool, model.predict, [image])
            return label

        start = time.perf_counter()
        latencies = await run_clients(one_by_one, images, concurrency)
        report("unbatched", latencies, time.perf_counter() - start, "every call has 1 item")

    async with Batcher(model.predict, max_batch_size=max_batch_size) as batcher:
        start = time.perf_counter()
        latencies = await run_clients(batcher.submit, images, concurrency)
        elapsed = time.perf_counter() - start
        stats = batcher.statistics()
    sizes = ", ".join(f"{n} of {size}" for size, n in sorted(stats.batch_sizes.items())[-4:])
    report(
        "batched",
        latencies,
        elapsed,
        f"{stats.batches} calls, mean size {stats.mean_batch_size:.1f} (largest: {sizes})",
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--max-batch-size", type=int, default=64)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.concurrency, args.max_batch_size))
