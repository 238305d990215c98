"""Triton's Python backend: a ``model.py`` defining ``class TritonPythonModel``, served unmodified.

The model folder is Triton's (``config.pbtxt`` with ``backend: "python"``, ``<version>/model.py``
or the config's ``default_model_filename``), or coserve's (``config.toml`` with ``platform =
"triton_python"`` and ``[[inputs]]``/``[[outputs]]``). The model's file is imported as a module of
its own, with ``triton_python_backend_utils`` (coserve's :mod:`.triton_python_utils`) registered
in ``sys.modules`` for its ``import triton_python_backend_utils as pb_utils``, and the version
folder on ``sys.path`` while it is imported and while ``initialize`` runs, so the model's own
imports of the files beside it work. Triton runs each model in a process of its own and leaves
the folder there; coserve serves many models in one process, so the folder is taken off again
and the modules imported from it are kept by the model alone (two models that each ship a
``helper.py`` get their own). A neighbour first imported inside ``execute`` is not found.

As in Triton, each instance of the config's ``instance_group`` (their ``count`` summed: coserve's
``max_concurrent_batches``) is a ``TritonPythonModel`` of its own, ``initialize(args)`` called
with Triton's ``args`` (``model_config``, the completed config as JSON; ``model_instance_kind``
``"CPU"``; ``model_instance_name``; ``model_instance_device_id`` ``"0"``; ``model_repository``,
the model folder; ``model_version``; ``model_name``), and a batch runs on an idle instance, so a
model's ``execute`` never runs in two threads at once. ``finalize()`` is called on unload.
``initialize``, ``execute`` and ``finalize`` may be ``async def``: they then run on an event loop
of the instance's own, in a thread of its own, kept for the model's lifetime (so what a model
binds to its loop in ``initialize`` still works in ``execute``); never on the server's loop.

Requests and batches. As in Triton, ``execute`` gets one ``InferenceRequest`` per client
request (the backend ``takes_requests``: the handle hands it the batch's requests as they came,
never concatenated), and returns one response per request:

- Without ``dynamic_batching`` (or with ``max_batch_size: 0``) each request runs alone: a list of
  one. With it, the list holds the requests batched together (at most ``max_batch_size`` rows in
  all), each with its own rows, so a model that computes across a request's rows mixes nobody's.
  A request over ``max_batch_size`` rows is refused, as in Triton (in chunks, each would be a
  request of its own).
- A stateful model (``sequence_batching``) gets one request per sequence step, with
  ``correlation_id()`` and the START/END ``flags()`` (``predict_sequence``).
- ``request_id()`` is ``""``, ``parameters()`` is ``"{}"`` and ``requested_output_names()`` is
  every output of the config (coserve returns what each client asked for).

A response's ``TritonError`` fails its own request only. The status follows Triton's for the
error's code: ``INVALID_ARG``, ``UNKNOWN``, ``ALREADY_EXISTS`` and ``CANCELLED`` are the request's
fault (:class:`~coserve.InvalidInput`, 400); the others, ``INTERNAL`` by default, are a 500
(Triton gives ``NOT_FOUND`` 404, ``UNAVAILABLE`` 503 and ``UNSUPPORTED`` 501; coserve's handle
reports every model failure but a refused input as a 500). An exception from ``execute`` is a
:class:`~coserve.ModelError` (500) with its message, as in Triton (a batch of several requests
then runs again one request at a time, so the exception fails only the requests it comes back
for). Outputs must be named in the config and have its data type (a BYTES output may hold
``bytes`` or ``str``, sent as UTF-8); tensors the config does not name are dropped, as Triton
drops outputs nobody asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import json
import logging
import queue
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from coserve._exceptions import InvalidInput, ModelError, ModelLoadError
from coserve.models._backend import Backend, SequenceFlags, Tensors
from coserve.models._config import ModelConfig
from coserve.models._specs import TensorSpec
from coserve.models._triton_config import triton_model_config
from coserve.models.backends import triton_python_utils as pb_utils

__all__ = ["TritonPythonModelBackend", "import_model_file", "register_utils"]

logger = logging.getLogger("coserve.models")

_REQUEST_FAULTS = frozenset(
    {
        pb_utils.TritonError.INVALID_ARG,
        pb_utils.TritonError.UNKNOWN,
        pb_utils.TritonError.ALREADY_EXISTS,
        pb_utils.TritonError.CANCELLED,
    }
)
"""The error codes Triton answers with a 400: the request's fault, not the model's."""

_imports = threading.Lock()
"""Imports change sys.path and sys.modules: one model file is imported at a time."""

_FINALIZE_WAIT = 30.0
"""Seconds unload waits for an instance's last ``execute`` before calling its ``finalize``."""


