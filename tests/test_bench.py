"""``coserve bench``: its parsing, and its measurements against a real server.

The server (one per module) serves Python models whose batch takes a known time: ``sleepy``
sleeps 2 ms + 0.2 ms per row (an accelerator-like model: the CPU is free while it runs),
``slow`` 20 ms per request one at a time (50 requests/s at most), and ``broken`` always fails.
The open-loop correction is checked by stopping the server (SIGSTOP) for a known second.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from coserve.batching._target import LatencyTarget, parse_duration, parse_targets
from coserve.bench._cli import _profile_points, main, parse_range, parser, resolve_target
from coserve.bench._load import new_histogram
from coserve.bench._payload import (
    DimRange,
    InputSpec,
    Target,
    encode_bodies,
    fetch_input_specs,
    load_input_file,
    parse_shapes,
    random_inputs,
)
from coserve.bench._report import compare, terminal_plot, write_plot
from coserve.bench._runner import (
    LoadRunner,
    Step,
    StepResult,
    WindowPolicy,
    WindowStats,
    count_within,
)
from coserve.bench._server_stats import ServerSnapshot, difference
from helpers import ServerProcess
from server_models import add_model

SLEEPY_CONFIG = """
platform = "python"
warm_up = false
[batching]
max_batch_size = 16
max_queue_size = 4096
[[inputs]]
name = "x"
datatype = "FP32"
shape = [-1, 4]
[[outputs]]
name = "y"
datatype = "FP32"
shape = [-1, 4]
"""
SLEEPY_MODEL = """
import time

def predict(inputs):
    time.sleep(0.002 + 0.0002 * len(inputs["x"]))
    return {"y": inputs["x"]}
"""
SLOW_CONFIG = SLEEPY_CONFIG.replace("max_batch_size = 16", "max_batch_size = 1")
SLOW_MODEL = """
import time

def predict(inputs):
    time.sleep(0.02)
    return {"y": inputs["x"]}
"""
BROKEN_MODEL = """
def predict(inputs):
    raise ValueError("this model always fails")
"""
TEXT_CONFIG = """
platform = "python"
warm_up = false
[batching]
max_batch_size = 1
[[inputs]]
name = "tokens"
datatype = "INT32"
shape = [-1, -1]
[[outputs]]
name = "length"
datatype = "INT32"
shape = [-1]
"""
TEXT_MODEL = """
import numpy as np

def predict(inputs):
    tokens = inputs["tokens"]
    return {"length": np.full(len(tokens), tokens.shape[1], dtype=np.int32)}
