"""The schemas of the text-format files coserve reads, for :func:`coserve.models._textproto.decode`.

* :data:`TRITON_MODEL_CONFIG`: Triton's ``config.pbtxt``, ``inference.ModelConfig`` of
  model_config.proto, with every nested message type;
* :data:`TFS_MODEL_SERVER_CONFIG`: TF Serving's ``--model_config_file``,
  ``tensorflow.serving.ModelServerConfig``;
* :data:`TFS_BATCHING_PARAMETERS`: TF Serving's ``--batching_parameters_file``,
  ``tensorflow.serving.BatchingParameters``.

This is data, not a binding: nothing here imports protobuf or the generated ``_pb2`` modules.

The first two sections are generated from the official descriptors (tritonclient 2.73.0's
``tritonclient.grpc.model_config_pb2`` and tensorflow-serving-api 2.21.0's
``tensorflow_serving.config.model_server_config_pb2``) by ``render_schemas`` in
tests/test_textproto.py: regenerate with ``.venv/bin/python tests/test_textproto.py`` and
``ruff format`` rather than edit by hand. tests/test_textproto.py also checks them against the
installed descriptors field by field (names, kinds, repetition, oneofs, enum values), so a newer
proto that adds fields fails the tests until this file is regenerated.

BatchingParameters is written by hand: its proto (tensorflow_serving/servables/tensorflow/
session_bundle_config.proto) is not in the pip package. Fields 1 to 7 are as that proto declares
them; ``enable_large_batch_splitting`` (BoolValue) and ``max_execution_batch_size`` (Int64Value)
are the later wrapper fields that TF Serving's bundle_factory_util.h reads with ``has_...()`` and
``.value()``. The wrappers decode as messages: ``max_batch_size { value: 8 }`` is
``{"max_batch_size": {"value": 8}}``.
"""

from __future__ import annotations

from coserve.models._textproto import (
    EnumSchema,
    MessageSchema,
    enum_field,
    map_field,
    message_field,
    scalar_field,
)

__all__ = ["TFS_BATCHING_PARAMETERS", "TFS_MODEL_SERVER_CONFIG", "TRITON_MODEL_CONFIG"]

# -- Triton: inference.ModelConfig (generated) ---------------------------------------------------

_DATA_TYPE = EnumSchema(
    "inference.DataType",
    {
        "TYPE_INVALID": 0,
        "TYPE_BOOL": 1,
        "TYPE_UINT8": 2,
        "TYPE_UINT16": 3,
        "TYPE_UINT32": 4,
        "TYPE_UINT64": 5,
        "TYPE_INT8": 6,
        "TYPE_INT16": 7,
        "TYPE_INT32": 8,
        "TYPE_INT64": 9,
        "TYPE_FP16": 10,
        "TYPE_FP32": 11,
        "TYPE_FP64": 12,
        "TYPE_STRING": 13,
        "TYPE_BF16": 14,
    },
)

_MODEL_INPUT_FORMAT = EnumSchema(
    "inference.ModelInput.Format", {"FORMAT_NONE": 0, "FORMAT_NHWC": 1, "FORMAT_NCHW": 2}
)

_BATCH_INPUT_KIND = EnumSchema(
    "inference.BatchInput.Kind",
    {
        "BATCH_ELEMENT_COUNT": 0,
        "BATCH_ACCUMULATED_ELEMENT_COUNT": 1,
        "BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO": 2,
        "BATCH_MAX_ELEMENT_COUNT_AS_SHAPE": 3,
        "BATCH_ITEM_SHAPE": 4,
        "BATCH_ITEM_SHAPE_FLATTEN": 5,
    },
)

_BATCH_OUTPUT_KIND = EnumSchema("inference.BatchOutput.Kind", {"BATCH_SCATTER_WITH_INPUT_SHAPE": 0})

