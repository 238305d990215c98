"""The backend protocol: what every model runtime (TensorFlow, ONNX, PyTorch, Python) provides."""

from __future__ import annotations

import importlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from coserve._exceptions import InvalidInput, MissingDependency, ModelLoadError
from coserve.models._signatures import DEFAULT_SIGNATURE, Signature
from coserve.models._specs import TensorSpec

__all__ = ["Backend", "SequenceFlags", "Tensors", "override_specs", "require"]

Tensors = Mapping[str, np.ndarray]
"""Named arrays: a batch of inputs or of outputs, the first dimension of each being the batch."""

logger = logging.getLogger("coserve.models")


@dataclass(frozen=True, slots=True)
class SequenceFlags:
    """What a request to a stateful model says of its sequence.

    Triton's ``sequence_id``, ``sequence_start`` and ``sequence_end`` request parameters.

    Attributes:
        id: The sequence (correlation) id: a positive integer or a non-empty string.
        start: The request is its sequence's first (a model resets its state for it).
        end: The request is its sequence's last.
    """

    id: int | str
    start: bool = False
    end: bool = False


def require(module: str, extra: str) -> ModuleType:
    """Import an optional dependency, or say which extra to install.

    Raises:
        MissingDependency: The module is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingDependency(
            f"this model needs {module!r}, which is not installed: pip install 'coserve[{extra}]'"
        ) from error


def override_specs(
    model: str, kind: str, read: tuple[TensorSpec, ...], configured: tuple[TensorSpec, ...] | None
) -> tuple[TensorSpec, ...]:
    """Config specs replace the ones read from the model file, but must name the same tensors.

    Raises:
        ModelLoadError: The configured specs name other tensors than the model has.
    """
    if configured is None:
        return read
    if {s.name for s in configured} != {s.name for s in read}:
        raise ModelLoadError(
            f"model {model!r}: config {kind} {[s.name for s in configured]} do not match the "
            f"model's {[s.name for s in read]}"
        )
    return configured


class Backend(ABC):
    """A loaded model that predicts on a batch of named arrays.

    Subclasses set ``platform`` and fill ``inputs`` and ``outputs``; ``predict`` is called from an
    executor thread, never on the event loop, and must be safe to call from one thread at a time
    per execution slot.

    Attributes:
        name: The model's name.
        version: The model version this backend serves.
        platform: Open Inference Protocol platform string (``tensorflow_savedmodel``...).
        inputs: The input specs, first dimension the batch.
        outputs: The output specs, first dimension the batch.
        signature_name: The signature ``predict`` runs, for models that have several (a
            TensorFlow SavedModel); None for the others.
        signatures: Every signature of the model by name (empty for models without them).
        strict_shapes: Whether requests must match the input specs' rank and dimensions
            (False: the model checks them itself, as a TF1 graph does; only rows are needed).
    """

    platform: str = "unknown"
    strict_shapes: bool = True
    takes_requests: bool = False
    """True: the model answers each request of a batch on its own (a Triton Python model's
    ``execute`` gets a list of requests), so the handle calls :meth:`predict_requests` with
    the batch's requests as they came instead of concatenating their rows."""
    batched: bool = True
    """False: the tensors have no batch dimension (Triton's ``max_batch_size: 0``); each request
    runs alone and whole, never split or combined."""
    signature_name: str | None = None
    signatures: Mapping[str, Signature] = {}

    def __init__(
        self,
        name: str,
        version: str,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
    ) -> None:
        self.name = name
        self.version = version
        self.inputs = inputs
        self.outputs = outputs

    @abstractmethod
    def predict(self, inputs: Tensors) -> dict[str, np.ndarray]:
        """Run the model on one batch: every input array has the same first dimension."""

    def predict_requests(
        self, requests: Sequence[Tensors]
    ) -> list[dict[str, np.ndarray] | Exception]:
        """Run one batch given as its requests; each answer, or the error that failed it alone.

        Called instead of :meth:`predict` when :attr:`takes_requests` is set. The default runs
        :meth:`predict` on each request in turn.
        """
        answers: list[dict[str, np.ndarray] | Exception] = []
        for request in requests:
            try:
                answers.append(self.predict(request))
            except Exception as error:
                answers.append(error)
        return answers

    def predict_sequence(
        self, inputs: Tensors, rows: Sequence[SequenceFlags | None]
    ) -> tuple[dict[str, np.ndarray], Mapping[int, Exception]]:
        """Run a stateful model on one batch whose row ``r`` is a step of ``rows[r]``.

        ``None`` marks a free slot (its inputs are zeros, its outputs are dropped). The inputs
        hold the control inputs too. Returns the outputs, and the rows that failed alone with
        their errors (a model that answers each request on its own may fail one). The default
        runs :meth:`predict`; a backend that can tell its model each request's sequence (a
        Triton Python model) overrides it.
        """
        return self.predict(inputs), {}

    def for_signature(self, name: str) -> Backend:
        """The backend that runs another of the model's signatures (itself for its own).

        Raises:
            InvalidInput: The model has no signature of that name.
        """
        if not name or name == (self.signature_name or DEFAULT_SIGNATURE):
            return self
        known = ", ".join(sorted(self.signatures)) or "none besides the one it serves"
        raise InvalidInput(f"model {self.name!r} has no signature {name!r}; it has: {known}")

    def close(self) -> None:  # noqa: B027 - a no-op by default, not abstract on purpose
        """Release what the model holds (sessions, graphs); the default does nothing."""

    def warm_up(self, batch_sizes: list[int]) -> float:
        """Run one batch of zeros (or empty bytes) of each size, so first requests are not slow.

        Variable dimensions other than the batch get size 1. Returns the seconds it took.
        """
        start = time.perf_counter()
        for size in batch_sizes:
            batch = {}
            for spec in self.inputs:
                shape = (size, *(d if d >= 0 else 1 for d in spec.row_shape))
                if spec.dtype == np.object_:
                    batch[spec.name] = np.full(shape, b"", dtype=object)
                else:
                    batch[spec.name] = np.zeros(shape, dtype=spec.dtype)
            self.predict(batch)
        elapsed = time.perf_counter() - start
        logger.debug(
            "model %s v%s warmed up with batch sizes %s in %.2fs",
            self.name,
            self.version,
            batch_sizes,
            elapsed,
        )
        return elapsed

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} v{self.version} ({self.platform})>"
