"""A TensorFlow Serving user's drop-in: their model folder, their flags, their clients.

TF Serving's own test model (``tests/data/tfserving``, copied from tensorflow/serving) is served
by ``coserve tfserving`` with the flags its docs use, from a folder laid out as TF Serving
wants it (``<base>/00000123/saved_model.pb``); TF Serving's documented REST requests, and the
``tensorflow-serving-api`` gRPC stubs, get TF Serving's answers. One server for the module;
the versions test adds a version folder under it and waits for the poll to load it.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coserve.models import bundled_repository
from helpers import ServerProcess

pytestmark = pytest.mark.slow

DATA = Path(__file__).parent / "data" / "tfserving"
MODEL = DATA / "saved_model_half_plus_two_cpu"
SENTIMENT = bundled_repository() / "sentiment" / "1" / "model.savedmodel"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tfserving")
    shutil.copytree(MODEL, root / "half_plus_two")
    labelled = root / "labelled"
    shutil.copytree(MODEL / "00000123", labelled / "1")
    shutil.copytree(MODEL / "00000123", labelled / "2")
    # A model with a variable-length input, in TF Serving's layout: the text demo's SavedModel.
    shutil.copytree(SENTIMENT, root / "sentiment" / "1")
    (root / "batching.config").write_text(
        "max_batch_size { value: 8 }\n"
        "batch_timeout_micros { value: 1000 }\n"
        "num_batch_threads { value: 2 }\n"
        "max_enqueued_batches { value: 100 }\n"
        "pad_variable_length_inputs: true\n"
    )
    (root / "models.config").write_text(
        "model_config_list {\n"
        "  config {\n"
        "    name: 'half_plus_two'\n"
        f"    base_path: '{root / 'half_plus_two'}'\n"
        "    model_platform: 'tensorflow'\n"
        "  }\n"
        "  config {\n"
        "    name: 'labelled'\n"
        "    base_path: 'labelled'\n"  # relative: to the config file's folder
        "    model_platform: 'tensorflow'\n"
        "    model_version_policy { all {} }\n"
        "    version_labels { key: 'stable' value: 1 }\n"
        "    version_labels { key: 'canary' value: 2 }\n"
        "  }\n"
        "  config {\n"
        "    name: 'sentiment'\n"
        "    base_path: 'sentiment'\n"
        "    model_platform: 'tensorflow'\n"
        "  }\n"
        "}\n"
    )
    return root


@pytest.fixture(scope="module")
def server(models: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(
        f"--model_config_file={models / 'models.config'}",
        "--file_system_poll_wait_seconds=0.5",
        "--enable_batching",
        f"--batching_parameters_file={models / 'batching.config'}",
        "--rest_api_num_threads=8",  # a TF Serving flag coserve accepts and names as unused
        command="tfserving",
    )
    try:
        process.wait_ready()
        yield process
    finally:
        process.close()


def post(server: ServerProcess, path: str, body: object) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=30)


def test_the_documented_predict_request_gets_the_documented_answer(
    server: ServerProcess,
) -> None:
    """TF Serving's REST docs: instances [1.0, 2.0, 5.0] predict [2.5, 3.0, 4.5]."""
    response = post(server, "/v1/models/half_plus_two:predict", {"instances": [1.0, 2.0, 5.0]})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [2.5, 3.0, 4.5]}
    version = post(
        server, "/v1/models/half_plus_two/versions/123:predict", {"instances": [[1.0], [3.0]]}
    )
    assert version.json() == {"predictions": [[2.5], [3.5]]}
    columns = post(
        server,
        "/v1/models/half_plus_two:predict",
        {"signature_name": "serving_default", "inputs": {"x": [[0.0]]}},
    )
    assert columns.json() == {"outputs": [[2.0]]}


def test_metadata_matches_tf_servings_on_every_field(server: ServerProcess) -> None:
    """GET .../metadata answers what TF Serving answers for the same model (its test data)."""
    expected = json.loads((DATA / "half_plus_two_model_metadata.json").read_text())
    expected["model_spec"]["name"] = "half_plus_two"  # TF Serving's test served it as "default"
    response = httpx.get(f"{server.url}/v1/models/half_plus_two/metadata", timeout=10)
    assert response.status_code == 200, response.text
    assert response.json() == expected