_MODEL_OPTIMIZATION_POLICY_MODEL_PRIORITY = EnumSchema(
    "inference.ModelOptimizationPolicy.ModelPriority",
    {"PRIORITY_DEFAULT": 0, "PRIORITY_MAX": 1, "PRIORITY_MIN": 2},
)

_MODEL_QUEUE_POLICY_TIMEOUT_ACTION = EnumSchema(
    "inference.ModelQueuePolicy.TimeoutAction", {"REJECT": 0, "DELAY": 1}
)

_CONTROL_KIND = EnumSchema(
    "inference.ModelSequenceBatching.Control.Kind",
    {
        "CONTROL_SEQUENCE_START": 0,
        "CONTROL_SEQUENCE_READY": 1,
        "CONTROL_SEQUENCE_END": 2,
        "CONTROL_SEQUENCE_CORRID": 3,
    },
)

_MODEL_INSTANCE_GROUP_KIND = EnumSchema(
    "inference.ModelInstanceGroup.Kind",
    {"KIND_AUTO": 0, "KIND_GPU": 1, "KIND_CPU": 2, "KIND_MODEL": 3},
)

_SECONDARY_DEVICE_SECONDARY_DEVICE_KIND = EnumSchema(
    "inference.ModelInstanceGroup.SecondaryDevice.SecondaryDeviceKind", {"KIND_NVDLA": 0}
)

_MODEL_VERSION_POLICY_LATEST = MessageSchema(
    "inference.ModelVersionPolicy.Latest",
    scalar_field("num_versions", "uint32"),
)

_MODEL_VERSION_POLICY_ALL = MessageSchema(
    "inference.ModelVersionPolicy.All",
)

_MODEL_VERSION_POLICY_SPECIFIC = MessageSchema(
    "inference.ModelVersionPolicy.Specific",
    scalar_field("versions", "int64", repeated=True),
)

_MODEL_VERSION_POLICY = MessageSchema(
    "inference.ModelVersionPolicy",
    message_field("latest", _MODEL_VERSION_POLICY_LATEST, oneof="policy_choice"),
    message_field("all", _MODEL_VERSION_POLICY_ALL, oneof="policy_choice"),
    message_field("specific", _MODEL_VERSION_POLICY_SPECIFIC, oneof="policy_choice"),
)

_MODEL_TENSOR_RESHAPE = MessageSchema(
    "inference.ModelTensorReshape",
    scalar_field("shape", "int64", repeated=True),
)

_MODEL_INPUT = MessageSchema(
    "inference.ModelInput",
    scalar_field("name", "string"),
    enum_field("data_type", _DATA_TYPE),
    enum_field("format", _MODEL_INPUT_FORMAT),
    scalar_field("dims", "int64", repeated=True),
    message_field("reshape", _MODEL_TENSOR_RESHAPE),
    scalar_field("is_shape_tensor", "bool"),
    scalar_field("allow_ragged_batch", "bool"),
    scalar_field("optional", "bool"),
    scalar_field("is_non_linear_format_io", "bool"),
)

_MODEL_OUTPUT = MessageSchema(
    "inference.ModelOutput",
    scalar_field("name", "string"),
    enum_field("data_type", _DATA_TYPE),
    scalar_field("dims", "int64", repeated=True),
    message_field("reshape", _MODEL_TENSOR_RESHAPE),
    scalar_field("label_filename", "string"),
    scalar_field("is_shape_tensor", "bool"),
    scalar_field("is_non_linear_format_io", "bool"),
)

_BATCH_INPUT = MessageSchema(
    "inference.BatchInput",
    enum_field("kind", _BATCH_INPUT_KIND),
    scalar_field("target_name", "string", repeated=True),
    enum_field("data_type", _DATA_TYPE),
    scalar_field("source_input", "string", repeated=True),
)

_BATCH_OUTPUT = MessageSchema(
    "inference.BatchOutput",
    scalar_field("target_name", "string", repeated=True),
    enum_field("kind", _BATCH_OUTPUT_KIND),
    scalar_field("source_input", "string", repeated=True),
)

