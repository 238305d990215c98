"""``coserve bench`` beside ``wrk`` on the same server: does the Python load generator keep up?

Serves the digits demo model with ``coserve serve --workers 2`` and, in alternation, loads it
at the same concurrency with wrk (C, closed loop, one thread) and with
``coserve bench -c N`` (closed loop, ``--procs``), the same JSON request each time. Reports
each tool's requests/s, p50 and p99, and its own CPU per request; medians of ``--repeats``
alternating rounds. If coserve bench reaches wrk's throughput, it is not the limit.

Needs: ``apt-get install wrk``. Run: ``python benchmarks/bench_vs_wrk.py [--concurrency 256]
[--seconds 8] [--repeats 3] [--procs 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from serving import WRK_SCRIPT, Served, bodies, coserve_command, free_port, run_wrk


def run_bench(url: str, concurrency: int, seconds: int, procs: int, out: Path) -> dict[str, Any]:
    """One ``coserve bench`` cell: a closed loop, three windows covering ``seconds``."""
    window = max(1.0, seconds / 3)
    command = [
        sys.executable, "-m", "coserve.cli", "bench", "digits", "--url", url,
        "-c", str(concurrency), "--procs", str(procs), "--window", f"{window}s",
        "--warmup", "2s", "--max-windows", "3", "--stability", "100%", "--quiet",
        "--json", str(out),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    (step,) = json.loads(out.read_text())["steps"]
    return {
        "rps": step["throughput_per_s"],
        "p50_ms": step["latency_ms"]["p50"],
        "p99_ms": step["latency_ms"]["p99"],
        "loadgen_cpu_us_per_request": step["client"]["cpu_us_per_request"],
        "errors": sum(step["errors"].values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--procs", type=int, default=2)
    opts = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = Served(
        "coserve --workers 2",
        coserve_command(port, "--workers", "2", "--no-grpc"),
        f"{url}/v2/models/digits/infer",
        f"{url}/v2/health/ready",
        workers=2,
    )
    results: dict[str, list[dict[str, Any]]] = {"wrk": [], "coserve bench": []}
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        body, _ = bodies(scratch)["json"]
        script = scratch / "post.lua"
        script.write_text(WRK_SCRIPT)
        try:
            server.wait_ready()
            for round_number in range(opts.repeats):
                run_wrk(server.url, opts.concurrency, 2, body, None, script)  # warm-up
                wrk, cpu = run_wrk(server.url, opts.concurrency, opts.seconds, body, None, script)
                wrk["loadgen_cpu_us_per_request"] = cpu / max(wrk["requests"], 1) * 1e6
                results["wrk"].append(wrk)
                out = scratch / f"bench-{round_number}.json"
                results["coserve bench"].append(
                    run_bench(url, opts.concurrency, opts.seconds, opts.procs, out)
                )
                print(f"round {round_number + 1}: wrk {wrk['rps']:.0f}/s, coserve bench "
                      f"{results['coserve bench'][-1]['rps']:.0f}/s", file=sys.stderr)  # fmt: skip
        finally:
            server.stop()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    print(f"\nmachine: {platform.platform()}, {os.cpu_count()} CPUs; commit {commit}")
    print(f"target: coserve serve --workers 2, digits, JSON, c={opts.concurrency}; "
          f"medians of {opts.repeats} alternating rounds of {opts.seconds} s\n")  # fmt: skip
    print("| load generator | requests/s | p50 ms | p99 ms | its CPU µs/request |")
    print("|---|---:|---:|---:|---:|")
    for name, runs in results.items():

        def median(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return statistics.median(run[key] for run in runs)

        label = "wrk -t1" if name == "wrk" else f"coserve bench --procs {opts.procs}"
        print(f"| {label} | {median('rps'):.0f} | {median('p50_ms'):.2f} | "
              f"{median('p99_ms'):.2f} | {median('loadgen_cpu_us_per_request'):.1f} |")  # fmt: skip
    ratio = statistics.median(r["rps"] for r in results["coserve bench"]) / statistics.median(
        r["rps"] for r in results["wrk"]
    )
    print(f"\ncoserve bench / wrk throughput: {ratio:.2f}")


if __name__ == "__main__":
    main()
