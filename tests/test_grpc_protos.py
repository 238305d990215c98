"""coserve's protocol buffer messages against those of tritonclient, TensorFlow and TF Serving.

Each family is built with coserve's class, serialized and parsed with the real third-party
class (and the reverse), comparing every field; the real consumers read what coserve writes
(``tritonclient.grpc.InferResult.as_numpy``, ``tf.make_ndarray``, ``tf.TensorShape``), and the
real clients talk to a small gRPC server that (de)serializes with coserve's classes. The schemas
are compared field by field (number, name, type, packing, presence, JSON name), and everything is
imported into one process, as coserve runs beside TensorFlow.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import descriptor_pool, json_format, unknown_fields, wrappers_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor
from google.protobuf.message import Message
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from coserve.server import _protos as protos

ROOT = Path(__file__).resolve().parent.parent
SAVED_MODEL = ROOT / "src/coserve/demo_models/digits/1/model.savedmodel/saved_model.pb"

TRITON_MISSING = "needs tritonclient[grpc]: pip install 'tritonclient[grpc]'"
TF_SERVING_MISSING = (
    "needs tensorflow-serving-api: pip install --no-deps tensorflow-serving-api (beside TensorFlow)"
)

# Fields of the real definitions that coserve leaves out on purpose, and the one it adds.
OMITTED = {
    "tensorflow.TensorInfo.composite_tensor",
    "tensorflow.serving.PredictRequest.predict_streamed_options",
    "tensorflow.serving.PredictRequest.request_options",
}
ADDED = {"inference.ModelMetadataResponse.properties"}  # Open Inference Protocol, not Triton


@pytest.fixture(scope="module")
def triton() -> ModuleType:
    """tritonclient.grpc, whose ``service_pb2`` holds Triton's messages."""
    return pytest.importorskip("tritonclient.grpc", reason=TRITON_MISSING)


@pytest.fixture(scope="module")
def serving() -> ModuleType:
    """tensorflow_serving.apis, with the modules the tests use imported."""
    apis = pytest.importorskip("tensorflow_serving.apis", reason=TF_SERVING_MISSING)
    for name in (
        "get_model_metadata_pb2",
        "get_model_status_pb2",
        "model_service_pb2",
        "model_service_pb2_grpc",
        "predict_pb2",
        "prediction_service_pb2",
        "prediction_service_pb2_grpc",
    ):
        __import__(f"tensorflow_serving.apis.{name}")
    return apis


def as_dict(message: Message) -> dict[str, Any]:
    """Every set field by name (enums by name), resolving ``Any`` in the message's own pool."""
    pool = message.DESCRIPTOR.file.pool
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, descriptor_pool=pool
    )


def cross(message: Message, other: type[Message]) -> Any:
    """``message`` parsed as ``other``, checked to carry the same fields and bytes."""
    data = message.SerializeToString(deterministic=True)
    parsed = other.FromString(data)
    assert len(unknown_fields.UnknownFieldSet(parsed)) == 0
    assert as_dict(parsed) == as_dict(message)
    assert parsed.SerializeToString(deterministic=True) == data
    return parsed


# Schemas


def assert_same_message(ours: Descriptor, theirs: Descriptor, seen: set[str]) -> None:
    """Same fields by number, name, type, cardinality, packing, presence, oneof and JSON name."""
    if ours.full_name in seen:
        return
    seen.add(ours.full_name)
    assert ours.full_name == theirs.full_name
    assert ours.file.pool is protos.POOL
    ours_fields = {field.number: field for field in ours.fields}
    theirs_fields = {field.number: field for field in theirs.fields}
    for number, field in ours_fields.items():
        if field.full_name in ADDED:
            assert number not in theirs_fields
            continue
        real = theirs_fields[number]

        def shape(f: Any) -> tuple[object, ...]:
            oneof = f.containing_oneof.name if f.containing_oneof else None
            return (f.name, f.type, f.is_repeated, f.is_packed, f.has_presence, oneof, f.json_name)

        assert shape(field) == shape(real), field.full_name
        if field.message_type is not None:
            assert_same_message(field.message_type, real.message_type, seen)
        if field.enum_type is not None:
            assert_same_enum(field.enum_type, real.enum_type)
    left_out = {field.full_name for n, field in theirs_fields.items() if n not in ours_fields}
    assert left_out <= OMITTED, left_out
    assert reserved(ours) == reserved(theirs), ours.full_name


def reserved(message: Descriptor) -> list[tuple[int, int]]:
    """The reserved field-number ranges of a message."""
    from google.protobuf import descriptor_pb2

    proto = descriptor_pb2.DescriptorProto()
    message.CopyToProto(proto)
    return [(r.start, r.end) for r in proto.reserved_range]


def assert_same_enum(ours: EnumDescriptor, theirs: EnumDescriptor) -> None:
    """Same full name and the same values, by name and number."""
    assert ours.full_name == theirs.full_name
    assert {v.name: v.number for v in ours.values} == {v.name: v.number for v in theirs.values}