_MODEL_OPTIMIZATION_POLICY_GRAPH = MessageSchema(
    "inference.ModelOptimizationPolicy.Graph",
    scalar_field("level", "int32"),
)

_GRAPH_SPEC_SHAPE = MessageSchema(
    "inference.ModelOptimizationPolicy.Cuda.GraphSpec.Shape",
    scalar_field("dim", "int64", repeated=True),
)

_GRAPH_SPEC_LOWER_BOUND = MessageSchema(
    "inference.ModelOptimizationPolicy.Cuda.GraphSpec.LowerBound",
    scalar_field("batch_size", "int32"),
    map_field("input", "string", _GRAPH_SPEC_SHAPE),
)

_CUDA_GRAPH_SPEC = MessageSchema(
    "inference.ModelOptimizationPolicy.Cuda.GraphSpec",
    scalar_field("batch_size", "int32"),
    map_field("input", "string", _GRAPH_SPEC_SHAPE),
    message_field("graph_lower_bound", _GRAPH_SPEC_LOWER_BOUND),
)

_MODEL_OPTIMIZATION_POLICY_CUDA = MessageSchema(
    "inference.ModelOptimizationPolicy.Cuda",
    scalar_field("graphs", "bool"),
    scalar_field("busy_wait_events", "bool"),
    message_field("graph_spec", _CUDA_GRAPH_SPEC, repeated=True),
    scalar_field("output_copy_stream", "bool"),
)

_EXECUTION_ACCELERATORS_ACCELERATOR = MessageSchema(
    "inference.ModelOptimizationPolicy.ExecutionAccelerators.Accelerator",
    scalar_field("name", "string"),
    map_field("parameters", "string", "string"),
)

_MODEL_OPTIMIZATION_POLICY_EXECUTION_ACCELERATORS = MessageSchema(
    "inference.ModelOptimizationPolicy.ExecutionAccelerators",
    message_field("gpu_execution_accelerator", _EXECUTION_ACCELERATORS_ACCELERATOR, repeated=True),
    message_field("cpu_execution_accelerator", _EXECUTION_ACCELERATORS_ACCELERATOR, repeated=True),
)

_MODEL_OPTIMIZATION_POLICY_PINNED_MEMORY_BUFFER = MessageSchema(
    "inference.ModelOptimizationPolicy.PinnedMemoryBuffer",
    scalar_field("enable", "bool"),
)

_MODEL_OPTIMIZATION_POLICY = MessageSchema(
    "inference.ModelOptimizationPolicy",
    message_field("graph", _MODEL_OPTIMIZATION_POLICY_GRAPH),
    enum_field("priority", _MODEL_OPTIMIZATION_POLICY_MODEL_PRIORITY),
    message_field("cuda", _MODEL_OPTIMIZATION_POLICY_CUDA),
    message_field("execution_accelerators", _MODEL_OPTIMIZATION_POLICY_EXECUTION_ACCELERATORS),
    message_field("input_pinned_memory", _MODEL_OPTIMIZATION_POLICY_PINNED_MEMORY_BUFFER),
    message_field("output_pinned_memory", _MODEL_OPTIMIZATION_POLICY_PINNED_MEMORY_BUFFER),
    scalar_field("gather_kernel_buffer_threshold", "uint32"),
    scalar_field("eager_batching", "bool"),
)

_MODEL_QUEUE_POLICY = MessageSchema(
    "inference.ModelQueuePolicy",
    enum_field("timeout_action", _MODEL_QUEUE_POLICY_TIMEOUT_ACTION),
    scalar_field("default_timeout_microseconds", "uint64"),
    scalar_field("allow_timeout_override", "bool"),
    scalar_field("max_queue_size", "uint32"),
)

