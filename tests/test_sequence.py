"""Stateful models (``SequenceHandle``): each sequence's steps in order, in its own slot.

The models here keep real state between requests: a running total per batch row (the Direct
strategy's promise: a sequence's steps always come in the same row) or per sequence id (the
Oldest strategy, with the CORRID control input, and a Triton Python model reading
``correlation_id()`` and ``flags()``). Many sequences run at once, more than there are slots, so
every total being right shows that no step ran out of order, twice, or in another's row.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from coserve import InvalidInput, PythonModel, SequenceFlags, SequenceHandle, TensorSpec
from coserve._exceptions import (
    ConfigError,
    DeadlineExceeded,
    ModelLoadError,
    QueueFull,
    Unsupported,
)
from coserve.models import (
    BatchingConfig,
    ModelConfig,
    ModelRepository,
    SequenceConfig,
    SequenceControl,
)
from coserve.models._triton_config import triton_model_config
from server_models import add_model

CONTROLS = (
    SequenceControl("start", "START"),
    SequenceControl("ready", "READY"),
    SequenceControl("corrid", "CORRID"),
)


class RowTotals:
    """A running total per batch row: reset by START, advanced only on READY rows."""

    def __init__(self, rows: int) -> None:
        self.totals = np.zeros(rows, dtype=np.int64)
        self.batches: list[list[int]] = []  # the CORRID of each row of each batch
        self.gate: threading.Event | None = None

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.gate is not None:
            self.gate.wait(10)
        start, ready = inputs["START"][:, 0], inputs["READY"][:, 0]
        self.batches.append(inputs["CORRID"][:, 0].tolist())
        rows = len(start)
        for row in range(rows):
            if ready[row]:
                if start[row]:
                    self.totals[row] = 0
                self.totals[row] += int(inputs["x"][row, 0])
        return {"total": self.totals[:rows].reshape(rows, 1).copy()}


class IdTotals:
    """A running total per sequence id (the CORRID input): what the Oldest strategy needs."""

    def __init__(self) -> None:
        self.totals: dict[int, int] = {}
        self.lock = threading.Lock()
        self.batch_sizes: list[int] = []

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = np.zeros((len(inputs["x"]), 1), dtype=np.int64)
        ids = inputs["CORRID"][:, 0].tolist()
        assert len(set(ids)) == len(ids), "two steps of one sequence in a batch"
        with self.lock:
            self.batch_sizes.append(len(ids))
            for row, sequence in enumerate(ids):
                if inputs["START"][row, 0]:
                    self.totals[sequence] = 0
                self.totals[sequence] += int(inputs["x"][row, 0])
                out[row, 0] = self.totals[sequence]
        return {"total": out}


def handle_for(
    model: object, *, strategy: str = "direct", rows: int = 4, **options: object
) -> SequenceHandle:
    backend = PythonModel(
        model,  # type: ignore[arg-type]
        name="totals",
        inputs=(
            TensorSpec.of("x", "INT64", [-1, 1]),
            TensorSpec.of("START", "INT32", [-1, 1]),
            TensorSpec.of("READY", "INT32", [-1, 1]),
            TensorSpec.of("CORRID", "UINT64", [-1, 1]),
        ),
        outputs=(TensorSpec.of("total", "INT64", [-1, 1]),),
    )
    sequence = SequenceConfig(strategy, options.pop("max_idle", 5.0), None, CONTROLS)  # type: ignore[arg-type]
    return SequenceHandle(backend, BatchingConfig(max_batch_size=rows, **options), sequence)  # type: ignore[arg-type]


async def run_sequence(handle: SequenceHandle, sequence: int, values: list[int]) -> list[int]:
    """Send one sequence's steps, each after the previous answer, as a client does."""
    totals = []
    for i, value in enumerate(values):
        result = await handle.infer(
            {"x": [[value]]},
            sequence=SequenceFlags(sequence, start=i == 0, end=i == len(values) - 1),
        )
        totals.append(int(result["total"][0, 0]))
    return totals


def running_sums(values: list[int]) -> list[int]:
    sums: list[int] = np.cumsum(values).tolist()
    return sums


