"""The inference server: an ASGI app over a model repository, run by ``coserve serve``.

Endpoints: the Open Inference Protocol (KServe V2) REST API under ``/v2`` — server and model
metadata, health, and inference with JSON tensors or the binary tensor data extension; the
TensorFlow Serving REST API under ``/v1``; per-session coroutine graphs over WebSocket at
``/sessions/{app}`` (a :class:`SessionFactory` builds each session's :class:`SessionPipeline`);
and, beside HTTP in the same loop, gRPC: the Open Inference Protocol with Triton's stream,
TensorFlow Serving's API and ``grpc.health.v1``. Every protocol's driver stands on one inference
service (``_service``) and one error table (``_errors``); :func:`serve` assembles the server
from :class:`ServeOptions`.
"""

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

__all__ = [
    "EXTENSIONS",
    "ServeOptions",
    "ServerState",
    "Session",
    "SessionFactory",
    "SessionManager",
    "SessionPipeline",
    "create_app",
    "load_factory",
    "serve",
]
