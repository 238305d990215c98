"""The model as the benchmarks' peer servers call it: a SavedModel signature, one input, one output.

Shared by the unbatched server, the mosec worker and the MLServer runtime (each in its own virtual
environment: this module needs only NumPy and TensorFlow). Environment variables say which model:

- ``BENCH_MODEL``: the SavedModel folder (default: the bundled digits model);
- ``BENCH_MODEL_NAME``: the name it is served by (default ``digits``);
- ``BENCH_INTRA_OP``, ``BENCH_INTER_OP``: TensorFlow's thread counts (default: TensorFlow's).

The signature is called as a ``tf.function``, as the peers' own examples do. A variable-length
input (dimension 1 is ``None``, e.g. token ids) is batched the way a user of these servers writes
it: the batch's rows padded with 0 to the longest row of the batch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

DIGITS = (
    Path(__file__).resolve().parents[2]
    / "src" / "coserve" / "demo_models" / "digits" / "1" / "model.savedmodel"
)  # fmt: skip

DATATYPES = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.uint8): "UINT8",
}


class PeerModel:
    """The signature of ``BENCH_MODEL``, loaded and traced once."""

    def __init__(self) -> None:
        import tensorflow as tf

        if os.environ.get("BENCH_INTRA_OP"):
            tf.config.threading.set_intra_op_parallelism_threads(int(os.environ["BENCH_INTRA_OP"]))
        if os.environ.get("BENCH_INTER_OP"):
            tf.config.threading.set_inter_op_parallelism_threads(int(os.environ["BENCH_INTER_OP"]))
        self._tf = tf
        self.name = os.environ.get("BENCH_MODEL_NAME", "digits")
        path = os.environ.get("BENCH_MODEL", str(DIGITS))
        self.signature = tf.saved_model.load(path).signatures["serving_default"]
        ((self.input, spec),) = self.signature.structured_input_signature[1].items()
        self.output = next(iter(self.signature.structured_outputs))
        self.dtype = np.dtype(spec.dtype.as_numpy_dtype)
        dims = spec.shape.as_list()
        self.variable = len(dims) >= 2 and dims[1] is None
        self.run(np.zeros([1, *(d or 8 for d in dims[1:])], self.dtype))  # trace once

    def decode(self, tensor: dict[str, Any]) -> np.ndarray:
        """One Open Inference Protocol JSON tensor as an array of the input's type."""
        return np.asarray(tensor["data"], dtype=self.dtype).reshape(tensor["shape"])

    def batch(self, rows: list[np.ndarray]) -> np.ndarray:
        """Requests' arrays as one batch: padded with 0 to the longest, if lengths vary."""
        if not self.variable:
            return np.concatenate(rows)
        longest = max(row.shape[1] for row in rows)
        batch = np.zeros((sum(len(row) for row in rows), longest), self.dtype)
        start = 0
        for row in rows:
            batch[start : start + len(row), : row.shape[1]] = row
            start += len(row)
        return batch

    def trim(self, batch: np.ndarray) -> np.ndarray:
        """A batch of rows padded beyond their longest (by the client) cut to that length."""
        if not self.variable:
            return batch
        columns = np.flatnonzero(batch.any(axis=0))
        return batch[:, : (columns[-1] + 1 if len(columns) else 1)]

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The output for a batch."""
        return self.signature(**{self.input: self._tf.constant(batch)})[self.output].numpy()  # type: ignore[no-any-return]

    def answer(self, output: np.ndarray) -> dict[str, Any]:
        """An Open Inference Protocol response body for one request's output rows."""
        return {
            "model_name": self.name,
            "outputs": [
                {
                    "name": self.output,
                    "shape": list(output.shape),
                    "datatype": DATATYPES[output.dtype],
                    "data": output.ravel().tolist(),
                }
            ],
        }
