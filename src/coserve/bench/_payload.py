"""What ``coserve bench`` sends: input tensors (random from metadata, or from a file), encoded once.

Every request is encoded before the load starts, so the load generator spends its time sending
and timing, not serialising. A handful of variants (``VARIANTS``) are cycled so that a server or
model cannot answer from a cache of one input.
"""

from __future__ import annotations

import json
import re
import struct
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from coserve._exceptions import InvalidInput
from coserve.models import datatype_of, dtype_of

__all__ = [
    "VARIANTS",
    "InputSpec",
    "Target",
    "encode_bodies",
    "fetch_input_specs",
    "load_input_file",
    "parse_shapes",
    "random_inputs",
]

VARIANTS = 16
"""Distinct random requests built and cycled (each connection starts at its own offset)."""

PROTOCOLS = ("v2", "v2-binary", "tfserving", "ws", "grpc", "grpc-stream")


@dataclass(frozen=True)
class Target:
    """The server and model a bench run loads."""

    base_url: str
    """``http://host:port``: REST, metadata and ``/metrics``."""
    model: str
    version: str | None
    protocol: str
    grpc_address: str
    """``host:port`` for the gRPC protocols."""

    @property
    def host_port(self) -> tuple[str, int]:
        """Host and port of ``base_url``."""
        match = re.fullmatch(r"https?://(\[[^\]]+\]|[^:/]+)(?::(\d+))?/?", self.base_url)
        if match is None:
            raise InvalidInput(f"{self.base_url!r} is not an http://host:port URL")
        host = match.group(1).strip("[]")
        return host, int(match.group(2) or 80)

    @property
    def model_path(self) -> str:
        """``/v2/models/NAME[/versions/V]``."""
        path = f"/v2/models/{self.model}"
        return f"{path}/versions/{self.version}" if self.version else path

    def infer_path(self) -> str:
        """The HTTP path requests go to, for the REST protocols."""
        if self.protocol == "tfserving":
            version = f"/versions/{self.version}" if self.version else ""
            return f"/v1/models/{self.model}{version}:predict"
        if self.protocol == "ws":
            return f"{self.model_path}/infer/ws"
        return f"{self.model_path}/infer"