"""

QUICK = ["--window", "0.4", "--warmup", "0.3", "--max-windows", "4", "--quiet"]


# Parsing --------------------------------------------------------------------------------------


def test_ranges() -> None:
    """Single values, lists, doubling and adding ranges; nonsense is refused."""
    assert parse_range("1:16:x2", whole=True) == [1, 2, 4, 8, 16]
    assert parse_range("1:20:x4", whole=True) == [1, 4, 16, 20]
    assert parse_range("100:400:100", whole=False) == [100, 200, 300, 400]
    assert parse_range("1,3,9", whole=True) == [1, 3, 9]
    assert parse_range("250.5", whole=False) == [250.5]
    for bad in ("0", "-1", "8:2", "1:8:x1", "1:8:0", "a", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_range(bad, whole=True)


def test_latency_targets() -> None:
    """p99<20ms and friends parse to seconds; a bare number or a bad percentile is refused."""
    assert LatencyTarget.parse("p99<20ms") == LatencyTarget(99.0, 0.020)
    assert LatencyTarget.parse(" p99.9 <= 1.5s ") == LatencyTarget(99.9, 1.5)
    assert LatencyTarget.parse("mean<250us") == LatencyTarget(None, 250e-6)
    assert LatencyTarget.parse("max<1s").percentile == 100
    assert str(LatencyTarget.parse("p99<20ms")) == "p99<20ms"
    assert parse_targets("p50<5ms,p99<20ms") == (
        LatencyTarget(50.0, 0.005),
        LatencyTarget(99.0, 0.020),
    )
    assert parse_duration("2.5s") == 2.5
    for bad in ("p99<20", "p0<1ms", "p101<1ms", "q99<1ms", "p99>1ms", "p99<0ms"):
        with pytest.raises(ValueError, match=r"p99|percentile|bound|duration"):
            LatencyTarget.parse(bad)
    with pytest.raises(ValueError, match="no latency target"):
        parse_targets(" , ")


def _args(*argv: str) -> argparse.Namespace:
    return parser().parse_args(list(argv))


def test_targets_from_names_and_urls() -> None:
    """A model name uses --url; a URL names the protocol, host, port, model and version."""
    plain = resolve_target(_args("digits", "--url", "http://10.0.0.2:9000"))
    assert (plain.base_url, plain.model, plain.protocol) == ("http://10.0.0.2:9000", "digits", "v2")
    assert plain.grpc_address == "10.0.0.2:8001"
    v2 = resolve_target(_args("http://h:8000/v2/models/m/versions/3"))
    assert (v2.base_url, v2.model, v2.version, v2.protocol) == ("http://h:8000", "m", "3", "v2")
    assert v2.infer_path() == "/v2/models/m/versions/3/infer"
    tf = resolve_target(_args("http://h:8501/v1/models/half"))
    assert (tf.protocol, tf.infer_path()) == ("tfserving", "/v1/models/half:predict")
    ws = resolve_target(_args("ws://h:8000/v2/models/m"))
    assert (ws.protocol, ws.base_url, ws.infer_path()) == (
        "ws",
        "http://h:8000",
        "/v2/models/m/infer/ws",
    )
    grpc = resolve_target(_args("grpc://h:9001/m", "--protocol", "grpc-stream"))
    assert (grpc.protocol, grpc.grpc_address, grpc.model) == ("grpc-stream", "h:9001", "m")
    binary = resolve_target(_args("m", "--protocol", "v2-binary"))
    assert binary.protocol == "v2-binary"
    for bad in ("http://h:8000/nothing", "a/b", "grpc://h:1/"):
        with pytest.raises(Exception, match=r"model|path"):
            resolve_target(_args(bad))


def test_profiles() -> None:
    """ramp, step and spike become piecewise-linear rate points over the duration."""
    ramp = _profile_points(_args("m", "--profile", "ramp", "--rate", "100:500", "--duration", "10"))
    assert ramp == ((0.0, 100.0), (10.0, 500.0))
    step = _profile_points(
        _args("m", "--profile", "step", "--rate", "100:300:100", "--duration", "9s")
    )
    assert [rate for _, rate in step] == [100, 100, 200, 200, 300, 300]
    spike = _profile_points(
        _args("m", "--profile", "spike", "--rate", "100:900", "--duration", "6s",
              "--spike-at", "2s", "--spike-length", "1s")
    )  # fmt: skip
    assert spike[2] == (2.0, 900.0)
    assert spike[-1] == (3.0, 100.0)


def test_shapes_and_random_inputs() -> None:
    """Variable dimensions need --shape; a range draws one length per variant, for all inputs."""
    assert parse_shapes(["tokens:1,8..64"]) == {"tokens": (1, DimRange(8, 64))}
    with pytest.raises(ValueError, match="whole number"):
        parse_shapes(["tokens:1,0"])
    specs = [InputSpec("tokens", "INT32", (-1, -1)), InputSpec("mask", "BOOL", (-1, -1))]
    with pytest.raises(Exception, match="variable dimension"):
        random_inputs(specs, rows=1, shapes={}, value_range=None)
    shape = (2, DimRange(3, 9))
    variants = random_inputs(
        specs, rows=2, shapes={"tokens": shape, "mask": shape}, value_range=(5, 7)
    )
    lengths = {v["tokens"].shape[1] for v in variants}
    assert len(lengths) > 1
    assert all(3 <= n <= 9 for n in lengths)
    for variant in variants:
        assert variant["tokens"].shape == variant["mask"].shape
        assert variant["tokens"].dtype == np.int32
        assert variant["mask"].dtype == np.bool_
        assert variant["tokens"].min() >= 5
        assert variant["tokens"].max() <= 7
    images = random_inputs([InputSpec("x", "FP32", (-1, 4))], rows=3, shapes={}, value_range=None)
    assert images[0]["x"].shape == (3, 4)
    assert images[0]["x"].dtype == np.float32


def test_input_files(tmp_path: Path) -> None:
    """.npy and .npz split samples into requests; JSON lines are one request each."""
    spec = [InputSpec("x", "FP32", (-1, 4))]
    np.save(tmp_path / "x.npy", np.arange(40, dtype=np.float32).reshape(10, 4))
    requests = load_input_file(tmp_path / "x.npy", spec, rows=3)
    assert len(requests) == 3
    assert requests[1]["x"][0, 0] == 12
    np.savez(tmp_path / "x.npz", x=np.ones((4, 4), np.float32))
    assert len(load_input_file(tmp_path / "x.npz", spec, rows=2)) == 2
    lines = tmp_path / "x.jsonl"
    lines.write_text(
        '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}\n'
        '{"x": [[5, 6, 7, 8]]}\n'
    )
    requests = load_input_file(lines, spec, rows=1)
    assert [r["x"].tolist() for r in requests] == [[[1, 2, 3, 4]], [[5, 6, 7, 8]]]
    lines.write_text('{"y": [[1]]}\n')
    with pytest.raises(Exception, match="not an input"):
        load_input_file(lines, spec, rows=1)
    with pytest.raises(Exception, match=r"\.npy, \.npz or \.jsonl"):
        load_input_file(tmp_path / "x.csv", spec, rows=1)


def test_response_heads() -> None:
    """Status, body length and whether the server closes, however the headers are spelled."""
    from coserve.bench._engines import _parse_head

    assert _parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 12") == ("200", 12, False)
    assert _parse_head(b"HTTP/1.1 503 X\r\nContent-Length:3\r\nConnection:close") == (
        "503",
        3,
        True,
    )
    assert _parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 1") == ("200", 1, True)
    assert _parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive") == (
        "200",
        1,
        False,
    )
    assert _parse_head(b"HTTP/1.1 204 No Content") == ("204", 0, False)
    assert _parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked") == (
        "chunked responses are not supported"
    )
    assert _parse_head(b"HTTP/1.1 200 OK") == "a response without Content-Length"


def test_binary_bodies_carry_their_header_length() -> None:
    """The binary-data extension: a JSON header, then the raw tensor, its length given."""
    target = Target("http://h:1", "m", None, "v2-binary", "h:2")
    variant = {"x": np.arange(8, dtype=np.float32).reshape(2, 4)}
    (body,) = encode_bodies(target, [variant])
    assert body.header_length is not None
    header = json.loads(body.data[: body.header_length])
    assert header["inputs"][0]["parameters"] == {"binary_data_size": 32}
    assert body.data[body.header_length :] == variant["x"].tobytes()


def test_server_window_difference() -> None:
    """Two /metrics snapshots give the batches between them, by size range."""
    start = ServerSnapshot(size_buckets={1: 5, 2: 5, 4: 6, float("inf"): 6}, batches=6, rows=9)
    end = ServerSnapshot(
        size_buckets={1: 8, 2: 10, 4: 12, float("inf"): 13},
        batches=13,
        rows=30,
        exec_sum=0.07,
        exec_count=7,
        close_reasons={"full": 3},
    )
    window = difference(start, end)
    assert window.batches == 7
    assert window.rows == 21
    assert window.mean_batch == 3
    assert window.batch_sizes == {"1": 3, "2": 2, "3-4": 1, ">4": 1}
    assert window.execution_ms == pytest.approx(10.0)
    assert window.queue_ms is None
    assert window.close_reasons == {"full": 3}


def test_compare_finds_regressions() -> None:
    """Throughput down or p99 up by more than the threshold is a regression, per step."""
    base = {"steps": [{"label": "c=1", "throughput_per_s": 1000, "latency_ms": {"p99": 2.0}}]}
    same = [{"label": "c=1", "throughput_per_s": 950, "latency_ms": {"p99": 2.1}}]
    assert compare(base, same, 0.10) == ([], [])
    worse = [
        {"label": "c=1", "throughput_per_s": 800, "latency_ms": {"p99": 3.0}},
        {"label": "c=8", "throughput_per_s": 1, "latency_ms": {}},
    ]
    regressions, unmatched = compare(base, worse, 0.10)
    assert [r.what for r in regressions] == ["throughput/s", "p99 ms"]
    assert unmatched == ["c=8"]


def test_no_server_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    """An unreachable server: exit 1 and a message naming the URL, before any load."""
    assert main(["m", "--url", "http://127.0.0.1:9", "-c", "1"]) == 1
    assert "127.0.0.1:9" in capsys.readouterr().err


# Against a real server -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("repository")
    add_model(root, "sleepy", SLEEPY_CONFIG, SLEEPY_MODEL)
    add_model(root, "slow", SLOW_CONFIG, SLOW_MODEL)
    add_model(root, "broken", SLEEPY_CONFIG, BROKEN_MODEL)
    add_model(root, "text", TEXT_CONFIG, TEXT_MODEL)
    process = ServerProcess("--model-repository", str(root), grpc=True)
    try:
        process.wait_ready()
        yield process
    finally:
        process.close()


@pytest.mark.slow
def test_sweep_writes_json_csv_and_plot(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A closed-loop sweep: every request answered, the server's batches read beside them."""
    out = tmp_path / "run.json"
    status = main(
        ["sleepy", "--url", server.url, "-c", "1,8", *QUICK, "--slo", "p99<1s", "--json",
         str(out), "--csv", str(tmp_path / "run.csv"), "--plot", str(tmp_path / "run.png")]
    )  # fmt: skip
    assert status == 0, capsys.readouterr().err
    steps = json.loads(out.read_text())["steps"]
    assert [s["label"] for s in steps] == ["c=1", "c=8"]
    for step in steps:
        assert step["errors"] == {}
        assert step["throughput_per_s"] > 0
        # Every request takes at least the model's 2 ms.
        assert step["latency_ms"]["p50"] >= 2.0
        server_side = step["server"]
        assert server_side["batches"] > 0
        assert server_side["execution_ms"] >= 2.0
        assert server_side["outcomes"]["completed"] > 0
        # The server counted about the requests the client timed in the same windows.
        client = step["throughput_per_s"] * step["seconds"]
        assert abs(server_side["rows"] - client) <= 0.3 * client + 20
        assert step["goodput_per_s"]["p99<1s"] == pytest.approx(step["throughput_per_s"])
    # One request at a time runs batches of one; eight at a time shares batches.
    assert steps[0]["server"]["mean_batch"] == 1
    assert steps[1]["server"]["mean_batch"] > 1.5
    csv_lines = (tmp_path / "run.csv").read_text().splitlines()
    assert csv_lines[0].startswith("Step,Concurrency")
    assert "(usec)" in csv_lines[0]
    assert [line.split(",")[0] for line in csv_lines[1:]] == ["c=1", "c=8"]
    assert (tmp_path / "run.png").read_bytes()[:4] == b"\x89PNG"

    # Against a far worse baseline the run passes; against a far better one it fails. (A run
    # compared with its own record would hang on the noise of short windows on a busy machine.)
    def baseline(factor: float) -> Path:
        record = json.loads(out.read_text())
        for step in record["steps"]:
            step["throughput_per_s"] *= factor
            step["latency_ms"]["p99"] /= factor
        path = tmp_path / f"baseline-{factor}.json"
        path.write_text(json.dumps(record))
        return path

    assert main(["sleepy", "--url", server.url, "-c", "1,8", *QUICK,
                 "--compare", str(baseline(0.1))]) == 0  # fmt: skip
    assert main(["sleepy", "--url", server.url, "-c", "1", *QUICK,
                 "--compare", str(baseline(10))]) == 3  # fmt: skip
    assert "regression" in capsys.readouterr().err


