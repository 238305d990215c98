"""The Open Inference Protocol over gRPC, with real clients against a real ``coserve serve``.

``tritonclient.grpc`` (sync, aio and its stream) unmodified, plus tritonclient's generated stub
used by hand for what its client never sends (typed ``contents``, as Go and grpcurl clients do).
One server process for the module; the SIGTERM and ``--workers`` tests start their own.
"""

from __future__ import annotations

import asyncio
import queue
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from google.protobuf import json_format
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from helpers import ServerProcess
from server_models import SLOW_CONFIG, add_model, build_repository

pytestmark = pytest.mark.slow  # starts real server processes

ECHO_CONFIG = """
platform = "python"
[batching]
max_batch_size = 8
[[inputs]]
name = "half"
datatype = "FP16"
shape = [-1, -1]
[[inputs]]
name = "long"
datatype = "INT64"
shape = [-1, -1]
[[inputs]]
name = "big"
datatype = "FP32"
shape = [-1, -1]
[[outputs]]
name = "half_out"
datatype = "FP16"
shape = [-1, -1]
[[outputs]]
name = "long_out"
datatype = "INT64"
shape = [-1, -1]
[[outputs]]
name = "big_sum"
datatype = "FP64"
shape = [-1]
"""

ECHO_MODEL = """
import numpy as np

def predict(inputs):
    return {
        "half_out": inputs["half"] * 2,
        "long_out": inputs["long"] + 1,
        "big_sum": inputs["big"].astype(np.float64).sum(axis=1),
    }
"""

FAILS_CONFIG = """
platform = "python"
warm_up = false
[[inputs]]
name = "x"
datatype = "FP32"
shape = [-1]
[[outputs]]
name = "y"
datatype = "FP32"
shape = [-1]
"""

FAILS_MODEL = """
def predict(inputs):
    raise RuntimeError("the model broke")
"""


# The slow model, in batches of up to 4: what waits behind a running batch goes in one batch.
GATHER_CONFIG = SLOW_CONFIG.replace("max_batch_size = 1", "max_batch_size = 4")

GATHER_MODEL = """
import time

def predict(inputs):
    time.sleep(float(inputs["x"].max()))
    return {"y": inputs["x"]}
"""


def grpc_repository(root: Path) -> Path:
    build_repository(root)
    add_model(root, "echo", ECHO_CONFIG, ECHO_MODEL)
    add_model(root, "fails", FAILS_CONFIG, FAILS_MODEL)
    add_model(root, "gather", GATHER_CONFIG, GATHER_MODEL)
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repository = grpc_repository(tmp_path_factory.mktemp("repository"))
    process = ServerProcess("--model-repository", str(repository), grpc=True)
    try:
        process.wait_ready()
        yield process
    finally:
        process.close()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server.grpc_target) as client:
        yield client


def images(count: int) -> np.ndarray:
    rng = np.random.default_rng(count)
    return rng.random((count, 8, 8, 1), dtype=np.float32)


