"""The inference server over real HTTP: one ``coserve serve`` process shared by the module.

Clients are the ones people use: ``tritonclient.http`` (sync and aio, JSON and binary tensors)
unmodified, and plain httpx for what a client library would never send.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits
from tritonclient.utils import InferenceServerException

from helpers import ServerProcess
from server_models import build_repository

pytestmark = pytest.mark.slow  # starts real server processes

MAX_REQUEST_SIZE = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repository = build_repository(tmp_path_factory.mktemp("repository"))
    process = ServerProcess(
        "--model-repository", str(repository), "--max-request-size", f"{MAX_REQUEST_SIZE}B"
    )
    try:
        process.wait_ready()
        yield process
    finally:
        process.close()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return (load_digits().images[:64] / 16.0).astype(np.float32)[..., None]


def image_body(**changes: object) -> bytes:
    """A one-image digits request with some fields changed (``data=None`` drops the data)."""
    tensor: dict[str, object] = {"name": "image", "shape": [1, 8, 8, 1], "datatype": "FP32"}
    tensor["data"] = [0.0] * 64
    request: dict[str, object] = {}
    for key, value in changes.items():
        if key == "id":
            request["id"] = value
        elif value is None:
            tensor.pop(key)
        else:
            tensor[key] = value
    return json.dumps({**request, "inputs": [tensor]}).encode()


def host(server: ServerProcess) -> str:
    return server.url.removeprefix("http://")


def digits_input(batch: np.ndarray, *, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("image", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    return tensor


class TestTritonClient:
    @pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
    def test_sync_client_infers_the_digits(
        self, server: ServerProcess, images: np.ndarray, binary: bool
    ) -> None:
        """tritonclient.http gets the right classes back, with binary tensors on and off."""
        client = triton.InferenceServerClient(host(server))
        try:
            assert client.is_server_live()
            assert client.is_server_ready()
            assert client.is_model_ready("digits")
            assert not client.is_model_ready("nope")
            result = client.infer(
                "digits",
                [digits_input(images[:8], binary=binary)],
                outputs=[triton.InferRequestedOutput("probabilities", binary_data=binary)],
                request_id="req-7",
            )
        finally:
            client.close()
        probabilities = result.as_numpy("probabilities")
        assert probabilities.shape == (8, 10)
        assert (probabilities.argmax(axis=1) == load_digits().target[:8]).all()
        assert result.get_response()["id"] == "req-7"

    def test_metadata_through_the_client(self, server: ServerProcess) -> None:
        """Server and model metadata read by tritonclient match the model."""
        client = triton.InferenceServerClient(host(server))
        try:
            server_meta = client.get_server_metadata()
            model_meta = client.get_model_metadata("digits", "1")
        finally:
            client.close()
        assert server_meta["name"] == "coserve"
        assert "binary_tensor_data" in server_meta["extensions"]
        assert model_meta["platform"] == "tensorflow_savedmodel"
        assert model_meta["inputs"] == [
            {"name": "image", "datatype": "FP32", "shape": [-1, 8, 8, 1]}
        ]

    async def test_aio_client_with_many_requests_in_flight(
        self, server: ServerProcess, images: np.ndarray
    ) -> None:
        """The aio client's concurrent single-row requests are all answered, correctly."""
        client = triton_aio.InferenceServerClient(host(server))
        try:
            results = await asyncio.gather(
                *(
                    client.infer("digits_onnx", [digits_input(images[i : i + 1], binary=True)])
                    for i in range(64)
                )
            )
        finally:
            await client.close()
        predicted = [int(r.as_numpy("probabilities").argmax()) for r in results]
        assert np.mean(np.array(predicted) == load_digits().target[:64]) > 0.95

    @pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
    def test_bytes_bool_and_int_tensors(self, server: ServerProcess, binary: bool) -> None:
        """BYTES, BOOL and INT32 tensors travel both ways, in JSON and binary form."""
        text = np.array([b"abc", "héllo".encode()], dtype=object)
        flag = np.array([True, False])
        count = np.array([3, -4], dtype=np.int32)
        inputs = []
        for name, array, datatype in (
            ("text", text, "BYTES"),
            ("flag", flag, "BOOL"),
            ("count", count, "INT32"),
        ):
            tensor = triton.InferInput(name, [2], datatype)
            tensor.set_data_from_numpy(array, binary_data=binary)
            inputs.append(tensor)
        client = triton.InferenceServerClient(host(server))
        try:
            result = client.infer(
                "types",
                inputs,
                outputs=[
                    triton.InferRequestedOutput(n, binary_data=binary)
                    for n in ("upper", "negated", "doubled")
                ],
            )
        finally:
            client.close()
        # JSON carries BYTES as strings, so the client hands back str there, bytes in binary.
        upper = [v if isinstance(v, bytes) else v.encode() for v in result.as_numpy("upper")]
        assert upper == [b"ABC", "HéLLO".encode()]
        assert result.as_numpy("negated").tolist() == [False, True]
        assert result.as_numpy("doubled").tolist() == [6, -8]

    def test_client_sees_errors_with_the_server_message(self, server: ServerProcess) -> None:
        """A wrong shape comes back as an error naming the problem, not a crash."""
        client = triton.InferenceServerClient(host(server))
        try:
            with pytest.raises(InferenceServerException, match="dimension 1 must be 8"):
                client.infer(
                    "digits", [digits_input(np.zeros((1, 4, 8, 1), np.float32), binary=False)]
                )
        finally:
            client.close()


