"""Triton's classification extension: an output asked for as its top classes, not its values.

A requested output with ``"parameters": {"classification": k}`` (on REST; an ``int64_param`` on
gRPC) is answered as a BYTES tensor of shape ``[rows, k]``: each row's k largest values, largest
first, each written ``"value:index"`` or, when the model has class labels (``labels`` in
config.toml, Triton's ``label_filename``), ``"value:index:label"``, the value in fixed notation
with nine decimals, as Triton writes it. Every protocol driver applies it with :func:`classify`
once the model has answered.
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
        rows = array.reshape(len(array), -1) if array.ndim else array.reshape(1, -1)
        if rows.shape[1] == 0:
            raise InvalidInput(f"output {name!r} has no values to classify")
        k = min(count, rows.shape[1])
        # Largest first; a stable sort keeps equal values in index order.
        order = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :k]
        classes = np.empty((len(rows), k), dtype=object)
        for row, indices in enumerate(order):
            for column, index in enumerate(indices):
                text = f"{float(rows[row, index]):.9f}:{int(index)}"
                if index < len(labels):
                    text += f":{labels[index]}"
                classes[row, column] = text.encode()
        answered[name], types[name] = classes, "BYTES"
    return answered, types
