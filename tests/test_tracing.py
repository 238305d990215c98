"""Traces from request to batch.

A real server (in this process) exports to the SDK's in-memory exporter, driven by real clients
over HTTP, WebSocket and gRPC.
"""

from __future__ import annotations

import asyncio
import gzip
import http.server
import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
import websockets
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from coserve.models import ModelRepository
from coserve.server import create_app
from coserve.server._grpc_server import GrpcOptions
from coserve.server._native_http import CoserveHttpProtocol
from coserve.server._sessions import SessionManager
from coserve.server._tracing import Tracing
from helpers import ServerProcess
from server_models import add_model, xy_config
from session_apps import create_echo
from test_protocol import free_port, wait_until

# Four requests make a batch, and nothing else closes one: which requests share a batch does
# not depend on timing.
GATHERED_CONFIG = xy_config(max_batch_size=4, max_wait=60.0)

GATHERED_MODEL = """
def predict(inputs):
    return {"y": inputs["x"] * 2}
"""

BROKEN_CONFIG = xy_config(max_batch_size=1)

BROKEN_MODEL = """
def predict(inputs):
    raise RuntimeError("this model always fails")
"""

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def traceparent(span_id: int) -> str:
    return f"00-{TRACE_ID}-{span_id:016x}-01"


def body(x: float) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [x]}]}


class Served:
    def __init__(self, port: int, grpc_port: int, exporter: InMemorySpanExporter) -> None:
        self.port = port
        self.grpc_port = grpc_port
        self.exporter = exporter

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        found = self.exporter.get_finished_spans()
        return [span for span in found if name is None or span.name == name]


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    add_model(tmp_path, "gathered", GATHERED_CONFIG, GATHERED_MODEL)
    add_model(tmp_path, "broken", BROKEN_CONFIG, BROKEN_MODEL)
    repository = ModelRepository(tmp_path)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    port, grpc_port = free_port(), free_port()
    app = create_app(
        repository,
        graceful_timeout=5,
        sessions=SessionManager(repository, {"echo": create_echo}),
        grpc=GrpcOptions(port=grpc_port),
        tracing=Tracing(provider),
    )
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http=CoserveHttpProtocol,
        lifespan="on",
        log_config=None,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await wait_until(lambda: server.started, "the server to start")
        yield Served(port, grpc_port, exporter)
    finally:
        server.should_exit = True
        await task
        provider.shutdown()


async def test_a_batch_span_links_every_request_in_it(served: Served) -> None:
    """Four requests, one batch: its span links to the four request spans, and each back."""
    async with httpx.AsyncClient(base_url=served.url) as client:
        responses = await asyncio.gather(
            *(
                client.post(
                    "/v2/models/gathered/infer",
                    json=body(i),
                    headers={"traceparent": traceparent(i + 1)},
                )
                for i in range(4)
            )
        )
    assert [r.status_code for r in responses] == [200] * 4
    requests = served.spans("infer gathered")
    (batch,) = served.spans("batch gathered:1")
    assert len(requests) == 4
    assert {link.context.span_id for link in batch.links} == {
        span.context.span_id for span in requests
    }
    assert batch.parent is None  # a batch belongs to no one request's trace
    assert batch.kind is SpanKind.INTERNAL
    assert batch.attributes is not None
    assert batch.attributes["coserve.batch.size"] == 4
    assert batch.attributes["coserve.batch.requests"] == 4
    assert batch.attributes["coserve.batch.close_reason"] == "full"
    for span in requests:
        assert [link.context.span_id for link in span.links] == [batch.context.span_id]
        # the request waited for its batch, then ran in it
        assert span.start_time is not None
        assert batch.start_time is not None
        assert span.end_time is not None
        assert batch.end_time is not None
        assert span.start_time <= batch.start_time <= batch.end_time <= span.end_time


async def test_a_request_span_continues_the_incoming_traceparent(served: Served) -> None:
    """The request span is the child of the caller's span, in the caller's trace.

    It says what the request did: model, version, status, queue and execution time, batch size.
    """
    async with httpx.AsyncClient(base_url=served.url) as client:
        responses = await asyncio.gather(
            *(
                client.post(
                    "/v2/models/gathered/infer",
                    json=body(i),
                    headers={"traceparent": traceparent(0xA0 + i), "tracestate": "vendor=x"},
                )
                for i in range(4)
            )
        )
    assert all(r.status_code == 200 for r in responses)
    spans = served.spans("infer gathered")
    assert {span.parent.span_id for span in spans if span.parent} == {0xA0, 0xA1, 0xA2, 0xA3}
    for span in spans:
        assert span.kind is SpanKind.SERVER
        assert f"{span.context.trace_id:032x}" == TRACE_ID
        assert span.parent is not None
        assert span.parent.is_remote
        assert span.context.trace_state.get("vendor") == "x"
        attributes = span.attributes
        assert attributes is not None
        assert attributes["coserve.model"] == "gathered"
        assert attributes["coserve.model_version"] == "1"
        assert attributes["coserve.protocol"] == "http"
        assert attributes["http.response.status_code"] == 200
        assert attributes["coserve.batch.size"] == 4
        queue, execution = (
            attributes["coserve.queue.duration"],
            attributes["coserve.execution.duration"],
        )
        assert isinstance(queue, float)
        assert queue >= 0
        assert isinstance(execution, float)
        assert execution >= 0
        assert span.end_time is not None
        assert span.start_time is not None
        assert queue + execution <= (span.end_time - span.start_time) / 1e9


