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

import contextlib
import importlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from coserve._exceptions import InvalidInput, ModelLoadError
from coserve.models._backend import Backend, Tensors, override_specs, require
from coserve.models._config import ThreadConfig
from coserve.models._signatures import Signature, SignatureTensor
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


_SERVE_TAGS = frozenset({"serve"})
"""The tag set TensorFlow Serving loads by default (``--saved_model_tags=serve``)."""


def _meta_graph(path: Path, name: str) -> Any:
    """The SavedModel's meta graph tagged ``serve``, read from ``saved_model.pb`` (or ``.pbtxt``).

    Raises:
        ModelLoadError: No readable SavedModel there, or none of its meta graphs is tagged serve.
    """
    saved_model_pb2 = importlib.import_module("tensorflow.core.protobuf.saved_model_pb2")
    saved = saved_model_pb2.SavedModel()
    binary, text = path / "saved_model.pb", path / "saved_model.pbtxt"
    try:
        if binary.is_file():
            saved.ParseFromString(binary.read_bytes())
        elif text.is_file():
            text_format = importlib.import_module("google.protobuf.text_format")
            text_format.Parse(text.read_text(encoding="utf-8"), saved)
        else:
            raise ModelLoadError(
                f"model {name!r}: {path} is not a SavedModel: it has no saved_model.pb"
            )
    except ModelLoadError:
        raise
    except Exception as error:  # protobuf's DecodeError and ParseError, OSError
        raise ModelLoadError(f"model {name!r}: cannot read SavedModel {path}: {error}") from error
    for meta_graph in saved.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == _SERVE_TAGS:
            return meta_graph
    found = [sorted(m.meta_info_def.tags) for m in saved.meta_graphs]
    raise ModelLoadError(
        f"model {name!r}: SavedModel {path} has no meta graph tagged 'serve' (it has {found})"
    )


def _signatures(meta_graph: Any) -> dict[str, Signature]:
    types_pb2 = importlib.import_module("tensorflow.core.framework.types_pb2")

    def tensors(infos: Any) -> dict[str, SignatureTensor]:
        described = {}
        for key, info in sorted(infos.items()):
            shape = info.tensor_shape
            dims = None if shape.unknown_rank else tuple(int(d.size) for d in shape.dim)
            described[key] = SignatureTensor(info.name, types_pb2.DataType.Name(info.dtype), dims)
        return described

    # TF2's __saved_model_init_op is the loader's, not a signature anyone can call.
    return {
        key: Signature(key, sd.method_name, tensors(sd.inputs), tensors(sd.outputs))
        for key, sd in sorted(meta_graph.signature_def.items())
        if not key.startswith("__")
    }


def _tensor_spec(tf: Any, key: str, tensor: SignatureTensor) -> TensorSpec:
    """A signature tensor as a spec; an unknown rank is taken for a vector.

    Unknown ranks are the serialized examples of classify and regress signatures.
    """
    shape = (-1,) if tensor.shape is None else tensor.shape
    types_pb2 = importlib.import_module("tensorflow.core.framework.types_pb2")
    dtype = tf.dtypes.as_dtype(types_pb2.DataType.Value(tensor.dtype)).base_dtype
    numpy = np.dtype(object) if dtype == tf.string else np.dtype(dtype.as_numpy_dtype)
    return TensorSpec(key, numpy, shape)


class _SessionModel:
    """A SavedModel loaded into a session by TensorFlow's v1 loader.

    That is how TensorFlow Serving loads every SavedModel, and the way for graphs that TF1-era
    code exported (reference variables, ``ParseExample`` in classify and regress signatures),
    which ``tf.saved_model.load`` may reject or wrap slowly. Each signature is called through a
    callable made once, on first use.
    """

    def __init__(self, tf: Any, path: Path, threads: ThreadConfig) -> None:
        inter_op = threads.inter_op or 0
        config = tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=threads.intra_op or 0,
            inter_op_parallelism_threads=-1 if inter_op == 1 else inter_op,
        )
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph, config=config)
        # The v1 loader is deprecated in favour of tf.saved_model.load, which is not what
        # TensorFlow Serving does: keep its nag out of the server's log.
        deprecation = importlib.import_module("tensorflow.python.util.deprecation")
        silence = getattr(deprecation, "silence", contextlib.nullcontext)
        with self.graph.as_default(), silence():
            tf.compat.v1.saved_model.loader.load(self.session, sorted(_SERVE_TAGS), str(path))
        self._callables: dict[str, tuple[list[str], list[str], Any]] = {}

    def run(self, signature: Signature, inputs: Tensors) -> dict[str, np.ndarray]:
        made = self._callables.get(signature.name)
        if made is None:
            feeds, fetches = list(signature.inputs), list(signature.outputs)
            call = _callable(
                self.session,
                [signature.inputs[k].name for k in feeds],
                [signature.outputs[k].name for k in fetches],
            )
            made = self._callables[signature.name] = (feeds, fetches, call)
        feeds, fetches, call = made
        values = call(*(inputs[key] for key in feeds))
        return dict(zip(fetches, values, strict=True))

    def close(self) -> None:
        self.session.close()


