"""TensorFlow Serving's REST API: model status, metadata, ``:predict``, ``:classify``, ``:regress``.

Paths are ``/v1/models/{m}[/versions/{v}|/labels/{label}][/metadata|:predict|...]``; a version
label names the version a server config gave it (``_tfserving_api``).

``POST /v1/models/{m}[/versions/{v}]:predict`` takes ``{"instances": [...]}`` (one entry per row;
an object of named inputs, or the bare value when the model has one input) or ``{"inputs": ...}``
(columnar: the value, or an object of named inputs), never both; bytes travel as
``{"b64": "..."}``. The answer is ``{"predictions": [...]}`` for rows and ``{"outputs": ...}`` for
columns; a single output is not named. Outputs whose names end in ``_bytes`` come back base64
encoded, as TF Serving does. ``signature_name`` picks another signature of a SavedModel.

``:classify`` and ``:regress`` take ``{"examples": [{feature: value, ...}, ...]}`` and an
optional ``"context"`` of features every example shares, build ``tf.Example``s from them by TF
Serving's rules (an integer is an int64 feature, a number with a point or an exponent a float,
a string or ``{"b64": ...}`` bytes, a list holds one kind), and answer
``{"results": [[[label, score], ...], ...]}`` or ``{"results": [value, ...]}``.

The whole body is JSON, so the server's ``max_json_size`` bounds it (413), and a large one is
parsed and turned into arrays in a decoder process (``_decoding``), as on the V2 route. The walk
that decodes ``b64`` objects is iterative and bounded: a value nested deeper than any tensor can
be is a 400, never a ``RecursionError``.
"""

from __future__ import annotations

import base64
import re
from asyncio import Future
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeGuard

import numpy as np
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from coserve._exceptions import InvalidInput, RequestTooLarge
from coserve.models import ModelHandle, TensorSpec
from coserve.models._signatures import Signature, SignatureTensor
from coserve.server._decoding import decode_soon
from coserve.server._errors import CLIENT_GONE_STATUS, describe
from coserve.server._responses import error_response, json_response, read_body
from coserve.server._service import Call, InferenceService
from coserve.server._tf_examples import decode_examples
from coserve.server._tfserving_api import (
    DEFAULT_SIGNATURE,
    classify,
    handle_for,
    regress,
    signature_handle,
    signatures,
    versions,
)
from coserve.server._v2_codec import MAX_DIMENSIONS, check_data_nesting, load_json_object

__all__ = ["PROTOCOL", "decode_predict", "tfserving_endpoint"]

PROTOCOL = "tfserving-http"
"""The ``protocol`` label of ``:predict`` requests in the latency metric."""

_PATH = re.compile(
    r"^(?P<model>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<action>/metadata|:predict|:classify|:regress)?$"
)


_MAX_NESTING = MAX_DIMENSIONS + 2
"""A tensor's dimensions, an object naming the inputs, and a ``{"b64": ...}`` object."""


def _is_b64(value: Any) -> TypeGuard[dict[str, str]]:
    return type(value) is dict and len(value) == 1 and type(value.get("b64")) is str


def _b64_bytes(value: dict[str, str]) -> bytes:
    try:
        return base64.b64decode(value["b64"], validate=True)
    except ValueError:
        raise InvalidInput("a {'b64': ...} value is not valid base64") from None


def _decode_b64(value: Any, what: str) -> Any:
    """Replace every ``{"b64": "..."}`` in a JSON value by the bytes it encodes, in place.

    Iterative, and refuses a value nested more than ``_MAX_NESTING`` levels (``InvalidInput``).
    """
    if _is_b64(value):
        return _b64_bytes(value)
    if type(value) is not list and type(value) is not dict:
        return value
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        container, depth = stack.pop()
        items = enumerate(container) if type(container) is list else container.items()
        for key, item in items:
            if type(item) is list or type(item) is dict:
                if _is_b64(item):
                    container[key] = _b64_bytes(item)  # a value, not a key: iteration goes on
                    continue
                if depth >= _MAX_NESTING:
                    raise InvalidInput(
                        f"{what} is nested more than {_MAX_NESTING} levels deep; a tensor has at "
                        f"most {MAX_DIMENSIONS} dimensions"
                    )
                stack.append((item, depth + 1))
    return value


def _array(spec: TensorSpec, value: Any) -> np.ndarray:
    check_data_nesting(spec.name, value)
    try:
        array = np.array(value, dtype=object) if spec.dtype == np.object_ else np.asarray(value)
    except (ValueError, RuntimeError) as error:  # RuntimeError: object arrays over 32 dimensions
        raise InvalidInput(f"input {spec.name!r}: not a rectangular array: {error}") from None
    if array.ndim > MAX_DIMENSIONS:
        raise InvalidInput(
            f"input {spec.name!r} has {array.ndim} dimensions; a tensor has at most "
            f"{MAX_DIMENSIONS}"
        )
    if array.dtype == np.object_:
        for element in array.flat:  # not lists or objects, which a model would choke on
            if not isinstance(element, str | bytes):
                raise InvalidInput(
                    f"input {spec.name!r}: values must be strings, or {{'b64': ...}} objects"
                )
    return array