class TestProtocol:
    def test_json_data_may_be_flat_or_nested(
        self, server: ServerProcess, images: np.ndarray
    ) -> None:
        """Row-major flat data and nested lists give the same answer."""
        results = []
        for data in (images[:2].ravel().tolist(), images[:2].tolist()):
            body = {
                "inputs": [
                    {"name": "image", "shape": [2, 8, 8, 1], "datatype": "FP32", "data": data}
                ]
            }
            response = httpx.post(f"{server.url}/v2/models/digits/versions/1/infer", json=body)
            assert response.status_code == 200, response.text
            results.append(response.json()["outputs"][0]["data"])
        assert results[0] == results[1]

    def test_binary_request_built_by_hand(self, server: ServerProcess, images: np.ndarray) -> None:
        """The binary extension: a JSON header, then raw little-endian bytes, both ways."""
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "image",
                        "shape": [1, 8, 8, 1],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": 256},
                    }
                ],
                "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
            }
        ).encode()
        response = httpx.post(
            f"{server.url}/v2/models/digits/infer",
            content=header + images[:1].astype("<f4").tobytes(),
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        assert response.status_code == 200, response.text
        length = int(response.headers["Inference-Header-Content-Length"])
        meta = json.loads(response.content[:length])
        assert meta["outputs"][0]["parameters"] == {"binary_data_size": 40}
        probabilities = np.frombuffer(response.content[length:], dtype="<f4")
        assert probabilities.shape == (10,)
        assert int(probabilities.argmax()) == int(load_digits().target[0])

    def test_outputs_can_be_selected_and_unknown_ones_refused(self, server: ServerProcess) -> None:
        """Requested outputs are honoured; an unknown one is a 400 naming it."""
        body = {
            "inputs": [
                {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]},
                {"name": "flag", "shape": [1], "datatype": "BOOL", "data": [True]},
                {"name": "count", "shape": [1], "datatype": "INT32", "data": [1]},
            ],
            "outputs": [{"name": "doubled"}],
        }
        response = httpx.post(f"{server.url}/v2/models/types/infer", json=body)
        assert [o["name"] for o in response.json()["outputs"]] == ["doubled"]
        body["outputs"] = [{"name": "tripled"}]
        response = httpx.post(f"{server.url}/v2/models/types/infer", json=body)
        assert response.status_code == 400
        assert "no output 'tripled'" in response.json()["error"]

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            (b"{not json", "not valid JSON"),
            (b"[1, 2]", "must be a JSON object"),
            (b'{"inputs": []}', "non-empty 'inputs'"),
            (image_body(data=None), "has no 'data'"),
            (image_body(datatype="FLOAT"), "unknown datatype"),
            (image_body(data=[1, 2]), "needs 64 elements"),
            (image_body(shape=[-1, 8]), "non-negative integers"),
            (image_body(data=["x"] * 64), "must be numbers"),
            (image_body(name="pixels"), "no input 'pixels'"),
            (image_body(id=5), "'id' must be a string"),
            (image_body(data=["x"] * 64, datatype="BYTES"), "expected FP32, got BYTES"),
            (image_body(shape=[0, 2**62, 8, 1], data=[]), "is not possible"),
            (image_body(shape=[1] * 33, data=[0.0]), "at most 32"),
            (image_body(datatype="UINT8", data=[300] * 64), "do not fit UINT8"),
            (image_body(datatype="INT8", data=[-1] * 63 + [-200]), "do not fit INT8"),
            (image_body(datatype="bool", data=[5] * 64), "BOOL data must be true or false"),
        ],
    )
    def test_malformed_requests_get_400_naming_the_problem(
        self, server: ServerProcess, body: bytes, message: str
    ) -> None:
        """Each malformed body is a 400 with {"error": ...} saying what is wrong."""
        response = httpx.post(f"{server.url}/v2/models/digits/infer", content=body)
        assert response.status_code == 400
        assert message in response.json()["error"]

    def test_unknown_model_and_version_are_404(self, server: ServerProcess) -> None:
        """Unknown models and versions are 404 for metadata and inference alike."""
        assert httpx.get(f"{server.url}/v2/models/nope").status_code == 404
        assert httpx.get(f"{server.url}/v2/models/digits/versions/9").status_code == 404
        response = httpx.post(f"{server.url}/v2/models/nope/infer", json={"inputs": []})
        assert response.status_code == 404
        assert response.json() == {"error": "model 'nope' is not loaded"}

    def test_wrong_method_is_405(self, server: ServerProcess) -> None:
        """GET on the infer route is 405 with a JSON error."""
        response = httpx.get(f"{server.url}/v2/models/digits/infer")
        assert response.status_code == 405
        assert "error" in response.json()

    def test_body_over_the_limit_is_413(self, server: ServerProcess) -> None:
        """A body over --max-request-size is refused with 413."""
        response = httpx.post(
            f"{server.url}/v2/models/digits/infer", content=b" " * (MAX_REQUEST_SIZE + 1)
        )
        assert response.status_code == 413
        assert "limit" in response.json()["error"]

    def test_deadline_from_the_timeout_parameter_is_504(self, server: ServerProcess) -> None:
        """Triton's timeout parameter (µs) is a deadline: passing it gives 504."""
        body = {
            "parameters": {"timeout": 100_000},
            "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}],
        }
        response = httpx.post(f"{server.url}/v2/models/slow/infer", json=body, timeout=10)
        assert response.status_code == 504
        assert "deadline" in response.json()["error"]

    def test_overload_sheds_with_429_and_answers_everyone_once(self, server: ServerProcess) -> None:
        """Far more requests than the slow model's queue holds: each gets one answer, 200 or 429."""
        body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0.5]}]}

        def send(_: int) -> int:
            return httpx.post(
                f"{server.url}/v2/models/slow/infer", json=body, timeout=60
            ).status_code

        with ThreadPoolExecutor(max_workers=24) as pool:
            statuses = list(pool.map(send, range(24)))
        assert len(statuses) == 24
        assert set(statuses) <= {200, 429}
        assert statuses.count(429) >= 1
        assert statuses.count(200) >= 2  # the queue holds two, so at least those are served
        shed = 'coserve_rejected_requests_total{model="slow",reason="queue_full",version="1"}'
        assert metric(server, shed) >= statuses.count(429)


