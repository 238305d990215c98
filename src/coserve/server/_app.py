"""The ASGI application over a model repository.

Open Inference Protocol (KServe V2) REST under ``/v2`` (inference itself in ``_v2_rest``, served
natively by coserve's HTTP protocol, ``_native_http``), streaming inference over WebSocket,
per-session graphs over WebSocket at ``/sessions/{app}``, TensorFlow Serving REST under ``/v1``,
health, ``/metrics`` and the live ``/dashboard``.

Errors map to statuses in one table, shared by every endpoint and protocol: ``_errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute

from coserve import __version__
from coserve._exceptions import ModelLoadError, ModelNotFound
from coserve.models import ModelHandle, ModelRepository
from coserve.models._triton_config import triton_model_config
from coserve.server._admin import admin_routes
from coserve.server._dashboard import Dashboard
from coserve.server._decoding import serving
from coserve.server._limits import ServerLimits
from coserve.server._metrics import Metrics
from coserve.server._model_control import ModelControl
from coserve.server._responses import endpoint, error_response, json_response
from coserve.server._service import EXTENSIONS, InferenceService
from coserve.server._sessions import SessionManager
from coserve.server._state import ServerState
from coserve.server._statistics import model_statistics, select_handles
from coserve.server._tfserving import tfserving_endpoint
from coserve.server._v2_rest import InferenceRoute
from coserve.server._websocket import websocket_endpoint
from coserve.server._workers import WorkerInfo, gather_metrics

if TYPE_CHECKING:
    from coserve.server._access_log import AccessLog
    from coserve.server._grpc_server import GrpcOptions
    from coserve.server._tracing import Tracing

__all__ = ["EXTENSIONS", "ServerState", "create_app"]

logger = logging.getLogger("coserve.server")


def _handle(state: ServerState, request: Request) -> ModelHandle:
    name = request.path_params["model"]
    version = request.path_params.get("version")
    return state.repository.get(name, version)


async def _poll(repository: ModelRepository, interval: float) -> None:
    """Reload the repository every ``interval`` seconds until cancelled; a failure is logged."""
    while True:
        await asyncio.sleep(interval)
        try:
            # Shielded: a shutdown cancelling the poll mid-reload must not strand the versions
            # it loaded or retired; aclose waits for the reload (it takes the same lock).
            await asyncio.shield(repository.reload())
        except Exception as error:  # the folder vanished, say: keep serving what is loaded
            logger.error("reloading the models from %s failed: %s", repository.description, error)


def create_app(
    repository: ModelRepository,
    *,
    max_request_size: int | None = None,
    limits: ServerLimits | None = None,
    graceful_timeout: float = 30.0,
    sessions: SessionManager | None = None,
    worker: WorkerInfo | None = None,
    grpc: GrpcOptions | None = None,
    poll_interval: float | None = None,
    exit_on_error: bool = False,
    model_control: ModelControl | None = None,
    admin: bool = False,
    tracing: Tracing | None = None,
    access_log: AccessLog | None = None,
) -> InferenceRoute:
    """The ASGI app serving ``repository``.

    Its lifespan loads the models at startup and, at shutdown, drains them within
    ``graceful_timeout`` seconds (the repository's ``reload`` and ``aclose``). ``limits`` bound
    what a client may make the server hold (``max_request_size`` overrides its request size).
    ``sessions``
    serves per-session graphs at ``/sessions/{app}`` (none by default). ``worker`` is set in the
    worker processes of ``coserve serve --workers N``: the app then reports its readiness to the
    supervisor, and ``/metrics`` gathers every worker's series (``?local=1``: this one's only).
    ``grpc`` serves gRPC beside HTTP, started in the lifespan once the models are loaded (the
    returned route's ``grpc``); it needs the ``grpc`` extra. ``poll_interval`` reloads the
    repository that often (seconds), so versions added to a folder load, and removed ones
    unload, as they appear (TensorFlow Serving's ``--file_system_poll_wait_seconds``).
    ``exit_on_error`` fails the startup if a model folder or version could not be served
    (Triton's ``--exit-on-error``). ``model_control`` serves Triton's repository API (default:
    an index of what is served, and no loading or unloading). ``admin`` serves the admin API
    (``_admin``: live batching options, to loopback clients only). ``tracing`` traces requests,
    batches and session-graph hops (``_tracing``; its provider is shut down with the app);
    ``access_log`` logs a line per request.
    """
    limits = limits if limits is not None else ServerLimits()
    if max_request_size is not None:
        limits = limits.replace(max_request_size=max_request_size)
    state = ServerState(repository, limits=limits, graceful_timeout=graceful_timeout)
    sessions = sessions if sessions is not None else SessionManager(repository, {})
    sessions.tracing = tracing
    metrics = Metrics(repository, sessions)
    dashboard = Dashboard(repository, sessions, metrics, worker=worker)
    control = model_control or ModelControl(repository, None, "none")
    service = InferenceService(
        state, metrics.observe_request, tracing=tracing, access_log=access_log
    )
    grpc_server = None
    if grpc is not None:
        from coserve.server._grpc_server import GrpcServer

        grpc_server = GrpcServer(service, grpc, control)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        start = time.perf_counter()
        await repository.reload()
        unserved = repository.unserved()
        if exit_on_error and unserved:
            await repository.aclose()
            raise ModelLoadError(
                f"--exit-on-error: not served: {', '.join(unserved)} (the log above says why)"
            )
        # TensorFlow leaves ~10^5 objects for the collector to scan: freezing them after loading
        # keeps full collections (and their 100+ ms pauses) out of the request path (DESIGN §7).
        gc.collect()
        gc.freeze()
        logger.info(
            "loaded %d model version(s) from %s in %.1fs",
            len(repository.models()),
            repository.description,
            time.perf_counter() - start,
        )
        unwatch = service.watch()
        state.accepting = True
        try:
            if grpc_server is not None:
                await grpc_server.start()
            state.ready = True
            if worker is not None:
                worker.mark_ready()
            app.state.limits = limits  # where the /v1 and WebSocket handlers find max_json_size
            poller = None
            if poll_interval:
                poller = asyncio.create_task(_poll(repository, poll_interval), name="coserve-poll")
            try:
                async with serving():  # the decoder processes for large JSON stop with the server
                    yield
            finally:
                if poller is not None:
                    poller.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await poller
        finally:
            state.ready = False
            await dashboard.aclose()
            if grpc_server is not None:  # begun at the signal; its accepted calls answered
                await grpc_server.stop(state.graceful_timeout)
            state.accepting = False
            await repository.aclose(grace_period=state.graceful_timeout)
            await sessions.aclose()
            unwatch()
            if tracing is not None:  # flushes the spans still held: it may block on export
                await asyncio.to_thread(tracing.shutdown)

    async def server_metadata(request: Request) -> Response:
        return json_response({"name": "coserve", "version": __version__, "extensions": EXTENSIONS})

    # Health: the status code is the answer (tritonclient, Kubernetes); the JSON body says the
    # same for clients that read it (the KServe SDK).
    async def live(request: Request) -> Response:
        return json_response({"live": True})

    async def ready(request: Request) -> Response:
        return json_response({"ready": state.ready}, 200 if state.ready else 400)

    async def model_ready(request: Request) -> Response:
        name = request.path_params["model"]
        try:
            handle = _handle(state, request)
        except ModelNotFound:
            return json_response({"name": name, "ready": False}, 400)
        ready = state.ready and not handle.closed
        body = {"name": handle.name, "version": handle.version, "ready": ready}
        return json_response(body, 200 if ready else 400)

    async def home(request: Request) -> Response:
        """What this server is and where its APIs are, for whoever opens it first."""
        versions: dict[str, list[str]] = {}
        for model in repository.models():
            versions.setdefault(model.name, []).append(model.version)
        return json_response(
            {
                "name": "coserve",
                "version": __version__,
                "ready": state.ready,
                "models": [{"name": n, "versions": v} for n, v in versions.items()],
                "endpoints": {
                    "open_inference_protocol": "/v2",
                    "inference": "POST /v2/models/{model}/infer",
                    "health": ["/v2/health/live", "/v2/health/ready"],
                    "tensorflow_serving": "/v1/models/{model}",
                    "metrics": "/metrics",
                    "dashboard": "/dashboard",
                    "sessions": [f"/sessions/{app}" for app in sessions.apps],
                },
            }
        )

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

    async def model_config(request: Request) -> Response:
        """The model's config as Triton's JSON (tritonclient's ``get_model_config``)."""
        handle = _handle(state, request)
        config = handle.live_config(repository.config(handle.name))
        return json_response(triton_model_config(config, handle.inputs, handle.outputs))

    async def model_stats(request: Request) -> Response:
        """Triton's statistics extension (tritonclient's ``get_inference_statistics``)."""
        name = request.path_params.get("model")
        version = request.path_params.get("version")
        try:
            handles = select_handles(repository, name, version)
        except ModelNotFound as error:
            # Triton answers an unknown model or version here with 400 (INVALID_ARG), not the
            # 404 of coserve's other endpoints: tritonclient users may test for it.
            return error_response(str(error), 400)
        return json_response(model_statistics(handles))

    async def metrics_endpoint(request: Request) -> Response:
        text = metrics.render()
        if worker is not None and worker.count > 1 and request.query_params.get("local") != "1":
            text = await gather_metrics(worker, text)
        return Response(text, media_type="text/plain; version=0.0.4")

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        return error_response(error.detail, error.status_code)

    routes = [
        Route("/", home, methods=["GET"]),
        Route("/v2", endpoint(server_metadata), methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        # Before /v2/models/{model}, which would take "stats" for a model's name.
        Route("/v2/models/stats", endpoint(model_stats), methods=["GET"]),
        Route("/v2/models/{model}/stats", endpoint(model_stats), methods=["GET"]),
        Route(
            "/v2/models/{model}/versions/{version}/stats", endpoint(model_stats), methods=["GET"]
        ),
        Route("/v2/models/{model}", endpoint(model_metadata), methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}", endpoint(model_metadata), methods=["GET"]),
        Route("/v2/models/{model}/config", endpoint(model_config), methods=["GET"]),
        Route(
            "/v2/models/{model}/versions/{version}/config", endpoint(model_config), methods=["GET"]
        ),
        Route("/v2/models/{model}/ready", model_ready, methods=["GET"]),
        Route("/v2/repository/index", endpoint(control.index), methods=["POST"]),
        Route("/v2/repository/models/{model}/load", endpoint(control.load), methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", endpoint(control.unload), methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}/ready", model_ready, methods=["GET"]),
        WebSocketRoute("/v2/models/{model}/infer/ws", websocket_endpoint(service)),
        WebSocketRoute(
            "/v2/models/{model}/versions/{version}/infer/ws", websocket_endpoint(service)
        ),
        WebSocketRoute("/sessions/{app}", sessions.serve),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route(
            "/v1/models/{rest:path}",
            endpoint(tfserving_endpoint(service)),
            methods=["GET", "POST"],
        ),
    ]
    routes += dashboard.routes()
    if admin:
        routes += admin_routes(repository, worker)
    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error}
    )

    route = InferenceRoute(app, service)
    route.grpc = grpc_server
    route.dashboard = dashboard
    return route
