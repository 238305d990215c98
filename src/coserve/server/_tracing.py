"""OpenTelemetry traces of requests, batches and session-graph hops (the ``tracing`` extra).

Imported only when tracing is on (``coserve serve --tracing``), so a server without it imports
nothing of OpenTelemetry. What it makes:

- a **request span** (kind SERVER) per inference request, the child of the ``traceparent`` the
  request came with, with its queue time, execution time and batch size as attributes;
- a **batch span** per batch that ran a traced request: a root of its own (a batch serves many
  traces), *linked* to the span of each request in it, and each of those linked back to it;
- a **hop span** per node a session message passes through, a child of the message's span.

Configuration is OpenTelemetry's own environment variables: ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES`` name the service, ``OTEL_TRACES_SAMPLER`` samples,
``OTEL_TRACES_EXPORTER`` picks the exporters (``otlp``, the default, ``console``, ``none``, or
any installed exporter's entry-point name), ``OTEL_EXPORTER_OTLP_*`` say where and how OTLP goes
(``http/protobuf`` by default, which the extra installs), and ``OTEL_BSP_*`` tune the batch span
processor.
"""

from __future__ import annotations

import logging
import os
import time
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from coserve._exceptions import ConfigError

if TYPE_CHECKING:
    from coserve.batching._observe import BatchRecord
    from coserve.graph import Node, Signal
    from coserve.models import ModelHandle
    from coserve.server._service import Call

__all__ = ["Tracing", "end_span", "tracing_from_environment"]

logger = logging.getLogger("coserve.server")

# gRPC codes that are the server's fault (OpenTelemetry's RPC conventions for a server span).
_GRPC_SERVER_ERRORS = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)
_NS = 1_000_000_000


def _ns(seconds: float) -> int:
    return int(seconds * _NS)


class Tracing:
    """Makes the spans; see the module's docstring.

    Args:
        provider: Where the spans go (default: OpenTelemetry's global provider).
        owned: Shut the provider down (flushing its spans) on :meth:`aclose`.
    """

    def __init__(self, provider: trace.TracerProvider | None = None, *, owned: bool = False):
        from coserve import __version__

        self._provider = provider if provider is not None else trace.get_tracer_provider()
        self._owned = owned
        self._tracer = self._provider.get_tracer("coserve", __version__)
        self._propagator = propagate.get_global_textmap()

    def parent(self, traceparent: str | None, tracestate: str | None = None) -> Context | None:
        """The context a W3C ``traceparent`` (and ``tracestate``) names; None: none given."""
        if not traceparent:
            return None
        carrier = {"traceparent": traceparent}
        if tracestate:
            carrier["tracestate"] = tracestate
        return self._propagator.extract(carrier)

    def start(self, call: Call, handle: ModelHandle | None) -> None:
        """Open the request's span, unless it is open already."""
        if call.span is not None:
            return
        attributes: dict[str, Any] = {"coserve.protocol": call.protocol}
        if handle is not None:
            attributes["coserve.model"] = handle.name
            attributes["coserve.model_version"] = handle.version
        call.span = self._tracer.start_span(
            f"infer {handle.name}" if handle is not None else "infer",
            context=self.parent(call.traceparent, call.tracestate),
            kind=SpanKind.SERVER,
            start_time=_ns(call.wall),
            attributes=attributes,
        )

    def finish(
        self, call: Call, handle: ModelHandle | None, status: int | str, seconds: float
    ) -> None:
        """Close the request's span (opened now if the request failed before it was queued)."""
        self.start(call, handle)
        span = call.span
        if not span.is_recording():
            return
        attributes: dict[str, Any] = {"coserve.status": str(status)}
        if isinstance(status, int):
            attributes["http.response.status_code"] = status
            failed = status >= 500
        else:
            failed = status in _GRPC_SERVER_ERRORS
        if call.queue is not None:
            attributes["coserve.queue.duration"] = call.queue
        if call.execution is not None:
            attributes["coserve.execution.duration"] = call.execution
        if call.batch_size is not None:
            attributes["coserve.batch.size"] = call.batch_size
        span.set_attributes(attributes)
        if failed:
            span.set_status(Status(StatusCode.ERROR, str(status)))
        span.end(end_time=_ns(call.wall + seconds))

    def batch(self, record: BatchRecord, calls: list[Call]) -> None:
        """Record one finished batch: its span, linked both ways to its requests' spans."""
        spans = [call.span for call in calls if call.span is not None and call.span.is_recording()]
        if not spans:
            return
        offset = record.wall_offset
        span = self._tracer.start_span(
            f"batch {record.batcher}",
            context=Context(),  # a root: the batch belongs to no one request's trace
            kind=SpanKind.INTERNAL,
            links=[Link(request.get_span_context()) for request in spans],
            start_time=_ns(record.started + offset),
            attributes={
                "coserve.batcher": record.batcher,
                "coserve.batch.size": record.rows,
                "coserve.batch.requests": record.requests,
                "coserve.batch.close_reason": str(record.reason),
                "coserve.batch.failed_items": record.failed_items,
            },
        )
        if record.failed:
            span.set_status(Status(StatusCode.ERROR, "the batch function failed"))
        elif record.failed_items:
            span.set_status(Status(StatusCode.ERROR, f"{record.failed_items} items failed"))
        span.end(end_time=_ns(record.finished + offset))
        context = span.get_span_context()
        for request in spans:
            request.add_link(context, {"coserve.link": "batch"})

    def span(
        self,
        name: str,
        *,
        parent: Context | None,
        start: float,
        attributes: dict[str, Any],
        server: bool = False,
    ) -> Any:
        """Open a span starting at ``start`` (``time.time()`` seconds); the caller ends it.

        ``server``: the span serves a client's request (kind SERVER, else INTERNAL).
        """
        kind = SpanKind.SERVER if server else SpanKind.INTERNAL
        return self._tracer.start_span(
            name, context=parent, kind=kind, start_time=_ns(start), attributes=attributes
        )

    def hop(self, node: Node, signal: Signal[Any], began: float, ended: float) -> None:
        """The hop observer (``coserve.graph._hops``): a span for a message's time at a node.

        It is the child of the span its signal's ``trace`` names.
        """
        offset = time.time() - time.monotonic()
        span = self._tracer.start_span(
            f"node {node.name}",
            context=self.parent(signal.trace),
            kind=SpanKind.INTERNAL,
            start_time=_ns(began + offset),
            attributes={
                "coserve.node": node.name,
                "coserve.node_kind": type(node).__name__,
                "coserve.message_id": str(signal.id),
                **({"coserve.session": signal.session} if signal.session else {}),
            },
        )
        span.end(end_time=_ns(ended + offset))

    @staticmethod
    def traceparent(span: Any) -> str | None:
        """A span's W3C ``traceparent``, to carry its context along (None: not sampled)."""
        context = span.get_span_context()
        if not context.is_valid:
            return None
        return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"

    def shutdown(self) -> None:
        """Flush and stop the provider if this tracing made it (blocking: run it in a thread)."""
        if self._owned:
            shutdown = getattr(self._provider, "shutdown", None)
            if shutdown is not None:
                shutdown()