def test_inference_schema_matches_triton(triton: ModuleType) -> None:
    theirs = triton.service_pb2.DESCRIPTOR
    seen: set[str] = set()
    for name, message in protos.inference_pb2.DESCRIPTOR.message_types_by_name.items():
        assert_same_message(message, theirs.message_types_by_name[name], seen)
    assert "inference.ModelInferRequest.InferInputTensor.ParametersEntry" in seen
    assert {
        "inference.ModelStatistics.ResponseStatsEntry",
        "inference.InferResponseStatistics",
        "inference.MemoryUsage",
        "inference.RepositoryIndexResponse.ModelIndex",
        "inference.RepositoryModelLoadRequest.ParametersEntry",
        "inference.ModelRepositoryParameter",
        "inference.RepositoryModelUnloadResponse",
    } <= seen


def test_tensorflow_schemas_match(serving: ModuleType) -> None:
    default = descriptor_pool.Default()
    seen: set[str] = set()
    for module in (protos.tf_framework_pb2, protos.tf_example_pb2, protos.tf_serving_pb2):
        for message in module.DESCRIPTOR.message_types_by_name.values():
            assert_same_message(message, default.FindMessageTypeByName(message.full_name), seen)
    assert_same_enum(
        protos.tf_framework_pb2.DESCRIPTOR.enum_types_by_name["DataType"],
        types_pb2.DataType.DESCRIPTOR,
    )
    code = protos.tf_error_codes_pb2.DESCRIPTOR.enum_types_by_name["Code"]
    assert_same_enum(code, default.FindEnumTypeByName("tensorflow.error.Code"))
    assert {
        "tensorflow.TensorProto",
        "tensorflow.serving.StatusProto",
        "tensorflow.Example",
        "tensorflow.serving.ClassificationResponse",
    } <= seen


def test_services_match_the_real_ones(triton: ModuleType, serving: ModuleType) -> None:
    default = descriptor_pool.Default()
    constants = {
        protos.SERVER_LIVE, protos.SERVER_READY, protos.MODEL_READY, protos.SERVER_METADATA,
        protos.MODEL_METADATA, protos.MODEL_INFER, protos.MODEL_STREAM_INFER, protos.PREDICT,
        protos.GET_MODEL_METADATA, protos.GET_MODEL_STATUS, protos.CLASSIFY, protos.REGRESS,
        protos.MODEL_STATISTICS, protos.REPOSITORY_INDEX, protos.REPOSITORY_MODEL_LOAD,
        protos.REPOSITORY_MODEL_UNLOAD,
    }  # fmt: skip
    paths = set()
    for service_name in (protos.INFERENCE_SERVICE, protos.PREDICTION_SERVICE, protos.MODEL_SERVICE):
        ours = protos.POOL.FindServiceByName(service_name)
        theirs = default.FindServiceByName(service_name)
        for method in ours.methods:
            real = theirs.methods_by_name[method.name]

            def signature(m: Any) -> tuple[object, ...]:
                return (
                    m.input_type.full_name,
                    m.output_type.full_name,
                    m.client_streaming,
                    m.server_streaming,
                )

            assert signature(method) == signature(real)
            paths.add(f"/{service_name}/{method.name}")
    assert paths == constants
    stream = protos.POOL.FindMethodByName("inference.GRPCInferenceService.ModelStreamInfer")
    assert stream.client_streaming
    assert stream.server_streaming


# Open Inference Protocol / Triton


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("ServerLiveRequest", {}),
        ("ServerLiveResponse", {"live": True}),
        ("ServerReadyRequest", {}),
        ("ServerReadyResponse", {"ready": True}),
        ("ModelReadyRequest", {"name": "digits", "version": "2"}),
        ("ModelReadyResponse", {"ready": True}),
        ("ServerMetadataRequest", {}),
        ("ServerMetadataResponse", {"name": "coserve", "version": "0.1", "extensions": ["x", "y"]}),
        ("ModelMetadataRequest", {"name": "digits", "version": ""}),
        ("ModelStatisticsRequest", {"name": "digits", "version": "1"}),
        ("RepositoryIndexRequest", {"repository_name": "", "ready": True}),
        ("RepositoryModelLoadResponse", {}),
        ("RepositoryModelUnloadRequest", {"repository_name": "r", "model_name": "digits"}),
        ("RepositoryModelUnloadResponse", {}),
    ],
)
def test_health_and_metadata_messages_both_ways(
    triton: ModuleType, name: str, fields: dict[str, Any]
) -> None:
    ours = getattr(protos, name)(**fields)
    theirs = cross(ours, getattr(triton.service_pb2, name))
    for key, value in fields.items():
        assert getattr(theirs, key) == value
    cross(theirs, getattr(protos, name))


def test_model_metadata_both_ways(triton: ModuleType) -> None:
    tensor = protos.ModelMetadataResponse.TensorMetadata
    ours = protos.ModelMetadataResponse(
        name="digits",
        versions=["1", "2"],
        platform="tensorflow_savedmodel",
        inputs=[tensor(name="image", datatype="FP32", shape=[-1, 8, 8, 1])],
        outputs=[tensor(name="probabilities", datatype="FP32", shape=[-1, 10])],
    )
    theirs = cross(ours, triton.service_pb2.ModelMetadataResponse)
    assert list(theirs.inputs[0].shape) == [-1, 8, 8, 1]
    assert theirs.outputs[0].name == "probabilities"
    cross(theirs, protos.ModelMetadataResponse)

    # The Open Inference Protocol's properties: Triton's class keeps them as an unknown field.
    ours.properties["framework"] = "tensorflow"
    data = ours.SerializeToString()
    theirs = triton.service_pb2.ModelMetadataResponse.FromString(data)
    assert theirs.name == "digits"
    assert [field.field_number for field in unknown_fields.UnknownFieldSet(theirs)] == [6]
    assert protos.ModelMetadataResponse.FromString(theirs.SerializeToString()) == ours