@pytest.mark.parametrize("strategy", ["direct", "oldest"])
async def test_many_sequences_at_once_each_keep_their_own_state(strategy: str) -> None:
    """Twelve sequences over four slots (the rest wait for one): every total is its own."""
    model = RowTotals(4) if strategy == "direct" else IdTotals()
    handle = handle_for(model, strategy=strategy, max_concurrent_batches=2)
    plans = {sequence: [sequence * 100 + step for step in range(5)] for sequence in range(1, 13)}
    try:
        results = await asyncio.gather(
            *(run_sequence(handle, sequence, values) for sequence, values in plans.items())
        )
    finally:
        await handle.aclose()
    assert results == [running_sums(values) for values in plans.values()]
    assert handle.active_sequences == 0  # every sequence ended, and gave its place back
    stats = handle.statistics()
    assert stats.completed == 60
    assert stats.mean_batch_size > 1  # sequences were batched together


async def test_direct_gives_a_sequence_the_same_row_for_its_life() -> None:
    """The model sees each sequence id in one row only, and free rows with no sequence."""
    model = RowTotals(4)
    handle = handle_for(model)
    plans = {sequence: [1, 2, 3, 4] for sequence in range(1, 9)}
    try:
        await asyncio.gather(*(run_sequence(handle, s, v) for s, v in plans.items()))
    finally:
        await handle.aclose()
    rows: dict[int, set[int]] = {}
    for batch in model.batches:
        for row, sequence in enumerate(batch):
            if sequence:  # 0: a free slot (READY false)
                rows.setdefault(sequence, set()).add(row)
    assert sorted(rows) == list(plans)
    assert all(len(places) == 1 for places in rows.values())


async def test_a_request_must_name_a_started_sequence() -> None:
    handle = handle_for(RowTotals(4))
    try:
        with pytest.raises(InvalidInput, match="must specify a non-zero or non-empty correlation"):
            await handle.infer({"x": [[1]]})
        with pytest.raises(InvalidInput, match="must specify the START flag"):
            await handle.infer({"x": [[1]]}, sequence=SequenceFlags(7))
        with pytest.raises(InvalidInput, match=r"must specify batch-size 1 .* got 2"):
            await handle.infer({"x": [[1], [2]]}, sequence=SequenceFlags(7, start=True))
        with pytest.raises(InvalidInput, match="integer sequence ids"):
            await handle.infer({"x": [[1]]}, sequence=SequenceFlags("seven", start=True))
        with pytest.raises(
            InvalidInput, match=r"has no input 'START'; its inputs are: x INT64\[-1, 1\]$"
        ):
            await handle.infer({"x": [[1]], "START": [[1]]}, sequence=SequenceFlags(7, True))
        # A sequence that ended takes no more steps, until it starts again.
        await run_sequence(handle, 7, [1, 2])
        with pytest.raises(InvalidInput, match="must specify the START flag"):
            await handle.infer({"x": [[1]]}, sequence=SequenceFlags(7))
        assert await run_sequence(handle, 7, [5, 5]) == [5, 10]
    finally:
        await handle.aclose()


async def test_an_idle_sequence_expires_and_its_next_request_is_told() -> None:
    model = RowTotals(1)
    handle = handle_for(model, rows=1, max_idle=0.2)
    try:
        await handle.infer({"x": [[3]]}, sequence=SequenceFlags(1, start=True))
        await asyncio.sleep(0.4)
        assert handle.active_sequences == 0
        with pytest.raises(
            InvalidInput, match=r"START flag on the first .*: sequence 1 expired after 0.2s"
        ):
            await handle.infer({"x": [[1]]}, sequence=SequenceFlags(1))
        # Its slot was freed: another sequence has it now, and the expired one may restart.
        assert await run_sequence(handle, 2, [4, 4]) == [4, 8]
        assert await run_sequence(handle, 1, [9]) == [9]
    finally:
        await handle.aclose()


async def test_a_start_on_a_running_sequence_starts_it_again() -> None:
    handle = handle_for(RowTotals(2))
    try:
        first = await handle.infer({"x": [[5]]}, sequence=SequenceFlags(3, start=True))
        again = await handle.infer({"x": [[2]]}, sequence=SequenceFlags(3, start=True))
        then = await handle.infer({"x": [[2]]}, sequence=SequenceFlags(3, end=True))
    finally:
        await handle.aclose()
    assert [int(r["total"][0, 0]) for r in (first, again, then)] == [5, 2, 4]


