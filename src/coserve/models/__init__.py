"""Models: the backend protocol, the backends, the model repository and ``ModelHandle``.

Load a repository folder (or the bundled demo models) and await batched inference::

    async with ModelRepository("models/") as repository:
        digits = repository.get("digits")
        outputs = await digits.infer({"image": images}, timeout=0.5)

Backends: TensorFlow SavedModel and Keras (extra ``tensorflow``), ONNX Runtime (extra ``onnx``),
PyTorch TorchScript and ``torch.export`` (extra ``torch``), and any Python callable. The layer
imports no web code; heavy runtimes are imported only when a model needs them.
"""

from coserve.models._backend import Backend, SequenceFlags, Tensors
from coserve.models._config import (
    PLATFORMS,
    BatchingConfig,
    ModelConfig,
    PaddingConfig,
    SequenceConfig,
    SequenceControl,
    ThreadConfig,
    VersionPolicy,
)
from coserve.models._handle import ModelHandle
from coserve.models._layout import ModelFolder
from coserve.models._node import ModelNode
from coserve.models._padding import BucketStatistics
from coserve.models._repository import (
    ModelRepository,
    ModelStatus,
    bundled_repository,
    load_backend,
)
from coserve.models._sequence import SequenceHandle
from coserve.models._specs import TensorSpec, datatype_of, dtype_of
from coserve.models.backends.python import PythonModel

__all__ = [
    "PLATFORMS",
    "Backend",
    "BatchingConfig",
    "BucketStatistics",
    "ModelConfig",
    "ModelFolder",
    "ModelHandle",
    "ModelNode",
    "ModelRepository",
    "ModelStatus",
    "PaddingConfig",
    "PythonModel",
    "SequenceConfig",
    "SequenceControl",
    "SequenceFlags",
    "SequenceHandle",
    "TensorSpec",
    "Tensors",
    "ThreadConfig",
    "VersionPolicy",
    "bundled_repository",
    "datatype_of",
    "dtype_of",
    "load_backend",
]
