"""The gRPC server beside HTTP: same process, same event loop, same batchers.

grpcio's asyncio server (``grpc.aio``) runs in the loop uvicorn runs, so a gRPC request and an
HTTP request to one model can share a batch. It serves the Open Inference Protocol
(``inference.GRPCInferenceService``, with Triton's stream: ``_grpc_inference``), TensorFlow
Serving's ``PredictionService`` and ``ModelService`` (``_grpc_tfserving``), and the standard
``grpc.health.v1.Health`` service (Kubernetes gRPC probes): ``SERVING`` from the models' loading
until shutdown begins.

Limits: messages up to the server's ``max_request_size`` (gRPC's own default is 4 MiB); calls
at once up to the server's ``max_connections``; at most ``max_streams`` streams open,
``max_in_flight`` requests in flight on each. Keep-alive: clients
may ping every 10 seconds, with or without calls in flight, and are never sent away for pinging
(``too_many_pings``); idle connections are probed every 2 hours, as HTTP/2 servers usually do.

Shutdown: :meth:`GrpcServer.begin_stop` (at the signal) turns health to ``NOT_SERVING``, refuses
new calls, lets unary calls already accepted finish within the grace period, and ends each
stream with ``UNAVAILABLE`` once the requests it sent are answered; the models unload after.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from coserve.server._grpc_inference import SERVICE as INFERENCE_SERVICE
from coserve.server._grpc_inference import InferenceServicer
from coserve.server._grpc_tfserving import SERVICES as TFSERVING_SERVICES
from coserve.server._grpc_tfserving import TFServingServicer
from coserve.server._model_control import ModelControl
from coserve.server._service import InferenceService

__all__ = ["GrpcOptions", "GrpcServer"]

logger = logging.getLogger("coserve.server")


@dataclass(frozen=True, slots=True)
class GrpcOptions:
    """Where and how the gRPC server listens."""

    host: str = "127.0.0.1"
    port: int = 8001
    """The port (Triton's convention); 0 picks a free one."""
    reuse_port: bool = False
    """Share the port with other processes (``--workers N``); off, a taken port is an error."""
    max_streams: int = 1000
    """Streams (``ModelStreamInfer``) open at once; one more gets ``RESOURCE_EXHAUSTED``."""
    max_in_flight: int = 256
    """Requests in flight on one stream at once; reading pauses at the bound."""


class GrpcServer:
    """The gRPC server of one process; started once the models are loaded.

    ``control`` serves Triton's repository RPCs, the same one HTTP serves (None: an index of
    what is served, and no loading or unloading).
    """

    def __init__(
        self,
        service: InferenceService,
        options: GrpcOptions,
        control: ModelControl | None = None,
    ) -> None:
        self._service = service
        self._options = options
        self._control = control
        self._draining = asyncio.Event()
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._stopping: asyncio.Task[None] | None = None
        self.port: int | None = None
        """The port bound, once started."""

    async def start(self) -> None:
        """Bind and serve (in the running loop).

        Raises:
            OSError: The port cannot be bound.
        """
        if self._draining.is_set():  # a signal came while the models loaded: never serve
            return
        options = self._options
        limit = self._service.state.limits.max_request_size
        server = grpc.aio.server(
            # Calls at once, like HTTP's connections: one more is RESOURCE_EXHAUSTED.
            maximum_concurrent_rpcs=self._service.state.limits.max_connections,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 1 if options.reuse_port else 0),
                ("grpc.keepalive_time_ms", 2 * 60 * 60 * 1000),
                ("grpc.keepalive_timeout_ms", 20_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
                ("grpc.http2.max_ping_strikes", 0),  # never GOAWAY a client for its pings
            ],
        )
        inference = InferenceServicer(
            self._service,
            self._draining,
            max_streams=options.max_streams,
            max_in_flight=options.max_in_flight,
            control=self._control,
        )
        # Registered, not generic: C-core matches the method path itself, without a Python
        # lookup per call.
        for service, methods in (inference.methods(), *TFServingServicer(self._service).methods()):
            server.add_registered_method_handlers(service, methods)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        host = f"[{options.host}]" if ":" in options.host else options.host  # IPv6
        address = f"{host}:{options.port}"
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as error:  # grpcio raises RuntimeError("Failed to bind ...")
            raise OSError(f"cannot listen for gRPC on {address}: {error}") from None
        if not port:
            raise OSError(f"cannot listen for gRPC on {address}")
        await server.start()
        self._server, self.port = server, port
        for name in ("", INFERENCE_SERVICE, *TFSERVING_SERVICES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        logger.info("coserve serving gRPC on %s:%d", options.host, port)

    def begin_stop(self, grace: float) -> asyncio.Task[None]:
        """Start shutting down (once): health off, no new calls, accepted ones answered."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(grace))
        return self._stopping

    async def stop(self, grace: float) -> None:
        """Shut down (see :meth:`begin_stop`) and wait until done."""
        await self.begin_stop(grace)

    async def _stop(self, grace: float) -> None:
        self._draining.set()
        server = self._server
        if server is None:
            return
        await self._health.enter_graceful_shutdown()
        await server.stop(grace)
