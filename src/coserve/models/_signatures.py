"""A model's named signatures, as a TensorFlow SavedModel declares them.

A SavedModel may carry several signatures: ``serving_default`` for ``:predict`` and others for
``:classify`` and ``:regress`` (their ``method_name`` says which). A backend lists them so the
TensorFlow Serving APIs can describe each one exactly as TensorFlow Serving does (graph tensor
names, ``DT_*`` types, an unknown rank) and run any of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "DEFAULT_SIGNATURE",
    "PREDICT",
    "Signature",
    "SignatureTensor",
]

DEFAULT_SIGNATURE = "serving_default"
"""The signature a request that names none is for (TensorFlow's constant); a model without
signatures answers to it too."""

PREDICT = "tensorflow/serving/predict"


@dataclass(frozen=True, slots=True)
class SignatureTensor:
    """One input or output of a signature, as the SavedModel's ``TensorInfo`` describes it.

    Attributes:
        name: The graph tensor's name (``"x:0"``).
        dtype: The TensorFlow ``DataType`` name (``"DT_FLOAT"``).
        shape: The dimensions (-1: any size), or None for an unknown rank.
    """

    name: str
    dtype: str
    shape: tuple[int, ...] | None


@dataclass(frozen=True, slots=True)
class Signature:
    """A named signature: its method and its inputs and outputs by key.

    Attributes:
        name: The signature's key (``"serving_default"``).
        method_name: ``tensorflow/serving/predict``, ``.../classify`` or ``.../regress``.
        inputs: The inputs, by the keys requests name them with.
        outputs: The outputs, by key.
    """

    name: str
    method_name: str
    inputs: Mapping[str, SignatureTensor]
    outputs: Mapping[str, SignatureTensor]