def test_classify_and_regress_answer_as_tf_serving(server: ServerProcess) -> None:
    """tf.Example features from JSON, through the classify and regress signatures."""
    examples = [{"x": 1.0}, {"x": 3.0}]
    classified = post(
        server,
        "/v1/models/half_plus_two:classify",
        {"signature_name": "classify_x_to_y", "examples": examples},
    )
    assert classified.status_code == 200, classified.text
    assert classified.json() == {"results": [[["", 2.5]], [["", 3.5]]]}
    regressed = post(
        server,
        "/v1/models/half_plus_two:regress",
        {"signature_name": "regress_x_to_y", "examples": examples},
    )
    assert regressed.json() == {"results": [2.5, 3.5]}
    # A context's features reach every example; an example's own feature wins a clash.
    context = post(
        server,
        "/v1/models/half_plus_two:regress",
        {"signature_name": "regress_x_to_y", "context": {"x": 4.0}, "examples": [{}, {"x": 1}]},
    )
    assert context.status_code == 400  # x is a float feature: the int 1 is an int64 one
    context = post(
        server,
        "/v1/models/half_plus_two:regress",
        {"signature_name": "regress_x_to_y", "context": {"x": 4.0}, "examples": [{}, {"x": 1.0}]},
    )
    assert context.json() == {"results": [4.0, 2.5]}


@pytest.mark.parametrize(
    ("method", "body", "message"),
    [
        ("regress", {"signature_name": "regress_x_to_y"}, "key 'examples' is expected"),
        ("regress", {"examples": []}, "'examples' value is an empty array"),
        (
            "regress",
            {"signature_name": "regress_x_to_y", "examples": [{"x": [1, 2.0]}]},
            "Unexpected element type in feature: x expecting type: int64",
        ),
        (
            "regress",
            {"signature_name": "regress_x_to_y", "examples": [{"x": None}]},
            "unexpected JSON type: Null",
        ),
        ("classify", {"signature_name": "nope", "examples": [{}]}, "No signature was found"),
        (
            "classify",
            {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}]},
            'at least one of "classes" or "scores"',
        ),
    ],
)
def test_bad_examples_are_refused_as_tf_serving_refuses_them(
    server: ServerProcess, method: str, body: object, message: str
) -> None:
    response = post(server, f"/v1/models/half_plus_two:{method}", body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_version_labels_and_the_status_of_every_version(server: ServerProcess) -> None:
    """models.config's labels name versions; the status lists every served version."""
    status = httpx.get(f"{server.url}/v1/models/labelled", timeout=10).json()
    assert [s["version"] for s in status["model_version_status"]] == ["2", "1"]
    assert all(s["state"] == "AVAILABLE" for s in status["model_version_status"])
    for label, version in (("stable", "1"), ("canary", "2")):
        response = post(
            server, f"/v1/models/labelled/labels/{label}:predict", {"instances": [[1.0]]}
        )
        assert response.status_code == 200, response.text
        metadata = httpx.get(f"{server.url}/v1/models/labelled/labels/{label}/metadata").json()
        assert metadata["model_spec"]["version"] == version
    unknown = post(server, "/v1/models/labelled/labels/nope:predict", {"instances": [[1.0]]})
    assert unknown.status_code == 400  # TF Serving's INVALID_ARGUMENT
    assert "Unrecognized servable version label: nope" in unknown.json()["error"]


def test_flags_and_files_say_what_they_do_not_apply(server: ServerProcess) -> None:
    """An unused flag and an unused batching field are warnings that name them."""
    output = server.output()
    assert "--rest_api_num_threads is TensorFlow Serving's; coserve does not apply it" in output
    assert "pad_variable_length_inputs is not applied" not in output  # it is: see below


def test_a_new_version_folder_loads_while_serving(server: ServerProcess, models: Path) -> None:
    """--file_system_poll_wait_seconds: a version copied in is served, the old one retired."""
    shutil.copytree(MODEL / "00000123", models / "half_plus_two" / "00000124")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = httpx.get(f"{server.url}/v1/models/half_plus_two", timeout=10).json()
        if [s["version"] for s in status["model_version_status"]] == ["124"]:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"version 124 never replaced 123: {status}\n{server.output()}")
    response = post(server, "/v1/models/half_plus_two:predict", {"instances": [1.0]})
    assert response.json() == {"predictions": [2.5]}


