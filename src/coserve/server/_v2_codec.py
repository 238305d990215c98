"""Open Inference Protocol tensors: JSON decoding and encoding, and the binary-data extension.

A request body is JSON, or — with the ``Inference-Header-Content-Length`` header — a JSON header
followed by the raw bytes of the inputs that carry ``parameters.binary_data_size``, in input order.
BYTES elements in binary form are each a 4-byte little-endian length and the bytes.

Client JSON is bounded before anything walks it: its size (``max_json_size``, 413; binary tensor
data does not count), and the nesting of every value the server reads: tensor data at most
``MAX_DIMENSIONS`` levels, parameters at most ``MAX_NESTING``, checked without recursion (400);
keys it does not know are never read. orjson refuses documents deeper than 1024 levels itself;
in between, a recursive walk or ``repr`` would hit Python's recursion limit.
A JSON document of ``LARGE_JSON`` bytes or more is decoded in a decoder process (``_decoding``):
orjson and numpy hold the GIL, so decoding it here, or in a thread, would stall the event loop.
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

from coserve._exceptions import InvalidInput, RequestTooLarge
from coserve.models import dtype_of
from coserve.server._classification import class_count
from coserve.server._decoding import LARGE_JSON, decode_soon

__all__ = [
    "LARGE_JSON",
    "MAX_DIMENSIONS",
    "MAX_NESTING",
    "DecodedRequest",
    "binary_tensor",
    "bytes_elements",
    "check_data_nesting",
    "check_nesting",
    "decode_request",
    "decode_request_async",
    "encode_response",
    "load_json_object",
    "reshape",
    "start_decode",
    "tensor_from_binary",
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
    classification: dict[str, int] = field(default_factory=dict)
    """Outputs asked for as their top classes, and how many (``_classification``)."""


def _fail(message: str) -> InvalidInput:
    return InvalidInput(message)


def bytes_elements(raw: memoryview, name: str) -> list[bytes]:
    """The elements of a binary BYTES tensor: each a 4-byte little-endian length, then bytes."""
    elements = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise _fail(f"input {name!r}: truncated BYTES element length at byte {offset}")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise _fail(f"input {name!r}: BYTES element of {length} bytes overruns the data")
        elements.append(bytes(raw[offset : offset + length]))
        offset += length
    return elements


MAX_DIMENSIONS = 32  # numpy's own limit is 64; no model input has anywhere near 32

MAX_NESTING = 32
"""The deepest nesting of JSON arrays and objects accepted in parameters."""


def check_nesting(value: Any, limit: int, what: str) -> None:
    """Refuse a JSON value nested more than ``limit`` arrays or objects deep, without recursion.

    Raises:
        InvalidInput: It is nested deeper.
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item if type(item) is list else item.values() if type(item) is dict else ()
        for child in children:
            if type(child) is list or type(child) is dict:
                if depth >= limit:
                    raise _fail(f"{what} is nested more than {limit} levels deep")
                stack.append((child, depth + 1))


def check_data_nesting(name: str, data: Any) -> None:
    """Refuse tensor data nested more than ``MAX_DIMENSIONS`` lists deep, in O(depth).

    Raises:
        InvalidInput: It is nested deeper.
    """
    # Only the first element at each level: numpy finds no more dimensions than that chain
    # has (a deeper branch elsewhere is ragged, and refused as such), and it stays O(depth).
    depth = 0
    while type(data) is list:
        depth += 1
        if depth > MAX_DIMENSIONS:
            raise _fail(
                f"input {name!r}: 'data' is nested more than {MAX_DIMENSIONS} levels deep; "
                f"a tensor has at most {MAX_DIMENSIONS} dimensions"
            )
        if not data:
            return
        data = data[0]


def _brief(value: Any) -> str:
    """A client's value for an error message: short, and never a recursive ``repr``."""
    if isinstance(value, list | dict):
        return f"a JSON {'array' if isinstance(value, list) else 'object'}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _shape(name: str, value: Any) -> tuple[int, ...]:
    if type(value) is not list:
        raise _fail(f"input {name!r}: 'shape' must be a list of non-negative integers")
    for dimension in value:  # a loop: a generator in all() costs more than the check here
        if type(dimension) is not int or dimension < 0:
            raise _fail(f"input {name!r}: 'shape' must be a list of non-negative integers")
    if len(value) > MAX_DIMENSIONS:
        raise _fail(
            f"input {name!r}: 'shape' has {len(value)} dimensions; at most {MAX_DIMENSIONS}"
        )
    return tuple(value)


def _from_json_data(
    name: str, datatype: str, dtype: np.dtype[Any], shape: tuple[int, ...], data: Any
) -> np.ndarray:
    if not isinstance(data, list):
        data = [data]
    check_data_nesting(name, data)
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
    except (ValueError, TypeError, OverflowError, RuntimeError) as error:
        # RuntimeError: numpy's "only supports up to 32 dimensions", from object arrays.
        raise _fail(f"input {name!r}: data does not fit {datatype}: {error}") from None
    return reshape(name, array, shape)