def _run_once(server: ServerProcess, protocol: str, model: str = "sleepy") -> object:
    target = Target(server.url, model, None, protocol, server.grpc_target)
    variants = random_inputs(fetch_input_specs(target), rows=2, shapes={}, value_range=None)
    with LoadRunner(
        target, encode_bodies(target, variants), processes=1, timeout=10,
        metrics_url=f"{server.url}/metrics",
    ) as runner:  # fmt: skip
        return runner.run(
            Step("closed", concurrency=4), WindowPolicy(window=0.4, warmup=0.3, fixed_windows=2)
        )


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["v2", "v2-binary", "tfserving", "ws", "grpc", "grpc-stream"])
def test_every_protocol_reaches_the_model(server: ServerProcess, protocol: str) -> None:
    """Each protocol's requests are answered with success, and the server ran them in batches."""
    result = _run_once(server, protocol)
    assert result.errors == {}  # type: ignore[attr-defined]
    assert result.ok > 0  # type: ignore[attr-defined]
    assert result.server.rows >= result.ok * 2 * 0.8  # type: ignore[attr-defined]  # 2 rows each


@pytest.mark.slow
def test_errors_are_counted_by_status(server: ServerProcess) -> None:
    """A model that fails: no latency, every request counted under its HTTP status."""
    result = _run_once(server, "v2", model="broken")
    assert result.ok == 0  # type: ignore[attr-defined]
    (key,) = result.errors  # type: ignore[attr-defined]
    assert key.startswith(("4", "5"))


