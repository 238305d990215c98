"""Model throughput: each backend on the digits demo, and what ModelHandle costs on top.

Part 1 calls each backend's ``predict`` directly at batch sizes 1 … 256 and reports items/s and
the median call latency: TensorFlow (the bundled SavedModel), ONNX Runtime (the bundled ONNX
export) and PyTorch (the same weights ported into an equivalent module and saved with
``torch.export``; the port is checked against TensorFlow before measuring).

Part 2 drives ``ModelHandle.infer`` with single-row requests from 1 and from 256 concurrent
callers, then replays the batch sizes the batcher actually formed as direct ``predict`` calls, so
the two are compared at the same batch sizes. It reports the handle's share of direct throughput
(target >= 90%) and the latency it adds at concurrency 1 (target <= 100 µs).

Run ``python benchmarks/model_throughput.py`` (``--quick`` for a short smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from coserve.models import ModelHandle, ModelRepository, bundled_repository

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
RESULTS = Path(__file__).resolve().parent / "results" / "model_throughput.json"


def digits_images(n: int) -> np.ndarray:
    """Real inputs: scikit-learn's digits, scaled as the model was trained."""
    from sklearn.datasets import load_digits

    images = (load_digits().images / 16.0).astype(np.float32)[..., None]
    return np.resize(images, (n, 8, 8, 1))


def export_torch_port(saved_model: Path, folder: Path) -> None:
    """Port the SavedModel's weights into an equivalent torch module and torch.export it."""
    import tensorflow as tf
    import torch

    reader = tf.train.load_checkpoint(str(saved_model / "variables" / "variables"))
    layers: dict[str, dict[str, np.ndarray]] = {}
    for key in reader.get_variable_to_shape_map():
        if "/_layers/" in key:  # model/_layers/<n>/<_kernel|bias>/.ATTRIBUTES/VARIABLE_VALUE
            _, _, index, kind = key.split("/")[:4]
            layers.setdefault(index, {})[kind.strip("_")] = reader.get_tensor(key)
    by_shape = {w["kernel"].shape: (w["kernel"], w["bias"]) for w in layers.values()}

    class Digits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = torch.nn.Conv2d(1, 16, 3, padding=1)
            self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1)
            self.dense = torch.nn.Linear(512, 64)
            self.out = torch.nn.Linear(64, 10)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            x = image.permute(0, 3, 1, 2)  # NHWC (as TensorFlow) to NCHW
            x = torch.relu(self.conv1(x))
            x = torch.relu(self.conv2(x))
            x = torch.nn.functional.max_pool2d(x, 2)
            x = x.permute(0, 2, 3, 1).flatten(1)  # flatten in Keras's NHWC order
            x = torch.relu(self.dense(x))
            return torch.softmax(self.out(x), dim=1)

    net = Digits()
    with torch.no_grad():
        for layer, shape, conv in (
            (net.conv1, (3, 3, 1, 16), True),
            (net.conv2, (3, 3, 16, 32), True),
            (net.dense, (512, 64), False),
            (net.out, (64, 10), False),
        ):
            kernel, bias = by_shape[shape]
            weight = kernel.transpose(3, 2, 0, 1) if conv else kernel.T  # HWIO→OIHW, IO→OI
            layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
            layer.bias.copy_(torch.from_numpy(bias))
    net.eval()
    example = torch.from_numpy(digits_images(4))
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(net, (example,), dynamic_shapes=({0: batch},))
    version = folder / "digits_torch" / "1"
    version.mkdir(parents=True)
    torch.export.save(program, str(version / "model.pt2"))
    (folder / "digits_torch" / "config.toml").write_text(
        'platform = "pytorch_export"\n[batching]\nmax_batch_size = 64\n'
        "[threads]\nintra_op = 2\n"
        '[[inputs]]\nname = "image"\ndatatype = "FP32"\nshape = [-1, 8, 8, 1]\n'
        '[[outputs]]\nname = "probabilities"\ndatatype = "FP32"\nshape = [-1, 10]\n'
    )


