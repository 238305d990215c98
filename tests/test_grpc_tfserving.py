"""TensorFlow Serving's gRPC API, and gRPC robustness, against one real ``coserve serve`` process.

The clients are the real ones: ``tensorflow-serving-api``'s ``PredictionService`` and
``ModelService`` stubs with TensorFlow's own ``make_tensor_proto`` / ``make_ndarray``,
``grpcio-health-checking``'s stub, ``tritonclient.grpc`` and ``tritonclient.http``. Covered:
Predict on the ``digits`` SavedModel (the same answer as over REST, from ``tensor_content`` or
typed values, with TensorFlow's fill conventions), strings, BOOL and INT32 on the ``types``
model, ``output_filter``, GetModelMetadata's ``SignatureDefMap``, GetModelStatus, the status
code of each client mistake (never ``INTERNAL``), the health service, and a fuzz of malformed
messages (raw bytes and semantically random ``ModelInferRequest`` messages) after which the server
still answers correctly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tritonclient.grpc import service_pb2

from helpers import ServerProcess
from server_models import build_repository

pytestmark = pytest.mark.slow  # starts a real server process

TIMEOUT = 30  # seconds, on every RPC
PREDICT = "/tensorflow.serving.PredictionService/Predict"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
# What a fuzzed request may be answered with: an answer, or a client mistake's code; never
# INTERNAL or UNKNOWN (nor UNIMPLEMENTED, RESOURCE_EXHAUSTED: the messages are small, the RPCs
# served).
FUZZ_ANSWERS = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repository = build_repository(tmp_path_factory.mktemp("repository"))
    process = ServerProcess("--model-repository", str(repository), grpc=True)
    try:
        process.wait_ready()
        yield process
    finally:
        process.close()


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield channel


@pytest.fixture(scope="module")
def prediction(channel: grpc.Channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def model_service(channel: grpc.Channel) -> model_service_pb2_grpc.ModelServiceStub:
    return model_service_pb2_grpc.ModelServiceStub(channel)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return (load_digits().images[:8] / 16.0).astype(np.float32)[..., None]


@pytest.fixture(scope="module")
def rest_probabilities(server: ServerProcess, images: np.ndarray) -> np.ndarray:
    """The digits model's answer for ``images`` over the REST (V2) API."""
    return rest_infer(server, images)


def rest_infer(server: ServerProcess, batch: np.ndarray) -> np.ndarray:
    client = triton_http.InferenceServerClient(
        server.url.removeprefix("http://"), connection_timeout=TIMEOUT, network_timeout=TIMEOUT
    )
    try:
        tensor = triton_http.InferInput("image", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=True)
        result = client.infer("digits", [tensor])
    finally:
        client.close()
    probabilities = result.as_numpy("probabilities")
    assert probabilities is not None
    return probabilities


def predict_request(
    model: str = "digits", inputs: dict[str, Any] | None = None, **spec: Any
) -> predict_pb2.PredictRequest:
    """A PredictRequest for ``model`` (``spec``: more model_spec fields) with ``inputs``."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    for name, tensor in (inputs or {}).items():
        request.inputs[name].CopyFrom(tensor)
    return request


def typed_tensor(dtype: int, shape: list[int], **values: Any) -> tensor_pb2.TensorProto:
    """A TensorProto with its values in a typed field (``float_val=[...]``, say)."""
    return tensor_pb2.TensorProto(
        dtype=dtype,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in shape]
        ),
        **values,
    )


def rpc_error(call: Any, request: Any) -> grpc.RpcError:
    """The error ``call(request)`` fails with (the test fails if it succeeds)."""
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=TIMEOUT)
    return caught.value


def outcome(call: Any, request: Any) -> tuple[grpc.StatusCode, str, Any]:
    """``call(request)``'s status code, its details, and the answer (None on an error)."""
    try:
        answer = call(request, timeout=TIMEOUT)
    except grpc.RpcError as error:
        return error.code(), error.details(), None
    return grpc.StatusCode.OK, "", answer


def outputs_of(response: predict_pb2.PredictResponse) -> dict[str, np.ndarray]:
    return {name: tf.make_ndarray(tensor) for name, tensor in response.outputs.items()}