# -- gRPC, through tensorflow-serving-api's own stubs ----------------------------------------


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[object]:
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(server.grpc_target) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def test_grpc_classify_and_regress_with_tf_examples(stub: object) -> None:
    """Classify and Regress take tf.train.Examples (with a context) as TF Serving does."""
    import tensorflow as tf
    from tensorflow_serving.apis import classification_pb2, model_pb2, regression_pb2

    def example(**features: float) -> tf.train.Example:
        return tf.train.Example(
            features=tf.train.Features(
                feature={
                    k: tf.train.Feature(float_list=tf.train.FloatList(value=[v]))
                    for k, v in features.items()
                }
            )
        )

    spec = model_pb2.ModelSpec(name="half_plus_two", signature_name="classify_x_to_y")
    request = classification_pb2.ClassificationRequest(model_spec=spec)
    request.input.example_list.examples.extend([example(x=1.0), example(x=3.0)])
    response = stub.Classify(request, timeout=30)  # type: ignore[attr-defined]
    assert [[(c.label, c.score) for c in r.classes] for r in response.result.classifications] == [
        [("", 2.5)],
        [("", 3.5)],
    ]
    assert response.model_spec.signature_name == "classify_x_to_y"
    spec = model_pb2.ModelSpec(name="half_plus_two", signature_name="regress_x_to_y")
    regress = regression_pb2.RegressionRequest(model_spec=spec)
    regress.input.example_list_with_context.context.CopyFrom(example(x=4.0))
    regress.input.example_list_with_context.examples.extend([example(), example(x=1.0)])
    values = stub.Regress(regress, timeout=30)  # type: ignore[attr-defined]
    assert [r.value for r in values.result.regressions] == [4.0, 2.5]


def test_grpc_metadata_lists_every_signature_and_labels_pick_versions(stub: object) -> None:
    """GetModelMetadata's SignatureDefMap has all five signatures; version_label works."""
    import tensorflow as tf
    from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2, predict_pb2

    request = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=model_pb2.ModelSpec(name="labelled", version_label="stable"),
        metadata_field=["signature_def"],
    )
    response = stub.GetModelMetadata(request, timeout=30)  # type: ignore[attr-defined]
    assert response.model_spec.version.value == 1
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    expected = json.loads((DATA / "half_plus_two_model_metadata.json").read_text())
    assert set(signatures.signature_def) == set(
        expected["metadata"]["signature_def"]["signature_def"]
    )
    classify = signatures.signature_def["classify_x_to_y"]
    assert classify.method_name == "tensorflow/serving/classify"
    assert classify.inputs["inputs"].name == "tf_example:0"
    assert classify.inputs["inputs"].tensor_shape.unknown_rank
    predict = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name="labelled", version_label="canary")
    )
    predict.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0], [2.0]], dtype=tf.float32))
    answer = stub.Predict(predict, timeout=30)  # type: ignore[attr-defined]
    assert answer.model_spec.version.value == 2
    assert tf.make_ndarray(answer.outputs["y"]).tolist() == [[2.5], [3.0]]


def test_pad_variable_length_inputs_batches_requests_of_mixed_lengths(
    server: ServerProcess,
) -> None:
    """pad_variable_length_inputs: true pads dimension 1, to power-of-two lengths.

    As TF Serving pads it (with each tensor's first element), so sentences of lengths 1 to 8
    all go to the bucket of 8, where they may share batches; a sentence's answer is the same
    whether it came alone or among others.
    """
    import concurrent.futures

    from prometheus_client.parser import text_string_to_metric_families

    sentences = [[2 + (i * 7 + j) % 30 for j in range(n)] for i, n in enumerate(range(1, 17))]

    def predict(tokens: list[int]) -> list[float]:
        answer = post(server, "/v1/models/sentiment:predict", {"instances": [tokens]})
        assert answer.status_code == 200, answer.text
        prediction: list[float] = answer.json()["predictions"][0]
        return prediction

    alone = [predict(tokens) for tokens in sentences]
    with concurrent.futures.ThreadPoolExecutor(len(sentences)) as pool:
        together = list(pool.map(predict, sentences))
    assert together == alone
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    requests = {
        sample.labels["length"]: sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "coserve_padding_bucket_requests_total"
        and sample.labels["model"] == "sentiment"
    }
    assert requests == {"8": 2 * 8.0, "16": 2 * 8.0}  # lengths 1-8 and 9-16, twice each
