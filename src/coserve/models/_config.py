"""A model's ``config.toml``: parsed strictly, so a typo is an error that names the key and file.

The format, with every key (all optional but ``platform``)::

    platform = "tensorflow_savedmodel"  # or tensorflow_keras, onnx_onnxv1,
                                        # pytorch_torchscript, pytorch_export, python,
                                        # triton_python (a Triton TritonPythonModel)
    signature = "serving_default"       # TensorFlow SavedModel only
    filename = "model.onnx"             # the file or folder inside each version folder
    labels = "labels.txt"               # class labels, one per line, for classifiers
    warm_up = true                      # run each batch size once at load

    [batching]                          # everything the Batcher takes
    max_batch_size = 64
    max_wait = 0.0                      # seconds
    max_concurrent_batches = 1
    max_queue_size = 1024
    timeout = 30.0                      # default request deadline, seconds
    grace_period = 30.0
    allowed_batch_sizes = [1, 2, 4, 8, 16, 32, 64]
    pad_to_allowed_batch_size = false   # pad a batch up to the next allowed size
    combine_requests = true             # false: each request runs alone, never batched with
                                        # others (TF Serving without --enable_batching)
    target_latency = "p99<20ms"         # adaptive: the batcher picks each batch's size and
                                        # linger to meet it (max_batch_size and max_wait > 0
                                        # bound them); off when absent

    [padding]                           # variable-length inputs, padded so requests batch
    inputs = ["tokens"]                 # the inputs whose length (dimension 1) varies
    buckets = [16, 32, 64, 128]         # padded lengths: each row goes to the first that holds
                                        # it, and a batch holds one bucket's rows
    max_length = 128                    # longer ones are refused (default: the last bucket;
                                        # with no buckets, powers of two from 8 up to it)
    value = 0                           # what pads them ("first": each tensor's first element)
    mask = "attention_mask"             # optional: an input coserve adds, 1 where real, 0 padded
    lengths = "lengths"                 # optional: an input coserve adds, each row's length
    trim = ["token_logits"]             # outputs cut back to each request's length (dimension 1)

    [sequence]                          # a stateful model (Triton's sequence batching): every
                                        # request names a sequence (sequence_id, _start, _end)
    strategy = "direct"                 # direct: a sequence owns one batch row, its slot;
                                        # oldest: batches of the oldest sequences' requests
    max_idle = 1.0                      # seconds without a request before a sequence expires
    max_sequences = 64                  # sequences at once (direct: max_batch_size), the rest wait
    start = "START"                     # the model's control inputs, each optional: 1 on a
    end = "END"                         # sequence's first / last request, 1 on the rows that
    ready = "READY"                     # hold a request (direct fills free slots with 0),
    corrid = "CORRID"                   # and the sequence id

    [threads]                           # per backend: TF intra/inter-op, ORT intra-op, torch
    intra_op = 2
    inter_op = 1

    [versions]
    policy = "latest"                   # latest | all | specific
    latest = 1                          # how many, for "latest"
    specific = [1, 3]                   # which, for "specific"

    [[inputs]]                          # overrides; needed where the file carries no specs
    name = "image"
    datatype = "FP32"
    shape = [-1, 8, 8, 1]

    [[outputs]]
    name = "probabilities"
    datatype = "FP32"
    shape = [-1, 10]
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coserve._exceptions import ConfigError
from coserve.batching import LatencyTarget
from coserve.models._specs import TensorSpec

__all__ = [
    "CONTROL_KINDS",
    "PLATFORMS",
    "BatchingConfig",
    "EnsembleConfig",
    "EnsembleStep",
    "ModelConfig",
    "PaddingConfig",
    "SequenceConfig",
    "SequenceControl",
    "ThreadConfig",
    "VersionPolicy",
]

PLATFORMS = (
    "tensorflow_savedmodel",
    "tensorflow_keras",
    "onnx_onnxv1",
    "pytorch_torchscript",
    "pytorch_export",
    "python",
    "triton_python",
)


@dataclass(frozen=True, slots=True)
class PaddingConfig:
    """Variable-length inputs, padded to a few lengths (buckets) so that requests batch.

    Attributes:
        inputs: The inputs whose dimension 1 (the first after the rows) varies; in a request
            they all have the same length there. Empty: every input of the model whose
            dimension 1 is variable (TF Serving's ``pad_variable_length_inputs``).
        buckets: The padded lengths, ascending: a request is padded to the first that holds
            it, and batched only with requests of its bucket. The last is ``max_length``.
        value: What the padding holds; None: each tensor's own first element, as TF Serving
            pads (so the padding is a value the model already takes).
        mask: The name of an input coserve adds (INT32, rows x bucket): 1 where a row is real,
            0 where padded; None: none.
        lengths: The name of an input coserve adds (INT32, one per row): each row's length.
        trim: Outputs that carry the padded dimension (1): cut back to the request's length.
    """

    inputs: tuple[str, ...]
    buckets: tuple[int, ...]
    value: float | None = 0
    mask: str | None = None
    lengths: str | None = None
    trim: tuple[str, ...] = ()

    @property
    def max_length(self) -> int:
        """The longest length a request may have."""
        return self.buckets[-1]

    def bucket(self, length: int) -> int | None:
        """The padded length for a request of ``length`` (None: over ``max_length``)."""
        index = bisect.bisect_left(self.buckets, length)
        return self.buckets[index] if index < len(self.buckets) else None

    @staticmethod
    def powers_of_two(max_length: int) -> tuple[int, ...]:
        """Buckets 8, 16, 32... up to ``max_length`` (which is the last)."""
        sizes = [size for size in (8 * 2**i for i in range(32)) if size < max_length]
        return (*sizes, max_length)


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    """The batching policy of one model: the Batcher's options plus batch-size padding."""

    max_batch_size: int = 64
    max_wait: float = 0.0
    max_concurrent_batches: int = 1
    max_queue_size: int = 1024
    timeout: float | None = None
    grace_period: float = 30.0
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_to_allowed_batch_size: bool = False
    combine_requests: bool = True
    """False runs each request as a batch of its own (a large one still split at
    ``max_batch_size``): no batching across requests."""
    padding: PaddingConfig | None = None
    """Variable-length inputs padded to buckets (``[padding]``); None: requests batch with
    requests of exactly their shapes."""
    target_latency: LatencyTarget | None = None
    """Adaptive batching to this latency target (``Batcher``'s ``target_latency``)."""

    def warm_up_sizes(self) -> list[int]:
        """The batch sizes a warm-up should run: the allowed ones, else powers of two.

        A model that never combines requests warms up with one row: its batches are requests.
        """
        if self.allowed_batch_sizes:
            return list(self.allowed_batch_sizes)
        if not self.combine_requests:
            return [1]
        sizes = [1]
        while sizes[-1] * 2 < self.max_batch_size:
            sizes.append(sizes[-1] * 2)
        if sizes[-1] != self.max_batch_size:
            sizes.append(self.max_batch_size)
        return sizes


CONTROL_KINDS = ("start", "end", "ready", "corrid")
"""The control inputs a sequence model may take, as ``[sequence]`` names them."""


@dataclass(frozen=True, slots=True)
class SequenceControl:
    """One control input that coserve fills in for a sequence model.

    Attributes:
        kind: ``start``, ``end``, ``ready`` (the row holds a request) or ``corrid`` (the
            sequence id).
        name: The model input it feeds.
        datatype: Its protocol datatype (None: the model's input's own).
        false: The value for "no" (a flag) or for a row without a request (``corrid``).
        true: The value for "yes" (unused for ``corrid``).
    """

    kind: str
    name: str
    datatype: str | None = None
    false: float = 0
    true: float = 1


@dataclass(frozen=True, slots=True)
class SequenceConfig:
    """How a stateful model's sequences are scheduled (Triton's ``sequence_batching``).

    Attributes:
        strategy: ``direct``: each sequence owns one row (slot) of the batches for its life, so
            the model may keep state per row; batches run one at a time. ``oldest``: batches
            hold the oldest sequences' next requests, one per sequence, in any row.
        max_idle: Seconds a sequence may go without a request before it expires.
        max_sequences: Sequences active at once (direct: at most ``max_batch_size``); a new
            one waits for a free place.
        controls: The control inputs coserve fills in.
    """

    strategy: str = "direct"
    max_idle: float = 1.0
    max_sequences: int | None = None
    controls: tuple[SequenceControl, ...] = ()

    def control(self, kind: str) -> SequenceControl | None:
        """The control input of a kind, if the model takes one."""
        return next((c for c in self.controls if c.kind == kind), None)


@dataclass(frozen=True, slots=True)
class ThreadConfig:
    """Thread counts for the backend's own thread pools (None: the runtime's default)."""

    intra_op: int | None = None
    inter_op: int | None = None


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """Which version folders to serve."""

    policy: str = "latest"
    latest: int = 1
    specific: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        """Pick the versions to serve out of those on disk (ascending)."""
        ordered = sorted(available)
        if self.policy == "all":
            return ordered
        if self.policy == "specific":
            return [v for v in ordered if v in self.specific]
        return ordered[-self.latest :]


@dataclass(frozen=True, slots=True)
class EnsembleStep:
    """One step of a Triton ensemble: a composing model and how its tensors are wired.

    Attributes:
        model: The composing model's name.
        version: The version it runs (None: the newest loaded, Triton's ``model_version: -1``).
        inputs: ``(model input, ensemble tensor)`` pairs (``input_map``).
        outputs: ``(model output, ensemble tensor)`` pairs (``output_map``).
        where: ``file:line:column`` of the step, for messages.
        input_where: ``file:line:column`` of each ``input_map`` entry, in order.
        output_where: ``file:line:column`` of each ``output_map`` entry, in order.
    """

    model: str
    version: str | None
    inputs: tuple[tuple[str, str], ...]
    outputs: tuple[tuple[str, str], ...]
    where: str
    input_where: tuple[str, ...] = ()
    output_where: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EnsembleConfig:
    """A Triton ensemble's steps (``ensemble_scheduling``), checked to form a DAG.

    Attributes:
        steps: The steps, in the order the file gives them.
        max_inflight: The most calls in flight at once per step (Triton's
            ``max_inflight_requests``); 0: no bound beyond the composing model's queue.
        where: ``file:line:column`` of ``ensemble_scheduling``, for messages.
    """

    steps: tuple[EnsembleStep, ...]
    max_inflight: int = 0
    where: str = ""


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Everything a model's ``config.toml`` says."""

    name: str
    platform: str
    signature: str = "serving_default"
    filename: str | None = None
    labels: tuple[str, ...] = ()
    warm_up: bool = True
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    threads: ThreadConfig = field(default_factory=ThreadConfig)
    versions: VersionPolicy = field(default_factory=VersionPolicy)
    inputs: tuple[TensorSpec, ...] | None = None
    outputs: tuple[TensorSpec, ...] | None = None
    batched: bool = True
    """False: the tensors have no batch dimension (Triton's ``max_batch_size: 0``), so each
    request runs alone and whole (as one row), its tensors of the config's shapes exactly."""
    reshape: tuple[tuple[str, tuple[int, ...]], ...] = ()
    """Tensors the model takes or gives in another shape than the API shows (Triton's
    ``reshape``): each tensor's name and the model's shape (after the batch dimension, if
    batched)."""
    ensemble: EnsembleConfig | None = None
    """A Triton ensemble's steps (platform ``ensemble``); None for any other model."""
    sequence: SequenceConfig | None = None
    """A stateful model's sequence scheduling; None: requests are independent. ``inputs``
    then include the control inputs, which clients do not send."""
    triton: Mapping[str, Any] | None = field(default=None, hash=False, repr=False)
    """The completed Triton config (``config.pbtxt`` with what Triton's auto-complete adds), as
    plain values, for ``GET /v2/models/{m}/config``; None for a model from ``config.toml``."""

    @classmethod
    def load(cls, path: Path, *, name: str | None = None) -> ModelConfig:
        """Read and check ``<model>/config.toml``; the model's name is its folder's by default.

        Raises:
            ConfigError: The file cannot be read or parsed, a key is unknown, or a value is bad.
        """
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(f"{path}: cannot read the model config: {error}") from error
        return _Parser(path).model(raw, name=name or path.parent.name)


class _Parser:
    """Checks one config file's values, naming the file and the key in every error."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key}: {problem}")

    def table(self, raw: Any, where: str, known: tuple[str, ...]) -> Mapping[str, Any]:
        if not isinstance(raw, dict):
            raise self.fail(where, f"expected a table, got {type(raw).__name__}")
        for key in raw:
            if key not in known:
                full = f"{where}.{key}" if where else key
                raise self.fail(full, f"unknown key (known here: {', '.join(known)})")
        return raw

    def typed(
        self, raw: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str
    ) -> Any:
        value = raw[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python; a config "true" must not pass for a number.
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            wanted = " or ".join(k.__name__ for k in kinds)
            raise self.fail(f"{where}{key}", f"expected {wanted}, got {value!r}")
        return value

    def positive(self, raw: Mapping[str, Any], key: str, where: str, *, zero: bool = False) -> Any:
        value = self.typed(raw, key, (int, float), where)
        if value < 0 or (value == 0 and not zero):
            raise self.fail(f"{where}{key}", f"must be {'>= 0' if zero else '> 0'}, got {value!r}")
        return value

    def model(self, raw: dict[str, Any], name: str) -> ModelConfig:
        top = self.table(
            raw,
            "",
            (
                "platform",
                "signature",
                "filename",
                "labels",
                "warm_up",
                "batching",
                "threads",
                "versions",
                "padding",
                "sequence",
                "inputs",
                "outputs",
            ),
        )
        if "platform" not in top:
            raise self.fail("platform", f"required; one of {', '.join(PLATFORMS)}")
        platform = self.typed(top, "platform", str, "")
        if platform not in PLATFORMS:
            raise self.fail("platform", f"{platform!r} is not one of {', '.join(PLATFORMS)}")
        options: dict[str, Any] = {"name": name, "platform": platform}
        for key in ("signature", "filename"):
            if key in top:
                options[key] = self.typed(top, key, str, "")
        if "warm_up" in top:
            options["warm_up"] = self.typed(top, "warm_up", bool, "")
        if "labels" in top:
            options["labels"] = self.labels(self.typed(top, "labels", str, ""))
        if "batching" in top:
            options["batching"] = self.batching(top["batching"])
        if "threads" in top:
            options["threads"] = self.threads(top["threads"])
        if "versions" in top:
            options["versions"] = self.versions(top["versions"])
        for key in ("inputs", "outputs"):
            if key in top:
                options[key] = self.specs(top[key], key)
        if "padding" in top:
            batching = options.get("batching", BatchingConfig())
            options["batching"] = dataclasses.replace(
                batching, padding=self.padding(top["padding"], batching)
            )
        if "sequence" in top:
            batching = options.get("batching", BatchingConfig())
            options["sequence"] = self.sequence(top["sequence"], batching)
        return ModelConfig(**options)

    def padding(self, raw: Any, batching: BatchingConfig) -> PaddingConfig:
        where = "padding."
        table = self.table(
            raw,
            "padding",
            ("inputs", "buckets", "max_length", "value", "mask", "lengths", "trim"),
        )
        names: dict[str, tuple[str, ...]] = {}
        for key in ("inputs", "trim"):
            listed = self.typed(table, key, list, where) if key in table else []
            if any(not isinstance(v, str) or not v for v in listed):
                raise self.fail(where + key, f"expected a list of names, got {listed}")
            names[key] = tuple(listed)
        if not names["inputs"]:
            raise self.fail(where + "inputs", "required: the inputs whose length varies")
        max_length = None
        if "max_length" in table:
            max_length = self.typed(table, "max_length", int, where)
            if max_length < 1:
                raise self.fail(where + "max_length", f"must be >= 1, got {max_length}")
        if "buckets" in table:
            buckets = self.typed(table, "buckets", list, where)
            if (
                not buckets
                or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in buckets)
                or sorted(set(buckets)) != buckets
            ):
                raise self.fail(
                    where + "buckets", f"expected ascending lengths >= 1, got {buckets}"
                )
            if max_length is not None and buckets[-1] != max_length:
                if buckets[-1] > max_length:
                    raise self.fail(
                        where + "buckets",
                        f"the largest ({buckets[-1]}) is over max_length ({max_length})",
                    )
                buckets = [*buckets, max_length]
        elif max_length is not None:
            buckets = list(PaddingConfig.powers_of_two(max_length))
        else:
            raise self.fail(where + "buckets", "give buckets, or max_length (powers of two)")
        value: float | None = 0.0
        if "value" in table:
            raw_value = self.typed(table, "value", (int, float, str), where)
            if isinstance(raw_value, str) and raw_value != "first":
                raise self.fail(where + "value", f'expected a number or "first", got {raw_value!r}')
            value = None if isinstance(raw_value, str) else float(raw_value)
        generated = {}
        for key in ("mask", "lengths"):
            if key in table:
                generated[key] = self.typed(table, key, str, where)
        if batching.pad_to_allowed_batch_size:
            raise self.fail(
                "batching.pad_to_allowed_batch_size",
                "not with [padding]: a batch of padded rows is padded by length, not by rows",
            )
        return PaddingConfig(
            names["inputs"],
            tuple(buckets),
            value,
            generated.get("mask"),
            generated.get("lengths"),
            names["trim"],
        )

    def sequence(self, raw: Any, batching: BatchingConfig) -> SequenceConfig:
        where = "sequence."
        table = self.table(
            raw, "sequence", ("strategy", "max_idle", "max_sequences", *CONTROL_KINDS)
        )
        strategy = self.typed(table, "strategy", str, where) if "strategy" in table else "direct"
        if strategy not in ("direct", "oldest"):
            raise self.fail(where + "strategy", f"expected direct or oldest, got {strategy!r}")
        max_idle = float(self.positive(table, "max_idle", where)) if "max_idle" in table else 1.0
        if not math.isfinite(max_idle):
            raise self.fail(
                where + "max_idle", f"must be a finite number of seconds, got {max_idle}"
            )
        max_sequences = None
        if "max_sequences" in table:
            max_sequences = self.typed(table, "max_sequences", int, where)
            if max_sequences < 1:
                raise self.fail(where + "max_sequences", f"must be >= 1, got {max_sequences}")
        controls = tuple(
            SequenceControl(kind, self.typed(table, kind, str, where))
            for kind in CONTROL_KINDS
            if kind in table
        )
        if batching.pad_to_allowed_batch_size:
            raise self.fail(
                "batching.pad_to_allowed_batch_size",
                "a sequence model's batches are never padded: a copied row would be a step "
                "of another sequence",
            )
        if batching.padding is not None:
            raise self.fail("padding", "not with [sequence]: a sequence model is not padded yet")
        return SequenceConfig(strategy, max_idle, max_sequences, controls)

    def labels(self, relative: str) -> tuple[str, ...]:
        path = self.path.parent / relative
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise self.fail("labels", f"cannot read {path}: {error}") from error
        return tuple(line.strip() for line in lines if line.strip())

    def batching(self, raw: Any) -> BatchingConfig:
        where = "batching."
        table = self.table(raw, "batching", tuple(BatchingConfig.__dataclass_fields__))
        options: dict[str, Any] = {}
        for key in ("max_batch_size", "max_concurrent_batches", "max_queue_size"):
            if key in table:
                options[key] = self.typed(table, key, int, where)
                if options[key] < 1:
                    raise self.fail(where + key, f"must be >= 1, got {options[key]}")
        for key in ("max_wait", "grace_period"):
            if key in table:
                options[key] = float(self.positive(table, key, where, zero=True))
        if "timeout" in table:
            options["timeout"] = float(self.positive(table, "timeout", where))
        for key in ("pad_to_allowed_batch_size", "combine_requests"):
            if key in table:
                options[key] = self.typed(table, key, bool, where)
        if "target_latency" in table:
            text = self.typed(table, "target_latency", str, where)
            try:
                options["target_latency"] = LatencyTarget.parse(text)
            except ValueError as error:
                raise self.fail(where + "target_latency", str(error)) from None
        config = BatchingConfig(**options)
        if "allowed_batch_sizes" in table:
            sizes = self.typed(table, "allowed_batch_sizes", list, where)
            if not sizes or any(
                isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes
            ):
                raise self.fail(where + "allowed_batch_sizes", f"expected sizes >= 1, got {sizes}")
            if sorted(set(sizes)) != sizes:
                raise self.fail(where + "allowed_batch_sizes", f"must be ascending, got {sizes}")
            if sizes[-1] != config.max_batch_size:
                raise self.fail(
                    where + "allowed_batch_sizes",
                    f"the largest ({sizes[-1]}) must be max_batch_size ({config.max_batch_size})",
                )
            config = BatchingConfig(**{**options, "allowed_batch_sizes": tuple(sizes)})
        if config.pad_to_allowed_batch_size and not config.allowed_batch_sizes:
            raise self.fail(where + "pad_to_allowed_batch_size", "needs allowed_batch_sizes")
        return config

    def threads(self, raw: Any) -> ThreadConfig:
        table = self.table(raw, "threads", ("intra_op", "inter_op"))
        options = {}
        for key in table:
            options[key] = self.typed(table, key, int, "threads.")
            if options[key] < 1:
                raise self.fail(f"threads.{key}", f"must be >= 1, got {options[key]}")
        return ThreadConfig(**options)

    def versions(self, raw: Any) -> VersionPolicy:
        table = self.table(raw, "versions", ("policy", "latest", "specific"))
        policy = self.typed(table, "policy", str, "versions.") if "policy" in table else "latest"
        if policy not in ("latest", "all", "specific"):
            raise self.fail("versions.policy", f"expected latest, all or specific, got {policy!r}")
        latest = self.typed(table, "latest", int, "versions.") if "latest" in table else 1
        if latest < 1:
            raise self.fail("versions.latest", f"must be >= 1, got {latest}")
        specific = self.typed(table, "specific", list, "versions.") if "specific" in table else []
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in specific):
            raise self.fail("versions.specific", f"expected version numbers, got {specific}")
        if policy == "specific" and not specific:
            raise self.fail("versions.specific", "the 'specific' policy needs version numbers")
        return VersionPolicy(policy, latest, tuple(specific))

    def specs(self, raw: Any, key: str) -> tuple[TensorSpec, ...]:
        if not isinstance(raw, list) or not raw:
            raise self.fail(key, "expected a non-empty array of tables ([[inputs]])")
        specs = []
        for index, entry in enumerate(raw):
            where = f"{key}[{index}]"
            table = self.table(entry, where, ("name", "datatype", "shape"))
            for required in ("name", "datatype", "shape"):
                if required not in table:
                    raise self.fail(f"{where}.{required}", "required")
            name = self.typed(table, "name", str, where + ".")
            datatype = self.typed(table, "datatype", str, where + ".")
            shape = self.typed(table, "shape", list, where + ".")
            if not shape or any(isinstance(d, bool) or not isinstance(d, int) for d in shape):
                raise self.fail(f"{where}.shape", f"expected integers (-1: any), got {shape}")
            try:
                specs.append(TensorSpec.of(name, datatype, shape))
            except ValueError as error:
                raise self.fail(where, str(error)) from error
        return tuple(specs)