def image_input(batch: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput("image", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    return tensor


def tensor(name: str, array: np.ndarray, datatype: str) -> triton.InferInput:
    entry = triton.InferInput(name, list(array.shape), datatype)
    entry.set_data_from_numpy(array)
    return entry


def rest_probabilities(server: ServerProcess, batch: np.ndarray) -> np.ndarray:
    """The same model's answer over REST, to check gRPC against."""
    body = {
        "inputs": [
            {
                "name": "image",
                "shape": list(batch.shape),
                "datatype": "FP32",
                "data": batch.ravel().tolist(),
            }
        ]
    }
    answer = httpx.post(f"{server.url}/v2/models/digits/infer", json=body, timeout=30).json()
    (output,) = answer["outputs"]
    return np.array(output["data"], dtype=np.float32).reshape(output["shape"])


def status_of(call: Callable[[], object]) -> str:
    with pytest.raises(InferenceServerException) as raised:
        call()
    status = raised.value.status()
    assert status is not None
    return status


def metric(server: ServerProcess, series: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(series):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def wait_until(condition: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


SLOW = '{model="slow",version="1"}'


async def slow_model_idle(server: ServerProcess) -> None:
    await wait_until(
        lambda: (
            metric(server, f"coserve_running_batches{SLOW}") == 0
            and metric(server, f"coserve_queued_requests{SLOW}") == 0
        ),
        "the slow model to be idle",
    )


def slow_input(seconds: float) -> triton.InferInput:
    return tensor("x", np.array([seconds], dtype=np.float32), "FP32")


class TestHealthAndMetadata:
    def test_health_rpcs(self, client: triton.InferenceServerClient) -> None:
        """ServerLive, ServerReady and ModelReady, through the client's own calls."""
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("digits")
        assert client.is_model_ready("digits", "1")
        assert not client.is_model_ready("nope")
        assert not client.is_model_ready("digits", "7")

    def test_server_and_model_metadata(self, client: triton.InferenceServerClient) -> None:
        """ServerMetadata names the server; ModelMetadata the model's tensors, as on REST."""
        server = client.get_server_metadata()
        assert server.name == "coserve"
        assert "schedule_policy" in server.extensions
        model = client.get_model_metadata("digits")
        assert (model.name, list(model.versions)) == ("digits", ["1"])
        assert model.platform == "tensorflow_savedmodel"
        assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [
            ("image", "FP32", [-1, 8, 8, 1])
        ]
        assert [(t.name, t.datatype, list(t.shape)) for t in model.outputs] == [
            ("probabilities", "FP32", [-1, 10])
        ]

    def test_grpc_health_service_reports_serving(self, server: ServerProcess) -> None:
        """grpc.health.v1, which Kubernetes gRPC probes call, says SERVING once ready."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", "inference.GRPCInferenceService"):
                answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING

    def test_other_triton_rpcs_are_unimplemented_with_a_clear_message(
        self, client: triton.InferenceServerClient
    ) -> None:
        """Shared memory and friends: UNIMPLEMENTED, naming what is served instead."""
        with pytest.raises(InferenceServerException) as raised:
            client.get_system_shared_memory_status()
        assert raised.value.status() == "StatusCode.UNIMPLEMENTED"
        assert "ModelInfer" in str(raised.value.message())
        assert "ModelConfig" in str(raised.value.message())
        assert "RepositoryIndex" in str(raised.value.message())
        status = status_of(lambda: client.get_cuda_shared_memory_status())
        assert status == "StatusCode.UNIMPLEMENTED"

    def test_a_coserve_models_config_is_triton_s_message(
        self, client: triton.InferenceServerClient
    ) -> None:
        """The digits model (a config.toml) as tritonclient's own ModelConfig message."""
        config = client.get_model_config("digits").config
        assert config.name == "digits"
        assert config.platform == "tensorflow_savedmodel"
        assert [(t.name, list(t.dims)) for t in config.input] == [("image", [8, 8, 1])]
        assert [(t.name, list(t.dims)) for t in config.output] == [("probabilities", [10])]
        assert config.max_batch_size > 0
        as_json = client.get_model_config("digits", as_json=True)
        assert as_json["config"]["name"] == "digits"
        with pytest.raises(InferenceServerException) as raised:
            client.get_model_config("no_such_model")
        assert "no_such_model" in str(raised.value.message())


class TestStatisticsAndRepository:
    """Triton's statistics and model repository RPCs: the HTTP endpoints' answers and errors."""

    def test_statistics_count_the_inferences(
        self, server: ServerProcess, client: triton.InferenceServerClient
    ) -> None:
        before = client.get_inference_statistics("digits").model_stats[0]
        for _ in range(3):
            client.infer("digits", [image_input(images(2))])
        answer = client.get_inference_statistics("digits")
        assert len(answer.model_stats) == 1
        after = answer.model_stats[0]
        assert (after.name, after.version) == ("digits", "1")
        assert after.inference_count - before.inference_count == 6  # rows
        assert after.execution_count - before.execution_count == 3  # one batch each
        stats, was = after.inference_stats, before.inference_stats
        assert stats.success.count - was.success.count == 3
        assert stats.success.ns > was.success.ns
        assert stats.queue.count - was.queue.count == 3
        assert stats.compute_infer.count - was.compute_infer.count == 3
        assert stats.fail.count == was.fail.count
        assert after.last_inference >= max(before.last_inference, 1)
        pairs = {b.batch_size: b.compute_infer.count for b in after.batch_stats}
        old = {b.batch_size: b.compute_infer.count for b in before.batch_stats}
        assert pairs[2] - old.get(2, 0) == 3
        # The same numbers as the HTTP endpoint's (one implementation; nothing ran between).
        http = httpx.get(f"{server.url}/v2/models/digits/stats", timeout=30).json()
        (rest,) = http["model_stats"]
        assert rest["inference_count"] == after.inference_count
        assert rest["execution_count"] == after.execution_count
        assert rest["last_inference"] == after.last_inference
        assert rest["inference_stats"]["success"] == {
            "count": stats.success.count,
            "ns": stats.success.ns,
        }
        assert len(rest["batch_stats"]) == len(after.batch_stats)

    def test_statistics_of_every_model_and_of_one_version(
        self, client: triton.InferenceServerClient
    ) -> None:
        every = client.get_inference_statistics().model_stats
        assert {"digits", "echo", "types", "slow"} <= {s.name for s in every}
        (one,) = client.get_inference_statistics("digits", "1").model_stats
        assert (one.name, one.version) == ("digits", "1")

    def test_statistics_of_an_unknown_model_or_version_is_invalid_argument(
        self, client: triton.InferenceServerClient
    ) -> None:
        """As Triton (and the HTTP endpoint's 400): INVALID_ARGUMENT, naming the model."""
        with pytest.raises(InferenceServerException) as raised:
            client.get_inference_statistics("nope")
        assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "nope" in str(raised.value.message())
        status = status_of(lambda: client.get_inference_statistics("digits", "7"))
        assert status == "StatusCode.INVALID_ARGUMENT"

    def test_repository_index_lists_the_served_models(
        self, server: ServerProcess, client: triton.InferenceServerClient
    ) -> None:
        models = client.get_model_repository_index().models
        # Unset (empty) fields left out, as the HTTP answer leaves them out.
        entries = [json_format.MessageToDict(m, preserving_proto_field_name=True) for m in models]
        http = httpx.post(f"{server.url}/v2/repository/index", timeout=30).json()
        assert entries == http
        assert {"name": "digits", "version": "1", "state": "READY"} in entries

    def test_load_and_unload_need_explicit_mode(self, client: triton.InferenceServerClient) -> None:
        """Outside explicit mode: UNIMPLEMENTED (HTTP's 501), saying which mode allows it."""
        for call in (lambda: client.load_model("echo"), lambda: client.unload_model("echo")):
            with pytest.raises(InferenceServerException) as raised:
                call()
            assert raised.value.status() == "StatusCode.UNIMPLEMENTED"
            assert "--model-control-mode explicit" in str(raised.value.message())
        assert client.is_model_ready("echo")


class TestInfer:
    def test_sync_client_gets_the_models_answer(
        self, server: ServerProcess, client: triton.InferenceServerClient
    ) -> None:
        """FP32 in raw contents, answered raw; the same numbers as REST gives; id echoed."""
        batch = images(3)
        result = client.infer("digits", [image_input(batch)], request_id="req-7")
        assert result.get_response().id == "req-7"
        assert result.get_response().model_name == "digits"
        assert result.get_response().model_version == "1"
        np.testing.assert_allclose(
            result.as_numpy("probabilities"), rest_probabilities(server, batch), rtol=1e-5
        )

    async def test_aio_client_with_many_requests_in_flight(self, server: ServerProcess) -> None:
        """The aio client: 200 concurrent calls, each answered with its own row."""
        batch = images(200)
        async with triton_aio.InferenceServerClient(server.grpc_target) as client:
            results = await asyncio.gather(
                *(
                    client.infer("digits", [image_input(batch[i : i + 1])], request_id=str(i))
                    for i in range(len(batch))
                )
            )
        expected = rest_probabilities(server, batch)
        for i, result in enumerate(results):
            assert result.get_response().id == str(i)
            np.testing.assert_allclose(result.as_numpy("probabilities")[0], expected[i], rtol=1e-5)

    def test_int64_and_fp16_tensors(self, client: triton.InferenceServerClient) -> None:
        """INT64 and FP16 (raw only: it has no typed field) round-trip with their types."""
        half = np.array([[0.5, -1.25, 65504.0 / 2]], dtype=np.float16)
        long = np.array([[2**40, -(2**62)]], dtype=np.int64)
        big = np.ones((1, 3), dtype=np.float32)
        result = client.infer(
            "echo",
            [
                tensor("half", half, "FP16"),
                tensor("long", long, "INT64"),
                tensor("big", big, "FP32"),
            ],
        )
        assert result.as_numpy("half_out").dtype == np.float16
        np.testing.assert_array_equal(result.as_numpy("half_out"), half * 2)
        np.testing.assert_array_equal(result.as_numpy("long_out"), long + 1)
        np.testing.assert_array_equal(result.as_numpy("big_sum"), [3.0])

    def test_bytes_and_bool_tensors(self, client: triton.InferenceServerClient) -> None:
        """BYTES with empty and non-UTF-8 elements, BOOL and INT32, through the types model."""
        text = np.array([b"ab", b"", b"\xff\x00\xfe"], dtype=object)
        result = client.infer(
            "types",
            [
                tensor("text", text, "BYTES"),
                tensor("flag", np.array([True, False, True]), "BOOL"),
                tensor("count", np.array([1, -2, 3], dtype=np.int32), "INT32"),
            ],
        )
        assert result.as_numpy("upper").tolist() == [b"AB", b"", b"\xff\x00\xfe"]
        assert result.as_numpy("text_bytes").tolist() == text.tolist()
        assert result.as_numpy("negated").tolist() == [False, True, False]
        assert result.as_numpy("doubled").tolist() == [2, -4, 6]

    def test_a_tensor_over_5_mib(self, client: triton.InferenceServerClient) -> None:
        """Above gRPC's 4 MiB default receive limit: the server's limit is its request size."""
        big = np.full((1, 1_600_000), 0.5, dtype=np.float32)  # 6.4 MB
        result = client.infer(
            "echo",
            [
                tensor("half", np.zeros((1, 1), dtype=np.float16), "FP16"),
                tensor("long", np.zeros((1, 1), dtype=np.int64), "INT64"),
                tensor("big", big, "FP32"),
            ],
        )
        assert result.as_numpy("big_sum").tolist() == [800_000.0]

    def test_requested_outputs_only(self, client: triton.InferenceServerClient) -> None:
        """Only the outputs asked for come back; an unknown one is INVALID_ARGUMENT."""
        inputs = [
            tensor("text", np.array([b"x"], dtype=object), "BYTES"),
            tensor("flag", np.array([True]), "BOOL"),
            tensor("count", np.array([4], dtype=np.int32), "INT32"),
        ]
        result = client.infer("types", inputs, outputs=[triton.InferRequestedOutput("doubled")])
        assert [o.name for o in result.get_response().outputs] == ["doubled"]
        assert result.as_numpy("doubled").tolist() == [8]
        outputs = [triton.InferRequestedOutput("nope")]
        status = status_of(lambda: client.infer("types", inputs, outputs=outputs))
        assert status == "StatusCode.INVALID_ARGUMENT"

    def test_priority_and_timeout_parameters(self, client: triton.InferenceServerClient) -> None:
        """Triton's priority (uint64 parameter) is accepted; timeout (µs) is read as on REST."""
        batch = images(1)
        assert client.infer("digits", [image_input(batch)], priority=1, timeout=10**6)
        assert client.infer("digits", [image_input(batch)], priority=5)


class TestErrors:
    def test_each_error_has_tritons_status_code(self, client: triton.InferenceServerClient) -> None:
        """Bad input, unknown model or version, model failure: Triton's codes, never others."""
        wrong_shape = tensor("image", np.zeros((1, 8, 8), dtype=np.float32), "FP32")
        assert status_of(lambda: client.infer("digits", [wrong_shape])) == (
            "StatusCode.INVALID_ARGUMENT"
        )
        unknown = tensor("picture", np.zeros((1, 8, 8, 1), dtype=np.float32), "FP32")
        assert status_of(lambda: client.infer("digits", [unknown])) == (
            "StatusCode.INVALID_ARGUMENT"
        )
        good = image_input(images(1))
        assert status_of(lambda: client.infer("nope", [good])) == "StatusCode.NOT_FOUND"
        assert status_of(lambda: client.infer("digits", [good], model_version="9")) == (
            "StatusCode.NOT_FOUND"
        )
        x = tensor("x", np.array([1.0], dtype=np.float32), "FP32")
        with pytest.raises(InferenceServerException) as raised:
            client.infer("fails", [x])
        assert raised.value.status() == "StatusCode.INTERNAL"
        assert "the model broke" in str(raised.value.message())

    async def test_a_full_queue_sheds_with_unavailable(self, server: ServerProcess) -> None:
        """The slow model's queue holds two: with one running and two waiting, a fourth is shed."""
        await slow_model_idle(server)
        async with triton_aio.InferenceServerClient(server.grpc_target) as client:
            running = asyncio.ensure_future(client.infer("slow", [slow_input(1.0)]))
            await wait_until(
                lambda: metric(server, f"coserve_running_batches{SLOW}") == 1, "one running"
            )
            waiting = [
                asyncio.ensure_future(client.infer("slow", [slow_input(0.0)])) for _ in range(2)
            ]
            await wait_until(
                lambda: metric(server, f"coserve_queued_requests{SLOW}") == 2, "two queued"
            )
            with pytest.raises(InferenceServerException) as shed:
                await client.infer("slow", [slow_input(0.0)])
            assert shed.value.status() == "StatusCode.UNAVAILABLE"
            assert (await running).as_numpy("y").tolist() == [1.0]
            for answer in await asyncio.gather(*waiting):
                assert answer.as_numpy("y").tolist() == [0.0]

    async def test_a_queue_timeout_is_unavailable(self, server: ServerProcess) -> None:
        """Triton's ``timeout`` parameter (µs) passing in the queue: UNAVAILABLE, as Triton."""
        await slow_model_idle(server)
        async with triton_aio.InferenceServerClient(server.grpc_target) as client:
            running = asyncio.ensure_future(client.infer("slow", [slow_input(3.0)]))
            await wait_until(
                lambda: metric(server, f"coserve_running_batches{SLOW}") == 1, "one running"
            )
            with pytest.raises(InferenceServerException) as expired:
                await client.infer("slow", [slow_input(0.0)], timeout=100_000)
            assert expired.value.status() == "StatusCode.UNAVAILABLE"
            assert (await running).as_numpy("y").tolist() == [3.0]

    async def test_client_timeout_is_deadline_exceeded_and_withdraws_the_request(
        self, server: ServerProcess
    ) -> None:
        """The call's gRPC deadline passes while queued: DEADLINE_EXCEEDED, and it never runs.

        The deadline reaches the batcher, which lets the request expire (or gRPC cancels it
        first): either way it leaves the queue without running.
        """
        await slow_model_idle(server)

        def withdrawn() -> float:
            return sum(
                metric(server, f'coserve_requests_total{{model="slow",outcome="{outcome}"')
                for outcome in ("cancelled", "expired")
            )

        batches = f"coserve_batch_size_count{SLOW}"
        before_withdrawn, before_batches = withdrawn(), metric(server, batches)
        async with triton_aio.InferenceServerClient(server.grpc_target) as client:
            running = asyncio.ensure_future(client.infer("slow", [slow_input(1.5)]))
            await wait_until(
                lambda: metric(server, f"coserve_running_batches{SLOW}") == 1, "one running"
            )
            with pytest.raises(InferenceServerException) as raised:
                await client.infer("slow", [slow_input(0.0)], client_timeout=0.3)
            assert raised.value.status() == "StatusCode.DEADLINE_EXCEEDED"
            await running
        await wait_until(lambda: withdrawn() == before_withdrawn + 1, "its withdrawal")
        await slow_model_idle(server)
        assert metric(server, batches) == before_batches + 1  # only the running call ran


class TestTypedContents:
    """tritonclient's generated stub, used as Go and grpcurl clients use the protocol."""

    def stub(self, server: ServerProcess) -> service_pb2_grpc.GRPCInferenceServiceStub:
        return service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc_target))

    def test_typed_contents_give_the_same_answer_as_raw(self, server: ServerProcess) -> None:
        """fp32_contents instead of raw_input_contents; the answer still comes back raw."""
        batch = images(2)
        request = service_pb2.ModelInferRequest(model_name="digits", id="typed")
        entry = request.inputs.add(name="image", datatype="FP32", shape=[2, 8, 8, 1])
        entry.contents.fp32_contents.extend(batch.ravel().tolist())
        response = self.stub(server).ModelInfer(request, timeout=30)
        assert response.id == "typed"
        assert not response.outputs[0].HasField("contents")
        (raw,) = response.raw_output_contents
        answer = np.frombuffer(raw, dtype="<f4").reshape(list(response.outputs[0].shape))
        np.testing.assert_allclose(answer, rest_probabilities(server, batch), rtol=1e-5)

    def test_typed_bytes_bool_and_int(self, server: ServerProcess) -> None:
        """bytes_contents, bool_contents and int_contents, for the types model."""
        request = service_pb2.ModelInferRequest(model_name="types")
        text = request.inputs.add(name="text", datatype="BYTES", shape=[2])
        text.contents.bytes_contents.extend([b"hi", b"\xff"])
        flag = request.inputs.add(name="flag", datatype="BOOL", shape=[2])
        flag.contents.bool_contents.extend([True, False])
        count = request.inputs.add(name="count", datatype="INT32", shape=[2])
        count.contents.int_contents.extend([7, -7])
        response = self.stub(server).ModelInfer(request, timeout=30)
        names = [o.name for o in response.outputs]
        raw = dict(zip(names, response.raw_output_contents, strict=True))
        assert np.frombuffer(raw["doubled"], dtype="<i4").tolist() == [14, -14]
        assert np.frombuffer(raw["negated"], dtype=np.bool_).tolist() == [False, True]
        assert raw["upper"] == b"\x02\x00\x00\x00HI\x01\x00\x00\x00\xff"

    def invalid(self, server: ServerProcess, request: service_pb2.ModelInferRequest) -> str:
        with pytest.raises(grpc.RpcError) as raised:
            self.stub(server).ModelInfer(request, timeout=30)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return str(raised.value.details())

    def test_mixing_raw_and_typed_contents_is_refused_naming_the_input(
        self, server: ServerProcess
    ) -> None:
        """One request, one form: raw for every input, or typed for every input."""
        request = service_pb2.ModelInferRequest(model_name="types")
        text = request.inputs.add(name="text", datatype="BYTES", shape=[1])
        text.contents.bytes_contents.append(b"a")
        request.inputs.add(name="flag", datatype="BOOL", shape=[1])
        request.inputs.add(name="count", datatype="INT32", shape=[1])
        request.raw_input_contents.extend([b"\x01\x00\x00\x00a", b"\x01", b"\x01\x00\x00\x00"])
        assert "'text'" in self.invalid(server, request)

    def test_byte_size_that_does_not_fit_the_shape_is_refused(self, server: ServerProcess) -> None:
        """Raw contents must hold exactly the shape's elements."""
        request = service_pb2.ModelInferRequest(model_name="digits")
        request.inputs.add(name="image", datatype="FP32", shape=[1, 8, 8, 1])
        request.raw_input_contents.append(b"\x00" * (64 * 4 - 4))
        message = self.invalid(server, request)
        assert "'image'" in message
        assert "256 bytes" in message

    def test_an_empty_tensor_of_an_impossible_shape_is_refused(self, server: ServerProcess) -> None:
        """Zero elements, but a shape numpy cannot make: the client's mistake, not INTERNAL."""
        request = service_pb2.ModelInferRequest(model_name="types")
        text = request.inputs.add(name="text", datatype="BYTES", shape=[0, 2**62])
        text.contents.SetInParent()
        assert "'text'" in self.invalid(server, request)

    def test_typed_values_in_the_wrong_field_or_count_are_refused(
        self, server: ServerProcess
    ) -> None:
        """fp64_contents for an FP32 input, or too few values: INVALID_ARGUMENT."""
        request = service_pb2.ModelInferRequest(model_name="digits")
        entry = request.inputs.add(name="image", datatype="FP32", shape=[1, 8, 8, 1])
        entry.contents.fp64_contents.extend([0.0] * 64)
        assert "fp32_contents" in self.invalid(server, request)
        entry.contents.Clear()
        entry.contents.fp32_contents.extend([0.0] * 63)
        assert "64 elements" in self.invalid(server, request)


class TestStream:
    def test_500_requests_in_flight_answered_by_id(self, server: ServerProcess) -> None:
        """ModelStreamInfer: every request answered once, tagged with its id, right rows."""
        batch = images(500)
        answers: queue.Queue[tuple[object, object]] = queue.Queue()
        with triton.InferenceServerClient(server.grpc_target) as client:
            client.start_stream(callback=lambda result, error: answers.put((result, error)))
            for i in range(len(batch)):
                client.async_stream_infer(
                    "digits", [image_input(batch[i : i + 1])], request_id=str(i)
                )
            got: dict[str, np.ndarray] = {}
            while len(got) < len(batch):
                result, error = answers.get(timeout=60)
                assert error is None, error
                assert isinstance(result, triton.InferResult)
                request_id = result.get_response().id
                assert request_id not in got
                got[request_id] = result.as_numpy("probabilities")[0]
            client.stop_stream()
        expected = rest_probabilities(server, batch)
        for i in range(len(batch)):
            np.testing.assert_allclose(got[str(i)], expected[i], rtol=1e-5)

    def test_a_failed_request_answers_with_its_error_and_the_stream_goes_on(
        self, server: ServerProcess
    ) -> None:
        """Errors arrive in error_message, as Triton sends them; later requests still work."""
        answers: queue.Queue[tuple[object, object]] = queue.Queue()
        with triton.InferenceServerClient(server.grpc_target) as client:
            client.start_stream(callback=lambda result, error: answers.put((result, error)))
            client.async_stream_infer("nope", [image_input(images(1))], request_id="bad")
            _, error = answers.get(timeout=30)
            assert isinstance(error, InferenceServerException)
            assert "nope" in str(error.message())
            client.async_stream_infer("digits", [image_input(images(1))], request_id="good")
            result, error = answers.get(timeout=30)
            assert error is None
            assert isinstance(result, triton.InferResult)
            assert result.get_response().id == "good"
            client.stop_stream()

    async def test_closing_the_stream_drops_its_queued_work(self, server: ServerProcess) -> None:
        """A stream cancelled mid-way: its queued requests never run; the running one ends."""
        await slow_model_idle(server)
        cancelled = 'coserve_requests_total{model="slow",outcome="cancelled",version="1"}'
        batches = f"coserve_batch_size_count{SLOW}"
        before_cancelled, before_batches = metric(server, cancelled), metric(server, batches)
        client = triton.InferenceServerClient(server.grpc_target)
        try:
            client.start_stream(callback=lambda result, error: None)
            client.async_stream_infer("slow", [slow_input(1.5)], request_id="0")
            await wait_until(
                lambda: metric(server, f"coserve_running_batches{SLOW}") == 1, "one running"
            )
            for i in (1, 2):
                client.async_stream_infer("slow", [slow_input(0.0)], request_id=str(i))
            await wait_until(
                lambda: metric(server, f"coserve_queued_requests{SLOW}") == 2, "two queued"
            )
            client.stop_stream(cancel_requests=True)
        finally:
            client.close()
        await wait_until(lambda: metric(server, cancelled) >= before_cancelled + 2, "two dropped")
        await slow_model_idle(server)
        assert metric(server, batches) == before_batches + 1  # only the running batch ran


async def test_a_grpc_and_an_http_request_share_a_batch(server: ServerProcess) -> None:
    """One loop, one batcher per model: requests from both protocols go in one batch.

    One request runs for 2 s; a gRPC and an HTTP request queued behind it then run
    together, as one batch of two. Each protocol's request is counted under its own label.
    """
    gather = '{model="gather",version="1"}'
    pairs = 'coserve_batch_size_bucket{le="2",model="gather",version="1"}'
    ones = 'coserve_batch_size_bucket{le="1",model="gather",version="1"}'
    grpc_ok = 'coserve_request_duration_seconds_count{model="gather",protocol="grpc",status="OK"'
    http_ok = 'coserve_request_duration_seconds_count{model="gather",protocol="http",status="200"'
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0.0]}]}
    url = f"{server.url}/v2/models/gather/infer"
    async with (
        httpx.AsyncClient(timeout=60) as http,
        triton_aio.InferenceServerClient(server.grpc_target) as client,
    ):
        first = asyncio.ensure_future(
            http.post(url, json={"inputs": [{**body["inputs"][0], "data": [2.0]}]})
        )
        await wait_until(
            lambda: metric(server, f"coserve_running_batches{gather}") == 1, "one running"
        )
        by_grpc = asyncio.ensure_future(client.infer("gather", [slow_input(0.0)]))
        by_http = asyncio.ensure_future(http.post(url, json=body))
        await wait_until(
            lambda: metric(server, f"coserve_queued_requests{gather}") == 2, "both queued"
        )
        assert (await first).status_code == 200
        assert (await by_grpc).as_numpy("y").tolist() == [0.0]
        assert (await by_http).status_code == 200
    # Two batches in all: the first alone, then the two queued requests together.
    assert metric(server, ones) == 1
    assert metric(server, pairs) == 2
    assert metric(server, grpc_ok) == 1
    assert metric(server, http_ok) == 2


