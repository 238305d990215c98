"""The ASGI application over a model repository.

Open Inference Protocol (KServe V2) REST under ``/v2`` (inference itself in ``_infer``, served
natively by coserve's HTTP protocol, ``_protocol``), streaming inference over WebSocket,
per-session graphs over WebSocket at ``/sessions/{app}``, TensorFlow Serving REST under ``/v1``,
health and ``/metrics``.

Status codes (one mapping, shared by every endpoint, in ``_http.status_of``):

==========================  ======  =========================================================
error                       status  when
==========================  ======  =========================================================
InvalidInput                400     malformed JSON, wrong shapes or datatypes, unknown inputs
ModelNotFound               404     unknown model or version
(method)                    405     a route called with the wrong method
(body size)                 413     body over ``max_request_size`` (refused before reading it)
QueueFull                   429     the model's queue is full: shed, retry later
BatcherClosed               503     the server is shutting down or the model unloading
DeadlineExceeded            504     the request's deadline passed
BatchFailed / ModelError    500     the model itself failed (never caused by request input)
==========================  ======  =========================================================
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute

from coserve import __version__
from coserve._exceptions import ModelNotFound
from coserve.models import ModelHandle, ModelRepository
from coserve.server._decoding import serving
from coserve.server._http import endpoint, error_response, json_response
from coserve.server._infer import InferenceRoute
from coserve.server._limits import ServerLimits
from coserve.server._metrics import Metrics
from coserve.server._sessions import SessionManager
from coserve.server._tfserving import tfserving_endpoint
from coserve.server._websocket import websocket_endpoint
from coserve.server._workers import WorkerInfo, gather_metrics

__all__ = ["EXTENSIONS", "ServerState", "create_app"]

logger = logging.getLogger("coserve.server")

EXTENSIONS = ["binary_tensor_data", "schedule_policy"]


class ServerState:
    """What the endpoints share: the repository, the limits, and whether the server is ready."""

    def __init__(
        self, repository: ModelRepository, *, limits: ServerLimits, graceful_timeout: float
    ) -> None:
        self.repository = repository
        self.limits = limits
        self.graceful_timeout = graceful_timeout
        self.ready = False
        """Readiness, as the health endpoints report it: off from the first sign of shutdown."""
        self.accepting = False
        """Whether inference requests are taken: from the models' loading until they unload.

        Stays on while the server drains after a signal (readiness is already off then), so a
        request a client sent before it learnt of the shutdown is still served.
        """

    @property
    def max_request_size(self) -> int:
        """The largest request body accepted, in bytes."""
        return self.limits.max_request_size


def _handle(state: ServerState, request: Request) -> ModelHandle:
    name = request.path_params["model"]
    version = request.path_params.get("version")
    return state.repository.get(name, version)


def create_app(
    repository: ModelRepository,
    *,
    max_request_size: int | None = None,
    limits: ServerLimits | None = None,
    graceful_timeout: float = 30.0,
    sessions: SessionManager | None = None,
    worker: WorkerInfo | None = None,
) -> InferenceRoute:
    """The ASGI app serving ``repository``.

    Its lifespan loads the models at startup and, at shutdown, drains them within
    ``graceful_timeout`` seconds (the repository's ``reload`` and ``aclose``). ``limits`` bound
    what a client may make the server hold (``max_request_size`` overrides its request size).
    ``sessions``
    serves per-session graphs at ``/sessions/{app}`` (none by default). ``worker`` is set in the
    worker processes of ``coserve serve --workers N``: the app then reports its readiness to the
    supervisor, and ``/metrics`` gathers every worker's series (``?local=1``: this one's only).
    """
    limits = limits if limits is not None else ServerLimits()
    if max_request_size is not None:
        limits = limits.replace(max_request_size=max_request_size)
    state = ServerState(repository, limits=limits, graceful_timeout=graceful_timeout)
    sessions = sessions if sessions is not None else SessionManager(repository, {})
    metrics = Metrics(repository, sessions)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        start = time.perf_counter()
        await repository.reload()
        # TensorFlow leaves ~10^5 objects for the collector to scan: freezing them after loading
        # keeps full collections (and their 100+ ms pauses) out of the request path (DESIGN §7).
        gc.collect()
        gc.freeze()
        logger.info(
            "loaded %d model version(s) from %s in %.1fs",
            len(repository.models()),
            repository.path,
            time.perf_counter() - start,
        )
        state.ready = state.accepting = True
        if worker is not None:
            worker.mark_ready()
        app.state.limits = limits  # where the /v1 and WebSocket handlers find max_json_size
        try:
            async with serving():  # the decoder processes for large JSON stop with the server
                yield
        finally:
            state.ready = state.accepting = False
            await repository.aclose(grace_period=state.graceful_timeout)

    async def server_metadata(request: Request) -> Response:
        return json_response({"name": "coserve", "version": __version__, "extensions": EXTENSIONS})

    async def live(request: Request) -> Response:
        return Response(status_code=200)

    async def ready(request: Request) -> Response:
        return Response(status_code=200 if state.ready else 400)

    async def model_ready(request: Request) -> Response:
        try:
            handle = _handle(state, request)
        except ModelNotFound:
            return Response(status_code=400)
        return Response(status_code=400 if handle.closed or not state.ready else 200)

    async def model_metadata(request: Request) -> Response:
        handle = _handle(state, request)
        versions = [m.version for m in repository.models() if m.name == handle.name]
        return json_response(
            {
                "name": handle.name,
                "versions": versions,
                "platform": handle.platform,
                "inputs": [
                    {"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}
                    for s in handle.inputs
                ],
                "outputs": [
                    {"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}
                    for s in handle.outputs
                ],
            }
        )

    async def metrics_endpoint(request: Request) -> Response:
        text = metrics.render()
        if worker is not None and worker.count > 1 and request.query_params.get("local") != "1":
            text = await gather_metrics(worker, text)
        return Response(text, media_type="text/plain; version=0.0.4")

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        return error_response(error.detail, error.status_code)

    routes = [
        Route("/v2", endpoint(server_metadata), methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2/models/{model}", endpoint(model_metadata), methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}", endpoint(model_metadata), methods=["GET"]),
        Route("/v2/models/{model}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/ready", model_ready, methods=["GET"]),
        WebSocketRoute("/v2/models/{model}/infer/ws", websocket_endpoint(repository)),
        WebSocketRoute(
            "/v2/models/{model}/versions/{version}/infer/ws", websocket_endpoint(repository)
        ),
        WebSocketRoute("/sessions/{app}", sessions.serve),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route(
            "/v1/models/{rest:path}",
            endpoint(
                tfserving_endpoint(
                    repository, lambda: state.max_request_size, lambda: state.accepting
                )
            ),
            methods=["GET", "POST"],
        ),
    ]
    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error}
    )

    latency_by_label: dict[tuple[str, str, int], Any] = {}

    def observe(model: str, version: str, status: int, seconds: float) -> None:
        # labels() takes a lock and builds a key on every call; the children are reused.
        key = (model, version, status)
        child = latency_by_label.get(key)
        if child is None:
            child = latency_by_label[key] = metrics.request_latency.labels(
                model, version, str(status)
            )
        child.observe(seconds)

    return InferenceRoute(app, state, observe)