@pytest.mark.slow
def test_variable_lengths_per_request(server: ServerProcess, tmp_path: Path) -> None:
    """--shape with a range sends requests of several lengths (the model reports them)."""
    out = tmp_path / "run.json"
    assert main(["text", "--url", server.url, "-c", "2", "--shape", "tokens:1,3..9",
                 *QUICK, "--json", str(out)]) == 0  # fmt: skip
    assert json.loads(out.read_text())["steps"][0]["errors"] == {}


@pytest.mark.slow
def test_open_loop_latency_counts_from_the_intended_time(server: ServerProcess) -> None:
    """The server stops for a second: requests meant to be sent meanwhile wait for it.

    On one connection, the requests due during the stop queue in the client. Their latency
    from the intended send time spreads over the second (about half above 0.5 s); from the
    actual send only the one request caught at the server waits. Rate 100/s, constant.
    """
    target = Target(server.url, "sleepy", None, "v2", server.grpc_target)
    variants = random_inputs(fetch_input_specs(target), rows=1, shapes={}, value_range=None)
    step = Step("open", rate=100, arrival="constant", max_connections=1)
    policy = WindowPolicy(window=1.0, warmup=0.5, fixed_windows=4)

    def stall() -> None:
        time.sleep(0.7 + 1.2)  # into the second measured window
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            time.sleep(1.0)
        finally:
            os.kill(server.process.pid, signal.SIGCONT)

    with LoadRunner(
        target, encode_bodies(target, variants), processes=1, timeout=10, metrics_url=None
    ) as runner:
        stopper = threading.Thread(target=stall)
        stopper.start()
        try:
            result = runner.run(step, policy)
        finally:
            stopper.join()
    assert result.corrected is not None
    assert result.errors == {}
    assert result.corrected.get_max_value() >= 0.95e6  # µs: the whole second
    waited_long = result.ok - count_within(result.corrected, 0.5)
    assert waited_long >= 30  # about 50 of the 100 due in the second
    raw_long = result.ok - count_within(result.raw, 0.5)
    assert raw_long <= 3
    assert result.offered == pytest.approx(100, rel=0.1)


