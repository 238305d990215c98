"""Triton Python models (``class TritonPythonModel`` in ``model.py``) served unmodified.

Fast: the models of tests/data/triton_python (written for these tests, in the style of Triton's
examples) are copied to a temporary repository and served in-process; one slow test asks a real
server through ``tritonclient.http``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from coserve import BatchFailed, ConfigError, InvalidInput, ModelRepository
from coserve.models._config import ModelConfig
from coserve.models._layout import ModelFolder, read_model_folder
from coserve.models._repository import load_backend
from coserve.models._specs import TensorSpec
from coserve.models._triton_config import triton_model_config
from coserve.models.backends import triton_python_utils as pb_utils
from helpers import ServerProcess

DATA = Path(__file__).parent / "data" / "triton_python"


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """A copy of the test models (a model may write into its folder)."""
    shutil.copytree(DATA, tmp_path / "models", ignore=shutil.ignore_patterns("README.md"))
    return tmp_path / "models"


@pytest.fixture(autouse=True)
def _no_leftover_module() -> Iterator[None]:
    """Each test registers the utils module itself (as loading a model does)."""
    yield
    sys.modules.pop(pb_utils.MODULE_NAME, None)
    sys.modules.pop("helper", None)  # lifecycle's neighbour module


def config_of(folder: Path) -> ModelConfig:
    layout = read_model_folder(ModelFolder(folder.name, folder))
    assert layout is not None
    assert layout.config.inputs is not None
    assert layout.config.outputs is not None
    return layout.config


def specs(config: ModelConfig) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    assert config.inputs is not None
    assert config.outputs is not None
    return config.inputs, config.outputs


# -- the config ---------------------------------------------------------------------------------


def test_backend_python_is_the_triton_python_platform(repository: Path) -> None:
    """Inputs and outputs come from config.pbtxt; no warm-up; Triton's JSON has backend only."""
    config = config_of(repository / "add_sub")
    assert config.platform == "triton_python"
    assert config.filename == "model.py"
    assert not config.warm_up  # Triton warms up only when model_warmup asks
    assert [s.name for s in specs(config)[0]] == ["INPUT0", "INPUT1"]
    assert specs(config)[0][0].shape == (-1, 4)
    assert config.batching.combine_requests
    assert config.batching.max_concurrent_batches == 2
    shown = triton_model_config(config, *specs(config))
    assert shown["backend"] == "python"
    assert shown["platform"] == ""
    assert shown["default_model_filename"] == "model.py"