@pytest.mark.parametrize(
    ("variant", "value"),
    [
        ("bool_param", True),
        ("int64_param", -(2**63)),
        ("string_param", "é"),
        ("double_param", 0.1),
        ("uint64_param", 2**64 - 1),
    ],
)
def test_infer_parameter_variants_both_ways(
    triton: ModuleType, variant: str, value: object
) -> None:
    ours = protos.InferParameter(**{variant: value})
    theirs = cross(ours, triton.service_pb2.InferParameter)
    assert theirs.WhichOneof("parameter_choice") == variant
    assert getattr(theirs, variant) == value
    back = cross(theirs, protos.InferParameter)
    assert back.WhichOneof("parameter_choice") == variant


def test_typed_tensor_contents_both_ways(triton: ModuleType) -> None:
    values = {
        "bool_contents": [True, False, True],
        "int_contents": [-(2**31), 0, 2**31 - 1],
        "int64_contents": [-(2**63), 2**63 - 1],
        "uint_contents": [0, 2**32 - 1],
        "uint64_contents": [0, 2**64 - 1],
        "fp32_contents": [1.5, -0.25],
        "fp64_contents": [0.1, 1e300],
        "bytes_contents": [b"", b"\xff\x00", "é".encode()],
    }
    ours = protos.InferTensorContents(**values)
    theirs = cross(ours, triton.service_pb2.InferTensorContents)
    for name, expected in values.items():
        assert list(getattr(theirs, name)) == expected, name
    cross(theirs, protos.InferTensorContents)


def test_request_made_by_tritonclient(triton: ModuleType) -> None:
    from tritonclient.grpc import _utils
    from tritonclient.utils import deserialize_bytes_tensor

    arrays = {
        "fp32": np.arange(6, dtype=np.float32).reshape(2, 3),
        "int64": np.array([[-1, 2**40]], dtype=np.int64),
        "fp16": np.array([0.5, -2.0], dtype=np.float16),
        "bool": np.array([True, False]),
        "bytes": np.array([b"", b"\xff", "é".encode()], dtype=np.object_),
    }
    types = {"fp32": "FP32", "int64": "INT64", "fp16": "FP16", "bool": "BOOL", "bytes": "BYTES"}
    inputs = []
    for name, array in arrays.items():
        infer_input = triton.InferInput(name, list(array.shape), types[name])
        infer_input.set_data_from_numpy(array)
        inputs.append(infer_input)
    outputs = [triton.InferRequestedOutput("y"), triton.InferRequestedOutput("top", class_count=3)]
    # What InferenceServerClient.infer sends, built by the client's own helper.
    theirs = _utils._get_inference_request(
        model_name="digits",
        inputs=inputs,
        model_version="1",
        request_id="r-1",
        outputs=outputs,
        sequence_id="s-1",
        sequence_start=True,
        sequence_end=False,
        priority=2**64 - 1,
        timeout=5_000_000,
        parameters={"text": "é", "flag": True, "count": -3, "ratio": 0.5},
    )
    ours = cross(theirs, protos.ModelInferRequest)

    assert (ours.model_name, ours.model_version, ours.id) == ("digits", "1", "r-1")
    parameters = {
        key: getattr(value, value.WhichOneof("parameter_choice"))
        for key, value in ours.parameters.items()
    }
    assert parameters == {
        "sequence_id": "s-1",
        "sequence_start": True,
        "sequence_end": False,
        "priority": 2**64 - 1,
        "timeout": 5_000_000,
        "text": "é",
        "flag": True,
        "count": -3,
        "ratio": 0.5,
    }
    assert ours.parameters["priority"].WhichOneof("parameter_choice") == "uint64_param"
    assert ours.parameters["ratio"].WhichOneof("parameter_choice") == "double_param"
    assert [(t.name, t.datatype, list(t.shape)) for t in ours.inputs] == [
        (name, types[name], list(array.shape)) for name, array in arrays.items()
    ]
    assert len(ours.raw_input_contents) == len(arrays)
    for raw, (name, array) in zip(ours.raw_input_contents, arrays.items(), strict=True):
        if name == "bytes":
            decoded = deserialize_bytes_tensor(raw)
            assert list(decoded) == list(array)
        else:
            assert np.array_equal(np.frombuffer(raw, dtype=array.dtype).reshape(array.shape), array)
    assert [o.name for o in ours.outputs] == ["y", "top"]
    assert ours.outputs[1].parameters["classification"].int64_param == 3


def test_typed_request_both_ways(triton: ModuleType) -> None:
    ours = protos.ModelInferRequest(model_name="m", id="7")
    tensor = ours.inputs.add(name="x", datatype="INT32", shape=[2])
    tensor.contents.int_contents.extend([1, -2])
    tensor.parameters["p"].string_param = "v"
    ours.outputs.add(name="y").parameters["binary_data"].bool_param = False
    theirs = cross(ours, triton.service_pb2.ModelInferRequest)
    assert list(theirs.inputs[0].contents.int_contents) == [1, -2]
    assert theirs.inputs[0].parameters["p"].string_param == "v"
    cross(theirs, protos.ModelInferRequest)