@pytest.mark.slow
def test_an_offered_rate_beyond_capacity_exits_4(
    server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    """Slow serves at most 50/s: at 400/s offered, the run says so and exits 4."""
    status = main(["slow", "--url", server.url, "--rate", "400", "--timeout", "1s", "--window",
                   "0.5", "--warmup", "0.2", "--max-windows", "3", "--quiet"])  # fmt: skip
    assert status == 4
    assert "offered rate not achieved" in capsys.readouterr().err


@pytest.mark.slow
def test_find_max_brackets_the_capacity(server: ServerProcess, tmp_path: Path) -> None:
    """Slow's capacity is 50/s: the highest rate meeting p99<400ms is below it, and not far."""
    out = tmp_path / "max.json"
    status = main(["slow", "--url", server.url, "--find-max", "--slo", "p99<400ms",
                   "--window", "0.5", "--warmup", "0.3", "--max-windows", "3", "--quiet",
                   "--json", str(out)])  # fmt: skip
    assert status == 0
    found = json.loads(out.read_text())["find_max"]
    assert 15 <= found["rate"] <= 52


@pytest.mark.slow
def test_a_spike_profile_is_a_time_series(server: ServerProcess, tmp_path: Path) -> None:
    """--profile spike: the offered rate in the spike's windows is the spike's."""
    out = tmp_path / "spike.json"
    assert main(["sleepy", "--url", server.url, "--profile", "spike", "--rate", "50:400",
                 "--duration", "3s", "--spike-at", "1s", "--spike-length", "1s",
                 "--window", "0.5", "--warmup", "0.2", "--quiet", "--json", str(out)],
                ) == 0  # fmt: skip
    windows = json.loads(out.read_text())["steps"][0]["windows"]
    assert len(windows) == 6
    offered = [w["offered_per_s"] or 0 for w in windows]
    assert min(offered[2:4]) > 3 * max(offered[0], offered[5])


def _result(concurrency: int, latency_us: int, ok: int) -> StepResult:
    histogram = new_histogram()
    for _ in range(ok):
        histogram.record_value(latency_us)
    window = WindowStats(0, 1.0, ok, {}, histogram, None, 0, 0, 0, [0.1])
    return StepResult(Step("closed", concurrency=concurrency), [window], [window], True, None)


def test_terminal_and_file_plots(tmp_path: Path) -> None:
    """The terminal plot (plotext) and the HTML file draw a sweep's points."""
    results = [_result(1, 500, 100), _result(8, 2000, 400)]
    text = terminal_plot(results, width=80, height=20)
    assert "latency (ms) against throughput" in text
    write_plot(tmp_path / "sweep.html", results, "a sweep")
    page = (tmp_path / "sweep.html").read_text()
    assert "<svg" in page
    assert "c=8" in page
    with pytest.raises(ValueError, match="png"):
        write_plot(tmp_path / "sweep.gif", results, "a sweep")


def test_stability_needs_three_windows_that_agree() -> None:
    """Stable: the last three windows within the tolerance in throughput and mean latency."""
    policy = WindowPolicy(tolerance=0.10)

    def windows(*pairs: tuple[int, int]) -> list[WindowStats]:
        return [_result(1, latency, ok).windows[0] for ok, latency in pairs]

    judge = LoadRunner._judge
    assert not judge(windows((100, 1000), (100, 1000)), policy)  # too few
    assert judge(windows((50, 3000), (100, 1000), (105, 1040), (98, 1010)), policy)
    assert not judge(windows((100, 1000), (100, 1000), (120, 1000)), policy)  # throughput
    assert not judge(windows((100, 1000), (100, 1000), (100, 1300)), policy)  # latency
