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
    scalar_field("num_versions", "uint32", number=1),
)

_MODEL_VERSION_POLICY_ALL = MessageSchema(
    "inference.ModelVersionPolicy.All",
)

_MODEL_VERSION_POLICY_SPECIFIC = MessageSchema(
    "inference.ModelVersionPolicy.Specific",
    scalar_field("versions", "int64", repeated=True, number=1),
)

_MODEL_VERSION_POLICY = MessageSchema(
    "inference.ModelVersionPolicy",
    message_field("latest", _MODEL_VERSION_POLICY_LATEST, oneof="policy_choice", number=1),
    message_field("all", _MODEL_VERSION_POLICY_ALL, oneof="policy_choice", number=2),
    message_field("specific", _MODEL_VERSION_POLICY_SPECIFIC, oneof="policy_choice", number=3),
)

_MODEL_TENSOR_RESHAPE = MessageSchema(
    "inference.ModelTensorReshape",
    scalar_field("shape", "int64", repeated=True, number=1),
)

_MODEL_INPUT = MessageSchema(
    "inference.ModelInput",
    scalar_field("name", "string", number=1),
    enum_field("data_type", _DATA_TYPE, number=2),
    enum_field("format", _MODEL_INPUT_FORMAT, number=3),
    scalar_field("dims", "int64", repeated=True, number=4),
    message_field("reshape", _MODEL_TENSOR_RESHAPE, number=5),
    scalar_field("is_shape_tensor", "bool", number=6),
    scalar_field("allow_ragged_batch", "bool", number=7),
    scalar_field("optional", "bool", number=8),
    scalar_field("is_non_linear_format_io", "bool", number=9),
)

_MODEL_OUTPUT = MessageSchema(
    "inference.ModelOutput",
    scalar_field("name", "string", number=1),
    enum_field("data_type", _DATA_TYPE, number=2),
    scalar_field("dims", "int64", repeated=True, number=3),
    message_field("reshape", _MODEL_TENSOR_RESHAPE, number=5),
    scalar_field("label_filename", "string", number=4),
    scalar_field("is_shape_tensor", "bool", number=6),
    scalar_field("is_non_linear_format_io", "bool", number=7),
)

_BATCH_INPUT = MessageSchema(
    "inference.BatchInput",
    enum_field("kind", _BATCH_INPUT_KIND, number=1),
    scalar_field("target_name", "string", repeated=True, number=2),
    enum_field("data_type", _DATA_TYPE, number=3),
    scalar_field("source_input", "string", repeated=True, number=4),
)

_BATCH_OUTPUT = MessageSchema(
    "inference.BatchOutput",
    scalar_field("target_name", "string", repeated=True, number=1),
    enum_field("kind", _BATCH_OUTPUT_KIND, number=2),
    scalar_field("source_input", "string", repeated=True, number=3),
)

_MODEL_OPTIMIZATION_POLICY_GRAPH = MessageSchema(
    "inference.ModelOptimizationPolicy.Graph",
    scalar_field("level", "int32", number=1),
)

_GRAPH_SPEC_SHAPE = MessageSchema(
    "inference.ModelOptimizationPolicy.Cuda.GraphSpec.Shape",
    scalar_field("dim", "int64", repeated=True, number=1),
)

_GRAPH_SPEC_LOWER_BOUND = MessageSchema(
    "inference.ModelOptimizationPolicy.Cuda.GraphSpec.LowerBound",
    scalar_field("batch_size", "int32", number=1),
    map_field("input", "string", _GRAPH_SPEC_SHAPE, number=2),
)

_CUDA_GRAPH_SPEC = MessageSchema(
    "inference.ModelOptimizationPolicy.Cuda.GraphSpec",
    scalar_field("batch_size", "int32", number=1),
    map_field("input", "string", _GRAPH_SPEC_SHAPE, number=2),
    message_field("graph_lower_bound", _GRAPH_SPEC_LOWER_BOUND, number=3),
)

_MODEL_OPTIMIZATION_POLICY_CUDA = MessageSchema(
    "inference.ModelOptimizationPolicy.Cuda",
    scalar_field("graphs", "bool", number=1),
    scalar_field("busy_wait_events", "bool", number=2),
    message_field("graph_spec", _CUDA_GRAPH_SPEC, repeated=True, number=3),
    scalar_field("output_copy_stream", "bool", number=4),
)

_EXECUTION_ACCELERATORS_ACCELERATOR = MessageSchema(
    "inference.ModelOptimizationPolicy.ExecutionAccelerators.Accelerator",
    scalar_field("name", "string", number=1),
    map_field("parameters", "string", "string", number=2),
)

