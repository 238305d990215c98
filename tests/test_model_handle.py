"""ModelHandle mechanics, seen from inside the model: grouping, padding, splitting, isolation.

A Python-backend model records every batch it is called with, so each test can check what the
model actually received, not only what came back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import numpy as np
import pytest

from coserve import BatchFailed, InvalidInput, PythonModel, TensorSpec
from coserve.models import BatchingConfig, ModelHandle


class SumRows:
    """Sums each row; records the shapes of every batch it is called with."""

    def __init__(self, fail_on_width: int | None = None) -> None:
        self.calls: list[tuple[int, ...]] = []
        self.fail_on_width = fail_on_width

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.calls.append(x.shape)
        if x.shape[1] == self.fail_on_width:
            raise RuntimeError(f"cannot handle width {x.shape[1]}")
        return {"total": x.sum(axis=1), "width": np.full(len(x), x.shape[1])}


def handle_for(model: SumRows, **batching: object) -> ModelHandle:
    backend = PythonModel(
        model,
        name="sum",
        inputs=(TensorSpec.of("x", "FP32", [-1, -1]),),
        outputs=(TensorSpec.of("total", "FP32", [-1]), TensorSpec.of("width", "INT64", [-1])),
    )
    return ModelHandle(backend, BatchingConfig(**batching))  # type: ignore[arg-type]


async def test_rows_with_different_shapes_are_never_concatenated() -> None:
    """Rows of widths 2 and 3 go to the batcher's bucket of their shape: a batch per width."""
    model = SumRows()
    handle = handle_for(model, max_batch_size=16)
    try:
        results = await asyncio.gather(
            handle.infer({"x": [[1, 2]]}),
            handle.infer({"x": [[1, 2, 3]]}),
            handle.infer({"x": [[5, 5], [1, 1]]}),
        )
    finally:
        await handle.aclose()
    assert sorted(model.calls) == [(1, 3), (3, 2)]
    assert [r["total"].tolist() for r in results] == [[3.0], [6.0], [10.0, 2.0]]
    assert handle.statistics().batches == 2


async def test_batch_is_padded_to_the_next_allowed_size_and_padding_is_cut() -> None:
    """With pad_to_allowed_batch_size, 3 rows run as 4 and only 3 come back."""
    model = SumRows()
    handle = handle_for(
        model, max_batch_size=8, allowed_batch_sizes=(1, 4, 8), pad_to_allowed_batch_size=True
    )
    try:
        results = await asyncio.gather(*(handle.infer({"x": [[i, i]]}) for i in range(3)))
    finally:
        await handle.aclose()
    assert model.calls == [(4, 2)]
    assert [r["total"].tolist() for r in results] == [[0.0], [2.0], [4.0]]


async def test_requests_over_max_batch_size_are_split_in_order() -> None:
    """A 10-row request with max_batch_size 4 runs as 4 + 4 + 2 and returns rows in order."""
    model = SumRows()
    handle = handle_for(model, max_batch_size=4)
    try:
        rows = np.arange(20, dtype=np.float32).reshape(10, 2)
        result = await handle.infer({"x": rows})
    finally:
        await handle.aclose()
    assert sorted(model.calls) == [(2, 2), (4, 2), (4, 2)]
    assert result["total"].tolist() == rows.sum(axis=1).tolist()


async def test_a_failing_shape_group_fails_only_its_own_requests() -> None:
    """If the model raises on one shape group, requests of other shapes in the batch succeed."""
    model = SumRows(fail_on_width=3)
    handle = handle_for(model, max_batch_size=16)
    try:
        good, bad = await asyncio.gather(
            handle.infer({"x": [[1, 1]]}),
            handle.infer({"x": [[1, 1, 1]]}),
            return_exceptions=True,
        )
    finally:
        await handle.aclose()
    assert isinstance(good, dict)
    assert good["total"].tolist() == [2.0]
    assert isinstance(bad, BatchFailed)
    assert "cannot handle width 3" in str(bad.__cause__)