async def test_a_withdrawn_first_step_passes_its_start_to_the_next() -> None:
    """A client that gave up on its first request has a sequence that starts at its second."""
    model = RowTotals(2)
    model.totals[1] = 1000  # what an earlier sequence left in row 1: a START resets it
    handle = handle_for(model, rows=2)
    gate = model.gate = threading.Event()
    try:
        blocking = asyncio.ensure_future(
            handle.infer({"x": [[1]]}, sequence=SequenceFlags(1, start=True))
        )
        await asyncio.sleep(0.1)  # sequence 1's step runs and holds the model
        withdrawn = handle.infer_nowait({"x": [[100]]}, sequence=SequenceFlags(2, start=True))
        following = handle.infer_nowait({"x": [[7]]}, sequence=SequenceFlags(2, end=True))
        withdrawn.cancel()
        gate.set()
        await blocking
        assert int((await following)["total"][0, 0]) == 7  # reset by the carried START
    finally:
        gate.set()
        await handle.aclose()


async def test_a_step_that_waits_past_its_deadline_fails_and_the_sequence_goes_on() -> None:
    model = RowTotals(1)
    handle = handle_for(model, rows=1)
    gate = model.gate = threading.Event()
    try:
        first = handle.infer_nowait({"x": [[1]]}, sequence=SequenceFlags(1, start=True))
        late = handle.infer_nowait({"x": [[10]]}, sequence=SequenceFlags(1), timeout=0.05)
        with pytest.raises(DeadlineExceeded):
            await late
        gate.set()
        assert int((await first)["total"][0, 0]) == 1
        last = await handle.infer({"x": [[2]]}, sequence=SequenceFlags(1, end=True))
        assert int(last["total"][0, 0]) == 3  # the late step never ran
    finally:
        gate.set()
        await handle.aclose()


async def test_closing_lets_queued_steps_run_first() -> None:
    model = RowTotals(1)
    handle = handle_for(model, rows=1)
    gate = model.gate = threading.Event()
    steps = [
        handle.infer_nowait({"x": [[i]]}, sequence=SequenceFlags(1, start=i == 0)) for i in range(3)
    ]
    closing = asyncio.ensure_future(handle.aclose(grace_period=5))
    await asyncio.sleep(0.05)
    with pytest.raises(Exception, match="unloaded"):
        await handle.infer({"x": [[1]]}, sequence=SequenceFlags(2, start=True))
    gate.set()
    await closing
    assert [int((await step)["total"][0, 0]) for step in steps] == [0, 1, 3]


def test_a_control_input_the_model_lacks_is_a_load_error() -> None:
    backend = PythonModel(
        RowTotals(1),
        name="totals",
        inputs=(TensorSpec.of("x", "INT64", [-1, 1]),),
        outputs=(TensorSpec.of("total", "INT64", [-1, 1]),),
    )
    with pytest.raises(ModelLoadError, match="START control input 'START' is not an input"):
        SequenceHandle(backend, BatchingConfig(), SequenceConfig(controls=CONTROLS[:1]))


# -- from a model folder ---------------------------------------------------------------------------

ROWS_CONFIG = """
platform = "python"
[batching]
max_batch_size = 4
[sequence]
strategy = "direct"
max_idle = 5.0
start = "START"
ready = "READY"
[[inputs]]
name = "x"
datatype = "INT64"
shape = [-1, 1]
[[inputs]]
name = "START"
datatype = "INT32"
shape = [-1, 1]
[[inputs]]
name = "READY"
datatype = "INT32"
shape = [-1, 1]
[[outputs]]
name = "total"
datatype = "INT64"
shape = [-1, 1]
"""

ROWS_MODEL = """
import numpy as np

totals = np.zeros(4, dtype=np.int64)

def predict(inputs):
    rows = len(inputs["x"])
    for row in range(rows):
        if inputs["READY"][row, 0]:
            if inputs["START"][row, 0]:
                totals[row] = 0
            totals[row] += inputs["x"][row, 0]
    return {"total": totals[:rows].reshape(rows, 1).copy()}
"""