_MODEL_OPTIMIZATION_POLICY_EXECUTION_ACCELERATORS = MessageSchema(
    "inference.ModelOptimizationPolicy.ExecutionAccelerators",
    message_field(
        "gpu_execution_accelerator", _EXECUTION_ACCELERATORS_ACCELERATOR, repeated=True, number=1
    ),
    message_field(
        "cpu_execution_accelerator", _EXECUTION_ACCELERATORS_ACCELERATOR, repeated=True, number=2
    ),
)

_MODEL_OPTIMIZATION_POLICY_PINNED_MEMORY_BUFFER = MessageSchema(
    "inference.ModelOptimizationPolicy.PinnedMemoryBuffer",
    scalar_field("enable", "bool", number=1),
)

_MODEL_OPTIMIZATION_POLICY = MessageSchema(
    "inference.ModelOptimizationPolicy",
    message_field("graph", _MODEL_OPTIMIZATION_POLICY_GRAPH, number=1),
    enum_field("priority", _MODEL_OPTIMIZATION_POLICY_MODEL_PRIORITY, number=2),
    message_field("cuda", _MODEL_OPTIMIZATION_POLICY_CUDA, number=3),
    message_field(
        "execution_accelerators", _MODEL_OPTIMIZATION_POLICY_EXECUTION_ACCELERATORS, number=4
    ),
    message_field("input_pinned_memory", _MODEL_OPTIMIZATION_POLICY_PINNED_MEMORY_BUFFER, number=5),
    message_field(
        "output_pinned_memory", _MODEL_OPTIMIZATION_POLICY_PINNED_MEMORY_BUFFER, number=6
    ),
    scalar_field("gather_kernel_buffer_threshold", "uint32", number=7),
    scalar_field("eager_batching", "bool", number=8),
)

_MODEL_QUEUE_POLICY = MessageSchema(
    "inference.ModelQueuePolicy",
    enum_field("timeout_action", _MODEL_QUEUE_POLICY_TIMEOUT_ACTION, number=1),
    scalar_field("default_timeout_microseconds", "uint64", number=2),
    scalar_field("allow_timeout_override", "bool", number=3),
    scalar_field("max_queue_size", "uint32", number=4),
)

_MODEL_DYNAMIC_BATCHING = MessageSchema(
    "inference.ModelDynamicBatching",
    scalar_field("preferred_batch_size", "int32", repeated=True, number=1),
    scalar_field("max_queue_delay_microseconds", "uint64", number=2),
    scalar_field("preserve_ordering", "bool", number=3),
    scalar_field("priority_levels", "uint64", number=4),
    scalar_field("default_priority_level", "uint64", number=5),
    message_field("default_queue_policy", _MODEL_QUEUE_POLICY, number=6),
    map_field("priority_queue_policy", "uint64", _MODEL_QUEUE_POLICY, number=7),
)

_MODEL_SEQUENCE_BATCHING_STRATEGY_DIRECT = MessageSchema(
    "inference.ModelSequenceBatching.StrategyDirect",
    scalar_field("max_queue_delay_microseconds", "uint64", number=1),
    scalar_field("minimum_slot_utilization", "float", number=2),
)

_MODEL_SEQUENCE_BATCHING_STRATEGY_OLDEST = MessageSchema(
    "inference.ModelSequenceBatching.StrategyOldest",
    scalar_field("max_candidate_sequences", "int32", number=1),
    scalar_field("preferred_batch_size", "int32", repeated=True, number=2),
    scalar_field("max_queue_delay_microseconds", "uint64", number=3),
    scalar_field("preserve_ordering", "bool", number=4),
)

_MODEL_SEQUENCE_BATCHING_CONTROL = MessageSchema(
    "inference.ModelSequenceBatching.Control",
    enum_field("kind", _CONTROL_KIND, number=1),
    scalar_field("int32_false_true", "int32", repeated=True, number=2),
    scalar_field("fp32_false_true", "float", repeated=True, number=3),
    scalar_field("bool_false_true", "bool", repeated=True, number=5),
    enum_field("data_type", _DATA_TYPE, number=4),
)

_MODEL_SEQUENCE_BATCHING_CONTROL_INPUT = MessageSchema(
    "inference.ModelSequenceBatching.ControlInput",
    scalar_field("name", "string", number=1),
    message_field("control", _MODEL_SEQUENCE_BATCHING_CONTROL, repeated=True, number=2),
)