def test_a_python_model_without_tensors_is_an_error_naming_the_backend(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text('backend: "python"\nmax_batch_size: 8\n')
    (folder / "1" / "model.py").write_text("class TritonPythonModel: ...\n")
    from coserve.models._triton_config import read_triton_config

    with pytest.raises(ConfigError, match=r"config\.pbtxt:1:\d+: Triton Python models") as raised:
        read_triton_config(folder, name="m", versions={1: folder / "1"})
    assert "auto_complete_config" in str(raised.value)


def test_auto_complete_config_adds_the_tensors(repository: Path) -> None:
    config = config_of(repository / "auto_complete")
    assert [(s.name, s.datatype, s.shape) for s in specs(config)[0]] == [("IN", "FP32", (-1, 2))]
    assert [(s.name, s.datatype, s.shape) for s in specs(config)[1]] == [("OUT", "FP32", (-1, 2))]
    assert config.batching.max_batch_size == 4
    assert config.batching.combine_requests
    shown = triton_model_config(config, *specs(config))
    assert [entry["name"] for entry in shown["input"]] == ["IN"]
    assert shown["max_batch_size"] == 4


def test_auto_complete_config_that_contradicts_the_config_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(DATA / "auto_complete", folder)
    (folder / "config.pbtxt").write_text(
        'backend: "python"\ninput [ { name: "IN" data_type: TYPE_INT32 dims: [ 2 ] } ]\n'
    )
    assert read_model_folder(ModelFolder("m", folder)) is None  # logged, not raised


def test_the_model_file_without_a_config_is_a_python_model(tmp_path: Path) -> None:
    """Triton's layout, no config: model.py names the backend, auto_complete_config the rest."""
    folder = tmp_path / "auto"
    shutil.copytree(DATA / "auto_complete", folder)
    (folder / "config.pbtxt").unlink()
    config = config_of(folder)
    assert config.platform == "triton_python"
    assert [s.name for s in specs(config)[1]] == ["OUT"]


# -- serving ----------------------------------------------------------------------------------


async def test_add_sub_as_triton_writes_it(repository: Path) -> None:
    """Requests batched together get their own rows back, each computed as in Triton."""
    async with ModelRepository(repository) as models:
        handle = models.get("add_sub")
        a = np.arange(8, dtype=np.float32).reshape(2, 4)
        b = np.ones((2, 4), dtype=np.float32)
        first, second = await asyncio.gather(
            handle.infer({"INPUT0": a, "INPUT1": b}),
            handle.infer({"INPUT0": b[:1], "INPUT1": a[:1]}),
        )
        np.testing.assert_array_equal(first["OUTPUT0"], a + b)
        np.testing.assert_array_equal(first["OUTPUT1"], a - b)
        assert first["OUTPUT0"].dtype == np.float32
        np.testing.assert_array_equal(second["OUTPUT1"], b[:1] - a[:1])


async def test_async_execute_runs_on_the_models_own_loop(repository: Path) -> None:
    async with ModelRepository(repository) as models:
        handle = models.get("async_add")
        for _ in range(3):  # the model's asyncio.Lock, made on the first call, works on later ones
            result = await handle.infer({"A": np.array([[1, 2]]), "B": np.array([[10, 20]])})
            np.testing.assert_array_equal(result["SUM"], [[11, 22]])


def test_async_execute_is_never_on_the_callers_loop(repository: Path) -> None:
    config = config_of(repository / "async_add")
    backend = load_backend(config, repository / "async_add" / "1")
    try:
        backend.predict({"A": np.array([[1]]), "B": np.array([[2]])})
        inner = backend._inner  # type: ignore[attr-defined]
        [instance] = inner._instances
        assert instance.model.loop_thread.startswith("triton-python async_add")
    finally:
        backend.close()


async def test_bytes_in_and_out(repository: Path) -> None:
    async with ModelRepository(repository) as models:
        result = await models.get("bytes_upper").infer(
            {"TEXT": np.array([[b"abc"], ["d\u00e9".encode()]], dtype=object)}
        )
        assert result["UPPER"].tolist() == [[b"ABC"], ["D\u00c9".encode()]]
        assert result["LENGTH"].tolist() == [[3], [3]]  # bytes, not characters


async def test_a_triton_error_fails_only_its_request(repository: Path) -> None:
    """INVALID_ARG is the request's fault (400), the default INTERNAL the model's (500).

    The three requests run in one execute() (one batch), each its own InferenceRequest; each
    response's error fails its own request only, and the good one is answered.
    """
    async with ModelRepository(repository) as models:
        handle = models.get("refuse")
        outcomes: list[object] = await asyncio.gather(
            handle.infer({"X": np.array([[1]], dtype=np.int32)}),
            handle.infer({"X": np.array([[-1]], dtype=np.int32)}),
            handle.infer({"X": np.array([[13]], dtype=np.int32)}),
            return_exceptions=True,
        )
        good, negative, bad = outcomes
        assert isinstance(good, dict)
        assert good["Y"].tolist() == [[2]]
        assert isinstance(negative, InvalidInput)
        assert "negative input" in str(negative)
        assert isinstance(bad, BatchFailed)
        assert "returned an error: bad" in str(bad)


async def test_an_exception_from_execute_is_a_model_error(repository: Path) -> None:
    async with ModelRepository(repository) as models:
        with pytest.raises(BatchFailed, match="execute raised ValueError\\('boom'\\)"):
            await models.get("raising").infer({"X": np.array([[1]], dtype=np.int32)})


async def test_bls_is_a_clear_error(repository: Path) -> None:
    async with ModelRepository(repository) as models:
        with pytest.raises(BatchFailed, match=r"BLS \(InferenceRequest\.exec\(\).*not supported"):
            await models.get("bls").infer({"X": np.array([[1]], dtype=np.int32)})


async def test_initialize_args_finalize_and_a_neighbour_module(repository: Path) -> None:
    folder = repository / "lifecycle"
    async with ModelRepository(repository) as models:
        result = await models.get("lifecycle").infer({"X": np.array([1.5, 2], dtype=np.float32)})
        np.testing.assert_array_equal(result["Y"], [3, 4])
        assert not (folder / "finalized").exists()
    assert (folder / "finalized").read_text() == "yes"
    args = json.loads((folder / "args.json").read_text())
    assert args["model_name"] == "lifecycle"
    assert args["model_version"] == "1"
    assert args["model_repository"] == str(folder)
    assert args["model_instance_kind"] == "CPU"
    assert args["model_instance_device_id"] == "0"
    assert args["model_instance_name"] == "lifecycle_0"
    config = json.loads(args["model_config"])
    assert config["backend"] == "python"
    assert config["max_batch_size"] == 0
    assert [entry["name"] for entry in config["input"]] == ["X"]


async def test_config_toml_with_the_triton_python_platform(repository: Path) -> None:
    async with ModelRepository(repository) as models:
        handle = models.get("toml_add")
        ones = np.ones((1, 4), dtype=np.float32)
        result = await handle.infer({"INPUT0": ones, "INPUT1": ones})
        np.testing.assert_array_equal(result["OUTPUT0"], 2 * ones)


def test_each_instance_is_a_model_of_its_own(repository: Path) -> None:
    config = config_of(repository / "add_sub")
    backend = load_backend(config, repository / "add_sub" / "1")
    try:
        instances = backend._inner._instances  # type: ignore[attr-defined]
        assert [i.name for i in instances] == ["add_sub_0_0", "add_sub_0_1"]
        assert instances[0].model is not instances[1].model
    finally:
        backend.close()


# -- the utils module ---------------------------------------------------------------------------


def test_the_utils_types_and_helpers() -> None:
    assert pb_utils.triton_string_to_numpy("TYPE_FP32") is np.float32
    assert pb_utils.triton_string_to_numpy("TYPE_STRING") is np.object_
    assert pb_utils.numpy_to_triton_type(np.float32) == 11
    assert pb_utils.numpy_to_triton_type(np.object_) == 13
    assert pb_utils.triton_to_numpy_type(8) is np.int32
    tensor = pb_utils.Tensor("T", np.arange(3, dtype=np.int32))
    assert tensor.name() == "T"
    assert tensor.triton_dtype() == 8
    assert tensor.shape() == [3]
    with pytest.raises(pb_utils.TritonModelException, match=r"np\.object_"):
        pb_utils.Tensor("S", np.array(["a"]))
    back = pb_utils.Tensor.from_dlpack("U", tensor.to_dlpack())
    np.testing.assert_array_equal(back.as_numpy(), [0, 1, 2])
    encoded = pb_utils.serialize_byte_tensor(np.array([b"ab", "c"], dtype=object))
    assert encoded is not None
    assert pb_utils.deserialize_bytes_tensor(encoded).tolist() == [b"ab", b"c"]
    error = pb_utils.TritonError("gone", pb_utils.TritonError.NOT_FOUND)
    assert (error.message(), error.code()) == ("gone", 2)
    assert pb_utils.TritonError("x").code() == pb_utils.TritonError.INTERNAL
    response = pb_utils.InferenceResponse(error=error)
    assert response.has_error()
    assert response.output_tensors() == []
    request = pb_utils.InferenceRequest(inputs=[tensor], requested_output_names=["Y"])
    assert pb_utils.get_input_tensor_by_name(request, "T") is tensor
    assert pb_utils.get_input_tensor_by_name(request, "nope") is None
    assert json.loads(request.parameters()) == {}
    config = {"input": [{"name": "A", "data_type": "TYPE_FP32"}], "output": []}
    assert pb_utils.get_input_config_by_name(config, "A") == config["input"][0]
    assert pb_utils.get_output_config_by_name(config, "A") is None


@pytest.mark.parametrize(
    ("call", "what"),
    [
        (lambda: pb_utils.InferenceRequest(model_name="m").exec(), "BLS"),
        (lambda: pb_utils.InferenceRequest(model_name="m").async_exec(), "BLS"),
        (lambda: pb_utils.InferenceRequest().get_response_sender(), "decoupled mode"),
        (lambda: pb_utils.InferenceResponseSender().send(), "decoupled mode"),
        (lambda: pb_utils.MetricFamily(name="n", description="d"), "custom metrics"),
        (lambda: pb_utils.Metric(), "custom metrics"),
    ],
)
def test_what_coserve_does_not_do_raises_naming_it(call: Callable[[], object], what: str) -> None:
    with pytest.raises(pb_utils.TritonModelException, match=f"{what}.*not supported"):
        call()


# -- a real server ----------------------------------------------------------------------------


@pytest.mark.slow
def test_tritonclient_http_against_a_real_server(repository: Path) -> None:
    server = ServerProcess("--model-repository", str(repository), grpc=False)
    try:
        server.wait_ready()
        client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        a = np.arange(4, dtype=np.float32)[None]
        b = np.full((1, 4), 2, dtype=np.float32)
        inputs = [httpclient.InferInput("INPUT0", [1, 4], "FP32")]
        inputs.append(httpclient.InferInput("INPUT1", [1, 4], "FP32"))
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        result = client.infer("add_sub", inputs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
        assert client.get_model_config("add_sub")["backend"] == "python"
        refused = httpclient.InferInput("X", [1, 1], "INT32")
        refused.set_data_from_numpy(np.array([[-1]], dtype=np.int32))
        with pytest.raises(InferenceServerException, match="negative input") as raised:
            client.infer("refuse", [refused])
        assert raised.value.status() == "400"
        client.close()
    finally:
        server.close()


NEIGHBOUR_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        import helper  # imported in initialize, as Triton models may

        self.value = helper.VALUE

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x + self.value)]))
        return responses