_MODEL_DYNAMIC_BATCHING = MessageSchema(
    "inference.ModelDynamicBatching",
    scalar_field("preferred_batch_size", "int32", repeated=True),
    scalar_field("max_queue_delay_microseconds", "uint64"),
    scalar_field("preserve_ordering", "bool"),
    scalar_field("priority_levels", "uint64"),
    scalar_field("default_priority_level", "uint64"),
    message_field("default_queue_policy", _MODEL_QUEUE_POLICY),
    map_field("priority_queue_policy", "uint64", _MODEL_QUEUE_POLICY),
)

_MODEL_SEQUENCE_BATCHING_STRATEGY_DIRECT = MessageSchema(
    "inference.ModelSequenceBatching.StrategyDirect",
    scalar_field("max_queue_delay_microseconds", "uint64"),
    scalar_field("minimum_slot_utilization", "float"),
)

_MODEL_SEQUENCE_BATCHING_STRATEGY_OLDEST = MessageSchema(
    "inference.ModelSequenceBatching.StrategyOldest",
    scalar_field("max_candidate_sequences", "int32"),
    scalar_field("preferred_batch_size", "int32", repeated=True),
    scalar_field("max_queue_delay_microseconds", "uint64"),
    scalar_field("preserve_ordering", "bool"),
)

_MODEL_SEQUENCE_BATCHING_CONTROL = MessageSchema(
    "inference.ModelSequenceBatching.Control",
    enum_field("kind", _CONTROL_KIND),
    scalar_field("int32_false_true", "int32", repeated=True),
    scalar_field("fp32_false_true", "float", repeated=True),
    scalar_field("bool_false_true", "bool", repeated=True),
    enum_field("data_type", _DATA_TYPE),
)

_MODEL_SEQUENCE_BATCHING_CONTROL_INPUT = MessageSchema(
    "inference.ModelSequenceBatching.ControlInput",
    scalar_field("name", "string"),
    message_field("control", _MODEL_SEQUENCE_BATCHING_CONTROL, repeated=True),
)

_MODEL_SEQUENCE_BATCHING_INITIAL_STATE = MessageSchema(
    "inference.ModelSequenceBatching.InitialState",
    enum_field("data_type", _DATA_TYPE),
    scalar_field("dims", "int64", repeated=True),
    scalar_field("zero_data", "bool", oneof="state_data"),
    scalar_field("data_file", "string", oneof="state_data"),
    scalar_field("name", "string"),
)

_MODEL_SEQUENCE_BATCHING_STATE = MessageSchema(
    "inference.ModelSequenceBatching.State",
    scalar_field("input_name", "string"),
    scalar_field("output_name", "string"),
    enum_field("data_type", _DATA_TYPE),
    scalar_field("dims", "int64", repeated=True),
    message_field("initial_state", _MODEL_SEQUENCE_BATCHING_INITIAL_STATE, repeated=True),
    scalar_field("use_same_buffer_for_input_output", "bool"),
    scalar_field("use_growable_memory", "bool"),
)

_MODEL_SEQUENCE_BATCHING = MessageSchema(
    "inference.ModelSequenceBatching",
    message_field("direct", _MODEL_SEQUENCE_BATCHING_STRATEGY_DIRECT, oneof="strategy_choice"),
    message_field("oldest", _MODEL_SEQUENCE_BATCHING_STRATEGY_OLDEST, oneof="strategy_choice"),
    scalar_field("max_sequence_idle_microseconds", "uint64"),
    message_field("control_input", _MODEL_SEQUENCE_BATCHING_CONTROL_INPUT, repeated=True),
    message_field("state", _MODEL_SEQUENCE_BATCHING_STATE, repeated=True),
    scalar_field("iterative_sequence", "bool"),
)

_MODEL_ENSEMBLING_STEP = MessageSchema(
    "inference.ModelEnsembling.Step",
    scalar_field("model_name", "string"),
    scalar_field("model_version", "int64"),
    map_field("input_map", "string", "string"),
    map_field("output_map", "string", "string"),
    scalar_field("model_namespace", "string"),
)

