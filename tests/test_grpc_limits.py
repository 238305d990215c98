"""The gRPC stream's bounds and switches, in process.

Streams at once, requests in flight per stream, and Triton's ``triton_grpc_error`` header.

The real ``GrpcServer`` on a real port with the python ``slow`` model; the client is grpcio's
own, with tritonclient's generated messages (what a client library would send).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from tritonclient.grpc import service_pb2

from coserve.models import ModelRepository
from coserve.server._grpc_server import GrpcOptions, GrpcServer
from coserve.server._limits import ServerLimits
from coserve.server._service import InferenceService
from coserve.server._state import ServerState
from server_models import add_python_models

STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"


@asynccontextmanager
async def grpc_server(
    folder: Path, **options: int
) -> AsyncIterator[tuple[GrpcServer, ModelRepository]]:
    repository = ModelRepository(add_python_models(folder))
    await repository.reload()
    state = ServerState(repository, limits=ServerLimits(), graceful_timeout=5)
    state.ready = state.accepting = True
    server = GrpcServer(
        InferenceService(state, lambda *labels: None),
        GrpcOptions(port=0, **options),  # type: ignore[arg-type]
    )
    await server.start()
    try:
        yield server, repository
    finally:
        await server.stop(1)
        await repository.aclose(grace_period=1)


def slow_request(seconds: float, request_id: str) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="slow", id=request_id)
    entry = request.inputs.add(name="x", datatype="FP32", shape=[1])
    entry.contents.fp32_contents.append(seconds)
    return request


def open_stream(channel: grpc.aio.Channel) -> grpc.aio.StreamStreamCall:
    method = channel.stream_stream(
        STREAM,
        request_serializer=service_pb2.ModelInferRequest.SerializeToString,
        response_deserializer=service_pb2.ModelStreamInferResponse.FromString,
    )
    return method()


async def wait_until(condition: object, what: str) -> None:
    assert callable(condition)
    for _ in range(600):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_one_stream_too_many_is_resource_exhausted(tmp_path: Path) -> None:
    """Past ``max_streams`` open streams, a new one is refused; the open one still works."""
    async with (
        grpc_server(tmp_path, max_streams=1) as (server, _),
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        first = open_stream(channel)
        await first.write(slow_request(0.0, "a"))
        answer = await first.read()
        assert answer.infer_response.id == "a"
        second = open_stream(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await second.read()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        await first.write(slow_request(0.0, "b"))
        assert (await first.read()).infer_response.id == "b"
        await first.done_writing()


async def test_reading_pauses_at_the_in_flight_bound(tmp_path: Path) -> None:
    """With ``max_in_flight`` 2, the server takes two requests off a stream and no more.

    Until one is answered, that is; every request is answered in the end.
    """
    async with grpc_server(tmp_path, max_in_flight=2) as (server, repository):
        handle = repository.get("slow")

        def taken() -> int:
            statistics = handle.statistics()
            return statistics.queued + statistics.running_batches

        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stream = open_stream(channel)
            for i in range(4):
                await stream.write(slow_request(0.5, str(i)))
            await stream.done_writing()
            await wait_until(lambda: taken() == 2, "two requests taken")
            await asyncio.sleep(0.2)  # a third would be taken at once if reading went on
            assert taken() == 2
            ids = set()
            async for answer in stream:
                assert answer.error_message == ""
                ids.add(answer.infer_response.id)
            assert ids == {"0", "1", "2", "3"}


async def test_tritons_header_ends_the_stream_with_the_errors_status(tmp_path: Path) -> None:
    """With ``triton_grpc_error: true``, an error ends the stream with its gRPC status.

    Without it (the default), the error is an ``error_message`` and the stream goes on.
    """
    async with (
        grpc_server(tmp_path) as (server, _),
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        method = channel.stream_stream(
            STREAM,
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelStreamInferResponse.FromString,
        )
        default = method()
        await default.write(service_pb2.ModelInferRequest(model_name="nope", id="x"))
        answer = await default.read()
        assert "nope" in answer.error_message
        await default.write(slow_request(0.0, "y"))
        assert (await default.read()).infer_response.id == "y"
        await default.done_writing()

        as_status = method(metadata=(("triton_grpc_error", "true"),))
        await as_status.write(service_pb2.ModelInferRequest(model_name="nope", id="x"))
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await as_status.read()
        assert ended.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_stream_at_its_bound_ends_at_shutdown_once_its_requests_are_answered(
    tmp_path: Path,
) -> None:
    """Shutdown while a stream waits for a slot: what it took is answered, then UNAVAILABLE.

    The request still unread stays unread (the client learns from the status to resend it).
    """
    async with (
        grpc_server(tmp_path, max_in_flight=1) as (server, repository),
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        handle = repository.get("slow")
        stream = open_stream(channel)
        await stream.write(slow_request(0.5, "taken"))
        await stream.write(slow_request(0.0, "unread"))
        await wait_until(lambda: handle.statistics().running_batches == 1, "one running")
        stopping = server.begin_stop(30)
        answer = await stream.read()
        assert answer.infer_response.id == "taken"
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await stream.read()
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in str(ended.value.details())
        await asyncio.wait_for(stopping, 30)
        assert handle.statistics().submitted == 1


async def test_a_calls_deadline_never_lifts_the_models_own_timeout(tmp_path: Path) -> None:
    """A model configured to give up after 0.3 s does so, even for a call allowed a minute.

    (Triton's ``timeout`` parameter, the request's own, may set a longer one.)
    """
    from coserve import DeadlineExceeded
    from server_models import SLOW_CONFIG, SLOW_MODEL, add_model

    config = SLOW_CONFIG.replace("[batching]\n", "[batching]\ntimeout = 0.3\n")
    assert config != SLOW_CONFIG
    add_model(tmp_path, "patient", config, SLOW_MODEL)
    repository = ModelRepository(tmp_path)
    await repository.reload()
    try:
        state = ServerState(repository, limits=ServerLimits(), graceful_timeout=5)
        state.accepting = True
        service = InferenceService(state, lambda *labels: None)
        handle = service.resolve("patient", None)
        import numpy as np

        # Triton's timeout parameter may lift it (10 s here); a call's deadline may not.
        running = service.submit(
            handle, {"x": np.array([2.0], dtype=np.float32)}, parameters={"timeout": 10**7}
        )
        await wait_until(lambda: handle.statistics().running_batches == 1, "one running")
        waiting = service.submit(handle, {"x": np.array([0.0], dtype=np.float32)}, timeout=60)
        with pytest.raises(DeadlineExceeded):
            await waiting
        assert not running.done()  # it gave up at the model's 0.3 s, not after the 2 s run
        await running
    finally:
        await repository.aclose(grace_period=1)