"""

NEIGHBOUR_CONFIG = """
backend: "python"
max_batch_size: 0
input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""


async def test_two_models_each_get_their_own_neighbour_module(tmp_path: Path) -> None:
    """Each model's helper.py is its own, imported in initialize too; none stays global."""
    for name, value in (("ma", 1), ("mb", 100)):
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "config.pbtxt").write_text(NEIGHBOUR_CONFIG)
        (tmp_path / name / "1" / "model.py").write_text(NEIGHBOUR_MODEL)
        (tmp_path / name / "1" / "helper.py").write_text(f"VALUE = {value}\n")
    async with ModelRepository(tmp_path) as models:
        x = {"X": np.array([1.0], dtype=np.float32)}
        assert (await models.get("ma").infer(x))["Y"].tolist() == [2.0]
        assert (await models.get("mb").infer(x))["Y"].tolist() == [101.0]
        assert "helper" not in sys.modules


SLOW_FINALIZE_MODEL = """
import time

import triton_python_backend_utils as pb_utils

DONE, FINAL = {done!r}, {final!r}


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(0.5)
        with open(DONE, "w") as out:
            out.write(str(time.monotonic()))
        x = pb_utils.get_input_tensor_by_name(requests[0], "X").as_numpy()
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", x)])]

    def finalize(self):
        with open(FINAL, "w") as out:
            out.write(str(time.monotonic()))
"""