def end_span(span: Any, status: int | None) -> None:
    """End a span with the HTTP-like status of what it answered (None: it was not answered)."""
    if status is None:
        span.set_attribute("coserve.status", "unanswered")
    else:
        span.set_attribute("coserve.status", str(status))
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR, str(status)))
    span.end()


def _exporters() -> list[SpanExporter]:
    """The span exporters ``OTEL_TRACES_EXPORTER`` names (default ``otlp``).

    Raises:
        ConfigError: An exporter is named that is not installed, or the OTLP protocol is not
            one OpenTelemetry has.
    """
    names = [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    exporters: list[SpanExporter] = []
    for name in filter(None, names):
        if name == "none":
            continue
        if name == "otlp":
            protocol = (
                os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf"
            ).strip()
            names_by_protocol = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}
            if protocol not in names_by_protocol:
                raise ConfigError(
                    f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: use http/protobuf or grpc"
                )
            name = names_by_protocol[protocol]
        found = entry_points(group="opentelemetry_traces_exporter", name=name)
        if not found:
            package = {
                "otlp_proto_http": "opentelemetry-exporter-otlp-proto-http",
                "otlp_proto_grpc": "opentelemetry-exporter-otlp-proto-grpc",
            }.get(name, "the package that provides it")
            raise ConfigError(
                f"OTEL_TRACES_EXPORTER names {name!r}, which is not installed: install {package}"
            )
        exporter_class = next(iter(found)).load()
        exporters.append(exporter_class())
    return exporters


def tracing_from_environment() -> Tracing:
    """Tracing as the ``OTEL_*`` environment variables configure it (see the module).

    Sets OpenTelemetry's global tracer provider, so libraries the models use trace into it too.

    Raises:
        ConfigError: The environment names an exporter or protocol that cannot be used.
    """
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "coserve"}))
    provider = TracerProvider(resource=resource)  # OTEL_TRACES_SAMPLER is read here
    exporters = _exporters()
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if not exporters:
        logger.warning("tracing is on, but OTEL_TRACES_EXPORTER=none: spans go nowhere")
    trace.set_tracer_provider(provider)
    return Tracing(provider, owned=True)
