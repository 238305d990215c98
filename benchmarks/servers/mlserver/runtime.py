"""An MLServer runtime serving a SavedModel, for the serving benchmarks.

Loaded by MLServer from a ``model-settings.json`` (``implementation: runtime.SavedModelRuntime``;
MLServer puts the settings' folder on ``sys.path``; for other folders the launcher puts this one
on ``PYTHONPATH``) in MLServer's own virtual environment (``benchmarks/.venv-mlserver``, see
``__init__.py``). Like the mosec peer it calls the SavedModel's ``serving_default`` signature as a
``tf.function`` (``peer_model.py``: the model is ``BENCH_MODEL``, default the bundled digits) on
each batch that MLServer's adaptive batcher forms (``max_batch_size``, ``max_batch_time`` in the
settings). MLServer's batcher joins requests' tensors only when their shapes agree, so clients
of a variable-length model send rows padded (with 0) to its maximum length; the runtime cuts each
batch back to its longest real row before calling the model.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Appended, not prepended: benchmarks/servers holds a package named mlserver (this one's folder)
# that must not shadow the real MLServer.
sys.path.append(str(Path(__file__).resolve().parents[1]))

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

from peer_model import PeerModel  # isort: skip (found through the path appended above)


class SavedModelRuntime(MLModel):
    """Decodes the input tensor of a (batched) request, runs it through the signature."""

    async def load(self) -> bool:
        """Load the SavedModel's signature in this (inference worker) process and trace it."""
        self._model = PeerModel()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        """One batch: the output of each row."""
        model = self._model
        rows = NumpyCodec.decode_input(payload.inputs[0]).astype(model.dtype, copy=False)
        if model.name == "digits" and rows.ndim == 2:  # a flat [N, 64] row is accepted too
            rows = rows.reshape(-1, 8, 8, 1)
        output = model.run(model.trim(rows))
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(model.output, output)],
        )