_MODEL_SEQUENCE_BATCHING_INITIAL_STATE = MessageSchema(
    "inference.ModelSequenceBatching.InitialState",
    enum_field("data_type", _DATA_TYPE, number=1),
    scalar_field("dims", "int64", repeated=True, number=2),
    scalar_field("zero_data", "bool", oneof="state_data", number=3),
    scalar_field("data_file", "string", oneof="state_data", number=4),
    scalar_field("name", "string", number=5),
)

_MODEL_SEQUENCE_BATCHING_STATE = MessageSchema(
    "inference.ModelSequenceBatching.State",
    scalar_field("input_name", "string", number=1),
    scalar_field("output_name", "string", number=2),
    enum_field("data_type", _DATA_TYPE, number=3),
    scalar_field("dims", "int64", repeated=True, number=4),
    message_field("initial_state", _MODEL_SEQUENCE_BATCHING_INITIAL_STATE, repeated=True, number=5),
    scalar_field("use_same_buffer_for_input_output", "bool", number=6),
    scalar_field("use_growable_memory", "bool", number=7),
)

_MODEL_SEQUENCE_BATCHING = MessageSchema(
    "inference.ModelSequenceBatching",
    message_field(
        "direct", _MODEL_SEQUENCE_BATCHING_STRATEGY_DIRECT, oneof="strategy_choice", number=3
    ),
    message_field(
        "oldest", _MODEL_SEQUENCE_BATCHING_STRATEGY_OLDEST, oneof="strategy_choice", number=4
    ),
    scalar_field("max_sequence_idle_microseconds", "uint64", number=1),
    message_field("control_input", _MODEL_SEQUENCE_BATCHING_CONTROL_INPUT, repeated=True, number=2),
    message_field("state", _MODEL_SEQUENCE_BATCHING_STATE, repeated=True, number=5),
    scalar_field("iterative_sequence", "bool", number=6),
)

_MODEL_ENSEMBLING_STEP = MessageSchema(
    "inference.ModelEnsembling.Step",
    scalar_field("model_name", "string", number=1),
    scalar_field("model_version", "int64", number=2),
    map_field("input_map", "string", "string", number=3),
    map_field("output_map", "string", "string", number=4),
    scalar_field("model_namespace", "string", number=5),
)

_MODEL_ENSEMBLING = MessageSchema(
    "inference.ModelEnsembling",
    message_field("step", _MODEL_ENSEMBLING_STEP, repeated=True, number=1),
    scalar_field("max_inflight_requests", "uint32", number=2),
)

_MODEL_RATE_LIMITER_RESOURCE = MessageSchema(
    "inference.ModelRateLimiter.Resource",
    scalar_field("name", "string", number=1),
    scalar_field("global", "bool", number=2),
    scalar_field("count", "uint32", number=3),
)

_MODEL_RATE_LIMITER = MessageSchema(
    "inference.ModelRateLimiter",
    message_field("resources", _MODEL_RATE_LIMITER_RESOURCE, repeated=True, number=1),
    scalar_field("priority", "uint32", number=2),
)

_MODEL_INSTANCE_GROUP_SECONDARY_DEVICE = MessageSchema(
    "inference.ModelInstanceGroup.SecondaryDevice",
    enum_field("kind", _SECONDARY_DEVICE_SECONDARY_DEVICE_KIND, number=1),
    scalar_field("device_id", "int64", number=2),
)

_MODEL_INSTANCE_GROUP = MessageSchema(
    "inference.ModelInstanceGroup",
    scalar_field("name", "string", number=1),
    enum_field("kind", _MODEL_INSTANCE_GROUP_KIND, number=4),
    scalar_field("count", "int32", number=2),
    message_field("rate_limiter", _MODEL_RATE_LIMITER, number=6),
    scalar_field("gpus", "int32", repeated=True, number=3),
    message_field(
        "secondary_devices", _MODEL_INSTANCE_GROUP_SECONDARY_DEVICE, repeated=True, number=8
    ),
    scalar_field("profile", "string", repeated=True, number=5),
    scalar_field("passive", "bool", number=7),
    scalar_field("host_policy", "string", number=9),
)

_MODEL_PARAMETER = MessageSchema(
    "inference.ModelParameter",
    scalar_field("string_value", "string", number=1),
)

