"""Serving benchmark: coserve vs an unbatched endpoint, mosec and MLServer, on the demo model.

All the servers run at once, each serving the bundled digits SavedModel; ``wrk`` (Debian's
package; a load generator in C, much cheaper per request than the servers) sends single-image
inference requests at concurrency 1, 64 and 256 for ``--seconds`` after a warm-up, the cells
interleaved server by server in every round. coserve is driven with the Open Inference
Protocol's JSON body and with its binary tensor extension, and once more as ``coserve-2w``
(``--workers 2``) with the JSON body; the peers take the same JSON body. mosec runs as in the peer
study (one Python worker process) and once more as ``mosec-2w`` (two).

gRPC (``--only grpc``): coserve's unary ``ModelInfer`` and its ``ModelStreamInfer`` (Triton's
stream), beside MLServer's gRPC on the same SavedModel (adaptive batching 64 / 2 ms,
``benchmarks/servers/mlserver``), single-item requests; unary calls are sent by ``h2load``
(C, like wrk), the stream by a grpcio client (``grpc_load.py``). With ``--baseline REV`` (part
``seam``), coserve at that git revision runs beside the current one (from a worktree), and
both are measured on JSON, binary and WebSocket (``ws_load.py``, a Python client) bodies: the
before and after of a refactor, side by side.

With ``--only dashboard``, coserve's JSON cells run once more with a dashboard event stream
open (``json-dashboard``), interleaved with the others: what a watched dashboard costs.

With ``--only tracing``, ``coserve-traced`` (``coserve serve --tracing``, every request sampled,
spans made and dropped by ``OTEL_TRACES_EXPORTER=none``) runs beside coserve on JSON bodies:
what making the spans costs (not their export, which depends on the collector). Tracing *off*
against the code before it existed is ``--baseline REV``.

Reported per cell: requests/s, p50 and p99 latency, the mean batch size the server formed, errors,
and the CPU time per request of the load generator and of the server's process tree.

Needs: ``apt-get install wrk nghttp2-client``. The script creates ``benchmarks/.venv-mosec``
(mosec 0.9.8 and TensorFlow) and ``benchmarks/.venv-mlserver`` on first use. Run:
``python benchmarks/serving.py [--seconds 10] [--repeats 1] [--only peers,grpc,seam,dashboard]
[--baseline REV]``.
"""

from __future__ import annotations

import argparse
import contextlib
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
import threading
import time
from pathlib import Path
from typing import Any

import grpc_load
import httpx
import numpy as np
import ws_load
from servers.mlserver import ensure_mlserver_venv, mlserver_batches, mlserver_launch

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
        formats: tuple[str, ...] = ("json",),
        grpc_target: str | None = None,
        metrics_url: str | None = None,
        model: str = "digits",
    ) -> None:
        self.name, self.url, self.ready, self.workers = name, url, ready, workers
        self.model = model
        self.formats = formats
        """The request kinds this server is measured with: json, binary, grpc, grpc-stream, ws."""
        self.grpc_target = grpc_target
        self.metrics_url = metrics_url  # MLServer's (coserve's is beside its URL)
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
        if self.name.startswith("mlserver") and self.metrics_url is not None:
            return mlserver_batches(self.metrics_url, self.model)
        if not self.name.startswith("coserve"):
            return 0.0, 0.0
        return sum(self._batch_samples("sum")), sum(self._batch_samples("count"))

    def _batch_samples(self, key: str) -> list[float]:
        """The model's batch-size ``sum`` or ``count``, one value per worker."""
        text = self.metrics()
        labels = rf'model="{self.model}",version="1"(?:,worker="\d+")?'
        pattern = rf"^coserve_batch_size_{key}{{{labels}}} (\S+)$"
        return [float(value) for value in re.findall(pattern, text, re.M)]

    def metrics(self) -> str:
        """The text of coserve's ``/metrics``."""
        return httpx.get(self.url.split("/v2/")[0] + "/metrics", timeout=10).text

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


