"""The ONNX Runtime backend (extra ``onnx``): specs are read from the session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from coserve._exceptions import InvalidInput, ModelLoadError
from coserve.models._backend import Backend, Tensors, override_specs, require
from coserve.models._config import ThreadConfig
from coserve.models._specs import TensorSpec

__all__ = ["OnnxModel"]

_ORT_TYPES = {
    "tensor(bool)": np.bool_,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(float16)": np.float16,
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(string)": np.object_,
}


def _spec(model: str, node: Any) -> TensorSpec:
    if node.type not in _ORT_TYPES:
        raise ModelLoadError(
            f"model {model!r}: tensor {node.name!r} has unsupported type {node.type}"
        )
    # Symbolic or unknown dimensions (strings, None) are variable.
    shape = [d if isinstance(d, int) and d >= 0 else -1 for d in node.shape]
    return TensorSpec(node.name, np.dtype(_ORT_TYPES[node.type]), tuple(shape))


class OnnxModel(Backend):
    """An ONNX model run by ONNX Runtime on the CPU."""

    platform = "onnx_onnxv1"

    def __init__(
        self,
        path: Path,
        *,
        name: str,
        version: str,
        threads: ThreadConfig = ThreadConfig(),  # noqa: B008 - frozen, so sharing is safe
        inputs: tuple[TensorSpec, ...] | None = None,
        outputs: tuple[TensorSpec, ...] | None = None,
    ) -> None:
        ort = require("onnxruntime", "onnx")
        options = ort.SessionOptions()
        if threads.intra_op is not None:
            options.intra_op_num_threads = threads.intra_op
        if threads.inter_op is not None:
            options.inter_op_num_threads = threads.inter_op
        # ORT's pool threads spin after each run by default; here they would steal the cores the
        # event loop needs between batches, so they sleep instead.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # ORT raises its own exception types
            raise ModelLoadError(
                f"model {name!r}: cannot load ONNX model {path}: {error}"
            ) from error
        read_inputs = tuple(_spec(name, node) for node in self._session.get_inputs())
        read_outputs = tuple(_spec(name, node) for node in self._session.get_outputs())
        super().__init__(
            name,
            version,
            override_specs(name, "inputs", read_inputs, inputs),
            override_specs(name, "outputs", read_outputs, outputs),
        )
        self._output_names = [spec.name for spec in read_outputs]
        # The graph inputs without a default (an initializer): a request must give them all.
        self._required = [node.name for node in self._session.get_inputs()]

    def predict(self, inputs: Tensors) -> dict[str, np.ndarray]:
        """Run the session on one batch.

        Raises:
            InvalidInput: An input the model file requires is left out (an optional one in
                the config that the file gives no default).
        """
        missing = [name for name in self._required if name not in inputs]
        if missing:
            raise InvalidInput(
                f"model {self.name!r} needs input {missing[0]!r}: its file gives it no "
                "default, so it cannot be left out"
            )
        results = self._session.run(self._output_names, dict(inputs))
        return dict(zip(self._output_names, results, strict=True))

    def close(self) -> None:
        """Drop the session."""
        self._session = None
