"""Padding variable-length inputs to a few lengths (buckets), so that their requests batch.

A text model's requests rarely have the same length, and coserve batches only rows of the same
shape: without padding, almost every batch would hold one request. With a ``[padding]`` table
(:class:`~coserve.models.PaddingConfig`), a request's variable-length inputs are padded (along
dimension 1, with ``value``) up to the first bucket that holds them; the request is queued in
that bucket's lane of the batcher, so a batch holds one bucket's requests, all of one shape. An
attention mask and the rows' lengths can be given to the model as inputs of its own, and the
outputs that carry the padded dimension are cut back to each request's length.

Padding happens in the caller's coroutine, before the request is queued, so the batch function
concatenates as for any other model; the padded request carries its own length
(:class:`Padded`) so its outputs are cut back where they are split from the batch's.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from coserve._exceptions import InvalidInput, ModelLoadError
from coserve.models._config import PaddingConfig
from coserve.models._specs import TensorSpec

__all__ = ["BucketStatistics", "Padded", "Padder", "shape_key"]

ShapeKey = tuple[tuple[str, tuple[int, ...]], ...]


def shape_key(arrays: Mapping[str, np.ndarray]) -> ShapeKey:
    """Which requests may share a batch: the same inputs, of the same shapes after the rows."""
    return tuple((name, array.shape[1:]) for name, array in arrays.items())


class Padded(dict[str, np.ndarray]):
    """A request's arrays after padding, with the length its rows had (for cutting outputs)."""

    __slots__ = ("length",)

    def __init__(self, arrays: Mapping[str, np.ndarray], length: int) -> None:
        super().__init__(arrays)
        self.length = length

    def rows(self, start: int, stop: int) -> Padded:
        """Rows ``start`` to ``stop`` of every array, as a padded request of the same length."""
        return Padded({name: array[start:stop] for name, array in self.items()}, self.length)


@dataclass(frozen=True, slots=True)
class BucketStatistics:
    """What one bucket has seen.

    Attributes:
        length: The bucket's padded length.
        requests: Requests padded into it.
        rows: Their rows.
        real: Elements of the padded inputs that were the requests' own.
        padded: Elements of the padded inputs after padding (``padded / real`` is the padding
            ratio; 1.0 means none was added).
        batches: Batches run from it.
    """

    length: int
    requests: int
    rows: int
    real: int
    padded: int
    batches: int

    @property
    def padding_ratio(self) -> float:
        """Padded elements over real elements (1.0: no padding); 0.0 before any request."""
        return self.padded / self.real if self.real else 0.0