_MODEL_WARMUP_INPUT = MessageSchema(
    "inference.ModelWarmup.Input",
    enum_field("data_type", _DATA_TYPE, number=1),
    scalar_field("dims", "int64", repeated=True, number=2),
    scalar_field("zero_data", "bool", oneof="input_data_type", number=3),
    scalar_field("random_data", "bool", oneof="input_data_type", number=4),
    scalar_field("input_data_file", "string", oneof="input_data_type", number=5),
)

_MODEL_WARMUP = MessageSchema(
    "inference.ModelWarmup",
    scalar_field("name", "string", number=1),
    scalar_field("batch_size", "uint32", number=2),
    map_field("inputs", "string", _MODEL_WARMUP_INPUT, number=3),
    scalar_field("count", "uint32", number=4),
)

_MODEL_OPERATIONS = MessageSchema(
    "inference.ModelOperations",
    scalar_field("op_library_filename", "string", repeated=True, number=1),
)

_MODEL_TRANSACTION_POLICY = MessageSchema(
    "inference.ModelTransactionPolicy",
    scalar_field("decoupled", "bool", number=1),
)

_MODEL_REPOSITORY_AGENTS_AGENT = MessageSchema(
    "inference.ModelRepositoryAgents.Agent",
    scalar_field("name", "string", number=1),
    map_field("parameters", "string", "string", number=2),
)

_MODEL_REPOSITORY_AGENTS = MessageSchema(
    "inference.ModelRepositoryAgents",
    message_field("agents", _MODEL_REPOSITORY_AGENTS_AGENT, repeated=True, number=1),
)

_MODEL_RESPONSE_CACHE = MessageSchema(
    "inference.ModelResponseCache",
    scalar_field("enable", "bool", number=1),
)

_METRIC_CONTROL_METRIC_IDENTIFIER = MessageSchema(
    "inference.ModelMetrics.MetricControl.MetricIdentifier",
    scalar_field("family", "string", number=1),
)

_METRIC_CONTROL_HISTOGRAM_OPTIONS = MessageSchema(
    "inference.ModelMetrics.MetricControl.HistogramOptions",
    scalar_field("buckets", "double", repeated=True, number=1),
)

_MODEL_METRICS_METRIC_CONTROL = MessageSchema(
    "inference.ModelMetrics.MetricControl",
    message_field("metric_identifier", _METRIC_CONTROL_METRIC_IDENTIFIER, number=1),
    message_field(
        "histogram_options", _METRIC_CONTROL_HISTOGRAM_OPTIONS, oneof="metric_options", number=2
    ),
)

_MODEL_METRICS = MessageSchema(
    "inference.ModelMetrics",
    message_field("metric_control", _MODEL_METRICS_METRIC_CONTROL, repeated=True, number=1),
)

TRITON_MODEL_CONFIG = MessageSchema(
    "inference.ModelConfig",
    scalar_field("name", "string", number=1),
    scalar_field("platform", "string", number=2),
    scalar_field("backend", "string", number=17),
    scalar_field("runtime", "string", number=25),
    message_field("version_policy", _MODEL_VERSION_POLICY, number=3),
    scalar_field("max_batch_size", "int32", number=4),
    message_field("input", _MODEL_INPUT, repeated=True, number=5),
    message_field("output", _MODEL_OUTPUT, repeated=True, number=6),
    message_field("batch_input", _BATCH_INPUT, repeated=True, number=20),
    message_field("batch_output", _BATCH_OUTPUT, repeated=True, number=21),
    message_field("optimization", _MODEL_OPTIMIZATION_POLICY, number=12),
    message_field(
        "dynamic_batching", _MODEL_DYNAMIC_BATCHING, oneof="scheduling_choice", number=11
    ),
    message_field(
        "sequence_batching", _MODEL_SEQUENCE_BATCHING, oneof="scheduling_choice", number=13
    ),
    message_field("ensemble_scheduling", _MODEL_ENSEMBLING, oneof="scheduling_choice", number=15),
    message_field("instance_group", _MODEL_INSTANCE_GROUP, repeated=True, number=7),
    scalar_field("default_model_filename", "string", number=8),
    map_field("cc_model_filenames", "string", "string", number=9),
    map_field("metric_tags", "string", "string", number=10),
    map_field("parameters", "string", _MODEL_PARAMETER, number=14),
    message_field("model_warmup", _MODEL_WARMUP, repeated=True, number=16),
    message_field("model_operations", _MODEL_OPERATIONS, number=18),
    message_field("model_transaction_policy", _MODEL_TRANSACTION_POLICY, number=19),
    message_field("model_repository_agents", _MODEL_REPOSITORY_AGENTS, number=23),
    message_field("response_cache", _MODEL_RESPONSE_CACHE, number=24),
    message_field("model_metrics", _MODEL_METRICS, number=26),
)