def time_predict(
    predict: Callable[[dict[str, np.ndarray]], Any], batch: np.ndarray, seconds: float
) -> float:
    """Median seconds of one predict call on ``batch``, over ``seconds`` of repeated calls."""
    inputs = {"image": batch}
    predict(inputs)
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(samples) < 5:
        start = time.perf_counter()
        predict(inputs)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


async def predict_in_thread_us(
    predict: Callable[[dict[str, np.ndarray]], Any], batch: np.ndarray, seconds: float
) -> float:
    """Reference: median µs of ``await run_in_executor(predict)``: any off-loop call's floor."""
    loop = asyncio.get_running_loop()
    inputs = {"image": batch}
    samples: list[float] = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(samples) < 5:
            start = time.perf_counter()
            await loop.run_in_executor(pool, predict, inputs)
            samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


async def handle_throughput(
    handle: ModelHandle, images: np.ndarray, concurrency: int, seconds: float
) -> tuple[float, dict[int, int], list[float]]:
    """Single-row infer() from ``concurrency`` callers for ``seconds``: rate, sizes, latencies."""
    before = dict(handle.statistics().batch_sizes)
    latencies: list[float] = []
    clock = time.perf_counter
    deadline = clock() + seconds

    async def caller(offset: int) -> None:
        i = offset
        while clock() < deadline:
            start = clock()
            await handle.infer({"image": images[i % len(images) : i % len(images) + 1]})
            latencies.append(clock() - start)
            i += concurrency

    start = clock()
    await asyncio.gather(*(caller(k) for k in range(concurrency)))
    elapsed = clock() - start
    after = handle.statistics().batch_sizes
    formed = {
        size: after[size] - before.get(size, 0)
        for size in after
        if after[size] - before.get(size, 0)
    }
    return len(latencies) / elapsed, formed, latencies


def replay_direct(
    predict: Callable[[dict[str, np.ndarray]], Any], images: np.ndarray, formed: dict[int, int]
) -> float:
    """Items/s of calling predict directly with exactly the batch sizes the batcher formed."""
    batches = [size for size, n in formed.items() for _ in range(n)]
    items = sum(batches)
    start = time.perf_counter()
    for size in batches:
        predict({"image": images[:size]})
    return items / (time.perf_counter() - start)


async def measure(opts: argparse.Namespace) -> dict[str, Any]:
    images = digits_images(4096)
    results: dict[str, Any] = {"direct": {}, "handle": {}}
    with tempfile.TemporaryDirectory() as scratch:
        repo = Path(scratch)
        for name in ("digits", "digits_onnx"):
            os.symlink(bundled_repository() / name, repo / name)
        export_torch_port(bundled_repository() / "digits" / "1" / "model.savedmodel", repo)
        async with ModelRepository(repo) as repository:
            gc.collect()
            gc.freeze()  # DESIGN.md §7: TF's objects make full collections cost 100+ ms
            reference = repository.get("digits").backend.predict({"image": images[:256]})
            ported = repository.get("digits_torch").backend.predict({"image": images[:256]})
            gap = float(np.abs(reference["probabilities"] - ported["probabilities"]).max())
            if gap > 1e-4:
                sys.exit(f"the torch port disagrees with TensorFlow by {gap}")
            results["torch_port_max_difference"] = gap
            for name in ("digits", "digits_onnx", "digits_torch"):
                backend = repository.get(name).backend
                row = {}
                for size in BATCH_SIZES:
                    seconds = time_predict(backend.predict, images[:size], opts.seconds)
                    row[size] = {"items_per_s": size / seconds, "latency_ms": seconds * 1e3}
                results["direct"][name] = row
                print(f"direct {name}: done", file=sys.stderr, flush=True)
            for name in ("digits", "digits_onnx"):
                handle = repository.get(name)
                backend = handle.backend
                for concurrency in (1, 256):
                    rounds = []
                    for _ in range(opts.repeats):  # alternate handle and direct, take medians
                        rate, formed, latencies = await handle_throughput(
                            handle, images, concurrency, opts.seconds
                        )
                        direct = replay_direct(backend.predict, images, formed)
                        rounds.append((rate, direct, formed, latencies))
                    rate = statistics.median(r[0] for r in rounds)
                    direct = statistics.median(r[1] for r in rounds)
                    formed = rounds[-1][2]
                    entry: dict[str, Any] = {
                        "items_per_s": rate,
                        "direct_items_per_s_same_batches": direct,
                        "share_of_direct": rate / direct,
                        "mean_batch_size": sum(s * n for s, n in formed.items())
                        / sum(formed.values()),
                    }
                    if concurrency == 1:
                        infer_us = statistics.median(statistics.median(r[3]) for r in rounds) * 1e6
                        predict_us = time_predict(backend.predict, images[:1], opts.seconds) * 1e6
                        entry["predict_in_worker_thread_us"] = await predict_in_thread_us(
                            backend.predict, images[:1], opts.seconds
                        )
                        entry |= {
                            "infer_latency_us": infer_us,
                            "predict_latency_us": predict_us,
                            "added_us": infer_us - predict_us,
                        }
                    results["handle"][f"{name}|{concurrency}"] = entry
                print(f"handle {name}: done", file=sys.stderr, flush=True)
    return results


