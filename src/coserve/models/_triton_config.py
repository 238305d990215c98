"""Triton's ``config.pbtxt`` read into coserve's configuration, and any config in Triton's JSON.

``read_triton_config`` makes a :class:`ModelConfig`; ``triton_model_config`` shows any model's
config as Triton's JSON does (``GET /v2/models/{m}/config``).

A model folder in Triton's layout, ``<model>/[config.pbtxt] <version>/model.onnx``, is served as
it is. A missing or partial config (no ``input`` or ``output``) is completed from the model file
as Triton's backends complete it: an ONNX model or a SavedModel is batchable when every input and
output has a variable first dimension, and then gets ``max_batch_size`` 4 (Triton's
``default-max-batch-size``) and dynamic batching; the file is loaded once to read its tensors
(as Triton's backends do too), and what it said is kept until the file changes.

How each field maps (what coserve cannot apply is a warning naming the file, line and column;
what would serve the model wrongly is a :class:`ConfigError` for that model alone):

- ``name`` (optional) must be the folder's name. ``platform``/``backend``: ``onnxruntime_onnx``
  (``onnxruntime``) is ``onnx_onnxv1``, ``tensorflow_savedmodel`` (``tensorflow``) is
  ``tensorflow_savedmodel``, ``pytorch_libtorch`` (``pytorch``) is ``pytorch_torchscript``; with
  neither, the file in the first version folder decides, as in Triton. ``backend: "python"``
  (a ``TritonPythonModel`` in ``model.py``) is ``triton_python``: its inputs and outputs come
  from the config, or from the model's ``auto_complete_config``, as it has no file to read them
  from; it is not warmed up. Ensembles, TensorRT, GraphDef, OpenVINO... are errors naming them.
  ``default_model_filename`` is ``filename``.
- ``max_batch_size`` > 0: shapes are ``[-1, *dims]`` and batches hold at most that many rows
  (a larger request is split, where Triton refuses it). 0: the tensors have no batch
  dimension; shapes are ``dims`` exactly (every dimension checked), each request runs alone
  and whole (densenet's ``[3, 224, 224]`` in, ``[1000]`` out), and counts as one inference.
- ``data_type`` ``TYPE_X`` is ``X`` (``TYPE_STRING`` is ``BYTES``; ``TYPE_BF16`` is refused);
  ``reshape`` is applied around the model (``_adapted``); ``label_filename`` is ``labels`` (the
  first output's; a second is a warning); an ``optional`` input may be left out of a request
  (the model runs without it, never batched with requests that have it).
- ``dynamic_batching`` present: requests are combined. ``max_queue_delay_microseconds`` is
  ``max_wait``; ``default_queue_policy.max_queue_size`` is ``max_queue_size`` (0, unbounded in
  Triton, keeps coserve's bound, logged); ``default_timeout_microseconds`` is ``timeout``.
  ``preferred_batch_size`` is a warning: coserve takes whatever is queued when a slot is free.
  Request priorities work as in Triton (level 1 runs first) with any number of levels;
  ``default_priority_level`` other than 1 (a request without a priority ranks with level 1),
  ``priority_queue_policy``, ``timeout_action: DELAY``, ``allow_timeout_override`` (coserve
  always honours a request's ``timeout``) and ``preserve_ordering`` are warnings. No
  ``dynamic_batching``: each request runs alone, as in Triton.
- ``instance_group``: the sum of the ``count`` values (at least 1 each) is
  ``max_concurrent_batches``; ``KIND_GPU`` is a warning (coserve runs on the CPU).
- ``version_policy`` is ``[versions]``. ONNX Runtime's ``intra_op_thread_count`` and
  ``inter_op_thread_count`` parameters are ``[threads]``.
- ``sequence_batching`` makes a stateful model (:class:`SequenceConfig`, served by a
  ``SequenceHandle``): ``direct`` (the default) or ``oldest`` with ``max_candidate_sequences``;
  ``max_queue_delay_microseconds`` is ``max_wait``; ``max_sequence_idle_microseconds`` (0: 1 s,
  as in Triton) is ``max_idle``; ``control_input`` START, END, READY (``int32_false_true``,
  ``fp32_false_true`` or ``bool_false_true``) and CORRID (``data_type``) are inputs of the model
  that coserve fills in, so clients and the metadata never see them. Direct with more than one
  instance is a warning (coserve has one instance, whose batch rows are the slots), as are
  ``preferred_batch_size``, ``minimum_slot_utilization`` and ``preserve_ordering``; implicit
  ``state`` and ``iterative_sequence`` are errors.
- Errors: ``ensemble_scheduling`` without ``platform: "ensemble"``,
  ``model_transaction_policy { decoupled: true }``, ``batch_input``/``batch_output``,
  ``is_shape_tensor``. Warnings: ``optimization``, ``model_warmup`` (coserve warms up by
  itself), other ``parameters``, ``response_cache``, ``model_operations``,
  ``model_repository_agents``, ``model_metrics``, ``metric_tags``, ``cc_model_filenames``,
  ``runtime``, ``allow_ragged_batch``, ``is_non_linear_format_io`` and the instance groups'
  other fields.

Models with BYTES inputs are not warmed up: empty strings are no valid input to most of them,
and Triton warms up only when ``model_warmup`` asks.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from coserve._exceptions import ConfigError, ModelLoadError
from coserve.models._config import (
    BatchingConfig,
    EnsembleConfig,
    EnsembleStep,
    ModelConfig,
    SequenceConfig,
    SequenceControl,
    ThreadConfig,
    VersionPolicy,
)
from coserve.models._specs import TensorSpec
from coserve.models._textproto import Decoded, FieldSchema, MessageSchema, decode, load, parse
from coserve.models._textproto_schemas import TRITON_MODEL_CONFIG

__all__ = [
    "DEFAULT_MAX_BATCH_SIZE",
    "TRITON_FILES",
    "UNBATCHED_MAX_ROWS",
    "holds_triton_model",
    "read_triton_config",
    "to_triton_json",
    "triton_model_config",
]

logger = logging.getLogger("coserve.models")

DEFAULT_MAX_BATCH_SIZE = 4
"""``max_batch_size`` of an auto-completed batchable model (Triton's default-max-batch-size)."""

UNBATCHED_MAX_ROWS = 65536
"""The batcher's ``max_batch_size`` for a model without a batch dimension: each request runs
alone and counts as one row, so any bound of at least 1 would do."""

# Triton's platforms coserve serves: platform -> (backend, coserve platform, default file name)
_SERVED = {
    "onnxruntime_onnx": ("onnxruntime", "onnx_onnxv1", "model.onnx"),
    "tensorflow_savedmodel": ("tensorflow", "tensorflow_savedmodel", "model.savedmodel"),
    "pytorch_libtorch": ("pytorch", "pytorch_torchscript", "model.pt"),
    # Not a Triton platform: a Python model names only its backend, and its config's platform
    # stays empty (``_complete_values``).
    "python": ("python", "triton_python", "model.py"),
}
_TRITON_PLATFORM = {coserve: triton for triton, (_, coserve, _) in _SERVED.items()}

TRITON_FILES = {
    "model.onnx": "onnxruntime_onnx",
    "model.savedmodel": "tensorflow_savedmodel",
    "model.pt": "pytorch_libtorch",
    "model.py": "python",
    "model.plan": "tensorrt_plan",
    "model.graphdef": "tensorflow_graphdef",
    "model.pt2": "torch_aoti",
    "model.xml": "openvino",
}
"""Triton's default file names and what each means (``core:src/constants.h``)."""

_NOT_SERVED = {
    "tensorrt_plan": "TensorRT plans (tensorrt_plan) are not supported: coserve has no TensorRT",
    "tensorrt": "TensorRT plans (backend 'tensorrt') are not supported: coserve has no TensorRT",
    "tensorflow_graphdef": "TensorFlow GraphDef models (tensorflow_graphdef) are not supported: "
    "export a SavedModel",
    "torch_aoti": "AOTInductor packages (model.pt2) are not supported: coserve's pytorch_export "
    "takes torch.export programs, with a config.toml",
    "openvino": "OpenVINO models are not supported",
}
_SERVED_WORDS = (
    "coserve serves onnxruntime_onnx, tensorflow_savedmodel, pytorch_libtorch and Python models "
    "(backend 'python')"
)

_DATATYPES = {
    "TYPE_BOOL": "BOOL",
    "TYPE_UINT8": "UINT8",
    "TYPE_UINT16": "UINT16",
    "TYPE_UINT32": "UINT32",
    "TYPE_UINT64": "UINT64",
    "TYPE_INT8": "INT8",
    "TYPE_INT16": "INT16",
    "TYPE_INT32": "INT32",
    "TYPE_INT64": "INT64",
    "TYPE_FP16": "FP16",
    "TYPE_FP32": "FP32",
    "TYPE_FP64": "FP64",
    "TYPE_STRING": "BYTES",
}
_TRITON_TYPES = {datatype: triton for triton, datatype in _DATATYPES.items()}

# Top-level fields coserve reads no further than to say it does not apply them.
_NOT_APPLIED = {
    "optimization": "coserve does not apply Triton's optimization settings",
    "model_warmup": "coserve warms up by itself, running each batch size it may form once at "
    "load (zeros)",
    "model_operations": "coserve loads no custom operation libraries",
    "model_repository_agents": "coserve runs no repository agents",
    "model_metrics": "coserve's /metrics keeps its own histograms",
    "metric_tags": "coserve's metrics carry no extra labels",
    "cc_model_filenames": "coserve runs on the CPU and loads default_model_filename",
}

# The platforms whose models can run with an optional input left out: a Triton Python model
# (get_input_tensor_by_name answers None) and an ONNX model whose file gives the input a default.
_LEAVE_OUT = frozenset({"triton_python", "onnx_onnxv1"})

_CONTROL_KINDS = {
    "CONTROL_SEQUENCE_START": "start",
    "CONTROL_SEQUENCE_END": "end",
    "CONTROL_SEQUENCE_READY": "ready",
    "CONTROL_SEQUENCE_CORRID": "corrid",
}
_CORRID_TYPES = {
    "TYPE_UINT64": "UINT64",
    "TYPE_INT64": "INT64",
    "TYPE_UINT32": "UINT32",
    "TYPE_INT32": "INT32",
    "TYPE_STRING": "BYTES",
}
_FALSE_TRUE = {"int32_false_true": "INT32", "fp32_false_true": "FP32", "bool_false_true": "BOOL"}

# The 64-bit fields Triton prints as JSON numbers (model_config_utils.cc ModelConfigToJson); the
# others it leaves as protobuf's strings.
_NUMERIC_64 = frozenset(
    {
        "input.dims",
        "input.reshape.shape",
        "output.dims",
        "output.reshape.shape",
        "version_policy.specific.versions",
        "dynamic_batching.max_queue_delay_microseconds",
        "dynamic_batching.priority_levels",
        "dynamic_batching.default_priority_level",
        "dynamic_batching.default_queue_policy.default_timeout_microseconds",
        "dynamic_batching.priority_queue_policy.value.default_timeout_microseconds",
        "sequence_batching.max_sequence_idle_microseconds",
        "sequence_batching.oldest.max_queue_delay_microseconds",
        "sequence_batching.direct.max_queue_delay_microseconds",
        "sequence_batching.state.dims",
        "ensemble_scheduling.step.model_version",
        "model_warmup.inputs.value.dims",
    }
)


def holds_triton_model(versions: Iterable[Path]) -> bool:
    """Whether a version folder holds one of Triton's default model files (``model.onnx``...)."""
    return any((version / name).exists() for version in versions for name in TRITON_FILES)


def read_triton_config(
    folder: Path,
    *,
    name: str,
    versions: Mapping[int, Path],
    policy: VersionPolicy | None = None,
    auto_complete: bool = True,
    text: str | None = None,
) -> ModelConfig:
    """Read ``<folder>/config.pbtxt`` (or, if there is none, Triton's defaults) into a config.

    The config is completed from the model file where it lacks inputs or outputs, unless
    ``auto_complete`` is off (Triton's ``--strict-model-config``): then the file must be there
    and list them.

    Args:
        folder: The model folder.
        name: The model's name (the folder's).
        versions: The version folders by number.
        policy: Which versions will be served, where the caller overrides the config's; the
            newest of them is the one read to complete the config.
        auto_complete: Complete a missing or partial config from the model file.
        text: A config in text format to read instead of the folder's file (a load's
            override); messages name it ``<folder> (the load's config)``.

    Raises:
        ConfigError: The file cannot be read or parsed, or says what coserve cannot serve
            (naming the file, line and column, and the reason).
        ModelLoadError: The model file to complete the config from cannot be read.
        MissingDependency: Reading it needs an extra that is not installed.
    """
    path = folder / "config.pbtxt"
    if text is not None:
        where = f"{folder} (the load's config)"
        decoded = decode(parse(text, where), TRITON_MODEL_CONFIG, where)
        return _Reader(decoded, name, folder, auto_complete=auto_complete).read(versions, policy)
    if not auto_complete and not path.is_file():
        raise ConfigError(
            f"{folder}: no config.pbtxt, and --strict-model-config allows no auto-complete"
        )
    decoded = load(path, TRITON_MODEL_CONFIG) if path.is_file() else Decoded(str(folder))
    return _Reader(decoded, name, folder, auto_complete=auto_complete).read(versions, policy)


def triton_model_config(
    config: ModelConfig, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> dict[str, Any]:
    """A model's config as Triton's JSON shows it (``GET /v2/models/{m}/config``).

    A Triton model's is its completed ``config.pbtxt``; any other model's is made from its
    coserve config and the specs it serves.
    """
    values = config.triton if config.triton is not None else _from_coserve(config, inputs, outputs)
    return to_triton_json(values)


def to_triton_json(values: Mapping[str, Any]) -> dict[str, Any]:
    """``inference.ModelConfig`` values as Triton prints them.

    ``values`` are field names to plain values, as ``_textproto`` decodes them. The JSON is
    protobuf's, with the field names kept and every field without presence printed (defaults,
    ``[]``, ``{}``), and the 64-bit numbers Triton fixes printed as numbers, not strings.
    """
    return _render(values, TRITON_MODEL_CONFIG, "")


# -- reading config.pbtxt --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Tensor:
    """One ``input`` or ``output`` entry, checked."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None
    optional: bool = False


class _Reader:
    """Maps one decoded config.pbtxt, naming the file, line and column in every message."""

    def __init__(
        self, decoded: Decoded, name: str, folder: Path, *, auto_complete: bool = True
    ) -> None:
        self.decoded = decoded
        self.name = name
        self.folder = folder
        self.auto_complete = auto_complete

    def where(self, message: Decoded, key: Any) -> str:
        return message.where(key) if key in message.positions else self.decoded.path

    def fail(self, message: Decoded, key: Any, problem: str) -> ConfigError:
        return ConfigError(f"{self.where(message, key)}: {problem}")

    def warn(self, message: Decoded, key: Any, problem: str) -> None:
        logger.warning("%s: model %s: %s", self.where(message, key), self.name, problem)

    def read(self, versions: Mapping[int, Path], override: VersionPolicy | None) -> ModelConfig:
        d = self.decoded
        if "name" in d and d["name"] != self.name:
            raise self.fail(
                d, "name", f"name {d['name']!r} must be the model folder's name, {self.name!r}"
            )
        self._refuse()
        if d.get("platform") == "ensemble":
            return self._ensemble()
        platform = self._platform(versions)
        backend, coserve_platform, default_file = _SERVED[platform]
        filename = d.get("default_model_filename") or default_file
        policy = self._version_policy()
        max_batch_size: int = d.get("max_batch_size", 0)
        if max_batch_size < 0:
            raise self.fail(
                d, "max_batch_size", f"max_batch_size must be >= 0, got {max_batch_size}"
            )
        inputs = self._optional_where_applied(
            self._tensors("input", max_batch_size),
            coserve_platform in _LEAVE_OUT,
            f"a {coserve_platform} model is given every input",
        )
        outputs = self._tensors("output", max_batch_size)
        values = _plain(d)
        dynamic = "dynamic_batching" in d
        if (not inputs or not outputs) and not self.auto_complete:
            raise self.fail(
                d,
                "input" if not inputs else "output",
                "the config lists no input or no output, and --strict-model-config allows no "
                "auto-complete from the model file",
            )
        if coserve_platform == "triton_python":
            max_batch_size, inputs, outputs, dynamic = self._complete_python(
                versions, override or policy, filename, max_batch_size, inputs, outputs, values
            )
        elif not inputs or not outputs:
            chosen = (override or policy).select(list(versions))
            if not chosen:
                raise self.fail(
                    d,
                    "input",
                    "without input and output the model file is needed to complete "
                    "the config, and there is no version folder to serve",
                )
            model_file = versions[chosen[-1]] / filename
            # A sequence model has its scheduler: auto-complete adds no dynamic batching.
            max_batch_size, inputs, outputs, dynamic = self._complete(
                coserve_platform,
                model_file,
                max_batch_size,
                inputs,
                outputs,
                dynamic or "sequence_batching" in d,
                values,
            )
            dynamic = dynamic and "sequence_batching" not in d
        sequence = None
        if "sequence_batching" in d:
            sequence = self._sequence(d["sequence_batching"], max_batch_size)
            inputs = self._without_controls(inputs, sequence, values)
        lead = (-1,) if max_batch_size > 0 else ()
        try:
            api_inputs = tuple(
                TensorSpec.of(t.name, t.datatype, (*lead, *t.dims), optional=t.optional)
                for t in inputs
            )
            api_outputs = tuple(
                TensorSpec.of(t.name, t.datatype, (*lead, *t.dims)) for t in outputs
            )
            if sequence is not None:  # the model takes them; clients never send them
                api_inputs += tuple(
                    TensorSpec.of(c.name, c.datatype or "", (*lead, 1)) for c in sequence.controls
                )
        except ValueError as error:  # dims were checked; this is a safety net
            raise ConfigError(f"{d.path}: {error}") from error
        batching = self._batching(max_batch_size, dynamic)
        if sequence is not None:
            batching = self._sequence_batching(d["sequence_batching"], batching, max_batch_size)
        # A Python model is not warmed up either: Triton warms up only when model_warmup asks,
        # and zeros may be no input to it (or have effects).
        warm_up = (
            coserve_platform != "triton_python"
            and sequence is None
            and not any(spec.datatype == "BYTES" for spec in api_inputs)
        )
        if not warm_up and coserve_platform != "triton_python":
            logger.debug(
                "model %s: BYTES inputs: no warm-up (empty strings may not suit it)", self.name
            )
        self._complete_values(values, platform, backend, filename, max_batch_size, dynamic)
        return ModelConfig(
            name=self.name,
            platform=coserve_platform,
            filename=filename,
            labels=self._labels(),
            warm_up=warm_up,
            batching=batching,
            threads=self._parameters(coserve_platform),
            versions=policy,
            inputs=api_inputs,
            outputs=api_outputs,
            batched=max_batch_size > 0,
            reshape=tuple(
                (t.name, t.reshape) for t in (*inputs, *outputs) if t.reshape is not None
            ),
            sequence=sequence,
            triton=values,
        )

    # -- ensembles ---------------------------------------------------------------------------

    def _ensemble(self) -> ModelConfig:
        """An ensemble's config: its own tensors, and its steps checked to form a DAG.

        What needs the composing models (that they exist, and have the inputs and outputs the
        maps name) is checked when the ensemble is loaded, after them (``_ensemble``).
        """
        d = self.decoded
        scheduling = d.get("ensemble_scheduling")
        if not scheduling or not scheduling.get("step"):
            raise self.fail(
                d,
                "platform",
                "Triton ensembles (platform 'ensemble') need ensemble_scheduling with at least "
                "one step",
            )
        if d.get("backend"):
            raise self.fail(d, "backend", "an ensemble has no backend")
        for key in ("instance_group", "default_model_filename", "parameters"):
            if key in d:
                self.warn(d, key, f"{key} is not applied to an ensemble (it runs no model)")
        max_batch_size: int = d.get("max_batch_size", 0)
        if max_batch_size < 0:
            raise self.fail(
                d, "max_batch_size", f"max_batch_size must be >= 0, got {max_batch_size}"
            )
        inputs = self._optional_where_applied(
            self._tensors("input", max_batch_size),
            False,
            "an ensemble's steps are given every input",
        )
        outputs = self._tensors("output", max_batch_size)
        for kind, tensors in (("input", inputs), ("output", outputs)):
            if not tensors:
                raise self.fail(d, "platform", f"an ensemble must list its {kind}s")
            for entry, tensor in zip(d[kind], tensors, strict=True):
                if tensor.reshape is not None:
                    raise self.fail(
                        entry,
                        "reshape",
                        f"{kind} {tensor.name!r}: an ensemble's tensors take "
                        "no reshape (its composing models' may)",
                    )
        steps = tuple(
            self._step(step, index, scheduling) for index, step in enumerate(scheduling["step"])
        )
        self._check_dataflow(steps, inputs, outputs)
        lead = (-1,) if max_batch_size > 0 else ()
        values = _plain(d)
        values["name"] = self.name
        values["backend"] = ""
        values.setdefault("version_policy", {"latest": {"num_versions": 1}})
        values["max_batch_size"] = max_batch_size
        inflight: int = scheduling.get("max_inflight_requests", 0)
        return ModelConfig(
            name=self.name,
            platform="ensemble",
            labels=self._labels(),
            warm_up=False,
            # Not a batcher's: an ensemble batches nothing itself (its composing models do).
            # max_queue_size bounds the requests in flight through it; timeout is none, as for
            # a Triton model without dynamic_batching.
            batching=BatchingConfig(
                max_batch_size=max_batch_size or UNBATCHED_MAX_ROWS, combine_requests=False
            ),
            versions=self._version_policy(),
            inputs=tuple(TensorSpec.of(t.name, t.datatype, (*lead, *t.dims)) for t in inputs),
            outputs=tuple(TensorSpec.of(t.name, t.datatype, (*lead, *t.dims)) for t in outputs),
            batched=max_batch_size > 0,
            ensemble=EnsembleConfig(
                steps, max_inflight=inflight, where=d.where("ensemble_scheduling")
            ),
            triton=values,
        )

    def _step(self, step: Decoded, index: int, scheduling: Decoded) -> EnsembleStep:
        model: str = step.get("model_name", "")
        where = self.where(step, "model_name") if model else self.where(scheduling, "step")
        if not model:
            raise ConfigError(f"{where}: ensemble step {index} must have a model_name")
        version: int = step.get("model_version", -1)
        if version == 0 or version < -1:
            raise self.fail(
                step,
                "model_version",
                f"step {index} (model {model!r}): model_version must be -1 (the newest) or a "
                f"version number, got {version}",
            )
        if step.get("model_namespace"):
            self.warn(step, "model_namespace", "model_namespace is not applied")
        maps: dict[str, tuple[tuple[tuple[str, str], ...], tuple[str, ...]]] = {}
        for key in ("input_map", "output_map"):
            entries: Decoded = step.get(key, Decoded(self.decoded.path))
            if not entries:
                raise ConfigError(
                    f"{where}: ensemble step {index} (model {model!r}) needs an {key}"
                )
            maps[key] = (tuple(entries.items()), tuple(entries.where(k) for k in entries))
        return EnsembleStep(
            model=model,
            version=None if version == -1 else str(version),
            inputs=maps["input_map"][0],
            outputs=maps["output_map"][0],
            where=where,
            input_where=maps["input_map"][1],
            output_where=maps["output_map"][1],
        )

    def _check_dataflow(
        self, steps: Sequence[EnsembleStep], inputs: Sequence[_Tensor], outputs: Sequence[_Tensor]
    ) -> None:
        """Each tensor has one producer, every read tensor is produced, no cycle, every output.

        Raises:
            ConfigError: Naming the file and line of the entry at fault.
        """
        d = self.decoded
        producer: dict[str, int] = {t.name: -1 for t in inputs}  # -1: the ensemble's input

        def who(index: int) -> str:
            return "an ensemble input" if index < 0 else f"step {index} ({steps[index].model})"

        for index, step in enumerate(steps):
            for (_, tensor), where in zip(step.outputs, step.output_where, strict=True):
                if tensor in producer:
                    raise ConfigError(
                        f"{where}: ensemble tensor {tensor!r} has two producers: "
                        f"{who(producer[tensor])} and {who(index)}"
                    )
                producer[tensor] = index
        after: list[set[int]] = []
        for index, step in enumerate(steps):
            needs = set()
            for (_, tensor), where in zip(step.inputs, step.input_where, strict=True):
                if tensor not in producer:
                    raise ConfigError(
                        f"{where}: {who(index)} reads ensemble tensor {tensor!r}, which no "
                        "ensemble input or step output produces"
                    )
                if producer[tensor] >= 0:
                    needs.add(producer[tensor])
            after.append(needs)
        cycle = _cycle(after)
        if cycle:
            start = cycle.index(min(cycle))  # told from its first step in the file
            cycle = cycle[start:] + cycle[:start]
            path = " -> ".join(who(i) for i in (*cycle, cycle[0]))
            raise ConfigError(f"{steps[cycle[0]].where}: the ensemble's steps form a cycle: {path}")
        for entry, output in zip(d["output"], outputs, strict=True):
            if output.name not in producer:
                raise self.fail(
                    entry, "name", f"ensemble output {output.name!r} is produced by no step"
                )

    # -- what is refused, and what is only warned about --------------------------------------

    def _refuse(self) -> None:
        d = self.decoded
        if "ensemble_scheduling" in d and d.get("platform") != "ensemble":
            raise self.fail(
                d,
                "ensemble_scheduling",
                'Triton ensembles need platform: "ensemble" beside ensemble_scheduling',
            )
        policy = d.get("model_transaction_policy", {})
        if policy.get("decoupled"):
            raise self.fail(
                policy,
                "decoupled",
                "decoupled models (any number of responses to a request) are not supported yet",
            )
        for key in ("batch_input", "batch_output"):
            if d.get(key):
                raise self.fail(
                    d,
                    key,
                    f"{key} is not supported: coserve gives a model no batch inputs or "
                    "outputs (Triton's ragged batching)",
                )
        for key, reason in _NOT_APPLIED.items():
            if key in d:
                self.warn(d, key, f"{key} is not applied: {reason}")
        if d.get("runtime"):
            self.warn(
                d,
                "runtime",
                f"runtime {d['runtime']!r} is not applied: coserve runs the platform's own backend",
            )
        if d.get("response_cache", {}).get("enable"):
            self.warn(
                d, "response_cache", "response_cache is not applied: coserve caches no responses"
            )

    def _platform(self, versions: Mapping[int, Path]) -> str:
        """Triton's platform of the model: one of ``_SERVED``, else a ConfigError."""
        d = self.decoded
        platform: str = d.get("platform", "")
        backend: str = d.get("backend", "")
        if platform:
            if platform in _SERVED:
                if backend and backend != _SERVED[platform][0]:
                    raise self.fail(
                        d,
                        "backend",
                        f"backend {backend!r} does not go with platform "
                        f"{platform!r} (that is backend {_SERVED[platform][0]!r})",
                    )
                return platform
            reason = _NOT_SERVED.get(platform, f"platform {platform!r} is not supported")
            raise self.fail(d, "platform", f"{reason}; {_SERVED_WORDS}")
        if backend in ("onnxruntime", "pytorch", "python"):
            return {"onnxruntime": "onnxruntime_onnx", "pytorch": "pytorch_libtorch"}.get(
                backend, backend
            )
        if backend and backend != "tensorflow":
            reason = _NOT_SERVED.get(backend, f"backend {backend!r} is not supported")
            raise self.fail(d, "backend", f"{reason}; {_SERVED_WORDS}")
        # Neither (or backend tensorflow, which needs a platform): the file decides, as in
        # Triton, where the first version folder (in name order) is the one looked in.
        first = versions[min(versions, key=str)] if versions else None
        found = self._file_platform(first)
        if backend == "tensorflow":
            if found == "tensorflow_graphdef":
                raise self.fail(d, "backend", _NOT_SERVED["tensorflow_graphdef"])
            return "tensorflow_savedmodel"
        if found is None:
            where = d.path if d.positions else str(self.folder)
            raise ConfigError(
                f"{where}: no platform or backend, and {first or 'no version folder'} holds none "
                f"of {', '.join(TRITON_FILES)} to tell which"
            )
        if found not in _SERVED:
            raise ConfigError(
                f"{first}: {_NOT_SERVED.get(found, found + ' is not supported')}; {_SERVED_WORDS}"
            )
        return found

    def _file_platform(self, version: Path | None) -> str | None:
        if version is None:
            return None
        named: str = self.decoded.get("default_model_filename", "")
        if named and (version / named).exists():
            for default, platform in TRITON_FILES.items():
                if named.endswith(Path(default).suffix):
                    return platform
        for default, platform in TRITON_FILES.items():
            if (version / default).exists():
                return platform
        return None

    def _version_policy(self) -> VersionPolicy:
        d = self.decoded
        policy = d.get("version_policy")
        if policy is None:
            return VersionPolicy()
        if "all" in policy:
            return VersionPolicy("all")
        if "specific" in policy:
            versions = tuple(policy["specific"].get("versions", ()))
            if not versions:
                raise self.fail(policy, "specific", "a specific version_policy needs versions")
            return VersionPolicy("specific", specific=versions)
        latest = policy.get("latest")
        if latest is None:
            return VersionPolicy()
        count: int = latest.get("num_versions", 0)
        if count < 1:
            raise self.fail(latest, "num_versions", "num_versions must be >= 1")
        return VersionPolicy("latest", latest=count)

    # -- tensors ---------------------------------------------------------------------------

    def _optional_where_applied(
        self, inputs: list[_Tensor], applied: bool, reason: str
    ) -> list[_Tensor]:
        """The inputs, ``optional`` kept only where the model can run without them."""
        if applied:
            return inputs
        for tensor in inputs:
            if tensor.optional:
                self.warn(
                    self.decoded,
                    "input",
                    f"input {tensor.name!r}: optional is not applied ({reason}): a request "
                    "without it is refused",
                )
        return [dataclasses.replace(t, optional=False) for t in inputs]

    def _tensors(self, kind: str, max_batch_size: int) -> list[_Tensor]:
        d = self.decoded
        tensors: list[_Tensor] = []
        for index, entry in enumerate(d.get(kind, [])):
            tensor = self._tensor(entry, kind, index, max_batch_size)
            if any(t.name == tensor.name for t in tensors):
                raise self.fail(entry, "name", f"{kind} {tensor.name!r} is given twice")
            tensors.append(tensor)
        return tensors

    def _tensor(self, entry: Decoded, kind: str, index: int, max_batch_size: int) -> _Tensor:
        name: str = entry.get("name", "")
        if not name:
            where = entry if entry.positions else self.decoded
            raise self.fail(where, kind, f"{kind} {index} must have a name")
        label = f"{kind} {name!r}"
        triton_type = entry.get("data_type", "TYPE_INVALID")
        if triton_type not in _DATATYPES:
            problem = (
                "must have a data_type"
                if triton_type == "TYPE_INVALID"
                else (f"data_type {triton_type} is not supported (coserve has no bfloat16)")
            )
            raise self.fail(
                entry, "data_type" if "data_type" in entry else "name", f"{label} {problem}"
            )
        dims = tuple(entry.get("dims", ()))
        if not dims:
            raise self.fail(entry, "name", f"{label} must have dims")
        if any(d < 1 and d != -1 for d in dims):
            raise self.fail(
                entry, "dims", f"{label}: dims must be >= 1, or -1 for any size; got {list(dims)}"
            )
        reshape = None
        if "reshape" in entry:
            reshape = tuple(entry["reshape"].get("shape", ()))
            self._check_reshape(entry, label, dims, reshape, max_batch_size)
        if entry.get("is_shape_tensor"):
            raise self.fail(entry, "is_shape_tensor", f"{label}: shape tensors are not supported")
        if entry.get("allow_ragged_batch"):
            self.warn(
                entry,
                "allow_ragged_batch",
                f"{label}: allow_ragged_batch is not applied: "
                "coserve batches together only requests of the same shape",
            )
        if entry.get("is_non_linear_format_io"):
            self.warn(
                entry,
                "is_non_linear_format_io",
                f"{label}: is_non_linear_format_io is not applied (it is TensorRT's)",
            )
        optional = bool(entry.get("optional")) and kind == "input"
        return _Tensor(name, _DATATYPES[triton_type], dims, reshape, optional)

    def _check_reshape(
        self,
        entry: Decoded,
        label: str,
        dims: tuple[int, ...],
        shape: tuple[int, ...],
        max_batch_size: int,
    ) -> None:
        """Triton's rules (``ValidateIOShape``): the same elements, in the same runs."""
        if not shape and max_batch_size == 0:
            raise self.fail(
                entry,
                "reshape",
                f"{label}: an empty reshape needs a batch dimension "
                "(max_batch_size > 0): scalars are not supported",
            )
        if any(d < 1 and d != -1 for d in shape):
            raise self.fail(
                entry,
                "reshape",
                f"{label}: reshape dimensions must be >= 1, or -1; got {list(shape)}",
            )
        # An empty reshape (a scalar per row) takes dims of one element.
        same = _count(dims) == 1 if not shape else _runs(dims) == _runs(shape)
        if not same:
            raise self.fail(
                entry,
                "reshape",
                f"{label}: reshape {list(shape)} does not hold the "
                f"same elements as dims {list(dims)}",
            )

    def _complete(
        self,
        coserve_platform: str,
        model_file: Path,
        max_batch_size: int,
        inputs: list[_Tensor],
        outputs: list[_Tensor],
        dynamic: bool,
        values: dict[str, Any],
    ) -> tuple[int, list[_Tensor], list[_Tensor], bool]:
        """Triton's auto-complete: max_batch_size, dynamic batching and the missing tensors."""
        d = self.decoded
        if coserve_platform == "pytorch_torchscript":
            raise self.fail(
                d,
                "input" if not inputs else "output",
                "a PyTorch model needs "
                "input and output in config.pbtxt: a TorchScript file does not name "
                "its tensors",
            )
        if not model_file.exists():
            raise ModelLoadError(
                f"model {self.name!r}: {model_file} does not exist, and the config needs it to "
                "complete its inputs and outputs"
            )
        read_inputs, read_outputs = _file_specs(coserve_platform, model_file, self.name)
        specs = (*read_inputs, *read_outputs)
        batchable = all(spec.shape and spec.shape[0] == -1 for spec in specs)
        if batchable:
            if max_batch_size == 0:
                max_batch_size = DEFAULT_MAX_BATCH_SIZE
                logger.info(
                    "model %s: max_batch_size set to %d: every input and output of %s has a "
                    "variable first dimension (Triton's auto-complete)",
                    self.name,
                    max_batch_size,
                    model_file,
                )
            if max_batch_size > 1 and not dynamic:
                dynamic = True
                values["dynamic_batching"] = {}
        elif max_batch_size != 0:
            shapes = ", ".join(f"{s.name} {list(s.shape)}" for s in specs)
            raise self.fail(
                d,
                "max_batch_size",
                f"max_batch_size is {max_batch_size}, but "
                f"{model_file} cannot batch: not every tensor has a variable first "
                f"dimension ({shapes})",
            )
        for kind, tensors, read in (
            ("input", inputs, read_inputs),
            ("output", outputs, read_outputs),
        ):
            if tensors:
                continue
            for spec in read:
                tensor = _completed_tensor(spec, max_batch_size)
                tensors.append(tensor)
                values.setdefault(kind, []).append(_tensor_values(tensor))
        return max_batch_size, inputs, outputs, dynamic

    def _complete_python(
        self,
        versions: Mapping[int, Path],
        policy: VersionPolicy,
        filename: str,
        max_batch_size: int,
        inputs: list[_Tensor],
        outputs: list[_Tensor],
        values: dict[str, Any],
    ) -> tuple[int, list[_Tensor], list[_Tensor], bool]:
        """A Python model's ``auto_complete_config``, if it has one; its tensors, if not.

        A Python model has no file to read tensors from: the config lists them, or the model's
        ``TritonPythonModel.auto_complete_config`` adds them (run, as in Triton, unless
        auto-complete is off, and only for a file that names it, so serving a model imports it
        at config time only when it asks to be).
        """
        d = self.decoded
        dynamic = "dynamic_batching" in values
        chosen = policy.select(list(versions))
        model_file = versions[chosen[-1]] / filename if chosen else None
        if self.auto_complete and model_file is not None:
            current = {**values, "name": self.name, "backend": "python"}
            current["max_batch_size"] = max_batch_size
            completed = _auto_completed(model_file, self.name, to_triton_json(current))
            if completed is not None:
                max_batch_size = completed.get("max_batch_size", max_batch_size)
                if not isinstance(max_batch_size, int) or max_batch_size < 0:
                    raise ConfigError(
                        f"{model_file}: auto_complete_config set max_batch_size "
                        f"{max_batch_size!r}; it must be a whole number >= 0"
                    )
                if completed.get("model_transaction_policy", {}).get("decoupled"):
                    raise ConfigError(
                        f"{model_file}: auto_complete_config makes the model decoupled (any "
                        "number of responses to a request), which is not supported yet"
                    )
                if "dynamic_batching" in completed and not dynamic:
                    values["dynamic_batching"] = {}
                    dynamic = True
                rendered = to_triton_json(current)
                inputs = self._completed_python("input", completed, rendered, inputs, values)
                outputs = self._completed_python("output", completed, rendered, outputs, values)
        if not inputs or not outputs:
            raise self.fail(
                d,
                "backend" if "backend" in d.positions else ("input" if not inputs else "output"),
                "Triton Python models (backend 'python') need input and output in config.pbtxt "
                "(or a TritonPythonModel.auto_complete_config that adds them): a model.py has "
                "no tensors to complete them from",
            )
        return max_batch_size, inputs, outputs, dynamic

    def _completed_python(
        self,
        kind: str,
        completed: Mapping[str, Any],
        rendered: Mapping[str, Any],
        tensors: list[_Tensor],
        values: dict[str, Any],
    ) -> list[_Tensor]:
        """The ``input`` or ``output`` list as ``auto_complete_config`` left it, checked."""
        entries = completed.get(kind, [])
        if entries == rendered.get(kind, []):
            return tensors  # unchanged: already read (and warned about) from config.pbtxt
        known = {entry.get("name"): entry for entry in values.get(kind, [])}
        checked: list[_Tensor] = []
        kept = []
        max_batch_size: int = completed.get("max_batch_size", 0)
        for index, entry in enumerate(entries):
            decoded = Decoded(self.decoded.path)  # no positions: messages name the file
            decoded.update(entry)
            tensor = self._tensor(decoded, kind, index, max_batch_size)
            if any(t.name == tensor.name for t in checked):
                raise self.fail(decoded, "name", f"{kind} {tensor.name!r} is given twice")
            checked.append(tensor)
            kept.append({**known.get(tensor.name, {}), **_tensor_values(tensor)})
        values[kind] = kept
        return checked

    # -- sequence batching -------------------------------------------------------------------

    def _sequence(self, batching: Decoded, max_batch_size: int) -> SequenceConfig:
        """``sequence_batching`` as coserve's :class:`SequenceConfig` (its controls checked)."""
        for key, problem in (
            (
                "state",
                "implicit state (state tensors the server keeps between a sequence's "
                "requests) is not supported: keep the state in the model (a Triton Python "
                "model can, by correlation_id()) and use the CORRID control input",
            ),
            (
                "iterative_sequence",
                "iterative_sequence is not supported: coserve does not reschedule a request",
            ),
        ):
            if batching.get(key):
                raise self.fail(batching, key, problem)
        idle: int = batching.get("max_sequence_idle_microseconds", 0) or 1_000_000
        controls: list[SequenceControl] = []
        for entry in batching.get("control_input", []):
            control = self._control(entry)
            if any(c.kind == control.kind for c in controls):
                raise self.fail(entry, "control", f"a second {control.kind.upper()} control input")
            if any(c.name == control.name for c in controls):
                raise self.fail(entry, "name", f"control input {control.name!r} is named twice")
            controls.append(control)
        if "oldest" in batching:
            oldest: Decoded = batching["oldest"]
            candidates: int = oldest.get("max_candidate_sequences", 0)
            if candidates < 0:
                raise self.fail(
                    oldest,
                    "max_candidate_sequences",
                    f"max_candidate_sequences must be >= 0, got {candidates}",
                )
            return SequenceConfig("oldest", idle / 1e6, candidates or None, tuple(controls))
        return SequenceConfig("direct", idle / 1e6, None, tuple(controls))

    def _control(self, entry: Decoded) -> SequenceControl:
        name: str = entry.get("name", "")
        if not name:
            raise self.fail(entry, "name", "a control input needs a name")
        controls: list[Decoded] = entry.get("control", [])
        if len(controls) != 1:
            raise self.fail(
                entry,
                "control" if controls else "name",
                f"control input {name!r} must have exactly one control, has {len(controls)}",
            )
        [control] = controls
        kind = str(control.get("kind", "CONTROL_SEQUENCE_START"))
        short = _CONTROL_KINDS.get(kind)
        if short is None:
            raise self.fail(
                control,
                "kind",
                f"control kind {kind} is not supported (coserve fills in START, END, READY "
                "and CORRID)",
            )
        if short == "corrid":
            data_type = control.get("data_type")
            datatype = _CORRID_TYPES.get(str(data_type))
            if datatype is None:
                raise self.fail(
                    control,
                    "data_type" if data_type else "kind",
                    "a CORRID control needs data_type TYPE_UINT64, TYPE_INT64, TYPE_UINT32, "
                    f"TYPE_INT32 or TYPE_STRING, got {data_type or 'none'}",
                )
            return SequenceControl(short, name, datatype)
        given = [key for key in _FALSE_TRUE if key in control]
        if len(given) != 1:
            raise self.fail(
                control,
                given[1] if len(given) > 1 else "kind",
                f"control input {name!r} needs exactly one of int32_false_true, "
                "fp32_false_true and bool_false_true",
            )
        [key] = given
        values: list[Any] = control[key]
        if len(values) != 2:
            raise self.fail(
                control, key, f"{key} must hold two values, false then true, got {values}"
            )
        return SequenceControl(short, name, _FALSE_TRUE[key], float(values[0]), float(values[1]))

    def _without_controls(
        self, inputs: list[_Tensor], sequence: SequenceConfig, values: dict[str, Any]
    ) -> list[_Tensor]:
        """The inputs clients send, without the control inputs.

        A control input listed as an input (auto-complete lists what the model file has) is
        the control's, and goes from the config's inputs.
        """
        names = {control.name for control in sequence.controls}
        listed = [t for t in inputs if t.name in names]
        for tensor in listed:
            control = next(c for c in sequence.controls if c.name == tensor.name)
            if tensor.datatype != control.datatype:
                raise self.fail(
                    self.decoded,
                    "sequence_batching",
                    f"control input {tensor.name!r} is {control.datatype} in "
                    f"sequence_batching, but {tensor.datatype} as an input",
                )
        if listed:
            values["input"] = [v for v in values.get("input", []) if v.get("name") not in names]
        return [t for t in inputs if t.name not in names]

    def _sequence_batching(
        self, batching: Decoded, options: BatchingConfig, max_batch_size: int
    ) -> BatchingConfig:
        strategy: Decoded = (
            batching.get("oldest") or batching.get("direct") or Decoded(batching.path)
        )
        delay: int = strategy.get("max_queue_delay_microseconds", 0)
        for key in ("preferred_batch_size", "minimum_slot_utilization", "preserve_ordering"):
            if key in strategy:
                self.warn(
                    strategy,
                    key,
                    f"{key} is not applied: a batch holds the next request of each sequence "
                    "that has one when a slot is free, waiting at most "
                    "max_queue_delay_microseconds for more",
                )
        instances = options.max_concurrent_batches
        if "oldest" not in batching and instances > 1:
            self.warn(
                self.decoded,
                "instance_group",
                f"{instances} instances are not applied to the Direct strategy: coserve has "
                f"one instance of the model, whose {max(max_batch_size, 1)} batch slots the "
                "sequences own, and runs its batches one at a time",
            )
        return replace(options, max_wait=delay / 1e6, combine_requests=max_batch_size > 0)

    # -- batching, instances, parameters, labels --------------------------------------------

    def _batching(self, max_batch_size: int, dynamic: bool) -> BatchingConfig:
        options: dict[str, Any] = {
            "max_batch_size": max_batch_size if max_batch_size > 0 else UNBATCHED_MAX_ROWS,
            "max_concurrent_batches": self._instances(),
            "combine_requests": dynamic and max_batch_size > 0,
        }
        if "dynamic_batching" in self.decoded:
            options.update(self._dynamic(self.decoded["dynamic_batching"], max_batch_size))
        return BatchingConfig(**options)

    def _dynamic(self, batching: Decoded, max_batch_size: int) -> dict[str, Any]:
        options: dict[str, Any] = {}
        options["max_wait"] = batching.get("max_queue_delay_microseconds", 0) / 1e6
        preferred: list[int] = batching.get("preferred_batch_size", [])
        if any(size <= 0 or size > max_batch_size for size in preferred):
            raise self.fail(
                batching,
                "preferred_batch_size",
                f"preferred_batch_size {preferred} "
                f"must be between 1 and max_batch_size ({max_batch_size})",
            )
        if preferred:
            self.warn(
                batching,
                "preferred_batch_size",
                f"preferred_batch_size {preferred} is not "
                "used: coserve runs whatever is queued (up to max_batch_size) as soon as an "
                "execution slot is free, waiting at most max_queue_delay_microseconds for "
                "more",
            )
        if batching.get("preserve_ordering"):
            self.warn(
                batching,
                "preserve_ordering",
                "preserve_ordering is not applied: coserve "
                "answers each request as soon as its batch is done",
            )
        levels: int = batching.get("priority_levels", 0)
        default_level: int = batching.get("default_priority_level", 0)
        per_level: Decoded = batching.get("priority_queue_policy", Decoded(batching.path))
        if levels:
            if not 1 <= default_level <= levels:
                raise self.fail(
                    batching,
                    "default_priority_level" if default_level else "priority_levels",
                    f"default_priority_level must be between 1 "
                    f"and priority_levels ({levels}), got {default_level}",
                )
            for level in per_level:
                if not 1 <= level <= levels:
                    raise self.fail(
                        per_level,
                        level,
                        f"priority_queue_policy level {level} is "
                        f"not between 1 and priority_levels ({levels})",
                    )
            if default_level != 1:
                self.warn(
                    batching,
                    "default_priority_level",
                    f"default_priority_level "
                    f"{default_level} is not applied: a request that gives no priority "
                    "ranks with level 1, the first to run (coserve runs requests by the "
                    "priority they give, 1 first, with no fixed number of levels)",
                )
        elif "default_priority_level" in batching:
            self.warn(
                batching,
                "default_priority_level",
                "default_priority_level is not applied without priority_levels",
            )
        if per_level:
            self.warn(
                batching,
                "priority_queue_policy",
                "priority_queue_policy is not applied: "
                "every priority level has the default_queue_policy's queue and timeout",
            )
        queue = batching.get("default_queue_policy")
        bound = BatchingConfig().max_queue_size
        if queue is None:
            logger.debug(
                "model %s: Triton's queue would be unbounded; coserve's holds %d requests",
                self.name,
                bound,
            )
            return options
        size: int = queue.get("max_queue_size", 0)
        if size:
            options["max_queue_size"] = size
        else:
            logger.info(
                "%s: model %s: max_queue_size 0 (unbounded in Triton): coserve keeps its "
                "bound of %d requests",
                self.where(batching, "default_queue_policy"),
                self.name,
                bound,
            )
        timeout: int = queue.get("default_timeout_microseconds", 0)
        if timeout:
            options["timeout"] = timeout / 1e6
        if queue.get("timeout_action") == "DELAY":
            self.warn(
                queue,
                "timeout_action",
                "timeout_action DELAY is not applied: a request "
                "still queued at its timeout fails (REJECT)",
            )
        if "allow_timeout_override" in queue:
            self.warn(
                queue,
                "allow_timeout_override",
                "allow_timeout_override is not applied: "
                "coserve lets every request set its own timeout, shorter or longer",
            )
        return options

    def _instances(self) -> int:
        total = 0
        for group in self.decoded.get("instance_group", []):
            count = max(group.get("count", 0), 1)
            total += count
            if group.get("kind") == "KIND_GPU":
                self.warn(
                    group,
                    "kind",
                    f"instance_group kind KIND_GPU: coserve runs this model "
                    f"on the CPU ({count} batch(es) at once)",
                )
            for key in group:
                if key not in ("name", "kind", "count", "gpus"):
                    self.warn(group, key, f"instance_group {key} is not applied")
        return total or 1

    def _parameters(self, coserve_platform: str) -> ThreadConfig:
        parameters = self.decoded.get("parameters", {})
        threads: dict[str, int] = {}
        for key, value in parameters.items():
            field = {"intra_op_thread_count": "intra_op", "inter_op_thread_count": "inter_op"}.get(
                key
            )
            if field is None or coserve_platform != "onnx_onnxv1":
                self.warn(parameters, key, f"parameter {key!r} is not applied")
                continue
            text = value.get("string_value", "")
            try:
                count = int(text)
            except ValueError:
                raise self.fail(
                    parameters, key, f"parameter {key!r} must be a whole number, got {text!r}"
                ) from None
            if count > 0:  # 0 is ONNX Runtime's own default
                threads[field] = count
        return ThreadConfig(**threads)

    def _labels(self) -> tuple[str, ...]:
        labelled = [e for e in self.decoded.get("output", []) if e.get("label_filename")]
        for extra in labelled[1:]:
            self.warn(
                extra,
                "label_filename",
                "only the first output's label_filename is used "
                "(coserve keeps one list of labels per model)",
            )
        if not labelled:
            return ()
        entry = labelled[0]
        path = self.folder / entry["label_filename"]
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise self.fail(
                entry, "label_filename", f"cannot read labels {path}: {error}"
            ) from None
        return tuple(line.strip() for line in lines if line.strip())

    # -- the completed config, as Triton would have it --------------------------------------

    def _complete_values(
        self,
        values: dict[str, Any],
        platform: str,
        backend: str,
        filename: str,
        max_batch_size: int,
        dynamic: bool,
    ) -> None:
        """Add what Triton's normalization adds (``NormalizeModelConfig``)."""
        values["name"] = self.name
        values["platform"] = "" if platform == "python" else platform  # Triton's: backend only
        values["backend"] = backend
        values.setdefault("version_policy", {"latest": {"num_versions": 1}})
        values["max_batch_size"] = max_batch_size
        values["default_model_filename"] = filename
        if dynamic:
            batching = values.setdefault("dynamic_batching", {})
            if not batching.get("preferred_batch_size") and max_batch_size > 0:
                batching["preferred_batch_size"] = [max_batch_size]
        optimization = values.setdefault("optimization", {})
        optimization.setdefault("input_pinned_memory", {"enable": True})
        optimization.setdefault("output_pinned_memory", {"enable": True})
        groups = values.get("instance_group") or [{"name": self.name}]
        for index, group in enumerate(groups):
            group.setdefault("name", f"{self.name}_{index}")
            if group.get("kind", "KIND_AUTO") == "KIND_AUTO":
                group["kind"] = "KIND_CPU"
            group["count"] = max(group.get("count", 0), 1)
        values["instance_group"] = groups


def _cycle(after: Sequence[set[int]]) -> list[int]:
    """A cycle in a graph given as each node's predecessors (empty if it has none)."""
    state = [0] * len(after)  # 0: not seen, 1: on the path being walked, 2: done
    path: list[int] = []

    def walk(node: int) -> list[int]:
        state[node] = 1
        path.append(node)
        for previous in sorted(after[node]):
            if state[previous] == 1:
                return path[path.index(previous) :][::-1]
            if state[previous] == 0:
                found = walk(previous)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return []

    for node in range(len(after)):
        if state[node] == 0:
            found = walk(node)
            if found:
                return found
    return []


def _runs(dims: tuple[int, ...]) -> list[int]:
    """The element counts of the runs of fixed dimensions between the variable ones."""
    runs, count = [], 1
    for dim in dims:
        if dim == -1:
            runs.append(count)
            count = 1
        else:
            count *= dim
    runs.append(count)
    return runs


def _count(dims: tuple[int, ...]) -> int:
    return math.prod(dims) if dims and -1 not in dims else -1


def _completed_tensor(spec: TensorSpec, max_batch_size: int) -> _Tensor:
    """A tensor the model file gave, in config terms (``AutoCompleteIO``)."""
    dims = spec.shape[1:] if max_batch_size > 0 else spec.shape
    reshape = None
    if not dims:  # a scalar per row: dims [1] on the API, nothing on the model
        dims = (1,)
        reshape = () if max_batch_size > 0 else None
    return _Tensor(spec.name, spec.datatype, dims, reshape)


def _tensor_values(tensor: _Tensor) -> dict[str, Any]:
    values: dict[str, Any] = {
        "name": tensor.name,
        "data_type": _TRITON_TYPES[tensor.datatype],
        "dims": list(tensor.dims),
    }
    if tensor.reshape is not None:
        values["reshape"] = {"shape": list(tensor.reshape)}
    return values


def _plain(value: Any) -> Any:
    """Decoded values as plain dicts and lists, to complete and keep."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


# -- reading the model file -------------------------------------------------------------------

_SPECS: dict[tuple[str, str, int, int], tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]] = {}
_SPECS_LOCK = threading.Lock()


def _file_specs(
    platform: str, path: Path, name: str
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The input and output specs a model file has, loading it once per change of the file.

    Repository polls read every folder again; the file is not loaded again for that.
    """
    marker = path / "saved_model.pb" if path.is_dir() else path
    try:
        stat = (marker if marker.exists() else path).stat()
    except OSError as error:
        raise ModelLoadError(f"model {name!r}: cannot read {path}: {error}") from error
    key = (str(path), platform, stat.st_mtime_ns, stat.st_size)
    with _SPECS_LOCK:
        known = _SPECS.get(key)
    if known is not None:
        return known
    backend: Any
    if platform == "onnx_onnxv1":
        from coserve.models.backends.onnx import OnnxModel

        backend = OnnxModel(path, name=name, version="auto-complete")
    else:
        from coserve.models.backends.tensorflow import TensorFlowSavedModel

        backend = TensorFlowSavedModel(path, name=name, version="auto-complete")
    try:
        specs = (tuple(backend.inputs), tuple(backend.outputs))
    finally:
        backend.close()
    with _SPECS_LOCK:
        _SPECS[key] = specs
    return specs


_AUTO_COMPLETED: dict[tuple[str, int, int, str], dict[str, Any] | None] = {}


def _auto_completed(path: Path, name: str, config: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a Python model's ``auto_complete_config`` makes of ``config`` (Triton's JSON).

    None if the file defines no such hook. Only a file that names ``auto_complete_config`` is
    imported (a model's imports can take seconds), and what it said is kept until the file or
    the config changes, so repository polls do not import it again.

    Raises:
        ModelLoadError: The file cannot be read or imported.
        ConfigError: The hook raised, or returned something else than the config it was given.
    """
    try:
        stat = path.stat()
        text = path.read_bytes()
    except OSError as error:
        raise ModelLoadError(f"model {name!r}: cannot read {path}: {error}") from error
    if b"auto_complete_config" not in text:
        return None
    key = (str(path), stat.st_mtime_ns, stat.st_size, json.dumps(config, sort_keys=True))
    with _SPECS_LOCK:
        if key in _AUTO_COMPLETED:
            return _AUTO_COMPLETED[key]
    # Imported here: the backend imports this module.
    from coserve.models.backends import triton_python_utils as pb_utils
    from coserve.models.backends.triton_python import import_model_file

    module = import_model_file(path, name=name, version="auto-complete")
    hook = getattr(getattr(module, "TritonPythonModel", None), "auto_complete_config", None)
    completed: dict[str, Any] | None = None
    if callable(hook):
        given = pb_utils.ModelConfig(config)
        try:
            returned = hook(given)
        except Exception as error:
            raise ConfigError(f"{path}: auto_complete_config failed: {error!r}") from error
        if not isinstance(returned, pb_utils.ModelConfig):
            raise ConfigError(
                f"{path}: auto_complete_config must return the config it was given, got "
                f"{type(returned).__name__}"
            )
        completed = returned.as_dict()
    with _SPECS_LOCK:
        _AUTO_COMPLETED[key] = completed
    return completed


# -- a coserve config in Triton's terms -------------------------------------------------------


def _from_coserve(
    config: ModelConfig, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> dict[str, Any]:
    # Imported here: _repository imports _layout, which imports this module.
    from coserve.models._repository import DEFAULT_FILENAMES

    batching = config.batching
    platform = _TRITON_PLATFORM.get(config.platform, config.platform)
    backend = _SERVED[platform][0] if platform in _SERVED else ""
    if platform == "python":
        platform = ""  # as Triton shows a Python model: its backend only
    lead = 1 if config.batched else 0

    def tensor(spec: TensorSpec) -> dict[str, Any]:
        # A batched vector shows as dims [], as coserve takes it ([rows]); Triton would need
        # dims [1] with an empty reshape, which would tell a client to send [rows, 1].
        return {
            "name": spec.name,
            "data_type": _TRITON_TYPES[spec.datatype],
            "dims": list(spec.shape[lead:]),
        }

    policy = config.versions
    if policy.policy == "all":
        version_policy: dict[str, Any] = {"all": {}}
    elif policy.policy == "specific":
        version_policy = {"specific": {"versions": list(policy.specific)}}
    else:
        version_policy = {"latest": {"num_versions": policy.latest}}
    values: dict[str, Any] = {
        "name": config.name,
        "platform": platform,
        "backend": backend,
        "version_policy": version_policy,
        "max_batch_size": batching.max_batch_size if config.batched else 0,
        "input": [tensor(spec) for spec in inputs],
        "output": [tensor(spec) for spec in outputs],
        "instance_group": [
            {"name": config.name, "kind": "KIND_CPU", "count": batching.max_concurrent_batches}
        ],
        "default_model_filename": config.filename or DEFAULT_FILENAMES.get(config.platform, ""),
    }
    if config.sequence is not None:
        values["sequence_batching"] = _sequence_values(config, inputs)
        controls = {control.name for control in config.sequence.controls}
        values["input"] = [t for t in values["input"] if t["name"] not in controls]
    elif batching.combine_requests and config.batched:
        queue: dict[str, Any] = {
            "timeout_action": "REJECT",
            "allow_timeout_override": True,  # coserve honours every request's own timeout
            "max_queue_size": batching.max_queue_size,
        }
        if batching.timeout:
            queue["default_timeout_microseconds"] = round(batching.timeout * 1e6)
        values["dynamic_batching"] = {
            "preferred_batch_size": [batching.max_batch_size],
            "max_queue_delay_microseconds": round(batching.max_wait * 1e6),
            "default_queue_policy": queue,
        }
    return values


def _sequence_values(config: ModelConfig, inputs: Sequence[TensorSpec]) -> dict[str, Any]:
    """A coserve ``[sequence]`` table as Triton's ``sequence_batching``."""
    sequence = config.sequence
    assert sequence is not None
    declared = {spec.name: spec.datatype for spec in (*(config.inputs or ()), *inputs)}
    kinds = {short: kind for kind, short in _CONTROL_KINDS.items()}
    controls = []
    for control in sequence.controls:
        datatype = control.datatype or declared.get(control.name, "INT32")
        entry: dict[str, Any] = {"kind": kinds[control.kind]}
        if control.kind == "corrid":
            entry["data_type"] = _TRITON_TYPES[datatype]
        else:
            key = {"FP32": "fp32_false_true", "BOOL": "bool_false_true"}.get(
                datatype, "int32_false_true"
            )
            pair = [control.false, control.true]
            entry[key] = (
                [bool(v) for v in pair]
                if key == "bool_false_true"
                else (pair if key == "fp32_false_true" else [int(v) for v in pair])
            )
        controls.append({"name": control.name, "control": [entry]})
    strategy: dict[str, Any] = {
        "max_queue_delay_microseconds": round(config.batching.max_wait * 1e6)
    }
    if sequence.strategy == "oldest" and sequence.max_sequences:
        strategy["max_candidate_sequences"] = sequence.max_sequences
    return {
        sequence.strategy: strategy,
        "max_sequence_idle_microseconds": round(sequence.max_idle * 1e6),
        "control_input": controls,
    }


# -- Triton's JSON ----------------------------------------------------------------------------


def _render(message: Mapping[Any, Any], schema: MessageSchema, path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, spec in schema.fields.items():
        here = f"{path}.{name}" if path else name
        if name in message:
            out[name] = _render_field(message[name], spec, here)
        elif spec.kind == "map":
            out[name] = {}
        elif spec.repeated:
            out[name] = []
        elif spec.kind != "message" and spec.oneof is None:  # no presence: printed anyway
            out[name] = _render_one(_default(spec), spec, here)
    return out


def _render_field(value: Any, spec: FieldSchema, path: str) -> Any:
    if spec.kind == "map":
        assert spec.message is not None
        entry = spec.message.fields["value"]
        return {
            _map_key(key): _render_one(item, entry, f"{path}.value") for key, item in value.items()
        }
    if spec.repeated:
        return [_render_one(item, spec, path) for item in value]
    return _render_one(value, spec, path)


def _render_one(value: Any, spec: FieldSchema, path: str) -> Any:
    kind = spec.kind
    if kind == "message":
        assert spec.message is not None
        return _render(value, spec.message, path)
    if kind in ("int64", "uint64"):
        return int(value) if path in _NUMERIC_64 else str(value)
    if kind in ("float", "double"):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if kind == "bytes":
        return base64.b64encode(value).decode("ascii")
    return value


def _map_key(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


def _default(spec: FieldSchema) -> Any:
    if spec.kind == "enum":
        assert spec.enum is not None
        return spec.enum.default
    return {"string": "", "bytes": b"", "bool": False, "float": 0.0, "double": 0.0}.get(
        spec.kind, 0
    )
