"""The batcher's own cost at two revisions, side by side: the current tree and ``--baseline``.

For changes to the batcher's hot path whose cost is smaller than ``serving.py``'s round-to-round
noise on a small machine. Each round runs, in a fresh process per revision and alternating, a
no-op async batch function (max batch 64, no linger) under 1024 concurrent submitters, and one
submitter awaiting each answer in turn; reported are the medians of ns per item. Run
``python benchmarks/batcher_revisions.py --baseline REV [--items 200000] [--repeats 7]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = r"""
import asyncio, json, sys, time
from coserve.batching import Batcher

async def noop(items):
    return items

async def main(items):
    async with Batcher(noop, max_batch_size=64, max_wait=0, max_queue_size=4096) as batcher:
        for _ in range(2):  # warm
            await asyncio.gather(*(batcher.submit_nowait(i) for i in range(1024)))
        started = time.perf_counter()
        for start in range(0, items, 1024):
            await asyncio.gather(*(batcher.submit_nowait(i) for i in range(start, start + 1024)))
        wide = (time.perf_counter() - started) / items
        calls = items // 20
        started = time.perf_counter()
        for i in range(calls):
            await batcher.submit_nowait(i)
        one = (time.perf_counter() - started) / calls
    print(json.dumps({"c1024_ns": wide * 1e9, "c1_ns": one * 1e9}))

asyncio.run(main(int(sys.argv[1])))
"""


def measure(src: Path, items: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(items)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=tempfile.gettempdir(),  # not the checkout: its src must not shadow PYTHONPATH
    )
    if done.returncode != 0:
        raise SystemExit(f"the probe failed under {src}:\n{done.stderr}")
    result: dict[str, float] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="the git revision to compare with")
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=7)
    opts = parser.parse_args()
    print(f"machine: {platform.platform()}, {platform.python_version()}, {os.cpu_count()} cores")
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as scratch:
        tree = Path(scratch) / "baseline"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), opts.baseline],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        try:
            runs: dict[str, list[dict[str, float]]] = {"current": [], opts.baseline: []}
            for round_ in range(opts.repeats):
                for name, src in (("current", ROOT / "src"), (opts.baseline, tree / "src")):
                    runs[name].append(measure(src, opts.items))
                print(
                    f"round {round_ + 1}: "
                    + ", ".join(
                        f"{name} {r[-1]['c1024_ns']:.0f}/{r[-1]['c1_ns']:.0f} ns"
                        for name, r in runs.items()
                    )
                )
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False
            )
    print("\n| revision | c=1024 ns/item | c=1 ns/item |\n|---|---:|---:|")
    medians = {}
    for name, results in runs.items():
        medians[name] = {k: statistics.median(r[k] for r in results) for k in ("c1024_ns", "c1_ns")}
        label = f"current ({head} + working tree)" if name == "current" else name
        print(f"| {label} | {medians[name]['c1024_ns']:.0f} | {medians[name]['c1_ns']:.0f} |")
    base = medians[opts.baseline]
    now = medians["current"]
    wide = now["c1024_ns"] / base["c1024_ns"]
    one = now["c1_ns"] / base["c1_ns"]
    print(f"\ncurrent/{opts.baseline} time per item: c=1024 {wide:.3f}x, c=1 {one:.3f}x")


if __name__ == "__main__":
    main()