def decode_predict(
    body: bytes, model: str, inputs: Mapping[str, tuple[TensorSpec, ...]], default: str
) -> tuple[str, dict[str, np.ndarray], bool]:
    """A ``:predict`` body as its signature's name, named input arrays, and whether it was rows.

    ``inputs`` holds each signature's input specs; a body without ``signature_name`` is for
    ``default``. Plain data in and out, so that it can run in a decoder process.

    Raises:
        InvalidInput: Not JSON, or not a request that fits the signature's inputs.
    """
    parsed = load_json_object(body)
    signature = parsed.get("signature_name")
    if signature is not None and not isinstance(signature, str):
        raise InvalidInput("'signature_name' must be a string")
    signature = signature or default
    specs = inputs.get(signature)
    if specs is None:
        raise InvalidInput(f"No signature was found with the name: {signature}")
    # No {"b64": ...} without those bytes (or an escape that could spell them): skip the walk,
    # a Python loop over every value of the request.
    b64 = b"b64" in body or b"\\u" in body
    return signature, *_columns(model, specs, parsed, b64=b64)


def _columns(
    model: str, specs: tuple[TensorSpec, ...], body: dict[str, Any], *, b64: bool
) -> tuple[dict[str, np.ndarray], bool]:
    """The request as named input arrays, and whether it was row format."""
    if ("instances" in body) == ("inputs" in body):
        raise InvalidInput(
            "the request needs exactly one of 'instances' (rows) and 'inputs' (columns)"
        )
    # Unnamed values go to the model's one input, or its one required input.
    required = [spec for spec in specs if not spec.optional]
    sole = specs[0] if len(specs) == 1 else required[0] if len(required) == 1 else None
    single = sole is not None
    if "instances" in body:
        rows = _decode_b64(body["instances"], "'instances'") if b64 else body["instances"]
        if not isinstance(rows, list) or not rows:
            raise InvalidInput("'instances' must be a non-empty list")
        named = all(isinstance(row, dict) for row in rows)
        if not named and not single:
            raise InvalidInput(
                f"model {model!r} has {len(specs)} inputs, so each instance must be an "
                "object naming them"
            )
        columns: dict[str, Any] = {}
        if not named:
            assert sole is not None
            return {sole.name: _array(sole, rows)}, True
        for spec in specs:
            missing = [i for i, row in enumerate(rows) if spec.name not in row]
            if spec.optional and len(missing) == len(rows):
                continue  # left out by every instance
            if missing:
                raise InvalidInput(f"instance {missing[0]} has no input {spec.name!r}")
            columns[spec.name] = [row[spec.name] for row in rows]
        extra = {key for row in rows for key in row} - {s.name for s in specs}
        if extra:
            raise InvalidInput(f"model {model!r} has no input {sorted(extra)[0]!r}")
        return {s.name: _array(s, columns[s.name]) for s in specs if s.name in columns}, True
    inputs = _decode_b64(body["inputs"], "'inputs'") if b64 else body["inputs"]
    if isinstance(inputs, dict):  # named columns (a bare tensor value is never an object)
        return {
            name: _array(_spec(model, specs, name), value) for name, value in inputs.items()
        }, False
    if sole is None:
        raise InvalidInput(f"model {model!r} has {len(specs)} inputs: name them in 'inputs'")
    return {sole.name: _array(sole, inputs)}, False


def _spec(model: str, specs: tuple[TensorSpec, ...], name: str) -> TensorSpec:
    for spec in specs:
        if spec.name == name:
            return spec
    raise InvalidInput(f"model {model!r} has no input {name!r}")


def _text(value: Any) -> Any:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


def _b64(value: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(value).decode()}


def _json_value(name: str, array: np.ndarray) -> Any:
    """Numbers as they are; bytes as text, or as base64 for outputs named ``*_bytes``."""
    if array.dtype != np.object_ or not array.size:
        return array.tolist()
    encode = _b64 if name.endswith("_bytes") else _text
    return np.vectorize(encode, otypes=[object])(array).tolist()


def _status(versions: list[str]) -> dict[str, Any]:
    return {
        "model_version_status": [
            {
                "version": v,
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
            for v in versions
        ]
    }


def _metadata(handle: ModelHandle, signatures: Mapping[str, Signature]) -> dict[str, Any]:
    """``GET .../metadata`` as TensorFlow Serving prints it (its empty fields included)."""

    def tensors(described: Mapping[str, SignatureTensor]) -> dict[str, Any]:
        return {
            key: {
                "dtype": tensor.dtype,
                "tensor_shape": {
                    "dim": [{"size": str(d), "name": ""} for d in tensor.shape or ()],
                    "unknown_rank": tensor.shape is None,
                },
                "name": tensor.name,
            }
            for key, tensor in described.items()
        }

    return {
        "model_spec": {"name": handle.name, "signature_name": "", "version": handle.version},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    key: {
                        "inputs": tensors(signature.inputs),
                        "outputs": tensors(signature.outputs),
                        "method_name": signature.method_name,
                        "defaults": {},
                    }
                    for key, signature in signatures.items()
                }
            }
        },
    }


