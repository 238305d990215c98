"""A backend adapted to what its config says of its tensors, where the model itself differs.

- ``reshape`` (Triton's): the API shows a tensor in its config ``dims``; the model takes (or
  gives) it in the reshape's shape. Each input is reshaped before ``predict`` and each output
  after, the batch dimension kept. The variable dimensions (-1) of the target shape take the
  sizes of those of the source, in order: Triton requires both to have as many, with as many
  elements between them.
- No batch dimension (Triton's ``max_batch_size: 0``): the request's tensors are the model's
  whole tensors, every dimension checked against the config's; each request runs alone and
  whole, and its outputs, of any shape, are its own. Warm-up runs the config's shapes, not
  batch sizes.
- ONNX Runtime takes and gives string tensors as ``str``; coserve's BYTES are ``bytes``: inputs
  are decoded from UTF-8 before the run and outputs encoded after.
- A Triton model's metadata names its platform as its config does (``onnxruntime_onnx``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np

from coserve._exceptions import InvalidInput, ModelError
from coserve.models._backend import Backend, SequenceFlags, Tensors
from coserve.models._config import ModelConfig
from coserve.models._signatures import DEFAULT_SIGNATURE
from coserve.models._specs import TensorSpec

__all__ = ["AdaptedBackend", "model_specs", "needs_adapting"]


def model_specs(
    config: ModelConfig, specs: tuple[TensorSpec, ...] | None
) -> tuple[TensorSpec, ...] | None:
    """The specs as the model file has them: the config's, with each reshape applied."""
    if specs is None or not config.reshape:
        return specs
    reshape = dict(config.reshape)
    lead = (-1,) if config.batched else ()
    return tuple(
        TensorSpec(spec.name, spec.dtype, (*lead, *reshape[spec.name]))
        if spec.name in reshape
        else spec
        for spec in specs
    )


def needs_adapting(config: ModelConfig, backend: Backend) -> bool:
    """Whether ``backend`` must be wrapped in an :class:`AdaptedBackend` for ``config``."""
    return bool(
        config.reshape
        or not config.batched
        or config.triton is not None
        or _text_strings(config, backend)
    )


def _text_strings(config: ModelConfig, backend: Backend) -> bool:
    return config.platform == "onnx_onnxv1" and any(
        spec.dtype == np.object_ for spec in (*backend.inputs, *backend.outputs)
    )


