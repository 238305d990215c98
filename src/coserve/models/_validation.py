"""Checking a request's inputs against a model's specs, before anything is queued.

A malformed request must never reach the model, and never fail anyone else's batch: every check
happens here, in the caller's own coroutine, and raises :class:`~coserve.InvalidInput` naming the
input, what was expected and what came.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from coserve._exceptions import InvalidInput
from coserve.models._specs import TensorSpec, datatype_of

__all__ = ["check_inputs"]


def _type_name(dtype: np.dtype[np.generic]) -> str:
    """The protocol name of a dtype where it has one (else numpy's): for messages."""
    try:
        return datatype_of(dtype)
    except ValueError:
        return str(dtype)


def _describe(array: np.ndarray) -> str:
    return f"{_type_name(array.dtype)}{list(array.shape)}"


def _as_bytes_array(name: str, array: np.ndarray) -> np.ndarray:
    """BYTES inputs: str is encoded as UTF-8, bytes kept; anything else is refused."""
    if array.dtype.kind == "S":
        return np.array([bytes(v) for v in array.ravel()], dtype=object).reshape(array.shape)
    if array.dtype.kind == "U":
        return np.array([str(v).encode() for v in array.ravel()], dtype=object).reshape(array.shape)
    if array.dtype == np.object_:
        flat = array.ravel()
        if all(isinstance(v, bytes) for v in flat):
            return array
        if all(isinstance(v, bytes | str) for v in flat):
            encoded = [v.encode() if isinstance(v, str) else v for v in flat]
            return np.array(encoded, dtype=object).reshape(array.shape)
    raise InvalidInput(f"input {name!r}: expected BYTES (strings), got {_describe(array)}")


def _convert(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    """Cast to the spec's dtype where no information is lost in kind; refuse the rest."""
    source, target = array.dtype, spec.dtype
    if source == target:
        return array
    if target == np.object_:
        return _as_bytes_array(spec.name, array)
    allowed = (
        (source.kind == "b" and target.kind in "biuf")  # bool to anything numeric
        or (source.kind in "iu" and target.kind in "iuf")  # integers to integers or floats
        or (source.kind == "f" and target.kind == "f")  # float64 to float32 (JSON numbers)
    )
    if not allowed:
        raise InvalidInput(
            f"input {spec.name!r}: expected {spec.datatype}, got {_describe(array)}; "
            f"{'strings' if source.kind in 'SUO' else _type_name(source)} cannot be "
            f"converted to {spec.datatype} without losing information"
        )
    if target.kind in "iu" and source.kind in "iu" and array.size:
        info = np.iinfo(target)  # type: ignore[type-var]
        low, high = array.min(), array.max()
        if low < info.min or high > info.max:
            raise InvalidInput(
                f"input {spec.name!r}: values {low}..{high} do not fit {spec.datatype}"
            )
    return array.astype(target)


def check_inputs(
    model: str,
    specs: Sequence[TensorSpec],
    inputs: Mapping[str, Any],
    *,
    max_rows: int,
    strict_shapes: bool = True,
    batched: bool = True,
) -> tuple[dict[str, np.ndarray], int]:
    """Check and convert a request's inputs; return the arrays (in spec order) and their rows.

    Without ``strict_shapes`` an input's rank and dimensions are the model's to check (a TF1
    graph's, fed as TensorFlow Serving feeds it): only a first dimension, the rows, is required.
    Without ``batched`` (a model with no batch dimension) every dimension is the model's own, so
    each is checked, scalars are tensors too, and a request counts as one row.

    Raises:
        InvalidInput: An input is unknown, missing, of an unsafe dtype, of the wrong rank or
            shape; inputs disagree on their number of rows; or there are no or too many rows.
    """
    if len(inputs) != len(specs) or any(spec.name not in inputs for spec in specs):
        expected = ", ".join(
            f"{s.name} {s.describe()}{' (optional)' if s.optional else ''}" for s in specs
        )
        known = {spec.name for spec in specs}
        unknown = [name for name in inputs if name not in known]
        if unknown:
            raise InvalidInput(
                f"model {model!r} has no input {unknown[0]!r}; its inputs are: {expected}"
            )
        missing = next((s.name for s in specs if s.name not in inputs and not s.optional), None)
        if missing is not None:
            raise InvalidInput(f"model {model!r}: missing input {missing!r}; expected: {expected}")
        if not inputs:
            raise InvalidInput(f"model {model!r}: the request has no inputs; expected: {expected}")

    arrays: dict[str, np.ndarray] = {}
    rows: int | None = None
    for spec in specs:
        if spec.name not in inputs:  # an optional input left out
            continue
        value = inputs[spec.name]
        try:
            array = value if isinstance(value, np.ndarray) else np.asarray(value)
        except (ValueError, TypeError) as error:  # ragged nested lists, for instance
            raise InvalidInput(f"input {spec.name!r}: not a rectangular array: {error}") from None
        if not strict_shapes and batched:
            if array.ndim == 0:
                raise InvalidInput(
                    f"input {spec.name!r}: expected {spec.describe()}, got a scalar (a tensor "
                    "needs a first dimension, its rows)"
                )
        elif array.ndim != len(spec.shape):
            raise InvalidInput(
                f"input {spec.name!r}: expected {spec.describe()} (rank {len(spec.shape)}), "
                f"got {_describe(array)} (rank {array.ndim})"
            )
        checked = strict_shapes or not batched
        for axis, (want, got) in enumerate(zip(spec.shape, array.shape, strict=checked)):
            if (axis or not batched) and want >= 0 and want != got and checked:
                raise InvalidInput(
                    f"input {spec.name!r}: expected {spec.describe()}, got {_describe(array)} "
                    f"(dimension {axis} must be {want})"
                )
        array = _convert(spec, array)
        arrays[spec.name] = array
        if not batched:
            continue
        if rows is None:
            rows = array.shape[0]
        elif array.shape[0] != rows:
            raise InvalidInput(
                f"input {spec.name!r} has {array.shape[0]} rows but the other inputs have {rows}"
            )
    if not batched:
        return arrays, 1
    assert rows is not None
    if rows == 0:
        raise InvalidInput(f"model {model!r}: the request has no rows (first dimension 0)")
    if rows > max_rows:
        raise InvalidInput(
            f"model {model!r}: the request has {rows} rows; at most {max_rows} fit in its queue"
        )
    return arrays, rows