class DashboardWatcher:
    """A browser's share of the dashboard: its event stream read in a thread, frames counted."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.frames = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.stream("GET", f"{self.url}/dashboard/events", timeout=30) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    self.frames += 1
                if self._stop.is_set():
                    return

    def __enter__(self) -> DashboardWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run_cell(
    server: Served,
    fmt: str,
    concurrency: int,
    opts: argparse.Namespace,
    request_bodies: dict[str, tuple[Path, int | None]],
    script: Path,
) -> dict[str, Any]:
    """One measured cell (after its warm-up), with the server's CPU and batch sizes."""
    pid = server.process.pid
    rows0, batches0 = server.batches()
    if fmt in ("json", "binary", "json-dashboard"):
        body, header = request_bodies["json" if fmt == "json-dashboard" else fmt]
        base = server.url.split("/v2/")[0]
        watcher = DashboardWatcher(base) if fmt == "json-dashboard" else None
        with watcher or contextlib.nullcontext():
            run_wrk(server.url, concurrency, opts.warmup, body, header, script)
            rows0, batches0 = server.batches()
            cpu0 = tree_cpu_seconds(pid)
            result, loadgen_cpu = run_wrk(
                server.url, concurrency, opts.seconds, body, header, script
            )
            server_cpu = tree_cpu_seconds(pid) - cpu0
        if watcher is not None:
            if watcher.frames < opts.seconds:
                raise RuntimeError(f"the dashboard stream gave {watcher.frames} frames")
            result["dashboard_frames"] = watcher.frames
        result["loadgen_cpu_us_per_request"] = loadgen_cpu / max(result["requests"], 1) * 1e6
        result["server_cpu_us_per_request"] = server_cpu / max(result["requests"], 1) * 1e6
    elif fmt in ("grpc", "grpc-stream", "grpc-stream-h2load"):
        assert server.grpc_target is not None

        def grpc_cell(seconds: float) -> dict[str, Any]:
            return grpc_load.measure(
                server.grpc_target,  # type: ignore[arg-type]
                model="digits",
                input_name="image",
                shape=[1, 8, 8, 1],
                data=request_bodies["raw"][0].read_bytes(),
                mode="unary" if fmt == "grpc" else "stream",
                engine="grpcio" if fmt == "grpc-stream" else "h2load",
                concurrency=concurrency,
                seconds=seconds,
                warmup=0,
                server_cpu=lambda: tree_cpu_seconds(pid),
            )

        grpc_cell(opts.warmup)
        rows0, batches0 = server.batches()
        result = grpc_cell(opts.seconds)
        result.setdefault("socket_errors", "")
    elif fmt == "ws":
        url = server.url.replace("http://", "ws://") + "/ws"
        body = request_bodies["json"][0]
        ws_load.measure(url, body, concurrency=concurrency, seconds=opts.warmup, warmup=0)
        rows0, batches0 = server.batches()
        cpu0 = tree_cpu_seconds(pid)
        result = ws_load.measure(url, body, concurrency=concurrency, seconds=opts.seconds, warmup=0)
        server_cpu = tree_cpu_seconds(pid) - cpu0
        result["server_cpu_us_per_request"] = server_cpu / max(result["requests"], 1) * 1e6
    else:
        raise ValueError(f"unknown request kind {fmt!r}")
    rows1, batches1 = server.batches()
    result["mean_batch"] = (rows1 - rows0) / (batches1 - batches0) if batches1 > batches0 else None
    return result


def baseline_tree(revision: str, scratch: Path) -> Path:
    """A worktree of coserve at ``revision`` (removed with ``git worktree prune`` later)."""
    tree = scratch / f"coserve-{revision}"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), revision],
        check=True,
    )
    return tree


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
    raw = folder / "image.raw"  # the tensor's bytes, for gRPC's raw_input_contents
    raw.write_bytes(image.astype("<f4").tobytes())
    return {"json": (json_body, None), "binary": (binary_body, len(header)), "raw": (raw, None)}


PARTS = ("peers", "grpc", "seam", "dashboard", "tracing")


def coserve_command(port: int, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "coserve.cli",
        "serve",
        "--port",
        str(port),
        "--log-level",
        "warning",
        *args,
    ]


