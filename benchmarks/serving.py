"""Serving benchmark: coserve vs an unbatched uvicorn endpoint vs mosec, on the demo model.

All the servers run at once, each serving the bundled digits SavedModel; ``wrk`` (Debian's
package; a load generator in C, much cheaper per request than the servers) sends single-image
inference requests at concurrency 1, 64 and 256 for ``--seconds`` after a warm-up, the cells
interleaved server by server in every round. coserve is driven with the Open Inference
Protocol's JSON body and with its binary tensor extension, and once more as ``coserve-2w``
(``--workers 2``) with the JSON body; the peers take the same JSON body. mosec runs as in the peer
study (one Python worker process) and once more as ``mosec-2w`` (two).

Reported per cell: requests/s, p50 and p99 latency, the mean batch size the server formed, errors,
and the CPU time per request of the load generator and of the server's process tree.

Needs: ``apt-get install wrk``. The script creates ``benchmarks/.venv-mosec`` (mosec 0.9.8 and
TensorFlow) on first use. Run: ``python benchmarks/serving.py [--seconds 10] [--repeats 1]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MOSEC_VENV = HERE / ".venv-mosec"
RESULTS = HERE / "results" / "serving.json"
CONCURRENCY = (1, 64, 256)
TICKS = os.sysconf("SC_CLK_TCK")

WRK_SCRIPT = """
local f = io.open(os.getenv("BODY_FILE"), "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
local header = os.getenv("HEADER_LENGTH")
if header and header ~= "" then
  wrk.headers["Inference-Header-Content-Length"] = header
end
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ensure_mosec_venv() -> Path:
    python = MOSEC_VENV / "bin" / "python"
    if not python.exists():
        print("creating benchmarks/.venv-mosec (mosec, tensorflow-cpu)...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(MOSEC_VENV)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "mosec==0.9.8",
                "tensorflow-cpu==2.21.0",
                "numpy",
            ],
            check=True,
        )
    return python


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / TICKS
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += times.get(current, 0.0)
        todo.extend(children.get(current, []))
    return total