def metric(server: ServerProcess, series: str) -> float:
    """One series' value from /metrics (0 if it is not there yet)."""
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def queued(server: ServerProcess, model: str) -> float:
    """The model's queue depth, read from /metrics."""
    return metric(server, f'coserve_queued_requests{{model="{model}",version="1"}}')


def test_metrics_report_batching_per_model(server: ServerProcess, images: np.ndarray) -> None:
    """/metrics exposes outcomes, batch sizes, close reasons and latency per model and version."""
    body = {
        "inputs": [
            {
                "name": "image",
                "shape": [2, 8, 8, 1],
                "datatype": "FP32",
                "data": images[:2].tolist(),
            }
        ]
    }
    assert httpx.post(f"{server.url}/v2/models/digits_onnx/infer", json=body).status_code == 200
    text = httpx.get(f"{server.url}/metrics").text
    for expected in (
        'coserve_requests_total{model="digits_onnx",outcome="completed",version="1"}',
        'coserve_batch_size_bucket{le="2",model="digits_onnx",version="1"}',
        'coserve_batch_close_reasons_total{model="digits_onnx",reason="slot_free",version="1"}',
        'coserve_request_duration_seconds_count{model="digits_onnx",protocol="http",status="200",'
        'version="1"}',
        'coserve_queued_requests{model="slow",version="1"}',
        'coserve_batching_option{model="digits_onnx",option="max_batch_size",version="1"} 64.0',
        'coserve_batching_option{model="digits_onnx",option="max_queue_size",version="1"} 1024.0',
    ):
        assert expected in text, expected
    assert 'coserve_batching_option{model="digits_onnx",option="timeout"' not in text  # none


