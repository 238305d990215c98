"""``coserve tune``: its rules on synthetic numbers, and a whole run against a real server.

The server (one per module, with ``--admin``) serves ``linear``, a Python model whose batch of
``n`` rows sleeps 2 ms + 2 ms per row: with ``p99<25ms``, ``2·s(B) = 4 + 4B`` ms keeps batch
sizes up to 5 and prunes 8. The integration tests assert what the run did with the numbers it
measured (the fit, the pruning it implies, the front, the block, the restored options), never
a throughput a busy 2-core machine could miss.
"""

from __future__ import annotations

import io
import json
import math
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from coserve.bench import _tune
from coserve.bench._tune import EXIT_CONFIRM_FAILED, EXIT_NO_CONFIG, _defaults, _sweep_axis, main
from coserve.bench._tune_search import (
    LatencyModel,
    TuneConfig,
    batching_block,
    fit_latency,
    pareto_front,
    plateaued,
    prune_batch_sizes,
    ramp,
)
from helpers import ServerProcess
from server_models import add_model

LINEAR_CONFIG = """
platform = "python"
warm_up = false
[batching]
max_batch_size = 16
max_concurrent_batches = 2
max_wait = 0.0003
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
LINEAR_MODEL = """
import time

def predict(inputs):
    time.sleep(0.002 + 0.002 * len(inputs["x"]))
    return {"y": inputs["x"]}
"""
QUICK = ["--window", "0.25s", "--warmup", "0.2s", "--max-windows", "3", "--quiet"]


# The rules, on synthetic numbers -------------------------------------------------------------


def test_fit_recovers_a_line_from_batch_means() -> None:
    """Least squares gives back c and a; one batch size alone, or one point, fixes no line."""
    points = [(n, 0.002 + 0.0015 * n + (0.0001 if n % 2 else -0.0001)) for n in (1, 2, 4, 8, 16)]
    model = fit_latency(points)
    assert model is not None
    assert model.c == pytest.approx(0.002, abs=2e-4)
    assert model.a == pytest.approx(0.0015, rel=0.05)
    assert model.points == 5
    assert model.predict(10) == pytest.approx(model.c + 10 * model.a)
    exact = fit_latency([(1, 0.003), (3, 0.007)])
    assert exact is not None
    assert (exact.c, exact.a) == (pytest.approx(0.001), pytest.approx(0.002))
    assert fit_latency([(4, 0.01), (4, 0.011)]) is None
    assert fit_latency([(4, 0.01)]) is None
    assert fit_latency([]) is None


def test_pruning_drops_sizes_whose_two_batches_exceed_the_slo() -> None:
    """B goes when 2·s(B) > the bound (at it, it stays); the smallest size always stays."""
    model = LatencyModel(c=0.002, a=0.002, points=4)
    pruning = prune_batch_sizes([16, 1, 2, 4, 8], model, 0.020)
    assert pruning.kept == [1, 2, 4]  # 2·s(4) = 20 ms: exactly the bound
    assert pruning.pruned == [8, 16]
    everything = prune_batch_sizes([4, 8], model, 0.005)
    assert everything.kept == [4]
    assert everything.pruned == [8]


def test_plateau_rule() -> None:
    """A plateau is the last N steps gaining < 5% over the best before them; zeros are one."""
    assert not plateaued([100, 200, 400, 800, 1600], 4)
    assert not plateaued([100, 101, 102, 103], 4)  # not yet N steps after a reference
    assert plateaued([100, 101, 102, 103, 104], 4)
    assert not plateaued([100, 101, 102, 103, 106], 4)  # 6% over the best before
    assert plateaued([100, 200, 150, 180, 190, 205], 4)  # a drop, then less than 5% back
    assert plateaued([500, 300], 1)
    assert plateaued([0.0, 0.0, 0.0], 2)
    assert not plateaued([0.0, 10.0], 1)
    assert not plateaued([1, 2, 3], 0)


@dataclass(frozen=True)
class _Point:
    throughput: float
    meets_slo: bool
    concurrency: int


def test_ramp_stops_at_the_slo_or_a_plateau() -> None:
    """The ramp keeps the point that broke the SLO and measures nothing after it."""
    asked: list[int] = []

    def measure(curve: dict[int, tuple[float, bool]]) -> Any:
        def one(c: int) -> _Point:
            asked.append(c)
            return _Point(curve[c][0], curve[c][1], c)

        return one

    broken = {1: (100.0, True), 2: (190.0, True), 4: (300.0, False), 8: (310.0, False)}
    points = ramp(measure(broken), [1, 2, 4, 8])
    assert [p.concurrency for p in points] == [1, 2, 4]
    asked.clear()
    flat = {c: (100.0 + c / 100, True) for c in (1, 2, 4, 8, 16, 32, 64)}
    points = ramp(measure(flat), list(flat), plateau_steps=2)
    assert asked == [1, 2, 4]  # 2 and 4 gained < 5% over 1


def test_an_axis_stops_when_larger_values_stop_paying() -> None:
    """Along max_wait (say) two larger values in a row without 5% more end the axis."""
    tried: list[float] = []

    def measure(value: float) -> float:
        tried.append(value)
        return {1: 100.0, 2: 200.0, 3: 201.0, 4: 202.0, 5: 900.0}[int(value)]

    assert _sweep_axis([1, 2, 3, 4, 5], measure) == 202.0
    assert tried == [1, 2, 3, 4]
    tried.clear()
    assert _sweep_axis([1, 2], lambda v: 0.0, stop_on_zero=True) == 0.0
    assert _sweep_axis([], measure) == 0.0


def test_pareto_front() -> None:
    """Non-dominated points on (more throughput, less latency); equal points both stay."""
    points = [
        (100.0, 5.0),  # 0: front (least latency)
        (200.0, 8.0),  # 1: front
        (150.0, 9.0),  # 2: dominated by 1
        (300.0, 20.0),  # 3: front (most throughput)
        (300.0, 25.0),  # 4: dominated by 3 (same throughput, more latency)
        (200.0, 8.0),  # 5: equal to 1: stays
        (0.0, 1.0),  # 6: no throughput: never on it
        (400.0, math.inf),  # 7: no latency: never on it
        (90.0, 5.0),  # 8: dominated by 0 (same latency, less throughput)
    ]
    assert pareto_front(points) == [0, 1, 5, 3]
    assert pareto_front([]) == []
    front = pareto_front(points)
    for i in front:  # nothing beats a front point on both axes
        assert not any(
            q[0] >= points[i][0] and q[1] <= points[i][1] and q != points[i]
            for q in points
            if math.isfinite(q[1]) and q[0] > 0
        )


def test_batching_block_is_ready_toml() -> None:
    """The winner prints as a [batching] table with the options a model's config reads."""
    block = batching_block(TuneConfig(1, 2, 8, 0.0005))
    assert tomllib.loads(block) == {
        "batching": {"max_batch_size": 8, "max_wait": 0.0005, "max_concurrent_batches": 2}
    }
    with_workers = batching_block(TuneConfig(2, 1, 4, 0.0))
    assert "--workers 2" in with_workers
    assert tomllib.loads(with_workers)["batching"]["max_wait"] == 0.0
    # measured with the model's adaptive mode off: the block says so, and sets no target
    was_adaptive = batching_block(TuneConfig(1, 1, 8, 0.0), "p99<20ms")
    assert "without target_latency = 'p99<20ms'" in was_adaptive
    assert "target_latency" not in tomllib.loads(was_adaptive)["batching"]