class TestPredict:
    def test_predict_answers_what_the_rest_api_answers(
        self,
        prediction: prediction_service_pb2_grpc.PredictionServiceStub,
        images: np.ndarray,
        rest_probabilities: np.ndarray,
    ) -> None:
        """Predict with make_tensor_proto's tensor_content gives the model's REST answer."""
        proto = tf.make_tensor_proto(images)
        assert proto.tensor_content  # numeric arrays travel as raw bytes
        request = predict_request(inputs={"image": proto})
        response = prediction.Predict(request, timeout=TIMEOUT)
        probabilities = outputs_of(response)["probabilities"]
        assert probabilities.shape == (8, 10)
        np.testing.assert_allclose(probabilities, rest_probabilities, rtol=1e-5, atol=1e-6)
        assert (probabilities.argmax(axis=1) == load_digits().target[:8]).all()

    def test_the_response_model_spec_names_model_version_and_signature(
        self, prediction: prediction_service_pb2_grpc.PredictionServiceStub, images: np.ndarray
    ) -> None:
        """The answer's model_spec says which model, version and signature answered."""
        request = predict_request(inputs={"image": tf.make_tensor_proto(images[:1])})
        spec = prediction.Predict(request, timeout=TIMEOUT).model_spec
        assert spec.name == "digits"
        assert spec.HasField("version")
        assert spec.version.value == 1
        assert spec.signature_name == "serving_default"

    def test_naming_the_version_and_signature_explicitly_works(
        self,
        prediction: prediction_service_pb2_grpc.PredictionServiceStub,
        images: np.ndarray,
        rest_probabilities: np.ndarray,
    ) -> None:
        """model_spec with version 1 and signature_name 'serving_default' is the same model."""
        request = predict_request(
            inputs={"image": tf.make_tensor_proto(images)},
            version=1,
            signature_name="serving_default",
        )
        probabilities = outputs_of(prediction.Predict(request, timeout=TIMEOUT))["probabilities"]
        np.testing.assert_allclose(probabilities, rest_probabilities, rtol=1e-5, atol=1e-6)

    def test_float_val_gives_the_same_answer_as_tensor_content(
        self,
        prediction: prediction_service_pb2_grpc.PredictionServiceStub,
        images: np.ndarray,
        rest_probabilities: np.ndarray,
    ) -> None:
        """The same images in float_val (typed values) are the same tensor as raw bytes."""
        proto = typed_tensor(
            types_pb2.DT_FLOAT, list(images.shape), float_val=images.ravel().tolist()
        )
        request = predict_request(inputs={"image": proto})
        probabilities = outputs_of(prediction.Predict(request, timeout=TIMEOUT))["probabilities"]
        np.testing.assert_allclose(probabilities, rest_probabilities, rtol=1e-5, atol=1e-6)

    @pytest.mark.parametrize(
        "values",
        [[0.0], [], [0.25, 0.75], [0.5] * 63 + [1.0]],
        ids=["one-zero", "none", "two", "all-but-none-missing"],
    )
    def test_fewer_values_than_the_shape_follow_tensorflows_convention(
        self,
        server: ServerProcess,
        prediction: prediction_service_pb2_grpc.PredictionServiceStub,
        values: list[float],
    ) -> None:
        """No values is zeros and fewer values repeat the last one, as tf.make_ndarray reads it."""
        proto = typed_tensor(types_pb2.DT_FLOAT, [1, 8, 8, 1], float_val=values)
        meant = tf.make_ndarray(proto)  # TensorFlow's own reading of the same message
        assert meant.shape == (1, 8, 8, 1)
        request = predict_request(inputs={"image": proto})
        probabilities = outputs_of(prediction.Predict(request, timeout=TIMEOUT))["probabilities"]
        np.testing.assert_allclose(probabilities, rest_infer(server, meant), rtol=1e-5, atol=1e-6)

    def test_one_zero_fills_the_image_like_explicit_zeros(
        self, prediction: prediction_service_pb2_grpc.PredictionServiceStub
    ) -> None:
        """float_val=[0.0] for a [1, 8, 8, 1] image answers exactly what 64 explicit zeros do."""
        shape = [1, 8, 8, 1]
        answers = []
        for proto in (
            typed_tensor(types_pb2.DT_FLOAT, shape, float_val=[0.0]),
            tf.make_tensor_proto(np.zeros(shape, np.float32)),
        ):
            response = prediction.Predict(predict_request(inputs={"image": proto}), timeout=TIMEOUT)
            answers.append(outputs_of(response)["probabilities"])
        np.testing.assert_array_equal(answers[0], answers[1])

    def test_strings_bools_and_int32_reach_the_model_and_come_back(
        self, prediction: prediction_service_pb2_grpc.PredictionServiceStub
    ) -> None:
        """string_val (non-UTF-8 bytes too), BOOL and typed int_val travel to and from the model."""
        text = tf.make_tensor_proto([b"ab", b"\xff\x00"])
        assert text.dtype == types_pb2.DT_STRING
        assert list(text.string_val) == [b"ab", b"\xff\x00"]
        request = predict_request(
            "types",
            {
                "text": text,
                "flag": tf.make_tensor_proto(np.array([True, False])),
                "count": typed_tensor(types_pb2.DT_INT32, [2], int_val=[7, -3]),
            },
        )
        response = prediction.Predict(request, timeout=TIMEOUT)
        assert response.outputs["upper"].dtype == types_pb2.DT_STRING
        assert response.outputs["negated"].dtype == types_pb2.DT_BOOL
        assert response.outputs["doubled"].dtype == types_pb2.DT_INT32
        outputs = outputs_of(response)
        assert outputs["upper"].tolist() == [b"AB", b"\xff\x00"]
        assert outputs["text_bytes"].tolist() == [b"ab", b"\xff\x00"]
        assert outputs["negated"].tolist() == [False, True]
        assert outputs["doubled"].tolist() == [14, -6]
        assert response.model_spec.name == "types"

    def test_output_filter_answers_only_the_outputs_named(
        self, prediction: prediction_service_pb2_grpc.PredictionServiceStub
    ) -> None:
        """output_filter ['doubled', 'negated'] answers those two outputs and no others."""
        request = predict_request("types", types_inputs())
        request.output_filter.extend(["doubled", "negated"])
        outputs = outputs_of(prediction.Predict(request, timeout=TIMEOUT))
        assert set(outputs) == {"doubled", "negated"}
        assert outputs["doubled"].tolist() == [2]

    def test_an_unknown_output_in_the_filter_is_invalid_argument(
        self, prediction: prediction_service_pb2_grpc.PredictionServiceStub
    ) -> None:
        """output_filter naming an output the model does not have is the client's mistake."""
        request = predict_request("types", types_inputs())
        request.output_filter.extend(["doubled", "nonexistent"])
        error = rpc_error(prediction.Predict, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert "nonexistent" in error.details()


def types_inputs() -> dict[str, tensor_pb2.TensorProto]:
    """One valid row for the 'types' model."""
    return {
        "text": tf.make_tensor_proto([b"x"]),
        "flag": tf.make_tensor_proto(np.array([True])),
        "count": tf.make_tensor_proto(np.array([1], np.int32)),
    }


class TestMetadataAndStatus:
    def test_metadata_is_the_serving_default_signature(
        self, prediction: prediction_service_pb2_grpc.PredictionServiceStub
    ) -> None:
        """GetModelMetadata packs a SignatureDefMap naming the inputs, outputs, dtypes, shapes."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=model_pb2.ModelSpec(name="digits"), metadata_field=["signature_def"]
        )
        response = prediction.GetModelMetadata(request, timeout=TIMEOUT)
        assert response.model_spec.name == "digits"
        assert response.model_spec.version.value == 1
        signatures = get_model_metadata_pb2.SignatureDefMap()
        assert response.metadata["signature_def"].Unpack(signatures)
        assert set(signatures.signature_def) == {"serving_default"}
        signature = signatures.signature_def["serving_default"]
        assert set(signature.inputs) == {"image"}
        assert set(signature.outputs) == {"probabilities"}
        image, probabilities = signature.inputs["image"], signature.outputs["probabilities"]
        assert image.dtype == probabilities.dtype == types_pb2.DT_FLOAT
        assert [d.size for d in image.tensor_shape.dim] == [-1, 8, 8, 1]
        assert [d.size for d in probabilities.tensor_shape.dim] == [-1, 10]

    def test_metadata_without_metadata_field_is_invalid_argument(
        self, prediction: prediction_service_pb2_grpc.PredictionServiceStub
    ) -> None:
        """GetModelMetadata must ask for 'signature_def', as TF Serving requires."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=model_pb2.ModelSpec(name="digits")
        )
        error = rpc_error(prediction.GetModelMetadata, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()

    def test_metadata_of_an_unknown_model_is_not_found(
        self, prediction: prediction_service_pb2_grpc.PredictionServiceStub
    ) -> None:
        """GetModelMetadata for a model that is not loaded is NOT_FOUND."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=model_pb2.ModelSpec(name="nope"), metadata_field=["signature_def"]
        )
        error = rpc_error(prediction.GetModelMetadata, request)
        assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()

    @pytest.mark.parametrize("version", [None, 1], ids=["latest", "version-1"])
    def test_status_says_version_1_is_available(
        self, model_service: model_service_pb2_grpc.ModelServiceStub, version: int | None
    ) -> None:
        """GetModelStatus for digits, with or without the version, lists version 1 AVAILABLE."""
        request = get_model_status_pb2.GetModelStatusRequest(
            model_spec=model_pb2.ModelSpec(name="digits")
        )
        if version is not None:
            request.model_spec.version.value = version
        response = model_service.GetModelStatus(request, timeout=TIMEOUT)
        assert [(s.version, s.state) for s in response.model_version_status] == [
            (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)
        ]

    @pytest.mark.parametrize(("model", "version"), [("nope", None), ("digits", 99)])
    def test_status_of_an_unknown_model_or_version_is_not_found(
        self,
        model_service: model_service_pb2_grpc.ModelServiceStub,
        model: str,
        version: int | None,
    ) -> None:
        """GetModelStatus for a model, or a version of one, that is not loaded is NOT_FOUND."""
        request = get_model_status_pb2.GetModelStatusRequest(
            model_spec=model_pb2.ModelSpec(name=model)
        )
        if version is not None:
            request.model_spec.version.value = version
        error = rpc_error(model_service.GetModelStatus, request)
        assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()


def image_tensor(**changes: Any) -> tensor_pb2.TensorProto:
    """A valid one-image tensor_content tensor, then ``changes`` applied to its fields."""
    proto = tf.make_tensor_proto(np.zeros((1, 8, 8, 1), np.float32))
    for key, value in changes.items():
        if key == "shape":
            proto.tensor_shape.CopyFrom(
                tensor_shape_pb2.TensorShapeProto(
                    dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in value]
                )
            )
        else:
            setattr(proto, key, value)
    return proto


class TestErrors:
    @pytest.mark.parametrize(
        ("request_", "code", "mentions"),
        [
            pytest.param(
                predict_request("nope", {"image": image_tensor()}),
                grpc.StatusCode.NOT_FOUND,
                "nope",
                id="unknown-model",
            ),
            pytest.param(
                predict_request("digits", {"image": image_tensor()}, version=99),
                grpc.StatusCode.NOT_FOUND,
                "99",
                id="unknown-version",
            ),
            pytest.param(
                predict_request("digits", {"image": image_tensor()}, signature_name="predict"),
                grpc.StatusCode.INVALID_ARGUMENT,
                "predict",
                id="wrong-signature",
            ),
            pytest.param(
                predict_request(
                    "digits",
                    {"image": typed_tensor(types_pb2.DT_STRING, [1, 8, 8, 1], string_val=[b"0"])},
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "image",
                id="string-for-float",
            ),
            pytest.param(
                predict_request("digits", {"image": image_tensor(shape=[1, 8, 8, 2])}),
                grpc.StatusCode.INVALID_ARGUMENT,
                "bytes",
                id="shape-not-fitting-content",
            ),
            pytest.param(
                predict_request("digits", {"image": image_tensor(shape=[1, -1, 8, 1])}),
                grpc.StatusCode.INVALID_ARGUMENT,
                "image",
                id="negative-dimension",
            ),
            pytest.param(
                predict_request("digits", {"image": image_tensor(dtype=types_pb2.DT_COMPLEX64)}),
                grpc.StatusCode.INVALID_ARGUMENT,
                "DT_COMPLEX64",
                id="unsupported-dtype",
            ),
            pytest.param(
                predict_request("digits", {"image": image_tensor(dtype=types_pb2.DT_STRING)}),
                grpc.StatusCode.INVALID_ARGUMENT,
                "string_val",
                id="string-in-tensor-content",
            ),
            pytest.param(
                predict_request(
                    "digits",
                    {"image": typed_tensor(types_pb2.DT_FLOAT, [1, 8, 8, 1], float_val=[0.0] * 65)},
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "65",
                id="more-values-than-the-shape",
            ),
            pytest.param(
                predict_request("digits", {}),
                grpc.StatusCode.INVALID_ARGUMENT,
                "image",
                id="no-inputs",
            ),
            pytest.param(
                predict_request("digits", {"image": image_tensor(), "extra": image_tensor()}),
                grpc.StatusCode.INVALID_ARGUMENT,
                "extra",
                id="unknown-input",
            ),
            pytest.param(
                predict_request("types", {**types_inputs(), "count": image_tensor()}),
                grpc.StatusCode.INVALID_ARGUMENT,
                "count",
                id="wrong-dtype-for-int32",
            ),
            pytest.param(
                predict_request(
                    "digits", {"image": typed_tensor(types_pb2.DT_FLOAT, [0, 2**62, 8, 1])}
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "image",
                id="empty-but-impossible-shape",
            ),
            pytest.param(
                # Each fill is under the request size limit; the two together are not.
                predict_request(
                    "types",
                    {
                        "text": typed_tensor(types_pb2.DT_STRING, [1], string_val=[b"a"]),
                        "flag": typed_tensor(types_pb2.DT_BOOL, [40_000_000], bool_val=[True]),
                        "count": typed_tensor(types_pb2.DT_INT32, [10_000_000], int_val=[1]),
                    },
                ),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "bytes left",
                id="fills-over-the-size-limit-together",
            ),
        ],
    )
    def test_client_mistakes_in_predict_get_their_status_code(
        self,
        prediction: prediction_service_pb2_grpc.PredictionServiceStub,
        request_: predict_pb2.PredictRequest,
        code: grpc.StatusCode,
        mentions: str,
    ) -> None:
        """Each mistake gets its code (never INTERNAL) and a message naming what was wrong."""
        error = rpc_error(prediction.Predict, request_)
        assert error.code() == code, error.details()
        assert mentions in error.details()

    def test_an_unknown_version_label_is_invalid_and_named(
        self, prediction: prediction_service_pb2_grpc.PredictionServiceStub
    ) -> None:
        """model_spec.version_label that the model lacks is INVALID_ARGUMENT (TF Serving's)."""
        request = predict_request("digits", {"image": image_tensor()}, version_label="stable")
        error = rpc_error(prediction.Predict, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert "stable" in error.details()
        assert "version label" in error.details()

    def test_a_huge_shape_with_one_value_is_refused_not_an_internal_error(
        self, prediction: prediction_service_pb2_grpc.PredictionServiceStub
    ) -> None:
        """float_val=[0.0] with a shape of 2**40 images is the client's mistake, not a crash.

        TensorFlow's fill convention must not let a tiny message ask for 256 TiB: the answer is
        INVALID_ARGUMENT or RESOURCE_EXHAUSTED (a size limit), never INTERNAL.
        """
        proto = typed_tensor(types_pb2.DT_FLOAT, [2**40, 8, 8, 1], float_val=[0.0])
        error = rpc_error(prediction.Predict, predict_request("digits", {"image": proto}))
        assert error.code() in {
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        }, (error.code(), error.details())

    def test_classify_and_regress_without_examples_or_signature_are_invalid(
        self, prediction: prediction_service_pb2_grpc.PredictionServiceStub
    ) -> None:
        """No examples, or a model without that signature: INVALID_ARGUMENT saying which.

        (Classify and Regress on a model that has the signatures: test_tfserving_dropin.)
        """
        spec = model_pb2.ModelSpec(name="digits", signature_name="classify")
        for call, request in (
            (prediction.Classify, classification_pb2.ClassificationRequest(model_spec=spec)),
            (prediction.Regress, regression_pb2.RegressionRequest(model_spec=spec)),
        ):
            error = rpc_error(call, request)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
            assert "Input is empty" in error.details()
        request = classification_pb2.ClassificationRequest(model_spec=spec)
        request.input.example_list.examples.add()
        error = rpc_error(prediction.Classify, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert "No signature was found with the name: classify" in error.details()


# -- fuzzing --------------------------------------------------------------------------------------

DATATYPES = [
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "BF16", "FP32", "FP64", "BYTES",
]  # fmt: skip
JUNK_DATATYPES = ["", "fp32", "bytes", "FLOAT", "STRING", "TYPE_FP32", "FP8", "\x00", "ÿ"]
NAMES = ["image", "text", "flag", "count", "probabilities", "", "junk"]
DIMENSIONS = st.one_of(
    st.sampled_from([-(2**63), -1, 0, 1, 2, 8, 64, 2**31, 2**62, 2**63 - 1]),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
CONTENT_FIELDS = {
    "bool_contents": st.lists(st.booleans(), max_size=70),
    "int_contents": st.lists(st.integers(-(2**31), 2**31 - 1), max_size=70),
    "int64_contents": st.lists(st.integers(-(2**63), 2**63 - 1), max_size=70),
    "uint_contents": st.lists(st.integers(0, 2**32 - 1), max_size=70),
    "uint64_contents": st.lists(st.integers(0, 2**64 - 1), max_size=70),
    "fp32_contents": st.lists(st.floats(width=32), max_size=70),
    "fp64_contents": st.lists(st.floats(), max_size=70),
    "bytes_contents": st.lists(st.binary(max_size=8), max_size=70),
}


@st.composite
def parameters(draw: st.DrawFn) -> dict[str, service_pb2.InferParameter]:
    """Request or tensor parameters, Triton's scheduling ones included, of any variant."""
    values = st.one_of(
        st.builds(service_pb2.InferParameter, bool_param=st.booleans()),
        st.builds(service_pb2.InferParameter, int64_param=st.integers(-(2**63), 2**63 - 1)),
        st.builds(service_pb2.InferParameter, string_param=st.text(max_size=8)),
        st.builds(service_pb2.InferParameter, double_param=st.floats()),
        st.builds(service_pb2.InferParameter, uint64_param=st.integers(0, 2**64 - 1)),
        st.just(service_pb2.InferParameter()),  # no variant set at all
    )
    keys = st.sampled_from(["priority", "timeout", "binary_data_size", "sequence_id", "x"])
    return draw(st.dictionaries(keys, values, max_size=3))


@st.composite
def infer_tensors(draw: st.DrawFn) -> service_pb2.ModelInferRequest.InferInputTensor:
    tensor = service_pb2.ModelInferRequest.InferInputTensor(
        name=draw(st.sampled_from(NAMES)),
        datatype=draw(st.sampled_from(DATATYPES + JUNK_DATATYPES)),
        shape=draw(
            st.one_of(
                st.lists(DIMENSIONS, max_size=5),
                st.lists(st.just(1), min_size=30, max_size=40),  # around the rank limit
            )
        ),
    )
    for key, value in draw(parameters()).items():
        tensor.parameters[key].CopyFrom(value)
    # Typed contents: none, the field its datatype would use, or any mix of fields.
    fields = draw(st.lists(st.sampled_from(sorted(CONTENT_FIELDS)), max_size=2, unique=True))
    for field in fields:
        getattr(tensor.contents, field).extend(draw(CONTENT_FIELDS[field]))
    return tensor


VERSIONS = st.one_of(st.just(""), st.just("1"), st.sampled_from(["2", "-1", "latest", "01"]))
OUTPUT_NAMES = [*NAMES, "upper", "negated", "doubled", "text_bytes"]


def build_infer_request(
    model: str,
    version: str,
    tensors: list[service_pb2.ModelInferRequest.InferInputTensor],
    raw: list[bytes],
    outputs: list[str],
    request_parameters: dict[str, service_pb2.InferParameter],
) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(
        model_name=model,
        model_version=version,
        inputs=tensors,
        raw_input_contents=raw,
        outputs=[
            service_pb2.ModelInferRequest.InferRequestedOutputTensor(name=name) for name in outputs
        ],
    )
    for key, value in request_parameters.items():
        request.parameters[key].CopyFrom(value)
    return request


@st.composite
def random_infer_requests(draw: st.DrawFn) -> service_pb2.ModelInferRequest:
    """ModelInferRequests whose tensors are random from end to end."""
    tensors = draw(st.lists(infer_tensors(), max_size=4))
    raw = draw(
        st.one_of(
            st.just([]),
            st.lists(st.binary(max_size=300), max_size=4),
            # The right number of entries, so the byte-size checks are reached.
            st.lists(
                st.sampled_from([b"", b"\x00" * 256, b"\x01\x00\x00\x00a", b"\xff" * 4]),
                min_size=len(tensors),
                max_size=len(tensors),
            ),
        )
    )
    return build_infer_request(
        draw(st.sampled_from(["digits", "types"])),
        draw(VERSIONS),
        tensors,
        raw,
        draw(st.lists(st.sampled_from(OUTPUT_NAMES), max_size=3)),
        draw(parameters()),
    )


def length_prefixed(elements: list[bytes]) -> bytes:
    return b"".join(len(e).to_bytes(4, "little") + e for e in elements)


@st.composite
def near_valid_infer_requests(draw: st.DrawFn) -> service_pb2.ModelInferRequest:
    """A valid request for digits or types (raw or typed), then a few random mutations.

    These get past decoding to validation, scheduling and the models themselves.
    """
    tensor_type = service_pb2.ModelInferRequest.InferInputTensor
    model = draw(st.sampled_from(["digits", "types"]))
    rows = draw(st.integers(0, 3))
    typed = draw(st.booleans())
    tensors, raw = [], []
    if model == "digits":
        values = draw(st.lists(st.floats(width=32), min_size=rows * 64, max_size=rows * 64))
        tensor = tensor_type(name="image", datatype="FP32", shape=[rows, 8, 8, 1])
        if typed:
            tensor.contents.fp32_contents.extend(values)
        else:
            raw.append(np.array(values, np.float32).tobytes())
        tensors.append(tensor)
    else:
        text = draw(st.lists(st.binary(max_size=6), min_size=rows, max_size=rows))
        flag = draw(st.lists(st.booleans(), min_size=rows, max_size=rows))
        count = draw(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=rows, max_size=rows))
        for name, datatype, elements, field, binary in (
            ("text", "BYTES", text, "bytes_contents", length_prefixed(text)),
            ("flag", "BOOL", flag, "bool_contents", np.array(flag, np.bool_).tobytes()),
            ("count", "INT32", count, "int_contents", np.array(count, np.int32).tobytes()),
        ):
            tensor = tensor_type(name=name, datatype=datatype, shape=[rows])
            if typed:
                getattr(tensor.contents, field).extend(elements)
            else:
                raw.append(binary)
            tensors.append(tensor)
    version, outputs, request_parameters = "", [], {}
    mutations = st.sampled_from(
        [
            "datatype", "shape", "dimension", "raw", "no raw", "typed", "extra input",
            "drop input", "duplicate input", "parameters", "tensor parameters", "outputs",
            "version", "model",
        ]
    )  # fmt: skip
    for mutation in draw(st.lists(mutations, max_size=3)):
        index = draw(st.integers(0, len(tensors) - 1)) if tensors else None
        if mutation == "datatype" and index is not None:
            tensors[index].datatype = draw(st.sampled_from(DATATYPES + JUNK_DATATYPES))
        elif mutation == "shape" and index is not None:
            tensors[index].shape[:] = draw(st.lists(DIMENSIONS, max_size=5))
        elif mutation == "dimension" and index is not None and tensors[index].shape:
            dimension = draw(st.integers(0, len(tensors[index].shape) - 1))
            tensors[index].shape[dimension] = draw(DIMENSIONS)
        elif mutation == "raw" and raw:
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.binary(max_size=300))
        elif mutation == "no raw":
            raw = []
        elif mutation == "typed" and index is not None:
            field = draw(st.sampled_from(sorted(CONTENT_FIELDS)))
            getattr(tensors[index].contents, field).extend(draw(CONTENT_FIELDS[field]))
        elif mutation == "extra input":
            tensors.append(draw(infer_tensors()))
        elif mutation == "drop input" and index is not None:
            del tensors[index]
            if len(raw) > index:
                del raw[index]
        elif mutation == "duplicate input" and index is not None:
            tensors.append(tensors[index])
            if len(raw) > index:
                raw.append(raw[index])
        elif mutation == "parameters":
            request_parameters = draw(parameters())
        elif mutation == "tensor parameters" and index is not None:
            for key, value in draw(parameters()).items():
                tensors[index].parameters[key].CopyFrom(value)
        elif mutation == "outputs":
            outputs = draw(st.lists(st.sampled_from(OUTPUT_NAMES), max_size=3))
        elif mutation == "version":
            version = draw(VERSIONS)
        elif mutation == "model":
            model = "types" if model == "digits" else "digits"
    return build_infer_request(model, version, tensors, raw, outputs, request_parameters)


def assert_still_serves(
    server: ServerProcess, channel: grpc.Channel, images: np.ndarray, expected: np.ndarray
) -> None:
    """A good request on each gRPC API (and over REST) still gets the right answer."""
    client = triton_grpc.InferenceServerClient(server.grpc_target)
    try:
        tensor = triton_grpc.InferInput("image", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images)
        result = client.infer("digits", [tensor], client_timeout=TIMEOUT)
    finally:
        client.close()
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=1e-5, atol=1e-6)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_request(inputs={"image": tf.make_tensor_proto(images)})
    probabilities = outputs_of(stub.Predict(request, timeout=TIMEOUT))["probabilities"]
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rest_infer(server, images), expected, rtol=1e-5, atol=1e-6)


class TestFuzz:
    @pytest.mark.parametrize("path", [MODEL_INFER, PREDICT])
    def test_undecodable_bytes_are_invalid_argument(self, channel: grpc.Channel, path: str) -> None:
        """A message that is not a protocol buffer at all is the client's mistake.

        One byte 0xFF is a truncated tag; 12 02 C3 28 is field 2 (a string in both requests)
        holding invalid UTF-8, which proto3 refuses to parse.
        """
        call = channel.unary_unary(path)
        for body in (b"\xff", b"\x12\x02\xc3\x28"):
            error = rpc_error(call, body)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (body, error.details())

    @pytest.mark.timeout(180)
    def test_random_bytes_never_get_internal_or_unknown(
        self,
        server: ServerProcess,
        channel: grpc.Channel,
        images: np.ndarray,
        rest_probabilities: np.ndarray,
    ) -> None:
        """Random request bodies on ModelInfer and Predict: a client mistake or an answer.

        Then the server still answers good requests correctly.
        """
        calls = {path: channel.unary_unary(path) for path in (MODEL_INFER, PREDICT)}

        @settings(max_examples=150, deadline=None, database=None)
        @given(path=st.sampled_from(sorted(calls)), body=st.binary(max_size=300))
        def fuzz(path: str, body: bytes) -> None:
            code, details, _ = outcome(calls[path], body)
            assert code in FUZZ_ANSWERS, (path, body, code, details)

        fuzz()
        assert_still_serves(server, channel, images, rest_probabilities)

    @pytest.mark.timeout(180)
    def test_semantically_random_infer_requests_never_get_internal_or_unknown(
        self,
        server: ServerProcess,
        channel: grpc.Channel,
        images: np.ndarray,
        rest_probabilities: np.ndarray,
    ) -> None:
        """Well-formed ModelInferRequests with senseless contents: a client mistake or an answer.

        Random and junk datatypes, negative and huge shapes, raw and typed contents mixed, and
        scheduling parameters of every type; then the server still answers good requests.
        """
        stub = channel.unary_unary(
            MODEL_INFER,
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )

        @settings(max_examples=150, deadline=None, database=None)
        @given(request=st.one_of(near_valid_infer_requests(), random_infer_requests()))
        def fuzz(request: service_pb2.ModelInferRequest) -> None:
            code, details, answer = outcome(stub, request)
            assert code in FUZZ_ANSWERS, (request, code, details)
            if code == grpc.StatusCode.OK:
                assert answer.model_name == request.model_name
                assert len(answer.raw_output_contents) == len(answer.outputs)

        fuzz()
        assert_still_serves(server, channel, images, rest_probabilities)


class TestHealth:
    @pytest.mark.parametrize(
        "service",
        [
            "",
            "tensorflow.serving.PredictionService",
            "tensorflow.serving.ModelService",
            "inference.GRPCInferenceService",
        ],
    )
    def test_the_server_and_each_service_are_serving(
        self, channel: grpc.Channel, service: str
    ) -> None:
        """grpc.health.v1 Check answers SERVING for the server ('') and each service it serves."""
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
        assert response.status == health_pb2.HealthCheckResponse.SERVING

    def test_an_unknown_service_is_not_found(self, channel: grpc.Channel) -> None:
        """Check for a service the server does not serve is NOT_FOUND (grpcio's health servicer)."""
        stub = health_pb2_grpc.HealthStub(channel)
        error = rpc_error(stub.Check, health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert error.code() == grpc.StatusCode.NOT_FOUND
