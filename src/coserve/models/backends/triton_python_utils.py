"""coserve's ``triton_python_backend_utils``: the API a Triton Python model imports as ``pb_utils``.

A ``model.py`` written for Triton's Python backend does ``import triton_python_backend_utils as
pb_utils``; the Triton Python backend (:mod:`coserve.models.backends.triton_python`) registers
this module under that name in ``sys.modules`` before it imports the model, so the import finds
it. No top-level module is installed.

What a model uses on its requests and responses works as in Triton: :class:`Tensor`
(``name()``, ``as_numpy()``, ``triton_dtype()``, ``shape()``, ``to_dlpack()`` and
``Tensor.from_dlpack()`` on the CPU), :class:`InferenceRequest` (``inputs()``, ``request_id()``,
``correlation_id()``, ``requested_output_names()``, ``parameters()``, ``flags()``,
``is_cancelled()``), :class:`InferenceResponse`, :class:`TritonError` with Triton's error codes,
:class:`TritonModelException`, the ``get_*_by_name`` helpers, the type conversions, the BYTES
(de)serializers, :class:`Logger` (to Python's logging) and :class:`ModelConfig` for
``auto_complete_config``.

What coserve does not do raises :class:`TritonModelException` naming it when the model calls it
(so the request fails with that message, and the model loads): BLS (``InferenceRequest.exec()``
and ``async_exec()``: calling another model from ``execute``), decoupled mode
(``get_response_sender()``, :class:`InferenceResponseSender`; decoupled configs are refused at
load anyway), request rescheduling (``set_release_flags``), custom metrics (:class:`MetricFamily`,
:class:`Metric`) and GPU tensors (DLPack from a device other than the CPU).
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "TRITONSERVER_MEMORY_CPU",
    "TRITONSERVER_MEMORY_GPU",
    "TRITONSERVER_REQUEST_FLAG_SEQUENCE_END",
    "TRITONSERVER_REQUEST_FLAG_SEQUENCE_START",
    "TRITONSERVER_REQUEST_RELEASE_ALL",
    "TRITONSERVER_REQUEST_RELEASE_RESCHEDULE",
    "TRITONSERVER_RESPONSE_COMPLETE_FINAL",
    "TRITON_STRING_TO_NUMPY",
    "InferenceRequest",
    "InferenceResponse",
    "InferenceResponseSender",
    "LogLevel",
    "Logger",
    "Metric",
    "MetricFamily",
    "ModelConfig",
    "Tensor",
    "TritonError",
    "TritonModelException",
    "deserialize_bytes_tensor",
    "get_input_config_by_name",
    "get_input_tensor_by_name",
    "get_output_config_by_name",
    "get_output_tensor_by_name",
    "numpy_to_triton_type",
    "serialize_byte_tensor",
    "triton_string_to_numpy",
    "triton_to_numpy_type",
    "using_decoupled_model_transaction_policy",
]

MODULE_NAME = "triton_python_backend_utils"
"""The name Triton's models import this module by."""

# Triton's constants (tritonserver.h), for models that name them.
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2
TRITONSERVER_MEMORY_CPU = 0
TRITONSERVER_MEMORY_GPU = 2

TRITON_STRING_TO_NUMPY: dict[str, Any] = {
    "TYPE_BOOL": np.bool_,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}
"""A config's ``data_type`` to its numpy type (``TYPE_STRING`` is ``np.object_``)."""

# Triton's TRITONSERVER_DataType numbers (BOOL is 1 ... BYTES is 13), in that order.
_NUMPY_BY_NUMBER: tuple[Any, ...] = (
    None,
    np.bool_,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.float16,
    np.float32,
    np.float64,
    np.object_,
)

_UNSUPPORTED = "is not supported by coserve's Triton Python backend"

logger = logging.getLogger("coserve.models.triton_python")


class TritonModelException(Exception):  # noqa: N818 - Triton's name, kept for its models
    """An error raised by (or to) a Triton Python model; ``message()`` gives its text."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self._msg = msg

    def message(self) -> str:
        """The error's message."""
        return self._msg


