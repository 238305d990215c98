"""Build the ONNX files of two test models in ``tests/data/triton`` that are not Triton's own.

- ``simple_sequence/1/model.onnx``: Triton's example sequence model. Triton's
  ``simple_sequence`` (``docs/examples/model_repository``) takes INT32 INPUT and the START and
  READY control inputs, all ``[-1, 1]``, and answers OUTPUT = (INPUT + START) * READY: the
  value itself, one more on a sequence's first request, and 0 for an empty slot.
- ``tiny_densenet/1/model.onnx``: a model shaped as Triton's ``densenet_onnx`` quick-start
  example (``max_batch_size: 0``, an image in and class scores out, each reshaped around a batch
  of 1), small: ``data_0`` FP32 [1, 3, 4, 4] -> the mean of each channel times a fixed
  [3, 5] matrix (``WEIGHTS``) -> ``fc6_1`` FP32 [1, 5, 1, 1].

Run with the ``onnx`` package (``pip install onnx``; not a coserve dependency)::

    python scripts/make_triton_test_models.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DATA = Path(__file__).resolve().parent.parent / "tests/data/triton"

WEIGHTS = np.array(
    [[1.0, 0.5, 0.0, -1.0, 2.0], [0.0, 1.0, 3.0, 0.5, -2.0], [2.0, -1.0, 1.0, 0.0, 0.25]],
    dtype=np.float32,
)
"""The tiny densenet's channel-means-to-scores matrix (the tests compute the same)."""


def save(model: onnx.ModelProto, relative: str) -> None:
    """Check the model and write it under tests/data/triton."""
    model.ir_version = 8  # readable by every onnxruntime coserve supports
    onnx.checker.check_model(model)
    target = DATA / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, target)
    print(f"wrote {target} ({target.stat().st_size} bytes)")


def simple_sequence() -> onnx.ModelProto:
    """OUTPUT = (INPUT + START) * READY, INT32 [-1, 1] each."""
    tensors = [
        helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", 1])
        for name in ("INPUT", "START", "READY", "OUTPUT")
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT", "START"], ["started"]),
            helper.make_node("Mul", ["started", "READY"], ["OUTPUT"]),
        ],
        "simple_sequence",
        tensors[:3],
        tensors[3:],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def tiny_densenet() -> onnx.ModelProto:
    """Channel means of a [1, 3, 4, 4] image times WEIGHTS, as [1, 5, 1, 1] scores."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["data_0"], ["means"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["means", "weights"], ["scores"]),
            helper.make_node("Reshape", ["scores", "shape"], ["fc6_1"]),
        ],
        "tiny_densenet",
        [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("fc6_1", TensorProto.FLOAT, [1, 5, 1, 1])],
        initializer=[
            numpy_helper.from_array(WEIGHTS, "weights"),
            numpy_helper.from_array(np.array([1, 5, 1, 1], dtype=np.int64), "shape"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def main() -> None:
    """Write both model files."""
    save(simple_sequence(), "simple_sequence/1/model.onnx")
    save(tiny_densenet(), "tiny_densenet/1/model.onnx")


if __name__ == "__main__":
    main()