class AdaptedBackend(Backend):
    """The model's backend seen through its config: reshaped, unbatched, with bytes for strings.

    Args:
        inner: The loaded model, given the model-side specs (:func:`model_specs`).
        config: The model's config: the API-side specs (the inner backend's where it has
            none), ``reshape``, ``batched``, and for a Triton model its platform name.
    """

    def __init__(self, inner: Backend, config: ModelConfig) -> None:
        inputs = config.inputs if config.inputs is not None else inner.inputs
        outputs = config.outputs if config.outputs is not None else inner.outputs
        super().__init__(inner.name, inner.version, inputs, outputs)
        # Triton names a backend-only model (a Python one) by its backend in metadata.
        self.platform = (
            str(config.triton.get("platform") or config.triton.get("backend"))
            if config.triton
            else inner.platform
        )
        self.strict_shapes = inner.strict_shapes
        self.takes_requests = inner.takes_requests
        self.signature_name = inner.signature_name
        self.signatures = inner.signatures
        self._inner = inner
        self._batched = self.batched = config.batched
        self._text = _text_strings(config, inner)
        reshape = dict(config.reshape)
        lead = 1 if config.batched else 0
        # name -> (the shape coming in, the shape going out), after the batch dimension
        self._before = {
            s.name: (s.shape[lead:], reshape[s.name]) for s in inputs if s.name in reshape
        }
        self._after = {
            s.name: (reshape[s.name], s.shape[lead:]) for s in outputs if s.name in reshape
        }

    def predict(self, inputs: Tensors) -> dict[str, np.ndarray]:
        """Reshape and convert the inputs, run the model, and do the reverse to its outputs."""
        return self._back(self._inner.predict(self._feed(inputs)))

    def predict_requests(
        self, requests: Sequence[Tensors]
    ) -> list[dict[str, np.ndarray] | Exception]:
        """:meth:`predict` for a model that answers each request on its own."""
        answers = self._inner.predict_requests([self._feed(request) for request in requests])
        return [a if isinstance(a, Exception) else self._back(a) for a in answers]

    def predict_sequence(
        self, inputs: Tensors, rows: Sequence[SequenceFlags | None]
    ) -> tuple[dict[str, np.ndarray], Mapping[int, Exception]]:
        """:meth:`predict` for a stateful model, each row's sequence passed on."""
        outputs, errors = self._inner.predict_sequence(self._feed(inputs), rows)
        return self._back(outputs), errors

    def _feed(self, inputs: Tensors) -> dict[str, np.ndarray]:
        feed = {}
        for name, array in inputs.items():
            shapes = self._before.get(name)
            if shapes is not None:
                array = self._reshaped(name, array, *shapes, InvalidInput)
            if self._text and array.dtype == np.object_:
                array = _as_text(name, array)
            feed[name] = array
        return feed

    def _back(self, results: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = {}
        for name, array in results.items():
            if self._text and array.dtype == np.object_:
                array = _as_bytes(array)
            shapes = self._after.get(name)
            if shapes is not None:
                array = self._reshaped(name, array, *shapes, ModelError)
            outputs[name] = array
        return outputs

    def _reshaped(
        self,
        name: str,
        array: np.ndarray,
        source: tuple[int, ...],
        target: tuple[int, ...],
        error: type[ModelError],
    ) -> np.ndarray:
        lead = array.shape[:1] if self._batched else ()
        actual = array.shape[len(lead) :]
        if len(actual) != len(source):
            raise error(
                f"tensor {name!r}: expected {len(source)} dimensions {list(source)} to reshape "
                f"to {list(target)}, got {list(actual)}"
            )
        sizes = iter([size for want, size in zip(source, actual, strict=True) if want == -1])
        shape = (*lead, *(next(sizes, 1) if want == -1 else want for want in target))
        try:
            return array.reshape(shape)
        except ValueError:
            raise error(
                f"tensor {name!r}: {list(array.shape)} cannot be reshaped to {list(shape)}"
            ) from None

    def warm_up(self, batch_sizes: list[int]) -> float:
        """Batched: as every backend does. Unbatched: once, in the config's shapes."""
        if self._batched:
            return super().warm_up(batch_sizes)
        start = time.perf_counter()
        batch = {}
        for spec in self.inputs:
            shape = tuple(d if d >= 0 else 1 for d in spec.shape)
            if spec.dtype == np.object_:
                batch[spec.name] = np.full(shape, b"", dtype=object)
            else:
                batch[spec.name] = np.zeros(shape, dtype=spec.dtype)
        self.predict(batch)
        return time.perf_counter() - start

    def for_signature(self, name: str) -> Backend:
        """This backend for its own signature; the model's other signatures are not adapted."""
        if not name or name == (self.signature_name or DEFAULT_SIGNATURE):
            return self
        return self._inner.for_signature(name)

    def close(self) -> None:
        """Release the model."""
        self._inner.close()


def _as_text(name: str, array: np.ndarray) -> np.ndarray:
    try:
        text = [v.decode("utf-8") if isinstance(v, bytes) else v for v in array.ravel()]
    except UnicodeDecodeError:
        raise InvalidInput(
            f"input {name!r}: ONNX Runtime takes strings as text, and this one holds bytes that "
            "are not UTF-8"
        ) from None
    return np.array(text, dtype=object).reshape(array.shape)


def _as_bytes(array: np.ndarray) -> np.ndarray:
    data = [v.encode("utf-8") if isinstance(v, str) else v for v in array.ravel()]
    return np.array(data, dtype=object).reshape(array.shape)