TRITON_CONFIG = """
backend: "python"
max_batch_size: 8
sequence_batching {
  max_sequence_idle_microseconds: 5000000
  oldest { max_candidate_sequences: 3 }
}
input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
"""

TRITON_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.totals = {}

    def execute(self, requests):
        responses = []
        for request in requests:
            sequence = request.correlation_id()
            if request.flags() & pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START:
                self.totals[sequence] = 0
            value = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            self.totals[sequence] += int(value[0, 0])
            if request.flags() & pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END:
                total = self.totals.pop(sequence)
            else:
                total = self.totals[sequence]
            out = pb_utils.Tensor("OUTPUT", np.array([[total]], dtype=np.int32))
            responses.append(pb_utils.InferenceResponse([out]))
        return responses
"""


async def test_config_toml_sequence_table_makes_a_stateful_model(tmp_path: Path) -> None:
    add_model(tmp_path, "rows", ROWS_CONFIG, ROWS_MODEL)
    async with ModelRepository(tmp_path) as repository:
        handle = repository.get("rows")
        assert isinstance(handle, SequenceHandle)
        assert [spec.name for spec in handle.inputs] == ["x"]  # START and READY are coserve's
        plans = {sequence: [sequence, 1, 2] for sequence in range(10, 16)}
        results = await asyncio.gather(*(run_sequence(handle, s, v) for s, v in plans.items()))
        config = triton_model_config(repository.config("rows"), handle.inputs, handle.outputs)
    assert results == [running_sums(values) for values in plans.values()]
    # GET /v2/models/rows/config shows it as Triton would show such a model.
    assert [tensor["name"] for tensor in config["input"]] == ["x"]
    assert "dynamic_batching" not in config
    batching = config["sequence_batching"]  # with every default field, as Triton prints it
    assert batching["direct"]["max_queue_delay_microseconds"] == 0
    assert batching["max_sequence_idle_microseconds"] == 5_000_000
    assert [
        (c["name"], c["control"][0]["kind"], c["control"][0]["int32_false_true"])
        for c in batching["control_input"]
    ] == [("START", "CONTROL_SEQUENCE_START", [0, 1]), ("READY", "CONTROL_SEQUENCE_READY", [0, 1])]


def test_config_toml_sequence_table_is_checked(tmp_path: Path) -> None:
    add_model(tmp_path, "rows", ROWS_CONFIG.replace('"direct"', '"newest"'), ROWS_MODEL)
    with pytest.raises(ConfigError, match=r"sequence\.strategy: expected direct or oldest"):
        ModelConfig.load(tmp_path / "rows" / "config.toml")


async def test_a_triton_python_model_sees_each_step_with_its_id_and_flags(tmp_path: Path) -> None:
    """Oldest, three candidate sequences at once: execute() gets one request per sequence."""
    folder = tmp_path / "accumulate"
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(TRITON_CONFIG)
    (folder / "1" / "model.py").write_text(TRITON_MODEL)
    async with ModelRepository(tmp_path) as repository:
        handle = repository.get("accumulate")
        assert isinstance(handle, SequenceHandle)
        assert handle.sequence.strategy == "oldest"

        async def run(sequence: int, values: list[int]) -> list[int]:
            totals = []
            for i, value in enumerate(values):
                result = await handle.infer(
                    {"INPUT": np.array([[value]], dtype=np.int32)},
                    sequence=SequenceFlags(sequence, i == 0, i == len(values) - 1),
                )
                totals.append(int(result["OUTPUT"][0, 0]))
            return totals

        plans = {sequence: [sequence, 2, 3, 4] for sequence in range(1, 8)}
        results = await asyncio.gather(*(run(s, v) for s, v in plans.items()))
    assert results == [running_sums(values) for values in plans.values()]


# -- what a review found: each of these failed once -----------------------------------------------


async def test_many_sequences_that_gave_up_while_waiting_leave_the_slot_usable() -> None:
    """Hundreds of waiting sequences whose only steps ran out of time give the place on."""
    model = RowTotals(1)
    handle = handle_for(model, rows=1, max_queue_size=2000)
    gate = model.gate = threading.Event()
    try:
        holder = handle.infer_nowait({"x": [[1]]}, sequence=SequenceFlags(1, True, True))
        gave_up = [
            handle.infer_nowait({"x": [[1]]}, sequence=SequenceFlags(s, True, True), timeout=0.05)
            for s in range(2, 1200)
        ]
        for future in gave_up:
            with pytest.raises(DeadlineExceeded):
                await future
        gate.set()
        await holder
        assert await run_sequence(handle, 5000, [2, 3]) == [2, 5]
        assert handle.active_sequences == 0
    finally:
        gate.set()
        await handle.aclose()


class SlowFirst(IdTotals):
    """IdTotals whose first batch is slow; records when each step of sequence 1 ran."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.spans: list[tuple[str, int]] = []

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self.lock:
            self.calls += 1
            first = self.calls == 1
        values = inputs["x"][:, 0].tolist()
        self.spans.append(("start", values[0]))
        if first:
            time.sleep(0.3)
        self.spans.append(("end", values[0]))
        return super().__call__(inputs)