def test_two_workers_serve_grpc_on_one_port(tmp_path: Path) -> None:
    """--workers 2: both workers take gRPC connections on the one port."""
    server = ServerProcess("--workers", "2", grpc=True)
    try:
        server.wait_ready()  # one worker is: wait for both (a worker serves gRPC once ready)
        deadline = time.monotonic() + 90
        while (
            len(
                re.findall(
                    r'^coserve_queued_requests\{model="digits".*worker="\d"\}',
                    httpx.get(f"{server.url}/metrics", timeout=30).text,
                    re.M,
                )
            )
            < 2
        ):
            assert time.monotonic() < deadline, "the second worker never became ready"
            time.sleep(0.2)
        batch = images(1)
        # A connection each (gRPC would share one between channels to a target): the kernel
        # spreads the connections over the workers.
        own_connection = [("grpc.use_local_subchannel_pool", 1)]
        for _ in range(24):
            with triton.InferenceServerClient(
                server.grpc_target, channel_args=own_connection
            ) as client:
                assert client.infer("digits", [image_input(batch)]).as_numpy("probabilities").shape
        text = httpx.get(f"{server.url}/metrics", timeout=30).text
        served = re.findall(
            r'^coserve_request_duration_seconds_count\{model="digits",protocol="grpc",'
            r'status="OK",version="1",worker="(\d)"\} (\S+)$',
            text,
            re.M,
        )
        assert {worker for worker, count in served if float(count) > 0} == {"0", "1"}
    finally:
        assert server.stop() == 0
        server.log.close()