class Padder:
    """One model's padding: checked against its inputs at load, applied to each request.

    Args:
        model: The model's name, for messages.
        config: The ``[padding]`` table.
        inputs: The model's inputs (the padded ones with dimension 1 variable, or fixed at
            the only bucket; the mask and lengths among them if named).
        outputs: The model's outputs (the trimmed ones must have a dimension 1).

    Raises:
        ModelLoadError: A name the table gives is not the model's, or a shape cannot be padded.
    """

    def __init__(
        self,
        model: str,
        config: PaddingConfig,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
    ) -> None:
        self.config = config
        self._model = model
        specs = {spec.name: spec for spec in inputs}
        produced = {spec.name: spec for spec in outputs}

        def fail(problem: str) -> ModelLoadError:
            return ModelLoadError(f"model {model!r}: [padding]: {problem}")

        padded = config.inputs or tuple(
            spec.name for spec in inputs if len(spec.shape) >= 2 and spec.shape[1] == -1
        )
        for name in padded:
            spec = specs.get(name)
            if spec is None:
                raise fail(f"{name!r} is not an input; the inputs are: {', '.join(specs)}")
            if len(spec.shape) < 2:
                raise fail(f"input {name!r} {spec.describe()} has no dimension 1 to pad")
            fixed = spec.shape[1]
            if fixed >= 0 and config.buckets != (fixed,):
                raise fail(
                    f"input {name!r} has length {fixed} in the model, so the only bucket can "
                    f"be {fixed}, not {list(config.buckets)}"
                )
        self._generated: dict[str, TensorSpec] = {}
        for name in (n for n in (config.mask, config.lengths) if n is not None):
            spec = specs.get(name)
            if spec is None:
                raise fail(f"{name!r} (mask or lengths) is not an input of the model")
            self._generated[name] = spec
        for name in config.trim:
            spec = produced.get(name)
            if spec is None:
                raise fail(
                    f"{name!r} (trim) is not an output; the outputs are: {', '.join(produced)}"
                )
            if len(spec.shape) < 2:
                raise fail(f"output {name!r} {spec.describe()} has no dimension 1 to cut")
        self._padded = frozenset(padded)
        self._order = padded
        self._trimmed = frozenset(config.trim)
        self.client_inputs = tuple(
            TensorSpec(spec.name, spec.dtype, (spec.shape[0], -1, *spec.shape[2:]), spec.optional)
            if spec.name in self._padded
            else spec
            for spec in inputs
            if spec.name not in self._generated
        )
        """The inputs clients send: the padded ones of any length, without mask and lengths."""
        self._lock = threading.Lock()  # batches are counted in executor threads
        self._counts: dict[int, list[int]] = {}  # length -> requests, rows, real, padded, batches

    @property
    def pads(self) -> bool:
        """Whether the model has an input to pad (an empty ``inputs`` may find none)."""
        return bool(self._padded)

    def pad(self, arrays: dict[str, np.ndarray], rows: int) -> Padded:
        """Pad a checked request's variable-length inputs up to its bucket; add mask, lengths.

        Raises:
            InvalidInput: Its padded inputs differ in length, or it is over ``max_length``.
        """
        config = self.config
        lengths = {arrays[name].shape[1] for name in self._padded if name in arrays}
        if len(lengths) > 1:
            given = ", ".join(
                f"{name} {arrays[name].shape[1]}" for name in self._order if name in arrays
            )
            raise InvalidInput(
                f"model {self._model!r}: the variable-length inputs of a request must have one "
                f"length (dimension 1); got {given}"
            )
        length = lengths.pop() if lengths else 0
        bucket = config.bucket(length)
        if bucket is None:
            raise InvalidInput(
                f"model {self._model!r}: the request's length {length} is over the "
                f"max_length of {config.max_length}"
            )
        padded: dict[str, np.ndarray] = {}
        real = 0
        for name, array in arrays.items():
            if name in self._padded:
                real += array.size
                if bucket > length:
                    array = _pad(array, bucket, config.value)
            padded[name] = array
        for name, spec in self._generated.items():
            if name == config.mask:
                mask = np.zeros((rows, bucket), dtype=spec.dtype)
                mask[:, :length] = 1
                padded[name] = mask.reshape((rows, bucket, *([1] * (len(spec.shape) - 2))))
            else:
                shape = (rows,) if len(spec.shape) < 2 else (rows, 1)
                padded[name] = np.full(shape, length, dtype=spec.dtype)
        with self._lock:
            counts = self._counts.setdefault(bucket, [0, 0, 0, 0, 0])
            counts[0] += 1
            counts[1] += rows
            counts[2] += real
            counts[3] += real // length * bucket if length else 0
        return Padded(padded, length)

    def trim(self, outputs: dict[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
        """A request's outputs with the padded dimension cut back to its own length."""
        for name in self._trimmed:
            array = outputs.get(name)
            if array is not None and array.ndim > 1 and array.shape[1] > length:
                outputs[name] = array[:, :length]
        return outputs

    def count_batch(self, length: int) -> None:
        """One batch of a bucket ran (its padded length: ``length``)."""
        with self._lock:
            self._counts.setdefault(length, [0, 0, 0, 0, 0])[4] += 1

    def bucket_of(self, request: Mapping[str, np.ndarray]) -> int | None:
        """The padded length of a padded request (None: it has none of the padded inputs)."""
        name = next((name for name in self._order if name in request), None)
        return None if name is None else int(request[name].shape[1])

    def statistics(self) -> list[BucketStatistics]:
        """Each bucket that has seen a request, shortest first."""
        with self._lock:
            return [
                BucketStatistics(length, *counts) for length, counts in sorted(self._counts.items())
            ]


def _pad(array: np.ndarray, length: int, value: float | None) -> np.ndarray:
    """``array`` padded along dimension 1 to ``length``.

    With ``value``, or its first element (None; TF Serving's choice); ``b""`` for BYTES.
    """
    shape = (array.shape[0], length, *array.shape[2:])
    fill: object
    if value is None:
        fill = array.flat[0] if array.size else (b"" if array.dtype == np.object_ else 0)
    else:
        fill = b"" if array.dtype == np.object_ else value
    out = np.full(shape, fill, dtype=array.dtype)
    out[:, : array.shape[1]] = array
    return out