async def test_a_step_that_times_out_while_running_still_runs_before_the_next() -> None:
    """Oldest on two slots: the next step of a sequence waits for its predecessor's batch."""
    model = SlowFirst()
    handle = handle_for(model, strategy="oldest", max_concurrent_batches=2)
    try:
        first = handle.infer_nowait(
            {"x": [[1]]}, sequence=SequenceFlags(1, start=True), timeout=0.1
        )
        with pytest.raises(DeadlineExceeded, match="in the model's queue or running"):
            await first
        second = await handle.infer({"x": [[2]]}, sequence=SequenceFlags(1, end=True))
    finally:
        await handle.aclose()
    assert model.spans == [("start", 1), ("end", 1), ("start", 2), ("end", 2)]
    assert int(second["total"][0, 0]) == 3  # the first step ran (its caller had given up)


async def test_a_start_that_times_out_in_the_models_queue_passes_to_the_next_step() -> None:
    model = RowTotals(2)
    model.totals[1] = 1000  # what an earlier sequence left in row 1
    handle = handle_for(model, rows=2)
    gate = model.gate = threading.Event()
    try:
        blocking = handle.infer_nowait({"x": [[1]]}, sequence=SequenceFlags(1, start=True))
        await asyncio.sleep(0.05)  # sequence 1's batch holds the model
        late = handle.infer_nowait(
            {"x": [[100]]}, sequence=SequenceFlags(2, start=True), timeout=0.05
        )
        with pytest.raises(DeadlineExceeded):
            await late
        following = handle.infer_nowait({"x": [[7]]}, sequence=SequenceFlags(2, end=True))
        gate.set()
        await blocking
        assert int((await following)["total"][0, 0]) == 7  # started: row 1 was reset
    finally:
        gate.set()
        await handle.aclose()


async def test_steps_of_different_shapes_batched_together_each_run() -> None:
    """Oldest: two sequences' steps with different widths run as two groups, both answered."""

    def widths(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"total": inputs["x"].sum(axis=1, keepdims=True)}

    backend = PythonModel(
        widths,
        name="widths",
        inputs=(TensorSpec.of("x", "INT64", [-1, -1]), TensorSpec.of("START", "INT32", [-1, 1])),
        outputs=(TensorSpec.of("total", "INT64", [-1, 1]),),
    )
    handle = SequenceHandle(
        backend,
        BatchingConfig(max_batch_size=4, max_wait=0.05),
        SequenceConfig("oldest", controls=CONTROLS[:1]),
    )
    try:
        one, two = await asyncio.gather(
            handle.infer({"x": [[1, 2]]}, sequence=SequenceFlags(1, True, True)),
            handle.infer({"x": [[5]]}, sequence=SequenceFlags(2, True, True)),
        )
    finally:
        await handle.aclose()
    assert (int(one["total"][0, 0]), int(two["total"][0, 0])) == (3, 5)
    assert handle.statistics().batches == 1


