"""Open Inference Protocol tensors: JSON decoding and encoding, and the binary-data extension.

A request body is JSON, or — with the ``Inference-Header-Content-Length`` header — a JSON header
followed by the raw bytes of the inputs that carry ``parameters.binary_data_size``, in input order.
BYTES elements in binary form are each a 4-byte little-endian length and the bytes.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from coserve._exceptions import InvalidInput
from coserve.models import dtype_of

__all__ = [
    "LARGE_BODY",
    "DecodedRequest",
    "decode_request",
    "decode_request_async",
    "encode_response",
    "load_json_object",
]


@dataclass
class DecodedRequest:
    """An inference request, decoded: arrays by input name plus what the response needs."""

    inputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] | None = None
    binary_outputs: set[str] = field(default_factory=set)
    all_outputs_binary: bool = False


def _fail(message: str) -> InvalidInput:
    return InvalidInput(message)


def _bytes_elements(raw: bytes, name: str) -> list[bytes]:
    elements = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise _fail(f"input {name!r}: truncated BYTES element length at byte {offset}")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise _fail(f"input {name!r}: BYTES element of {length} bytes overruns the data")
        elements.append(raw[offset : offset + length])
        offset += length
    return elements


_MAX_DIMENSIONS = 32  # numpy's own limit is 64; no model input has anywhere near 32


def _shape(name: str, value: Any) -> tuple[int, ...]:
    if type(value) is not list:
        raise _fail(f"input {name!r}: 'shape' must be a list of non-negative integers")
    for dimension in value:  # a loop: a generator in all() costs more than the check here
        if type(dimension) is not int or dimension < 0:
            raise _fail(f"input {name!r}: 'shape' must be a list of non-negative integers")
    if len(value) > _MAX_DIMENSIONS:
        raise _fail(
            f"input {name!r}: 'shape' has {len(value)} dimensions; at most {_MAX_DIMENSIONS}"
        )
    return tuple(value)


def _from_json_data(
    name: str, datatype: str, dtype: np.dtype[Any], shape: tuple[int, ...], data: Any
) -> np.ndarray:
    if not isinstance(data, list):
        data = [data]
    try:
        if datatype == "BYTES":
            flat = np.asarray(data, dtype=object).ravel()
            encoded = [v.encode() if isinstance(v, str) else v for v in flat]
            if not all(isinstance(v, bytes) for v in encoded):
                raise _fail(f"input {name!r}: BYTES data must be strings")
            array = np.empty(len(encoded), dtype=object)
            array[:] = encoded
        else:
            # Not np.array(data, dtype=...) in one step: it would turn null into NaN and "1.5"
            # into 1.5, and text must never become a number.
            array = np.asarray(data)
            if array.dtype == np.object_ or (array.dtype.kind in "SU"):
                raise _fail(f"input {name!r}: {datatype} data must be numbers")
            if datatype == "BOOL" and array.size and array.dtype != np.bool_:
                raise _fail(f"input {name!r}: BOOL data must be true or false")
            if array.dtype.kind == "f" and dtype.kind in "iub" and array.size:
                raise _fail(f"input {name!r}: {datatype} data must be integers")
            if dtype.kind in "iu" and array.dtype.kind in "iu" and array.size:
                info = np.iinfo(dtype)  # astype would wrap 300 to 44
                if array.min() < info.min or array.max() > info.max:
                    raise _fail(f"input {name!r}: values do not fit {datatype}")
            array = array.astype(dtype, copy=False)
    except InvalidInput:
        raise
    except (ValueError, TypeError, OverflowError) as error:
        raise _fail(f"input {name!r}: data does not fit {datatype}: {error}") from None
    return _reshape(name, array, shape)


def _reshape(name: str, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    expected = math.prod(shape)  # np.prod costs microseconds on a tuple this small
    if array.size != expected:
        raise _fail(
            f"input {name!r}: shape {list(shape)} needs {expected} elements, "
            f"but the data has {array.size}"
        )
    try:
        return array.reshape(shape)
    except ValueError as error:  # e.g. "array is too big" for [0, 2**62] with no data
        raise _fail(f"input {name!r}: shape {list(shape)} is not possible: {error}") from None


def load_json_object(body: bytes | memoryview) -> dict[str, Any]:
    """Parse a request body that must be a JSON object.

    Raises:
        InvalidInput: It is not valid JSON, or not an object.
    """
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise _fail(f"the request body is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise _fail("the request body must be a JSON object")
    return value


def decode_request(body: bytes, header_length: int | None) -> DecodedRequest:
    """Parse an inference request (JSON, or JSON plus binary tensor data).

    Raises:
        InvalidInput: The body is not valid JSON, misses required fields, or its tensors do not
            match their shapes and datatypes.
    """
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise _fail(
                f"Inference-Header-Content-Length {header_length} does not fit a body of "
                f"{len(body)} bytes"
            )
        header, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        header, binary = body, memoryview(b"")
    request = load_json_object(header)
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _fail("the request needs a non-empty 'inputs' list")
    parameters = request.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise _fail("'parameters' must be an object")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _fail("'id' must be a string")

    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for index, entry in enumerate(inputs):
        if not isinstance(entry, dict):
            raise _fail(f"inputs[{index}] must be an object")
        name = entry.get("name")
        datatype = entry.get("datatype")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise _fail(f"inputs[{index}] needs a string 'name' and 'datatype'")
        datatype = datatype.upper()  # every check below compares upper-case names
        if name in arrays:
            raise _fail(f"input {name!r} appears twice")
        try:
            dtype = dtype_of(datatype)
        except ValueError as error:
            raise _fail(f"input {name!r}: {error}") from None
        shape = _shape(name, entry.get("shape"))
        input_parameters = entry.get("parameters") or {}
        size = (
            input_parameters.get("binary_data_size") if isinstance(input_parameters, dict) else None
        )
        if size is not None:
            if type(size) is not int or size < 0 or offset + size > len(binary):
                raise _fail(f"input {name!r}: binary_data_size {size!r} overruns the body")
            raw = bytes(binary[offset : offset + size])
            offset += size
            if datatype == "BYTES":
                elements = _bytes_elements(raw, name)
                flat = np.empty(len(elements), dtype=object)
                flat[:] = elements
                arrays[name] = _reshape(name, flat, shape)
            else:
                if len(raw) % dtype.itemsize:
                    raise _fail(
                        f"input {name!r}: {len(raw)} bytes is not a whole number of {datatype}"
                    )
                array = np.frombuffer(raw, dtype=dtype.newbyteorder("<"))
                if datatype == "BOOL" and array.size and array.view(np.uint8).max() > 1:
                    raise _fail(f"input {name!r}: BOOL bytes must be 0 or 1")
                arrays[name] = _reshape(name, array, shape)
        else:
            if "data" not in entry:
                raise _fail(f"input {name!r} has no 'data' (and no binary_data_size)")
            arrays[name] = _from_json_data(name, datatype, dtype, shape, entry["data"])
    if offset != len(binary):
        raise _fail(f"{len(binary) - offset} bytes of binary data are not claimed by any input")

    outputs, binary_outputs = _requested_outputs(request.get("outputs"))
    return DecodedRequest(
        arrays,
        request_id,
        parameters,
        outputs,
        binary_outputs,
        parameters.get("binary_data_output") is True,
    )


LARGE_BODY = 1 << 20
"""Bodies this size or larger are decoded in a thread, off the event loop."""


async def decode_request_async(body: bytes, header_length: int | None) -> DecodedRequest:
    """``decode_request``, off the event loop for large bodies (decoding 64 MiB takes seconds)."""
    if len(body) < LARGE_BODY:
        return decode_request(body, header_length)
    return await asyncio.to_thread(decode_request, body, header_length)


def _requested_outputs(raw: Any) -> tuple[list[str] | None, set[str]]:
    if raw is None:
        return None, set()
    if not isinstance(raw, list):
        raise _fail("'outputs' must be a list")
    names: list[str] = []
    binary: set[str] = set()
    for index, entry in enumerate(raw):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise _fail(f"outputs[{index}] needs a string 'name'")
        names.append(entry["name"])
        parameters = entry.get("parameters") or {}
        if isinstance(parameters, dict) and parameters.get("binary_data") is True:
            binary.add(entry["name"])
    return names, binary


def _to_binary(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for value in array.ravel():
            data = value if isinstance(value, bytes) else str(value).encode()
            parts.append(struct.pack("<I", len(data)))
            parts.append(data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _to_json_data(array: np.ndarray, datatype: str) -> list[Any]:
    if datatype == "BYTES":
        return [
            v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else str(v)
            for v in array.ravel()
        ]
    return array.ravel().tolist()


def encode_response(
    *,
    model: str,
    version: str,
    request: DecodedRequest,
    outputs: Mapping[str, np.ndarray],
    datatypes: Mapping[str, str],
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it."""
    tensors = []
    chunks: list[bytes] = []
    for name, array in outputs.items():
        datatype = datatypes[name]
        tensor: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": datatype}
        if request.all_outputs_binary or name in request.binary_outputs:
            raw = _to_binary(array, datatype)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = _to_json_data(array, datatype)
        tensors.append(tensor)
    response: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": tensors}
    if request.id is not None:
        response["id"] = request.id
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)
