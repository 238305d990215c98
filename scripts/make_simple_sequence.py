"""Build ``tests/data/triton/simple_sequence/1/model.onnx``: Triton's example sequence model.

Triton's ``simple_sequence`` example (``docs/examples/model_repository``) takes INT32 INPUT and
the START and READY control inputs, all ``[-1, 1]``, and answers OUTPUT = (INPUT + START) *
READY: the value itself, one more on a sequence's first request, and 0 for an empty slot. This
builds the same graph with the ``onnx`` package (``pip install onnx``; not a coserve
dependency), so the tests need no binary from elsewhere::

    python scripts/make_simple_sequence.py
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

TARGET = Path(__file__).resolve().parent.parent / "tests/data/triton/simple_sequence/1/model.onnx"


def main() -> None:
    """Write the model file."""
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
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="coserve"
    )
    model.ir_version = 8  # readable by every onnxruntime coserve supports
    onnx.checker.check_model(model)
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, TARGET)
    print(f"wrote {TARGET} ({TARGET.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