def register_utils() -> None:
    """Make ``import triton_python_backend_utils`` find coserve's module."""
    known = sys.modules.get(pb_utils.MODULE_NAME)
    if known is not pb_utils:
        if known is not None:
            logger.warning(
                "replacing the module %s imported from %s by coserve's",
                pb_utils.MODULE_NAME,
                getattr(known, "__file__", "?"),
            )
        sys.modules[pb_utils.MODULE_NAME] = pb_utils


def _local_names(folder: Path) -> set[str]:
    """The top-level module names the files and packages beside a model would import as."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return set()
    return {e.stem for e in entries if e.suffix == ".py" and e.is_file()} | {
        e.name for e in entries if e.is_dir() and (e / "__init__.py").is_file()
    }


@contextlib.contextmanager
def _on_path(folder: Path) -> Iterator[None]:
    """The model's folder first on ``sys.path``, with the model's own modules only.

    So a model can import the files beside it, and two models that each ship a ``helper.py``
    get their own: modules of those names are set aside while this model imports (or runs
    ``initialize``), and what it imported from its folder is taken out of ``sys.modules``
    afterwards (its globals keep them). Hold ``_imports`` around it.
    """
    entry = str(folder)
    local = _local_names(folder)

    def is_local(module: str) -> bool:
        return module.partition(".")[0] in local

    set_aside = {name: sys.modules.pop(name) for name in list(sys.modules) if is_local(name)}
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(entry)
        for name in [name for name in sys.modules if is_local(name)]:
            del sys.modules[name]
        sys.modules.update(set_aside)


def import_model_file(path: Path, *, name: str, version: str) -> ModuleType:
    """Import a Triton ``model.py`` as a module of its own (blocking).

    Raises:
        ModelLoadError: The file is not a Python file, or importing it failed.
    """
    register_utils()
    spec = importlib.util.spec_from_file_location(f"coserve_triton_model_{name}_{version}", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise ModelLoadError(f"model {name!r}: {path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    with _imports, _on_path(path.parent):
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            raise ModelLoadError(f"model {name!r}: importing {path} failed: {error!r}") from error
    return module


class _Instance:
    """One ``TritonPythonModel``, with the event loop its coroutines run on (made on first use)."""

    def __init__(self, model: Any, name: str) -> None:
        self.model = model
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def call(self, method: Callable[..., Any], *args: Any) -> Any:
        """Call one of the model's methods; a coroutine it returns runs on the instance's loop."""
        result = method(*args)
        if not inspect.isawaitable(result):
            return result
        return asyncio.run_coroutine_threadsafe(_awaited(result), self._event_loop()).result()

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=_run_loop, args=(loop,), name=f"triton-python {self.name}", daemon=True
            )
            thread.start()
            self._loop, self._thread = loop, thread
        return self._loop

    def stop(self) -> None:
        """Stop the instance's loop, if it has one, cancelling what the model left running."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop = self._thread = None


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _instance_names(config: ModelConfig) -> list[str]:
    """Triton's instance names: ``<group name>_<index>`` for each instance of each group."""
    groups = (config.triton or {}).get("instance_group") or []
    if config.sequence is not None:
        # A sequence's state lives in the instance that ran its first step, and coserve
        # does not tie sequences to instances: a stateful model gets one.
        first = groups[0].get("name") if groups else None
        return [f"{first or config.name}_0"]
    names = [
        f"{group.get('name') or config.name}_{index}"
        for group in groups
        for index in range(max(int(group.get("count", 1)), 1))
    ]
    return names or [f"{config.name}_0_{i}" for i in range(config.batching.max_concurrent_batches)]


