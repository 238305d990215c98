"""Protocol buffer messages of the gRPC protocols coserve serves.

Where the definitions come from: the ``.proto`` files here are coserve's own, written
after the public specifications, with their packages, message names, field names and
numbers, so that the messages are wire-compatible with their clients. Only the parts
coserve serves are defined.

* ``inference.proto``: the Open Inference Protocol (``inference.GRPCInferenceService``,
  github.com/kserve/open-inference-protocol, ``open_inference_grpc.proto``) plus Triton's
  ``ModelStreamInfer`` (github.com/triton-inference-server/common,
  ``protobuf/grpc_service.proto``) and Triton's statistics and model repository RPCs
  (``ModelStatistics``, ``RepositoryIndex``, ``RepositoryModelLoad``,
  ``RepositoryModelUnload``), the protocol of ``tritonclient.grpc``.
* ``model_config.py``: Triton's ``inference.ModelConfig`` (for the ``ModelConfig`` RPC), built
  at import from coserve's schema of ``config.pbtxt`` rather than from a ``.proto`` file, so
  that the text reader and the wire share one definition.
* ``tf_framework.proto`` and ``tf_error_codes.proto``: TensorFlow's ``TensorProto``,
  ``DataType``, ``SignatureDef`` and related messages, and ``tensorflow.error.Code``
  (github.com/tensorflow/tensorflow, ``tensorflow/core/framework/*.proto``,
  ``tensorflow/core/protobuf/meta_graph.proto``, ``error_codes.proto``).
* ``tf_example.proto``: TensorFlow's ``tf.Example`` (``tensorflow/core/example/*.proto``).
* ``tf_serving.proto``: TensorFlow Serving's ``PredictionService`` (``Classify``,
  ``Regress``, ``Predict``, ``GetModelMetadata``) and ``ModelService`` (``GetModelStatus``)
  (github.com/tensorflow/serving, ``tensorflow_serving/apis/*.proto``).

How to regenerate: the ``*_pb2.py`` modules and ``*_pb2.pyi`` stubs are generated and
committed; after editing a ``.proto`` file run ``python scripts/generate_protos.py`` with
the pinned grpcio-tools its docstring names (``--check`` tells whether they are current).

Why a private pool: TensorFlow, tritonclient and tensorflow-serving-api register messages
of the same full names in protobuf's default descriptor pool, which refuses a second
definition of a name, and coserve runs beside them (TensorFlow models; the real clients in
the tests). So the generated modules load into `POOL` (see ``_pool``), never into the
default pool. Their messages serialize to the same bytes as the originals, but they are
other classes: convert between them with ``SerializeToString`` and ``FromString``, never
by ``CopyFrom`` or by passing one where the other is expected. The same goes for the
well-known types the messages contain: use `Any` and `Int64Value` from here.
"""

from __future__ import annotations

from coserve.server._protos import (
    inference_pb2,
    tf_error_codes_pb2,
    tf_example_pb2,
    tf_framework_pb2,
    tf_serving_pb2,
)
from coserve.server._protos._pool import POOL, Any, Int64Value
from coserve.server._protos.inference_pb2 import (
    InferParameter,
    InferTensorContents,
    ModelInferRequest,
    ModelInferResponse,
    ModelMetadataRequest,
    ModelMetadataResponse,
    ModelReadyRequest,
    ModelReadyResponse,
    ModelRepositoryParameter,
    ModelStatistics,
    ModelStatisticsRequest,
    ModelStatisticsResponse,
    ModelStreamInferResponse,
    RepositoryIndexRequest,
    RepositoryIndexResponse,
    RepositoryModelLoadRequest,
    RepositoryModelLoadResponse,
    RepositoryModelUnloadRequest,
    RepositoryModelUnloadResponse,
    ServerLiveRequest,
    ServerLiveResponse,
    ServerMetadataRequest,
    ServerMetadataResponse,
    ServerReadyRequest,
    ServerReadyResponse,
)
from coserve.server._protos.tf_example_pb2 import Example, Feature
from coserve.server._protos.tf_framework_pb2 import (
    DataType,
    ResourceHandleProto,
    SignatureDef,
    TensorInfo,
    TensorProto,
    TensorShapeProto,
    VariantTensorDataProto,
)
from coserve.server._protos.tf_serving_pb2 import (
    ClassificationRequest,
    ClassificationResponse,
    GetModelMetadataRequest,
    GetModelMetadataResponse,
    GetModelStatusRequest,
    GetModelStatusResponse,
    ModelSpec,
    ModelVersionStatus,
    PredictRequest,
    PredictResponse,
    RegressionRequest,
    RegressionResponse,
    SignatureDefMap,
    StatusProto,
)

