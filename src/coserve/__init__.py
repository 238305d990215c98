"""coserve: asyncio model serving with adaptive request batching and coroutine dataflow graphs.

The public API lives here; the submodules :mod:`coserve.channels`, :mod:`coserve.batching` and
:mod:`coserve.graph` hold the same names grouped by layer. Every exception derives from
:class:`CoserveError`.
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
    GraphError,
    GraphFailed,
    GraphStopped,
    InvalidInput,
    MissingDependency,
    ModelError,
    ModelLoadError,
    ModelNotFound,
    PortTypeError,
    QueueFull,
    RequestRejected,
    RequestTooLarge,
    UnmatchedSignal,
    Unsupported,
    WouldBlock,
)
from coserve.batching import (
    AdaptiveState,
    Batched,
    BatchedMethod,
    Batcher,
    BatcherStatistics,
    BatchingOptions,
    CloseReason,
    DurationSummary,
    LatencyTarget,
    batched,
)
from coserve.channels import ChannelStatistics, ReceiveChannel, SendChannel, open_channel
from coserve.graph import (
    DeadLetter,
    FunctionNode,
    Graph,
    GraphStatistics,
    Input,
    Node,
    NodeStatistics,
    Output,
    PortStatistics,
    Signal,
    Supervision,
    port,
)
from coserve.models import (
    Backend,
    ModelConfig,
    ModelHandle,
    ModelNode,
    ModelRepository,
    PythonModel,
    SequenceFlags,
    SequenceHandle,
    TensorSpec,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "AdaptiveState",
    "Backend",
    "BatchFailed",
    "Batched",
    "BatchedMethod",
    "Batcher",
    "BatcherClosed",
    "BatcherStatistics",
    "BatchingOptions",
    "BrokenChannelError",
    "ChannelError",
    "ChannelStatistics",
    "CloseReason",
    "ClosedChannelError",
    "ConfigError",
    "CoserveError",
    "DeadLetter",
    "DeadlineExceeded",
    "DurationSummary",
    "EndOfChannel",
    "FunctionNode",
    "Graph",
    "GraphError",
    "GraphFailed",
    "GraphStatistics",
    "GraphStopped",
    "Input",
    "InvalidInput",
    "LatencyTarget",
    "MissingDependency",
    "ModelConfig",
    "ModelError",
    "ModelHandle",
    "ModelLoadError",
    "ModelNode",
    "ModelNotFound",
    "ModelRepository",
    "Node",
    "NodeStatistics",
    "Output",
    "PortStatistics",
    "PortTypeError",
    "PythonModel",
    "QueueFull",
    "ReceiveChannel",
    "RequestRejected",
    "RequestTooLarge",
    "SendChannel",
    "SequenceFlags",
    "SequenceHandle",
    "Signal",
    "Supervision",
    "TensorSpec",
    "UnmatchedSignal",
    "Unsupported",
    "WouldBlock",
    "__version__",
    "batched",
    "open_channel",
    "port",
]

# Show public names as coserve.X (not coserve.batching._batcher.X) in reprs, docs and tracebacks.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("coserve."):
        _obj.__module__ = "coserve"
del _name, _obj