class TritonError:
    """An error a model puts in an :class:`InferenceResponse` to fail that request.

    ``code`` is one of the class constants, Triton's ``TRITONSERVER_Error_Code`` (default
    ``INTERNAL``). It decides the status the client sees, as in Triton: ``INTERNAL`` is a 500;
    ``INVALID_ARG``, ``UNKNOWN``, ``ALREADY_EXISTS`` and ``CANCELLED`` are a 400 (the request's
    fault); ``NOT_FOUND``, ``UNAVAILABLE`` and ``UNSUPPORTED`` are a 500 in coserve (Triton
    answers 404, 503 and 501).
    """

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        self._message = message
        self._code = code

    def message(self) -> str:
        """The error's message."""
        return self._message

    def code(self) -> int:
        """The error's code (one of the class constants)."""
        return self._code

    def __str__(self) -> str:
        return self._message

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, code={self._code})"


# -- types -----------------------------------------------------------------------------------


def triton_string_to_numpy(triton_type_string: str) -> Any:
    """The numpy type of a config ``data_type`` (``"TYPE_FP32"`` is ``np.float32``)."""
    return TRITON_STRING_TO_NUMPY[triton_type_string]


def triton_to_numpy_type(data_type: int) -> Any:
    """The numpy type of a Triton data type number (1 BOOL ... 13 BYTES); None if unknown."""
    if isinstance(data_type, int) and 0 < data_type < len(_NUMPY_BY_NUMBER):
        return _NUMPY_BY_NUMBER[data_type]
    return None


def numpy_to_triton_type(data_type: Any) -> int | None:
    """The Triton data type number of a numpy type or dtype; None if Triton has none."""
    try:
        dtype = np.dtype(data_type)
    except TypeError:
        return None
    if dtype.kind in "OS":  # objects and fixed-width bytes are both BYTES
        return 13
    for number, numpy_type in enumerate(_NUMPY_BY_NUMBER[1:-1], start=1):
        if dtype == numpy_type:
            return number
    return None


def serialize_byte_tensor(input_tensor: np.ndarray) -> bytes | None:
    """Triton's wire form of a BYTES tensor: each element as a 4-byte length and its bytes.

    A non-bytes element is written as its ``str()`` in UTF-8, as Triton writes it. None for a
    tensor that is not bytes or objects.
    """
    if input_tensor.dtype.kind not in "OS":
        return None
    parts = []
    for item in input_tensor.ravel(order="C"):
        data = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes_tensor(encoded_tensor: bytes) -> np.ndarray:
    """The elements of a BYTES tensor in Triton's wire form, as a flat object array of bytes."""
    items = []
    offset = 0
    while offset < len(encoded_tensor):
        (length,) = struct.unpack_from("<I", encoded_tensor, offset)
        offset += 4
        items.append(bytes(encoded_tensor[offset : offset + length]))
        offset += length
    return np.array(items, dtype=np.object_)


# -- tensors, requests, responses ------------------------------------------------------------


class _DLPackCapsule:
    """A bare DLPack capsule presented as an object, which is what ``np.from_dlpack`` takes."""

    def __init__(self, capsule: Any) -> None:
        self._capsule = capsule

    def __dlpack__(self, **_: Any) -> Any:
        return self._capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU: a capsule of another device fails in numpy, with its message


class Tensor:
    """A named array: an input of a request or an output of a response.

    Args:
        name: The tensor's name, as the config has it.
        numpy_array: Its data. BYTES tensors are object arrays (of ``bytes``, or of ``str``,
            written as UTF-8); numpy's ``str_`` arrays are refused, as in Triton.
        triton_dtype: A Triton data type number to view the data as (optional).
    """

    def __init__(self, name: str, numpy_array: np.ndarray, triton_dtype: int | None = None) -> None:
        array = np.asarray(numpy_array)
        if array.dtype.kind in "UV":
            raise TritonModelException(
                f"tensor {name!r}: numpy dtype {array.dtype} is not supported by the Python "
                "backend; use np.object_ for strings"
            )
        if triton_dtype is not None:
            wanted = triton_to_numpy_type(triton_dtype)
            if wanted is None:
                raise TritonModelException(f"tensor {name!r}: unknown triton_dtype {triton_dtype}")
            if array.dtype != wanted:
                array = array.view(wanted)  # as Triton: the bytes read as the given type
        self._name = name
        self._array = array
        self._triton_dtype = numpy_to_triton_type(array.dtype)

    def name(self) -> str:
        """The tensor's name."""
        return self._name

    def as_numpy(self) -> np.ndarray:
        """The tensor's data."""
        return self._array

    def triton_dtype(self) -> int | None:
        """The Triton data type number of the data (13 for BYTES)."""
        return self._triton_dtype

    def shape(self) -> list[int]:
        """The tensor's dimensions."""
        return list(self._array.shape)

    def is_cpu(self) -> bool:
        """Always True: coserve's tensors are in CPU memory."""
        return True

    def to_dlpack(self) -> Any:
        """A DLPack capsule of the data (``torch.utils.dlpack.from_dlpack`` takes it).

        Raises:
            TritonModelException: A BYTES tensor, which DLPack cannot hold.
        """
        if self._array.dtype == np.object_:
            raise TritonModelException(f"tensor {self._name!r}: BYTES tensors have no DLPack form")
        return self._array.__dlpack__()

    @staticmethod
    def from_dlpack(name: str, capsule: Any) -> Tensor:
        """A tensor of a DLPack capsule, or of an object with ``__dlpack__`` (a torch tensor).

        Raises:
            TritonModelException: The data is not in CPU memory, or DLPack refuses it.
        """
        source = capsule if hasattr(capsule, "__dlpack__") else _DLPackCapsule(capsule)
        try:
            array = np.from_dlpack(source)
        except (BufferError, RuntimeError, TypeError, ValueError) as error:
            raise TritonModelException(
                f"tensor {name!r}: cannot read the DLPack tensor (coserve takes CPU tensors "
                f"only; GPU tensors {_UNSUPPORTED}): {error}"
            ) from error
        return Tensor(name, array)

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, shape={list(self._array.shape)}, dtype={self._array.dtype})"