_MODEL_ENSEMBLING = MessageSchema(
    "inference.ModelEnsembling",
    message_field("step", _MODEL_ENSEMBLING_STEP, repeated=True),
    scalar_field("max_inflight_requests", "uint32"),
)

_MODEL_RATE_LIMITER_RESOURCE = MessageSchema(
    "inference.ModelRateLimiter.Resource",
    scalar_field("name", "string"),
    scalar_field("global", "bool"),
    scalar_field("count", "uint32"),
)

_MODEL_RATE_LIMITER = MessageSchema(
    "inference.ModelRateLimiter",
    message_field("resources", _MODEL_RATE_LIMITER_RESOURCE, repeated=True),
    scalar_field("priority", "uint32"),
)

_MODEL_INSTANCE_GROUP_SECONDARY_DEVICE = MessageSchema(
    "inference.ModelInstanceGroup.SecondaryDevice",
    enum_field("kind", _SECONDARY_DEVICE_SECONDARY_DEVICE_KIND),
    scalar_field("device_id", "int64"),
)

_MODEL_INSTANCE_GROUP = MessageSchema(
    "inference.ModelInstanceGroup",
    scalar_field("name", "string"),
    enum_field("kind", _MODEL_INSTANCE_GROUP_KIND),
    scalar_field("count", "int32"),
    message_field("rate_limiter", _MODEL_RATE_LIMITER),
    scalar_field("gpus", "int32", repeated=True),
    message_field("secondary_devices", _MODEL_INSTANCE_GROUP_SECONDARY_DEVICE, repeated=True),
    scalar_field("profile", "string", repeated=True),
    scalar_field("passive", "bool"),
    scalar_field("host_policy", "string"),
)

_MODEL_PARAMETER = MessageSchema(
    "inference.ModelParameter",
    scalar_field("string_value", "string"),
)

_MODEL_WARMUP_INPUT = MessageSchema(
    "inference.ModelWarmup.Input",
    enum_field("data_type", _DATA_TYPE),
    scalar_field("dims", "int64", repeated=True),
    scalar_field("zero_data", "bool", oneof="input_data_type"),
    scalar_field("random_data", "bool", oneof="input_data_type"),
    scalar_field("input_data_file", "string", oneof="input_data_type"),
)

_MODEL_WARMUP = MessageSchema(
    "inference.ModelWarmup",
    scalar_field("name", "string"),
    scalar_field("batch_size", "uint32"),
    map_field("inputs", "string", _MODEL_WARMUP_INPUT),
    scalar_field("count", "uint32"),
)

_MODEL_OPERATIONS = MessageSchema(
    "inference.ModelOperations",
    scalar_field("op_library_filename", "string", repeated=True),
)

_MODEL_TRANSACTION_POLICY = MessageSchema(
    "inference.ModelTransactionPolicy",
    scalar_field("decoupled", "bool"),
)

_MODEL_REPOSITORY_AGENTS_AGENT = MessageSchema(
    "inference.ModelRepositoryAgents.Agent",
    scalar_field("name", "string"),
    map_field("parameters", "string", "string"),
)

_MODEL_REPOSITORY_AGENTS = MessageSchema(
    "inference.ModelRepositoryAgents",
    message_field("agents", _MODEL_REPOSITORY_AGENTS_AGENT, repeated=True),
)

_MODEL_RESPONSE_CACHE = MessageSchema(
    "inference.ModelResponseCache",
    scalar_field("enable", "bool"),
)

_METRIC_CONTROL_METRIC_IDENTIFIER = MessageSchema(
    "inference.ModelMetrics.MetricControl.MetricIdentifier",
    scalar_field("family", "string"),
)

_METRIC_CONTROL_HISTOGRAM_OPTIONS = MessageSchema(
    "inference.ModelMetrics.MetricControl.HistogramOptions",
    scalar_field("buckets", "double", repeated=True),
)

