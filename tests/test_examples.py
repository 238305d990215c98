"""The examples run as a user would run them, and do what they say."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_producer_consumer_handles_every_job_once() -> None:
    """Three producers' fifteen jobs each reach exactly one consumer, and the program ends."""
    output = run_example("producer_consumer.py")
    jobs = re.findall(r"^  (\w+-\d+) by c[12]$", output, flags=re.MULTILINE)
    assert sorted(jobs) == sorted(f"{p}-{i}" for p in ("alpha", "beta", "gamma") for i in range(5))


def test_batching_demo_batches_concurrent_requests() -> None:
    """The demo serves the requests both ways, and the batched run forms batches of many items."""
    output = run_example("batching_demo.py", "--requests", "400", "--concurrency", "64")
    assert re.search(r"^unbatched\s+[\d,]+", output, flags=re.MULTILINE)
    mean = re.search(r"^batched\s+[\d,]+ .* mean size ([\d.]+)", output, flags=re.MULTILINE)
    assert mean is not None, output
    assert float(mean.group(1)) > 1.0


def test_random_add_printer_pairs_every_request() -> None:
    """The talk's graph prints one sum per request id, each the sum of that request's operands."""
    output = run_example("random_add_printer.py", "--count", "6")
    sums = re.findall(r"^request (\d+): ([\d.]+) \+ ([\d.]+) = ([\d.]+)$", output, re.MULTILINE)
    assert sorted(int(request) for request, *_ in sums) == list(range(6))
    assert all(abs(float(a) + float(b) - float(total)) < 0.011 for _, a, b, total in sums)
    assert "done: 6 sums, 0 dead letters" in output