def on_off(on: dict[str, Any], off: dict[str, Any]) -> str:
    """Two cells of one server, with a feature on and off: throughput, p50 and server CPU."""
    return (
        f"throughput {on['rps'] / off['rps']:.3f}x, "
        f"p50 {on['p50_ms']:.2f} vs {off['p50_ms']:.2f} ms, "
        f"server CPU {on['server_cpu_us_per_request']:.0f} vs "
        f"{off['server_cpu_us_per_request']:.0f} µs/req"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--only",
        default="peers,grpc",
        help="comma-separated parts: peers (unbatched, mosec, coserve --workers 2), grpc "
        "(coserve's gRPC and MLServer's), seam (coserve at --baseline), dashboard (coserve's "
        "JSON cells again with a dashboard stream open), tracing (coserve --tracing beside "
        "coserve); coserve's REST cells "
        "always run (default: %(default)s)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="a git revision of coserve to run beside the current tree (adds the seam part)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    opts = parser.parse_args()
    parts = set(opts.only.split(",")) | ({"seam"} if opts.baseline else set())
    if not parts <= set(PARTS):
        sys.exit(f"--only takes {', '.join(PARTS)}")
    if "seam" in parts and not opts.baseline:
        sys.exit("the seam part needs --baseline REV")
    for tool, package, needed in (
        ("wrk", "wrk", True),
        ("h2load", "nghttp2-client", "grpc" in parts),
    ):
        if needed and shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed: apt-get install {package}")
    print(f"machine: {platform.platform()}, {platform.python_version()}, {os.cpu_count()} cores")
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")

    scratch = Path(tempfile.mkdtemp())
    script = scratch / "post.lua"
    script.write_text(WRK_SCRIPT)
    request_bodies = bodies(scratch)
    names = (
        "coserve",
        "coserve-grpc",
        "coserve-2w",
        "coserve-base",
        "coserve-traced",
        "unbatched",
        "mosec",
    )
    ports = {
        name: free_port()
        for name in (
            *names,
            "coserve-2w-grpc",
            "mosec-2w",
            "mlserver",
            "mlserver-grpc",
            "mlserver-metrics",
        )
    }
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    local = "http://127.0.0.1"
    coserve_formats = ["json", "binary"]
    if "grpc" in parts:
        coserve_formats += ["grpc", "grpc-stream", "grpc-stream-h2load"]
    if "seam" in parts:
        coserve_formats += ["ws"]
    if "dashboard" in parts:
        coserve_formats += ["json-dashboard"]
    grpc_args = ["--grpc-port", str(ports["coserve-grpc"])] if "grpc" in parts else ["--no-grpc"]
    servers = [
        Served(
            "coserve",
            coserve_command(ports["coserve"], *grpc_args),
            f"{local}:{ports['coserve']}/v2/models/digits/infer",
            f"{local}:{ports['coserve']}/v2/health/ready",
            formats=tuple(coserve_formats),
            grpc_target=f"127.0.0.1:{ports['coserve-grpc']}",
        )
    ]
    if "tracing" in parts:
        servers.append(
            Served(
                "coserve-traced",
                coserve_command(ports["coserve-traced"], "--no-grpc", "--tracing"),
                f"{local}:{ports['coserve-traced']}/v2/models/digits/infer",
                f"{local}:{ports['coserve-traced']}/v2/health/ready",
                {**env, "OTEL_TRACES_EXPORTER": "none"},
            )
        )
    worktree = None
    if "seam" in parts:
        worktree = baseline_tree(opts.baseline, scratch)
        base_env = {**env, "PYTHONPATH": str(worktree / "src")}
        servers.append(
            Served(
                "coserve-base",
                # The baseline may predate gRPC (and --no-grpc): it gets the flags it knows.
                coserve_command(ports["coserve-base"]),
                f"{local}:{ports['coserve-base']}/v2/models/digits/infer",
                f"{local}:{ports['coserve-base']}/v2/health/ready",
                base_env,
                formats=("json", "binary", "ws"),
            )
        )
    if "peers" in parts:
        mosec_python = ensure_mosec_venv()
        servers += [
            Served(
                "coserve-2w",
                coserve_command(
                    ports["coserve-2w"],
                    "--workers",
                    "2",
                    *(
                        ["--grpc-port", str(ports["coserve-2w-grpc"])]
                        if "grpc" in parts
                        else ["--no-grpc"]
                    ),
                ),
                f"{local}:{ports['coserve-2w']}/v2/models/digits/infer",
                f"{local}:{ports['coserve-2w']}/v2/health/ready",
                workers=2,
                formats=("json", "grpc") if "grpc" in parts else ("json",),
                grpc_target=f"127.0.0.1:{ports['coserve-2w-grpc']}",
            ),
            Served(
                "unbatched",
                [sys.executable, str(HERE / "servers" / "unbatched.py"), str(ports["unbatched"])],
                f"{local}:{ports['unbatched']}/v2/models/digits/infer",
                f"{local}:{ports['unbatched']}/v2/health/ready",
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
                    f"{local}:{ports[name]}/inference",
                    f"{local}:{ports[name]}/",
                    {**env, "MOSEC_WORKERS": workers},
                )
                for name, workers in (("mosec", "1"), ("mosec-2w", "2"))
            ),
        ]
    if "grpc" in parts:
        launch = mlserver_launch(
            ensure_mlserver_venv(),
            http_port=ports["mlserver"],
            grpc_port=ports["mlserver-grpc"],
            metrics_port=ports["mlserver-metrics"],
            base_env=env,
        )
        servers.append(
            Served(
                "mlserver",
                launch.command,
                launch.infer_url,
                launch.ready_url,
                launch.env,
                formats=("grpc",),
                grpc_target=launch.grpc_target,
                metrics_url=launch.metrics_url,
            )
        )
    cells: dict[str, list[dict[str, Any]]] = {}
    try:
        for server in servers:
            server.wait_ready()
        for round_ in range(opts.repeats):
            for concurrency in CONCURRENCY:
                for server in servers:
                    for fmt in server.formats:
                        result = run_cell(server, fmt, concurrency, opts, request_bodies, script)
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
        if "grpc" in parts:
            shutil.rmtree(launch.scratch, ignore_errors=True)
        if worktree is not None:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)],
                check=False,
            )
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
        if "peers" in parts:
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
        if "grpc" in parts:
            peer, binary = by["mlserver", "grpc", c], by["coserve", "binary", c]
            line = f"c={c}: vs MLServer gRPC:"
            for name in ("coserve", "coserve-2w"):
                if (name, "grpc", c) in by:
                    unary = by[name, "grpc", c]
                    line += (
                        f" {name} {unary['rps'] / peer['rps']:.2f}x (p99 {unary['p99_ms']:.1f} "
                        f"vs {peer['p99_ms']:.1f} ms);"
                    )
            line += " streams/binary REST:"
            for fmt in ("grpc-stream", "grpc-stream-h2load"):
                line += f" {fmt} {by['coserve', fmt, c]['rps'] / binary['rps']:.2f}x"
            print(line)
        if "dashboard" in parts:
            cells = by["coserve", "json-dashboard", c], by["coserve", "json", c]
            print(f"c={c}: dashboard open/closed {on_off(*cells)}")
        if "tracing" in parts:
            cells = by["coserve-traced", "json", c], by["coserve", "json", c]
            print(f"c={c}: tracing on/off {on_off(*cells)}")
        if "seam" in parts:
            ratios = ", ".join(
                f"{fmt} {by['coserve', fmt, c]['rps'] / by['coserve-base', fmt, c]['rps']:.2f}x"
                for fmt in ("json", "binary", "ws")
            )
            print(f"c={c}: coserve/{opts.baseline} throughput: {ratios}")
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    opts.output.write_text(
        json.dumps({"command": shlex.join([sys.executable, *sys.argv]), "rows": rows}, indent=2)
        + "\n"
    )
    print(f"wrote {opts.output}")


if __name__ == "__main__":
    main()
