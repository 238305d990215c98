"""PyTorch backends (extra ``torch``): TorchScript and ``torch.export`` programs.

Neither file format carries named input and output specs in a portable way, so the model's
config.toml gives them; inputs are passed positionally in the config's order.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from coserve._exceptions import ModelError, ModelLoadError
from coserve.models._backend import Backend, Tensors, require
from coserve.models._config import ThreadConfig
from coserve.models._specs import TensorSpec

__all__ = ["TorchModel"]

logger = logging.getLogger("coserve.models")


def _configure_threads(torch: Any, threads: ThreadConfig) -> None:
    if threads.intra_op is not None:
        torch.set_num_threads(threads.intra_op)
    if threads.inter_op is not None and torch.get_num_interop_threads() != threads.inter_op:
        try:
            torch.set_num_interop_threads(threads.inter_op)
        except RuntimeError:  # only settable before the first parallel work
            logger.warning("PyTorch inter-op threads are already fixed; keeping the current ones")


class TorchModel(Backend):
    """A TorchScript module (``pytorch_torchscript``) or an exported program (``pytorch_export``).

    Args:
        path: The ``.pt`` (TorchScript) or ``.pt2`` (``torch.export``) file.
        exported: Whether the file is a ``torch.export`` program.
    """

    def __init__(
        self,
        path: Path,
        *,
        name: str,
        version: str,
        exported: bool,
        threads: ThreadConfig = ThreadConfig(),  # noqa: B008 - frozen, so sharing is safe
        inputs: tuple[TensorSpec, ...] | None = None,
        outputs: tuple[TensorSpec, ...] | None = None,
    ) -> None:
        if inputs is None or outputs is None:
            raise ModelLoadError(
                f"model {name!r}: a PyTorch model needs [[inputs]] and [[outputs]] in config.toml"
            )
        torch = require("torch", "torch")
        _configure_threads(torch, threads)
        self.platform = "pytorch_export" if exported else "pytorch_torchscript"
        try:
            if exported:
                self._module = torch.export.load(str(path)).module()
            else:
                with warnings.catch_warnings():
                    # PyTorch 2.13 deprecates TorchScript; loading it is still supported.
                    warnings.filterwarnings("ignore", ".*torch.jit.load.* is deprecated")
                    self._module = torch.jit.load(str(path), map_location="cpu")
                self._module.eval()
                logger.info(
                    "model %s: TorchScript is deprecated by PyTorch; consider pytorch_export", name
                )
        except Exception as error:
            raise ModelLoadError(f"model {name!r}: cannot load {path}: {error}") from error
        self._torch = torch
        super().__init__(name, version, inputs, outputs)

    def predict(self, inputs: Tensors) -> dict[str, np.ndarray]:
        """Call the module on one batch; outputs map to the configured names in order."""
        torch = self._torch
        tensors = []
        for spec in self.inputs:
            array = inputs[spec.name]
            if not array.flags.writeable:  # torch refuses (warns about) read-only buffers
                array = array.copy()
            tensors.append(torch.from_numpy(array))
        with torch.inference_mode():
            result = self._module(*tensors)
        if isinstance(result, dict):
            return {name: value.numpy() for name, value in result.items()}
        values = result if isinstance(result, list | tuple) else [result]
        if len(values) != len(self.outputs):
            raise ModelError(
                f"model {self.name!r} returned {len(values)} outputs; config.toml names "
                f"{len(self.outputs)}"
            )
        return {spec.name: value.numpy() for spec, value in zip(self.outputs, values, strict=True)}

    def close(self) -> None:
        """Drop the module."""
        self._module = None
