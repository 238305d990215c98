"""TensorFlow backends: SavedModel signatures and Keras ``.keras`` files (extra ``tensorflow``).

Keras models call a concrete ``tf.function`` (the model traced once with a batch-polymorphic
input signature): about 0.7 ms a call here, against 50-65 ms for Keras's ``model.predict``, which
builds a data pipeline on every call (DESIGN.md §7).

A SavedModel signature runs the way TensorFlow Serving runs it: its graph, with the variables
frozen into constants, in a session, through a callable made once. Calling the signature as a
``tf.function`` spends hundreds of microseconds per call in Python, holding the GIL that the
server's event loop needs; the session's callable spends a fraction of that (measured side by
side: benchmarks/README.md). A signature that cannot be frozen (one that updates variables, or
uses lookup tables) is called as a ``tf.function`` instead, with a log line saying so.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from coserve._exceptions import ModelLoadError
from coserve.models._backend import Backend, Tensors, override_specs, require
from coserve.models._config import ThreadConfig
from coserve.models._specs import TensorSpec

__all__ = ["TensorFlowKeras", "TensorFlowSavedModel", "configure_threads"]

logger = logging.getLogger("coserve.models")


def import_tensorflow() -> Any:
    """Import TensorFlow with its C++ info logging off (unless the user set a level)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return require("tensorflow", "tensorflow")


def configure_threads(tf: Any, threads: ThreadConfig) -> None:
    """Apply thread counts; TensorFlow fixes them process-wide once its runtime has started."""
    threading = tf.config.threading
    for wanted, get, put in (
        (
            threads.intra_op,
            threading.get_intra_op_parallelism_threads,
            threading.set_intra_op_parallelism_threads,
        ),
        (
            threads.inter_op,
            threading.get_inter_op_parallelism_threads,
            threading.set_inter_op_parallelism_threads,
        ),
    ):
        if wanted is None or get() == wanted:
            continue
        try:
            put(wanted)
        except RuntimeError:
            logger.warning(
                "TensorFlow already started with %d threads; cannot change to %d for this model",
                get(),
                wanted,
            )


def _spec(tf: Any, name: str, spec: Any) -> TensorSpec:
    if spec.shape.rank is None:
        raise ModelLoadError(f"tensor {name!r} has unknown rank; give its shape in config.toml")
    shape = [-1 if d is None else int(d) for d in spec.shape.as_list()]
    dtype = np.dtype(object) if spec.dtype == tf.string else np.dtype(spec.dtype.as_numpy_dtype)
    return TensorSpec(name, dtype, tuple(shape))


class _FrozenSignature:
    """A signature's graph with its variables as constants, run by a session's callable."""

    def __init__(self, tf: Any, fn: Any, threads: ThreadConfig) -> None:
        # Not in TensorFlow's public API, but what its own converters (TFLite's) use.
        convert = importlib.import_module("tensorflow.python.framework.convert_to_constants")
        frozen = convert.convert_variables_to_constants_v2(fn)
        _, kwargs = fn.structured_input_signature
        # Flattening sorts a dict by key: that is the order of the graph's inputs and outputs.
        self.input_names = sorted(kwargs)
        self.output_names = sorted(fn.structured_outputs)
        if len(frozen.inputs) != len(self.input_names) or len(frozen.outputs) != len(
            self.output_names
        ):
            raise ValueError("the frozen graph's inputs or outputs do not match the signature")
        outputs = fn.structured_outputs
        pairs = [
            *zip((kwargs[n] for n in self.input_names), frozen.inputs, strict=True),
            *zip((outputs[n] for n in self.output_names), frozen.outputs, strict=True),
        ]
        for declared, tensor in pairs:  # a TensorFlow that orders them otherwise fails here
            if declared.dtype != tensor.dtype or not declared.shape.is_compatible_with(
                tensor.shape
            ):
                raise ValueError(f"the frozen graph's {tensor.name} does not match the signature")
        graph = tf.Graph()
        with graph.as_default():
            tf.compat.v1.import_graph_def(frozen.graph.as_graph_def(), name="")
        # inter_op 1 runs the ops in the calling (batch) thread rather than handing them to a
        # pool of one: the same order of work, without a thread switch per call.
        inter_op = threads.inter_op or 0
        config = tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=threads.intra_op or 0,
            inter_op_parallelism_threads=-1 if inter_op == 1 else inter_op,
        )
        self.session = tf.compat.v1.Session(graph=graph, config=config)
        feeds = [t.name for t in frozen.inputs]
        fetches = [t.name for t in frozen.outputs]
        self.call = _callable(self.session, feeds, fetches)


def _callable(session: Any, feeds: list[str], fetches: list[str]) -> Any:
    """The session's callable made from tensor names: TensorFlow's own fast path.

    ``Session.make_callable`` with feeds only wraps ``Session.run``, whose Python side costs about
    120 µs a call here; the callable made from ``CallableOptions`` (what Keras uses) runs
    straight in C++. Should a future TensorFlow drop that method, the public one still works.
    """
    make = getattr(session, "_make_callable_from_options", None)
    if make is not None:
        config_pb2 = importlib.import_module("tensorflow.core.protobuf.config_pb2")
        options = config_pb2.CallableOptions()
        options.feed.extend(feeds)
        options.fetch.extend(fetches)
        return make(options)
    graph = session.graph
    return session.make_callable(
        [graph.get_tensor_by_name(name) for name in fetches],
        [graph.get_tensor_by_name(name) for name in feeds],
    )


