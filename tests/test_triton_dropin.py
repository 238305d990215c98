"""A Triton user's drop-in: Triton's example model repository, served unchanged, to tritonclient.

``tests/data/triton`` holds Triton's ``simple`` and ``simple_string`` folders as Triton ships
them (config.pbtxt and ``1/model.onnx``) and ``simple_no_config``, simple's model with no
config at all. One ``coserve serve --model-repository tests/data/triton`` for the module; the
checks are those of Triton's own example clients (``simple_http_infer_client.py``,
``simple_grpc_infer_client.py``, ``simple_http_string_infer_client.py``): OUTPUT0 = INPUT0 +
INPUT1 and OUTPUT1 = INPUT0 - INPUT1 on INT32 [1, 16], and the same on BYTES holding decimal
strings, with tritonclient's HTTP (binary tensors on and off) and gRPC clients unmodified.
"""

from __future__ import annotations

import queue
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from helpers import ServerProcess

pytestmark = pytest.mark.slow  # starts a real server process

REPOSITORY = Path(__file__).parent / "data" / "triton"
MODELS = ("simple", "simple_string", "simple_no_config", "simple_sequence", "tiny_densenet")


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    process = ServerProcess("--model-repository", str(REPOSITORY), grpc=True)
    try:
        process.wait_ready()
        yield process
    finally:
        process.close()


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc(server: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(server.grpc_target)
    yield client
    client.close()


def simple_inputs() -> tuple[np.ndarray, np.ndarray]:
    """Triton's example data: 0..15, and the second input all -1 (HTTP) or 1 (gRPC)."""
    return np.arange(16, dtype=np.int32)[None], np.full((1, 16), -1, dtype=np.int32)


def check_sums(result: Any, input0: np.ndarray, input1: np.ndarray) -> None:
    """The example clients' check, element by element."""
    output0, output1 = result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")
    assert output0.shape == output1.shape == (1, 16)
    for i in range(16):
        assert input0[0][i] + input1[0][i] == output0[0][i]
        assert input0[0][i] - input1[0][i] == output1[0][i]


def test_the_server_and_every_model_are_ready(
    server: ServerProcess,
    http: httpclient.InferenceServerClient,
    grpc: grpcclient.InferenceServerClient,
) -> None:
    """The repository's folders are all models; its LICENSE and README files are not folders."""
    for client in (http, grpc):
        assert client.is_server_live()
        assert client.is_server_ready()
        for model in MODELS:
            assert client.is_model_ready(model)
            assert client.is_model_ready(model, "1")
        assert not client.is_model_ready("wrong_model_name")
    assert "not served" not in server.output()


class TestHttp:
    def test_simple_http_infer_client(self, http: httpclient.InferenceServerClient) -> None:
        """As simple_http_infer_client.py, with no outputs named, then outputs named.

        INPUT0 as JSON, INPUT1 binary; OUTPUT0 asked for binary, OUTPUT1 as JSON; query
        parameters the server does not know.
        """
        input0, input1 = simple_inputs()
        inputs = [
            httpclient.InferInput("INPUT0", [1, 16], "INT32"),
            httpclient.InferInput("INPUT1", [1, 16], "INT32"),
        ]
        inputs[0].set_data_from_numpy(input0, binary_data=False)
        inputs[1].set_data_from_numpy(input1, binary_data=True)
        outputs = [
            httpclient.InferRequestedOutput("OUTPUT0", binary_data=True),
            httpclient.InferRequestedOutput("OUTPUT1", binary_data=False),
        ]
        query = {"test_1": 1, "test_2": 2}
        result = http.infer("simple", inputs, outputs=outputs, query_params=query)
        check_sums(result, input0, input1)
        assert result.get_response()["model_name"] == "simple"
        result = http.infer("simple", inputs, outputs=None, query_params=query)
        check_sums(result, input0, input1)

    @pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
    def test_binary_data_on_and_off(
        self, http: httpclient.InferenceServerClient, binary: bool
    ) -> None:
        input0, input1 = simple_inputs()
        inputs = [
            httpclient.InferInput("INPUT0", [1, 16], "INT32"),
            httpclient.InferInput("INPUT1", [1, 16], "INT32"),
        ]
        inputs[0].set_data_from_numpy(input0, binary_data=binary)
        inputs[1].set_data_from_numpy(input1, binary_data=binary)
        outputs = [
            httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary),
            httpclient.InferRequestedOutput("OUTPUT1", binary_data=binary),
        ]
        check_sums(http.infer("simple", inputs, outputs=outputs), input0, input1)

    def test_simple_http_string_infer_client(self, http: httpclient.InferenceServerClient) -> None:
        """As simple_http_string_infer_client.py: decimal strings, binary and JSON both ways."""
        in0 = np.arange(16, dtype=np.int32)[None]
        in1 = np.ones((1, 16), dtype=np.int32)
        input0 = np.array([str(x).encode() for x in in0.ravel()], dtype=np.object_).reshape(1, 16)
        input1 = np.array([str(x).encode() for x in in1.ravel()], dtype=np.object_).reshape(1, 16)
        inputs = [
            httpclient.InferInput("INPUT0", [1, 16], "BYTES"),
            httpclient.InferInput("INPUT1", [1, 16], "BYTES"),
        ]
        inputs[0].set_data_from_numpy(input0, binary_data=True)
        inputs[1].set_data_from_numpy(input1, binary_data=False)
        outputs = [
            httpclient.InferRequestedOutput("OUTPUT0", binary_data=True),
            httpclient.InferRequestedOutput("OUTPUT1", binary_data=False),
        ]
        result = http.infer(model_name="simple_string", inputs=inputs, outputs=outputs)
        output0, output1 = result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")
        for i in range(16):
            assert int(output0[0][i]) == in0[0][i] + in1[0][i]
            assert int(output1[0][i]) == in0[0][i] - in1[0][i]

    def test_an_unknown_model(self, http: httpclient.InferenceServerClient) -> None:
        """An error naming the model (Triton's text is "Request for unknown model: ...")."""
        input0, input1 = simple_inputs()
        inputs = [
            httpclient.InferInput("INPUT0", [1, 16], "INT32"),
            httpclient.InferInput("INPUT1", [1, 16], "INT32"),
        ]
        inputs[0].set_data_from_numpy(input0)
        inputs[1].set_data_from_numpy(input1)
        with pytest.raises(InferenceServerException, match="wrong_model_name"):
            http.infer("wrong_model_name", inputs)

    def test_model_metadata(self, http: httpclient.InferenceServerClient) -> None:
        """Triton's answer for simple, its platform named as its config names it."""
        assert http.get_model_metadata("simple") == {
            "name": "simple",
            "versions": ["1"],
            "platform": "onnxruntime_onnx",
            "inputs": [
                {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]},
                {"name": "INPUT1", "datatype": "INT32", "shape": [-1, 16]},
            ],
            "outputs": [
                {"name": "OUTPUT0", "datatype": "INT32", "shape": [-1, 16]},
                {"name": "OUTPUT1", "datatype": "INT32", "shape": [-1, 16]},
            ],
        }
        metadata = http.get_model_metadata("simple_string", "1")
        assert [t["datatype"] for t in metadata["inputs"]] == ["BYTES", "BYTES"]

    def test_model_config(self, http: httpclient.InferenceServerClient) -> None:
        """Simple's completed config, as Triton prints it; the same by version."""
        config = http.get_model_config("simple")
        assert http.get_model_config("simple", "1") == config
        assert config["name"] == "simple"
        assert config["platform"] == "onnxruntime_onnx"
        assert config["backend"] == "onnxruntime"
        assert config["max_batch_size"] == 8
        assert config["version_policy"] == {"latest": {"num_versions": 1}}
        assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
            ("INPUT0", "TYPE_INT32", [16]),
            ("INPUT1", "TYPE_INT32", [16]),
        ]
        assert [(t["name"], t["data_type"], t["dims"]) for t in config["output"]] == [
            ("OUTPUT0", "TYPE_INT32", [16]),
            ("OUTPUT1", "TYPE_INT32", [16]),
        ]
        assert "dynamic_batching" not in config  # none written: each request runs alone
        assert config["instance_group"][0]["kind"] == "KIND_CPU"
        assert config["instance_group"][0]["count"] == 1
        assert config["default_model_filename"] == "model.onnx"
        with pytest.raises(InferenceServerException, match="wrong_model_name"):
            http.get_model_config("wrong_model_name")
        with pytest.raises(InferenceServerException, match="no version '7'"):
            http.get_model_config("simple", "7")

    def test_a_folder_with_no_config_is_auto_completed(
        self, http: httpclient.InferenceServerClient
    ) -> None:
        """Triton's ONNX auto-complete: batchable, so max_batch_size 4 and dynamic batching.

        A request of 3 rows is answered row by row.
        """
        config = http.get_model_config("simple_no_config")
        assert config["platform"] == "onnxruntime_onnx"
        assert config["max_batch_size"] == 4
        assert config["dynamic_batching"]["preferred_batch_size"] == [4]
        assert [(t["name"], t["dims"]) for t in config["input"]] == [
            ("INPUT0", [16]),
            ("INPUT1", [16]),
        ]
        input0 = np.arange(48, dtype=np.int32).reshape(3, 16)
        input1 = np.full((3, 16), 5, dtype=np.int32)
        inputs = [
            httpclient.InferInput("INPUT0", [3, 16], "INT32"),
            httpclient.InferInput("INPUT1", [3, 16], "INT32"),
        ]
        inputs[0].set_data_from_numpy(input0)
        inputs[1].set_data_from_numpy(input1)
        result = http.infer("simple_no_config", inputs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), input0 + input1)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), input0 - input1)


