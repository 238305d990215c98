"""An MLServer runtime serving the bundled digits SavedModel, for the gRPC serving benchmark.

Loaded by MLServer from ``model-settings.json`` beside this file (``implementation:
runtime.DigitsRuntime``; MLServer puts this folder on ``sys.path``) in MLServer's own virtual
environment (``benchmarks/.venv-mlserver``, see ``__init__.py``). Like the mosec peer it calls the
SavedModel's ``serving_default`` signature as a ``tf.function`` on each batch that MLServer's
adaptive batcher forms (``max_batch_size`` 64, ``max_batch_time`` 2 ms in the model settings):
input ``image`` FP32 ``[-1, 8, 8, 1]``, output ``probabilities`` FP32 ``[-1, 10]``.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

SAVED_MODEL = (
    Path(__file__).resolve().parents[3]
    / "src" / "coserve" / "demo_models" / "digits" / "1" / "model.savedmodel"
)  # fmt: skip


class DigitsRuntime(MLModel):
    """Decodes the ``image`` tensor of a (batched) request, runs it through the signature."""

    async def load(self) -> bool:
        """Load the SavedModel's signature in this (inference worker) process and trace it."""
        import tensorflow as tf

        self._tf = tf
        uri = self.settings.parameters.uri if self.settings.parameters else None
        # MLServer sets ``uri`` to the model folder (this one) unless the settings name one.
        path = Path(uri) if uri and (Path(uri) / "saved_model.pb").exists() else SAVED_MODEL
        self._signature = tf.saved_model.load(str(path)).signatures["serving_default"]
        self._signature(image=tf.zeros((1, 8, 8, 1)))  # trace once before the first request
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        """One batch: the ``probabilities`` of each image row."""
        image = NumpyCodec.decode_input(payload.inputs[0]).astype("float32", copy=False)
        if image.ndim == 2:  # a flat [N, 64] row is accepted too
            image = image.reshape(-1, 8, 8, 1)
        probabilities = self._signature(image=self._tf.constant(image))["probabilities"]
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output("probabilities", probabilities.numpy())],
        )
