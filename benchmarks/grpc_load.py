"""gRPC load generator for the Open Inference Protocol's ``ModelInfer`` / ``ModelStreamInfer``.

Sends single-item requests (one row in ``raw_input_contents``) at a fixed concurrency for
``seconds`` after a warm-up and reports requests/s, p50/p99 latency (ms), errors and the CPU time
per request of the load generator itself (all its processes), read from the OS.

Two engines:

* ``h2load`` (Debian's ``nghttp2-client``, C). It POSTs a pre-serialised, gRPC-framed
  request body with ``content-type: application/grpc`` and ``te: trailers``, one connection per
  in-flight request by default (as ``wrk`` does in benchmarks/serving.py). For ``stream`` each
  call's body holds a burst of requests (64, each with its own id) and the call half-closes:
  h2load cannot send as answers arrive, so this measures a stream's throughput with a client
  that costs little, and the latency is a whole burst's. h2load knows nothing
  of gRPC: every answer is HTTP 200 and the ``grpc-status`` trailer is not read. Errors are
  therefore counted from the bytes: a failed gRPC call is trailers-only (no DATA), so
  ``errors = done - DATA bytes / bytes of one good answer`` (the good answer's size is probed
  with one h2load call first; this assumes every good answer has the same size, true for a fixed
  request to these servers). Latency percentiles come from h2load's ``--log-file``.
* ``grpcio``: ``processes`` worker processes, each with one ``grpc.aio`` channel (its own
  connection) and generic byte-in/byte-out methods (no protobuf on the client's hot path).
  ``unary``: ``concurrency`` coroutines, each awaiting one ``ModelInfer`` at a time.
  ``stream``: ``streams`` bidi ``ModelStreamInfer`` calls, keeping ``concurrency`` requests in
  flight in all, each request tagged with its own ``id`` and each answer matched by the ``id``
  in Triton's ``ModelStreamInferResponse.infer_response``; a non-empty ``error_message`` counts
  as an error. (MLServer's ModelStreamInfer answers with plain ``ModelInferResponse``s and
  does not batch: drive MLServer with ``unary`` only.)

Request bytes are hand-encoded protobuf (no generated code needed; checked against
``tritonclient.grpc.service_pb2`` by ``--self-check``).

Run: ``python benchmarks/grpc_load.py --target 127.0.0.1:8081 --model digits --input image
--shape 1,8,8,1 --concurrency 64 --seconds 10 [--mode unary|stream] [--engine h2load|grpcio]``.
From Python: :func:`measure` (returns the same dict that ``--json`` prints).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

SERVICE = "/inference.GRPCInferenceService"
INFER = f"{SERVICE}/ModelInfer"
STREAM_INFER = f"{SERVICE}/ModelStreamInfer"
DATATYPES = {"FP32": "<f4", "FP64": "<f8", "INT32": "<i4", "INT64": "<i8", "UINT8": "u1"}


# --- protobuf, by hand -------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 as two's complement, as protobuf does
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_infer_request(
    model: str,
    input_name: str,
    datatype: str,
    shape: list[int],
    raw: bytes,
    *,
    model_version: str = "",
    request_id: str = "",
) -> bytes:
    """``inference.ModelInferRequest`` with one input whose data is in ``raw_input_contents``."""
    tensor = (
        _field(1, input_name.encode())
        + _field(2, datatype.encode())
        + _field(3, b"".join(_varint(d) for d in shape))  # packed repeated int64
    )
    message = _field(1, model.encode())
    if model_version:
        message += _field(2, model_version.encode())
    if request_id:
        message += _field(3, request_id.encode())
    return message + _field(5, tensor) + _field(7, raw)


def with_id(message: bytes, request_id: str) -> bytes:
    """The request with ``id`` set: appended, since protobuf keeps the last value of a field."""
    return message + _field(3, request_id.encode())


def grpc_frame(message: bytes) -> bytes:
    """Length-prefixed message (uncompressed), as gRPC sends it in HTTP/2 DATA."""
    return struct.pack(">BI", 0, len(message)) + message


def _decode_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _string_fields(buf: bytes, wanted: tuple[int, ...]) -> dict[int, bytes]:
    """The first value of each wanted length-delimited field at the top level of ``buf``."""
    found: dict[int, bytes] = {}
    pos, end = 0, len(buf)
    while pos < end and len(found) < len(wanted):
        key, pos = _decode_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 2:
            size, pos = _decode_varint(buf, pos)
            if number in wanted and number not in found:
                found[number] = buf[pos : pos + size]
            pos += size
        elif wire == 0:
            _, pos = _decode_varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return found


def stream_response_id(message: bytes) -> tuple[str, str]:
    """(id, error_message) of a Triton ``ModelStreamInferResponse``."""
    top = _string_fields(message, (1, 2))
    inner = _string_fields(top.get(2, b""), (3,))
    return inner.get(3, b"").decode(), top.get(1, b"").decode()


def percentiles(latencies_ms: Any) -> tuple[float, float]:
    import numpy as np

    values = np.asarray(latencies_ms, dtype=np.float64)
    if not values.size:
        return float("nan"), float("nan")
    p50, p99 = np.percentile(values, [50, 99])
    return float(p50), float(p99)


# --- grpcio engine -----------------------------------------------------------------------------


def _grpc_options() -> list[tuple[str, Any]]:
    return [
        ("grpc.use_local_subchannel_pool", 1),  # one connection per channel, not shared
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.enable_retries", 0),
    ]


async def _worker_main(
    conn: Any, target: str, body: bytes, mode: str, concurrency: int, streams: int
) -> None:
    import grpc

    channel = grpc.aio.insecure_channel(target, options=_grpc_options())
    await asyncio.wait_for(channel.channel_ready(), 30)
    conn.send("ready")
    start = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
    warmup, seconds = start["warmup"], start["seconds"]
    window_start = start["t0"] + warmup
    window_end = window_start + seconds
    state = {"measuring": False, "stop": False, "count": 0, "errors": 0, "cpu": 0.0}
    latencies = array("d")
    clock = time.monotonic

    def done(t_sent: float, ok: bool) -> None:
        if state["measuring"]:
            if ok:
                state["count"] += 1
                latencies.append((clock() - t_sent) * 1e3)
            else:
                state["errors"] += 1

    async def unary_loop() -> None:
        call = channel.unary_unary(INFER, request_serializer=None, response_deserializer=None)
        while not state["stop"]:
            t_sent = clock()
            try:
                await call(body, timeout=30)
            except grpc.aio.AioRpcError:
                done(t_sent, False)
            else:
                done(t_sent, True)

    async def stream_loop(in_flight: int, tag: str) -> None:
        method = channel.stream_stream(
            STREAM_INFER, request_serializer=None, response_deserializer=None
        )
        counter = 0
        while not state["stop"]:
            call = method()
            sent: dict[str, float] = {}
            try:
                for _ in range(in_flight):
                    counter += 1
                    rid = f"{tag}.{counter}"
                    sent[rid] = clock()
                    await call.write(with_id(body, rid))
                while sent:
                    answer = await call.read()
                    if answer is grpc.aio.EOF:
                        break
                    rid, error = stream_response_id(answer)
                    t_sent = sent.pop(rid, None)
                    if t_sent is None:
                        state["errors"] += state["measuring"]
                        continue
                    done(t_sent, not error)
                    if not state["stop"]:
                        counter += 1
                        rid = f"{tag}.{counter}"
                        sent[rid] = clock()
                        await call.write(with_id(body, rid))
                await call.done_writing()
            except grpc.aio.AioRpcError:
                pass
            for t_sent in sent.values():  # lost with a broken stream
                done(t_sent, False)
            if sent and not state["stop"]:
                await asyncio.sleep(0.05)
            call.cancel()

    async def timer() -> None:
        await asyncio.sleep(max(0.0, window_start - clock()))
        cpu0 = time.process_time()
        state["measuring"] = True
        await asyncio.sleep(max(0.0, window_end - clock()))
        state["measuring"] = False
        state["cpu"] = time.process_time() - cpu0
        state["stop"] = True

    await asyncio.sleep(max(0.0, start["t0"] - clock()))
    if mode == "unary":
        loops = [unary_loop() for _ in range(concurrency)]
    else:
        shares = [concurrency // streams + (i < concurrency % streams) for i in range(streams)]
        loops = [stream_loop(n, f"{os.getpid()}-{i}") for i, n in enumerate(shares) if n]
    tasks = [asyncio.ensure_future(c) for c in loops]
    await timer()
    _, pending = await asyncio.wait(tasks, timeout=30)
    for task in pending:
        task.cancel()
    await channel.close()
    conn.send(
        {
            "count": state["count"],
            "errors": state["errors"],
            "cpu": state["cpu"],
            "latencies": latencies.tobytes(),
        }
    )


def _worker(conn: Any, *args: Any) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(_worker_main(conn, *args))
    except BaseException as error:  # report, so the parent does not wait forever
        conn.send({"failed": repr(error)})
        raise


def run_grpcio(
    target: str,
    body: bytes,
    *,
    mode: str,
    concurrency: int,
    seconds: float,
    warmup: float,
    processes: int,
    streams: int = 16,
    server_cpu: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """``body`` is one serialised ModelInferRequest (unframed)."""
    processes = max(1, min(processes, concurrency))
    # fork is cheap, but not after grpc has started its threads in this process.
    context = multiprocessing.get_context("spawn" if "grpc" in sys.modules else "fork")
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    pipes, children = [], []
    for share in shares:
        parent, child = context.Pipe()
        stream_share = max(1, min(share, round(streams * share / concurrency)))
        args = (child, target, body, mode, share, stream_share)
        proc = context.Process(target=_worker, args=args, daemon=True)
        proc.start()
        pipes.append(parent)
        children.append(proc)
    try:
        for parent in pipes:
            if not parent.poll(60):
                raise RuntimeError("a load worker did not connect within 60 s")
            message = parent.recv()
            if message != "ready":
                raise RuntimeError(f"load worker failed: {message}")
        t0 = time.monotonic() + 0.05
        for parent in pipes:
            parent.send({"t0": t0, "warmup": warmup, "seconds": seconds})
        server = _sample_window(server_cpu, t0 + warmup, t0 + warmup + seconds)
        results = []
        for parent in pipes:
            if not parent.poll(warmup + seconds + 90):
                raise RuntimeError("a load worker did not report")
            results.append(parent.recv())
    finally:
        for proc in children:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    failed = [r["failed"] for r in results if "failed" in r]
    if failed:
        raise RuntimeError(f"load worker failed: {failed[0]}")
    latencies = array("d")
    for result in results:
        latencies.frombytes(result["latencies"])
    count = sum(r["count"] for r in results)
    cpu = sum(r["cpu"] for r in results)
    p50, p99 = percentiles(latencies)
    return {
        **_server_fields(server, count),
        "rps": count / seconds,
        "p50_ms": p50,
        "p99_ms": p99,
        "requests": count,
        "errors": sum(r["errors"] for r in results),
        "loadgen_cpu_s": cpu,
        "loadgen_cpu_us_per_request": cpu / max(count, 1) * 1e6,
    }


def _sample_window(
    sample: Callable[[], float] | None, start: float, end: float
) -> tuple[float, float] | None:
    """``sample()`` at the monotonic times ``start`` and ``end`` (sleeping until each)."""
    if sample is None:
        return None
    time.sleep(max(0.0, start - time.monotonic()))
    first = sample()
    time.sleep(max(0.0, end - time.monotonic()))
    return first, sample()


def _server_fields(server: tuple[float, float] | None, count: int) -> dict[str, float]:
    if server is None:
        return {}
    cpu = server[1] - server[0]
    return {"server_cpu_s": cpu, "server_cpu_us_per_request": cpu / max(count, 1) * 1e6}


# --- h2load engine -----------------------------------------------------------------------------


_GRPC_HEADERS = ("-H", "content-type: application/grpc", "-H", "te: trailers")


def run_h2load(
    target: str,
    body: bytes,
    *,
    concurrency: int,
    seconds: float,
    warmup: float,
    answer_bytes: int,
    connections: int | None = None,
    threads: int = 1,
    server_cpu: Callable[[], float] | None = None,
    path: str = INFER,
    messages: int = 1,
) -> dict[str, Any]:
    """Calls through h2load; ``answer_bytes``: DATA bytes of one good call's answer (framed).

    ``connections`` defaults to ``concurrency`` (one call in flight per connection); with fewer,
    the calls are spread over them as concurrent HTTP/2 streams. ``messages`` > 1 (for
    ``ModelStreamInfer``): each call sends that many requests at once in its body, each with its
    own id, and half-closes; requests/s then counts messages, and latency is the whole call's.
    """
    if shutil.which("h2load") is None:
        raise RuntimeError("h2load is not installed: apt-get install nghttp2-client")
    connections = connections or concurrency
    per_connection = -(-concurrency // connections)
    scratch = Path(tempfile.mkdtemp(prefix="grpc-load-"))
    try:
        request = scratch / "request.bin"
        request.write_bytes(call_body(body, messages))
        log = scratch / "requests.log"
        base = [
            "h2load",
            f"-c{connections}",
            f"-m{per_connection}",
            f"-t{threads}",
            "-d",
            str(request),
            *_GRPC_HEADERS,
            f"http://{target}{path}",
        ]
        if warmup > 0:
            subprocess.run([*base, f"-D{max(1, round(warmup))}"], capture_output=True, check=True)
        before = os.times()
        server0 = server_cpu() if server_cpu else None
        output = subprocess.run(
            [*base, f"-D{max(1, round(seconds))}", f"--log-file={log}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        server = (server0, server_cpu()) if server_cpu else None
        after = os.times()
        cpu = (after.children_user - before.children_user) + (
            after.children_system - before.children_system
        )
        import numpy as np

        rows = np.loadtxt(log, dtype=np.int64, ndmin=2) if log.stat().st_size else None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    parsed = parse_h2load(output)
    done = parsed["done"]
    good = min(done, parsed["data_bytes"] // answer_bytes) if answer_bytes else done
    latencies = rows[:, 2] / 1e3 if rows is not None else []
    p50, p99 = percentiles(latencies)
    duration = max(1, round(seconds))
    return {
        **_server_fields(server, good * messages),
        "rps": good * messages / duration,
        "p50_ms": p50,
        "p99_ms": p99,
        "requests": good * messages,
        "errors": (done - good + parsed["failed"] + parsed["errored"]) * messages,
        "http_non_2xx": done - parsed["status_2xx"],
        "loadgen_cpu_s": cpu,
        "loadgen_cpu_us_per_request": cpu / max(good * messages, 1) * 1e6,
    }


def call_body(body: bytes, messages: int) -> bytes:
    """One call's request body: ``body`` framed, or ``messages`` copies with their own ids."""
    if messages == 1:
        return grpc_frame(body)
    return b"".join(grpc_frame(with_id(body, str(i))) for i in range(messages))