class TestGrpc:
    def test_simple_grpc_infer_client(self, grpc: grpcclient.InferenceServerClient) -> None:
        """As simple_grpc_infer_client.py: INPUT1 all ones, a header, outputs named or not."""
        input0 = np.arange(16, dtype=np.int32)[None]
        input1 = np.ones((1, 16), dtype=np.int32)
        inputs = [
            grpcclient.InferInput("INPUT0", [1, 16], "INT32"),
            grpcclient.InferInput("INPUT1", [1, 16], "INT32"),
        ]
        inputs[0].set_data_from_numpy(input0)
        inputs[1].set_data_from_numpy(input1)
        outputs = [
            grpcclient.InferRequestedOutput("OUTPUT0"),
            grpcclient.InferRequestedOutput("OUTPUT1"),
        ]
        result = grpc.infer(
            model_name="simple", inputs=inputs, outputs=outputs, headers={"test": "1"}
        )
        check_sums(result, input0, input1)
        check_sums(grpc.infer(model_name="simple", inputs=inputs, outputs=None), input0, input1)

    def test_strings(self, grpc: grpcclient.InferenceServerClient) -> None:
        strings = np.array([str(i).encode() for i in range(16)], dtype=np.object_).reshape(1, 16)
        ones = np.full((1, 16), b"1", dtype=np.object_)
        inputs = [
            grpcclient.InferInput("INPUT0", [1, 16], "BYTES"),
            grpcclient.InferInput("INPUT1", [1, 16], "BYTES"),
        ]
        inputs[0].set_data_from_numpy(strings)
        inputs[1].set_data_from_numpy(ones)
        result = grpc.infer("simple_string", inputs)
        assert [int(v) for v in result.as_numpy("OUTPUT0")[0]] == list(range(1, 17))
        assert [int(v) for v in result.as_numpy("OUTPUT1")[0]] == list(range(-1, 15))

    def test_model_metadata(self, grpc: grpcclient.InferenceServerClient) -> None:
        metadata = grpc.get_model_metadata("simple", as_json=True)
        assert metadata["name"] == "simple"
        assert metadata["versions"] == ["1"]
        assert metadata["platform"] == "onnxruntime_onnx"
        assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
            ("INPUT0", "INT32", ["-1", "16"]),  # int64 in protobuf's JSON: strings
            ("INPUT1", "INT32", ["-1", "16"]),
        ]
        assert [t["name"] for t in metadata["outputs"]] == ["OUTPUT0", "OUTPUT1"]


