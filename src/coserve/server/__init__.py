"""The inference server: an ASGI app over a model repository, run by ``coserve serve``.

Endpoints: the Open Inference Protocol (KServe V2) REST API under ``/v2`` — server and model
metadata, health, and inference with JSON tensors or the binary tensor data extension; the
TensorFlow Serving REST API under ``/v1``; per-session coroutine graphs over WebSocket at
``/sessions/{app}`` (a :class:`SessionFactory` builds each session's :class:`SessionPipeline`);
and, beside HTTP in the same loop, gRPC: the Open Inference Protocol with Triton's stream,
TensorFlow Serving's API and ``grpc.health.v1``. Every protocol's driver stands on one inference
service (``_service``) and one error table (``_errors``); :func:`serve` assembles the server
from :class:`ServeOptions`. :class:`Tracing` (OpenTelemetry, the ``tracing`` extra; imported on
first use) and :class:`AccessLog` are what ``create_app(tracing=, access_log=)`` take.
"""

from typing import TYPE_CHECKING, Any

from coserve.server._access_log import AccessLog
from coserve.server._app import EXTENSIONS, create_app
from coserve.server._serve import ServeOptions, serve
from coserve.server._sessions import (
    Session,
    SessionFactory,
    SessionManager,
    SessionPipeline,
    load_factory,
)
from coserve.server._state import ServerState

if TYPE_CHECKING:
    from coserve.server._tracing import Tracing

__all__ = [
    "EXTENSIONS",
    "AccessLog",
    "ServeOptions",
    "ServerState",
    "Session",
    "SessionFactory",
    "SessionManager",
    "SessionPipeline",
    "Tracing",
    "create_app",
    "load_factory",
    "serve",
]


def __getattr__(name: str) -> Any:
    # Tracing imports OpenTelemetry: only when asked for, so a server without it imports none.
    if name == "Tracing":
        from coserve.server._tracing import Tracing

        return Tracing
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