class Served:
    """One server under test: how to start it, where to send, how to read its batch sizes."""

    def __init__(
        self,
        name: str,
        command: list[str],
        url: str,
        ready: str,
        env: dict[str, str] | None = None,
        *,
        workers: int = 1,
    ) -> None:
        self.name, self.url, self.ready, self.workers = name, url, ready, workers
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT
        )

    def wait_ready(self) -> None:
        """Poll the readiness URL until the server has loaded the model."""
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"{self.name} exited:\n{self.log.read().decode()[-3000:]}")
            try:
                # With several workers, wait until every one reports (any may answer /ready).
                if httpx.get(self.ready, timeout=1).status_code == 200 and (
                    self.workers == 1 or len(self._batch_samples("count")) == self.workers
                ):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} did not become ready")

    def batches(self) -> tuple[float, float]:
        """(rows, batches) so far, for the mean batch size over a cell; (0, 0) if unknown."""
        if not self.name.startswith("coserve"):
            return 0.0, 0.0
        return sum(self._batch_samples("sum")), sum(self._batch_samples("count"))

    def _batch_samples(self, key: str) -> list[float]:
        """The digits model's batch-size ``sum`` or ``count``, one value per worker."""
        text = httpx.get(self.url.split("/v2/")[0] + "/metrics", timeout=10).text
        labels = r'model="digits",version="1"(?:,worker="\d+")?'
        pattern = rf"^coserve_batch_size_{key}{{{labels}}} (\S+)$"
        return [float(value) for value in re.findall(pattern, text, re.M)]

    def stop(self) -> None:
        """SIGTERM, and SIGKILL if it does not go within 30 s."""
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def parse_wrk(output: str) -> dict[str, float]:
    def duration(text: str) -> float:
        value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = duration(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    p99 = duration(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: (.*)", output)
    return {
        "rps": rps,
        "p50_ms": p50,
        "p99_ms": p99,
        "requests": total,
        "errors": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
    }


def run_wrk(
    url: str, concurrency: int, seconds: float, body: Path, header: int | None, script: Path
) -> tuple[dict[str, Any], float]:
    env = {**os.environ, "BODY_FILE": str(body), "HEADER_LENGTH": str(header or "")}
    command = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{int(seconds)}s",
        "--latency",
        "--timeout",
        "30s",
        "-s",
        str(script),
        url,
    ]
    before = os.times()
    output = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
    after = os.times()
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return parse_wrk(output), cpu


def bodies(folder: Path) -> dict[str, tuple[Path, int | None]]:
    from sklearn.datasets import load_digits

    image = (load_digits().images[:1] / 16.0).astype(np.float32)[..., None]
    tensor = {"name": "image", "shape": [1, 8, 8, 1], "datatype": "FP32"}
    json_body = folder / "request.json"
    json_body.write_text(json.dumps({"inputs": [{**tensor, "data": image.ravel().tolist()}]}))
    header = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": image.nbytes}}],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    binary_body = folder / "request.bin"
    binary_body.write_bytes(header + image.astype("<f4").tobytes())
    return {"json": (json_body, None), "binary": (binary_body, len(header))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS)
    opts = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    mosec_python = ensure_mosec_venv()
    print(f"machine: {platform.platform()}, {platform.python_version()}, {os.cpu_count()} cores")
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")

    scratch = Path(tempfile.mkdtemp())
    script = scratch / "post.lua"
    script.write_text(WRK_SCRIPT)
    request_bodies = bodies(scratch)
    ports = {
        name: free_port() for name in ("coserve", "coserve-2w", "unbatched", "mosec", "mosec-2w")
    }
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    servers = [
        Served(
            "coserve",
            [
                sys.executable,
                "-m",
                "coserve.cli",
                "serve",
                "--no-grpc",
                "--port",
                str(ports["coserve"]),
                "--log-level",
                "warning",
            ],
            f"http://127.0.0.1:{ports['coserve']}/v2/models/digits/infer",
            f"http://127.0.0.1:{ports['coserve']}/v2/health/ready",
        ),
        Served(
            "coserve-2w",
            [
                sys.executable,
                "-m",
                "coserve.cli",
                "serve",
                "--no-grpc",
                "--workers",
                "2",
                "--port",
                str(ports["coserve-2w"]),
                "--log-level",
                "warning",
            ],
            f"http://127.0.0.1:{ports['coserve-2w']}/v2/models/digits/infer",
            f"http://127.0.0.1:{ports['coserve-2w']}/v2/health/ready",
            workers=2,
        ),
        Served(
            "unbatched",
            [sys.executable, str(HERE / "servers" / "unbatched.py"), str(ports["unbatched"])],
            f"http://127.0.0.1:{ports['unbatched']}/v2/models/digits/infer",
            f"http://127.0.0.1:{ports['unbatched']}/v2/health/ready",
            env,
        ),
        *(
            Served(
                name,
                [
                    str(mosec_python),
                    str(HERE / "servers" / "mosec_server.py"),
                    "--port",
                    str(ports[name]),
                    "--timeout",
                    "30000",
                ],
                f"http://127.0.0.1:{ports[name]}/inference",
                f"http://127.0.0.1:{ports[name]}/",
                {**env, "MOSEC_WORKERS": workers},
            )
            for name, workers in (("mosec", "1"), ("mosec-2w", "2"))
        ),
    ]
    cells: dict[str, list[dict[str, Any]]] = {}
    try:
        for server in servers:
            server.wait_ready()
        for round_ in range(opts.repeats):
            for concurrency in CONCURRENCY:
                for server in servers:
                    formats = ("json", "binary") if server.name == "coserve" else ("json",)
                    for fmt in formats:
                        body, header = request_bodies[fmt]
                        run_wrk(server.url, concurrency, opts.warmup, body, header, script)
                        rows0, batches0 = server.batches()
                        cpu0 = tree_cpu_seconds(server.process.pid)
                        result, loadgen_cpu = run_wrk(
                            server.url, concurrency, opts.seconds, body, header, script
                        )
                        server_cpu = tree_cpu_seconds(server.process.pid) - cpu0
                        rows1, batches1 = server.batches()
                        result["mean_batch"] = (
                            (rows1 - rows0) / (batches1 - batches0) if batches1 > batches0 else None
                        )
                        result["loadgen_cpu_us_per_request"] = (
                            loadgen_cpu / max(result["requests"], 1) * 1e6
                        )
                        result["server_cpu_us_per_request"] = (
                            server_cpu / max(result["requests"], 1) * 1e6
                        )
                        cells.setdefault(f"{server.name}|{fmt}|{concurrency}", []).append(result)
                        print(
                            f"round {round_ + 1} {server.name} {fmt} c={concurrency}: "
                            f"{result['rps']:,.0f} rps",
                            file=sys.stderr,
                            flush=True,
                        )
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    rows = []
    for key, results in cells.items():
        name, fmt, concurrency = key.split("|")
        median = {
            k: statistics.median(r[k] for r in results)
            for k in (
                "rps",
                "p50_ms",
                "p99_ms",
                "loadgen_cpu_us_per_request",
                "server_cpu_us_per_request",
            )
        }
        batches = [r["mean_batch"] for r in results if r["mean_batch"] is not None]
        rows.append(
            {
                "server": name,
                "format": fmt,
                "concurrency": int(concurrency),
                **median,
                "mean_batch": statistics.median(batches) if batches else None,
                "errors": sum(r["errors"] for r in results),
                "socket_errors": [r["socket_errors"] for r in results if r["socket_errors"]],
                "rounds": results,
            }
        )
    print(
        "\n| server | body | c | rps | p50 ms | p99 ms | mean batch | errors "
        "| wrk CPU µs/req | server CPU µs/req |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in sorted(rows, key=lambda r: (r["concurrency"], r["server"], r["format"])):
        batch = (
            f"{row['mean_batch']:.1f}"
            if row["mean_batch"]
            else ("1" if row["server"] == "unbatched" else "n/a")
        )
        print(
            f"| {row['server']} | {row['format']} | {row['concurrency']} | {row['rps']:,.0f} "
            f"| {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {batch} | {row['errors']} "
            f"| {row['loadgen_cpu_us_per_request']:.0f} | {row['server_cpu_us_per_request']:.0f} |"
        )
    by = {(r["server"], r["format"], r["concurrency"]): r for r in rows}
    print()
    for c in CONCURRENCY:
        mosec, plain = by["mosec", "json", c], by["unbatched", "json", c]
        best = max(mosec, by["mosec-2w", "json", c], key=lambda row: row["rps"])
        for name in ("coserve", "coserve-2w"):
            mine = by[name, "json", c]
            print(
                f"c={c}: {name}/mosec throughput {mine['rps'] / mosec['rps']:.2f}x "
                f"(/{best['server']}, mosec's better here: {mine['rps'] / best['rps']:.2f}x), "
                f"p99 {mine['p99_ms']:.1f} vs {mosec['p99_ms']:.1f} ms; "
                f"{name}/unbatched p50 {mine['p50_ms']:.2f} vs {plain['p50_ms']:.2f} ms"
            )
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    opts.output.write_text(
        json.dumps({"command": shlex.join([sys.executable, *sys.argv]), "rows": rows}, indent=2)
        + "\n"
    )
    print(f"wrote {opts.output}")


if __name__ == "__main__":
    main()