def test_the_admin_api_is_off_without_the_flag(server: ServerProcess) -> None:
    """Without --admin, the batching of a model cannot be read or changed over HTTP."""
    url = f"{server.url}/v2/admin/models/digits/batching"
    assert httpx.get(url).status_code == 404
    assert httpx.post(url, json={"max_batch_size": 1}).status_code == 404
    assert (
        metric(
            server, 'coserve_batching_option{model="digits",option="max_batch_size",version="1"}'
        )
        == 64.0
    )


def test_sigterm_answers_accepted_requests_then_exits_zero(tmp_path: Path) -> None:
    """Under load, SIGTERM turns readiness off, answers what was accepted, and exits 0."""
    repository = build_repository(tmp_path)
    server = ServerProcess("--model-repository", str(repository), "--graceful-timeout", "20")
    try:
        server.wait_ready()
        body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0.5]}]}
        with ThreadPoolExecutor(max_workers=3) as pool:
            accepted = [
                pool.submit(httpx.post, f"{server.url}/v2/models/slow/infer", json=body, timeout=60)
                for _ in range(3)
            ]
            # One running and two queued: all three are inside the server. The test's timeout
            # bounds this wait; nothing here depends on how fast the machine is.
            while queued(server, "slow") < 2:
                pass
            status = server.stop()
            responses = [f.result() for f in accepted]
    finally:
        server.close()
    assert status == 0, server.output()
    assert [r.status_code for r in responses] == [200, 200, 200]