def raw_response(triton: ModuleType) -> tuple[Any, dict[str, np.ndarray]]:
    """A response with raw outputs of several types, built with coserve's class."""
    from tritonclient.utils import serialize_byte_tensor

    arrays = {
        "probabilities": np.array([[0.25, 0.75]], dtype=np.float32),
        "ids": np.array([3, -(2**62)], dtype=np.int64),
        "mask": np.array([[True], [False]]),
        "half": np.array([1.5], dtype=np.float16),
        "text": np.array([b"a", b"", "é".encode()], dtype=np.object_),
    }
    types = {"probabilities": "FP32", "ids": "INT64", "mask": "BOOL", "half": "FP16"}
    ours = protos.ModelInferResponse(model_name="digits", model_version="1", id="r-1")
    for name, array in arrays.items():
        ours.outputs.add(name=name, datatype=types.get(name, "BYTES"), shape=list(array.shape))
        text = name == "text"
        ours.raw_output_contents.append(
            serialize_byte_tensor(array).item() if text else array.tobytes()
        )
    ours.parameters["sequence_end"].bool_param = True
    ours.parameters["count"].uint64_param = 2**64 - 1
    return ours, arrays


def test_response_read_by_tritonclient(triton: ModuleType) -> None:
    ours, arrays = raw_response(triton)
    theirs = cross(ours, triton.service_pb2.ModelInferResponse)
    result = triton.InferResult(theirs)
    for name, array in arrays.items():
        got = result.as_numpy(name)
        assert got.dtype == array.dtype, name
        assert np.array_equal(got, array), name
    assert result.get_response().parameters["count"].uint64_param == 2**64 - 1
    cross(theirs, protos.ModelInferResponse)


def test_stream_response_both_ways(triton: ModuleType) -> None:
    response, arrays = raw_response(triton)
    ours = protos.ModelStreamInferResponse(infer_response=response)
    theirs = cross(ours, triton.service_pb2.ModelStreamInferResponse)
    assert theirs.error_message == ""
    result = triton.InferResult(theirs.infer_response)
    assert np.array_equal(result.as_numpy("ids"), arrays["ids"])
    failed = protos.ModelStreamInferResponse(error_message="model 'x' is not ready")
    assert cross(failed, triton.service_pb2.ModelStreamInferResponse).error_message == (
        "model 'x' is not ready"
    )
    cross(theirs, protos.ModelStreamInferResponse)


def test_statistics_response_both_ways(triton: ModuleType) -> None:
    duration = protos.inference_pb2.StatisticDuration
    ours = protos.ModelStatisticsResponse(
        model_stats=[
            protos.ModelStatistics(
                name="digits",
                version="1",
                last_inference=1_700_000_000_000,
                inference_count=2**64 - 1,
                execution_count=3,
                inference_stats=protos.inference_pb2.InferStatistics(
                    success=duration(count=3, ns=12_345), queue=duration(count=3, ns=99)
                ),
                batch_stats=[
                    protos.inference_pb2.InferBatchStatistics(
                        batch_size=2, compute_infer=duration(count=1, ns=7)
                    )
                ],
            )
        ]
    )
    ours.model_stats[0].response_stats["0"].success.count = 1
    ours.model_stats[0].memory_usage.add(type="CPU", id=-1, byte_size=8)
    theirs = cross(ours, triton.service_pb2.ModelStatisticsResponse)
    stats = theirs.model_stats[0]
    assert stats.inference_count == 2**64 - 1
    assert stats.inference_stats.success.ns == 12_345
    assert stats.batch_stats[0].compute_infer.ns == 7
    cross(theirs, protos.ModelStatisticsResponse)


def test_repository_messages_both_ways(triton: ModuleType) -> None:
    index = protos.RepositoryIndexResponse.ModelIndex
    ours_index = protos.RepositoryIndexResponse(
        models=[
            index(name="digits", version="1", state="READY"),
            index(name="slow", state="UNAVAILABLE", reason="unloaded"),
        ]
    )
    theirs_index = cross(ours_index, triton.service_pb2.RepositoryIndexResponse)
    assert [m.state for m in theirs_index.models] == ["READY", "UNAVAILABLE"]
    cross(theirs_index, protos.RepositoryIndexResponse)

    theirs = triton.service_pb2.RepositoryModelLoadRequest(model_name="digits")
    theirs.parameters["config"].string_param = "{}"
    theirs.parameters["file:1/model.py"].bytes_param = b"\x00"
    theirs.parameters["n"].int64_param = -1
    theirs.parameters["b"].bool_param = True
    ours = cross(theirs, protos.RepositoryModelLoadRequest)
    assert ours.parameters["file:1/model.py"].WhichOneof("parameter_choice") == "bytes_param"
    assert set(ours.parameters) == {"config", "file:1/model.py", "n", "b"}
    cross(ours, triton.service_pb2.RepositoryModelLoadRequest)


# TensorFlow