def _json_too_large(size: int, limit: int, model: str) -> RequestTooLarge:
    return RequestTooLarge(
        f"the request's JSON ({size} bytes) is over the server's {limit}-byte JSON limit; for "
        f"large tensors use the Open Inference Protocol (V2) API, POST /v2/models/{model}/infer, "
        "whose binary tensor extension (Inference-Header-Content-Length) sends them as raw "
        "bytes, much faster"
    )


def tfserving_endpoint(service: InferenceService) -> Callable[[Request], Awaitable[Response]]:
    """The handler for every ``/v1/models/...`` path (routing on a path with ``:verb`` suffixes)."""
    repository = service.state.repository

    async def handle(request: Request) -> Response:
        match = _PATH.match(request.path_params["rest"])
        if match is None:
            return error_response(f"no such TensorFlow Serving path: {request.url.path}", 404)
        name, version, label = match["model"], match["version"], match["label"]
        action = match["action"] or ""
        posting = action in (":predict", ":classify", ":regress")
        if posting != (request.method == "POST"):
            return error_response(f"{request.method} is not allowed on {request.url.path}", 405)
        if not posting:
            described = handle_for(service, name, version, label, serving=False)
            if action == "/metadata":
                return json_response(_metadata(described, signatures(described)))
            if version is None and label is None:
                return json_response(_status(versions(repository, name)))
            return json_response(_status([described.version]))
        call = service.begin(PROTOCOL, request.headers.raw)
        served: ModelHandle | None = None
        try:
            served = handle_for(service, name, version, label)
            if action == ":predict":
                response = await _predict(service, served, request, call)
            else:
                response = await _classify_or_regress(service, served, request, action[1:], call)
        except Exception as error:
            # A client gone mid-body is answered nothing (see _responses.endpoint): 499.
            gone = isinstance(error, ClientDisconnect)
            status = CLIENT_GONE_STATUS if gone else describe(error).status
            service.observe(call, served, status)
            raise
        service.observe(call, served, 200)
        return response

    return handle


async def _json_body(service: InferenceService, handle: ModelHandle, request: Request) -> bytes:
    """The request's JSON body, refused (413) over the JSON limit and (429) on a full queue."""
    limit = service.state.limits.max_json_size
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:  # refused before it is read
        raise _json_too_large(int(declared), limit, handle.name)
    service.admit(handle, int(declared) if declared.isdigit() else None)
    body = await read_body(request, service.state.limits.max_request_size)
    if len(body) > limit:
        raise _json_too_large(len(body), limit, handle.name)
    return body


def _signature_inputs(handle: ModelHandle) -> dict[str, tuple[TensorSpec, ...]]:
    """Each signature's input specs (the model's own for a model without signatures)."""
    backend = handle.backend
    main = backend.signature_name or DEFAULT_SIGNATURE
    inputs = {main: handle.inputs}
    for name in backend.signatures:
        if name != main:
            inputs[name] = backend.for_signature(name).inputs
    return inputs


async def _predict(
    service: InferenceService, handle: ModelHandle, request: Request, call: Call
) -> Response:
    """One ``:predict``: its body checked, read, decoded, run and answered as TF Serving does."""
    body = await _json_body(service, handle, request)
    default = handle.backend.signature_name or DEFAULT_SIGNATURE
    decoding = decode_soon(
        len(body), decode_predict, body, handle.name, _signature_inputs(handle), default
    )
    signature, inputs, rows = await decoding if isinstance(decoding, Future) else decoding
    outputs = await service.infer(signature_handle(handle, signature), inputs, call=call)
    if rows:
        names = list(outputs)
        if len(names) == 1:
            return json_response({"predictions": _json_value(names[0], outputs[names[0]])})
        count = len(next(iter(outputs.values())))
        predictions = [
            {n: _json_value(n, outputs[n][i : i + 1])[0] for n in names} for i in range(count)
        ]
        return json_response({"predictions": predictions})
    if len(outputs) == 1:
        (only,) = outputs.items()
        return json_response({"outputs": _json_value(*only)})
    return json_response({"outputs": {n: _json_value(n, a) for n, a in outputs.items()}})


async def _classify_or_regress(
    service: InferenceService, handle: ModelHandle, request: Request, method: str, call: Call
) -> Response:
    """One ``:classify`` or ``:regress``: JSON examples as ``tf.Example``s, run, answered."""
    body = await _json_body(service, handle, request)
    decoding = decode_soon(len(body), decode_examples, body, method)  # big ones off the loop
    signature, examples = await decoding if isinstance(decoding, Future) else decoding
    if method == "classify":
        _, classes = await classify(service, handle, signature, examples, call=call)
        return json_response({"results": [[list(pair) for pair in row] for row in classes]})
    _, values = await regress(service, handle, signature, examples, call=call)
    return json_response({"results": values})
