"""TensorFlow Serving's REST API: model status, metadata and ``:predict`` (row or columnar).

``POST /v1/models/{m}[/versions/{v}]:predict`` takes ``{"instances": [...]}`` (one entry per row;
an object of named inputs, or the bare value when the model has one input) or ``{"inputs": ...}``
(columnar: the value, or an object of named inputs), never both; bytes travel as
``{"b64": "..."}``. The answer is ``{"predictions": [...]}`` for rows and ``{"outputs": ...}`` for
columns; a single output is not named. Outputs whose names end in ``_bytes`` come back base64
encoded, as TF Serving does. ``:classify`` and ``:regress`` answer 501.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from coserve._exceptions import InvalidInput
from coserve.models import ModelHandle, ModelRepository, TensorSpec
from coserve.server._codec import load_json_object
from coserve.server._http import error_response, json_response, read_body

__all__ = ["tfserving_endpoint"]

_PATH = re.compile(
    r"^(?P<model>[^/:]+)(?:/versions/(?P<version>[^/:]+))?(?P<action>/metadata|:predict|:classify|:regress)?$"
)
_TF_DTYPES = {
    "BOOL": "DT_BOOL",
    "UINT8": "DT_UINT8",
    "UINT16": "DT_UINT16",
    "UINT32": "DT_UINT32",
    "UINT64": "DT_UINT64",
    "INT8": "DT_INT8",
    "INT16": "DT_INT16",
    "INT32": "DT_INT32",
    "INT64": "DT_INT64",
    "FP16": "DT_HALF",
    "FP32": "DT_FLOAT",
    "FP64": "DT_DOUBLE",
    "BYTES": "DT_STRING",
}


def _decode_b64(value: Any) -> Any:
    """Replace every ``{"b64": "..."}`` in a nested JSON value by the bytes it encodes."""
    if isinstance(value, dict):
        if set(value) == {"b64"} and isinstance(value["b64"], str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except ValueError:
                raise InvalidInput("a {'b64': ...} value is not valid base64") from None
        return {key: _decode_b64(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode_b64(item) for item in value]
    return value


def _array(spec: TensorSpec, value: Any) -> np.ndarray:
    try:
        return np.array(value, dtype=object) if spec.dtype == np.object_ else np.asarray(value)
    except ValueError as error:
        raise InvalidInput(f"input {spec.name!r}: not a rectangular array: {error}") from None


def _columns(handle: ModelHandle, body: dict[str, Any]) -> tuple[dict[str, np.ndarray], bool]:
    """The request as named input arrays, and whether it was row format."""
    if ("instances" in body) == ("inputs" in body):
        raise InvalidInput(
            "the request needs exactly one of 'instances' (rows) and 'inputs' (columns)"
        )
    specs = handle.inputs
    single = len(specs) == 1
    if "instances" in body:
        rows = _decode_b64(body["instances"])
        if not isinstance(rows, list) or not rows:
            raise InvalidInput("'instances' must be a non-empty list")
        named = all(isinstance(row, dict) for row in rows)
        if not named and not single:
            raise InvalidInput(
                f"model {handle.name!r} has {len(specs)} inputs, so each instance must be an "
                "object naming them"
            )
        columns: dict[str, Any] = {}
        for spec in specs:
            if named:
                missing = [i for i, row in enumerate(rows) if spec.name not in row]
                if missing:
                    raise InvalidInput(f"instance {missing[0]} has no input {spec.name!r}")
                columns[spec.name] = [row[spec.name] for row in rows]
            else:
                columns[spec.name] = rows
        if named:
            extra = {key for row in rows for key in row} - {s.name for s in specs}
            if extra:
                raise InvalidInput(f"model {handle.name!r} has no input {sorted(extra)[0]!r}")
        return {s.name: _array(s, columns[s.name]) for s in specs}, True
    inputs = _decode_b64(body["inputs"])
    if isinstance(inputs, dict):  # named columns (a bare tensor value is never an object)
        return {name: _array(_spec(handle, name), value) for name, value in inputs.items()}, False
    if not single:
        raise InvalidInput(f"model {handle.name!r} has {len(specs)} inputs: name them in 'inputs'")
    return {specs[0].name: _array(specs[0], inputs)}, False


def _spec(handle: ModelHandle, name: str) -> TensorSpec:
    for spec in handle.inputs:
        if spec.name == name:
            return spec
    raise InvalidInput(f"model {handle.name!r} has no input {name!r}")


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


def _status(handle_versions: list[str]) -> dict[str, Any]:
    return {
        "model_version_status": [
            {
                "version": v,
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
            for v in handle_versions
        ]
    }


def _metadata(handle: ModelHandle, signature: str) -> dict[str, Any]:
    def tensors(specs: tuple[TensorSpec, ...]) -> dict[str, Any]:
        return {
            spec.name: {
                "dtype": _TF_DTYPES[spec.datatype],
                "tensor_shape": {
                    "dim": [{"size": str(d)} for d in spec.shape],
                    "unknown_rank": False,
                },
                "name": spec.name,
            }
            for spec in specs
        }

    return {
        "model_spec": {"name": handle.name, "signature_name": "", "version": handle.version},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    signature: {
                        "inputs": tensors(handle.inputs),
                        "outputs": tensors(handle.outputs),
                        "method_name": "tensorflow/serving/predict",
                    }
                }
            }
        },
    }


def tfserving_endpoint(
    repository: ModelRepository,
    max_request_size: Callable[[], int],
    is_ready: Callable[[], bool],
) -> Callable[[Request], Any]:
    """The handler for every ``/v1/models/...`` path (routing on a path with ``:verb`` suffixes)."""

    async def handle(request: Request) -> Response:
        match = _PATH.match(request.path_params["rest"])
        if match is None:
            return error_response(f"no such TensorFlow Serving path: {request.url.path}", 404)
        name, version, action = match["model"], match["version"], match["action"] or ""
        posting = action in (":predict", ":classify", ":regress")
        if posting != (request.method == "POST"):
            return error_response(f"{request.method} is not allowed on {request.url.path}", 405)
        if not posting:
            if action == "/metadata":
                handle_ = repository.get(name, version)
                return json_response(_metadata(handle_, repository.config(name).signature))
            repository.get(name, version)  # 404 if unknown
            versions = [m.version for m in repository.models() if m.name == name]
            return json_response(_status([version] if version else versions))
        if action != ":predict":
            return error_response(
                f"{action[1:]} is not implemented: coserve serves TensorFlow Serving's predict API "
                "only; use :predict, or the Open Inference Protocol under /v2",
                501,
            )
        if not is_ready():
            return error_response("the server is not ready (starting or shutting down)", 503)
        handle_ = repository.get(name, version)
        body = load_json_object(await read_body(request, max_request_size()))
        signature = body.get("signature_name")
        expected = repository.config(name).signature
        if signature not in (None, "", expected):
            raise InvalidInput(
                f"model {name!r} has no signature {signature!r}; it has {expected!r}"
            )
        inputs, rows = _columns(handle_, body)
        outputs = await handle_.infer(inputs)
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

    return handle
