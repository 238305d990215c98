"""Triton's classification extension: an output asked for as its top classes, not its values.

A requested output with ``"parameters": {"classification": k}`` (on REST; an ``int64_param`` on
gRPC) is answered as a BYTES tensor of shape ``[rows, k]`` (``[k]`` for a model without a batch
dimension, whose whole tensor is ranked): each row's k largest values, largest first, each
written ``"value:index"`` or, when the model has class labels (``labels`` in config.toml,
Triton's ``label_filename``), ``"value:index:label"``, the value as C++'s ``std::to_string``
writes it, as Triton does (six decimals for floats, integers as they are). Every protocol
driver applies it with :func:`classify` once the model has answered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from coserve._exceptions import InvalidInput

__all__ = ["check_classifiable", "class_count", "classify"]


def class_count(output: str, value: Any) -> int:
    """The ``classification`` parameter of a requested output, checked.

    Raises:
        InvalidInput: Not a whole number of classes >= 1.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(
            f"output {output!r}: 'classification' must be a whole number of classes >= 1, "
            f"got {value!r}"
        )
    return value


def check_classifiable(datatypes: Mapping[str, str], counts: Mapping[str, int]) -> None:
    """Refuse, before the model runs, a classification of an output that has no classes.

    Raises:
        InvalidInput: A classified output is BYTES or BOOL (unknown outputs are refused by the
            requested-outputs check).
    """
    for name in counts:
        if datatypes.get(name) in ("BYTES", "BOOL"):
            raise InvalidInput(f"output {name!r} is not numeric: it has no classes to rank")


def classify(
    outputs: Mapping[str, np.ndarray],
    datatypes: Mapping[str, str],
    counts: Mapping[str, int],
    labels: Sequence[str],
    *,
    batched: bool = True,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The outputs with each one in ``counts`` replaced by its top classes, and their datatypes.

    Raises:
        InvalidInput: A classified output is not numeric, or has no values in a row.
    """
    if not counts:
        return dict(outputs), dict(datatypes)
    answered, types = dict(outputs), dict(datatypes)
    for name, count in counts.items():
        array = outputs.get(name)
        if array is None:
            continue  # not asked for: the requested outputs were checked before the model ran
        if datatypes.get(name) in (None, "BYTES", "BOOL"):
            raise InvalidInput(f"output {name!r} is not numeric: it has no classes to rank")
        flat = not batched or not array.ndim
        rows = array.reshape(1, -1) if flat else array.reshape(len(array), -1)
        if rows.shape[1] == 0:
            raise InvalidInput(f"output {name!r} has no values to classify")
        k = min(count, rows.shape[1])
        keys = -rows.astype(np.float64)
        if k < rows.shape[1]:  # the top k first (linear), then only those sorted
            top = np.argpartition(keys, k - 1, axis=1)[:, :k]
            keys_top = np.take_along_axis(keys, top, axis=1)
            # Equal values in index order, as a stable sort would give them.
            order = np.take_along_axis(top, np.lexsort((top, keys_top), axis=1), axis=1)
        else:
            order = np.argsort(keys, axis=1, kind="stable")
        integer = rows.dtype.kind in "iu"
        classes = np.empty((len(rows), k), dtype=object)
        for row, indices in enumerate(order):
            for column, index in enumerate(indices):
                value = rows[row, index]
                shown = str(int(value)) if integer else f"{float(value):f}"
                text = f"{shown}:{int(index)}"
                if index < len(labels):
                    text += f":{labels[index]}"
                classes[row, column] = text.encode()
        answered[name], types[name] = (classes[0] if flat else classes), "BYTES"
    return answered, types