_MODEL_METRICS_METRIC_CONTROL = MessageSchema(
    "inference.ModelMetrics.MetricControl",
    message_field("metric_identifier", _METRIC_CONTROL_METRIC_IDENTIFIER),
    message_field("histogram_options", _METRIC_CONTROL_HISTOGRAM_OPTIONS, oneof="metric_options"),
)

_MODEL_METRICS = MessageSchema(
    "inference.ModelMetrics",
    message_field("metric_control", _MODEL_METRICS_METRIC_CONTROL, repeated=True),
)

TRITON_MODEL_CONFIG = MessageSchema(
    "inference.ModelConfig",
    scalar_field("name", "string"),
    scalar_field("platform", "string"),
    scalar_field("backend", "string"),
    scalar_field("runtime", "string"),
    message_field("version_policy", _MODEL_VERSION_POLICY),
    scalar_field("max_batch_size", "int32"),
    message_field("input", _MODEL_INPUT, repeated=True),
    message_field("output", _MODEL_OUTPUT, repeated=True),
    message_field("batch_input", _BATCH_INPUT, repeated=True),
    message_field("batch_output", _BATCH_OUTPUT, repeated=True),
    message_field("optimization", _MODEL_OPTIMIZATION_POLICY),
    message_field("dynamic_batching", _MODEL_DYNAMIC_BATCHING, oneof="scheduling_choice"),
    message_field("sequence_batching", _MODEL_SEQUENCE_BATCHING, oneof="scheduling_choice"),
    message_field("ensemble_scheduling", _MODEL_ENSEMBLING, oneof="scheduling_choice"),
    message_field("instance_group", _MODEL_INSTANCE_GROUP, repeated=True),
    scalar_field("default_model_filename", "string"),
    map_field("cc_model_filenames", "string", "string"),
    map_field("metric_tags", "string", "string"),
    map_field("parameters", "string", _MODEL_PARAMETER),
    message_field("model_warmup", _MODEL_WARMUP, repeated=True),
    message_field("model_operations", _MODEL_OPERATIONS),
    message_field("model_transaction_policy", _MODEL_TRANSACTION_POLICY),
    message_field("model_repository_agents", _MODEL_REPOSITORY_AGENTS),
    message_field("response_cache", _MODEL_RESPONSE_CACHE),
    message_field("model_metrics", _MODEL_METRICS),
)

# -- TF Serving: tensorflow.serving.ModelServerConfig (generated) ---------------------------------

_TFS_MODEL_TYPE = EnumSchema(
    "tensorflow.serving.ModelType", {"MODEL_TYPE_UNSPECIFIED": 0, "TENSORFLOW": 1, "OTHER": 2}
)

_TFS_SERVABLE_VERSION_POLICY_LATEST = MessageSchema(
    "tensorflow.serving.FileSystemStoragePathSourceConfig.ServableVersionPolicy.Latest",
    scalar_field("num_versions", "uint32"),
)

_TFS_SERVABLE_VERSION_POLICY_ALL = MessageSchema(
    "tensorflow.serving.FileSystemStoragePathSourceConfig.ServableVersionPolicy.All",
)

_TFS_SERVABLE_VERSION_POLICY_SPECIFIC = MessageSchema(
    "tensorflow.serving.FileSystemStoragePathSourceConfig.ServableVersionPolicy.Specific",
    scalar_field("versions", "int64", repeated=True),
)

_TFS_FILE_SYSTEM_STORAGE_PATH_SOURCE_CONFIG_SERVABLE_VERSION_POLICY = MessageSchema(
    "tensorflow.serving.FileSystemStoragePathSourceConfig.ServableVersionPolicy",
    message_field("latest", _TFS_SERVABLE_VERSION_POLICY_LATEST, oneof="policy_choice"),
    message_field("all", _TFS_SERVABLE_VERSION_POLICY_ALL, oneof="policy_choice"),
    message_field("specific", _TFS_SERVABLE_VERSION_POLICY_SPECIFIC, oneof="policy_choice"),
)