async def test_sigterm_answers_accepted_grpc_calls_then_exits_zero(tmp_path: Path) -> None:
    """SIGTERM under gRPC load: every accepted call is answered, then exit status 0.

    Unary calls accepted before the signal are answered; a stream's accepted requests are
    answered before it ends with UNAVAILABLE; health turns NOT_SERVING at once.
    """
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    repository = grpc_repository(tmp_path)
    server = ServerProcess(
        "--model-repository", str(repository), "--graceful-timeout", "20", grpc=True
    )
    try:
        server.wait_ready()
        async with triton_aio.InferenceServerClient(server.grpc_target) as client:
            unary = [
                asyncio.ensure_future(client.infer("slow", [slow_input(0.5)])) for _ in range(2)
            ]

            async def stream() -> AsyncIterator[dict[str, object]]:
                for i in range(2):
                    yield {
                        "model_name": "digits",
                        "inputs": [image_input(images(1))],
                        "request_id": f"s{i}",
                    }
                await asyncio.sleep(60)  # keep the stream open: the server ends it

            answers = client.stream_infer(stream())
            received = []

            ended = []

            async def read() -> None:
                try:
                    async for result, error in answers:
                        received.append((result, error))
                except grpc.aio.AioRpcError as error:  # how the aio client sees a stream's end
                    ended.append(error.code())

            reading = asyncio.ensure_future(read())
            await wait_until(
                lambda: (
                    metric(server, f"coserve_queued_requests{SLOW}") >= 1
                    and len([r for r in received if r[1] is None]) == 2
                ),
                "the calls to be accepted",
            )
            server.process.send_signal(15)
            with grpc.insecure_channel(server.grpc_target) as channel:
                health = health_pb2_grpc.HealthStub(channel)

                def not_serving() -> bool:
                    try:
                        answer = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                    except grpc.RpcError as error:  # no new calls taken once the drain began
                        return error.code() == grpc.StatusCode.UNAVAILABLE
                    return answer.status == health_pb2.HealthCheckResponse.NOT_SERVING

                await wait_until(not_serving, "gRPC health to turn NOT_SERVING")
            results = await asyncio.gather(*unary)
            assert [r.as_numpy("y").tolist() for r in results] == [[0.5], [0.5]]
            await asyncio.wait_for(reading, 30)
        assert sorted(r.get_response().id for r, e in received if e is None) == ["s0", "s1"]
        assert ended == [grpc.StatusCode.UNAVAILABLE]
        assert server.process.wait(timeout=60) == 0
    finally:
        server.close()