class TestTensorFlowServingApi:
    def test_model_status_and_metadata(self, server: ServerProcess) -> None:
        """GET /v1/models/{m}[/versions/{v}][/metadata] answer as TF Serving does."""
        status = httpx.get(f"{server.url}/v1/models/digits").json()
        assert status == {
            "model_version_status": [
                {
                    "version": "1",
                    "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""},
                }
            ]
        }
        assert httpx.get(f"{server.url}/v1/models/digits/versions/1").status_code == 200
        meta = httpx.get(f"{server.url}/v1/models/digits/metadata").json()
        signature = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert signature["inputs"]["image"]["dtype"] == "DT_FLOAT"
        assert [d["size"] for d in signature["inputs"]["image"]["tensor_shape"]["dim"]] == [
            "-1",
            "8",
            "8",
            "1",
        ]

    def test_predict_in_row_and_columnar_form(
        self, server: ServerProcess, images: np.ndarray
    ) -> None:
        """Instances (rows) answer predictions; inputs (columns, named or bare) answer outputs."""
        labels = load_digits().target[:4]
        rows = httpx.post(
            f"{server.url}/v1/models/digits:predict", json={"instances": images[:4].tolist()}
        ).json()["predictions"]
        named = httpx.post(
            f"{server.url}/v1/models/digits/versions/1:predict",
            json={"signature_name": "serving_default", "inputs": {"image": images[:4].tolist()}},
        ).json()["outputs"]
        bare = httpx.post(
            f"{server.url}/v1/models/digits_onnx:predict", json={"inputs": images[:4].tolist()}
        ).json()["outputs"]
        for result in (rows, named, bare):
            assert (np.array(result).argmax(axis=1) == labels).all()

    def test_b64_bytes_and_several_inputs_and_outputs(self, server: ServerProcess) -> None:
        """Row objects name several inputs; {"b64"} carries bytes in, and out for *_bytes."""
        encoded = base64.b64encode(b"\x00abc").decode()
        response = httpx.post(
            f"{server.url}/v1/models/types:predict",
            json={"instances": [{"text": {"b64": encoded}, "flag": True, "count": 2}]},
        )
        assert response.status_code == 200, response.text
        (prediction,) = response.json()["predictions"]
        assert prediction["upper"] == "\x00ABC"
        assert prediction["text_bytes"] == {"b64": encoded}
        assert prediction["negated"] is False
        assert prediction["doubled"] == 4

    @pytest.mark.parametrize(
        ("path", "body", "status", "message"),
        [
            ("digits:predict", {"instances": [1], "inputs": [1]}, 400, "one of 'instances'"),
            ("digits:predict", {}, 400, "one of 'instances'"),
            ("digits:predict", {"instances": []}, 400, "non-empty list"),
            (
                "digits:predict",
                {"signature_name": "other", "inputs": [1]},
                400,
                "No signature was found with the name: other",
            ),
            ("types:predict", {"instances": [[1]]}, 400, "must be an object naming them"),
            ("types:predict", {"instances": [{"text": {"b64": "!!"}}]}, 400, "not valid base64"),
            ("digits:classify", {"examples": []}, 400, "'examples' value is an empty array"),
            ("digits:regress", {"examples": [{}]}, 400, "No regression outputs found"),
            ("nope:predict", {"instances": [1]}, 404, "'nope' is not loaded"),
        ],
    )
    def test_errors_use_tf_serving_status_mapping(
        self, server: ServerProcess, path: str, body: dict[str, object], status: int, message: str
    ) -> None:
        """Errors are {"error": ...} with the mapped status: bad input 400, unknown 404."""
        response = httpx.post(f"{server.url}/v1/models/{path}", json=body)
        assert response.status_code == status
        assert message in response.json()["error"]

    def test_wrong_method_is_405(self, server: ServerProcess) -> None:
        """GET on :predict, or POST on a status path, is 405."""
        assert httpx.get(f"{server.url}/v1/models/digits:predict").status_code == 405
        assert httpx.post(f"{server.url}/v1/models/digits/metadata", json={}).status_code == 405