class InferenceRequest:
    """A request: what ``execute`` gets, one per request, and what BLS would send.

    coserve makes the requests ``execute`` receives. A model may construct one (Triton's BLS:
    a request to another model), but ``exec()`` and ``async_exec()`` raise: coserve does not
    support BLS.
    """

    def __init__(
        self,
        request_id: str = "",
        correlation_id: int | str = 0,
        inputs: Sequence[Tensor] = (),
        requested_output_names: Sequence[str] = (),
        model_name: str = "",
        model_version: int = -1,
        flags: int = 0,
        timeout: int = 0,
        preferred_memory: Any = None,
        trace: Any = None,
        parameters: Mapping[str, Any] | str | None = None,
    ) -> None:
        self._request_id = request_id
        self._correlation_id = correlation_id
        self._inputs = list(inputs)
        self._requested_output_names = list(requested_output_names)
        self._model_name = model_name
        self._model_version = model_version
        self._flags = flags
        self._timeout = timeout
        if parameters is None:
            parameters = {}
        self._parameters = parameters if isinstance(parameters, str) else json.dumps(parameters)

    def inputs(self) -> list[Tensor]:
        """The input tensors."""
        return self._inputs

    def request_id(self) -> str:
        """The request's id; coserve gives the model none (``""``), as for a request without."""
        return self._request_id

    def correlation_id(self) -> int | str:
        """The sequence id of a stateful model's request (0: the request is in no sequence)."""
        return self._correlation_id

    def requested_output_names(self) -> list[str]:
        """The outputs to compute: every output of the config (coserve picks what was asked)."""
        return self._requested_output_names

    def parameters(self) -> str:
        """The request's parameters as a JSON object in a string (``"{}"`` from coserve)."""
        return self._parameters

    def flags(self) -> int:
        """The request's flags: ``TRITONSERVER_REQUEST_FLAG_SEQUENCE_START`` | ``_END``."""
        return self._flags

    def timeout(self) -> int:
        """The request's timeout in microseconds (0: none given to the model)."""
        return self._timeout

    def model_name(self) -> str:
        """The model a BLS request is for."""
        return self._model_name

    def model_version(self) -> int:
        """The version a BLS request is for (-1: the newest)."""
        return self._model_version

    def is_cancelled(self) -> bool:
        """False: a request coserve has started running is run to its end."""
        return False

    def exec(self, decoupled: bool = False) -> InferenceResponse:
        """BLS: run this request on another model. Not supported: always raises.

        Raises:
            TritonModelException: Always.
        """
        raise TritonModelException(
            f"BLS (InferenceRequest.exec(), calling model {self._model_name!r} from execute) "
            f"{_UNSUPPORTED}"
        )

    def async_exec(self, decoupled: bool = False) -> Any:
        """BLS from an ``async def execute``. Not supported: always raises.

        Raises:
            TritonModelException: Always.
        """
        raise TritonModelException(
            f"BLS (InferenceRequest.async_exec(), calling model {self._model_name!r} from "
            f"execute) {_UNSUPPORTED}"
        )

    def get_response_sender(self) -> InferenceResponseSender:
        """Decoupled mode's response sender. Not supported: always raises.

        Raises:
            TritonModelException: Always.
        """
        raise TritonModelException(
            f"decoupled mode (request.get_response_sender()) {_UNSUPPORTED}: "
            "return one InferenceResponse per request from execute"
        )

    def set_release_flags(self, flags: int) -> None:
        """Request rescheduling. Not supported: always raises.

        Raises:
            TritonModelException: Always.
        """
        raise TritonModelException(f"request rescheduling (set_release_flags) {_UNSUPPORTED}")


