"""Triton's config.pbtxt read into coserve's config: each field's mapping, its warnings and errors.

Fast: no server. Model folders are written to a temporary directory with real ONNX models,
Triton's ``simple`` (tests/data/triton) and tiny identity models encoded here by hand (the
``onnx`` package is not a dependency), loaded by ONNX Runtime where a test runs them. Every
warning and error is checked to name the file, line and column it is about.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from coserve import ConfigError, InvalidInput, ModelRepository
from coserve.models._config import ModelConfig, VersionPolicy
from coserve.models._layout import ModelFolder, read_model_folder
from coserve.models._repository import bundled_repository, load_backend
from coserve.models._textproto import load
from coserve.models._textproto_schemas import TRITON_MODEL_CONFIG
from coserve.models._triton_config import (
    UNBATCHED_MAX_ROWS,
    read_triton_config,
    to_triton_json,
    triton_model_config,
)

DATA = Path(__file__).parent / "data"
SIMPLE = DATA / "triton" / "simple"
SIMPLE_ONNX = SIMPLE / "1" / "model.onnx"
SIMPLE_CONFIG = (SIMPLE / "config.pbtxt").read_text()
TEXTPROTO_FILES = sorted((DATA / "textproto" / "triton").glob("*.pbtxt")) + sorted(
    (DATA / "textproto" / "ours").glob("triton_*.pbtxt")
)

IO = """
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
        { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
         { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
"""


# -- tiny ONNX models, encoded by hand -----------------------------------------------------------

_ELEM = {"FP32": 1, "INT32": 6, "INT64": 7, "BYTES": 8}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, value: int | str | bytes) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _value_info(name: str, datatype: str, dims: Sequence[int | str]) -> bytes:
    shape = b"".join(_field(1, _field(2 if isinstance(d, str) else 1, d)) for d in dims)
    tensor = _field(1, _ELEM[datatype]) + _field(2, shape)
    return _field(1, name) + _field(2, _field(1, tensor))


def identity_onnx(path: Path, tensors: Sequence[tuple[str, str, str, Sequence[int | str]]]) -> Path:
    """An ONNX model of Identity nodes: (input, output, datatype, dims) each; "N" is symbolic."""
    graph = _field(2, "identity")
    for source, target, _, _ in tensors:
        graph += _field(1, _field(1, source) + _field(2, target) + _field(4, "Identity"))
    for source, _, datatype, dims in tensors:
        graph += _field(11, _value_info(source, datatype, dims))
    for _, target, datatype, dims in tensors:
        graph += _field(12, _value_info(target, datatype, dims))
    model = _field(1, 7) + _field(8, _field(1, "") + _field(2, 13)) + _field(7, graph)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model)
    return path


# -- helpers ---------------------------------------------------------------------------------------


def model_folder(
    root: Path, name: str, config: str | None, *, model: Path | None = SIMPLE_ONNX
) -> Path:
    """``root/name`` with version 1 holding ``model`` (as model.onnx) and the config, if any."""
    folder = root / name
    (folder / "1").mkdir(parents=True)
    if model is not None:
        shutil.copy(model, folder / "1" / "model.onnx")
    if config is not None:
        (folder / "config.pbtxt").write_text(config)
    return folder


def read(folder: Path, policy: VersionPolicy | None = None) -> ModelConfig:
    versions = {int(p.name): p for p in folder.iterdir() if p.name.isdigit()}
    return read_triton_config(folder, name=folder.name, versions=versions, policy=policy)


def line_of(path: Path, text: str) -> int:
    """The 1-based line of the first line holding ``text``."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def where(folder: Path, text: str) -> str:
    """``config.pbtxt:<line>:<column>`` of the first ``text`` in the folder's config."""
    path = folder / "config.pbtxt"
    line = line_of(path, text)
    column = path.read_text().splitlines()[line - 1].index(text) + 1
    return f"{path}:{line}:{column}"


def at_line(folder: Path, text: str) -> str:
    """``config.pbtxt:<line>:`` of the first ``text``: a list's position is its first item's."""
    path = folder / "config.pbtxt"
    return f"{path}:{line_of(path, text)}:"


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


async def infer(folder: Path, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    async with ModelRepository(folder.parent) as repository:
        return await repository.get(folder.name).infer(inputs)


# -- Triton's simple model -------------------------------------------------------------------------


def test_simple_maps_to_an_onnx_model_that_runs_each_request_alone(tmp_path: Path) -> None:
    """max_batch_size 8, no dynamic_batching: [-1, 16] INT32 specs, batches of one request."""
    config = read(model_folder(tmp_path, "simple", SIMPLE_CONFIG))
    assert config.platform == "onnx_onnxv1"
    assert config.filename == "model.onnx"
    assert [(s.name, s.datatype, s.shape) for s in config.inputs or ()] == [
        ("INPUT0", "INT32", (-1, 16)),
        ("INPUT1", "INT32", (-1, 16)),
    ]
    assert [s.name for s in config.outputs or ()] == ["OUTPUT0", "OUTPUT1"]
    assert config.batched
    assert config.reshape == ()
    assert config.batching.max_batch_size == 8
    assert not config.batching.combine_requests  # Triton: no scheduler section, no batching
    assert config.batching.max_concurrent_batches == 1
    assert config.versions == VersionPolicy("latest", 1)


def test_simple_config_reads_back_as_tritons_json(tmp_path: Path) -> None:
    """What Triton answers for simple on a CPU machine, after its normalization."""
    config = read(model_folder(tmp_path, "simple", SIMPLE_CONFIG))
    io: dict[str, Any] = {
        "format": "FORMAT_NONE",
        "is_shape_tensor": False,
        "allow_ragged_batch": False,
        "optional": False,
        "is_non_linear_format_io": False,
    }
    out: dict[str, Any] = {
        "label_filename": "",
        "is_shape_tensor": False,
        "is_non_linear_format_io": False,
    }
    answer = triton_model_config(config, config.inputs or (), config.outputs or ())
    assert answer == {
        "name": "simple",
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "runtime": "",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": 8,
        "input": [
            {"name": "INPUT0", "data_type": "TYPE_INT32", **io, "dims": [16]},
            {"name": "INPUT1", "data_type": "TYPE_INT32", **io, "dims": [16]},
        ],
        "output": [
            {"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": [16], **out},
            {"name": "OUTPUT1", "data_type": "TYPE_INT32", "dims": [16], **out},
        ],
        "batch_input": [],
        "batch_output": [],
        "optimization": {
            "priority": "PRIORITY_DEFAULT",
            "input_pinned_memory": {"enable": True},
            "output_pinned_memory": {"enable": True},
            "gather_kernel_buffer_threshold": 0,
            "eager_batching": False,
        },
        "instance_group": [
            {
                "name": "simple",
                "kind": "KIND_CPU",
                "count": 1,
                "gpus": [],
                "secondary_devices": [],
                "profile": [],
                "passive": False,
                "host_policy": "",
            }
        ],
        "default_model_filename": "model.onnx",
        "cc_model_filenames": {},
        "metric_tags": {},
        "parameters": {},
        "model_warmup": [],
    }
    json.dumps(answer)  # plain JSON all the way down


def _as_triton_prints(value: Any, path: str) -> Any:
    """Protobuf's JSON with Triton's fixes (model_config_utils.cc ModelConfigToJson), by path."""
    numeric = {
        "input.dims", "input.reshape.shape", "output.dims", "output.reshape.shape",
        "version_policy.specific.versions",
        "dynamic_batching.max_queue_delay_microseconds", "dynamic_batching.priority_levels",
        "dynamic_batching.default_priority_level",
        "dynamic_batching.default_queue_policy.default_timeout_microseconds",
        "dynamic_batching.priority_queue_policy.*.default_timeout_microseconds",
        "sequence_batching.max_sequence_idle_microseconds",
        "sequence_batching.oldest.max_queue_delay_microseconds",
        "sequence_batching.direct.max_queue_delay_microseconds",
        "sequence_batching.state.dims", "ensemble_scheduling.step.model_version",
        "model_warmup.inputs.*.dims",
    }  # fmt: skip
    if isinstance(value, list):
        return [_as_triton_prints(item, path) for item in value]
    if isinstance(value, dict):
        maps = ("dynamic_batching.priority_queue_policy", "model_warmup.inputs")
        if path in maps:
            return {k: _as_triton_prints(v, f"{path}.*") for k, v in value.items()}
        return {k: _as_triton_prints(v, f"{path}.{k}" if path else k) for k, v in value.items()}
    if path in numeric and isinstance(value, str):
        return int(value)
    return value


@pytest.mark.parametrize("path", TEXTPROTO_FILES, ids=lambda path: path.name)
def test_the_json_is_protobufs_with_tritons_numbers(path: Path) -> None:
    """Every field of every test config prints as protobuf's json_format prints it.

    That is with field names kept and fields without presence printed, and the 64-bit numbers
    Triton fixes printed as numbers.
    """
    message = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    expected = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    decoded = load(path, TRITON_MODEL_CONFIG)
    assert to_triton_json(decoded) == _as_triton_prints(expected, "")


def test_a_config_toml_model_has_a_triton_config_too() -> None:
    """The bundled ONNX demo model, in Triton's terms: platform, batching, instances, shapes."""
    demo = bundled_repository() / "digits_onnx"
    config = ModelConfig.load(demo / "config.toml")
    backend = load_backend(config, demo / "1")
    try:
        answer = triton_model_config(config, backend.inputs, backend.outputs)
    finally:
        backend.close()
    assert answer["platform"] == "onnxruntime_onnx"
    assert answer["backend"] == "onnxruntime"
    assert answer["max_batch_size"] == 64
    assert [(t["name"], t["data_type"], t["dims"]) for t in answer["input"]] == [
        ("image", "TYPE_FP32", [8, 8, 1])
    ]
    assert answer["output"][0]["dims"] == [10]
    assert answer["dynamic_batching"]["preferred_batch_size"] == [64]
    assert answer["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 1024
    assert answer["instance_group"][0]["kind"] == "KIND_CPU"
    assert answer["instance_group"][0]["count"] == 1
    assert answer["default_model_filename"] == "model.onnx"


# -- name and platform ---------------------------------------------------------------------------


def test_the_name_must_be_the_folders(tmp_path: Path) -> None:
    """Triton's rule, with the file, line and column of the name."""
    folder = model_folder(tmp_path, "renamed", SIMPLE_CONFIG)
    with pytest.raises(ConfigError) as raised:
        read(folder)
    assert str(raised.value).startswith(where(folder, 'name: "simple"'))
    assert "'simple' must be the model folder's name, 'renamed'" in str(raised.value)


def test_the_name_is_optional(tmp_path: Path) -> None:
    folder = model_folder(tmp_path, "unnamed", SIMPLE_CONFIG.replace('name: "simple"', ""))
    assert read(folder).name == "unnamed"


@pytest.mark.parametrize(
    ("header", "platform", "triton"),
    [
        ('platform: "onnxruntime_onnx"', "onnx_onnxv1", "onnxruntime_onnx"),
        ('backend: "onnxruntime"', "onnx_onnxv1", "onnxruntime_onnx"),
        ('platform: "onnxruntime_onnx" backend: "onnxruntime"', "onnx_onnxv1", "onnxruntime_onnx"),
        ('platform: "tensorflow_savedmodel"', "tensorflow_savedmodel", "tensorflow_savedmodel"),
        ('backend: "tensorflow"', "tensorflow_savedmodel", "tensorflow_savedmodel"),
        ('platform: "pytorch_libtorch"', "pytorch_torchscript", "pytorch_libtorch"),
        ('backend: "pytorch"', "pytorch_torchscript", "pytorch_libtorch"),
    ],
)
def test_platforms_and_backends(tmp_path: Path, header: str, platform: str, triton: str) -> None:
    """Both fields are filled in the Triton config, as Triton's normalization fills them."""
    folder = model_folder(tmp_path, "m", f"{header}\nmax_batch_size: 8\n{IO}", model=None)
    config = read(folder)
    assert config.platform == platform
    assert config.triton is not None
    assert config.triton["platform"] == triton
    assert (
        config.filename
        == {
            "onnx_onnxv1": "model.onnx",
            "tensorflow_savedmodel": "model.savedmodel",
            "pytorch_torchscript": "model.pt",
        }[platform]
    )


@pytest.mark.parametrize(
    ("header", "at", "message"),
    [
        ('platform: "ensemble"', "platform", "Triton ensembles"),
        ('platform: "tensorrt_plan"', "platform", "TensorRT plans (tensorrt_plan)"),
        ('backend: "tensorrt"', "backend", "TensorRT"),
        ('platform: "tensorflow_graphdef"', "platform", "GraphDef"),
        ('backend: "openvino"', "backend", "OpenVINO"),
        ('backend: "dali"', "backend", "backend 'dali' is not supported"),
        ('platform: "caffe2_netdef"', "platform", "platform 'caffe2_netdef' is not supported"),
        (
            'platform: "onnxruntime_onnx" backend: "pytorch"',
            "backend",
            "backend 'pytorch' does not go with platform 'onnxruntime_onnx'",
        ),
    ],
)
def test_what_coserve_cannot_serve_is_an_error_naming_it(
    tmp_path: Path, header: str, at: str, message: str
) -> None:
    folder = model_folder(tmp_path, "m", f"{header}\nmax_batch_size: 8\n{IO}", model=None)
    with pytest.raises(ConfigError) as raised:
        read(folder)
    assert str(raised.value).startswith(where(folder, at))
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("file", "platform", "error"),
    [
        ("model.onnx", "onnx_onnxv1", None),
        ("model.savedmodel", "tensorflow_savedmodel", None),
        ("model.pt", "pytorch_torchscript", None),
        ("model.py", "triton_python", None),
        ("model.plan", None, "TensorRT"),
        ("model.graphdef", None, "GraphDef"),
        ("notes.txt", None, "no platform or backend"),
    ],
)
def test_without_platform_or_backend_the_file_decides(
    tmp_path: Path, file: str, platform: str | None, error: str | None
) -> None:
    """As Triton's autofill: the model file in the first version folder."""
    folder = model_folder(tmp_path, "m", f"max_batch_size: 8\n{IO}", model=None)
    (folder / "1" / file).mkdir() if file.endswith("savedmodel") else (folder / "1" / file).touch()
    if error is None:
        assert read(folder).platform == platform
    else:
        with pytest.raises(ConfigError, match=error):
            read(folder)


def test_default_model_filename_is_the_file(tmp_path: Path) -> None:
    folder = model_folder(tmp_path, "m", f'{SIMPLE_CONFIG}\ndefault_model_filename: "net.onnx"')
    folder.rename(tmp_path / "simple")
    config = read(tmp_path / "simple")
    assert config.filename == "net.onnx"
    assert config.triton is not None
    assert config.triton["default_model_filename"] == "net.onnx"


# -- tensors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("triton", "datatype"),
    [
        ("TYPE_BOOL", "BOOL"),
        ("TYPE_UINT8", "UINT8"),
        ("TYPE_UINT64", "UINT64"),
        ("TYPE_INT8", "INT8"),
        ("TYPE_INT64", "INT64"),
        ("TYPE_FP16", "FP16"),
        ("TYPE_FP32", "FP32"),
        ("TYPE_FP64", "FP64"),
        ("TYPE_STRING", "BYTES"),
    ],
)
def test_data_types(tmp_path: Path, triton: str, datatype: str) -> None:
    text = f'backend: "onnxruntime" max_batch_size: 2\n{IO.replace("TYPE_INT32", triton)}'
    config = read(model_folder(tmp_path, "m", text, model=None))
    assert {s.datatype for s in (*(config.inputs or ()), *(config.outputs or ()))} == {datatype}
    assert config.warm_up == (datatype != "BYTES")  # empty strings suit few models


@pytest.mark.parametrize(
    ("change", "line", "message"),
    [
        (("TYPE_INT32", "TYPE_BF16"), 3, "input 'INPUT0' data_type TYPE_BF16 is not supported"),
        (("data_type: TYPE_INT32", ""), 3, "input 'INPUT0' must have a data_type"),
        (("dims: [ 16 ]", "dims: [ 0 ]"), 3, r"dims must be >= 1, or -1 for any size; got \[0\]"),
        (("dims: [ 16 ]", ""), 3, "input 'INPUT0' must have dims"),
        (('name: "INPUT1"', 'name: "INPUT0"'), 4, "input 'INPUT0' is given twice"),
    ],
)
def test_tensor_errors_name_the_line(
    tmp_path: Path, change: tuple[str, str], line: int, message: str
) -> None:
    io = IO.replace(*change, 1)
    folder = model_folder(tmp_path, "m", f'backend: "onnxruntime" max_batch_size: 2\n{io}')
    with pytest.raises(ConfigError, match=message) as raised:
        read(folder)
    assert str(raised.value).startswith(f"{folder / 'config.pbtxt'}:{line}:")


async def test_max_batch_size_0_serves_the_tensors_as_they_are(tmp_path: Path) -> None:
    """No batch dimension: dims are the shapes; a request runs alone, whole, as it came."""
    text = SIMPLE_CONFIG.replace("max_batch_size: 8", "max_batch_size: 0").replace(
        "dims: [ 16 ]", "dims: [ -1, 16 ]"
    )
    folder = model_folder(tmp_path, "simple", text)
    config = read(folder)
    assert not config.batched
    assert [s.shape for s in config.inputs or ()] == [(-1, 16), (-1, 16)]
    assert config.batching.max_batch_size == UNBATCHED_MAX_ROWS
    assert not config.batching.combine_requests
    assert config.triton is not None
    assert config.triton["max_batch_size"] == 0
    a = np.arange(48, dtype=np.int32).reshape(3, 16)
    outputs = await infer(folder, {"INPUT0": a, "INPUT1": np.ones_like(a)})
    np.testing.assert_array_equal(outputs["OUTPUT0"], a + 1)
    np.testing.assert_array_equal(outputs["OUTPUT1"], a - 1)


@pytest.mark.parametrize("name", ["densenet_onnx", "inception_onnx"])
def test_tritons_image_models_map(tmp_path: Path, name: str) -> None:
    """Triton's image examples (max_batch_size 0, a reshape adding a batch of 1) map.

    Their input and output first dimensions differ (3 or 299 against 1000 or 1001): each
    request is served whole (test_triton_dropin's tiny_densenet runs one such model).
    """
    text = (DATA / "textproto" / "triton" / f"{name}.pbtxt").read_text()
    folder = model_folder(tmp_path, name, text, model=None)
    label_file = "densenet_labels.txt" if name.startswith("densenet") else "inception_labels.txt"
    (folder / label_file).write_text("tench\ngoldfish\n\n")
    (folder / "1" / "model.onnx").touch()
    config = read(folder)
    assert config.platform == "onnx_onnxv1"
    assert not config.batched
    assert config.labels == ("tench", "goldfish")
    inputs, outputs = config.inputs or (), config.outputs or ()
    if name.startswith("densenet"):
        assert [(s.name, s.datatype, s.shape) for s in inputs] == [
            ("data_0", "FP32", (3, 224, 224))
        ]
        assert [s.shape for s in outputs] == [(1000,)]
        assert config.reshape == (("data_0", (1, 3, 224, 224)), ("fc6_1", (1, 1000, 1, 1)))
    else:
        assert [s.shape for s in inputs] == [(299, 299, 3)]
        assert config.reshape == (
            ("input:0", (1, 299, 299, 3)),
            ("InceptionV3/Predictions/Softmax:0", (1, 1001)),
        )
    assert config.triton is not None
    assert config.triton["input"][0]["format"] in ("FORMAT_NCHW", "FORMAT_NHWC")


async def test_reshape_is_applied_around_the_model(tmp_path: Path) -> None:
    """The API sees dims [4, 4] in and [2, 8] out; the model takes and gives [16] rows."""
    text = """
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 4, 4 ] reshape { shape: [ 16 ] } },
        { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 2, -1 ] reshape { shape: [ -1 ] } },
         { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
dynamic_batching { }
"""
    # [2, -1] against [-1] hold different runs, so Triton (and coserve) refuse it ...
    with pytest.raises(ConfigError, match=r"reshape \[-1\] does not hold the same elements"):
        read(model_folder(tmp_path / "bad", "simple", text))
    # ... while [2, 8] against [16] is fine.
    fine = text.replace("[ 2, -1 ] reshape { shape: [ -1 ] }", "[ 2, 8 ] reshape { shape: [ 16 ] }")
    folder = model_folder(tmp_path, "simple", fine)
    config = read(folder)
    assert [s.shape for s in config.inputs or ()] == [(-1, 4, 4), (-1, 16)]
    assert [s.shape for s in config.outputs or ()] == [(-1, 2, 8), (-1, 16)]
    a = np.arange(32, dtype=np.int32).reshape(2, 4, 4)
    outputs = await infer(folder, {"INPUT0": a, "INPUT1": np.ones((2, 16), np.int32)})
    np.testing.assert_array_equal(outputs["OUTPUT0"], (a.reshape(2, 16) + 1).reshape(2, 2, 8))
    np.testing.assert_array_equal(outputs["OUTPUT1"], a.reshape(2, 16) - 1)


async def test_an_empty_reshape_is_a_scalar_per_row(tmp_path: Path) -> None:
    """Dims [1] on the API, nothing on the model: [rows, 1] in, the model sees [rows]."""
    model = identity_onnx(tmp_path / "scalar.onnx", [("x", "y", "FP32", ["N"])])
    text = """
backend: "onnxruntime"
max_batch_size: 4
input { name: "x" data_type: TYPE_FP32 dims: [ 1 ] reshape { shape: [ ] } }
output { name: "y" data_type: TYPE_FP32 dims: [ 1 ] reshape { shape: [ ] } }
"""
    folder = model_folder(tmp_path, "scalar", text, model=model)
    outputs = await infer(folder, {"x": np.array([[1.5], [2.5]], np.float32)})
    np.testing.assert_array_equal(outputs["y"], [[1.5], [2.5]])


OPTIONAL_CONFIG = """
backend: "python"
max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 100000 }
input [ { name: "A" data_type: TYPE_INT32 dims: [ 1 ] },
        { name: "B" data_type: TYPE_INT32 dims: [ 1 ] optional: true } ]
output [ { name: "SUM" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""

OPTIONAL_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "A").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "B")
            total = a if b is None else a + b.as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("SUM", total)]))
        return responses
"""


async def test_an_optional_input_may_be_left_out(tmp_path: Path) -> None:
    """The model runs without it; requests with and without it never share a batch."""
    folder = model_folder(tmp_path, "optional", OPTIONAL_CONFIG, model=None)
    (folder / "1" / "model.py").write_text(OPTIONAL_MODEL)
    config = read(folder)
    assert [(s.name, s.optional) for s in config.inputs or ()] == [("A", False), ("B", True)]
    one = np.array([[1]], np.int32)
    async with ModelRepository(tmp_path) as repository:
        handle = repository.get("optional")
        alone, both, again = await asyncio.gather(
            handle.infer({"A": one}),
            handle.infer({"A": one, "B": one * 10}),
            handle.infer({"A": one * 2}),
        )
        with pytest.raises(InvalidInput, match=r"missing input 'A'; expected: A INT32\[-1, 1\], B"):
            await handle.infer({"B": one})
        stats = handle.statistics()
    assert [int(r["SUM"][0, 0]) for r in (alone, both, again)] == [1, 11, 2]
    assert stats.batches == 2  # one per set of inputs: with B, and the two without
    triton = config.triton or {}
    assert triton["input"][1]["optional"] is True


async def test_an_onnx_input_without_a_default_cannot_be_left_out(tmp_path: Path) -> None:
    """Simple's file requires INPUT1: optional in the config, a request without it is a 400."""
    io = IO.replace(
        '{ name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] }',
        '{ name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] optional: true }',
    )
    folder = model_folder(tmp_path, "simple", f'backend: "onnxruntime" max_batch_size: 8\n{io}')
    assert [s.optional for s in read(folder).inputs or ()] == [False, True]
    with pytest.raises(InvalidInput, match="needs input 'INPUT1': its file gives it no default"):
        await infer(folder, {"INPUT0": np.ones((1, 16), np.int32)})


def test_optional_is_a_warning_where_the_model_needs_every_input(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    io = IO.replace("dims: [ 16 ] },", "dims: [ 16 ] optional: true },", 1)
    text = f'platform: "tensorflow_savedmodel" max_batch_size: 8\n{io}'
    folder = model_folder(tmp_path, "simple", text, model=None)
    with caplog.at_level(logging.WARNING, logger="coserve.models"):
        config = read(folder)
    assert not any(spec.optional for spec in config.inputs or ())
    [warning] = warnings_of(caplog)
    assert "input 'INPUT0': optional is not applied (a tensorflow_savedmodel model" in warning


def test_label_filename_gives_the_labels(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The first output's; a second is named in a warning."""
    io = IO.replace(
        '"OUTPUT0" data_type: TYPE_INT32', '"OUTPUT0" label_filename: "a.txt" data_type: TYPE_INT32'
    )
    io = io.replace(
        '"OUTPUT1" data_type: TYPE_INT32', '"OUTPUT1" label_filename: "b.txt" data_type: TYPE_INT32'
    )
    folder = model_folder(tmp_path, "simple", f'platform: "onnxruntime_onnx"\n{io}')
    (folder / "a.txt").write_text("cat\ndog\n")
    with caplog.at_level(logging.WARNING, logger="coserve.models"):
        assert read(folder).labels == ("cat", "dog")
    [warning] = warnings_of(caplog)
    assert warning.startswith(where(folder, 'label_filename: "b.txt"'))
    (folder / "a.txt").unlink()
    with pytest.raises(ConfigError, match="cannot read labels") as raised:
        read(folder)
    assert str(raised.value).startswith(where(folder, 'label_filename: "a.txt"'))


# -- scheduling ------------------------------------------------------------------------------------


def test_dynamic_batching_combines_requests(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Delay, queue bound and timeout map; what coserve does otherwise is a warning each."""
    text = (
        SIMPLE_CONFIG
        + """
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 2500
  preserve_ordering: true
  priority_levels: 3
  default_priority_level: 2
  default_queue_policy {
    timeout_action: DELAY
    default_timeout_microseconds: 1500000
    allow_timeout_override: true
    max_queue_size: 16
  }
  priority_queue_policy { key: 1 value { max_queue_size: 4 } }
}
"""
    )
    folder = model_folder(tmp_path, "simple", text)
    with caplog.at_level(logging.WARNING, logger="coserve.models"):
        config = read(folder)
    batching = config.batching
    assert batching.combine_requests
    assert batching.max_batch_size == 8
    assert batching.max_wait == pytest.approx(0.0025)
    assert batching.max_queue_size == 16
    assert batching.timeout == pytest.approx(1.5)
    warnings = warnings_of(caplog)
    for field, says in [
        ("preferred_batch_size", "is not used: coserve runs whatever is queued"),
        ("preserve_ordering", "is not applied"),
        ("default_priority_level", "a request that gives no priority ranks with level 1"),
        ("priority_queue_policy", "is not applied"),
        ("timeout_action", "DELAY is not applied"),
        ("allow_timeout_override", "coserve lets every request set its own timeout"),
    ]:
        [warning] = [w for w in warnings if w.startswith(at_line(folder, field))]
        assert says in warning, warning
    assert len(warnings) == 6
    assert config.triton is not None
    assert config.triton["dynamic_batching"]["preferred_batch_size"] == [4, 8]


def test_an_unbounded_queue_keeps_coserves_bound(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = SIMPLE_CONFIG + "dynamic_batching { default_queue_policy { max_queue_size: 0 } }"
    folder = model_folder(tmp_path, "simple", text)
    with caplog.at_level(logging.INFO, logger="coserve.models"):
        config = read(folder)
    assert config.batching.max_queue_size == 1024
    assert config.batching.combine_requests
    says = "max_queue_size 0 (unbounded in Triton): coserve keeps its bound of 1024 requests"
    assert any(says in r.getMessage() for r in caplog.records)
    assert config.triton is not None  # preferred sizes normalized as Triton does
    assert config.triton["dynamic_batching"]["preferred_batch_size"] == [8]


@pytest.mark.parametrize(
    ("batching", "message"),
    [
        ("preferred_batch_size: [ 16 ]", r"\[16\] must be between 1 and max_batch_size \(8\)"),
        ("priority_levels: 2 default_priority_level: 3", "must be between 1 and priority_levels"),
        (
            "priority_levels: 2 default_priority_level: 1 priority_queue_policy { key: 5 }",
            "level 5 is not between 1",
        ),
    ],
)
def test_tritons_scheduling_rules(tmp_path: Path, batching: str, message: str) -> None:
    folder = model_folder(tmp_path, "simple", f"{SIMPLE_CONFIG}\ndynamic_batching {{ {batching} }}")
    with pytest.raises(ConfigError, match=message) as raised:
        read(folder)
    assert str(raised.value).startswith(
        f"{folder / 'config.pbtxt'}:{line_of(folder / 'config.pbtxt', 'dynamic_batching')}:"
    )


def test_instance_groups_are_concurrent_batches(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = (
        SIMPLE_CONFIG
        + """
instance_group [ { count: 2 kind: KIND_CPU }, { kind: KIND_GPU gpus: [ 0 ] },
                 { count: 3 host_policy: "numa0" } ]
"""
    )
    folder = model_folder(tmp_path, "simple", text)
    with caplog.at_level(logging.WARNING, logger="coserve.models"):
        config = read(folder)
    assert config.batching.max_concurrent_batches == 6  # 2 + 1 (count 0 is 1) + 3
    warnings = warnings_of(caplog)
    assert len(warnings) == 2
    assert warnings[0].startswith(where(folder, "kind: KIND_GPU"))
    assert "KIND_GPU: coserve runs this model on the CPU" in warnings[0]
    assert warnings[1].startswith(where(folder, "host_policy"))
    assert config.triton is not None
    assert [(g["name"], g["kind"], g["count"]) for g in config.triton["instance_group"]] == [
        ("simple_0", "KIND_CPU", 2),
        ("simple_1", "KIND_GPU", 1),
        ("simple_2", "KIND_CPU", 3),
    ]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("latest { num_versions: 2 }", VersionPolicy("latest", 2)),
        ("all { }", VersionPolicy("all")),
        ("specific { versions: [ 1, 3 ] }", VersionPolicy("specific", specific=(1, 3))),
    ],
)
def test_version_policy(tmp_path: Path, policy: str, expected: VersionPolicy) -> None:
    folder = model_folder(tmp_path, "simple", f"{SIMPLE_CONFIG}\nversion_policy {{ {policy} }}")
    assert read(folder).versions == expected


def test_onnx_runtime_thread_counts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = (
        SIMPLE_CONFIG
        + """
parameters { key: "intra_op_thread_count" value: { string_value: "3" } }
parameters { key: "inter_op_thread_count" value: { string_value: "1" } }
parameters { key: "cudnn_conv_algo_search" value: { string_value: "1" } }
"""
    )
    folder = model_folder(tmp_path, "simple", text)
    with caplog.at_level(logging.WARNING, logger="coserve.models"):
        config = read(folder)
    assert (config.threads.intra_op, config.threads.inter_op) == (3, 1)
    [warning] = warnings_of(caplog)
    assert warning.startswith(where(folder, 'parameters { key: "cudnn_conv_algo_search"'))


@pytest.mark.parametrize(
    ("field", "says"),
    [
        ("model_warmup [ { name: \"w\" batch_size: 1 } ]", "coserve warms up by itself"),
        ("optimization { graph { level: 1 } }", "optimization is not applied"),
        ("model_operations { op_library_filename: \"libx.so\" }", "no custom operation libraries"),
        ("response_cache { enable: true }", "caches no responses"),
        ("metric_tags { key: \"team\" value: \"a\" }", "no extra labels"),
        ("cc_model_filenames { key: \"8.6\" value: \"x.onnx\" }", "loads default_model_filename"),
        ("model_repository_agents { agents [ { name: \"checksum\" } ] }", "no repository agents"),
        ("runtime: \"libtriton_onnxruntime.so\"", "runs the platform's own backend"),
    ],
)  # fmt: skip
def test_fields_coserve_does_not_apply_are_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, field: str, says: str
) -> None:
    folder = model_folder(tmp_path, "simple", f"{SIMPLE_CONFIG}\n{field}")
    with caplog.at_level(logging.WARNING, logger="coserve.models"):
        read(folder)
    [warning] = warnings_of(caplog)
    assert warning.startswith(where(folder, field.split()[0]))
    assert says in warning


@pytest.mark.parametrize(
    ("field", "says"),
    [
        ("sequence_batching { state [ { input_name: \"S\" } ] }", "implicit state"),
        ("sequence_batching { iterative_sequence: true }", "iterative_sequence is not"),
        ("model_transaction_policy { decoupled: true }", "decoupled models"),
        ("ensemble_scheduling { step [ { model_name: \"a\" } ] }", "Triton ensembles"),
        ("batch_input [ { target_name: \"N\" source_input: \"INPUT0\" } ]", "batch_input is not"),
    ],
)  # fmt: skip
def test_fields_that_would_serve_the_model_wrongly_are_errors(
    tmp_path: Path, field: str, says: str
) -> None:
    folder = model_folder(tmp_path, "simple", f"{SIMPLE_CONFIG}\n{field}")
    with pytest.raises(ConfigError) as raised:
        read(folder)
    at = "decoupled" if "decoupled" in field else field.split()[0]
    if field.startswith("sequence_batching"):  # the field inside; a list's is its first item's
        at = "{ input_name" if "state" in field else field.split()[2]
    assert str(raised.value).startswith(where(folder, at))
    assert says in str(raised.value)


# -- auto-complete ---------------------------------------------------------------------------------


def test_no_config_is_completed_from_the_model_file(tmp_path: Path) -> None:
    """Triton's ONNX auto-complete: the model file's tensors, batched if it can batch.

    Every first dimension is -1, so max_batch_size 4 and dynamic batching; the tensors as the
    file has them, without the batch dimension.
    """
    folder = model_folder(tmp_path, "bare", None)
    layout = read_model_folder(ModelFolder("bare", folder))
    assert layout is not None
    config = layout.config
    assert config.platform == "onnx_onnxv1"
    assert config.batching.max_batch_size == 4
    assert config.batching.combine_requests
    assert [(s.name, s.datatype, s.shape) for s in config.inputs or ()] == [
        ("INPUT0", "INT32", (-1, 16)),
        ("INPUT1", "INT32", (-1, 16)),
    ]
    answer = triton_model_config(config, config.inputs or (), config.outputs or ())
    assert answer["max_batch_size"] == 4
    assert answer["dynamic_batching"]["preferred_batch_size"] == [4]
    assert [(t["name"], t["dims"]) for t in answer["output"]] == [
        ("OUTPUT0", [16]),
        ("OUTPUT1", [16]),
    ]


async def test_a_savedmodel_with_no_config_is_completed_from_its_signature(
    tmp_path: Path,
) -> None:
    """Triton's TensorFlow layout, ``1/model.savedmodel``: the serving_default signature."""
    folder = tmp_path / "digits"
    shutil.copytree(
        bundled_repository() / "digits" / "1" / "model.savedmodel",
        folder / "1" / "model.savedmodel",
    )
    config = read(folder)
    assert config.platform == "tensorflow_savedmodel"
    assert config.batching.max_batch_size == 4
    assert config.batching.combine_requests
    assert [(s.name, s.datatype, s.shape) for s in config.inputs or ()] == [
        ("image", "FP32", (-1, 8, 8, 1))
    ]
    outputs = await infer(folder, {"image": np.zeros((3, 8, 8, 1), np.float32)})
    assert outputs["probabilities"].shape == (3, 10)


def test_a_partial_config_is_completed(tmp_path: Path) -> None:
    """Inputs given, outputs read from the file; max_batch_size given stays."""
    text = 'platform: "onnxruntime_onnx"\nmax_batch_size: 2\n' + IO[: IO.index("output")]
    config = read(model_folder(tmp_path, "partial", text))
    assert config.batching.max_batch_size == 2
    assert config.batching.combine_requests  # auto-complete adds dynamic batching
    assert [s.name for s in config.outputs or ()] == ["OUTPUT0", "OUTPUT1"]


def test_a_model_that_cannot_batch(tmp_path: Path) -> None:
    """A model file with a fixed first dimension cannot batch.

    With no config it gets max_batch_size 0 (the shapes exactly); a max_batch_size in a partial
    config is Triton's auto-complete error.
    """
    model = identity_onnx(tmp_path / "fixed.onnx", [("x", "y", "FP32", [2, 3])])
    config = read(model_folder(tmp_path, "fixed", None, model=model))
    assert not config.batched
    assert [s.shape for s in config.inputs or ()] == [(2, 3)]
    folder = model_folder(tmp_path / "given", "fixed", "max_batch_size: 8", model=model)
    with pytest.raises(ConfigError, match=r"max_batch_size is 8, but .* cannot batch") as raised:
        read(folder)
    assert str(raised.value).startswith(where(folder, "max_batch_size"))


def test_a_pytorch_model_needs_its_tensors_in_the_config(tmp_path: Path) -> None:
    folder = model_folder(tmp_path, "torch", 'backend: "pytorch" max_batch_size: 4', model=None)
    (folder / "1" / "model.pt").touch()
    with pytest.raises(ConfigError, match="a PyTorch model needs input and output"):
        read(folder)


# -- in a repository -------------------------------------------------------------------------------


async def test_a_repository_of_triton_folders(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Triton's simple and simple_string load and answer beside models that cannot.

    A Python model and an ensemble are each an error naming the file and line, and the others
    still load; config.toml wins over a config.pbtxt beside it.
    """
    shutil.copytree(SIMPLE, tmp_path / "simple")
    shutil.copytree(DATA / "triton" / "simple_string", tmp_path / "simple_string")
    python = model_folder(tmp_path, "identity", 'backend: "python"\nmax_batch_size: 8', model=None)
    (python / "1" / "model.py").write_text("class TritonPythonModel: ...\n")
    ensemble = model_folder(tmp_path, "pipeline", 'platform: "ensemble"', model=None)
    both = model_folder(tmp_path, "both", 'platform: "ensemble"', model=None)
    (both / "config.toml").write_text(
        'platform = "python"\n[[inputs]]\nname = "x"\ndatatype = "INT64"\nshape = [-1]\n'
        '[[outputs]]\nname = "y"\ndatatype = "INT64"\nshape = [-1]\n'
    )
    (both / "1" / "model.py").write_text(
        "def predict(inputs):\n    return {'y': inputs['x'] * 2}\n"
    )
    with caplog.at_level(logging.DEBUG, logger="coserve.models"):
        async with ModelRepository(tmp_path) as repository:
            assert [m.name for m in repository.models()] == ["both", "simple", "simple_string"]
            assert repository.get("simple").platform == "onnxruntime_onnx"
            a = np.arange(16, dtype=np.int32)[None]
            result = await repository.get("simple").infer({"INPUT0": a, "INPUT1": a})
            np.testing.assert_array_equal(result["OUTPUT0"], 2 * a)
            strings = np.array([[str(i).encode() for i in range(16)]], dtype=object)
            ones = np.full((1, 16), b"1", dtype=object)
            result = await repository.get("simple_string").infer(
                {"INPUT0": strings, "INPUT1": ones}
            )
            assert [int(v) for v in result["OUTPUT0"][0]] == list(range(1, 17))
            assert [int(v) for v in result["OUTPUT1"][0]] == list(range(-1, 15))
            doubled = await repository.get("both").infer({"x": np.array([4])})
            assert doubled["y"].tolist() == [8]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    [python_error] = [e for e in errors if e.startswith("model identity: not served: ")]
    assert python_error.startswith(f"model identity: not served: {where(python, 'backend')}")
    assert "Triton Python models" in python_error
    [ensemble_error] = [e for e in errors if e.startswith("model pipeline: not served: ")]
    assert ensemble_error.startswith(f"model pipeline: not served: {where(ensemble, 'platform')}")
    assert any("config.pbtxt beside it is not read" in r.getMessage() for r in caplog.records)


async def test_onnx_strings_are_bytes_for_config_toml_models_too(tmp_path: Path) -> None:
    """ONNX Runtime takes and gives str; coserve's BYTES are bytes, whatever the config."""
    folder = tmp_path / "strings"
    (folder / "1").mkdir(parents=True)
    shutil.copy(DATA / "triton" / "simple_string" / "1" / "model.onnx", folder / "1")
    (folder / "config.toml").write_text('platform = "onnx_onnxv1"\nwarm_up = false\n')
    strings = np.array([[str(i).encode() for i in range(16)]], dtype=object)
    outputs = await infer(folder, {"INPUT0": strings, "INPUT1": strings})
    assert outputs["OUTPUT0"][0].tolist() == [str(2 * i).encode() for i in range(16)]


async def test_a_repository_polls_without_reloading_the_model_file(tmp_path: Path) -> None:
    """Reading a folder again (each poll) reuses the tensors read to complete its config."""
    model_folder(tmp_path, "bare", None)
    async with ModelRepository(tmp_path) as repository:
        handle = repository.get("bare")
        await repository.reload()
        assert repository.get("bare") is handle  # same config: the version was kept
        batch = np.zeros((2, 16), np.int32)
        outputs = await asyncio.wait_for(handle.infer({"INPUT0": batch, "INPUT1": batch}), 30)
        assert outputs["OUTPUT0"].shape == (2, 16)
