"""ModelNode: graph messages call a real ModelHandle and share its batches, in order.

The model is a Python-backend model that records each batch it is called with, so the tests see
what the model received; no mocks stand in for the handle or the batcher.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from coserve import DeadLetter, Graph, InvalidInput, ModelNode, PythonModel, Signal, TensorSpec
from coserve.models import BatchingConfig, ModelHandle


class Doubler:
    """Doubles its input; records the batch sizes it is called with."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches.append(len(inputs["x"]))
        return {"y": inputs["x"] * 2}


def handle_for(model: Doubler, **batching: Any) -> ModelHandle:
    backend = PythonModel(
        model,
        name="doubler",
        inputs=(TensorSpec.of("x", "FP32", [-1, 1]),),
        outputs=(TensorSpec.of("y", "FP32", [-1, 1]),),
    )
    return ModelHandle(backend, BatchingConfig(**batching))


async def run_session(
    handle: ModelHandle, values: list[Any], **options: Any
) -> tuple[list[Signal[Any]], list[DeadLetter]]:
    dead: list[DeadLetter] = []
    graph = Graph("session", on_dead_letter=dead.append)
    node = graph.add(ModelNode(handle, **options))
    inlet, outlet = graph.inlet(node.inp), graph.outlet(node.out)
    async with graph:
        for i, value in enumerate(values):
            await inlet.send(Signal(value, id=i))
        inlet.close()
        answers = [signal async for signal in outlet]
    return answers, dead


async def test_results_come_back_in_order_with_their_ids() -> None:
    """Each message's outputs are sent on with its id, in the order the messages came."""
    handle = handle_for(Doubler(), max_batch_size=8)
    try:
        answers, dead = await run_session(
            handle, [{"x": [[float(i)]]} for i in range(6)], concurrency=4
        )
    finally:
        await handle.aclose()
    assert [signal.id for signal in answers] == list(range(6))
    assert [float(signal.value["y"][0, 0]) for signal in answers] == [2.0 * i for i in range(6)]
    assert not dead


async def test_sessions_share_the_models_batches() -> None:
    """Many session graphs calling one handle are served in shared batches."""
    model = Doubler()
    handle = handle_for(model, max_batch_size=64, max_wait=0.05)
    try:
        results = await asyncio.gather(
            *(run_session(handle, [{"x": [[float(s)]]}]) for s in range(10))
        )
    finally:
        await handle.aclose()
    assert [float(answers[0].value["y"][0, 0]) for answers, _ in results] == [
        2.0 * s for s in range(10)
    ]
    assert sum(model.batches) == 10
    assert len(model.batches) < 10  # at least one batch held requests from several sessions


async def test_a_bad_request_fails_only_its_message() -> None:
    """Input the model refuses becomes a dead letter with InvalidInput; the node carries on."""
    handle = handle_for(Doubler())
    try:
        answers, dead = await run_session(handle, [{"x": [[1.0]]}, {"z": [[1.0]]}, {"x": [[3.0]]}])
    finally:
        await handle.aclose()
    assert [signal.id for signal in answers] == [0, 2]
    assert [(letter.signal.id, type(letter.error)) for letter in dead] == [(1, InvalidInput)]


async def test_prepare_and_combine_adapt_messages_and_skip_the_model() -> None:
    """The prepare hook picks inputs (None skips the model); the combine hook shapes the result."""
    model = Doubler()
    handle = handle_for(model)
    try:
        answers, _ = await run_session(
            handle,
            [{"number": 4.0}, {"command": "skip"}, {"number": 1.5}],
            prepare=lambda v: {"x": [[v["number"]]]} if "number" in v else None,
            combine=lambda v, outputs: {"twice": float(outputs["y"][0, 0])},
        )
    finally:
        await handle.aclose()
    assert [signal.value for signal in answers] == [
        {"twice": 8.0},
        {"command": "skip"},
        {"twice": 3.0},
    ]
    assert sum(model.batches) == 2


async def test_a_lone_request_is_answered_without_waiting_for_more() -> None:
    """With room for more in flight, an answer still goes out as soon as it is ready."""
    handle = handle_for(Doubler())
    graph = Graph("chat")
    node = graph.add(ModelNode(handle, concurrency=4))
    inlet, outlet = graph.inlet(node.inp), graph.outlet(node.out)
    try:
        await graph.start()
        await inlet.send(Signal({"x": [[1.5]]}, id="only"))
        async with asyncio.timeout(30):  # a hang guard, not a timing check
            answer = await outlet.receive()
        assert answer.id == "only"
        assert answer.value["y"].tolist() == [[3.0]]
    finally:
        inlet.close()
        await graph.stop(timeout=10)
        await handle.aclose()


async def test_requests_in_flight_become_dead_letters_when_nobody_listens() -> None:
    """A node whose reader went away ends, and every request it held reaches a requester."""
    handle = handle_for(Doubler())
    dead: list[DeadLetter] = []
    graph = Graph("gone", on_dead_letter=dead.append)
    node = graph.add(ModelNode(handle, concurrency=4))
    inlet, outlet = graph.inlet(node.inp), graph.outlet(node.out)
    await graph.start()
    outlet.close()
    sent = [f"r{i}" for i in range(6)]
    for request_id in sent:
        await inlet.send(Signal({"x": [[1.0]]}, id=request_id))
    inlet.close()
    await graph.stop(timeout=10)
    await handle.aclose()
    assert sorted(letter.signal.id for letter in dead) == sent  # each exactly once
    assert node.state == "done"


def test_concurrency_must_be_positive() -> None:
    """A ModelNode needs at least one request in flight."""
    handle = handle_for(Doubler())
    with pytest.raises(ValueError, match="concurrency"):
        ModelNode(handle, concurrency=0)