# -- sequence batching: Triton's simple_sequence, as its sequence example clients call it ---------

SEQUENCE_VALUES = [11, 7, 5, 3, 2, 0, 1]


def send_sequence(client: Any, module: Any, values: list[int], sequence_id: int | str) -> list[int]:
    """As ``sync_send`` of Triton's ``simple_*_sequence_sync_infer_client.py``: one at a time."""
    results = []
    for count, value in enumerate(values, start=1):
        data = np.full((1, 1), value, dtype=np.int32)
        inputs = [module.InferInput("INPUT", data.shape, "INT32")]
        inputs[0].set_data_from_numpy(data)
        result = client.infer(
            model_name="simple_sequence",
            inputs=inputs,
            outputs=[module.InferRequestedOutput("OUTPUT")],
            sequence_id=sequence_id,
            sequence_start=count == 1,
            sequence_end=count == len(values),
        )
        results.append(int(result.as_numpy("OUTPUT")[0][0]))
    return results


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_simple_sequence_sync_infer_client(
    protocol: str,
    http: httpclient.InferenceServerClient,
    grpc: grpcclient.InferenceServerClient,
) -> None:
    """The example's checks: the first result is its value plus 1 (START), the rest the value.

    Two integer sequences and one with a string (UUID) id, as the example sends them.
    """
    client, module = (http, httpclient) if protocol == "http" else (grpc, grpcclient)
    offset = 0 if protocol == "http" else 10
    first = send_sequence(client, module, [0, *SEQUENCE_VALUES], 1000 + offset)
    second = send_sequence(client, module, [100, *(-v for v in SEQUENCE_VALUES)], 1001 + offset)
    text = send_sequence(client, module, [20, *(-v for v in SEQUENCE_VALUES)], str(uuid.uuid4()))
    for i in range(len(first)):
        assert first[i] == (1 if i == 0 else SEQUENCE_VALUES[i - 1])
        assert second[i] == (101 if i == 0 else -SEQUENCE_VALUES[i - 1])
        assert text[i] == (21 if i == 0 else -SEQUENCE_VALUES[i - 1])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_sequence_request_without_its_start_is_refused_as_triton_refuses_it(
    protocol: str,
    http: httpclient.InferenceServerClient,
    grpc: grpcclient.InferenceServerClient,
) -> None:
    client, module = (http, httpclient) if protocol == "http" else (grpc, grpcclient)
    data = np.ones((1, 1), dtype=np.int32)
    inputs = [module.InferInput("INPUT", [1, 1], "INT32")]
    inputs[0].set_data_from_numpy(data)
    with pytest.raises(InferenceServerException) as raised:
        client.infer("simple_sequence", inputs, sequence_id=4242)
    assert (  # Triton's words: clients match them to restart their sequence
        "inference request for sequence 4242 to model 'simple_sequence' must specify the START "
        "flag on the first request of the sequence"
    ) in str(raised.value)
    with pytest.raises(InferenceServerException, match="non-zero or non-empty correlation ID"):
        client.infer("simple_sequence", inputs)


