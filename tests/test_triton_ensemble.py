"""Triton ensembles (``platform: "ensemble"``) served as a DAG of composing-model steps.

In-process tests load ``tests/data/triton_ensemble`` (Triton's ``simple`` model under two names,
and a chain and a diamond of it) or repositories written to a temporary folder with Python
models that sleep, fail or add; one real-server test drives the data repository with
tritonclient.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2

from coserve import (
    BatcherClosed,
    BatchFailed,
    ConfigError,
    DeadlineExceeded,
    InvalidInput,
    ModelRepository,
)
from coserve.models._triton_config import read_triton_config, triton_model_config
from helpers import ServerProcess

REPOSITORY = Path(__file__).parent / "data" / "triton_ensemble"

PYTHON_CONFIG = """
platform = "python"
[[inputs]]
name = "x"
datatype = "INT64"
shape = [-1]
[[outputs]]
name = "y"
datatype = "INT64"
shape = [-1]
"""


def python_model(repo: Path, name: str, body: str, version: int = 1) -> None:
    """A Python model ``y = f(x)`` (INT64 rows), ``body`` being ``predict``'s."""
    folder = repo / name
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    (folder / "config.toml").write_text(PYTHON_CONFIG)
    code = "import time\n\ndef predict(inputs):\n    x = inputs['x']\n" + textwrap.indent(
        textwrap.dedent(body), "    "
    )
    (folder / str(version) / "model.py").write_text(code)