class TestWebSocket:
    def ws_url(self, server: ServerProcess, model: str) -> str:
        return f"ws://{host(server)}/v2/models/{model}/infer/ws"

    async def test_many_requests_in_flight_answered_by_id(
        self, server: ServerProcess, images: np.ndarray
    ) -> None:
        """64 requests sent back to back on one socket all come back, each tagged with its id."""
        async with websockets.connect(self.ws_url(server, "digits")) as socket:
            for i in range(64):
                request = {
                    "id": f"r{i}",
                    "inputs": [
                        {
                            "name": "image",
                            "shape": [1, 8, 8, 1],
                            "datatype": "FP32",
                            "data": images[i].ravel().tolist(),
                        }
                    ],
                }
                await socket.send(json.dumps(request))
            answers = [json.loads(await socket.recv()) for _ in range(64)]
        by_id = {a["id"]: a for a in answers}
        assert set(by_id) == {f"r{i}" for i in range(64)}
        labels = load_digits().target[:64]
        predicted = [int(np.argmax(by_id[f"r{i}"]["outputs"][0]["data"])) for i in range(64)]
        assert np.mean(np.array(predicted) == labels) > 0.95

    async def test_a_bad_message_gets_an_error_and_the_connection_stays_open(
        self, server: ServerProcess, images: np.ndarray
    ) -> None:
        """A malformed request is answered with its id and status; the next one still works."""
        async with websockets.connect(self.ws_url(server, "digits")) as socket:
            await socket.send(json.dumps({"id": "bad", "inputs": [{"name": "image"}]}))
            error = json.loads(await socket.recv())
            assert error["id"] == "bad"
            assert error["status"] == 400
            assert "datatype" in error["error"]
            await socket.send("not json at all")
            assert json.loads(await socket.recv())["status"] == 400
            good = {
                "id": "good",
                "inputs": [
                    {
                        "name": "image",
                        "shape": [1, 8, 8, 1],
                        "datatype": "FP32",
                        "data": images[0].ravel().tolist(),
                    }
                ],
            }
            await socket.send(json.dumps(good))
            assert json.loads(await socket.recv())["id"] == "good"

    async def test_unknown_model_closes_with_a_clear_code(self, server: ServerProcess) -> None:
        """Connecting to a model that is not loaded closes the socket with code 4404."""
        async with websockets.connect(self.ws_url(server, "nope")) as socket:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await socket.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4404

    async def test_closing_the_socket_drops_its_queued_work(self, server: ServerProcess) -> None:
        """Requests still queued when the client disconnects are cancelled, never run."""
        slow = '{model="slow",version="1"}'
        cancelled = 'coserve_requests_total{model="slow",outcome="cancelled",version="1"}'
        # Start from an idle model: earlier tests may have left a slow call running.
        await wait_until(
            lambda: (
                metric(server, f"coserve_running_batches{slow}") == 0
                and metric(server, f"coserve_queued_requests{slow}") == 0
            ),
            "the slow model to be idle",
        )
        batches = f"coserve_batch_size_count{slow}"
        before_cancelled, before_batches = metric(server, cancelled), metric(server, batches)
        async with websockets.connect(self.ws_url(server, "slow")) as socket:
            for i in range(3):  # one runs (2 s: ample even on a loaded machine), two wait
                request = {
                    "id": str(i),
                    "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [2.0]}],
                }
                await socket.send(json.dumps(request))
                if i == 0:  # three submits in one loop pass would overflow the 2-place queue
                    await wait_until(
                        lambda: metric(server, f"coserve_running_batches{slow}") == 1, "one runs"
                    )
            await wait_until(
                lambda: metric(server, f"coserve_queued_requests{slow}") == 2, "two queued"
            )
        # All three callers are gone; the one already running finishes, the queued two never run.
        await wait_until(
            lambda: metric(server, cancelled) == before_cancelled + 3, "three cancelled"
        )
        await wait_until(lambda: metric(server, f"coserve_running_batches{slow}") == 0, "run ends")
        assert metric(server, batches) == before_batches + 1


async def test_http_client_that_disconnects_has_its_queued_work_dropped(
    server: ServerProcess,
) -> None:
    """Over plain HTTP too: requests whose clients hang up while queued never run."""
    slow = '{model="slow",version="1"}'
    cancelled = 'coserve_requests_total{model="slow",outcome="cancelled",version="1"}'
    batches = f"coserve_batch_size_count{slow}"
    await wait_until(
        lambda: (
            metric(server, f"coserve_running_batches{slow}") == 0
            and metric(server, f"coserve_queued_requests{slow}") == 0
        ),
        "the slow model to be idle",
    )
    before_cancelled, before_batches = metric(server, cancelled), metric(server, batches)
    body = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [2.0]}]})
    request = (
        f"POST /v2/models/slow/infer HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    writers = []
    for i in range(3):  # one runs (2 s: ample even on a loaded machine), two wait in the queue
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request)
        await writer.drain()
        writers.append(writer)
        if i == 0:  # three submits in one loop pass would overflow the 2-place queue
            await wait_until(
                lambda: metric(server, f"coserve_running_batches{slow}") == 1, "one runs"
            )
    await wait_until(lambda: metric(server, f"coserve_queued_requests{slow}") == 2, "two queued")
    for writer in writers:  # the clients hang up
        writer.close()
        await writer.wait_closed()
    await wait_until(lambda: metric(server, cancelled) == before_cancelled + 3, "three cancelled")
    await wait_until(lambda: metric(server, f"coserve_running_batches{slow}") == 0, "run ends")
    assert metric(server, batches) == before_batches + 1