class TensorFlowSavedModel(Backend):
    """A TensorFlow SavedModel, called through one of its signatures.

    Input and output specs are read from the signature (config.toml may override them).
    """

    platform = "tensorflow_savedmodel"

    def __init__(
        self,
        path: Path,
        *,
        name: str,
        version: str,
        signature: str = "serving_default",
        threads: ThreadConfig = ThreadConfig(),  # noqa: B008 - frozen, so sharing is safe
        inputs: tuple[TensorSpec, ...] | None = None,
        outputs: tuple[TensorSpec, ...] | None = None,
    ) -> None:
        tf = import_tensorflow()
        configure_threads(tf, threads)
        try:
            self._loaded = tf.saved_model.load(str(path))
        except Exception as error:  # TF raises many kinds; all mean "cannot load"
            raise ModelLoadError(
                f"model {name!r}: cannot load SavedModel {path}: {error}"
            ) from error
        signatures = self._loaded.signatures
        if signature not in signatures:
            raise ModelLoadError(
                f"model {name!r}: SavedModel {path} has no signature {signature!r}; "
                f"it has: {', '.join(signatures) or 'none'}"
            )
        self._tf = tf
        self._fn = signatures[signature]
        self._frozen: _FrozenSignature | None = None
        try:
            self._frozen = _FrozenSignature(tf, self._fn, threads)
        except Exception as error:  # TF raises many kinds; any means "call it as a function"
            logger.info(
                "model %r: signature %r cannot run as a frozen graph (%s); calling it as a "
                "tf.function instead",
                name,
                signature,
                error,
            )
        _, kwargs = self._fn.structured_input_signature
        read_inputs = tuple(_spec(tf, key, spec) for key, spec in sorted(kwargs.items()))
        read_outputs = tuple(
            _spec(tf, key, spec) for key, spec in sorted(self._fn.structured_outputs.items())
        )
        super().__init__(
            name,
            version,
            override_specs(name, "inputs", read_inputs, inputs),
            override_specs(name, "outputs", read_outputs, outputs),
        )
        if self._frozen is not None:  # the graph holds the weights now: free the variables
            self._fn = None
            self._loaded = None

    @property
    def frozen(self) -> bool:
        """Whether the signature runs as a frozen graph in a session (else as a tf.function)."""
        return self._frozen is not None

    def predict(self, inputs: Tensors) -> dict[str, np.ndarray]:
        """Run the signature on one batch."""
        frozen = self._frozen
        if frozen is not None:
            values = frozen.call(*(inputs[name] for name in frozen.input_names))
            return dict(zip(frozen.output_names, values, strict=True))
        constant = self._tf.constant
        result = self._fn(**{name: constant(array) for name, array in inputs.items()})
        return {name: tensor.numpy() for name, tensor in result.items()}

    def close(self) -> None:
        """Close the session and drop the references to the graph so TensorFlow can free it."""
        if self._frozen is not None:
            self._frozen.session.close()
            self._frozen = None
        self._fn = None
        self._loaded = None


class TensorFlowKeras(Backend):
    """A Keras 3 ``.keras`` model, traced once into a ``tf.function`` with a polymorphic batch."""

    platform = "tensorflow_keras"

    def __init__(
        self,
        path: Path,
        *,
        name: str,
        version: str,
        threads: ThreadConfig = ThreadConfig(),  # noqa: B008 - frozen, so sharing is safe
        inputs: tuple[TensorSpec, ...] | None = None,
        outputs: tuple[TensorSpec, ...] | None = None,
    ) -> None:
        tf = import_tensorflow()
        configure_threads(tf, threads)
        keras = require("keras", "tensorflow")
        try:
            self._model = keras.saving.load_model(str(path), compile=False)
        except Exception as error:
            raise ModelLoadError(
                f"model {name!r}: cannot load Keras model {path}: {error}"
            ) from error
        model = self._model
        read_inputs = tuple(
            TensorSpec.of(t.name, t.dtype, [-1 if d is None else d for d in t.shape])
            for t in model.inputs
        )
        names = list(getattr(model, "output_names", None) or [t.name for t in model.outputs])
        read_outputs = tuple(
            TensorSpec.of(n, t.dtype, [-1 if d is None else d for d in t.shape])
            for n, t in zip(names, model.outputs, strict=True)
        )
        super().__init__(
            name,
            version,
            override_specs(name, "inputs", read_inputs, inputs),
            override_specs(name, "outputs", read_outputs, outputs),
        )
        signature = [
            tf.TensorSpec([None, *spec.shape[1:]], tf.as_dtype(spec.dtype), name=spec.name)
            for spec in read_inputs
        ]
        single = len(signature) == 1

        def call(*tensors: Any) -> Any:
            return model(tensors[0] if single else list(tensors), training=False)

        self._fn = tf.function(call, input_signature=signature, reduce_retracing=True)
        self._output_names = names

    def predict(self, inputs: Tensors) -> dict[str, np.ndarray]:
        """Call the traced model on one batch."""
        result = self._fn(*(inputs[spec.name] for spec in self.inputs))
        if isinstance(result, dict):
            return {name: value.numpy() for name, value in result.items()}
        values = result if isinstance(result, list | tuple) else [result]
        return {name: value.numpy() for name, value in zip(self._output_names, values, strict=True)}

    def close(self) -> None:
        """Drop the references to the model so TensorFlow can free it."""
        self._fn = None
        self._model = None