TENSORS = {
    "fp32 matrix": np.arange(6, dtype=np.float32).reshape(2, 3),
    "fp32 scalar": np.float32(1.5),
    "fp64": np.array([0.1, -1e300]),
    "int32": np.array([[-(2**31), 2**31 - 1]], dtype=np.int32),
    "int8 scalar": np.int8(-7),
    "uint8": np.array([0, 255], dtype=np.uint8),
    "int64 scalar": np.int64(2**62),
    "uint32 scalar": np.uint32(2**32 - 1),
    "uint64 scalar": np.uint64(2**64 - 1),
    "bool": np.array([True, False, True]),
    "fp16 scalar": np.float16(-0.5),
    "bf16": np.array([1.5, -2.0], dtype=tf.bfloat16.as_numpy_dtype),
    "complex64 scalar": np.complex64(1 - 2j),
    "complex128": np.array([1 + 2j, 3 - 4j]),
    "strings": np.array([b"", b"\xff", "é".encode()], dtype=np.object_),
    "empty": np.zeros((0, 3), dtype=np.float32),
}


@pytest.mark.parametrize("name", TENSORS)
def test_make_tensor_proto_read_by_ours(name: str) -> None:
    array = TENSORS[name]
    theirs = tf.make_tensor_proto(array)
    ours = cross(theirs, protos.TensorProto)
    assert protos.DataType.Name(ours.dtype) == types_pb2.DataType.Name(theirs.dtype)
    assert [dim.size for dim in ours.tensor_shape.dim] == list(np.shape(array))
    back = tf.make_ndarray(cross(ours, tensor_pb2.TensorProto))
    assert back.dtype == np.asarray(array).dtype
    assert np.array_equal(back, array)


@pytest.mark.parametrize(
    ("dtype", "field", "values", "expected"),
    [
        ("DT_FLOAT", "float_val", [1.5, -2.0], np.array([1.5, -2.0], dtype=np.float32)),
        ("DT_DOUBLE", "double_val", [0.1, 2.0], np.array([0.1, 2.0])),
        ("DT_INT32", "int_val", [-1, 2**31 - 1], np.array([-1, 2**31 - 1], dtype=np.int32)),
        ("DT_INT16", "int_val", [-3, 4], np.array([-3, 4], dtype=np.int16)),
        ("DT_UINT8", "int_val", [0, 255], np.array([0, 255], dtype=np.uint8)),
        ("DT_INT64", "int64_val", [-(2**63), 1], np.array([-(2**63), 1], dtype=np.int64)),
        ("DT_UINT32", "uint32_val", [2**32 - 1, 0], np.array([2**32 - 1, 0], dtype=np.uint32)),
        ("DT_UINT64", "uint64_val", [2**64 - 1, 0], np.array([2**64 - 1, 0], dtype=np.uint64)),
        ("DT_BOOL", "bool_val", [True, False], np.array([True, False])),
        ("DT_HALF", "half_val", [0x3C00, 0xC000], np.array([1.0, -2.0], dtype=np.float16)),
        (
            "DT_COMPLEX64",
            "scomplex_val",
            [1.0, -2.0, 3.0, 4.0],
            np.array([1 - 2j, 3 + 4j], dtype=np.complex64),
        ),
        ("DT_COMPLEX128", "dcomplex_val", [0.5, 1.0, 2.0, -1.0], np.array([0.5 + 1j, 2 - 1j])),
        ("DT_STRING", "string_val", [b"a", b"\x00b"], np.array([b"a", b"\x00b"], dtype=np.object_)),
    ],
)
def test_typed_tensor_read_by_tensorflow(
    dtype: str, field: str, values: list[Any], expected: np.ndarray
) -> None:
    ours = protos.TensorProto(dtype=protos.DataType.Value(dtype))
    ours.tensor_shape.dim.add(size=len(expected))
    getattr(ours, field).extend(values)
    theirs = cross(ours, tensor_pb2.TensorProto)
    assert types_pb2.DataType.Name(theirs.dtype) == dtype
    got = tf.make_ndarray(theirs)
    assert got.dtype == expected.dtype
    assert np.array_equal(got, expected)
    cross(theirs, protos.TensorProto)


def test_one_typed_value_fills_the_shape() -> None:
    ours = protos.TensorProto(dtype=protos.DataType.DT_FLOAT, float_val=[7.0])
    ours.tensor_shape.dim.extend([protos.TensorShapeProto.Dim(size=2)] * 2)
    got = tf.make_ndarray(cross(ours, tensor_pb2.TensorProto))
    assert np.array_equal(got, np.full((2, 2), 7.0, dtype=np.float32))


def test_shapes_read_by_tensorflow() -> None:
    unknown = protos.TensorShapeProto(unknown_rank=True)
    assert tf.TensorShape(cross(unknown, tensor_shape_pb2.TensorShapeProto)).rank is None
    named = protos.TensorShapeProto(dim=[protos.TensorShapeProto.Dim(size=-1, name="batch")])
    named.dim.add(size=10)
    theirs = cross(named, tensor_shape_pb2.TensorShapeProto)
    assert tf.TensorShape(theirs).as_list() == [None, 10]
    assert theirs.dim[0].name == "batch"
    back = cross(tf.TensorShape([3, None]).as_proto(), protos.TensorShapeProto)
    assert [dim.size for dim in back.dim] == [3, -1]


