"""WebSocket load generator for coserve's streaming inference, ``/v2/models/{m}/infer/ws``.

Keeps ``concurrency`` single-item requests in flight over ``ceil(concurrency / 64)``
connections (each connection's share sent at once, and a new request sent as each answer
arrives) for ``seconds`` after a warm-up; reports requests/s, p50/p99 latency (ms), errors and
the load generator's CPU time per request. Python and the ``websockets`` client are much
dearer per request than the server's side, so compare servers with this generator side by side
in one run rather than against the wrk or h2load numbers.

Run: ``python benchmarks/ws_load.py --url ws://127.0.0.1:8000/v2/models/digits/infer/ws
--body request.json --concurrency 64 --seconds 10``. From Python: :func:`measure`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PER_CONNECTION = 64


async def _connection(
    url: str, body: dict[str, Any], in_flight: int, stop_at: float, latencies: list[float]
) -> int:
    import websockets

    errors = 0
    sent: dict[str, float] = {}
    async with websockets.connect(url, max_size=None) as socket:
        counter = 0

        async def send() -> None:
            nonlocal counter
            counter += 1
            request_id = str(counter)
            sent[request_id] = time.perf_counter()
            await socket.send(json.dumps({**body, "id": request_id}))

        for _ in range(in_flight):
            await send()
        while sent:
            answer = json.loads(await socket.recv())
            started = sent.pop(answer["id"])
            if "error" in answer:
                errors += 1
            else:
                latencies.append((time.perf_counter() - started) * 1e3)
            if time.perf_counter() < stop_at:
                await send()
    return errors


async def _run(url: str, body: dict[str, Any], concurrency: int, seconds: float) -> dict[str, Any]:
    connections = math.ceil(concurrency / PER_CONNECTION)
    shares = [
        concurrency // connections + (i < concurrency % connections) for i in range(connections)
    ]
    latencies: list[float] = []
    started = time.perf_counter()
    errors = await asyncio.gather(
        *(_connection(url, body, share, started + seconds, latencies) for share in shares)
    )
    elapsed = time.perf_counter() - started
    latencies.sort()

    def percentile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0.0

    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
        "requests": len(latencies),
        "errors": sum(errors),
        "socket_errors": {},
    }


def measure(
    url: str, body: Path, *, concurrency: int, seconds: float, warmup: float
) -> dict[str, Any]:
    """One cell, in a child process; adds ``loadgen_cpu_us_per_request``."""
    command = [sys.executable, __file__, "--url", url, "--body", str(body), "--json"]
    command += ["--concurrency", str(concurrency)]
    if warmup:
        subprocess.run([*command, "--seconds", str(warmup)], check=True, capture_output=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = subprocess.run(
        [*command, "--seconds", str(seconds)], check=True, capture_output=True, text=True
    ).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result: dict[str, Any] = json.loads(output)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result["loadgen_cpu_us_per_request"] = cpu / max(result["requests"], 1) * 1e6
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", type=Path, required=True, help="one request as JSON")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--json", action="store_true", help="print the result as JSON only")
    opts = parser.parse_args()
    body = json.loads(opts.body.read_text())
    result = asyncio.run(_run(opts.url, body, opts.concurrency, opts.seconds))
    if opts.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['rps']:,.0f} rps, p50 {result['p50_ms']:.2f} ms, "
            f"p99 {result['p99_ms']:.2f} ms, {result['errors']} errors"
        )


if __name__ == "__main__":
    main()
