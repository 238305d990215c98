"""The Python backend: any callable over dicts of arrays, for custom logic and for tests."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from coserve._exceptions import ModelLoadError
from coserve.models._backend import Backend, Tensors
from coserve.models._specs import TensorSpec

__all__ = ["PythonModel", "load_python_model"]

PredictFunction = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


class PythonModel(Backend):
    """A model that is a plain Python function from a batch of named arrays to named arrays.

    Args:
        predict: ``f(inputs) -> outputs``, both dicts of arrays whose first dimension is the
            batch; it runs in an executor thread.
        name: The model's name.
        inputs: Input specs (Python functions carry none, so they are required).
        outputs: Output specs.
        version: The version string.
    """

    platform = "python"

    def __init__(
        self,
        predict: PredictFunction,
        *,
        name: str,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        version: str = "1",
    ) -> None:
        super().__init__(name, version, inputs, outputs)
        self._predict = predict

    def predict(self, inputs: Tensors) -> dict[str, np.ndarray]:
        """Call the function and make every output an array."""
        return {name: np.asarray(value) for name, value in self._predict(inputs).items()}


def load_python_model(
    path: Path,
    *,
    name: str,
    version: str,
    inputs: tuple[TensorSpec, ...] | None,
    outputs: tuple[TensorSpec, ...] | None,
) -> PythonModel:
    """Load ``<version>/model.py`` (or the configured file), which defines ``predict(inputs)``.

    Raises:
        ModelLoadError: The file is missing, fails to import, has no ``predict``, or the config
            gives no input and output specs.
    """
    if inputs is None or outputs is None:
        raise ModelLoadError(
            f"model {name!r}: a python model needs [[inputs]] and [[outputs]] in its config.toml"
        )
    spec = importlib.util.spec_from_file_location(f"coserve_model_{name}_{version}", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise ModelLoadError(f"model {name!r}: {path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        raise ModelLoadError(f"model {name!r}: importing {path} failed: {error!r}") from error
    predict = getattr(module, "predict", None)
    if not callable(predict):
        raise ModelLoadError(f"model {name!r}: {path} defines no predict(inputs) function")
    return PythonModel(predict, name=name, version=version, inputs=inputs, outputs=outputs)