class InferenceResponse:
    """The answer to one request: its output tensors, or an error that fails it.

    Args:
        output_tensors: The outputs (ignored when ``error`` is given).
        error: A :class:`TritonError` to fail the request with.
        parameters: Response parameters; coserve does not send them to the client.
    """

    def __init__(
        self,
        output_tensors: Sequence[Tensor] | None = None,
        error: TritonError | None = None,
        parameters: Mapping[str, Any] | str | None = None,
    ) -> None:
        if output_tensors is not None and not isinstance(output_tensors, Sequence):
            raise TritonModelException('"output_tensors" must be a list of Tensor')
        self._output_tensors = list(output_tensors or ())
        self._error = error
        self._parameters = parameters

    def output_tensors(self) -> list[Tensor]:
        """The output tensors."""
        return self._output_tensors

    def has_error(self) -> bool:
        """Whether the response fails its request."""
        return self._error is not None

    def error(self) -> TritonError | None:
        """The error, or None."""
        return self._error


class InferenceResponseSender:
    """Decoupled mode's sender of responses. Not supported: sending raises."""

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        """Not supported: always raises.

        Raises:
            TritonModelException: Always.
        """
        raise TritonModelException(f"decoupled mode (InferenceResponseSender) {_UNSUPPORTED}")


def get_input_tensor_by_name(inference_request: InferenceRequest, name: str) -> Tensor | None:
    """The request's input of that name, or None."""
    return _named(inference_request.inputs(), name)


def get_output_tensor_by_name(inference_response: InferenceResponse, name: str) -> Tensor | None:
    """The response's output of that name, or None."""
    return _named(inference_response.output_tensors(), name)


def _named(tensors: Iterable[Tensor], name: str) -> Tensor | None:
    return next((tensor for tensor in tensors if tensor.name() == name), None)


def get_input_config_by_name(model_config: Mapping[str, Any], name: str) -> Any:
    """The config's ``input`` entry of that name (a dict), or None."""
    return _entry(model_config, "input", name)


def get_output_config_by_name(model_config: Mapping[str, Any], name: str) -> Any:
    """The config's ``output`` entry of that name (a dict), or None."""
    return _entry(model_config, "output", name)


def _entry(model_config: Mapping[str, Any], kind: str, name: str) -> Any:
    return next((e for e in model_config.get(kind, ()) if e.get("name") == name), None)


def using_decoupled_model_transaction_policy(model_config: Mapping[str, Any]) -> bool:
    """Whether the config asks for decoupled mode (always False in coserve: it is refused)."""
    return bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))


# -- logging ---------------------------------------------------------------------------------


class LogLevel:
    """Triton's log levels, for :meth:`Logger.log`."""

    INFO = 0
    WARNING = 1
    ERROR = 2
    VERBOSE = 3


_LEVELS = {
    LogLevel.INFO: logging.INFO,
    LogLevel.WARNING: logging.WARNING,
    LogLevel.ERROR: logging.ERROR,
    LogLevel.VERBOSE: logging.DEBUG,
}


class Logger:
    """Triton's model logger, writing to Python's logging (``coserve.models.triton_python``)."""

    @staticmethod
    def log(message: str, level: int = LogLevel.INFO) -> None:
        """Log ``message`` at a :class:`LogLevel`."""
        logger.log(_LEVELS.get(level, logging.INFO), "%s", message)

    @staticmethod
    def log_info(message: str) -> None:
        """Log at INFO."""
        logger.info("%s", message)

    @staticmethod
    def log_warn(message: str) -> None:
        """Log at WARNING."""
        logger.warning("%s", message)

    @staticmethod
    def log_error(message: str) -> None:
        """Log at ERROR."""
        logger.error("%s", message)

    @staticmethod
    def log_verbose(message: str) -> None:
        """Log at DEBUG (Triton's verbose)."""
        logger.debug("%s", message)


