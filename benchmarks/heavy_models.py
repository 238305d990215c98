"""Heavier models, where the model and not the HTTP path is the cost: coserve beside its peers.

Three models with random weights (``build_models.py``, built on first use): the 28x28 CNN of the
peer study, MobileNetV2 at 224x224, and a four-layer transformer text encoder over variable-length
token ids. For each model in turn, these servers run at once and are measured side by side, cells
interleaved server by server in every round, at concurrency 1, 64 and 256 (``wrk``, one thread,
a warm-up then ``--seconds`` per cell):

- **coserve** (one process) and **coserve-2w** (``--workers 2``, one TensorFlow intra-op thread
  per worker), with the Open Inference Protocol's JSON body and, for the image models, its binary
  tensor extension (how coserve's clients send images);
- **coserve-exact** (text encoder only): the same server with ``[padding]`` off, so requests batch
  only with requests of their exact length;
- **unbatched**: Starlette on uvicorn calling the model inline, once per request;
- **mosec** 0.9.8, with one and two Python workers (**mosec-2w**, one intra-op thread each);
- **mlserver** 1.7.1 with adaptive batching (one inference worker).

Every batching server batches up to the same size (64; 16 for MobileNetV2, whose batches stop
paying beyond that on two cores) and the peers wait at most 2 ms for a batch to fill. Text
requests have a fixed mix of lengths (log-normal, median 24 tokens, 4 to 256); coserve pads each
to its bucket (``TEXT_BUCKETS``), mosec pads each batch to its longest row, and MLServer, whose
batcher joins only tensors of one shape, gets every request padded to 256 by the client and cuts
each batch back to its longest row.

After a model's servers stop, its own in-process throughput is measured: coserve's backend
``predict`` called directly, at the mean batch sizes the coserve servers formed (for the encoder,
batches of one bucket each, drawn from the same mix): the physical limit where the model is the
cost. For the encoder, the padding ratio (padded ÷ real token elements) is read from coserve's
``/metrics``, beside two references computed for the same length mix, concurrency and batch size:
the requests in flight sorted by length into batches (perfect sorting), and batches in arrival
order padded to their longest (what the peers do).

Needs ``apt-get install wrk``; creates ``benchmarks/.venv-mosec`` and ``benchmarks/.venv-mlserver``
on first use. Run: ``python benchmarks/heavy_models.py [--models cnn28,mobilenet,encoder]
[--seconds 10] [--repeats 1]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from build_models import MODELS, NAMES, TEXT_BUCKETS, build, saved_model
from servers.mlserver import ensure_mlserver_venv, mlserver_launch, write_model_settings
from serving import Served, coserve_command, ensure_mosec_venv, free_port, parse_wrk
from serving import tree_cpu_seconds as server_cpu_seconds

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "heavy_models.json"
CONCURRENCY = (1, 64, 256)
TEXT_MAX = TEXT_BUCKETS[-1]

# Each request is one of the bodies listed in BODY_LIST ("path<TAB>binary header length"),
# taken in turn; they are formatted once per thread.
WRK_SCRIPT = """
local requests = {}
local next_request = 0
function init(args)
  for line in io.lines(os.getenv("BODY_LIST")) do
    local path, header = line:match("^(.-)\\t(.*)$")
    local f = io.open(path, "rb")
    local body = f:read("*a")
    f:close()
    local headers = {["Content-Type"] = "application/json"}
    if header ~= "" then headers["Inference-Header-Content-Length"] = header end
    requests[#requests + 1] = wrk.format("POST", nil, headers, body)
  end
end
function request()
  next_request = next_request % #requests + 1
  return requests[next_request]
end
"""


@dataclass(frozen=True)
class Model:
    """One benchmark model: its tensors and how it is batched."""

    name: str
    input: str
    datatype: str
    dims: tuple[int, ...]  # after the batch dimension; () for variable-length token ids
    output: str
    output_dims: tuple[int, ...]
    max_batch: int
    binary: bool  # coserve is also measured with the binary tensor extension
    intra_op: int | None = None  # TensorFlow threads of one-process servers (None: all cores)

    @property
    def text(self) -> bool:
        """Whether the input is variable-length token ids."""
        return not self.dims


SPECS = {
    # One thread suits this small CNN (as the digits demo): c=1 1,615 against 995 rps with
    # TensorFlow's default, the same at c=64; every server gets it.
    "cnn28": Model("cnn28", "image", "FP32", (28, 28, 1), "probabilities", (10,), 64, True, 1),
    "mobilenet": Model(
        "mobilenet", "image", "UINT8", (224, 224, 3), "probabilities", (1000,), 16, True
    ),
    "encoder": Model("encoder", "tokens", "INT32", (), "embedding", (128,), 64, False),
}
NUMPY = {"FP32": np.float32, "UINT8": np.uint8, "INT32": np.int32}


def text_lengths(count: int, seed: int = 0) -> np.ndarray:
    """A mix of sentence lengths: log-normal, median 24 tokens, clipped to 4…256."""
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.lognormal(math.log(24), 0.75, count)), 4, TEXT_MAX).astype(int)


def bucket_of(length: int) -> int:
    return next(b for b in TEXT_BUCKETS if b >= length)


def write_bodies(model: Model, folder: Path) -> dict[str, Path]:
    """Body lists for wrk, by request kind: json, binary, padded (MLServer's text rows)."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    if model.text:
        rows = [rng.integers(1, 8000, (1, n), dtype=np.int32) for n in text_lengths(1000, seed=2)]
    elif model.datatype == "UINT8":
        rows = [rng.integers(0, 256, (1, *model.dims), dtype=np.uint8)]
    else:
        rows = [rng.random((1, *model.dims), dtype=np.float32)]
    lists: dict[str, list[str]] = {"json": [], "binary": [], "padded": []}
    for i, row in enumerate(rows):
        tensor = {"name": model.input, "shape": list(row.shape), "datatype": model.datatype}
        path = folder / f"{i}.json"
        path.write_text(json.dumps({"inputs": [{**tensor, "data": row.ravel().tolist()}]}))
        lists["json"].append(f"{path}\t")
        if model.text:
            wide = np.zeros((1, TEXT_MAX), np.int32)
            wide[:, : row.shape[1]] = row
            path = folder / f"{i}.padded.json"
            padded = {**tensor, "shape": list(wide.shape), "data": wide.ravel().tolist()}
            path.write_text(json.dumps({"inputs": [padded]}))
            lists["padded"].append(f"{path}\t")
        if model.binary:
            header = json.dumps(
                {
                    "inputs": [{**tensor, "parameters": {"binary_data_size": row.nbytes}}],
                    "outputs": [{"name": model.output, "parameters": {"binary_data": True}}],
                }
            ).encode()
            path = folder / f"{i}.bin"
            path.write_bytes(header + row.tobytes())
            lists["binary"].append(f"{path}\t{len(header)}")
    listed = {}
    for kind, lines in lists.items():
        if lines:
            listed[kind] = folder / f"{kind}.list"
            listed[kind].write_text("\n".join(lines) + "\n")
    return listed


def model_variant(model: Model, folder: Path, *, threads: bool, padding: bool) -> Path:
    """A copy of a model's folder (its SavedModel linked) with one thread a worker or no padding."""
    source = MODELS / model.name
    folder.mkdir(parents=True)
    (folder / "1").mkdir()
    (folder / "1" / "model.savedmodel").symlink_to(saved_model(model.name))
    config = (source / "config.toml").read_text()
    if not padding:
        config = config.split("\n[padding]")[0] + "\n"
    if threads and "[threads]" not in config:
        config += "\n[threads]\nintra_op = 1\ninter_op = 1\n"
    (folder / "config.toml").write_text(config)
    return folder


def run_wrk(url: str, concurrency: int, seconds: float, bodies: Path, script: Path) -> Any:
    env = {**os.environ, "BODY_LIST": str(bodies)}
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{int(seconds)}s", "--latency"]
    command += ["--timeout", "30s", "-s", str(script), url]
    before = os.times()
    output = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
    after = os.times()
    cpu = (
        after.children_user - before.children_user + after.children_system - before.children_system
    )
    return parse_wrk(output), cpu


def wait_idle(servers: list[Served], limit: float = 120.0) -> None:
    """Wait until the servers have finished what an ended cell left them (under 0.1 core busy).

    A heavy model's server can hold seconds of queued work when wrk stops; it would run
    during the next cell, on the same cores.
    """
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = sum(server_cpu_seconds(s.process.pid) for s in servers)
        time.sleep(0.5)
        if sum(server_cpu_seconds(s.process.pid) for s in servers) - before < 0.05:
            return
    print(f"warning: servers still busy after {limit:.0f} s; measuring anyway", file=sys.stderr)


def padding_elements(server: Served) -> tuple[float, float]:
    """(real, padded) token elements coserve has counted for the encoder, over all buckets."""
    totals = {"real": 0.0, "padded": 0.0}
    for line in server.metrics().splitlines():
        if line.startswith(("coserve_padding_elements_total{", "coserve_padding_elements{")):
            labels, value = line.rsplit(" ", 1)
            kind = re.search(r'kind="(\w+)"', labels)
            if f'model="{server.model}"' in labels and kind and kind.group(1) in totals:
                totals[kind.group(1)] += float(value)
    return totals["real"], totals["padded"]


def run_cell(
    server: Served,
    fmt: str,
    concurrency: int,
    opts: argparse.Namespace,
    bodies: dict[str, Path],
    script: Path,
    text: bool,
) -> dict[str, Any]:
    """One measured cell (after its warm-up), with the server's CPU, batch sizes and padding."""
    listed = bodies["padded" if server.name == "mlserver" and text else fmt]
    run_wrk(server.url, concurrency, opts.warmup, listed, script)
    wait_idle([server])  # measure from an empty queue: the warm-up's leftovers run first
    rows0, batches0 = server.batches()
    counted = text and server.name in ("coserve", "coserve-2w")
    real0, padded0 = padding_elements(server) if counted else (0.0, 0.0)
    cpu0 = server_cpu_seconds(server.process.pid)
    result, loadgen_cpu = run_wrk(server.url, concurrency, opts.seconds, listed, script)
    server_cpu = server_cpu_seconds(server.process.pid) - cpu0
    rows1, batches1 = server.batches()
    result["server_cpu_us_per_request"] = server_cpu / max(result["requests"], 1) * 1e6
    result["loadgen_cpu_us_per_request"] = loadgen_cpu / max(result["requests"], 1) * 1e6
    result["mean_batch"] = (rows1 - rows0) / (batches1 - batches0) if batches1 > batches0 else None
    # Throughput counts answered requests only: an error answered fast is no throughput.
    result["wrk_rps"] = result["rps"]
    good = result["requests"] - result["errors"]
    result["rps"] = result["rps"] * good / result["requests"] if result["requests"] else 0.0
    result["padding_ratio"] = None
    if counted:
        real1, padded1 = padding_elements(server)
        if real1 > real0:
            result["padding_ratio"] = (padded1 - padded0) / (real1 - real0)
    return result


def reference_padding(lengths: np.ndarray, concurrency: int, batch: int) -> dict[str, float]:
    """Padding ratios of the same mix without buckets, for ``concurrency`` requests in flight.

    ``sorted``: the requests in flight sorted by length and cut into batches of ``batch``, each
    padded to its longest (the best any batching of them can do); ``arrival``: batches in
    arrival order padded to their longest (mosec's and MLServer's way).
    """
    rng = np.random.default_rng(3)
    batch = max(1, min(batch, concurrency))
    totals = {"sorted": 0.0, "arrival": 0.0}
    real = 0.0
    for _ in range(500):
        flight = rng.choice(lengths, concurrency)
        real += flight.sum()
        for kind, order in (("sorted", np.sort(flight)), ("arrival", flight)):
            for start in range(0, concurrency, batch):
                chunk = order[start : start + batch]
                totals[kind] += chunk.max() * len(chunk)
    return {kind: total / real for kind, total in totals.items()}


def direct_rates(model: Model, folder: Path, batches: list[int], seconds: float) -> None:
    """In a child process: load the model, say ``ready``, wait for ``go``, print items/s as JSON.

    coserve's backend ``predict`` is called directly on this thread, batch after batch, at each
    size in turn; the text encoder's batches each hold one bucket's rows, drawn from the mix.
    """
    from coserve.models import ModelRepository

    repository = Path(tempfile.mkdtemp())
    (repository / model.name).symlink_to(folder)
    rng = np.random.default_rng(4)
    rates: dict[int, float] = {}

    def calls_of(size: int) -> list[dict[str, np.ndarray]]:
        if not model.text:
            dtype = NUMPY[model.datatype]
            data = rng.integers(0, 256, (size, *model.dims))
            return [{model.input: (data if dtype == np.uint8 else data / 255).astype(dtype)}]
        by_bucket: dict[int, list[int]] = {}
        for n in text_lengths(size * 64, seed=5):
            by_bucket.setdefault(bucket_of(int(n)), []).append(int(n))
        calls = []
        for bucket, members in by_bucket.items():
            for first in range(0, len(members), size):
                chunk = members[first : first + size]
                tokens = np.zeros((len(chunk), bucket), np.int32)
                for row, n in enumerate(chunk):
                    tokens[row, :n] = rng.integers(1, 8000, n)
                calls.append({model.input: tokens})
        order = rng.permutation(len(calls))
        return [calls[i] for i in order]

    async def measure() -> None:
        async with ModelRepository(repository) as models:
            backend = models.get(model.name).backend
            prepared = {size: calls_of(size) for size in batches}
            for calls in prepared.values():  # every shape once, then the first calls again
                shapes = {call[model.input].shape: call for call in calls}
                for call in [*shapes.values(), *calls[:3]]:
                    backend.predict(call)
            print("ready", flush=True)
            sys.stdin.readline()
            for size, calls in prepared.items():
                rows, started, i = 0, time.perf_counter(), 0
                while time.perf_counter() - started < seconds:
                    call = calls[i % len(calls)]
                    backend.predict(call)
                    rows += len(call[model.input])
                    i += 1
                rates[size] = rows / (time.perf_counter() - started)

    try:
        asyncio.run(measure())
    finally:
        shutil.rmtree(repository, ignore_errors=True)
    print(json.dumps(rates), flush=True)


def in_process(
    model: Model, folder: Path, batches: list[int], seconds: float, copies: int
) -> dict[int, float]:
    """The model alone, in ``copies`` processes at once (as many as the server's workers).

    Each copy runs :func:`direct_rates` with the server's model folder (its thread counts); the
    items/s of the copies are added up, batch size by batch size.
    """
    command = [sys.executable, __file__, "--direct", model.name, "--folder", str(folder)]
    command += ["--batches", ",".join(map(str, batches)), "--direct-seconds", str(seconds)]
    children = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(copies)
    ]
    try:
        for child in children:  # every copy loaded and warm before any measures
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the in-process measurement of {model.name} failed")
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        totals: dict[int, float] = {}
        for child in children:
            assert child.stdout is not None
            for size, rate in json.loads(child.stdout.readline()).items():
                totals[int(size)] = totals.get(int(size), 0.0) + rate
            child.wait()
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    for size, rate in totals.items():
        print(
            f"in process {model.name} x{copies} batch {size}: {rate:,.0f} items/s", file=sys.stderr
        )
    return totals


def servers_for(
    model: Model,
    scratch: Path,
    ports: dict[str, int],
    env: dict[str, str],
    venvs: tuple[Path, Path],
    servers: list[Served],
) -> None:
    """Start every server of one model (not yet ready), appending each to ``servers`` at once.

    ``venvs`` are the Pythons of mosec's and MLServer's environments. Appending as they start
    lets the caller stop those already running if a later one fails to start.
    """
    local = "http://127.0.0.1"
    formats = ("json", "binary") if model.binary else ("json",)
    folder = MODELS / model.name
    two = model_variant(model, scratch / "coserve-2w" / model.name, threads=True, padding=True)
    peer_env = {**env, "BENCH_MODEL": str(saved_model(model.name)), "BENCH_MODEL_NAME": model.name}
    if model.intra_op:
        peer_env["BENCH_INTRA_OP"] = peer_env["BENCH_INTER_OP"] = str(model.intra_op)
    infer = f"/v2/models/{model.name}/infer"

    def coserve(name: str, path: Path, *args: str, workers: int = 1) -> Served:
        command = coserve_command(ports[name], "--no-grpc", "--model-base-path", str(path))
        command += ["--model-name", model.name, *args]
        return Served(
            name,
            command,
            f"{local}:{ports[name]}{infer}",
            f"{local}:{ports[name]}/v2/health/ready",
            env,
            workers=workers,
            formats=formats,
            model=model.name,
        )

    servers.append(coserve("coserve", folder))
    servers.append(coserve("coserve-2w", two, "--workers", "2", workers=2))
    if model.text:
        exact = model_variant(
            model, scratch / "coserve-exact" / model.name, threads=False, padding=False
        )
        servers.append(coserve("coserve-exact", exact))
    servers.append(
        Served(
            "unbatched",
            [sys.executable, str(HERE / "servers" / "unbatched.py"), str(ports["unbatched"])],
            f"{local}:{ports['unbatched']}{infer}",
            f"{local}:{ports['unbatched']}/v2/health/ready",
            peer_env,
            model=model.name,
        )
    )
    mosec, mlserver = venvs
    for name, workers in (("mosec", 1), ("mosec-2w", 2)):
        mosec_env = {
            **peer_env,
            "MOSEC_WORKERS": str(workers),
            "MOSEC_MAX_BATCH": str(model.max_batch),
        }
        if workers == 2:
            mosec_env["BENCH_INTRA_OP"] = mosec_env["BENCH_INTER_OP"] = "1"
        command = [
            str(mosec),
            str(HERE / "servers" / "mosec_server.py"),
            "--port",
            str(ports[name]),
        ]
        servers.append(
            Served(
                name,
                [*command, "--timeout", "30000"],
                f"{local}:{ports[name]}/inference",
                f"{local}:{ports[name]}/",
                mosec_env,
                model=model.name,
            )
        )
    dims = [-1, *(model.dims or (TEXT_MAX,))]
    settings = write_model_settings(
        scratch / "mlserver" / model.name,
        name=model.name,
        input=(model.input, model.datatype, dims),
        output=(model.output, "FP32", [-1, *model.output_dims]),
        max_batch_size=model.max_batch,
    )
    launch = mlserver_launch(
        mlserver,
        http_port=ports["mlserver"],
        grpc_port=ports["mlserver-grpc"],
        metrics_port=ports["mlserver-metrics"],
        base_env=peer_env,
        model_folder=settings,
        model=model.name,
    )
    servers.append(
        Served(
            "mlserver",
            launch.command,
            launch.infer_url,
            launch.ready_url,
            launch.env,
            metrics_url=launch.metrics_url,
            model=model.name,
        )
    )
    (scratch / "mlserver-scratch").symlink_to(launch.scratch)  # removed with the scratch


def summarise(
    model: Model, rows: list[dict[str, Any]], direct: dict[str, dict[int, float]]
) -> list[str]:
    """Lines against the issue's targets, for one model."""
    by = {(r["server"], r["format"], r["concurrency"]): r for r in rows}
    peers = ("unbatched", "mosec", "mosec-2w", "mlserver")
    lines = []
    for c in (64, 256):
        best_peer = max(
            (by[p, "json", c] for p in peers if (p, "json", c) in by), key=lambda r: r["rps"]
        )
        for fmt in ("json", "binary") if model.binary else ("json",):
            mine = max(
                (by[s, fmt, c] for s in ("coserve", "coserve-2w") if (s, fmt, c) in by),
                key=lambda r: r["rps"],
            )
            lines.append(
                f"{model.name} c={c}: {mine['server']} {fmt} {mine['rps']:,.0f} rps "
                f"(p99 {mine['p99_ms']:.1f} ms) vs best peer {best_peer['server']} "
                f"{best_peer['rps']:,.0f} (p99 {best_peer['p99_ms']:.1f} ms): "
                f"{mine['rps'] / best_peer['rps'] if best_peer['rps'] else math.inf:.2f}x"
            )
            for server in ("coserve", "coserve-2w"):
                own, rates = by.get((server, fmt, c)), direct.get(server)
                if own and own["mean_batch"] and rates:
                    size = min(rates, key=lambda b: abs(b - own["mean_batch"]))
                    lines.append(
                        f"  {server} {fmt}: in process at batch {size} {rates[size]:,.0f} "
                        f"items/s; served / in process {own['rps'] / rates[size]:.2f}"
                    )
        padded, exact = by.get(("coserve", "json", c)), by.get(("coserve-exact", "json", c))
        if model.text and padded and exact and "reference_sorted" in padded and exact["rps"]:
            lines.append(
                f"  padding on / off (one process): {padded['rps'] / exact['rps']:.2f}x "
                f"({padded['rps']:,.0f} vs {exact['rps']:,.0f} rps, mean batch "
                f"{padded['mean_batch'] or 0:.1f} vs {exact['mean_batch'] or 0:.1f}); "
                f"padding ratio {padded['padding_ratio'] or 0:.2f}, "
                f"sorted {padded['reference_sorted']:.2f}, "
                f"arrival order {padded['reference_arrival']:.2f}; bucketed / sorted "
                f"{(padded['padding_ratio'] or 0) / padded['reference_sorted']:.2f}"
            )
    return lines


def aggregate(model: Model, cells: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per server, body and concurrency: medians over the rounds."""
    rows = []
    for key, done in cells.items():
        server_name, fmt, c = key.split("|")
        row: dict[str, Any] = {"server": server_name, "format": fmt, "concurrency": int(c)}
        for field in (
            "rps",
            "p50_ms",
            "p99_ms",
            "server_cpu_us_per_request",
            "loadgen_cpu_us_per_request",
        ):
            row[field] = statistics.median(r[field] for r in done)
        for field in ("mean_batch", "padding_ratio"):
            values = [r[field] for r in done if r[field] is not None]
            row[field] = statistics.median(values) if values else None
        row["errors"] = sum(r["errors"] for r in done)
        row["socket_errors"] = [r["socket_errors"] for r in done if r["socket_errors"]]
        row["rounds"] = done
        if model.text and row["mean_batch"]:
            reference = reference_padding(
                text_lengths(1000, seed=2), int(c), round(row["mean_batch"])
            )
            row["reference_sorted"] = reference["sorted"]
            row["reference_arrival"] = reference["arrival"]
        rows.append(row)
    return rows


def measure(
    model: Model, opts: argparse.Namespace, env: dict[str, str], venvs: tuple[Path, Path]
) -> tuple[dict[str, Any], list[str]]:
    """Every cell of one model, then its in-process rates: (results, the report's lines)."""
    name = model.name
    scratch = Path(tempfile.mkdtemp(prefix=f"heavy-{name}-"))
    try:
        script = scratch / "bodies.lua"
        script.write_text(WRK_SCRIPT)
        bodies = write_bodies(model, scratch / "bodies")
        keys = ("coserve", "coserve-2w", "coserve-exact", "unbatched", "mosec", "mosec-2w")
        keys += ("mlserver", "mlserver-grpc", "mlserver-metrics")
        ports = {key: free_port() for key in keys}
        servers: list[Served] = []
        cells: dict[str, list[dict[str, Any]]] = {}
        try:
            servers_for(model, scratch, ports, env, venvs, servers)
            for server in servers:
                server.wait_ready()
            for round_ in range(opts.repeats):
                for c in CONCURRENCY:
                    for server in servers:
                        for fmt in server.formats:
                            wait_idle(servers)
                            result = run_cell(server, fmt, c, opts, bodies, script, model.text)
                            cells.setdefault(f"{server.name}|{fmt}|{c}", []).append(result)
                            print(
                                f"{name} round {round_ + 1} {server.name} {fmt} c={c}: "
                                f"{result['rps']:,.1f} rps, p99 {result['p99_ms']:.1f} ms, "
                                f"batch {result['mean_batch'] or 0:.1f}, "
                                f"errors {result['errors']}",
                                file=sys.stderr,
                                flush=True,
                            )
        finally:
            for server in servers:
                server.stop()
            if (scratch / "mlserver-scratch").exists():
                shutil.rmtree((scratch / "mlserver-scratch").resolve(), ignore_errors=True)
        rows = aggregate(model, cells)
        direct: dict[str, dict[int, float]] = {}
        for server_name, folder, copies in (
            ("coserve", MODELS / name, 1),
            ("coserve-2w", scratch / "coserve-2w" / name, 2),
        ):
            formed = sorted(
                {
                    max(1, round(r["mean_batch"]))
                    for r in rows
                    if r["server"] == server_name and r["mean_batch"]
                }
            )
            if formed:
                direct[server_name] = in_process(model, folder, formed, opts.direct_seconds, copies)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    table = [
        f"\n### {name}\n",
        "| server | body | c | rps | p50 ms | p99 ms | mean batch | padding ratio | errors "
        "| server CPU µs/req |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in sorted(rows, key=lambda r: (r["concurrency"], r["server"], r["format"])):
        batch = (
            f"{row['mean_batch']:.1f}"
            if row["mean_batch"]
            else ("1" if row["server"] == "unbatched" else "n/a")
        )
        ratio = f"{row['padding_ratio']:.2f}" if row["padding_ratio"] else ""
        table.append(
            f"| {row['server']} | {row['format']} | {row['concurrency']} | {row['rps']:,.1f} "
            f"| {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {batch} | {ratio} "
            f"| {row['errors']} | {row['server_cpu_us_per_request']:.0f} |"
        )
    for server_name, rates in direct.items():
        table.append(
            f"\nIn process, as {server_name} runs it (coserve's backend, direct predict, "
            f"{'two processes' if server_name == 'coserve-2w' else 'one process'}): "
            + ", ".join(f"batch {size} {rate:,.1f} items/s" for size, rate in rates.items())
        )
    table.append("")
    table += summarise(model, rows, direct)
    return {"rows": rows, "in_process": direct}, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(NAMES))
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--direct-seconds", type=float, default=4.0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    # The in-process measurement's child processes (see in_process).
    parser.add_argument("--direct", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--batches", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.direct:
        batches = [int(b) for b in opts.batches.split(",")]
        direct_rates(SPECS[opts.direct], opts.folder, batches, opts.direct_seconds)
        return
    names = tuple(opts.models.split(","))
    if not set(names) <= set(NAMES):
        sys.exit(f"--models takes {', '.join(NAMES)}")
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    build(names)
    commit = subprocess.run(
        ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(f"machine: {platform.platform()}, {platform.python_version()}, {os.cpu_count()} cores")
    print(f"command: {shlex.join([sys.executable, *sys.argv])}; commit {commit}")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    results: dict[str, Any] = {"command": shlex.join([sys.executable, *sys.argv]), "commit": commit}
    report: list[str] = []
    venvs = (ensure_mosec_venv(), ensure_mlserver_venv())  # before any server starts
    for name in names:
        results[name], table = measure(SPECS[name], opts, env, venvs)
        print("\n".join(table), flush=True)
        report += table
        opts.output.parent.mkdir(parents=True, exist_ok=True)  # kept after each model
        opts.output.write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(report))
    print(f"wrote {opts.output}")


if __name__ == "__main__":
    main()