def test_resource_and_variant_tensors_both_ways() -> None:
    handle = protos.ResourceHandleProto(
        device="/job:localhost/replica:0/task:0/device:CPU:0",
        container="c",
        name="table",
        hash_code=2**64 - 1,
        maybe_type_name="Table",
        dtypes_and_shapes=[
            protos.ResourceHandleProto.DtypeAndShape(
                dtype=protos.DataType.DT_INT64,
                shape=protos.TensorShapeProto(dim=[protos.TensorShapeProto.Dim(size=4)]),
            )
        ],
    )
    inner = protos.TensorProto(dtype=protos.DataType.DT_INT32, int_val=[5])
    variant = protos.VariantTensorDataProto(type_name="T", metadata=b"\x01", tensors=[inner])
    ours = protos.TensorProto(
        dtype=protos.DataType.DT_RESOURCE,
        resource_handle_val=[handle],
        variant_val=[variant],
        version_number=1,
        float8_val=b"\x38\x40",
    )
    theirs = cross(ours, tensor_pb2.TensorProto)
    assert theirs.resource_handle_val[0].hash_code == 2**64 - 1
    assert theirs.resource_handle_val[0].dtypes_and_shapes[0].shape.dim[0].size == 4
    assert theirs.variant_val[0].tensors[0].int_val == [5]
    cross(theirs, protos.TensorProto)


def test_data_types_and_error_codes_by_number(serving: ModuleType) -> None:
    for value in types_pb2.DataType.DESCRIPTOR.values:
        assert protos.DataType.Name(value.number) == value.name
    from tensorflow_serving.apis import status_pb2

    real_code = status_pb2.StatusProto.DESCRIPTOR.fields_by_name["error_code"].enum_type
    for value in real_code.values:
        assert protos.tf_error_codes_pb2.Code.Name(value.number) == value.name


# TensorFlow Serving


def test_predict_request_made_with_tf_serving(serving: ModuleType) -> None:
    theirs = serving.predict_pb2.PredictRequest()
    theirs.model_spec.name = "digits"
    theirs.model_spec.version.value = 2
    theirs.model_spec.signature_name = "serving_default"
    theirs.inputs["image"].CopyFrom(tf.make_tensor_proto(np.ones((1, 8, 8, 1), np.float32)))
    theirs.inputs["scale"].CopyFrom(tf.make_tensor_proto(0.5))
    theirs.output_filter.append("probabilities")
    theirs.client_id = b"client"
    ours = cross(theirs, protos.PredictRequest)
    assert ours.model_spec.WhichOneof("version_choice") == "version"
    assert ours.model_spec.version.value == 2
    assert ours.HasField("client_id")
    assert set(ours.inputs) == {"image", "scale"}
    assert list(ours.inputs["scale"].float_val) == [0.5]

    theirs.model_spec.version_label = "stable"  # the other member of the oneof
    ours = cross(theirs, protos.PredictRequest)
    assert ours.model_spec.WhichOneof("version_choice") == "version_label"
    assert not ours.model_spec.HasField("version")


def test_predict_request_keeps_fields_coserve_leaves_out(serving: ModuleType) -> None:
    theirs = serving.predict_pb2.PredictRequest()
    theirs.model_spec.name = "m"
    theirs.request_options.client_id = b"x"
    theirs.predict_streamed_options.return_single_response = True
    ours = protos.PredictRequest.FromString(theirs.SerializeToString())
    assert ours.model_spec.name == "m"
    assert sorted(f.field_number for f in unknown_fields.UnknownFieldSet(ours)) == [5, 7]
    assert serving.predict_pb2.PredictRequest.FromString(ours.SerializeToString()) == theirs


def test_predict_response_read_by_tf_serving(serving: ModuleType) -> None:
    ours = protos.PredictResponse()
    ours.model_spec.name = "digits"
    ours.model_spec.version.value = 1
    ours.model_spec.signature_name = "serving_default"
    probabilities = ours.outputs["probabilities"]
    probabilities.dtype = protos.DataType.DT_FLOAT
    probabilities.tensor_shape.dim.add(size=1)
    probabilities.tensor_shape.dim.add(size=2)
    probabilities.float_val.extend([0.25, 0.75])
    theirs = cross(ours, serving.predict_pb2.PredictResponse)
    assert theirs.model_spec.version.value == 1
    got = tf.make_ndarray(theirs.outputs["probabilities"])
    assert np.array_equal(got, np.array([[0.25, 0.75]], dtype=np.float32))
    cross(theirs, protos.PredictResponse)


def test_model_metadata_with_the_demo_models_signatures(serving: ModuleType) -> None:
    saved_model = saved_model_pb2.SavedModel.FromString(SAVED_MODEL.read_bytes())
    real_signatures = serving.get_model_metadata_pb2.SignatureDefMap()
    for key, signature in saved_model.meta_graphs[0].signature_def.items():
        real_signatures.signature_def[key].CopyFrom(signature)
    theirs = serving.get_model_metadata_pb2.GetModelMetadataResponse()
    theirs.model_spec.name = "digits"
    theirs.model_spec.version.value = 1
    theirs.metadata["signature_def"].Pack(real_signatures)

    ours = cross(theirs, protos.GetModelMetadataResponse)
    packed = ours.metadata["signature_def"]
    assert packed.type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    signatures = protos.SignatureDefMap()
    assert packed.Unpack(signatures)
    image = signatures.signature_def["serving_default"].inputs["image"]
    assert protos.DataType.Name(image.dtype) == "DT_FLOAT"
    assert [dim.size for dim in image.tensor_shape.dim] == [-1, 8, 8, 1]
    assert image.WhichOneof("encoding") == "name"
    assert as_dict(signatures) == as_dict(real_signatures)


