"""TensorFlow Serving's gRPC API: PredictionService and ModelService, on the inference service.

``PredictionService`` serves Classify, Regress, Predict and GetModelMetadata, ``ModelService``
GetModelStatus. The
driver between TensorFlow Serving's messages (``_protos``) and the inference service, so a
client written for TF Serving (``tensorflow-serving-api``'s stubs, ``tf.make_tensor_proto``
inputs) works unchanged. ``TensorProto`` inputs arrive as ``tensor_content`` (raw little-endian
bytes, what ``make_tensor_proto`` sends for numeric arrays) or in the typed fields (scalars,
strings, other clients), with TensorFlow's conventions: no values is zeros, fewer values than
the shape repeat the last one. Answers are typed, as TF Serving answers by default, which every
client can read. ``model_spec`` picks the model, its version (a number or a version label) and
its signature; ``output_filter`` picks outputs. Classify and Regress take ``tf.Example``s, as
``_tfserving_api`` runs them. MultiInference and HandleReloadConfigRequest answer UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import grpc
import numpy as np

from coserve._exceptions import InvalidInput, RequestTooLarge
from coserve.models import ModelHandle
from coserve.server._errors import report
from coserve.server._grpc_handlers import abort, unary, unimplemented
from coserve.server._protos import (
    Any as AnyMessage,
)
from coserve.server._protos import (
    ClassificationRequest,
    ClassificationResponse,
    DataType,
    GetModelMetadataRequest,
    GetModelMetadataResponse,
    GetModelStatusRequest,
    GetModelStatusResponse,
    ModelSpec,
    ModelVersionStatus,
    PredictRequest,
    PredictResponse,
    RegressionRequest,
    RegressionResponse,
    SignatureDefMap,
    TensorProto,
)
from coserve.server._service import InferenceService
from coserve.server._tf_examples import serialized_examples
from coserve.server._tfserving_api import (
    classify,
    handle_for,
    regress,
    signature_handle,
    signatures,
    versions,
)
from coserve.server._v2_codec import MAX_DIMENSIONS, reshape

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]

__all__ = ["SERVICES", "TFServingServicer"]

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
SERVICES = (PREDICTION_SERVICE, MODEL_SERVICE)
PROTOCOL = "tfserving-grpc"

_SIGNATURE_DEF_MAP_URL = "type.googleapis.com/tensorflow.serving.SignatureDefMap"

# TensorFlow's dtype, its numpy dtype, the typed TensorProto field that carries it, and the
# protocol datatype; DT_HALF travels as the bits of each value in half_val.
_DTYPES: dict[DataType, tuple[np.dtype[Any], str, str]] = {
    DataType.DT_FLOAT: (np.dtype(np.float32), "float_val", "FP32"),
    DataType.DT_DOUBLE: (np.dtype(np.float64), "double_val", "FP64"),
    DataType.DT_INT32: (np.dtype(np.int32), "int_val", "INT32"),
    DataType.DT_INT16: (np.dtype(np.int16), "int_val", "INT16"),
    DataType.DT_INT8: (np.dtype(np.int8), "int_val", "INT8"),
    DataType.DT_UINT8: (np.dtype(np.uint8), "int_val", "UINT8"),
    DataType.DT_UINT16: (np.dtype(np.uint16), "int_val", "UINT16"),
    DataType.DT_INT64: (np.dtype(np.int64), "int64_val", "INT64"),
    DataType.DT_UINT32: (np.dtype(np.uint32), "uint32_val", "UINT32"),
    DataType.DT_UINT64: (np.dtype(np.uint64), "uint64_val", "UINT64"),
    DataType.DT_BOOL: (np.dtype(np.bool_), "bool_val", "BOOL"),
    DataType.DT_HALF: (np.dtype(np.float16), "half_val", "FP16"),
    DataType.DT_STRING: (np.dtype(np.object_), "string_val", "BYTES"),
}
_TF_DTYPE = {datatype: tf for tf, (_, _, datatype) in _DTYPES.items()}
_MESSAGE_LIMIT = 1024  # TF Serving cuts error messages at 1024 characters

UNIMPLEMENTED = {
    PREDICTION_SERVICE: ("MultiInference",),
    MODEL_SERVICE: ("HandleReloadConfigRequest",),
}


# -- TensorProto to arrays and back ---------------------------------------------------------------


def tensor_to_array(name: str, tensor: TensorProto, max_bytes: int) -> np.ndarray:
    """A ``TensorProto`` as an array, from ``tensor_content`` or its typed field.

    Raises:
        InvalidInput: An unsupported dtype, a negative or unknown dimension, or values that do
            not fit the shape.
        RequestTooLarge: The tensor would take more than ``max_bytes`` (a few values can fill a
            huge shape, so the size is checked before anything is filled).
    """
    known = _DTYPES.get(tensor.dtype)
    if known is None:
        dtype_name = DataType.Name(tensor.dtype) if tensor.dtype in DataType.values() else "?"
        raise InvalidInput(f"input {name!r}: dtype {dtype_name} ({tensor.dtype}) is not supported")
    dtype, field, datatype = known
    if tensor.tensor_shape.unknown_rank:
        raise InvalidInput(f"input {name!r}: a tensor's shape must be known")
    shape = tuple(dim.size for dim in tensor.tensor_shape.dim)
    if len(shape) > MAX_DIMENSIONS:
        raise InvalidInput(
            f"input {name!r}: shape has {len(shape)} dimensions; at most {MAX_DIMENSIONS}"
        )
    if any(size < 0 for size in shape):
        raise InvalidInput(f"input {name!r}: shape {list(shape)} has an unknown dimension")
    count = math.prod(shape)
    # Strings: at least an object pointer each.
    size = count * (dtype.itemsize if datatype != "BYTES" else 8)
    if size > max_bytes:
        raise RequestTooLarge(
            f"input {name!r}: shape {list(shape)} would take {size} bytes, over the {max_bytes} "
            "bytes left of the server's request size limit"
        )
    if tensor.tensor_content:
        if datatype == "BYTES":
            raise InvalidInput(f"input {name!r}: DT_STRING values go in string_val")
        content = tensor.tensor_content
        if len(content) != count * dtype.itemsize:
            raise InvalidInput(
                f"input {name!r}: shape {list(shape)} of {DataType.Name(tensor.dtype)} needs "
                f"{count * dtype.itemsize} bytes, but tensor_content has {len(content)}"
            )
        return reshape(name, np.frombuffer(content, dtype=dtype.newbyteorder("<")), shape)
    values = getattr(tensor, field)
    if len(values) > count:
        raise InvalidInput(
            f"input {name!r}: shape {list(shape)} holds {count} values, but {field} has "
            f"{len(values)}"
        )
    try:
        if datatype == "BYTES":
            flat = np.empty(len(values), dtype=object)
            flat[:] = list(values)
        elif datatype == "FP16":  # each value's 16 bits, in an int32
            flat = np.fromiter(values, dtype=np.uint16, count=len(values)).view(np.float16)
        else:
            flat = np.fromiter(values, dtype=dtype, count=len(values))
    except (OverflowError, ValueError):
        raise InvalidInput(
            f"input {name!r}: values do not fit {DataType.Name(tensor.dtype)}"
        ) from None
    if len(flat) == count:
        return reshape(name, flat, shape)
    if not len(flat):  # TensorFlow's convention: no values is the dtype's zero
        zero = np.full(count, b"", dtype=object) if datatype == "BYTES" else np.zeros(count, dtype)
        return reshape(name, zero, shape)
    return reshape(name, np.concatenate([flat, np.repeat(flat[-1:], count - len(flat))]), shape)


def array_to_tensor(array: np.ndarray, datatype: str, tensor: TensorProto) -> None:
    """Fill ``tensor`` with ``array``, in the typed field TF Serving answers in."""
    tf_dtype = _TF_DTYPE.get(datatype, DataType.DT_STRING)
    dtype, field, _ = _DTYPES[tf_dtype]
    tensor.dtype = tf_dtype
    for size in array.shape:
        tensor.tensor_shape.dim.add(size=size)
    flat = array.ravel()
    if datatype == "BYTES":
        tensor.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
    elif datatype == "FP16":
        tensor.half_val.extend(flat.astype(np.float16).view(np.uint16).tolist())
    else:
        getattr(tensor, field).extend(flat.astype(dtype, copy=False).tolist())


# -- the servicer ---------------------------------------------------------------------------------


class TFServingServicer:
    """TensorFlow Serving's ``PredictionService`` and ``ModelService`` on the inference service."""

    def __init__(self, service: InferenceService) -> None:
        self._service = service

    def methods(self) -> tuple[tuple[str, dict[str, grpc.RpcMethodHandler[Any, Any]]], ...]:
        """The two services' names and method handlers, the unserved ones UNIMPLEMENTED."""
        prediction = {
            "Classify": unary(self.classify, ClassificationRequest, ClassificationResponse),
            "Regress": unary(self.regress, RegressionRequest, RegressionResponse),
            "Predict": unary(self.predict, PredictRequest, PredictResponse),
            "GetModelMetadata": unary(
                self.get_model_metadata, GetModelMetadataRequest, GetModelMetadataResponse
            ),
        }
        model = {
            "GetModelStatus": unary(
                self.get_model_status, GetModelStatusRequest, GetModelStatusResponse
            )
        }
        for service, methods in ((PREDICTION_SERVICE, prediction), (MODEL_SERVICE, model)):
            for name in UNIMPLEMENTED[service]:
                methods[name] = unimplemented(
                    f"{service}/{name}",
                    "TensorFlow Serving's Classify, Regress, Predict, GetModelMetadata and "
                    "GetModelStatus",
                    limit=_MESSAGE_LIMIT,
                )
        return (PREDICTION_SERVICE, prediction), (MODEL_SERVICE, model)

    def _handle(self, spec: ModelSpec, *, serving: bool) -> ModelHandle:
        """The model version a ``model_spec`` names (``serving``: only while taking work)."""
        version = str(spec.version.value) if spec.HasField("version") else None
        label = spec.version_label if spec.HasField("version_label") else None
        return handle_for(self._service, spec.name, version, label, serving=serving)

    async def predict(self, request: PredictRequest, context: Context) -> PredictResponse:
        """One Predict: inputs decoded, batched with everyone else's, answered typed."""
        service = self._service
        call = service.begin(PROTOCOL, context.invocation_metadata())
        handle: ModelHandle | None = None
        try:
            handle = self._handle(request.model_spec, serving=True)
            runner = signature_handle(handle, request.model_spec.signature_name)
            service.admit(runner)
            inputs = _inputs(runner, request, service.state.limits.max_request_size)
            outputs = list(request.output_filter) or None
            result = await service.infer(
                runner, inputs, outputs=outputs, timeout=context.time_remaining(), call=call
            )
            response = PredictResponse()
            _model_spec(response.model_spec, handle, _signature_name(runner))
            datatypes = runner.output_datatypes
            for name, array in result.items():
                array_to_tensor(array, datatypes.get(name, "BYTES"), response.outputs[name])
        except asyncio.CancelledError:
            service.observe(call, handle, "CANCELLED")
            raise
        except Exception as error:
            failure = report(error, f"TF Serving gRPC predict on {request.model_spec.name}")
            service.observe(call, handle, failure.grpc_code)
            await abort(context, failure, limit=_MESSAGE_LIMIT)
            raise  # not reached: abort raises
        service.observe(call, handle, "OK")
        return response

    async def _on_examples(
        self,
        method: str,
        request: ClassificationRequest | RegressionRequest,
        context: Context,
        run: Callable[..., Awaitable[tuple[str, Any]]],
    ) -> tuple[ModelHandle, str, Any]:
        """One Classify or Regress up to its results: the model, the signature and the results.

        Its latency is observed whatever the outcome; a failure is answered with its status.
        """
        service = self._service
        call = service.begin(PROTOCOL, context.invocation_metadata())
        handle: ModelHandle | None = None
        try:
            handle = self._handle(request.model_spec, serving=True)
            examples = serialized_examples(request.input)
            signature, results = await run(
                service,
                handle,
                request.model_spec.signature_name,
                examples,
                timeout=context.time_remaining(),
                call=call,
            )
        except asyncio.CancelledError:
            service.observe(call, handle, "CANCELLED")
            raise
        except Exception as error:
            failure = report(error, f"TF Serving gRPC {method} on {request.model_spec.name}")
            service.observe(call, handle, failure.grpc_code)
            await abort(context, failure, limit=_MESSAGE_LIMIT)
            raise  # not reached: abort raises
        service.observe(call, handle, "OK")
        return handle, signature, results

    async def classify(
        self, request: ClassificationRequest, context: Context
    ) -> ClassificationResponse:
        """One Classify: the examples run through the classify signature, classes answered."""
        handle, signature, results = await self._on_examples("classify", request, context, classify)
        response = ClassificationResponse()
        _model_spec(response.model_spec, handle, signature)
        for row in results:
            classes = response.result.classifications.add().classes
            for label, score in row:
                classes.add(label=label, score=score)
        return response

    async def regress(self, request: RegressionRequest, context: Context) -> RegressionResponse:
        """One Regress: the examples run through the regress signature, one value each."""
        handle, signature, values = await self._on_examples("regress", request, context, regress)
        response = RegressionResponse()
        _model_spec(response.model_spec, handle, signature)
        for value in values:
            response.result.regressions.add(value=value)
        return response

    async def get_model_metadata(
        self, request: GetModelMetadataRequest, context: Context
    ) -> GetModelMetadataResponse:
        """Every signature of the model: their inputs and outputs, as a ``SignatureDefMap``."""
        try:
            if list(request.metadata_field) != ["signature_def"]:
                raise InvalidInput(
                    "metadata_field must be ['signature_def'], the only metadata TensorFlow "
                    f"Serving serves; got {list(request.metadata_field)}"
                )
            handle = self._handle(request.model_spec, serving=False)
        except Exception as error:
            failure = report(error, f"TF Serving metadata of {request.model_spec.name}")
            await abort(context, failure, limit=_MESSAGE_LIMIT)
            raise  # not reached: abort raises
        described = SignatureDefMap()
        for key, signature in signatures(handle).items():
            definition = described.signature_def[key]
            definition.method_name = signature.method_name
            for tensors, infos in (
                (signature.inputs, definition.inputs),
                (signature.outputs, definition.outputs),
            ):
                for name, tensor in tensors.items():
                    info = infos[name]
                    info.name = tensor.name
                    info.dtype = cast("DataType", DataType.Value(tensor.dtype))
                    if tensor.shape is None:
                        info.tensor_shape.unknown_rank = True
                    for size in tensor.shape or ():
                        info.tensor_shape.dim.add(size=size)
        response = GetModelMetadataResponse()
        _model_spec(response.model_spec, handle, "")
        packed = AnyMessage(type_url=_SIGNATURE_DEF_MAP_URL, value=described.SerializeToString())
        response.metadata["signature_def"].CopyFrom(packed)
        return response

    async def get_model_status(
        self, request: GetModelStatusRequest, context: Context
    ) -> GetModelStatusResponse:
        """Each loaded version of the model: AVAILABLE (or only the version asked for)."""
        try:
            handle = self._handle(request.model_spec, serving=False)
        except Exception as error:
            await abort(
                context,
                report(error, f"TF Serving status of {request.model_spec.name}"),
                limit=_MESSAGE_LIMIT,
            )
            raise  # not reached: abort raises
        spec = request.model_spec
        if spec.HasField("version") or spec.HasField("version_label"):
            listed = [handle.version]
        else:
            listed = versions(self._service.state.repository, handle.name)
        response = GetModelStatusResponse()
        for version in listed:
            status = response.model_version_status.add()
            status.version = int(version) if version.isdigit() else 0
            status.state = ModelVersionStatus.State.AVAILABLE
        return response


def _inputs(handle: ModelHandle, request: PredictRequest, limit: int) -> dict[str, np.ndarray]:
    """A Predict's inputs as arrays, the model's names only, ``limit`` bytes in all.

    The names are checked first and the bytes summed before each tensor is filled, so a small
    message cannot make the server build many large tensors (TensorFlow's fill rule).
    """
    names = {spec.name for spec in handle.inputs}
    for name in request.inputs:
        if name not in names:
            raise InvalidInput(
                f"model {handle.name!r} has no input {name!r}; its inputs are: "
                + ", ".join(sorted(names))
            )
    arrays = {}
    for name, tensor in request.inputs.items():
        arrays[name] = array = tensor_to_array(name, tensor, limit)
        limit -= array.size * (array.itemsize if array.dtype != np.object_ else 8)
    return arrays


def _model_spec(spec: ModelSpec, handle: ModelHandle, signature: str) -> None:
    spec.name = handle.name
    if handle.version.isdigit():
        spec.version.value = int(handle.version)
    spec.signature_name = signature


def _signature_name(handle: ModelHandle) -> str:
    return handle.backend.signature_name or "serving_default"