async def test_a_request_the_model_refuses_fails_alone_not_its_batch() -> None:
    """A batch the model fails on runs again one request at a time: only the culprit fails.

    The culprit's error is the model's InvalidInput (a 400) when the model refused its input,
    the others get their answers.
    """
    calls: list[list[float]] = []

    def no_negatives(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(inputs["x"].tolist())
        if (inputs["x"] < 0).any():
            raise InvalidInput("negative values are not allowed")
        return {"y": inputs["x"] * 2}

    backend = PythonModel(
        no_negatives,
        name="positive",
        inputs=(TensorSpec.of("x", "FP32", [-1]),),
        outputs=(TensorSpec.of("y", "FP32", [-1]),),
    )
    handle = ModelHandle(backend, BatchingConfig(max_batch_size=8, max_wait=0.05))
    try:
        results = await asyncio.gather(
            handle.infer({"x": [1.0]}),
            handle.infer({"x": [-1.0]}),
            handle.infer({"x": [2.0]}),
            return_exceptions=True,
        )
    finally:
        await handle.aclose()
    first, refused, third = results
    assert isinstance(first, dict)
    assert first["y"].tolist() == [2.0]
    assert isinstance(refused, InvalidInput)
    assert isinstance(third, dict)
    assert third["y"].tolist() == [4.0]
    assert calls == [[1.0, -1.0, 2.0], [1.0], [-1.0], [2.0]]


async def test_model_output_of_the_wrong_length_fails_the_group_clearly() -> None:
    """A model that returns too few rows fails its requests with a message saying so."""
    backend = PythonModel(
        lambda inputs: {"y": inputs["x"][:1]},
        name="short",
        inputs=(TensorSpec.of("x", "FP32", [-1]),),
        outputs=(TensorSpec.of("y", "FP32", [-1]),),
    )
    handle = ModelHandle(backend, BatchingConfig())
    try:
        with pytest.raises(BatchFailed, match="returned 1 rows for output 'y'; expected 2"):
            await handle.infer({"x": [1.0, 2.0]})
    finally:
        await handle.aclose()


async def test_bytes_inputs_accept_strings_and_refuse_numbers() -> None:
    """A BYTES input takes str (encoded as UTF-8) or bytes, and refuses numbers."""
    backend = PythonModel(
        lambda inputs: {"length": np.array([len(v) for v in inputs["text"]])},
        name="lengths",
        inputs=(TensorSpec.of("text", "BYTES", [-1]),),
        outputs=(TensorSpec.of("length", "INT64", [-1]),),
    )
    handle = ModelHandle(backend, BatchingConfig())
    try:
        result = await handle.infer({"text": ["héllo", "ab"]})
        assert result["length"].tolist() == [6, 2]
        result = await handle.infer({"text": np.array([b"xyz"], dtype=object)})
        assert result["length"].tolist() == [3]
        with pytest.raises(InvalidInput, match="expected BYTES"):
            await handle.infer({"text": [1, 2]})
    finally:
        await handle.aclose()


async def test_warm_up_runs_every_batch_size() -> None:
    """warm_up calls the model once per size: powers of two up to max_batch_size."""
    model = SumRows()
    handle = handle_for(model, max_batch_size=12)
    try:
        handle.backend.warm_up(handle.batching.warm_up_sizes())
    finally:
        await handle.aclose()
    assert [shape[0] for shape in model.calls] == [1, 2, 4, 8, 12]


async def test_no_signature_handle_is_made_once_closing_began() -> None:
    """for_signature after aclose began is refused, so no batcher escapes the close."""
    from coserve import BatcherClosed
    from coserve.models import Backend
    from coserve.models._signatures import Signature

    class TwoSignatures(PythonModel):
        signature_name = "main"
        signatures = {  # noqa: RUF012 - a test double
            "main": Signature("main", "tensorflow/serving/predict", {}, {}),
            "other": Signature("other", "tensorflow/serving/predict", {}, {}),
        }

        def for_signature(self, name: str) -> Backend:
            if name in ("", "main"):
                return self
            return PythonModel(
                lambda inputs: {"y": inputs["x"]},
                name="two",
                inputs=(TensorSpec.of("x", "FP32", [-1]),),
                outputs=(TensorSpec.of("y", "FP32", [-1]),),
            )

    backend = TwoSignatures(
        lambda inputs: {"y": inputs["x"]},
        name="two",
        inputs=(TensorSpec.of("x", "FP32", [-1]),),
        outputs=(TensorSpec.of("y", "FP32", [-1]),),
    )
    handle = ModelHandle(backend, BatchingConfig())
    other = handle.for_signature("other")
    assert handle.for_signature("other") is other  # made once
    assert (await other.infer({"x": [1.0]}))["y"].tolist() == [1.0]
    closing = asyncio.create_task(handle.aclose())
    await asyncio.sleep(0)  # aclose has begun, its batchers not yet closed
    with pytest.raises(BatcherClosed):
        handle.for_signature("late")
    await closing
    assert other.closed


def test_lenient_shapes_need_only_rows() -> None:
    """strict_shapes=False (a TF1 graph's inputs): rank and sizes are the model's to check."""
    from coserve.models._validation import check_inputs

    spec = (TensorSpec.of("x", "FP32", [-1, 1]),)
    arrays, rows = check_inputs("m", spec, {"x": [1.0, 2.0, 5.0]}, max_rows=8, strict_shapes=False)
    assert rows == 3
    assert arrays["x"].shape == (3,)
    with pytest.raises(InvalidInput, match="rank"):
        check_inputs("m", spec, {"x": [1.0, 2.0]}, max_rows=8)
    with pytest.raises(InvalidInput, match="scalar"):
        check_inputs("m", spec, {"x": 1.0}, max_rows=8, strict_shapes=False)


async def test_a_request_to_a_model_without_batch_dimension_is_never_split() -> None:
    """Chunks of an unbatched model's tensor would be computed apart: it runs whole, always.

    Its first dimension is the model's own (not rows): a request counts as one row, so one
    longer than ``max_batch_size`` is not split either.
    """
    backend = PythonModel(
        lambda inputs: {"y": inputs["x"] - inputs["x"].mean()},
        name="centre",
        inputs=(TensorSpec.of("x", "FP32", [-1]),),
        outputs=(TensorSpec.of("y", "FP32", [-1]),),
    )
    backend.batched = False
    handle = ModelHandle(backend, BatchingConfig(max_batch_size=4, combine_requests=False))
    try:
        whole = await handle.infer({"x": [1.0, 2.0, 3.0, 6.0]})
        assert whole["y"].tolist() == [-2.0, -1.0, 0.0, 3.0]
        longer = await handle.infer({"x": [1.0, 1.0, 1.0, 1.0, 6.0]})
        assert longer["y"].tolist() == [-1.0, -1.0, -1.0, -1.0, 4.0]
    finally:
        await handle.aclose()
    assert handle.statistics().batch_sizes == {1: 2}  # each request one inference


class Gated(SumRows):
    """SumRows that blocks each batch until released (a sync model runs in a thread)."""

    def __init__(self) -> None:
        super().__init__()
        import threading

        self.gate = threading.Event()

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.gate.wait(10)  # set by the test; the bound only ends a failed run
        return super().__call__(inputs)


async def test_configure_changes_the_next_batches_and_loses_nothing() -> None:
    """A lower max_batch_size splits the next batches; requests queued meanwhile all answer."""
    model = Gated()
    handle = handle_for(model, max_batch_size=8)
    try:
        first = asyncio.ensure_future(handle.infer({"x": [[1.0, 1.0]]}))
        for _ in range(200):  # until the first batch holds the model's thread
            await asyncio.sleep(0.01)
            if handle.statistics().running_batches:
                break
        queued = [asyncio.ensure_future(handle.infer({"x": [[float(i), 0.0]]})) for i in range(6)]
        await asyncio.sleep(0.05)
        config = handle.configure({"max_batch_size": 2, "max_wait": 0.0, "timeout": 30.0})
        assert (config.max_batch_size, config.timeout) == (2, 30.0)
        assert handle.batching is config
        model.gate.set()
        results = await asyncio.gather(first, *queued)
    finally:
        await handle.aclose()
    assert [r["total"].tolist() for r in results] == [[2.0], *[[float(i)] for i in range(6)]]
    assert model.calls == [(1, 2), (2, 2), (2, 2), (2, 2)]


async def test_configure_refuses_unknown_options_and_limits_above_the_loaded_ones() -> None:
    """Unknown options, bad values and limits above those loaded are InvalidInput; none apply."""
    handle = handle_for(SumRows(), max_batch_size=8, max_concurrent_batches=2)
    try:
        before = handle.batching
        with pytest.raises(InvalidInput, match="'padding' cannot be changed while serving"):
            handle.configure({"padding": None})
        with pytest.raises(InvalidInput, match="max_batch_size 16 is above the 8"):
            handle.configure({"max_batch_size": 16})
        with pytest.raises(InvalidInput, match="max_concurrent_batches 3 is above the 2"):
            handle.configure({"max_concurrent_batches": 3})
        with pytest.raises(InvalidInput, match="max_wait must be >= 0"):
            handle.configure({"max_batch_size": 4, "max_wait": -1})
        with pytest.raises(InvalidInput, match="max_queue_size needs a value"):
            handle.configure({"max_batch_size": 4, "max_queue_size": None})
        assert handle.batching == before
        handle.configure({"max_batch_size": 4})
        handle.configure({"max_batch_size": 8})  # back up to the loaded limit
        assert handle.batching.max_batch_size == 8
    finally:
        await handle.aclose()


async def test_a_large_request_split_before_the_limit_was_lowered_completes() -> None:
    """Chunks of 8 rows queued under max_batch_size 8 still run after it drops to 2."""
    model = Gated()
    handle = handle_for(model, max_batch_size=8, max_queue_size=64)
    try:
        big = asyncio.ensure_future(handle.infer({"x": [[float(i), 1.0] for i in range(24)]}))
        for _ in range(200):  # until its first chunk holds the model's thread
            await asyncio.sleep(0.01)
            if handle.statistics().running_batches:
                break
        handle.configure({"max_batch_size": 2})
        model.gate.set()
        result = await big
        after = await handle.infer({"x": [[1.0, 1.0]] * 4})  # split at the new limit
    finally:
        await handle.aclose()
    assert result["total"].tolist() == [float(i) + 1.0 for i in range(24)]
    assert after["total"].tolist() == [2.0] * 4
    assert model.calls == [(8, 2), (8, 2), (8, 2), (2, 2), (2, 2)]


async def test_allowed_batch_sizes_bound_a_live_max_batch_size() -> None:
    """A model padded to allowed batch sizes takes only one of them as its new limit."""
    handle = handle_for(SumRows(), max_batch_size=8, allowed_batch_sizes=(2, 4, 8))
    try:
        with pytest.raises(InvalidInput, match="one of its allowed batch sizes"):
            handle.configure({"max_batch_size": 3})
        assert handle.configure({"max_batch_size": 4}).max_batch_size == 4
    finally:
        await handle.aclose()


async def test_the_config_served_shows_the_live_batching() -> None:
    """GET .../config and gRPC ModelConfig show what configure() set, not what was loaded."""
    from coserve.models import ModelConfig
    from coserve.models._triton_config import triton_model_config

    handle = handle_for(SumRows(), max_batch_size=8, max_wait=0.001)
    loaded = ModelConfig("sum", "python", batching=handle.batching)
    try:
        assert handle.live_config(loaded) is loaded
        handle.configure({"max_batch_size": 4})
        handle.configure({"max_wait": 0.003})
        live = handle.live_config(loaded)
        assert (live.batching.max_batch_size, live.batching.max_wait) == (4, 0.003)
        served = triton_model_config(live, handle.inputs, handle.outputs)
        assert served["max_batch_size"] == 4
        assert served["dynamic_batching"]["max_queue_delay_microseconds"] == 3000
    finally:
        await handle.aclose()