def probe_answer_bytes(target: str, body: bytes, path: str = INFER, messages: int = 1) -> int:
    """DATA bytes of one answer to ``body`` (one call through h2load); 0 if the call failed."""
    with tempfile.NamedTemporaryFile(suffix=".bin") as request:
        request.write(call_body(body, messages))
        request.flush()
        output = subprocess.run(
            ["h2load", "-n1", "-c1", "-d", request.name, *_GRPC_HEADERS, f"http://{target}{path}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    return parse_h2load(output)["data_bytes"]


def parse_h2load(output: str) -> dict[str, int]:
    def number(pattern: str) -> int:
        found = re.search(pattern, output)
        return int(found.group(1)) if found else 0

    data = re.search(r"traffic: .*?\((\d+)\) total, .*?\((\d+)\) headers .*?\((\d+)\) data", output)
    if data is None:
        raise RuntimeError(f"could not read h2load's output:\n{output}")
    return {
        "done": number(r"requests: \d+ total, \d+ started, (\d+) done"),
        "succeeded": number(r"(\d+) succeeded"),
        "failed": number(r"(\d+) failed"),
        "errored": number(r"(\d+) errored"),
        "status_2xx": number(r"status codes: (\d+) 2xx"),
        "data_bytes": int(data.group(3)),
    }


# --- front -------------------------------------------------------------------------------------


def measure(
    target: str,
    *,
    model: str,
    input_name: str,
    shape: list[int],
    datatype: str = "FP32",
    data: bytes | None = None,
    model_version: str = "",
    mode: str = "unary",
    engine: str = "auto",
    concurrency: int = 1,
    seconds: float = 10,
    warmup: float = 2,
    processes: int | None = None,
    streams: int = 16,
    connections: int | None = None,
    server_cpu: Callable[[], float] | None = None,
    stream_burst: int = 64,
) -> dict[str, Any]:
    """One cell. ``data``: the raw little-endian tensor bytes (default: 0.5 in every element).

    ``mode="stream"`` with ``engine="h2load"``: each call sends ``stream_burst`` requests at once
    and half-closes (h2load cannot answer as it reads), so latency is a whole call's.

    ``engine="auto"``: h2load for ``unary`` where it is installed, grpcio otherwise and for
    ``stream``. ``processes`` (grpcio): default 1 below concurrency 16, else 2.
    ``server_cpu``: called at the start and the end of the measured window (e.g. the server's
    process-tree CPU seconds); the difference comes back as ``server_cpu_us_per_request``.
    """
    import numpy as np

    if data is None:
        data = np.full(shape, 0.5, dtype=DATATYPES[datatype]).tobytes()
    body = encode_infer_request(
        model, input_name, datatype, shape, data, model_version=model_version
    )
    if engine == "auto":
        engine = "h2load" if mode == "unary" and shutil.which("h2load") else "grpcio"
    if engine == "h2load":
        if shutil.which("h2load") is None:
            raise RuntimeError("h2load is not installed: apt-get install nghttp2-client")
        # A stream: calls of stream_burst requests each (half-closed once sent), as many calls
        # at once as make up the concurrency.
        messages = 1 if mode == "unary" else min(stream_burst, concurrency)
        path = INFER if mode == "unary" else STREAM_INFER
        answer_bytes = probe_answer_bytes(target, body, path, messages)
        if not answer_bytes:
            raise RuntimeError(f"{path} on {target} failed (a trailers-only answer)")
        calls = max(1, concurrency // messages)
        result = run_h2load(
            target,
            body,
            concurrency=calls,
            seconds=seconds,
            warmup=warmup,
            answer_bytes=answer_bytes,
            connections=connections if mode == "unary" else min(calls, connections or calls),
            server_cpu=server_cpu,
            path=path,
            messages=messages,
        )
    else:
        result = run_grpcio(
            target,
            body,
            mode=mode,
            concurrency=concurrency,
            seconds=seconds,
            warmup=warmup,
            processes=processes or (1 if concurrency < 16 else 2),
            streams=streams,
            server_cpu=server_cpu,
        )
    return {"engine": engine, "mode": mode, "concurrency": concurrency, **result}


def self_check() -> None:
    """The hand-encoded messages agree with tritonclient's generated ones."""
    from tritonclient.grpc import service_pb2

    raw = struct.pack("<4f", 0.5, 1.0, -2.0, 3.5)
    message = encode_infer_request("digits", "image", "FP32", [1, 2, 2, 1], raw, model_version="1")
    parsed = service_pb2.ModelInferRequest.FromString(with_id(message, "r7"))
    assert (parsed.model_name, parsed.model_version, parsed.id) == ("digits", "1", "r7")
    assert (parsed.inputs[0].name, parsed.inputs[0].datatype) == ("image", "FP32")
    assert list(parsed.inputs[0].shape) == [1, 2, 2, 1]
    assert parsed.raw_input_contents[0] == raw
    assert list(service_pb2.ModelInferRequest.FromString(
        encode_infer_request("m", "x", "FP32", [-1, 3], b"")
    ).inputs[0].shape) == [-1, 3]  # fmt: skip
    response = service_pb2.ModelStreamInferResponse(
        infer_response=service_pb2.ModelInferResponse(model_name="digits", id="p.3")
    )
    assert stream_response_id(response.SerializeToString()) == ("p.3", "")
    error = service_pb2.ModelStreamInferResponse(error_message="boom")
    assert stream_response_id(error.SerializeToString()) == ("", "boom")
    print("self-check passed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", help="host:port of the gRPC server")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--model-version", default="")
    parser.add_argument("--input", default="image", help="input tensor name")
    parser.add_argument("--shape", default="1,8,8,1", help="comma-separated, one row")
    parser.add_argument("--datatype", default="FP32", choices=sorted(DATATYPES))
    parser.add_argument("--mode", default="unary", choices=("unary", "stream"))
    parser.add_argument("--engine", default="auto", choices=("auto", "h2load", "grpcio"))
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--processes", type=int, help="grpcio worker processes")
    parser.add_argument("--streams", type=int, default=16, help="stream mode: streams in all")
    parser.add_argument("--connections", type=int, help="h2load: connections (default: c)")
    parser.add_argument("--server-pid", type=int, help="also report this process tree's CPU")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--self-check", action="store_true", help="check the encoding; exit")
    opts = parser.parse_args()
    if opts.self_check:
        self_check()
        return
    if not opts.target:
        parser.error("--target is required")
    server_cpu = None
    if opts.server_pid:
        from serving import tree_cpu_seconds  # benchmarks/ is sys.path[0] when run as a script

        server_cpu = lambda: tree_cpu_seconds(opts.server_pid)  # noqa: E731
    result = measure(
        opts.target,
        model=opts.model,
        input_name=opts.input,
        shape=[int(d) for d in opts.shape.split(",")],
        datatype=opts.datatype,
        model_version=opts.model_version,
        mode=opts.mode,
        engine=opts.engine,
        concurrency=opts.concurrency,
        seconds=opts.seconds,
        warmup=opts.warmup,
        processes=opts.processes,
        streams=opts.streams,
        connections=opts.connections,
        server_cpu=server_cpu,
    )
    if opts.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['engine']} {result['mode']} c={result['concurrency']}: "
            f"{result['rps']:,.0f} rps, p50 {result['p50_ms']:.2f} ms, "
            f"p99 {result['p99_ms']:.2f} ms, "
            f"errors {result['errors']}, load generator CPU "
            f"{result['loadgen_cpu_us_per_request']:.0f} µs/request"
            + (
                f", server CPU {result['server_cpu_us_per_request']:.0f} µs/request"
                if "server_cpu_us_per_request" in result
                else ""
            )
        )


if __name__ == "__main__":
    main()