__all__ = [
    "CLASSIFY",
    "GET_MODEL_METADATA",
    "GET_MODEL_STATUS",
    "INFERENCE_SERVICE",
    "MODEL_INFER",
    "MODEL_METADATA",
    "MODEL_READY",
    "MODEL_SERVICE",
    "MODEL_STATISTICS",
    "MODEL_STREAM_INFER",
    "POOL",
    "PREDICT",
    "PREDICTION_SERVICE",
    "REGRESS",
    "REPOSITORY_INDEX",
    "REPOSITORY_MODEL_LOAD",
    "REPOSITORY_MODEL_UNLOAD",
    "SERVER_LIVE",
    "SERVER_METADATA",
    "SERVER_READY",
    "Any",
    "ClassificationRequest",
    "ClassificationResponse",
    "DataType",
    "Example",
    "Feature",
    "GetModelMetadataRequest",
    "GetModelMetadataResponse",
    "GetModelStatusRequest",
    "GetModelStatusResponse",
    "InferParameter",
    "InferTensorContents",
    "Int64Value",
    "ModelInferRequest",
    "ModelInferResponse",
    "ModelMetadataRequest",
    "ModelMetadataResponse",
    "ModelReadyRequest",
    "ModelReadyResponse",
    "ModelRepositoryParameter",
    "ModelSpec",
    "ModelStatistics",
    "ModelStatisticsRequest",
    "ModelStatisticsResponse",
    "ModelStreamInferResponse",
    "ModelVersionStatus",
    "PredictRequest",
    "PredictResponse",
    "RegressionRequest",
    "RegressionResponse",
    "RepositoryIndexRequest",
    "RepositoryIndexResponse",
    "RepositoryModelLoadRequest",
    "RepositoryModelLoadResponse",
    "RepositoryModelUnloadRequest",
    "RepositoryModelUnloadResponse",
    "ResourceHandleProto",
    "ServerLiveRequest",
    "ServerLiveResponse",
    "ServerMetadataRequest",
    "ServerMetadataResponse",
    "ServerReadyRequest",
    "ServerReadyResponse",
    "SignatureDef",
    "SignatureDefMap",
    "StatusProto",
    "TensorInfo",
    "TensorProto",
    "TensorShapeProto",
    "VariantTensorDataProto",
    "inference_pb2",
    "tf_error_codes_pb2",
    "tf_example_pb2",
    "tf_framework_pb2",
    "tf_serving_pb2",
]

# The service names, for grpc.method_handlers_generic_handler(service, handlers), whose
# handlers are keyed by the short method names (ServerLive, ..., GetModelStatus).
INFERENCE_SERVICE = "inference.GRPCInferenceService"
PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"

# The full method names, as on the wire (the HTTP/2 :path).
SERVER_LIVE = f"/{INFERENCE_SERVICE}/ServerLive"
SERVER_READY = f"/{INFERENCE_SERVICE}/ServerReady"
MODEL_READY = f"/{INFERENCE_SERVICE}/ModelReady"
SERVER_METADATA = f"/{INFERENCE_SERVICE}/ServerMetadata"
MODEL_METADATA = f"/{INFERENCE_SERVICE}/ModelMetadata"
MODEL_INFER = f"/{INFERENCE_SERVICE}/ModelInfer"
MODEL_STREAM_INFER = f"/{INFERENCE_SERVICE}/ModelStreamInfer"  # bidirectional stream
MODEL_STATISTICS = f"/{INFERENCE_SERVICE}/ModelStatistics"
REPOSITORY_INDEX = f"/{INFERENCE_SERVICE}/RepositoryIndex"
REPOSITORY_MODEL_LOAD = f"/{INFERENCE_SERVICE}/RepositoryModelLoad"
REPOSITORY_MODEL_UNLOAD = f"/{INFERENCE_SERVICE}/RepositoryModelUnload"
PREDICT = f"/{PREDICTION_SERVICE}/Predict"
CLASSIFY = f"/{PREDICTION_SERVICE}/Classify"
REGRESS = f"/{PREDICTION_SERVICE}/Regress"
GET_MODEL_METADATA = f"/{PREDICTION_SERVICE}/GetModelMetadata"
GET_MODEL_STATUS = f"/{MODEL_SERVICE}/GetModelStatus"
