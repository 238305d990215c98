"""coserve: asyncio model serving with adaptive request batching and coroutine dataflow graphs.

The public API lives here; the submodules :mod:`coserve.channels` and :mod:`coserve.batching`
hold the same names grouped by layer. Every exception derives from :class:`CoserveError`.
"""

from coserve._exceptions import (
    BatcherClosed,
    BatchFailed,
    BrokenChannelError,
    ChannelError,
    ClosedChannelError,
    ConfigError,
    CoserveError,
    DeadlineExceeded,
    EndOfChannel,
    InvalidInput,
    MissingDependency,
    ModelError,
    ModelLoadError,
    ModelNotFound,
    QueueFull,
    RequestRejected,
    WouldBlock,
)
from coserve.batching import (
    Batched,
    BatchedMethod,
    Batcher,
    BatcherStatistics,
    CloseReason,
    DurationSummary,
    batched,
)
from coserve.channels import ChannelStatistics, ReceiveChannel, SendChannel, open_channel
from coserve.models import (
    Backend,
    ModelConfig,
    ModelHandle,
    ModelRepository,
    PythonModel,
    TensorSpec,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "Backend",
    "BatchFailed",
    "Batched",
    "BatchedMethod",
    "Batcher",
    "BatcherClosed",
    "BatcherStatistics",
    "BrokenChannelError",
    "ChannelError",
    "ChannelStatistics",
    "CloseReason",
    "ClosedChannelError",
    "ConfigError",
    "CoserveError",
    "DeadlineExceeded",
    "DurationSummary",
    "EndOfChannel",
    "InvalidInput",
    "MissingDependency",
    "ModelConfig",
    "ModelError",
    "ModelHandle",
    "ModelLoadError",
    "ModelNotFound",
    "ModelRepository",
    "PythonModel",
    "QueueFull",
    "ReceiveChannel",
    "RequestRejected",
    "SendChannel",
    "TensorSpec",
    "WouldBlock",
    "__version__",
    "batched",
    "open_channel",
]

# Show public names as coserve.X (not coserve.batching._batcher.X) in reprs, docs and tracebacks.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("coserve."):
        _obj.__module__ = "coserve"
del _name, _obj