def test_defaults_come_from_the_options_in_force() -> None:
    """Powers of two up to the loaded max (and the max itself); slots up to it, at most 4."""
    args = _tune.parser().parse_args(["m", "--slo", "p99<20ms"])
    sizes, slots = _defaults(args, {"max_batch_size": 12, "max_concurrent_batches": 8})
    assert (sizes, slots) == ([1, 2, 4, 8, 12], [1, 2, 3, 4])
    args = _tune.parser().parse_args(["m", "--slo", "p99<20ms", "--max-batch-sizes", "1:8:x2"])
    assert _defaults(args, {"max_batch_size": 64, "max_concurrent_batches": 1}) == (
        [1, 2, 4, 8],
        [1],
    )
    waits = _tune.parser().parse_args(["m", "--slo", "p99<1s", "--max-waits", "1ms,0,500us"])
    assert waits.max_waits == [0.0, 0.0005, 0.001]


def test_bad_flags() -> None:
    """--workers needs --repository; --model needs a server URL; --slo is required."""
    assert main(["m", "--slo", "p99<20ms", "--workers", "1,2"]) == 2
    assert main(["http://h:1/v2/models/m", "--model", "n", "--slo", "p99<20ms"]) == 2
    with pytest.raises(SystemExit):
        main(["m"])


def test_an_unreachable_server_is_an_error() -> None:
    """Nothing listening: exit 1, with no load started."""
    assert main(["m", "--url", "http://127.0.0.1:9", "--slo", "p99<20ms"]) == 1