def test_model_metadata_built_by_ours_read_by_tf_serving(serving: ModuleType) -> None:
    request = cross(
        protos.GetModelMetadataRequest(
            model_spec=protos.ModelSpec(name="digits"), metadata_field=["signature_def"]
        ),
        serving.get_model_metadata_pb2.GetModelMetadataRequest,
    )
    assert list(request.metadata_field) == ["signature_def"]

    signature = protos.SignatureDef(method_name="tensorflow/serving/predict")
    x = signature.inputs["x"]
    x.name = "serving_default_x:0"
    x.dtype = protos.DataType.DT_INT64
    x.tensor_shape.dim.add(size=-1)
    signature.outputs["y"].CopyFrom(
        protos.TensorInfo(
            coo_sparse=protos.TensorInfo.CooSparse(values_tensor_name="v"),
            dtype=protos.DataType.DT_STRING,
            tensor_shape=protos.TensorShapeProto(unknown_rank=True),
        )
    )
    signature.defaults["x"].CopyFrom(
        protos.TensorProto(dtype=protos.DataType.DT_INT64, int64_val=[1])
    )
    ours = protos.GetModelMetadataResponse(model_spec=protos.ModelSpec(name="digits"))
    ours.model_spec.version.value = 3
    ours.metadata["signature_def"].Pack(protos.SignatureDefMap(signature_def={"s": signature}))

    theirs = cross(ours, serving.get_model_metadata_pb2.GetModelMetadataResponse)
    real = serving.get_model_metadata_pb2.SignatureDefMap()
    assert theirs.metadata["signature_def"].Unpack(real)
    assert isinstance(real.signature_def["s"], meta_graph_pb2.SignatureDef)
    assert real.signature_def["s"].inputs["x"].name == "serving_default_x:0"
    assert real.signature_def["s"].outputs["y"].coo_sparse.values_tensor_name == "v"
    assert as_dict(real) == as_dict(protos.SignatureDefMap(signature_def={"s": signature}))


def test_model_status_both_ways(serving: ModuleType) -> None:
    request = protos.GetModelStatusRequest(model_spec=protos.ModelSpec(name="digits"))
    cross(request, serving.get_model_status_pb2.GetModelStatusRequest)
    state = protos.ModelVersionStatus.State
    ours = protos.GetModelStatusResponse(
        model_version_status=[
            protos.ModelVersionStatus(version=2, state=state.AVAILABLE),
            protos.ModelVersionStatus(
                version=1,
                state=state.END,
                status=protos.StatusProto(
                    error_code=protos.tf_error_codes_pb2.Code.NOT_FOUND, error_message="gone"
                ),
            ),
        ]
    )
    theirs = cross(ours, serving.get_model_status_pb2.GetModelStatusResponse)
    assert [(s.version, s.state) for s in theirs.model_version_status] == [(2, 30), (1, 50)]
    assert theirs.model_version_status[1].status.error_code == 5
    # TF Serving's REST API answers this message as JSON, with these field names.
    assert json_format.MessageToJson(ours) == json_format.MessageToJson(theirs)
    assert '"model_version_status"' in json_format.MessageToJson(ours)
    cross(theirs, protos.GetModelStatusResponse)


# The well-known types of the private pool


def test_well_known_types_are_the_private_pools() -> None:
    spec = protos.ModelSpec(name="m")
    spec.version.value = 4
    assert type(spec.version) is protos.Int64Value
    assert protos.Int64Value is not wrappers_pb2.Int64Value
    assert type(protos.GetModelMetadataResponse().metadata["k"]) is protos.Any
    with pytest.raises(TypeError, match="same class"):
        spec.version.CopyFrom(wrappers_pb2.Int64Value(value=1))
    packed = protos.Any()
    packed.Pack(spec)
    unpacked = protos.ModelSpec()
    assert packed.Unpack(unpacked)
    assert unpacked == spec


# One process, and the real clients over gRPC


IMPORTS = """
import sys
from google.protobuf import descriptor_pool
from google.protobuf.internal import api_implementation

def ours():
    import coserve.server._protos as protos
    return protos

def theirs():
    import tensorflow  # registers tensorflow.* in the default pool
    import tritonclient.grpc  # inference.*
    from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2

if sys.argv[1] == "ours-first":
    protos = ours(); theirs()
else:
    theirs(); protos = ours()
from tensorflow_serving.apis import predict_pb2
for name in ("inference", "tf_framework", "tf_error_codes", "tf_serving"):
    try:
        descriptor_pool.Default().FindFileByName(f"coserve/server/_protos/{name}.proto")
    except KeyError:
        pass
    else:
        raise AssertionError(f"{name}.proto is in the default pool")
request = protos.PredictRequest()
request.model_spec.name = "m"
request.inputs["x"].float_val.append(1.0)
parsed = predict_pb2.PredictRequest.FromString(request.SerializeToString())
assert parsed.inputs["x"].float_val == [1.0]
print(api_implementation.Type())
"""


@pytest.mark.parametrize(
    ("backend", "order"), [("upb", "ours-first"), ("upb", "theirs-first"), ("python", "ours-first")]
)
def test_everything_imports_into_one_process(
    triton: ModuleType, serving: ModuleType, backend: str, order: str
) -> None:
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if backend == "python":
        environment["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"
    result = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-c", textwrap.dedent(IMPORTS), order],
        capture_output=True,
        text=True,
        env=environment,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [backend]


def serve(handlers: list[Any]) -> Iterator[str]:
    """Serves ``handlers`` on 127.0.0.1 with grpcio's server; yields the address."""
    import grpc

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4), options=[("grpc.so_reuseport", 0)]
    )
    server.add_generic_rpc_handlers(handlers)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait()