_TFS_LOG_COLLECTOR_CONFIG = MessageSchema(
    "tensorflow.serving.LogCollectorConfig",
    scalar_field("type", "string"),
    scalar_field("filename_prefix", "string"),
)

_TFS_PER_TASK_SAMPLING_CONFIG = MessageSchema(
    "tensorflow.serving.PerTaskSamplingConfig",
    scalar_field("dc", "string"),
    scalar_field("task_index", "int32"),
    scalar_field("sampling_rate", "double"),
)

_TFS_SAMPLING_CONFIG = MessageSchema(
    "tensorflow.serving.SamplingConfig",
    scalar_field("sampling_rate", "double"),
    message_field("per_task_sampling_configs", _TFS_PER_TASK_SAMPLING_CONFIG, repeated=True),
    scalar_field("attributes", "int32"),
)

_PB_ANY = MessageSchema(
    "google.protobuf.Any",
    scalar_field("type_url", "string"),
    scalar_field("value", "bytes"),
)

_TFS_LOGGING_CONFIG = MessageSchema(
    "tensorflow.serving.LoggingConfig",
    message_field("log_collector_config", _TFS_LOG_COLLECTOR_CONFIG),
    message_field("sampling_config", _TFS_SAMPLING_CONFIG),
    message_field("custom_logging_config", _PB_ANY),
)

_TFS_MODEL_CONFIG = MessageSchema(
    "tensorflow.serving.ModelConfig",
    scalar_field("name", "string"),
    scalar_field("base_path", "string"),
    enum_field("model_type", _TFS_MODEL_TYPE),
    scalar_field("model_platform", "string"),
    message_field(
        "model_version_policy", _TFS_FILE_SYSTEM_STORAGE_PATH_SOURCE_CONFIG_SERVABLE_VERSION_POLICY
    ),
    map_field("version_labels", "string", "int64"),
    message_field("logging_config", _TFS_LOGGING_CONFIG),
)

_TFS_MODEL_CONFIG_LIST = MessageSchema(
    "tensorflow.serving.ModelConfigList",
    message_field("config", _TFS_MODEL_CONFIG, repeated=True),
)

TFS_MODEL_SERVER_CONFIG = MessageSchema(
    "tensorflow.serving.ModelServerConfig",
    message_field("model_config_list", _TFS_MODEL_CONFIG_LIST, oneof="config"),
    message_field("custom_model_config", _PB_ANY, oneof="config"),
)

# -- TF Serving: tensorflow.serving.BatchingParameters (by hand) ----------------------------------

# The google/protobuf/wrappers.proto types BatchingParameters uses: "max_batch_size { value: 8 }".
_PB_INT64_VALUE = MessageSchema("google.protobuf.Int64Value", scalar_field("value", "int64"))
_PB_STRING_VALUE = MessageSchema("google.protobuf.StringValue", scalar_field("value", "string"))
_PB_BOOL_VALUE = MessageSchema("google.protobuf.BoolValue", scalar_field("value", "bool"))

TFS_BATCHING_PARAMETERS = MessageSchema(
    "tensorflow.serving.BatchingParameters",
    message_field("max_batch_size", _PB_INT64_VALUE),
    message_field("batch_timeout_micros", _PB_INT64_VALUE),
    message_field("max_enqueued_batches", _PB_INT64_VALUE),
    message_field("num_batch_threads", _PB_INT64_VALUE),
    message_field("thread_pool_name", _PB_STRING_VALUE),
    scalar_field("allowed_batch_sizes", "int64", repeated=True),
    scalar_field("pad_variable_length_inputs", "bool"),
    message_field("enable_large_batch_splitting", _PB_BOOL_VALUE),
    message_field("max_execution_batch_size", _PB_INT64_VALUE),
)