def step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    """One ``ensemble_scheduling`` step in text format."""
    lines = [f'    {{\n      model_name: "{model}"\n      model_version: -1']
    lines += [f'      input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items()]
    lines += [f'      output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items()]
    return "\n".join(lines) + "\n    }"


def ensemble(
    repo: Path, name: str, steps: list[str], inputs: list[str], outputs: list[str]
) -> Path:
    """An ensemble folder of INT64 ``[-1]`` tensors; its config's path.

    ``max_batch_size: 0``, so the tensors are the Python models' ``[-1]`` as they are.
    """

    def tensors(names: list[str]) -> str:
        return ",\n".join(f'  {{ name: "{n}" data_type: TYPE_INT64 dims: [ -1 ] }}' for n in names)

    folder = repo / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    text = (
        f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: 0\n'
        f"input [\n{tensors(inputs)}\n]\noutput [\n{tensors(outputs)}\n]\n"
        f"ensemble_scheduling {{\n  step [\n{separated(steps)}\n  ]\n}}\n"
    )
    path = folder / "config.pbtxt"
    path.write_text(text)
    return path


def separated(steps: list[str]) -> str:
    return ",\n".join(steps)


def line_of(path: Path, text: str, nth: int = 1) -> str:
    """``path:line`` of the ``nth`` line holding ``text``."""
    lines = [i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line]
    return f"{path}:{lines[nth - 1]}:"


def rows(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


# -- the data repository: a chain and a diamond ---------------------------------------------


async def test_a_chain_and_a_diamond_give_the_composed_answer() -> None:
    async with ModelRepository(REPOSITORY) as repository:
        assert [(m.name, m.platform) for m in repository.models()] == [
            ("add_sub", "onnxruntime_onnx"),
            ("add_sub_2", "onnxruntime_onnx"),
            ("chain", "ensemble"),
            ("diamond", "ensemble"),
        ]
        a = np.arange(16, dtype=np.int32)[None].repeat(3, axis=0)
        b = np.full((3, 16), -1, dtype=np.int32)
        chain = await repository.get("chain").infer({"IN0": a, "IN1": b})
        np.testing.assert_array_equal(chain["OUT"], 2 * a)
        diamond = await repository.get("diamond").infer({"IN0": a, "IN1": b})
        assert list(diamond) == ["OUT0", "OUT1", "SUM"]
        np.testing.assert_array_equal(diamond["OUT0"], 4 * a)
        np.testing.assert_array_equal(diamond["OUT1"], 4 * b)
        np.testing.assert_array_equal(diamond["SUM"], a + b)
        assert diamond["OUT0"].dtype == np.int32


async def test_requested_outputs_run_only_the_steps_they_need() -> None:
    async with ModelRepository(REPOSITORY) as repository:
        a = np.ones((1, 16), dtype=np.int32)
        result = await repository.get("diamond").infer({"IN0": a, "IN1": a}, outputs=["SUM"])
        assert list(result) == ["SUM"]
        assert repository.get("add_sub").statistics().submitted == 1
        assert repository.get("add_sub_2").statistics().submitted == 0
        stats = repository.get("diamond").statistics()
        assert (stats.submitted, stats.completed, stats.in_flight) == (1, 1, 0)
        # The protocols' path (InferenceService.submit → infer_nowait) prunes the same way.
        future = repository.get("diamond").infer_nowait({"IN0": a, "IN1": a}, outputs=["SUM"])
        assert list(await future) == ["SUM"]
        assert repository.get("add_sub").statistics().submitted == 2
        assert repository.get("add_sub_2").statistics().submitted == 0


async def test_the_config_shows_the_ensemble_as_triton_does() -> None:
    async with ModelRepository(REPOSITORY) as repository:
        handle = repository.get("diamond")
        config = triton_model_config(repository.config("diamond"), handle.inputs, handle.outputs)
    assert config["platform"] == "ensemble"
    assert config["max_batch_size"] == 8
    steps = config["ensemble_scheduling"]["step"]
    assert [s["model_name"] for s in steps] == ["add_sub", "add_sub_2", "add_sub_2", "add_sub"]
    assert steps[0]["model_version"] == -1
    assert steps[0]["input_map"] == {"INPUT0": "IN0", "INPUT1": "IN1"}
    assert steps[3]["output_map"] == {"OUTPUT0": "OUT0", "OUTPUT1": "OUT1"}
    # Triton's own message type takes it.
    json_format.ParseDict(config, model_config_pb2.ModelConfig())
    assert handle.platform == "ensemble"
    assert handle.version == "1"
    assert [s.shape for s in handle.inputs] == [(-1, 16), (-1, 16)]
    assert handle.output_datatypes == {"OUT0": "INT32", "OUT1": "INT32", "SUM": "INT32"}


async def test_an_ensemble_may_compose_another(tmp_path: Path) -> None:
    """Nested: loaded after the ensemble it names, whatever their names' order."""
    shutil.copytree(REPOSITORY, tmp_path, dirs_exist_ok=True)
    outer = tmp_path / "a_outer"
    (outer / "1").mkdir(parents=True)
    (outer / "config.pbtxt").write_text(
        (REPOSITORY / "chain" / "config.pbtxt")
        .read_text()
        .replace('name: "chain"', 'name: "a_outer"')
        .replace('"add_sub_2"', '"chain"')
        .replace('key: "INPUT0" value: "sum"', 'key: "IN0" value: "sum"')
        .replace('key: "INPUT1" value: "diff"', 'key: "IN1" value: "diff"')
        .replace('key: "OUTPUT0" value: "OUT"', 'key: "OUT" value: "OUT"')
    )
    async with ModelRepository(tmp_path) as repository:
        a = np.arange(16, dtype=np.int32)[None]
        b = np.full((1, 16), 3, dtype=np.int32)
        result = await repository.get("a_outer").infer({"IN0": a, "IN1": b})
    np.testing.assert_array_equal(result["OUT"], 2 * (a + b))


# -- running: concurrency, failure, deadline --------------------------------------------------


async def test_independent_steps_run_concurrently(tmp_path: Path) -> None:
    """Two slow steps that need only the ensemble's input overlap; the join waits for both."""
    python_model(tmp_path, "slow_a", "time.sleep(0.5)\nreturn {'y': x + 1}\n")
    python_model(tmp_path, "slow_b", "time.sleep(0.5)\nreturn {'y': x + 2}\n")
    python_model(tmp_path, "join", "return {'y': x * 10}\n")
    ensemble(
        tmp_path,
        "fork",
        [
            step("slow_a", {"x": "X"}, {"y": "A"}),
            step("slow_b", {"x": "X"}, {"y": "B"}),
            step("join", {"x": "A"}, {"y": "J"}),
        ],
        ["X"],
        ["A", "B", "J"],
    )
    async with ModelRepository(tmp_path) as repository:
        started = time.perf_counter()
        result = await repository.get("fork").infer({"X": rows(1, 2)})
        elapsed = time.perf_counter() - started
    assert result["A"].tolist() == [2, 3]
    assert result["B"].tolist() == [3, 4]
    assert result["J"].tolist() == [20, 30]
    assert elapsed < 0.9  # one after the other would take 1.0s


async def test_a_failing_step_fails_the_request_with_its_error(tmp_path: Path) -> None:
    python_model(tmp_path, "fine", "return {'y': x}\n")
    # Zeros (the warm-up's) pass, so that it loads.
    python_model(
        tmp_path, "boom", "if x.any():\n    raise ValueError('boom on purpose')\nreturn {'y': x}\n"
    )
    python_model(tmp_path, "slow", "time.sleep(0.3)\nreturn {'y': x}\n")
    ensemble(
        tmp_path,
        "broken",
        [
            step("fine", {"x": "X"}, {"y": "F"}),
            step("boom", {"x": "F"}, {"y": "B"}),
            step("slow", {"x": "X"}, {"y": "S"}),
        ],
        ["X"],
        ["B", "S"],
    )
    async with ModelRepository(tmp_path) as repository:
        with pytest.raises(BatchFailed, match="boom on purpose"):
            await repository.get("broken").infer({"X": rows(1)})
        stats = repository.get("broken").statistics()
        assert (stats.failed, stats.in_flight) == (1, 0)
        # The ensemble still serves requests that do not need the failing step.
        assert (await repository.get("broken").infer({"X": rows(4)}, outputs=["S"]))[
            "S"
        ].tolist() == [4]


async def test_the_deadline_covers_every_step(tmp_path: Path) -> None:
    python_model(tmp_path, "slow", "time.sleep(0.3)\nreturn {'y': x}\n")
    python_model(tmp_path, "slow_2", "time.sleep(0.3)\nreturn {'y': x}\n")
    ensemble(
        tmp_path,
        "two",
        [step("slow", {"x": "X"}, {"y": "A"}), step("slow_2", {"x": "A"}, {"y": "B"})],
        ["X"],
        ["B"],
    )
    async with ModelRepository(tmp_path) as repository:
        handle = repository.get("two")
        with pytest.raises(DeadlineExceeded):
            await handle.infer({"X": rows(1)}, timeout=0.4)  # each step alone would fit
        assert handle.statistics().expired == 1
        assert (await handle.infer({"X": rows(1)}, timeout=2.0))["B"].tolist() == [1]


async def test_max_inflight_requests_bounds_each_step(tmp_path: Path) -> None:
    python_model(tmp_path, "slow", "time.sleep(0.2)\nreturn {'y': x}\n")
    path = ensemble(tmp_path, "bounded", [step("slow", {"x": "X"}, {"y": "Y"})], ["X"], ["Y"])
    path.write_text(
        path.read_text().replace(
            "ensemble_scheduling {", "ensemble_scheduling {\n  max_inflight_requests: 1"
        )
    )
    async with ModelRepository(tmp_path) as repository:
        handle = repository.get("bounded")
        started = time.perf_counter()
        await asyncio.gather(*(handle.infer({"X": rows(i)}) for i in range(3)))
        # One call at a time: the slow model's batcher never sees two requests to combine.
        assert time.perf_counter() - started >= 0.55
        assert repository.get("slow").statistics().batches == 3


async def test_closing_drains_the_requests_in_flight(tmp_path: Path) -> None:
    """The ensemble drains before its composing models close, which its requests still need."""
    python_model(tmp_path, "slow", "time.sleep(0.3)\nreturn {'y': x + 1}\n")
    ensemble(tmp_path, "wrap", [step("slow", {"x": "X"}, {"y": "Y"})], ["X"], ["Y"])
    repository = ModelRepository(tmp_path)
    await repository.reload()
    handle = repository.get("wrap")
    running = asyncio.create_task(handle.infer({"X": rows(3)}))
    await asyncio.sleep(0.05)
    await repository.aclose()
    assert (await running)["Y"].tolist() == [4]
    assert handle.closed
    with pytest.raises(BatcherClosed):
        await handle.infer({"X": rows(3)})
    stats = handle.statistics()
    assert (stats.completed, stats.rejected_closed) == (1, 1)


# -- loading: validation, missing models, reloads --------------------------------------------


def test_the_dataflow_is_checked_naming_the_file_and_line(tmp_path: Path) -> None:
    cases = {
        "two_producers": (
            [step("m", {"x": "X"}, {"y": "T"}), step("m", {"x": "X"}, {"y": "T"})],
            ["Y"],
            ('value: "T"', 2),
            "ensemble tensor 'T' has two producers: step 0 (m) and step 1 (m)",
        ),
        "unproduced": (
            [step("m", {"x": "NOPE"}, {"y": "Y"})],
            ["Y"],
            ('value: "NOPE"', 1),
            "reads ensemble tensor 'NOPE', which no ensemble input or step output produces",
        ),
        "cycle": (
            [step("m", {"x": "B"}, {"y": "A"}), step("m", {"x": "A"}, {"y": "B"})],
            ["A"],
            ('model_name: "m"', 1),
            "the ensemble's steps form a cycle: step 0 (m) -> step 1 (m) -> step 0 (m)",
        ),
        "no_output": (
            [step("m", {"x": "X"}, {"y": "T"})],
            ["Y"],
            ('name: "Y"', 1),
            "ensemble output 'Y' is produced by no step",
        ),
    }
    for name, (steps, outputs, (marker, nth), message) in cases.items():
        path = ensemble(tmp_path, name, steps, ["X"], outputs)
        with pytest.raises(ConfigError) as raised:
            read_triton_config(path.parent, name=name, versions={1: path.parent / "1"})
        assert str(raised.value).startswith(line_of(path, marker, nth)), name
        assert message in str(raised.value), name


@pytest.mark.parametrize(
    ("inputs", "outputs", "marker", "message"),
    [
        ({"z": "X"}, {"y": "Y"}, 'key: "z"', "model 'm' has no input 'z'; its inputs are: x"),
        ({"x": "X"}, {"w": "Y"}, 'key: "w"', "model 'm' has no output 'w'; its outputs are: y"),
    ],
)
async def test_the_steps_are_checked_against_their_models(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    inputs: dict[str, str],
    outputs: dict[str, str],
    marker: str,
    message: str,
) -> None:
    python_model(tmp_path, "m", "return {'y': x}\n")
    path = ensemble(tmp_path, "bad", [step("m", inputs, outputs)], ["X"], ["Y"])
    with caplog.at_level(logging.ERROR, logger="coserve.models"):
        async with ModelRepository(tmp_path) as repository:
            assert [m.name for m in repository.models()] == ["m"]
            assert repository.unserved() == ["bad v1"]
    [error] = [r.getMessage() for r in caplog.records if "model bad v1" in r.getMessage()]
    assert line_of(path, marker) in error
    assert message in error


async def test_a_missing_composing_model_leaves_the_ensemble_unserved_until_it_comes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    python_model(tmp_path, "plus_one", "return {'y': x + 1}\n")
    path = ensemble(
        tmp_path,
        "pair",
        [step("plus_one", {"x": "X"}, {"y": "A"}), step("later", {"x": "A"}, {"y": "B"})],
        ["X"],
        ["B"],
    )
    with caplog.at_level(logging.ERROR, logger="coserve.models"):
        async with ModelRepository(tmp_path) as repository:
            assert [m.name for m in repository.models()] == ["plus_one"]
            [error] = [r.getMessage() for r in caplog.records if "model pair v1" in r.getMessage()]
            assert line_of(path, 'model_name: "later"') in error
            assert "composing model 'later' is missing" in error
            # Its files have not changed, but the model it waited for has come: it is served.
            python_model(tmp_path, "later", "return {'y': x * 100}\n")
            await repository.reload()
            assert (await repository.get("pair").infer({"X": rows(1)}))["B"].tolist() == [200]
            # ...and it goes again with it.
            shutil.rmtree(tmp_path / "later")
            await repository.reload()
            assert [m.name for m in repository.models()] == ["plus_one"]


async def test_a_reloaded_composing_model_is_used_by_the_ensemble(tmp_path: Path) -> None:
    python_model(tmp_path, "adder", "return {'y': x + 1}\n")
    ensemble(tmp_path, "wrap", [step("adder", {"x": "X"}, {"y": "Y"})], ["X"], ["Y"])
    async with ModelRepository(tmp_path) as repository:
        handle = repository.get("wrap")
        assert (await handle.infer({"X": rows(1)}))["Y"].tolist() == [2]
        python_model(tmp_path, "adder", "return {'y': x + 10}\n", version=2)
        await repository.reload()
        assert repository.get("adder").version == "2"
        assert repository.get("wrap") is handle  # the ensemble itself did not change
        assert (await handle.infer({"X": rows(1)}))["Y"].tolist() == [11]


# -- a real server, tritonclient -------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    process = ServerProcess("--model-repository", str(REPOSITORY), grpc=True)
    try:
        process.wait_ready()
        yield process
    finally:
        process.close()


@pytest.mark.slow
def test_tritonclient_infers_on_the_ensemble(server: ServerProcess) -> None:
    import httpx
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    url = server.url
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    try:
        assert client.is_model_ready("diamond")
        a = np.arange(16, dtype=np.int32)[None]
        b = np.full((1, 16), -1, dtype=np.int32)
        inputs = [
            httpclient.InferInput("IN0", [1, 16], "INT32"),
            httpclient.InferInput("IN1", [1, 16], "INT32"),
        ]
        inputs[0].set_data_from_numpy(a, binary_data=True)
        inputs[1].set_data_from_numpy(b, binary_data=False)
        result = client.infer("diamond", inputs)
        np.testing.assert_array_equal(result.as_numpy("OUT0"), 4 * a)
        np.testing.assert_array_equal(result.as_numpy("OUT1"), 4 * b)
        np.testing.assert_array_equal(result.as_numpy("SUM"), a + b)
        only = client.infer("diamond", inputs, outputs=[httpclient.InferRequestedOutput("SUM")])
        assert only.as_numpy("OUT0") is None
        np.testing.assert_array_equal(only.as_numpy("SUM"), a + b)
        metadata = client.get_model_metadata("diamond")
        assert metadata["platform"] == "ensemble"
        assert [o["name"] for o in metadata["outputs"]] == ["OUT0", "OUT1", "SUM"]
        assert metadata["inputs"][0]["shape"] == [-1, 16]
        config = client.get_model_config("diamond")
        assert config["platform"] == "ensemble"
        assert len(config["ensemble_scheduling"]["step"]) == 4
        stats = client.get_inference_statistics("diamond")
        assert stats["model_stats"][0]["name"] == "diamond"
    finally:
        client.close()
    grpc = grpcclient.InferenceServerClient(server.grpc_target)
    try:
        grpc_inputs = [
            grpcclient.InferInput("IN0", [1, 16], "INT32"),
            grpcclient.InferInput("IN1", [1, 16], "INT32"),
        ]
        grpc_inputs[0].set_data_from_numpy(a)
        grpc_inputs[1].set_data_from_numpy(b)
        np.testing.assert_array_equal(grpc.infer("chain", grpc_inputs).as_numpy("OUT"), 2 * a)
    finally:
        grpc.close()
    metrics = httpx.get(f"{url}/metrics").text
    assert 'model="diamond"' in metrics
    assert json.loads(httpx.get(f"{url}/v2/models/chain").text)["platform"] == "ensemble"


DENSENET_ENSEMBLE = """
name: "classify"
platform: "ensemble"
max_batch_size: 0
input [ { name: "IMAGE" data_type: TYPE_FP32 dims: [ 3, 4, 4 ] optional: true } ]
output [ { name: "SCORES" data_type: TYPE_FP32 dims: [ 5 ] } ]
ensemble_scheduling {
  step [ {
    model_name: "tiny_densenet"
    model_version: -1
    input_map { key: "data_0" value: "IMAGE" }
    output_map { key: "fc6_1" value: "SCORES" }
  } ]
}
"""


async def test_an_ensemble_without_batch_dimension_takes_whole_tensors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """max_batch_size 0: a request is the whole [3, 4, 4] image, one inference, as its model's."""
    shutil.copytree(
        Path(__file__).parent / "data" / "triton" / "tiny_densenet", tmp_path / "tiny_densenet"
    )
    (tmp_path / "classify" / "1").mkdir(parents=True)
    (tmp_path / "classify" / "config.pbtxt").write_text(DENSENET_ENSEMBLE)
    image = np.random.default_rng(3).random((3, 4, 4), dtype=np.float32)
    with caplog.at_level(logging.WARNING, logger="coserve.models"):
        repository = ModelRepository(tmp_path)
        await repository.__aenter__()
    try:
        handle = repository.get("classify")
        assert not handle.backend.batched
        direct = await repository.get("tiny_densenet").infer({"data_0": image})
        through = await handle.infer({"IMAGE": image})
        np.testing.assert_array_equal(through["SCORES"], direct["fc6_1"])
        assert through["SCORES"].shape == (5,)
        with pytest.raises(InvalidInput, match="dimension 0 must be 3"):
            await handle.infer({"IMAGE": image[:2]})
        assert handle.statistics().completed_rows == 1
    finally:
        await repository.aclose()
    assert any(
        "input 'IMAGE': optional is not applied (an ensemble's steps" in r.getMessage()
        for r in caplog.records
    )