async def test_a_request_without_traceparent_starts_a_trace_of_its_own(
    served: Served,
) -> None:
    async with httpx.AsyncClient(base_url=served.url) as client:
        missing = await client.post("/v2/models/nowhere/infer", json=body(1))
        failing = await client.post("/v2/models/broken/infer", json=body(1))
    assert missing.status_code == 404
    assert failing.status_code == 500
    (unknown,) = served.spans("infer")
    assert unknown.parent is None
    assert unknown.attributes is not None
    assert unknown.attributes["coserve.status"] == "404"
    assert unknown.status.status_code is StatusCode.UNSET  # the client's mistake, not ours
    (broken,) = served.spans("infer broken")
    assert broken.status.status_code is StatusCode.ERROR
    (batch,) = served.spans("batch broken:1")
    assert batch.status.status_code is StatusCode.ERROR
    assert [link.context.span_id for link in batch.links] == [broken.context.span_id]


async def test_grpc_continues_the_traceparent_in_its_metadata(served: Served) -> None:
    import tritonclient.grpc as grpcclient

    def infer_four() -> None:
        with grpcclient.InferenceServerClient(f"127.0.0.1:{served.grpc_port}") as client:
            tensor = grpcclient.InferInput("x", [1], "FP32")
            tensor.set_data_from_numpy(np.array([3.0], dtype=np.float32))
            results: list[Any] = []
            for i in range(4):
                client.async_infer(
                    "gathered",
                    [tensor],
                    callback=lambda result, error: results.append((result, error)),
                    headers={"traceparent": traceparent(0xB0 + i)},
                )
            for _ in range(600):
                if len(results) == 4:
                    break
                time.sleep(0.05)
            assert [error for _, error in results] == [None] * 4

    await asyncio.to_thread(infer_four)
    spans = served.spans("infer gathered")
    assert {span.parent.span_id for span in spans if span.parent} == {0xB0, 0xB1, 0xB2, 0xB3}
    assert {(span.attributes or {})["coserve.protocol"] for span in spans} == {"grpc"}
    assert {(span.attributes or {})["coserve.status"] for span in spans} == {"OK"}
    (batch,) = served.spans("batch gathered:1")
    assert len(batch.links) == 4


async def test_websocket_messages_continue_the_traceparent_of_the_upgrade(
    served: Served,
) -> None:
    url = f"ws://127.0.0.1:{served.port}/v2/models/gathered/infer/ws"
    async with websockets.connect(
        url, additional_headers={"traceparent": traceparent(0xC0)}
    ) as socket:
        for i in range(4):
            await socket.send(json.dumps({"id": str(i), **body(i)}))
        answers = [json.loads(await socket.recv()) for _ in range(4)]
    assert sorted(answer["id"] for answer in answers) == ["0", "1", "2", "3"]
    spans = served.spans("infer gathered")
    assert len(spans) == 4
    assert {span.parent.span_id for span in spans if span.parent} == {0xC0}
    assert {(span.attributes or {})["coserve.protocol"] for span in spans} == {"websocket"}


async def test_a_session_message_has_a_span_per_node_hop(served: Served) -> None:
    url = f"ws://127.0.0.1:{served.port}/sessions/echo"
    async with websockets.connect(
        url, additional_headers={"traceparent": traceparent(0xD0)}
    ) as socket:
        hello = json.loads(await socket.recv())
        assert hello["event"] == "session"
        await socket.send(json.dumps({"id": "m1", "text": "hello"}))
        answer = json.loads(await socket.recv())
    assert answer["id"] == "m1"
    await wait_until(lambda: bool(served.spans("node echo")), "the hop's span")
    (message,) = served.spans("session echo")
    (hop,) = served.spans("node echo")
    assert message.parent is not None
    assert message.parent.span_id == 0xD0
    assert message.kind is SpanKind.SERVER
    assert (message.attributes or {})["coserve.message_id"] == "m1"
    assert (message.attributes or {})["coserve.status"] == "200"
    assert hop.parent is not None
    assert hop.parent.span_id == message.context.span_id
    assert hop.context.trace_id == message.context.trace_id
    assert (hop.attributes or {})["coserve.node"] == "echo"
    assert hop.start_time is not None
    assert message.start_time is not None
    assert message.start_time <= hop.start_time


