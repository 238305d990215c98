"""Python models that the server tests add to a temporary repository beside the demo models."""

from __future__ import annotations

from pathlib import Path

from coserve.models import bundled_repository

TYPES_CONFIG = """
platform = "python"
[[inputs]]
name = "text"
datatype = "BYTES"
shape = [-1]
[[inputs]]
name = "flag"
datatype = "BOOL"
shape = [-1]
[[inputs]]
name = "count"
datatype = "INT32"
shape = [-1]
[[outputs]]
name = "upper"
datatype = "BYTES"
shape = [-1]
[[outputs]]
name = "negated"
datatype = "BOOL"
shape = [-1]
[[outputs]]
name = "doubled"
datatype = "INT32"
shape = [-1]
[[outputs]]
name = "text_bytes"
datatype = "BYTES"
shape = [-1]
"""

TYPES_MODEL = """
import numpy as np

def predict(inputs):
    upper = np.array([t.upper() for t in inputs["text"]], dtype=object)
    return {
        "upper": upper,
        "negated": ~inputs["flag"],
        "doubled": inputs["count"] * 2,
        "text_bytes": inputs["text"],
    }
"""

TYPES_REQUEST = {
    "inputs": [
        {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]},
        {"name": "flag", "shape": [1], "datatype": "BOOL", "data": [True]},
        {"name": "count", "shape": [1], "datatype": "INT32", "data": [2]},
    ]
}
"""A request for the 'types' model, as JSON."""

SLOW_CONFIG = """
platform = "python"
warm_up = false
[batching]
max_batch_size = 1
max_queue_size = 2
[[inputs]]
name = "x"
datatype = "FP32"
shape = [-1]
[[outputs]]
name = "y"
datatype = "FP32"
shape = [-1]
"""

SLOW_MODEL = """
import time

def predict(inputs):
    time.sleep(float(inputs["x"][0]))  # the request says how slow to be
    return {"y": inputs["x"]}
"""


def xy_config(**batching: float) -> str:
    """The config of a Python model from FP32 ``x`` to FP32 ``y``, with these batching options."""
    options = "".join(f"{key} = {value!r}\n" for key, value in batching.items())
    return (
        'platform = "python"\nwarm_up = false\n[batching]\n'
        f"{options}"
        '[[inputs]]\nname = "x"\ndatatype = "FP32"\nshape = [-1]\n'
        '[[outputs]]\nname = "y"\ndatatype = "FP32"\nshape = [-1]\n'
    )


def add_model(root: Path, name: str, config: str, model: str) -> None:
    """Write one Python model, version 1, into the repository folder ``root``."""
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.toml").write_text(config)
    (root / name / "1" / "model.py").write_text(model)


def add_python_models(root: Path, *, slow_config: str = SLOW_CONFIG) -> Path:
    """Write the 'types' and 'slow' Python models into the repository folder ``root``."""
    add_model(root, "types", TYPES_CONFIG, TYPES_MODEL)
    add_model(root, "slow", slow_config, SLOW_MODEL)
    return root


def build_repository(root: Path) -> Path:
    """The demo models (linked) plus the 'types' and 'slow' Python models."""
    for name in ("digits", "digits_onnx"):
        (root / name).symlink_to(bundled_repository() / name)
    return add_python_models(root)