# Against a real server ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    add_model(root, "linear", LINEAR_CONFIG, LINEAR_MODEL)
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[ServerProcess]:
    process = ServerProcess("--model-repository", str(repository), "--admin")
    try:
        process.wait_ready()
        yield process
    finally:
        process.close()


def _options(server: ServerProcess) -> dict[str, Any]:
    with urllib.request.urlopen(f"{server.url}/v2/admin/models/linear/batching") as answer:
        options: dict[str, Any] = json.loads(answer.read())["batching"]
    return options


@dataclass
class _Tuned:
    status: int
    record: dict[str, Any]
    block: str
    plot: Path
    before: dict[str, Any]
    after: dict[str, Any]


@pytest.fixture(scope="module")
def tuned(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> _Tuned:
    """One whole run: profile, prune, sweep, report, confirm, restore."""
    out = tmp_path_factory.mktemp("tune")
    before = _options(server)
    status = main(
        ["linear", "--url", server.url, "--slo", "p99<25ms", "--max-batch-sizes", "2,4,8",
         "--max-waits", "0,1ms", "--slots", "1", "-c", "1:16:x4", *QUICK,
         "--json", str(out / "tune.json"), "--write-config", str(out / "batching.toml"),
         "--plot", str(out / "front.html")]
    )  # fmt: skip
    return _Tuned(
        status,
        json.loads((out / "tune.json").read_text()),
        (out / "batching.toml").read_text(),
        out / "front.html",
        before,
        _options(server),
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_tune_finds_a_configuration(tuned: _Tuned) -> None:
    """Some configuration meets the SLO; the best is the fastest point that does."""
    # Confirmation is a measurement on a shared machine: either outcome is a finished run.
    assert tuned.status in (0, EXIT_CONFIRM_FAILED)
    record = tuned.record
    best = record["best"]
    assert best is not None
    assert best["meets_slo"]
    meeting = [p for c in record["configs"] for p in c["points"] if p["meets_slo"]]
    assert best["throughput_per_s"] == max(p["throughput_per_s"] for p in meeting)
    confirm = record["confirm"]
    assert confirm["step"]["kind"] == "open"
    assert confirm["step"]["rate"] == pytest.approx(0.9 * best["throughput_per_s"], abs=0.1)
    assert confirm["meets_slo"] == (tuned.status == 0)
    for config in record["configs"]:
        points = config["points"]
        assert points, config
        # Each ramp ends at the first point that missed the SLO, if any.
        missed = [i for i, p in enumerate(points) if not p["meets_slo"]]
        assert missed in ([], [len(points) - 1])


@pytest.mark.slow
def test_pruning_follows_the_fitted_model(tuned: _Tuned) -> None:
    """The sizes pruned are those with 2·s(B) over the bound for the c and a it fitted."""
    profile = tuned.record["profile"]
    fit = profile["model"]
    assert fit is not None
    assert fit["points"] >= 2
    assert {p["rows"] for p in profile["points"]} != {1.0}  # the profile made several sizes
    model = LatencyModel(fit["c_ms"] / 1e3, fit["a_ms_per_row"] / 1e3, fit["points"])
    expected = prune_batch_sizes([2, 4, 8], model, 0.025)
    assert tuned.record["pruning"] == expected.as_dict()
    # 8 rows sleep 18 ms at least: twice that is over 25 ms however busy the machine.
    assert 8 in expected.pruned
    tried = {c["config"]["max_batch_size"] for c in tuned.record["configs"]}
    assert tried <= set(expected.kept)


@pytest.mark.slow
def test_the_block_and_the_front(tuned: _Tuned) -> None:
    """The written [batching] block is the best's, from the space; the front is non-dominated."""
    options = tomllib.loads(tuned.block)["batching"]
    best = tuned.record["best"]["config"]
    assert options == {k: best[k] for k in ("max_batch_size", "max_wait", "max_concurrent_batches")}
    assert options["max_batch_size"] in (2, 4)
    assert options["max_wait"] in (0.0, 0.001)
    assert options["max_concurrent_batches"] == 1
    assert tuned.block == tuned.record["batching_toml"]
    everything = [
        (p["throughput_per_s"], p["latency_ms"])
        for c in tuned.record["configs"]
        for p in c["points"]
    ]
    front = [(p["throughput_per_s"], p["latency_ms"]) for p in tuned.record["pareto"]]
    assert front
    assert front == sorted(front)
    assert sorted(front) == sorted(everything[i] for i in pareto_front(everything))
    page = tuned.plot.read_text()
    assert "<svg" in page
    assert "Pareto" in page


@pytest.mark.slow
def test_the_options_are_restored(tuned: _Tuned) -> None:
    """After the run the model's batching is what it was before (GET admin)."""
    assert tuned.record["restored"] is True
    assert tuned.after == tuned.before
    assert tuned.before["max_wait"] == pytest.approx(0.0003)


@pytest.mark.slow
def test_an_interrupted_run_restores_the_options(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in the middle of the sweep: exit 130, and the options are back as they were."""
    before = _options(server)
    seen: list[dict[str, Any]] = []

    def interrupted(self: Any, config: TuneConfig, concurrency: int) -> Any:
        seen.append(_options(server))  # the sweep's options were in force
        raise KeyboardInterrupt

    monkeypatch.setattr(_tune._Tuner, "measure", interrupted)
    status = main(["linear", "--url", server.url, "--slo", "p99<25ms", "--max-batch-sizes",
                   "4", *QUICK])  # fmt: skip
    assert status == 130
    assert seen
    assert seen[0]["max_batch_size"] == 4
    assert seen[0]["max_concurrent_batches"] == 1
    assert _options(server) == before


@pytest.mark.slow
def test_no_configuration_meets_an_impossible_slo(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 6; a size the server refuses is skipped, not fatal; the options are restored."""
    before = _options(server)
    out = tmp_path / "tune.json"
    status = main(["linear", "--url", server.url, "--slo", "p99<1ms", "--max-batch-sizes",
                   "1,32", "--max-waits", "0,1ms", "-c", "1,2", "--slots", "1", *QUICK,
                   "--json", str(out)])  # fmt: skip
    assert status == EXIT_NO_CONFIG
    assert "no configuration met" in capsys.readouterr().err
    record = json.loads(out.read_text())
    assert record["best"] is None
    assert record["batching_toml"] is None
    configs = {c["label"]: c for c in record["configs"]}
    # A lone request misses at wait 0, so the larger wait is never tried.
    assert [p["concurrency"] for p in configs["B=1 wait=0 slots=1"]["points"]] == [1]
    assert "B=1 wait=1ms slots=1" not in configs
    assert "above the 16" in configs["B=32 wait=0 slots=1"]["skipped"]
    assert record["profile"]["model"] is None  # its size (32) was refused too
    assert _options(server) == before


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_workers_start_their_own_server(repository: Path, tmp_path: Path) -> None:
    """With --repository tune serves the model itself with --admin --workers N."""
    out = tmp_path / "tune.json"
    status = main(["linear", "--repository", str(repository), "--workers", "1", "--slo",
                   "p99<50ms", "--max-batch-sizes", "1", "--max-waits", "0", "-c", "1",
                   "--no-confirm", *QUICK, "--json", str(out)])  # fmt: skip
    assert status == 0
    record = json.loads(out.read_text())
    assert record["best"]["config"]["workers"] == 1
    assert record["confirm"] is None
    assert record["restored"] is None  # the server it started is gone, nothing to restore


def test_report_renders_synthetic_results(tmp_path: Path) -> None:
    """The table marks the best and the front; the plots draw the front (terminal and SVG)."""
    from rich.console import Console

    from coserve.bench._tune_report import ConfigResult, config_table, front_of, plot_front
    from coserve.bench._tune_search import RampPoint

    def point(config: TuneConfig, c: int, throughput: float, p99: float) -> RampPoint:
        return RampPoint(config, c, throughput, p99, p99 / 2, p99, p99 < 20, mean_batch=2.0)

    small, large = TuneConfig(1, 1, 2, 0.0), TuneConfig(1, 1, 8, 0.001)
    results = [
        ConfigResult(small, [point(small, 1, 100, 5), point(small, 4, 300, 12)]),
        ConfigResult(large, [point(large, 1, 90, 9), point(large, 4, 280, 30)]),
        ConfigResult(TuneConfig(1, 1, 32, 0.0), skipped="above the loaded 16"),
    ]
    front = front_of(results)
    assert [(p.config, p.concurrency) for p in front] == [(small, 1), (small, 4)]
    assert results[0].best == results[0].points[1]
    assert results[1].best == results[1].points[0]
    console = Console(record=True, width=200, file=io.StringIO())
    console.print(config_table(results, "p99", front, results[0].best))
    text = console.export_text()
    assert "B=2 wait=0 slots=1 ◀ best" in text
    assert "skipped: above the loaded 16" in text
    drawn = plot_front(
        tmp_path / "front.svg", results, front, statistic="p99", limit_ms=20.0,
        title="t", table=None, width=80,
    )  # fmt: skip
    assert drawn is not None
    assert "Pareto front" in drawn
    assert "<svg" in (tmp_path / "front.svg").read_text()