def test_a_sequence_models_metadata_and_config_show_what_clients_send(
    http: httpclient.InferenceServerClient,
) -> None:
    """Its metadata lists INPUT only (START and READY are the server's); its config is Triton's."""
    metadata = http.get_model_metadata("simple_sequence")
    assert [tensor["name"] for tensor in metadata["inputs"]] == ["INPUT"]
    config = http.get_model_config("simple_sequence")
    assert [tensor["name"] for tensor in config["input"]] == ["INPUT"]
    controls = config["sequence_batching"]["control_input"]
    assert [(c["name"], c["control"][0]["kind"]) for c in controls] == [
        ("START", "CONTROL_SEQUENCE_START"),
        ("READY", "CONTROL_SEQUENCE_READY"),
    ]
    assert "dynamic_batching" not in config


def test_simple_grpc_sequence_stream_infer_client(grpc: grpcclient.InferenceServerClient) -> None:
    """As simple_grpc_sequence_stream_infer_client.py: two sequences on one stream.

    Their requests interleave, every one sent before any answer; each sequence runs in order.
    """
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    grpc.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        plans = {2000: [0, *SEQUENCE_VALUES], 2001: [100, *(-v for v in SEQUENCE_VALUES)]}
        for step in range(len(SEQUENCE_VALUES) + 1):
            for sequence_id, values in plans.items():
                data = np.full((1, 1), values[step], dtype=np.int32)
                inputs = [grpcclient.InferInput("INPUT", [1, 1], "INT32")]
                inputs[0].set_data_from_numpy(data)
                grpc.async_stream_infer(
                    "simple_sequence",
                    inputs,
                    request_id=f"{sequence_id}_{step}",
                    sequence_id=sequence_id,
                    sequence_start=step == 0,
                    sequence_end=step == len(SEQUENCE_VALUES),
                )
        got: dict[str, int] = {}
        for _ in range(2 * len(plans[2000])):
            result, error = answers.get(timeout=30)
            assert error is None, error
            got[result.get_response().id] = int(result.as_numpy("OUTPUT")[0][0])
    finally:
        grpc.stop_stream()
    for sequence_id, values in plans.items():
        expected = [values[0] + 1, *values[1:]]
        assert [got[f"{sequence_id}_{step}"] for step in range(len(values))] == expected