class _SignatureBackend(Backend):
    """Another signature of a loaded SavedModel, run by the model's own session or function."""

    platform = "tensorflow_savedmodel"

    def __init__(self, owner: TensorFlowSavedModel, signature: Signature) -> None:
        tf = owner._tf
        specs = [
            tuple(_tensor_spec(tf, key, tensor) for key, tensor in tensors.items())
            for tensors in (signature.inputs, signature.outputs)
        ]
        super().__init__(owner.name, owner.version, specs[0], specs[1])
        self.strict_shapes = owner.strict_shapes
        self.signature_name = signature.name
        self.signatures = owner.signatures
        self._owner = owner
        self._signature = signature

    def predict(self, inputs: Tensors) -> dict[str, np.ndarray]:
        """Run this signature on one batch."""
        return self._owner._run(self._signature, inputs)

    def for_signature(self, name: str) -> Backend:
        """The owner's backend for that signature."""
        return self._owner.for_signature(name)


class TensorFlowSavedModel(Backend):
    """A TensorFlow SavedModel, called through one of its signatures.

    The others are :meth:`for_signature` away.

    A SavedModel that TF1-era code exported (no object graph) is loaded into a session, the way
    TensorFlow Serving loads it, and every signature runs there. A TF2 SavedModel's signature
    runs as a frozen graph (or a ``tf.function``), as the module docstring says; its other
    signatures, if it has any, run as ``tf.function``s.

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
        self._tf = tf
        meta_graph = _meta_graph(path, name)
        self.signatures = _signatures(meta_graph)
        if signature not in self.signatures:
            raise ModelLoadError(
                f"model {name!r}: SavedModel {path} has no signature {signature!r}; "
                f"it has: {', '.join(self.signatures) or 'none'}"
            )
        self.signature_name = signature
        self._views: dict[str, Backend] = {}
        self._session: _SessionModel | None = None
        self._loaded: Any = None
        self._fn: Any = None
        self._frozen: _FrozenSignature | None = None
        try:
            if not meta_graph.object_graph_def.nodes:
                self._session = _SessionModel(tf, path, threads)
                # TF Serving feeds a TF1 graph what a request holds and lets the graph check
                # it: [1.0, 2.0] is a fine input for a placeholder of shape [-1, 1].
                self.strict_shapes = False
            else:
                self._load_v2(tf, path, name, signature, threads)
        except Exception as error:  # TF raises many kinds; all mean "cannot load"
            raise ModelLoadError(
                f"model {name!r}: cannot load SavedModel {path}: {error}"
            ) from error
        main = self.signatures[signature]
        for tensors, configured in ((main.inputs, inputs), (main.outputs, outputs)):
            unknown = [key for key, tensor in tensors.items() if tensor.shape is None]
            if unknown and configured is None and self.strict_shapes:  # a TF1 graph checks
                raise ModelLoadError(
                    f"model {name!r}: tensor {unknown[0]!r} of signature {signature!r} has "
                    "unknown rank; give its shape in config.toml"
                )
        read_inputs = tuple(_tensor_spec(tf, k, t) for k, t in main.inputs.items())
        read_outputs = tuple(_tensor_spec(tf, k, t) for k, t in main.outputs.items())
        super().__init__(
            name,
            version,
            override_specs(name, "inputs", read_inputs, inputs),
            override_specs(name, "outputs", read_outputs, outputs),
        )
        if self.frozen and len(self.signatures) == 1:
            # The graph holds the weights now, and no other signature needs the variables.
            self._fn = None
            self._loaded = None

    def _load_v2(
        self, tf: Any, path: Path, name: str, signature: str, threads: ThreadConfig
    ) -> None:
        self._loaded = tf.saved_model.load(str(path))
        self._fn = self._loaded.signatures[signature]
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

    @property
    def frozen(self) -> bool:
        """Whether the signature runs as a frozen graph in a session (else as a tf.function)."""
        return self._frozen is not None

    @property
    def session_loaded(self) -> bool:
        """Whether the model was loaded into a session by TensorFlow's v1 loader (TF1 models)."""
        return self._session is not None

    def for_signature(self, name: str) -> Backend:
        """The backend of another signature (made once, sharing this model's session)."""
        if not name or name == self.signature_name:
            return self
        view = self._views.get(name)
        if view is None:
            signature = self.signatures.get(name)
            if signature is None:
                return super().for_signature(name)  # raises, naming the signatures there are
            view = self._views[name] = _SignatureBackend(self, signature)
        return view

    def predict(self, inputs: Tensors) -> dict[str, np.ndarray]:
        """Run the signature on one batch."""
        frozen = self._frozen
        if frozen is not None:
            values = frozen.call(*(inputs[name] for name in frozen.input_names))
            return dict(zip(frozen.output_names, values, strict=True))
        return self._run(self.signatures[self.signature_name or ""], inputs)

    def _run(self, signature: Signature, inputs: Tensors) -> dict[str, np.ndarray]:
        if self._session is not None:
            try:
                return self._session.run(signature, inputs)
            except self._tf.errors.InvalidArgumentError as error:
                # The graph checks what coserve fed it unchecked (strict_shapes is off): its
                # refusal is the request's fault, as TF Serving answers it (400).
                message = (error.message or str(error)).splitlines()[0]
                raise InvalidInput(
                    f"model {self.name!r} refused the input ({signature.name}): {message}"
                ) from None
        fn = self._loaded.signatures[signature.name]
        constant = self._tf.constant
        result = fn(**{name: constant(array) for name, array in inputs.items()})
        return {name: tensor.numpy() for name, tensor in result.items()}

    def close(self) -> None:
        """Close the sessions and drop the references to the graph so TensorFlow can free it."""
        if self._frozen is not None:
            self._frozen.session.close()
            self._frozen = None
        if self._session is not None:
            self._session.close()
            self._session = None
        self._views = {}
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