def reshape(name: str, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``array`` in ``shape``, or ``InvalidInput`` naming the input if its size does not fit."""
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


def tensor_from_binary(
    name: str, datatype: str, dtype: np.dtype[Any], shape: tuple[int, ...], raw: memoryview
) -> np.ndarray:
    """A tensor from its binary form (the REST binary extension's, and gRPC's raw contents).

    Numbers are little-endian and row-major (a view of ``raw``: nothing is copied); BYTES
    elements are each a 4-byte little-endian length and the bytes.

    Raises:
        InvalidInput: The bytes do not make a tensor of that datatype and shape.
    """
    if datatype == "BYTES":
        elements = bytes_elements(raw, name)
        flat = np.empty(len(elements), dtype=object)
        flat[:] = elements
        return reshape(name, flat, shape)
    if len(raw) % dtype.itemsize:
        raise _fail(f"input {name!r}: {len(raw)} bytes is not a whole number of {datatype}")
    array = np.frombuffer(raw, dtype=dtype.newbyteorder("<"))
    if datatype == "BOOL" and array.size and array.view(np.uint8).max() > 1:
        raise _fail(f"input {name!r}: BOOL bytes must be 0 or 1")
    return reshape(name, array, shape)


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


def _json_size(body: bytes, header_length: int | None) -> int:
    if header_length is None:
        return len(body)
    return min(max(header_length, 0), len(body))  # a bad length is refused by decode_request


def _check_json_size(size: int, limit: int) -> None:
    if size > limit:
        raise RequestTooLarge(
            f"the request's JSON ({size} bytes) is over the server's {limit}-byte JSON limit; "
            "send large tensors as binary data instead, which is faster and not counted in "
            "this limit: the binary tensor extension (input parameter 'binary_data_size', "
            "header Inference-Header-Content-Length)"
        )


def decode_request(body: bytes, header_length: int | None) -> DecodedRequest:
    """Parse an inference request (JSON, or JSON plus binary tensor data).

    Raises:
        InvalidInput: The body is not valid JSON, misses required fields, or its tensors do not
            match their shapes and datatypes.
    """
    try:
        return _decode_request(body, header_length)
    except RecursionError:  # nothing here recurses on client data; should something, a 400
        raise _fail("the request is nested too deeply") from None


def _decode_request(body: bytes, header_length: int | None) -> DecodedRequest:
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
    if parameters:  # read (and quoted in errors) by the route: bounded like everything it reads
        check_nesting(parameters, MAX_NESTING, "'parameters'")
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
        if input_parameters and isinstance(input_parameters, dict):
            check_nesting(input_parameters, MAX_NESTING, f"input {name!r}: 'parameters'")
        size = (
            input_parameters.get("binary_data_size") if isinstance(input_parameters, dict) else None
        )
        if size is not None:
            if type(size) is not int or size < 0 or offset + size > len(binary):
                raise _fail(f"input {name!r}: binary_data_size {_brief(size)} overruns the body")
            raw = binary[offset : offset + size]  # a view: the arrays below copy nothing
            offset += size
            arrays[name] = tensor_from_binary(name, datatype, dtype, shape, raw)
        else:
            if "data" not in entry:
                raise _fail(f"input {name!r} has no 'data' (and no binary_data_size)")
            arrays[name] = _from_json_data(name, datatype, dtype, shape, entry["data"])
    if offset != len(binary):
        raise _fail(f"{len(binary) - offset} bytes of binary data are not claimed by any input")

    outputs, binary_outputs, classification = _requested_outputs(request.get("outputs"))
    return DecodedRequest(
        arrays,
        request_id,
        parameters,
        outputs,
        binary_outputs,
        parameters.get("binary_data_output") is True,
        classification,
    )


def start_decode(
    body: bytes, header_length: int | None, *, max_json_size: int
) -> DecodedRequest | asyncio.Future[DecodedRequest]:
    """Decode a request now, or, when its JSON is large, start decoding it in a decoder process.

    Numeric binary tensor data costs no decoding (the arrays are views of the body), so the
    JSON part's size decides; a small header with megabytes of such data is decoded here.

    Raises:
        RequestTooLarge: The JSON is over ``max_json_size`` bytes.
        InvalidInput: The request is malformed (when decoded here; else through the future).
        QueueFull: Too many large bodies are being decoded already.
    """
    size = _json_size(body, header_length)
    _check_json_size(size, max_json_size)
    work = size
    # Binary BYTES data is split element by element in Python (~70 ms per MiB of short ones):
    # work like JSON's, and so off the loop too. (A false match only sends a body there.)
    if size < LARGE_JSON <= len(body) - size and b"bytes" in body[:size].lower():
        work = len(body)
    return decode_soon(work, decode_request, body, header_length)


async def decode_request_async(
    body: bytes, header_length: int | None, *, max_json_size: int
) -> DecodedRequest:
    """:func:`start_decode`, awaited."""
    decoding = start_decode(body, header_length, max_json_size=max_json_size)
    return await decoding if isinstance(decoding, asyncio.Future) else decoding


def _requested_outputs(raw: Any) -> tuple[list[str] | None, set[str], dict[str, int]]:
    if raw is None:
        return None, set(), {}
    if not isinstance(raw, list):
        raise _fail("'outputs' must be a list")
    names: list[str] = []
    binary: set[str] = set()
    classes: dict[str, int] = {}
    for index, entry in enumerate(raw):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise _fail(f"outputs[{index}] needs a string 'name'")
        names.append(entry["name"])
        parameters = entry.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise _fail(f"outputs[{index}]: 'parameters' must be an object")
        if parameters:
            check_nesting(parameters, MAX_NESTING, f"outputs[{index}]: 'parameters'")
        if parameters.get("binary_data") is True:
            binary.add(entry["name"])
        if "classification" in parameters:
            classes[entry["name"]] = class_count(entry["name"], parameters["classification"])
    return names, binary, classes


def binary_tensor(array: np.ndarray, datatype: str) -> bytes:
    """A tensor's binary form: little-endian row-major numbers, or length-prefixed BYTES."""
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
            raw = binary_tensor(array, datatype)
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