# -- no batch dimension: a model in the form of Triton's densenet_onnx quick-start example -------

# The tiny densenet's weights (scripts/make_triton_test_models.py): channel means to 5 scores.
DENSENET_WEIGHTS = np.array(
    [[1.0, 0.5, 0.0, -1.0, 2.0], [0.0, 1.0, 3.0, 0.5, -2.0], [2.0, -1.0, 1.0, 0.0, 0.25]],
    dtype=np.float32,
)
DENSENET_LABELS = ["tench", "goldfish", "shark", "hen", "mug"]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_model_without_batch_dimension_answers_as_image_client_expects(
    protocol: str,
    http: httpclient.InferenceServerClient,
    grpc: grpcclient.InferenceServerClient,
) -> None:
    """As Triton's image_client.py on densenet_onnx: [3, H, W] in, [5] scores or top-k out.

    The input and output first dimensions differ (3 and 5): each request is the model's whole
    tensor, and so is each answer. With ``class_count`` 2 the answer is the top two as
    "score:index:label" strings, shape [2].
    """
    client, module = (http, httpclient) if protocol == "http" else (grpc, grpcclient)
    image = np.random.default_rng(7).random((3, 4, 4), dtype=np.float32)
    scores = image.mean(axis=(1, 2)) @ DENSENET_WEIGHTS
    inputs = [module.InferInput("data_0", [3, 4, 4], "FP32")]
    inputs[0].set_data_from_numpy(image)
    result = client.infer("tiny_densenet", inputs)
    np.testing.assert_allclose(result.as_numpy("fc6_1"), scores, rtol=1e-6)
    top = client.infer(
        "tiny_densenet",
        inputs,
        outputs=[module.InferRequestedOutput("fc6_1", class_count=2)],
    ).as_numpy("fc6_1")
    assert top.shape == (2,)
    best = np.argsort(-scores)[:2]
    for entry, index in zip(top, best, strict=True):
        score, position, label = entry.decode().split(":")
        assert (int(position), label) == (index, DENSENET_LABELS[index])
        assert float(score) == pytest.approx(scores[index], rel=1e-5)
    wrong = [module.InferInput("data_0", [2, 4, 4], "FP32")]
    wrong[0].set_data_from_numpy(image[:2])
    with pytest.raises(InferenceServerException, match=r"dimension 0 must be 3"):
        client.infer("tiny_densenet", wrong)


def test_model_config_over_grpc_is_the_config_http_gives(
    http: httpclient.InferenceServerClient, grpc: grpcclient.InferenceServerClient
) -> None:
    """tritonclient.grpc's get_model_config: the same completed config as over HTTP."""
    for model in MODELS:
        over_grpc = grpc.get_model_config(model, as_json=True)["config"]
        over_http = http.get_model_config(model)
        assert over_grpc["name"] == over_http["name"] == model
        assert over_grpc["platform"] == over_http["platform"]
        assert [t["name"] for t in over_grpc["input"]] == [t["name"] for t in over_http["input"]]
        assert int(over_grpc.get("max_batch_size", 0)) == over_http["max_batch_size"]
    sequence = grpc.get_model_config("simple_sequence").config.sequence_batching
    assert [c.name for c in sequence.control_input] == ["START", "READY"]
    assert list(sequence.control_input[0].control[0].int32_false_true) == [0, 1]
    densenet = grpc.get_model_config("tiny_densenet").config
    assert list(densenet.output[0].reshape.shape) == [1, 5, 1, 1]
    assert densenet.output[0].label_filename == "labels.txt"
