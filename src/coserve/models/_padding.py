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
    """A request's arrays after padding: the length its rows had, and the bucket's."""

    __slots__ = ("bucket", "length")

    def __init__(self, arrays: Mapping[str, np.ndarray], length: int, bucket: int) -> None:
        super().__init__(arrays)
        self.length = length
        self.bucket = bucket

    def rows(self, start: int, stop: int) -> Padded:
        """Rows ``start`` to ``stop`` of every array, as a padded request of the same length."""
        return Padded(
            {name: array[start:stop] for name, array in self.items()}, self.length, self.bucket
        )


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
        for kind, given in (("mask", config.mask), ("lengths", config.lengths)):
            if given is None:
                continue
            name = given
            spec = specs.get(name)
            if spec is None:
                raise fail(f"{name!r} ({kind}) is not an input of the model")
            if name in padded or name in self._generated:
                raise fail(f"{name!r} ({kind}) is also a padded input, or the other one")
            trailing = spec.shape[2:] if kind == "mask" else spec.shape[1:]
            wanted = (
                "[rows, length] (more dimensions of 1 may follow)"
                if kind == "mask"
                else "[rows] or [rows, 1]"
            )
            if (
                (
                    kind == "mask"
                    and (len(spec.shape) < 2 or spec.shape[1] not in (-1, *_only(config)))
                )
                or any(d not in (-1, 1) for d in trailing)
                or (kind == "lengths" and len(spec.shape) > 2)
            ):
                raise fail(f"the {kind} input {name!r} is {spec.describe()}; it must be {wanted}")
            self._generated[name] = spec
        for name in config.trim:
            spec = produced.get(name)
            if spec is None:
                raise fail(
                    f"{name!r} (trim) is not an output; the outputs are: {', '.join(produced)}"
                )
            if len(spec.shape) < 2 or spec.shape[1] >= 0:
                raise fail(
                    f"output {name!r} {spec.describe()} has no variable dimension 1 to cut back"
                )
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

    def pad(self, arrays: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        """Pad a checked request's variable-length inputs up to its bucket; add mask, lengths.

        A request that left out every padded input (optional ones) is returned as it is.
        Without named inputs (TF Serving's ``pad_variable_length_inputs``), each input is
        padded to its own bucket, as TF Serving pads each tensor on its own.

        Raises:
            InvalidInput: Its padded inputs differ in length, or it is over ``max_length``.
        """
        config = self.config
        present = [name for name in self._order if name in arrays]
        if not present:
            return arrays
        for name in present:
            if arrays[name].ndim < 2:
                raise InvalidInput(
                    f"model {self._model!r}: input {name!r} needs a dimension 1 (its length) "
                    f"to be padded; got shape {list(arrays[name].shape)}"
                )
        if not config.inputs:
            return self._pad_each(arrays, present)
        lengths = {arrays[name].shape[1] for name in present}
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
        for name, array in arrays.items():
            if name in self._padded and bucket > length:
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
        return Padded(padded, length, bucket)

    def _pad_each(self, arrays: dict[str, np.ndarray], present: list[str]) -> Padded:
        """Each variable-length input padded to its own bucket (no mask, lengths or trim)."""
        padded = dict(arrays)
        longest = 0
        for name in present:
            length = arrays[name].shape[1]
            bucket = self.config.bucket(length)
            if bucket is None:
                raise InvalidInput(
                    f"model {self._model!r}: input {name!r} has length {length}, over the "
                    f"max_length of {self.config.max_length}"
                )
            if bucket > length:
                padded[name] = _pad(arrays[name], bucket, self.config.value)
            longest = max(longest, length)
        return Padded(padded, longest, self.config.bucket(longest) or longest)

    def trim(self, outputs: dict[str, np.ndarray], request: Padded) -> dict[str, np.ndarray]:
        """A request's outputs with the padded dimension cut back to its own length.

        Only an output as long as the request's bucket there is cut (one of another length
        does not carry the padded dimension).
        """
        for name in self._trimmed:
            array = outputs.get(name)
            if array is not None and array.ndim > 1 and array.shape[1] == request.bucket:
                outputs[name] = array[:, : request.length]
        return outputs

    def count(self, requests: list[Padded]) -> None:
        """One batch of a bucket ran, with these requests (counted once they ran)."""
        if not requests:
            return
        real = padded = rows = 0
        for request in requests:
            for name in self._order:
                array = request.get(name)
                if array is None:
                    continue
                per_position = array.size // array.shape[1] if array.shape[1] else 0
                real += per_position * min(request.length, array.shape[1])
                padded += array.size
            rows += next(iter(request.values())).shape[0]
        with self._lock:
            counts = self._counts.setdefault(requests[0].bucket, [0, 0, 0, 0, 0])
            counts[0] += len(requests)
            counts[1] += rows
            counts[2] += real
            counts[3] += padded
            counts[4] += 1

    def statistics(self) -> list[BucketStatistics]:
        """Each bucket that has seen a request, shortest first."""
        with self._lock:
            return [
                BucketStatistics(length, *counts) for length, counts in sorted(self._counts.items())
            ]


def _only(config: PaddingConfig) -> tuple[int, ...]:
    """The fixed length a mask may have: the only bucket's, when there is one bucket."""
    return config.buckets if len(config.buckets) == 1 else ()


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