class TritonPythonModelBackend(Backend):
    """A Triton Python model: its ``TritonPythonModel`` instances, ``execute`` run per batch.

    Args:
        path: The model file (``<version>/model.py``).
        config: The model's config (its Triton JSON is what ``initialize`` gets).
        name: The model's name.
        version: The version string.
        inputs: The input specs (a Python model carries none: they come from the config).
        outputs: The output specs.

    Raises:
        ModelLoadError: The config gives no inputs or outputs, the file fails to import, has no
            ``TritonPythonModel`` with an ``execute``, or ``initialize`` raises.
    """

    platform = "triton_python"
    takes_requests = True

    def __init__(
        self,
        path: Path,
        *,
        config: ModelConfig,
        name: str,
        version: str,
        inputs: tuple[TensorSpec, ...] | None,
        outputs: tuple[TensorSpec, ...] | None,
    ) -> None:
        if inputs is None or outputs is None:
            raise ModelLoadError(
                f"model {name!r}: a Triton Python model needs its inputs and outputs in its "
                "config (input and output in config.pbtxt, [[inputs]] and [[outputs]] in "
                "config.toml)"
            )
        super().__init__(name, version, inputs, outputs)
        self._folder = path.parent
        module = import_model_file(path, name=name, version=version)
        model_class = getattr(module, "TritonPythonModel", None)
        if not inspect.isclass(model_class):
            raise ModelLoadError(f"model {name!r}: {path} defines no class TritonPythonModel")
        if not callable(getattr(model_class, "execute", None)):
            raise ModelLoadError(
                f"model {name!r}: {path}: TritonPythonModel does not implement execute(requests)"
            )
        self._input_names = [spec.name for spec in inputs]
        self._output_names = [spec.name for spec in outputs]
        self._specs = {spec.name: spec for spec in outputs}
        args = {
            "model_config": json.dumps(
                triton_model_config(config, config.inputs or inputs, config.outputs or outputs)
            ),
            "model_instance_kind": "CPU",
            "model_instance_device_id": "0",
            "model_repository": str(path.parent.parent),
            "model_version": version,
            "model_name": name,
        }
        self._instances: list[_Instance] = []
        self._idle: queue.SimpleQueue[_Instance] = queue.SimpleQueue()
        self._serving = False
        try:
            for instance_name in _instance_names(config):
                self._instances.append(self._start(model_class, instance_name, args))
        except BaseException:
            self.close()
            raise
        for instance in self._instances:
            self._idle.put(instance)
        self._serving = True  # from now on an instance is busy unless it is in _idle

    def _start(self, model_class: type, instance_name: str, args: dict[str, str]) -> _Instance:
        try:
            instance = _Instance(model_class(), instance_name)
        except Exception as error:
            raise ModelLoadError(
                f"model {self.name!r}: TritonPythonModel() failed: {error!r}"
            ) from error
        initialize = getattr(instance.model, "initialize", None)
        if callable(initialize):
            try:
                # initialize may import the files beside model.py, as it can in Triton.
                with _imports, _on_path(self._folder):
                    instance.call(initialize, {**args, "model_instance_name": instance_name})
            except Exception as error:
                instance.stop()
                raise ModelLoadError(
                    f"model {self.name!r}: initialize() failed: {error!r}"
                ) from error
        return instance

    def predict(self, inputs: Tensors) -> dict[str, np.ndarray]:
        """Run ``execute`` on an idle instance with the batch as one request; check its answer.

        For direct calls: a handle calls :meth:`predict_requests`, one request per client's.

        Raises:
            InvalidInput: The response's error has a code Triton answers with a 400.
            ModelError: ``execute`` raised, returned something else than one response, the
                response's error has another code, or an output is missing or of the wrong type.
        """
        request = pb_utils.InferenceRequest(
            inputs=[
                pb_utils.Tensor(name, inputs[name]) for name in self._input_names if name in inputs
            ],
            requested_output_names=self._output_names,
            model_name=self.name,
        )
        [response] = self._execute([request])
        error = self._error(response)
        if error is not None:
            raise error
        return self._outputs(response)

    def predict_requests(
        self, requests: Sequence[Tensors]
    ) -> list[dict[str, np.ndarray] | Exception]:
        """Run ``execute`` once with one ``InferenceRequest`` per client request, as Triton does.

        A response's error fails its own request only (Triton's 400 codes as ``InvalidInput``,
        the others as ``ModelError``), as does a response with a missing or mistyped output.

        Raises:
            ModelError: ``execute`` raised, or did not answer one response per request.
        """
        built = [
            pb_utils.InferenceRequest(
                inputs=[
                    pb_utils.Tensor(name, request[name])
                    for name in self._input_names
                    if name in request  # an optional input left out
                ],
                requested_output_names=self._output_names,
                model_name=self.name,
            )
            for request in requests
        ]
        answers: list[dict[str, np.ndarray] | Exception] = []
        for response in self._execute(built):
            failure = self._error(response)
            if failure is None:
                try:
                    answers.append(self._outputs(response))
                except ModelError as error:
                    answers.append(error)
            else:
                answers.append(failure)
        return answers

    def _execute(self, requests: list[pb_utils.InferenceRequest]) -> list[Any]:
        """``execute(requests)`` on an idle instance; its responses, one per request, checked."""
        instance = self._idle.get()
        try:
            responses = instance.call(instance.model.execute, requests)
        except Exception as error:
            raise ModelError(f"model {self.name!r}: execute raised {error!r}") from error
        finally:
            self._idle.put(instance)
        return self._responses(responses, len(requests))

    def predict_sequence(
        self, inputs: Tensors, rows: Sequence[SequenceFlags | None]
    ) -> tuple[dict[str, np.ndarray], Mapping[int, Exception]]:
        """Run ``execute`` with one request per sequence step, as Triton gives them.

        Each request holds its row, its sequence id (``correlation_id()``) and its start and
        end ``flags()``; a free slot's row gets no request, and zeros in the outputs. A
        response's error fails its own request only (Triton's 400 codes as ``InvalidInput``).

        Raises:
            ModelError: ``execute`` raised, or answered something else than one response per
                request, or an output is missing, of the wrong type, or not one row.
        """
        live = [(r, flags) for r, flags in enumerate(rows) if flags is not None]
        requests = [
            pb_utils.InferenceRequest(
                correlation_id=flags.id,
                inputs=[
                    pb_utils.Tensor(name, inputs[name][r : r + 1] if self.batched else inputs[name])
                    for name in self._input_names
                    if name in inputs  # an optional input left out: get_input_tensor... is None
                ],
                requested_output_names=self._output_names,
                model_name=self.name,
                flags=(pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START if flags.start else 0)
                | (pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END if flags.end else 0),
            )
            for r, flags in live
        ]
        errors: dict[int, Exception] = {}
        answers: dict[int, dict[str, np.ndarray]] = {}
        for (r, _), response in zip(live, self._execute(requests), strict=True):
            failure = self._error(response)
            if failure is None:
                answers[r] = self._outputs(response)
            else:
                errors[r] = failure
        if not self.batched:
            return next(iter(answers.values()), {}), errors
        outputs = {}
        for name in self._output_names:
            spec = self._specs[name]
            if any(len(answer[name]) != 1 for answer in answers.values()):
                raise ModelError(
                    f"model {self.name!r}: output {name!r} of a sequence step must have one row"
                )
            sample = next(iter(answers.values()), {}).get(name)
            row_shape = (
                sample.shape[1:] if sample is not None else tuple(max(d, 1) for d in spec.row_shape)
            )
            if spec.dtype == np.object_:
                array = np.full((len(rows), *row_shape), b"", dtype=object)
            else:
                array = np.zeros((len(rows), *row_shape), dtype=spec.dtype)
            for r, answer in answers.items():
                array[r] = answer[name][0]
            outputs[name] = array
        return outputs, errors

    def _responses(self, responses: Any, count: int) -> list[pb_utils.InferenceResponse]:
        if responses is None:
            raise ModelError(
                f"model {self.name!r}: execute returned None (decoupled mode is not supported): "
                "it must return a list of one InferenceResponse per request"
            )
        if not isinstance(responses, Sequence) or isinstance(responses, (str, bytes)):
            raise ModelError(
                f"model {self.name!r}: execute must return a list of InferenceResponse, "
                f"got {type(responses).__name__}"
            )
        if len(responses) != count:
            raise ModelError(
                f"model {self.name!r}: execute got {count} request(s) and returned "
                f"{len(responses)} responses; it must return one InferenceResponse per request"
            )
        for response in responses:
            if not isinstance(response, pb_utils.InferenceResponse):
                raise ModelError(
                    f"model {self.name!r}: execute must return InferenceResponse objects, "
                    f"got {type(response).__name__}"
                )
        return list(responses)

    def _error(self, response: pb_utils.InferenceResponse) -> Exception | None:
        """A response's error as coserve's: Triton's 400 codes are the request's fault."""
        error = response.error()
        if error is None:
            return None
        message = error.message() if isinstance(error, pb_utils.TritonError) else str(error)
        code = error.code() if isinstance(error, pb_utils.TritonError) else None
        if code in _REQUEST_FAULTS:
            return InvalidInput(f"model {self.name!r} refused the request: {message}")
        return ModelError(f"model {self.name!r} returned an error: {message}")

    def _outputs(self, response: pb_utils.InferenceResponse) -> dict[str, np.ndarray]:
        tensors = {}
        for tensor in response.output_tensors():
            if not isinstance(tensor, pb_utils.Tensor):
                raise ModelError(
                    f"model {self.name!r}: an InferenceResponse holds a "
                    f"{type(tensor).__name__}, not a pb_utils.Tensor"
                )
            tensors[tensor.name()] = tensor.as_numpy()
        outputs = {}
        for name in self._output_names:
            array = tensors.get(name)
            if array is None:
                raise ModelError(
                    f"model {self.name!r}: the response has no output {name!r} (it has: "
                    f"{', '.join(tensors) or 'none'})"
                )
            outputs[name] = self._checked(name, array)
        return outputs

    def _checked(self, name: str, array: np.ndarray) -> np.ndarray:
        spec = self._specs[name]
        if spec.dtype == np.object_:
            if array.dtype.kind not in "OS":
                raise ModelError(
                    f"model {self.name!r}: output {name!r} is BYTES in the config, the model "
                    f"gave {array.dtype}"
                )
            items = [
                item if isinstance(item, bytes) else str(item).encode("utf-8")
                for item in array.ravel()
            ]
            return np.array(items, dtype=object).reshape(array.shape)
        if array.dtype != spec.dtype:
            raise ModelError(
                f"model {self.name!r}: output {name!r} is {spec.datatype} in the config, the "
                f"model gave {array.dtype}"
            )
        return array

    def close(self) -> None:
        """Call every instance's ``finalize()`` (errors are logged, as Triton logs them).

        Each instance is taken back from the idle ones first, so ``finalize`` never runs
        beside an ``execute`` that the drain's deadline left running; one still busy after
        ``_FINALIZE_WAIT`` seconds is left unfinalized, with a log line.
        """
        instances = self._instances
        if self._serving:
            instances = []
            for _ in self._instances:
                try:
                    instances.append(self._idle.get(timeout=_FINALIZE_WAIT))
                except queue.Empty:
                    logger.warning(
                        "model %s v%s: an instance still runs execute(); its finalize() is "
                        "not called",
                        self.name,
                        self.version,
                    )
                    break
            self._serving = False
        for instance in instances:
            finalize = getattr(instance.model, "finalize", None)
            try:
                if callable(finalize):
                    instance.call(finalize)
            except Exception:
                logger.exception(
                    "model %s v%s: finalize() of %s failed", self.name, self.version, instance.name
                )
            finally:
                instance.stop()
        self._instances = []