@dataclass(frozen=True)
class InputSpec:
    """One model input as the model's metadata describes it."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    """Dimensions; -1 is variable."""


def _get_json(url: str, timeout: float = 10.0) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        detail = error.read()[:500].decode("utf-8", "replace")
        raise InvalidInput(f"GET {url}: HTTP {error.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as error:
        raise InvalidInput(f"GET {url}: {error}") from None


def fetch_input_specs(target: Target) -> list[InputSpec]:
    """The model's inputs, from its Open Inference Protocol metadata or TF Serving's.

    Raises:
        InvalidInput: The server is unreachable, does not know the model, or its metadata
            names no inputs.
    """
    try:
        metadata = _get_json(target.base_url + target.model_path)
    except InvalidInput as v2_error:
        if target.protocol != "tfserving":
            raise
        try:
            return _tfserving_specs(target)
        except InvalidInput:
            raise v2_error from None
    inputs = metadata.get("inputs") if isinstance(metadata, dict) else None
    if not inputs:
        raise InvalidInput(f"model {target.model!r}: its metadata lists no inputs")
    return [
        InputSpec(str(item["name"]), str(item["datatype"]), tuple(int(d) for d in item["shape"]))
        for item in inputs
    ]


_TF_DATATYPES = {
    "DT_FLOAT": "FP32",
    "DT_DOUBLE": "FP64",
    "DT_HALF": "FP16",
    "DT_INT8": "INT8",
    "DT_INT16": "INT16",
    "DT_INT32": "INT32",
    "DT_INT64": "INT64",
    "DT_UINT8": "UINT8",
    "DT_UINT16": "UINT16",
    "DT_BOOL": "BOOL",
    "DT_STRING": "BYTES",
}


def _tfserving_specs(target: Target) -> list[InputSpec]:
    version = f"/versions/{target.version}" if target.version else ""
    metadata = _get_json(f"{target.base_url}/v1/models/{target.model}{version}/metadata")
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    signature = signatures.get("serving_default") or next(iter(signatures.values()))
    specs = []
    for name, info in signature["inputs"].items():
        dims = info.get("tensor_shape", {}).get("dim", [])
        shape = tuple(int(d.get("size", -1)) for d in dims)
        datatype = _TF_DATATYPES.get(info.get("dtype", ""), "")
        if not datatype:
            raise InvalidInput(f"input {name!r}: TF dtype {info.get('dtype')!r} is not supported")
        specs.append(InputSpec(name, datatype, shape))
    return specs


@dataclass(frozen=True)
class DimRange:
    """A dimension drawn at random from ``low..high`` for each variant (variable-length inputs)."""

    low: int
    high: int


Shape = tuple[int | DimRange, ...]


def parse_shapes(items: Sequence[str]) -> dict[str, Shape]:
    """``--shape NAME:1,32`` (or ``NAME:1,8..64`` for a length drawn per request variant).

    Raises:
        ValueError: Not NAME:DIMS.
    """
    shapes: dict[str, Shape] = {}
    for item in items:
        name, _, dims = item.rpartition(":")
        if not name or not dims:
            raise ValueError(f"{item!r} is not NAME:D1,D2,... (such as tokens:1,32)")
        shape: list[int | DimRange] = []
        for dim in dims.split(","):
            low, dots, high = dim.partition("..")
            try:
                if dots:
                    lo, hi = int(low), int(high)
                    if not 1 <= lo <= hi:
                        raise ValueError
                    shape.append(DimRange(lo, hi))
                else:
                    value = int(dim)
                    if value < 1:
                        raise ValueError
                    shape.append(value)
            except ValueError:
                raise ValueError(
                    f"{item!r}: each dimension is a whole number >= 1 or a range LOW..HIGH"
                ) from None
        shapes[name] = tuple(shape)
    return shapes


def _resolve_shape(spec: InputSpec, given: Shape | None, rows: int) -> Shape:
    if given is not None:
        if spec.shape and len(given) != len(spec.shape):
            raise InvalidInput(
                f"--shape {spec.name}: {len(given)} dimensions, the model's input has "
                f"{len(spec.shape)} ({list(spec.shape)})"
            )
        return given
    if -1 in spec.shape[1:]:
        raise InvalidInput(
            f"input {spec.name!r} has a variable dimension ({list(spec.shape)}): give its "
            f"shape, such as --shape {spec.name}:{rows},32 or a length range "
            f"--shape {spec.name}:{rows},8..64"
        )
    if spec.shape and spec.shape[0] == -1:
        return (rows, *spec.shape[1:])
    return spec.shape


def random_inputs(
    specs: Sequence[InputSpec],
    *,
    rows: int,
    shapes: Mapping[str, Shape],
    value_range: tuple[float, float] | None,
    variants: int = VARIANTS,
    seed: int = 0,
) -> list[dict[str, np.ndarray]]:
    """``variants`` sets of random inputs shaped as the metadata (and ``shapes``) say.

    Floats are uniform in ``value_range`` (default 0..1), integers uniform in it (default
    0..100, clipped to the type), BOOL random, BYTES random lowercase words.

    Raises:
        InvalidInput: A shape is missing for a variable dimension, or names no input.
    """
    unknown = set(shapes) - {spec.name for spec in specs}
    if unknown:
        names = ", ".join(spec.name for spec in specs)
        raise InvalidInput(f"--shape names no input of the model: {sorted(unknown)} ({names})")
    rng = np.random.default_rng(seed)
    resolved = {spec.name: _resolve_shape(spec, shapes.get(spec.name), rows) for spec in specs}
    out = []
    for _ in range(variants):
        # A range drawn once per variant applies to every input that has it, so that inputs
        # of one request (tokens and their mask) agree in length.
        draws: dict[DimRange, int] = {}
        variant = {}
        for spec in specs:
            shape = tuple(
                dim
                if isinstance(dim, int)
                else draws.setdefault(dim, int(rng.integers(dim.low, dim.high + 1)))
                for dim in resolved[spec.name]
            )
            variant[spec.name] = _random_array(spec.datatype, shape, value_range, rng)
        out.append(variant)
    return out


def _random_array(
    datatype: str,
    shape: tuple[int, ...],
    value_range: tuple[float, float] | None,
    rng: np.random.Generator,
) -> np.ndarray:
    if datatype == "BYTES":
        words = ["".join(chr(97 + c) for c in rng.integers(0, 26, 6)) for _ in range(8)]
        return np.array(rng.choice(words, size=shape), dtype=object).astype(bytes)
    dtype = dtype_of(datatype)
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(np.bool_)
    if np.issubdtype(dtype, np.floating):
        low, high = value_range or (0.0, 1.0)
        return rng.uniform(low, high, shape).astype(dtype)
    info = np.iinfo(dtype.type)  # type: ignore[type-var]
    low, high = value_range or (0, 100)
    return rng.integers(max(int(low), info.min), min(int(high), info.max) + 1, shape).astype(dtype)


def load_input_file(
    path: Path, specs: Sequence[InputSpec], rows: int
) -> list[dict[str, np.ndarray]]:
    """Real inputs from ``.npy`` (one input), ``.npz`` (by input name) or JSON lines.

    In ``.npy`` and ``.npz``, the first axis counts samples: each request takes ``rows`` of
    them in turn. Each JSON line is one request: an Open Inference Protocol body
    (``{"inputs": [...]}``) or an object of input name → nested list.

    Raises:
        InvalidInput: The file cannot be read, or does not match the model's inputs.
    """
    by_name = {spec.name: spec for spec in specs}
    try:
        if path.suffix == ".npy":
            if len(specs) != 1:
                raise InvalidInput(
                    f"{path}: a .npy file holds one input, the model has {len(specs)}: use .npz"
                )
            return _split_rows({specs[0].name: np.load(path, allow_pickle=False)}, rows, path)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
            missing = set(by_name) - set(arrays)
            if missing:
                raise InvalidInput(f"{path}: no array for the inputs {sorted(missing)}")
            return _split_rows({name: arrays[name] for name in by_name}, rows, path)
        if path.suffix in (".jsonl", ".ndjson", ".json"):
            return [_json_line(line, by_name, path) for line in _lines(path)]
    except (OSError, ValueError) as error:
        raise InvalidInput(f"{path}: {error}") from None
    raise InvalidInput(f"{path}: expected a .npy, .npz or .jsonl file")


def _lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as file:
        found = False
        for line in file:
            if line.strip():
                found = True
                yield line
        if not found:
            raise InvalidInput(f"{path}: no requests in the file")


def _split_rows(arrays: dict[str, np.ndarray], rows: int, path: Path) -> list[dict[str, Any]]:
    counts = {len(array) for array in arrays.values() if array.ndim}
    if len(counts) != 1:
        raise InvalidInput(f"{path}: the arrays must share their first dimension (samples)")
    (samples,) = counts
    if samples < rows:
        raise InvalidInput(f"{path}: {samples} samples, fewer than --batch-size {rows}")
    return [
        {name: array[start : start + rows] for name, array in arrays.items()}
        for start in range(0, samples - rows + 1, rows)
    ][: VARIANTS * 64]


def _json_line(line: str, specs: Mapping[str, InputSpec], path: Path) -> dict[str, np.ndarray]:
    document = orjson.loads(line)
    arrays: dict[str, np.ndarray] = {}
    if isinstance(document, dict) and isinstance(document.get("inputs"), list):
        for item in document["inputs"]:
            dtype = dtype_of(item["datatype"])
            data = item["data"]
            if item["datatype"] == "BYTES":
                data = [d.encode() if isinstance(d, str) else d for d in np.ravel(data)]
            arrays[item["name"]] = np.asarray(data, dtype=dtype).reshape(item["shape"])
    elif isinstance(document, dict):
        for name, value in document.items():
            spec = specs.get(name)
            if spec is None:
                raise InvalidInput(f"{path}: {name!r} is not an input of the model")
            arrays[name] = np.asarray(value, dtype=dtype_of(spec.datatype))
    else:
        raise InvalidInput(f"{path}: each line must be a JSON object")
    missing = set(specs) - set(arrays)
    if missing:
        raise InvalidInput(f"{path}: a line has no value for the inputs {sorted(missing)}")
    return arrays


def _flat(array: np.ndarray) -> list[Any]:
    if array.dtype.kind in "SO":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in array.ravel()]
    flat: list[Any] = array.ravel().tolist()
    return flat


def _v2_json(inputs: Mapping[str, np.ndarray], request_id: str | None = None) -> bytes:
    body: dict[str, Any] = {
        "inputs": [
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype_of(array.dtype),
                "data": _flat(array),
            }
            for name, array in inputs.items()
        ]
    }
    if request_id is not None:
        body["id"] = request_id
    return orjson.dumps(body)


def _raw_bytes(array: np.ndarray) -> bytes:
    if array.dtype.kind in "SO":
        return b"".join(
            struct.pack("<I", len(b)) + b
            for b in (v if isinstance(v, bytes) else str(v).encode() for v in array.ravel())
        )
    return np.ascontiguousarray(array).tobytes()


def _v2_binary(inputs: Mapping[str, np.ndarray]) -> tuple[bytes, int]:
    raws = [_raw_bytes(array) for array in inputs.values()]
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": list(array.shape),
                    "datatype": datatype_of(array.dtype),
                    "parameters": {"binary_data_size": len(raw)},
                }
                for (name, array), raw in zip(inputs.items(), raws, strict=True)
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    return header + b"".join(raws), len(header)


def _tfserving(inputs: Mapping[str, np.ndarray]) -> bytes:
    columns: dict[str, Any] = {}
    for name, array in inputs.items():
        if array.dtype.kind in "SO":
            columns[name] = np.vectorize(lambda v: v.decode("utf-8", "replace"))(array).tolist()
        else:
            columns[name] = array.tolist()
    return orjson.dumps({"inputs": columns})


def _grpc(target: Target, inputs: Mapping[str, np.ndarray], request_id: str) -> bytes:
    from coserve.server._protos import ModelInferRequest

    request = ModelInferRequest(
        model_name=target.model, model_version=target.version or "", id=request_id
    )
    for name, array in inputs.items():
        tensor = request.inputs.add()
        tensor.name = name
        tensor.datatype = datatype_of(array.dtype)
        tensor.shape.extend(array.shape)
        request.raw_input_contents.append(_raw_bytes(array))
    data: bytes = request.SerializeToString()
    return data


@dataclass(frozen=True)
class Body:
    """One encoded request: the body, and for binary V2 the JSON header's length."""

    data: bytes
    header_length: int | None = None


def encode_bodies(target: Target, variants: Sequence[Mapping[str, np.ndarray]]) -> list[Body]:
    """Each variant encoded for ``target.protocol`` (ids are added by the WebSocket engine)."""
    bodies = []
    for index, inputs in enumerate(variants):
        if target.protocol in ("v2", "ws"):
            bodies.append(Body(_v2_json(inputs)))
        elif target.protocol == "v2-binary":
            data, header = _v2_binary(inputs)
            bodies.append(Body(data, header))
        elif target.protocol == "tfserving":
            bodies.append(Body(_tfserving(inputs)))
        elif target.protocol in ("grpc", "grpc-stream"):
            bodies.append(Body(_grpc(target, inputs, str(index))))
        else:
            raise InvalidInput(f"unknown protocol {target.protocol!r}; one of {PROTOCOLS}")
    return bodies