def test_nothing_of_opentelemetry_is_imported_when_tracing_is_off(tmp_path: Path) -> None:
    """A server without --tracing serves (and batches) without importing OpenTelemetry."""
    add_model(tmp_path, "gathered", xy_config(max_batch_size=1), GATHERED_MODEL)
    script = textwrap.dedent(
        f"""
        import asyncio, socket, sys
        import httpx, uvicorn
        from coserve.models import ModelRepository
        from coserve.server import create_app
        from coserve.server._native_http import CoserveHttpProtocol

        async def main():
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            app = create_app(ModelRepository({str(tmp_path)!r}), graceful_timeout=5)
            server = uvicorn.Server(uvicorn.Config(
                app, port=port, http=CoserveHttpProtocol, log_config=None, lifespan="on"))
            task = asyncio.create_task(server.serve())
            while not server.started:
                await asyncio.sleep(0.05)
            async with httpx.AsyncClient() as client:
                answer = await client.post(
                    f"http://127.0.0.1:{{port}}/v2/models/gathered/infer",
                    headers={{"traceparent": "00-{TRACE_ID}-00000000000000aa-01"}},
                    json={{"inputs": [{{"name": "x", "shape": [1], "datatype": "FP32",
                                       "data": [1]}}]}})
                assert answer.status_code == 200, answer.text
            server.should_exit = True
            await task

        asyncio.run(main())
        loaded = sorted(name for name in sys.modules if name.startswith("opentelemetry"))
        print("loaded:", loaded)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "loaded: []" in done.stdout


class OtlpReceiver:
    """An OTLP/HTTP trace receiver on a free port: what a collector would be sent."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.resources: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    data = gzip.decompress(data)
                request = ExportTraceServiceRequest()
                request.ParseFromString(data)
                with receiver._lock:
                    for resource_spans in request.resource_spans:
                        receiver.resources.append(
                            {
                                kv.key: kv.value.string_value
                                for kv in resource_spans.resource.attributes
                            }
                        )
                        for scope in resource_spans.scope_spans:
                            receiver.spans.extend(scope.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def named(self, name: str) -> list[Any]:
        with self._lock:
            return [span for span in self.spans if span.name == name]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
def test_coserve_serve_exports_traces_over_otlp_and_logs_each_request_as_json(
    tmp_path: Path,
) -> None:
    """``coserve serve --tracing --log-format json``, configured by OTEL_* variables only."""
    add_model(tmp_path, "gathered", GATHERED_CONFIG, GATHERED_MODEL)
    receiver = OtlpReceiver()
    server = ServerProcess(
        "--model-repository",
        str(tmp_path),
        "--tracing",
        "--log-format",
        "json",
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
            "OTEL_SERVICE_NAME": "coserve-under-test",
            # No export on the processor's timer within the test: the spans must be flushed as
            # the server exits (by the lifespan, or else the SDK's own exit hook).
            "OTEL_BSP_SCHEDULE_DELAY": "600000",
        },
    )
    try:
        server.wait_ready()

        def post(i: int) -> int:
            return httpx.post(
                f"{server.url}/v2/models/gathered/infer",
                json=body(i),
                headers={"traceparent": traceparent(0xE0 + i)},
                timeout=30,
            ).status_code

        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(post, range(4))) == [200] * 4
        assert server.stop() == 0
        requests = receiver.named("infer gathered")
        (batch,) = receiver.named("batch gathered:1")
        assert {int.from_bytes(span.parent_span_id) for span in requests} == {
            0xE0,
            0xE1,
            0xE2,
            0xE3,
        }
        assert {span.trace_id.hex() for span in requests} == {TRACE_ID}
        assert {link.span_id for link in batch.links} == {span.span_id for span in requests}
        assert {resource.get("service.name") for resource in receiver.resources} == {
            "coserve-under-test"
        }
        lines = [json.loads(line) for line in server.output().splitlines() if line.strip()]
    finally:
        server.close()
        receiver.close()
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    access = [line for line in lines if line["logger"] == "coserve.access"]
    assert len(access) == 4
    for line in access:
        assert line["protocol"] == "http"
        assert line["model"] == "gathered"
        assert line["version"] == "1"
        assert line["status"] == 200
        assert line["batch_size"] == 4
        assert line["trace_id"] == TRACE_ID
        assert line["latency_ms"] >= line["queue_ms"] + line["execution_ms"] >= 0


@pytest.mark.slow
def test_tracing_with_an_exporter_that_is_not_installed_is_refused(tmp_path: Path) -> None:
    add_model(tmp_path, "gathered", GATHERED_CONFIG, GATHERED_MODEL)
    server = ServerProcess(
        "--model-repository",
        str(tmp_path),
        "--tracing",
        env={"OTEL_TRACES_EXPORTER": "zipkin_json"},
    )
    try:
        assert server.process.wait(timeout=60) == 2
        assert "OTEL_TRACES_EXPORTER names 'zipkin_json', which is not installed" in (
            server.output()
        )
    finally:
        server.close()