def report(results: dict[str, Any]) -> None:
    names = {
        "digits": "TensorFlow",
        "digits_onnx": "ONNX Runtime",
        "digits_torch": "PyTorch (export)",
    }
    print("\n### Direct predict, items/s (median call latency, ms)\n")
    print("| backend | " + " | ".join(f"B={b}" for b in BATCH_SIZES) + " |")
    print("|---|" + "---:|" * len(BATCH_SIZES))
    for name, row in results["direct"].items():
        cells = " | ".join(
            f"{row[b]['items_per_s']:,.0f} ({row[b]['latency_ms']:.2f})" for b in BATCH_SIZES
        )
        print(f"| {names[name]} | {cells} |")
    print("\n### ModelHandle.infer, single-row requests\n")
    print(
        "| backend | callers | items/s | direct at same batch sizes | share | mean batch "
        "| added latency c=1 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for key, entry in results["handle"].items():
        name, concurrency = key.split("|")
        added = f"{entry['added_us']:.0f} µs" if "added_us" in entry else ""
        print(
            f"| {names[name]} | {concurrency} | {entry['items_per_s']:,.0f} | "
            f"{entry['direct_items_per_s_same_batches']:,.0f} | {entry['share_of_direct']:.0%} | "
            f"{entry['mean_batch_size']:.1f} | {added} |"
        )
    for key, entry in results["handle"].items():
        if "predict_in_worker_thread_us" in entry:
            name = names[key.split("|")[0]]
            print(
                f"\n{name} at c=1: predict on the caller's thread "
                f"{entry['predict_latency_us']:.0f} µs; the same call through run_in_executor "
                f"{entry['predict_in_worker_thread_us']:.0f} µs;"
                f" infer() {entry['infer_latency_us']:.0f} µs"
            )
    print(f"\ntorch port vs TensorFlow, max difference: {results['torch_port_max_difference']:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of handle vs direct")
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--output", type=Path, default=RESULTS)
    opts = parser.parse_args()
    if opts.quick:
        opts.seconds, opts.repeats = 0.2, 1
    print(
        f"machine: {platform.platform()}, {platform.python_implementation()} "
        f"{platform.python_version()}, {os.cpu_count()} cores"
    )
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    started = time.perf_counter()
    results = asyncio.run(measure(opts))
    results["runtime_s"] = round(time.perf_counter() - started, 1)
    results["command"] = shlex.join([sys.executable, *sys.argv])
    report(results)
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    opts.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"runtime: {results['runtime_s']} s; wrote {opts.output}")


if __name__ == "__main__":
    main()