def unary(
    function: Callable[[Any], Message], request: type[Message], response: type[Message]
) -> Any:
    """A unary handler that (de)serializes with coserve's classes."""
    import grpc

    return grpc.unary_unary_rpc_method_handler(
        lambda message, context: function(message),
        request_deserializer=request.FromString,
        response_serializer=response.SerializeToString,
    )


def doubled(request: Any) -> Any:
    """The answer to a ModelInferRequest of one raw FP32 input: the input times two."""
    assert isinstance(request, protos.ModelInferRequest)
    array = np.frombuffer(request.raw_input_contents[0], dtype=np.float32) * 2
    response = protos.ModelInferResponse(model_name=request.model_name, id=request.id)
    response.outputs.add(name="y", datatype="FP32", shape=request.inputs[0].shape)
    response.raw_output_contents.append(array.tobytes())
    return response


@pytest.fixture
def address(triton: ModuleType, serving: ModuleType) -> Iterator[str]:
    """A gRPC server that answers with coserve's messages, for the real clients."""
    import grpc

    def stream(requests: Iterator[Any], context: Any) -> Iterator[Any]:
        for request in requests:
            if request.model_name == "missing":
                yield protos.ModelStreamInferResponse(error_message="unknown model 'missing'")
            else:
                yield protos.ModelStreamInferResponse(infer_response=doubled(request))

    def predict(request: Any) -> Any:
        assert isinstance(request, protos.PredictRequest)
        x = tf.make_ndarray(
            tensor_pb2.TensorProto.FromString(request.inputs["x"].SerializeToString())
        )
        response = protos.PredictResponse(model_spec=request.model_spec)
        response.outputs["y"].CopyFrom(
            protos.TensorProto.FromString(tf.make_tensor_proto(x + 1).SerializeToString())
        )
        return response

    def status(request: Any) -> Any:
        state = protos.ModelVersionStatus.State.AVAILABLE
        return protos.GetModelStatusResponse(
            model_version_status=[protos.ModelVersionStatus(version=1, state=state)]
        )

    inference = {
        "ServerLive": unary(
            lambda _: protos.ServerLiveResponse(live=True),
            protos.ServerLiveRequest,
            protos.ServerLiveResponse,
        ),
        "ModelInfer": unary(doubled, protos.ModelInferRequest, protos.ModelInferResponse),
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
            stream,
            request_deserializer=protos.ModelInferRequest.FromString,
            response_serializer=protos.ModelStreamInferResponse.SerializeToString,
        ),
    }
    handlers = [
        grpc.method_handlers_generic_handler(protos.INFERENCE_SERVICE, inference),
        grpc.method_handlers_generic_handler(
            protos.PREDICTION_SERVICE,
            {"Predict": unary(predict, protos.PredictRequest, protos.PredictResponse)},
        ),
        grpc.method_handlers_generic_handler(
            protos.MODEL_SERVICE,
            {
                "GetModelStatus": unary(
                    status, protos.GetModelStatusRequest, protos.GetModelStatusResponse
                )
            },
        ),
    ]
    yield from serve(handlers)


def test_tritonclient_talks_to_coserves_messages(triton: ModuleType, address: str) -> None:
    client = triton.InferenceServerClient(address)
    try:
        assert client.is_server_live(client_timeout=10)
        x = np.array([[1.0, -2.5]], dtype=np.float32)
        infer_input = triton.InferInput("x", list(x.shape), "FP32")
        infer_input.set_data_from_numpy(x)
        result = client.infer(
            "double", [infer_input], request_id="r-1", priority=1, client_timeout=10
        )
        assert np.array_equal(result.as_numpy("y"), x * 2)
        assert result.get_response().id == "r-1"

        answers: list[tuple[Any, Any]] = []
        done = threading.Event()

        def callback(result: Any, error: Any) -> None:
            answers.append((result, error))
            if len(answers) == 2:
                done.set()

        client.start_stream(callback)
        client.async_stream_infer("double", [infer_input])
        client.async_stream_infer("missing", [infer_input])
        assert done.wait(10)
        client.stop_stream()
        (first, no_error), (no_result, error) = answers
        assert no_error is None
        assert np.array_equal(first.as_numpy("y"), x * 2)
        assert no_result is None
        assert "unknown model 'missing'" in error.message()
    finally:
        client.close()


def test_tf_serving_stubs_talk_to_coserves_messages(serving: ModuleType, address: str) -> None:
    import grpc

    with grpc.insecure_channel(address) as channel:
        request = serving.predict_pb2.PredictRequest()
        request.model_spec.name = "plus_one"
        request.model_spec.version_label = "stable"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1, 2], dtype=np.int64)))
        stub = serving.prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=10)
        assert response.model_spec.version_label == "stable"
        assert np.array_equal(tf.make_ndarray(response.outputs["y"]), np.array([2, 3]))

        status_stub = serving.model_service_pb2_grpc.ModelServiceStub(channel)
        status = status_stub.GetModelStatus(
            serving.get_model_status_pb2.GetModelStatusRequest(), timeout=10
        )
        assert status.model_version_status[0].state == 30  # AVAILABLE