def test_finalize_waits_for_a_running_execute(tmp_path: Path) -> None:
    """close() takes the instance back first: finalize never runs beside an execute."""
    import threading
    import time

    from coserve.models import load_backend
    from coserve.models._layout import ModelFolder, read_model_folder

    folder = tmp_path / "slowfin"
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(NEIGHBOUR_CONFIG)
    done, final = tmp_path / "done", tmp_path / "final"
    model = SLOW_FINALIZE_MODEL.format(done=str(done), final=str(final))
    (folder / "1" / "model.py").write_text(model)
    layout = read_model_folder(ModelFolder("slowfin", folder))
    assert layout is not None
    backend = load_backend(layout.config, folder / "1", "1")
    batch = {"X": np.array([1.0], dtype=np.float32)}
    runner = threading.Thread(target=backend.predict, args=(batch,))
    runner.start()
    time.sleep(0.1)  # execute is running (it sleeps 0.5 s)
    backend.close()
    runner.join()
    assert float(final.read_text()) >= float(done.read_text())


PER_REQUEST_CONFIG = """
backend: "python"
max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 200000 }
input [ { name: "X" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "TOTAL" data_type: TYPE_INT32 dims: [ 1 ] },
         { name: "REQUESTS" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""

PER_REQUEST_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            rows = len(x)
            total = np.full((rows, 1), x.sum(), dtype=np.int32)  # across this request's rows
            count = np.full((rows, 1), len(requests), dtype=np.int32)
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("TOTAL", total), pb_utils.Tensor("REQUESTS", count)]
            ))
        return responses
"""


async def test_execute_gets_each_batched_request_as_its_own(tmp_path: Path) -> None:
    """Requests batched together reach execute() as a list, each with its own rows.

    As in Triton: a model that computes across a request's rows mixes nobody's.
    """
    folder = tmp_path / "per_request"
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(PER_REQUEST_CONFIG)
    (folder / "1" / "model.py").write_text(PER_REQUEST_MODEL)
    async with ModelRepository(tmp_path) as models:
        handle = models.get("per_request")
        results = await asyncio.gather(
            handle.infer({"X": np.array([[1], [2]], dtype=np.int32)}),
            handle.infer({"X": np.array([[10]], dtype=np.int32)}),
            handle.infer({"X": np.array([[100], [200], [300]], dtype=np.int32)}),
        )
        stats = handle.statistics()
    assert [r["TOTAL"][:, 0].tolist() for r in results] == [[3, 3], [10], [600, 600, 600]]
    assert all(r["REQUESTS"][0, 0] == 3 for r in results)  # one execute() for the three
    assert (stats.batches, stats.completed_rows) == (1, 6)


async def test_a_request_over_max_batch_size_is_refused_as_triton_refuses_it(
    tmp_path: Path,
) -> None:
    """Split in chunks, it would reach execute() as several requests: refused instead."""
    folder = tmp_path / "per_request"
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(PER_REQUEST_CONFIG)
    (folder / "1" / "model.py").write_text(PER_REQUEST_MODEL)
    async with ModelRepository(tmp_path) as models:
        handle = models.get("per_request")
        with pytest.raises(
            InvalidInput, match="inference request batch-size must be <= 8 for 'per_request'"
        ):
            await handle.infer({"X": np.ones((9, 1), dtype=np.int32)})
        whole = await handle.infer({"X": np.ones((8, 1), dtype=np.int32)})
    assert whole["TOTAL"][:, 0].tolist() == [8] * 8
