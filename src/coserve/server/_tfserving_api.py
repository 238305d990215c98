"""TensorFlow Serving's API with the protocol aside: what its REST and gRPC drivers share.

Which model version a request names (a number, a version label, or the latest), the signatures
a model describes, the versions a status lists, and Classify and Regress: serialized
``tf.Example``s in, run through the signature's own batcher, and checked and answered as
TensorFlow Serving does (its ``classifier.cc`` and ``regressor.cc``: the same structure checks
and messages). Models that are not SavedModels describe one ``predict`` signature, from their
specs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from coserve._exceptions import InvalidInput, ModelError, ModelNotFound
from coserve.models import ModelHandle, ModelRepository, TensorSpec
from coserve.models._signatures import DEFAULT_SIGNATURE, PREDICT, Signature, SignatureTensor
from coserve.server._service import Call, InferenceService

__all__ = [
    "DEFAULT_SIGNATURE",
    "TF_DTYPES",
    "classify",
    "handle_for",
    "regress",
    "signature_handle",
    "signatures",
    "versions",
]

TF_DTYPES = {
    "BOOL": "DT_BOOL",
    "UINT8": "DT_UINT8",
    "UINT16": "DT_UINT16",
    "UINT32": "DT_UINT32",
    "UINT64": "DT_UINT64",
    "INT8": "DT_INT8",
    "INT16": "DT_INT16",
    "INT32": "DT_INT32",
    "INT64": "DT_INT64",
    "FP16": "DT_HALF",
    "FP32": "DT_FLOAT",
    "FP64": "DT_DOUBLE",
    "BYTES": "DT_STRING",
}
"""Protocol datatypes as TensorFlow ``DataType`` names."""


def handle_for(
    service: InferenceService,
    name: str,
    version: str | None,
    label: str | None,
    *,
    serving: bool = True,
) -> ModelHandle:
    """The model version a request names: a version, a version label, or neither (the latest).

    ``serving``: a request to run (refused while the server is not accepting work), rather than
    one to describe.

    Raises:
        ModelNotFound: No such model or version.
        InvalidInput: No such version label (as TF Serving answers it).
        BatcherClosed: ``serving``, and the server is not accepting work.
    """
    repository = service.state.repository
    if version is not None and version.isascii() and version.isdigit():
        version = str(int(version))  # TF Serving parses the number: /versions/00000123 is 123
    if label is not None:
        repository.get(name)  # an unknown model is NOT_FOUND, as in TF Serving
        try:
            version = repository.version_of_label(name, label)
        except ModelNotFound as error:  # TF Serving's INVALID_ARGUMENT, and its words
            raise InvalidInput(f"Unrecognized servable version label: {label} ({error})") from None
    if serving:
        return service.resolve(name, version)
    return repository.get(name, version)


def signatures(handle: ModelHandle) -> dict[str, Signature]:
    """Every signature of the model version, by name, as its metadata describes them."""
    declared = handle.backend.signatures
    if declared:
        return dict(declared)
    name = DEFAULT_SIGNATURE

    def tensors(specs: Sequence[TensorSpec]) -> dict[str, SignatureTensor]:
        return {
            spec.name: SignatureTensor(spec.name, TF_DTYPES[spec.datatype], spec.shape)
            for spec in specs
        }

    return {name: Signature(name, PREDICT, tensors(handle.inputs), tensors(handle.outputs))}


def signature_handle(handle: ModelHandle, name: str, *, empty: str | None = None) -> ModelHandle:
    """The handle that runs the signature a request names.

    ``""`` is ``empty`` when given (TF Serving's Classify and Regress say ``serving_default``),
    else the signature the model serves (its config's ``signature``), as Predict takes it.

    Raises:
        InvalidInput: The model has no such signature.
    """
    if not name and empty is None:
        return handle
    wanted = name or empty or DEFAULT_SIGNATURE
    try:
        return handle.for_signature(wanted)
    except InvalidInput:
        raise InvalidInput(f"No signature was found with the name: {wanted}") from None


def versions(repository: ModelRepository, name: str) -> list[str]:
    """The model's loaded versions, newest first (as TensorFlow Serving lists them)."""
    return sorted((m.version for m in repository.models() if m.name == name), key=int, reverse=True)


def _runner(
    service: InferenceService, handle: ModelHandle, name: str
) -> tuple[ModelHandle, list[str]]:
    """The signature Classify or Regress names, admitted to its queue, and its outputs' names.

    ``""`` names ``serving_default``, as in TF Serving.
    """
    runner = signature_handle(handle, name, empty=DEFAULT_SIGNATURE)
    service.admit(runner)
    return runner, [spec.name for spec in runner.outputs]


def _examples_input(
    handle: ModelHandle, kind: str, examples: Sequence[bytes]
) -> dict[str, np.ndarray]:
    """The examples as the signature's one input, a vector of serialized ``tf.Example``s."""
    inputs = handle.inputs
    if len(inputs) != 1:
        raise InvalidInput("Expected one input Tensor.")
    if inputs[0].name != "inputs":
        raise InvalidInput(
            f"No {kind} inputs found in SignatureDef {handle.backend.signature_name!r}: its "
            f"input is {inputs[0].name!r}, not 'inputs'"
        )
    if not examples:
        raise InvalidInput("Input is empty.")
    serialized = np.empty(len(examples), dtype=object)
    serialized[:] = list(examples)
    return {"inputs": serialized}


async def classify(
    service: InferenceService,
    handle: ModelHandle,
    signature_name: str,
    examples: Sequence[bytes],
    *,
    timeout: float | None = None,  # noqa: ASYNC109 - a deadline the batcher enforces
    call: Call | None = None,
) -> tuple[str, list[list[tuple[str, float]]]]:
    """Classify serialized examples with a classify signature.

    Returns the signature's name, and per example its ``(label, score)`` pairs: label ``""``
    without a ``classes`` output, score 0 without a ``scores`` one.

    Raises:
        InvalidInput: No such signature, or one that does not classify; no examples.
        QueueFull: The signature's queue is full.
        ModelError: The signature's outputs are not a classifier's.
    """
    runner, outputs = _runner(service, handle, signature_name)
    if not 1 <= len(outputs) <= 2:
        raise InvalidInput(f"Expected one or two output Tensors, found {len(outputs)}")
    if not {"classes", "scores"} & set(outputs):
        raise InvalidInput(
            'Expected classification signature outputs to contain at least one of "classes" '
            f'or "scores". Signature {runner.backend.signature_name!r} has {outputs}'
        )
    inputs = _examples_input(runner, "classification", examples)
    wanted = [name for name in ("classes", "scores") if name in outputs]
    result = await service.infer(runner, inputs, outputs=wanted, timeout=timeout, call=call)
    count = len(examples)
    classes, scores = result.get("classes"), result.get("scores")
    for name, array in (("classes", classes), ("scores", scores)):
        if array is None:
            continue
        if array.ndim != 2:
            raise ModelError(
                f"Expected Tensor shape: [batch_size num_classes] but got {list(array.shape)}"
            )
        if name == "classes" and array.dtype != np.object_:
            raise ModelError(f"Expected classes Tensor of DT_STRING. Got: {array.dtype}")
        if name == "scores" and array.dtype != np.float32:
            raise ModelError(f"Expected scores Tensor of DT_FLOAT. Got: {array.dtype}")
        if array.shape[0] != count:
            raise ModelError(f"Expected {name} output batch size of {count}. Got: {len(array)}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise ModelError(
            "Tensors class and score should match in dim_size(1). "
            f"Got {classes.shape[1]} vs. {scores.shape[1]}"
        )
    width = (classes if classes is not None else scores).shape[1]  # type: ignore[union-attr]
    answered = [
        [
            (
                _label(classes[row, c]) if classes is not None else "",
                _float32(scores[row, c]) if scores is not None else 0.0,
            )
            for c in range(width)
        ]
        for row in range(count)
    ]
    return runner.backend.signature_name or DEFAULT_SIGNATURE, answered


async def regress(
    service: InferenceService,
    handle: ModelHandle,
    signature_name: str,
    examples: Sequence[bytes],
    *,
    timeout: float | None = None,  # noqa: ASYNC109 - a deadline the batcher enforces
    call: Call | None = None,
) -> tuple[str, list[float]]:
    """Regress serialized examples with a regress signature: the signature and one value each.

    Raises:
        InvalidInput: No such signature, or one that does not regress; no examples.
        QueueFull: The signature's queue is full.
        ModelError: The signature's output is not a regressor's.
    """
    runner, outputs = _runner(service, handle, signature_name)
    if len(outputs) != 1:
        raise InvalidInput("Expected one output Tensor.")
    if outputs != ["outputs"]:
        raise InvalidInput(
            f"No regression outputs found in SignatureDef {runner.backend.signature_name!r}: "
            f"its output is {outputs[0]!r}, not 'outputs'"
        )
    inputs = _examples_input(runner, "regression", examples)
    result = (await service.infer(runner, inputs, timeout=timeout, call=call))["outputs"]
    count = len(examples)
    if not (result.ndim == 1 or (result.ndim == 2 and result.shape[1] == 1)):
        raise ModelError(
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
            f"{list(result.shape)}"
        )
    if result.dtype != np.float32:
        raise ModelError(f"Expected output Tensor of DT_FLOAT.  Got: {result.dtype}")
    if len(result) != count:
        raise ModelError(
            f"Input batch size did not match output batch size: {count} vs. {len(result)}"
        )
    return runner.backend.signature_name or DEFAULT_SIGNATURE, [
        _float32(v) for v in result.reshape(-1)
    ]


def _label(value: object) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


def _float32(value: object) -> float:
    """A float32 as the shortest decimal that reads back as it (0.2, not 0.20000000298...)."""
    return float(str(np.float32(value)))  # type: ignore[arg-type]