async def test_a_sequence_id_out_of_the_corrid_range_is_refused_at_once() -> None:
    backend = PythonModel(
        IdTotals(),
        name="narrow",
        inputs=(
            TensorSpec.of("x", "INT64", [-1, 1]),
            TensorSpec.of("START", "INT32", [-1, 1]),
            TensorSpec.of("CORRID", "INT32", [-1, 1]),
        ),
        outputs=(TensorSpec.of("total", "INT64", [-1, 1]),),
    )
    controls = (CONTROLS[0], CONTROLS[2])  # START and CORRID
    handle = SequenceHandle(
        backend, BatchingConfig(max_batch_size=2), SequenceConfig("oldest", controls=controls)
    )
    try:
        with pytest.raises(InvalidInput, match=r"from 1 to 2147483647 .* got 1099511627776"):
            await handle.infer({"x": [[1]]}, sequence=SequenceFlags(2**40, True))
        assert await run_sequence(handle, 2**31 - 1, [4, 4]) == [4, 8]
    finally:
        await handle.aclose()


async def test_closing_frees_the_places_of_idle_sequences_for_those_waiting() -> None:
    """Sequence 1 holds the only slot, idle; sequence 2 waits: closing lets 2 run."""
    handle = handle_for(RowTotals(1), rows=1)
    await handle.infer({"x": [[1]]}, sequence=SequenceFlags(1, start=True))
    waiting = handle.infer_nowait({"x": [[4]]}, sequence=SequenceFlags(2, True, True))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await handle.aclose(grace_period=2)
    assert int((await waiting)["total"][0, 0]) == 4


FAILING_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            if value[0, 0] < 0:
                error = pb_utils.TritonError("negative", pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse([], error=error))
            else:
                out = pb_utils.Tensor("OUTPUT", value * 10)
                responses.append(pb_utils.InferenceResponse([out]))
        return responses
"""


async def test_a_triton_python_response_error_fails_its_own_request_only(tmp_path: Path) -> None:
    folder = tmp_path / "picky"
    (folder / "1").mkdir(parents=True)
    config = TRITON_CONFIG.replace(
        "max_candidate_sequences: 3", "max_queue_delay_microseconds: 50000"
    )
    (folder / "config.pbtxt").write_text(config)
    (folder / "1" / "model.py").write_text(FAILING_MODEL)
    async with ModelRepository(tmp_path) as repository:
        handle = repository.get("picky")
        good, bad = await asyncio.gather(
            handle.infer(
                {"INPUT": np.array([[3]], np.int32)}, sequence=SequenceFlags(1, True, True)
            ),
            handle.infer(
                {"INPUT": np.array([[-3]], np.int32)}, sequence=SequenceFlags(2, True, True)
            ),
            return_exceptions=True,
        )
        assert handle.statistics().batches == 1
    assert isinstance(good, dict)
    assert int(good["OUTPUT"][0, 0]) == 30
    assert isinstance(bad, InvalidInput)
    assert "negative" in str(bad)


async def test_a_full_sequence_model_refuses_and_counts_it() -> None:
    """Its bound is its requests in flight; a refusal shows in its statistics, as a batcher's."""
    model = RowTotals(1)
    handle = handle_for(model, rows=1, max_queue_size=2)
    gate = model.gate = threading.Event()
    try:
        held = [
            handle.infer_nowait({"x": [[1]]}, sequence=SequenceFlags(1, start=i == 0))
            for i in range(2)
        ]
        assert handle.queue_full
        with pytest.raises(QueueFull):
            handle.infer_nowait({"x": [[1]]}, sequence=SequenceFlags(2, start=True))
        stats = handle.statistics()
        assert (stats.rejected, stats.rejected_queue_full) == (1, 1)
        gate.set()
        await asyncio.gather(*held)
        assert not handle.queue_full
    finally:
        gate.set()
        await handle.aclose()


async def test_batching_of_a_sequence_model_is_not_changed_live() -> None:
    """configure() is refused: a sequence model's slots are its batch rows."""
    handle = handle_for(lambda inputs: {"total": inputs["x"]})
    try:
        with pytest.raises(Unsupported, match="cannot be changed while it serves"):
            handle.configure({"max_wait": 0.01})
    finally:
        await handle.aclose()