# -- custom metrics: not supported -----------------------------------------------------------


class MetricFamily:
    """Triton's custom metrics. Not supported: constructing one raises.

    The kind constants are there, so a model that only names them still imports.
    """

    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TritonModelException(
            f"custom metrics (pb_utils.MetricFamily) {_UNSUPPORTED}: coserve's /metrics has its "
            "own per-model histograms"
        )


class Metric:
    """A custom metric. Not supported: constructing one raises."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TritonModelException(f"custom metrics (pb_utils.Metric) {_UNSUPPORTED}")


# -- auto_complete_config --------------------------------------------------------------------


class ModelConfig:
    """The config a model's ``auto_complete_config(auto_complete_model_config)`` may complete.

    As Triton's: the model reads ``as_dict()`` and may set the batch size, dynamic batching,
    inputs and outputs; what it sets must agree with what the config already says.
    """

    def __init__(self, model_config: Mapping[str, Any] | str) -> None:
        config = json.loads(model_config) if isinstance(model_config, str) else model_config
        self._config: dict[str, Any] = json.loads(json.dumps(config))  # a deep, plain copy
        self._config.setdefault("input", [])
        self._config.setdefault("output", [])

    def as_dict(self) -> dict[str, Any]:
        """The config, as Triton's JSON."""
        return self._config

    def _name(self) -> str:
        return str(self._config.get("name", ""))

    def set_max_batch_size(self, max_batch_size: int) -> None:
        """Set ``max_batch_size``.

        Raises:
            ValueError: The config already gives a larger one.
        """
        given = int(self._config.get("max_batch_size", 0))
        if given > max_batch_size:
            raise ValueError(
                f"model {self._name()!r}: the config gives max_batch_size {given}, but "
                f"auto_complete_config sets {max_batch_size}"
            )
        self._config["max_batch_size"] = max_batch_size

    def set_dynamic_batching(self) -> None:
        """Add ``dynamic_batching`` if the config has no scheduler.

        Raises:
            ValueError: The config has sequence batching or an ensemble's scheduling.
        """
        for scheduler in ("sequence_batching", "ensemble_scheduling"):
            if self._config.get(scheduler):
                raise ValueError(
                    f"model {self._name()!r}: the config has {scheduler}, and "
                    "auto_complete_config sets dynamic_batching"
                )
        if not self._config.get("dynamic_batching"):
            self._config["dynamic_batching"] = {}

    def set_model_transaction_policy(self, transaction_policy_dict: Mapping[str, Any]) -> None:
        """Set ``model_transaction_policy`` (decoupled: true is then refused at load)."""
        self._config["model_transaction_policy"] = dict(transaction_policy_dict)

    def add_input(self, input: Mapping[str, Any]) -> None:
        """Add an input (``name``, ``data_type``, ``dims``, optionally ``optional``).

        Raises:
            ValueError: A field is missing or unknown, or the config has the input otherwise.
        """
        self._add("input", input, ("name", "data_type", "dims", "optional"))

    def add_output(self, output: Mapping[str, Any]) -> None:
        """Add an output (``name``, ``data_type``, ``dims``).

        Raises:
            ValueError: A field is missing or unknown, or the config has the output otherwise.
        """
        self._add("output", output, ("name", "data_type", "dims"))

    def _add(self, kind: str, tensor: Mapping[str, Any], known: tuple[str, ...]) -> None:
        label = f"model {self._name()!r}: auto_complete_config {kind} {tensor.get('name')!r}"
        for key in tensor:
            if key not in known:
                raise ValueError(f"{label} has {key!r}; it may have only {', '.join(known)}")
        for key in ("name", "data_type", "dims"):
            if key not in tensor:
                raise ValueError(f"{label} has no {key!r}")
        entry = {**tensor, "dims": [int(d) for d in tensor["dims"]]}
        for current in self._config[kind]:
            if current.get("name") != entry["name"]:
                continue
            given_type = current.get("data_type", "TYPE_INVALID")
            if given_type not in ("", "TYPE_INVALID") and given_type != entry["data_type"]:
                raise ValueError(
                    f"{label}: the config gives data_type {given_type}, the model "
                    f"{entry['data_type']}"
                )
            given_dims = [int(d) for d in current.get("dims", [])]
            if given_dims and given_dims != entry["dims"]:
                raise ValueError(
                    f"{label}: the config gives dims {given_dims}, the model {entry['dims']}"
                )
            current.update(entry)
            return
        self._config[kind].append(entry)