async def wait_until(condition: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    """Poll the server's own counters until ``condition`` holds; fail clearly if it never does.

    The limit only turns a hang into a readable failure: no outcome depends on the machine's
    speed, since the condition is a state the server reaches, not a time.
    """
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.02)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)
tensor_fields = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["image", "x", "text", ""]) | st.integers(),
        "shape": st.lists(st.integers(-2, 70), max_size=5) | json_values,
        "datatype": st.sampled_from(["FP32", "INT64", "BYTES", "BOOL", "FP16", "fp32", "X"])
        | json_values,
        "data": json_values,
        "parameters": st.dictionaries(
            st.sampled_from(["binary_data_size", "x"]), json_values, max_size=2
        ),
    },
)
malformed_bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"inputs": st.lists(tensor_fields, max_size=3)},
        optional={"id": json_values, "parameters": json_values, "outputs": json_values},
    ).map(lambda v: json.dumps(v).encode()),
)
headers = st.dictionaries(
    st.sampled_from(["Inference-Header-Content-Length", "Content-Type"]),
    st.sampled_from(["0", "5", "-1", "99999", "abc", "application/json", "text/plain"]),
    max_size=2,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=st.sampled_from(
        ["/v2/models/digits/infer", "/v2/models/types/infer", "/v1/models/digits:predict"]
    ),
    body=malformed_bodies,
    extra_headers=headers,
)
def test_fuzzed_bodies_and_headers_never_get_a_server_error(
    server: ServerProcess, path: str, body: bytes, extra_headers: dict[str, str]
) -> None:
    """Whatever arrives, the answer is a 4xx (or 200 if it happens to be valid), never a 5xx."""
    response = httpx.post(f"{server.url}{path}", content=body, headers=extra_headers, timeout=30)
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code != 200:
        assert "error" in response.json()


def test_server_still_serves_after_the_fuzzing(server: ServerProcess, images: np.ndarray) -> None:
    """After every fuzzed request, a good one still succeeds (runs after the fuzz test)."""
    body = {
        "inputs": [
            {
                "name": "image",
                "shape": [1, 8, 8, 1],
                "datatype": "FP32",
                "data": images[0].ravel().tolist(),
            }
        ]
    }
    response = httpx.post(f"{server.url}/v2/models/digits/infer", json=body)
    assert response.status_code == 200
    assert (
        metric(server, 'coserve_requests_total{model="digits",outcome="failed",version="1"}') == 0
    )


@pytest.mark.parametrize("value", [None, "1.5", [1.0]])
def test_null_numeric_text_and_ragged_data_are_refused(
    server: ServerProcess, value: object
) -> None:
    """null, numbers written as text, and ragged nesting never turn into numbers silently."""
    data = [0.0] * 63 + [value]
    response = httpx.post(f"{server.url}/v2/models/digits/infer", content=image_body(data=data))
    assert response.status_code == 400


def test_lowercase_binary_bytes_datatype_is_a_400(server: ServerProcess) -> None:
    """Datatype names are case-normalised once: binary 'bytes' is read as BYTES, then refused."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1],
                    "datatype": "bytes",
                    "parameters": {"binary_data_size": 5},
                }
            ]
        }
    ).encode()
    response = httpx.post(
        f"{server.url}/v2/models/digits/infer",
        content=header + struct.pack("<I", 1) + b"x",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 400, response.text


def test_unknown_models_do_not_create_metric_series(server: ServerProcess) -> None:
    """Requests for models that do not exist are counted under one '_unknown' label."""
    for i in range(5):
        assert httpx.post(f"{server.url}/v2/models/junk{i}/infer", content=b"{}").status_code == 404
    text = httpx.get(f"{server.url}/metrics").text
    assert "junk" not in text
    assert 'model="_unknown"' in text


async def test_websocket_request_with_an_impossible_shape_is_still_answered(
    server: ServerProcess,
) -> None:
    """Every WebSocket message gets exactly one answer, even one numpy cannot even shape."""
    url = f"ws://{host(server)}/v2/models/digits/infer/ws"
    bad = {
        "id": "bad",
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [0, 2**62, 8, 1], "data": []}],
    }
    async with websockets.connect(url) as socket:
        await socket.send(json.dumps(bad))
        answer = json.loads(await socket.recv())
    assert answer["id"] == "bad"
    assert answer["status"] == 400