# -- TF Serving: tensorflow.serving.ModelServerConfig (generated) ---------------------------------

_TFS_MODEL_TYPE = EnumSchema(
    "tensorflow.serving.ModelType", {"MODEL_TYPE_UNSPECIFIED": 0, "TENSORFLOW": 1, "OTHER": 2}
)

_TFS_SERVABLE_VERSION_POLICY_LATEST = MessageSchema(
    "tensorflow.serving.FileSystemStoragePathSourceConfig.ServableVersionPolicy.Latest",
    scalar_field("num_versions", "uint32", number=1),
)

_TFS_SERVABLE_VERSION_POLICY_ALL = MessageSchema(
    "tensorflow.serving.FileSystemStoragePathSourceConfig.ServableVersionPolicy.All",
)

_TFS_SERVABLE_VERSION_POLICY_SPECIFIC = MessageSchema(
    "tensorflow.serving.FileSystemStoragePathSourceConfig.ServableVersionPolicy.Specific",
    scalar_field("versions", "int64", repeated=True, number=1),
)

_TFS_FILE_SYSTEM_STORAGE_PATH_SOURCE_CONFIG_SERVABLE_VERSION_POLICY = MessageSchema(
    "tensorflow.serving.FileSystemStoragePathSourceConfig.ServableVersionPolicy",
    message_field("latest", _TFS_SERVABLE_VERSION_POLICY_LATEST, oneof="policy_choice", number=100),
    message_field("all", _TFS_SERVABLE_VERSION_POLICY_ALL, oneof="policy_choice", number=101),
    message_field(
        "specific", _TFS_SERVABLE_VERSION_POLICY_SPECIFIC, oneof="policy_choice", number=102
    ),
)

_TFS_LOG_COLLECTOR_CONFIG = MessageSchema(
    "tensorflow.serving.LogCollectorConfig",
    scalar_field("type", "string", number=1),
    scalar_field("filename_prefix", "string", number=2),
)

_TFS_PER_TASK_SAMPLING_CONFIG = MessageSchema(
    "tensorflow.serving.PerTaskSamplingConfig",
    scalar_field("dc", "string", number=1),
    scalar_field("task_index", "int32", number=2),
    scalar_field("sampling_rate", "double", number=3),
)

_TFS_SAMPLING_CONFIG = MessageSchema(
    "tensorflow.serving.SamplingConfig",
    scalar_field("sampling_rate", "double", number=1),
    message_field(
        "per_task_sampling_configs", _TFS_PER_TASK_SAMPLING_CONFIG, repeated=True, number=3
    ),
    scalar_field("attributes", "int32", number=2),
)

_PB_ANY = MessageSchema(
    "google.protobuf.Any",
    scalar_field("type_url", "string", number=1),
    scalar_field("value", "bytes", number=2),
)

_TFS_LOGGING_CONFIG = MessageSchema(
    "tensorflow.serving.LoggingConfig",
    message_field("log_collector_config", _TFS_LOG_COLLECTOR_CONFIG, number=1),
    message_field("sampling_config", _TFS_SAMPLING_CONFIG, number=2),
    message_field("custom_logging_config", _PB_ANY, number=3),
)

_TFS_MODEL_CONFIG = MessageSchema(
    "tensorflow.serving.ModelConfig",
    scalar_field("name", "string", number=1),
    scalar_field("base_path", "string", number=2),
    enum_field("model_type", _TFS_MODEL_TYPE, number=3),
    scalar_field("model_platform", "string", number=4),
    message_field(
        "model_version_policy",
        _TFS_FILE_SYSTEM_STORAGE_PATH_SOURCE_CONFIG_SERVABLE_VERSION_POLICY,
        number=7,
    ),
    map_field("version_labels", "string", "int64", number=8),
    message_field("logging_config", _TFS_LOGGING_CONFIG, number=6),
)

_TFS_MODEL_CONFIG_LIST = MessageSchema(
    "tensorflow.serving.ModelConfigList",
    message_field("config", _TFS_MODEL_CONFIG, repeated=True, number=1),
)

TFS_MODEL_SERVER_CONFIG = MessageSchema(
    "tensorflow.serving.ModelServerConfig",
    message_field("model_config_list", _TFS_MODEL_CONFIG_LIST, oneof="config", number=1),
    message_field("custom_model_config", _PB_ANY, oneof="config", number=2),
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
