"""Tensor specs: a model input's or output's name, dtype and shape, and the protocol datatypes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["TensorSpec", "datatype_of", "dtype_of"]

# Open Inference Protocol datatype names, and the numpy dtype each one maps to. BYTES holds
# variable-length byte strings, which numpy keeps in object arrays.
_DTYPES: dict[str, np.dtype[np.generic]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
_DATATYPES = {dtype: name for name, dtype in _DTYPES.items()}


def dtype_of(datatype: str) -> np.dtype[np.generic]:
    """The numpy dtype of an Open Inference Protocol datatype name (``"FP32"`` → float32).

    Raises:
        ValueError: The name is not a protocol datatype.
    """
    try:
        return _DTYPES[datatype.upper()]
    except KeyError:
        known = ", ".join(_DTYPES)
        raise ValueError(f"unknown datatype {datatype!r}; expected one of {known}") from None


def datatype_of(dtype: np.dtype[np.generic] | type) -> str:
    """The Open Inference Protocol datatype name of a numpy dtype (bytes and str are BYTES).

    Raises:
        ValueError: The dtype has no protocol datatype (complex numbers, for instance).
    """
    dtype = np.dtype(dtype)
    if dtype.kind in "SUO":
        return "BYTES"
    try:
        return _DATATYPES[dtype]
    except KeyError:
        raise ValueError(f"numpy dtype {dtype} has no inference-protocol datatype") from None


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """What a model input or output looks like.

    Attributes:
        name: The tensor's name, as requests and responses use it.
        dtype: Its numpy dtype (object for BYTES).
        shape: Its shape; -1 is a dimension of any size. The first dimension is the batch.
        optional: An input that a request may leave out (Triton's ``optional``): the model
            then runs without it, never in one batch with requests that have it.
    """

    name: str
    dtype: np.dtype[np.generic]
    shape: tuple[int, ...]
    optional: bool = False

    @classmethod
    def of(
        cls,
        name: str,
        dtype: str | np.dtype[np.generic] | type,
        shape: Sequence[int],
        *,
        optional: bool = False,
    ) -> TensorSpec:
        """Build a spec from a protocol datatype name or anything numpy takes as a dtype."""
        resolved = (
            dtype_of(dtype) if isinstance(dtype, str) and dtype.isupper() else np.dtype(dtype)
        )
        dims = tuple(int(d) for d in shape)
        if any(d < -1 for d in dims):
            raise ValueError(f"tensor {name!r}: dimensions are sizes or -1, got {list(dims)}")
        return cls(name, resolved, dims, optional)

    @property
    def datatype(self) -> str:
        """The Open Inference Protocol datatype name (``FP32``, ``INT64``, ``BYTES``...)."""
        return datatype_of(self.dtype)

    @property
    def row_shape(self) -> tuple[int, ...]:
        """The shape of one row: everything after the batch dimension."""
        return self.shape[1:]

    def describe(self) -> str:
        """A short human form, as error messages quote it: ``FP32[-1, 8, 8, 1]``."""
        return f"{self.datatype}[{', '.join(str(d) for d in self.shape)}]"
