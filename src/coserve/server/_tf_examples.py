"""``tf.Example``s for Classify and Regress: built from REST JSON, or taken from a gRPC ``Input``.

TensorFlow Serving's rules (``util/json_tensor.cc``), kept here with its messages: a feature's
value is one value or a list of them; an integer (or true/false) is an int64, a number written
with a point or an exponent a float, a string or ``{"b64": "..."}`` bytes; the first value fixes
the list's kind. With a ``context``, each example is run as the context's serialized bytes
followed by its own, which parse as one ``Example`` with the two feature maps merged (the
example's own features win a clash), as TF Serving feeds them.
"""

from __future__ import annotations

import base64
import math
from typing import Any

from coserve._exceptions import InvalidInput
from coserve.server._v2_codec import load_json_object

__all__ = ["decode_examples", "serialized_examples"]

_INT64 = (-(2**63), 2**63 - 1)
_FLOAT32_MAX = 3.4028234663852886e38


def decode_examples(body: bytes, method: str) -> tuple[str, list[bytes]]:
    """A ``:classify`` or ``:regress`` body as its signature name and serialized examples.

    Raises:
        InvalidInput: Not JSON, or not examples TensorFlow Serving would take.
    """
    from coserve.server._protos import Example

    parsed = load_json_object(body)
    signature = parsed.get("signature_name", "")
    if not isinstance(signature, str):
        raise InvalidInput("'signature_name' key must be a string value.")
    if "examples" not in parsed:
        raise InvalidInput(f"When method is {method}, key 'examples' is expected and was not found")
    rows = parsed["examples"]
    if not isinstance(rows, list):
        raise InvalidInput("Expecting 'examples' value to be an list/array")
    if not rows:
        raise InvalidInput("'examples' value is an empty array")
    prefix = b""
    if "context" in parsed:
        prefix = _example(Example, parsed["context"]).SerializeToString()
    return signature, [prefix + _example(Example, row).SerializeToString() for row in rows]


def serialized_examples(request_input: Any) -> list[bytes]:
    """A gRPC ``Input``'s examples, serialized (with their context's bytes before each).

    Raises:
        InvalidInput: The input holds no examples.
    """
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in request_input.example_list.examples]
    elif kind == "example_list_with_context":
        listed = request_input.example_list_with_context
        prefix = listed.context.SerializeToString()
        examples = [prefix + e.SerializeToString() for e in listed.examples]
    else:
        examples = []
    if not examples:
        raise InvalidInput("Input is empty.")
    return examples


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    return "String" if isinstance(value, str) else "Number"


def _example(example_class: Any, row: Any) -> Any:
    if not isinstance(row, dict):
        raise InvalidInput(f"Example must be JSON object but got JSON {_json_type(row)}")
    example = example_class()
    features = example.features.feature
    for name, value in row.items():
        feature = features[name]
        values = value if isinstance(value, list) else [value]
        kind: str | None = None
        for element in values:
            element_kind, converted = _element(name, element)
            if kind is None:
                kind = element_kind
            elif element_kind != kind:
                raise InvalidInput(
                    f"Unexpected element type in feature: {name} expecting type: {kind}"
                )
            if kind == "bytes":
                feature.bytes_list.value.append(converted)
            elif kind == "float":
                feature.float_list.value.append(converted)
            else:
                feature.int64_list.value.append(converted)
    return example


def _element(name: str, element: Any) -> tuple[str, Any]:
    """One feature value's kind (``int64``, ``float``, ``bytes``) and the value to store."""
    if isinstance(element, bool):
        return "int64", int(element)
    if isinstance(element, int):
        if not _INT64[0] <= element <= _INT64[1]:
            if element > 0 and element < 2**64:
                raise InvalidInput(f"Feature: {name} has uint64 element. Only int64 is supported.")
            return "float", _float(element)
        return "int64", element
    if isinstance(element, float):
        return "float", _float(element)
    if isinstance(element, str):
        return "bytes", element.encode()
    if isinstance(element, dict) and len(element) == 1 and isinstance(element.get("b64"), str):
        try:
            return "bytes", base64.b64decode(element["b64"], validate=True)
        except ValueError:
            raise InvalidInput("Unable to base64 decode") from None
    raise InvalidInput(
        f"Feature: {name} has element with unexpected JSON type: {_json_type(element)}"
    )


def _float(value: float) -> float:
    if math.isfinite(value) and abs(value) > _FLOAT32_MAX:
        raise InvalidInput(
            f"Cannot convert JSON value: {value} to float without loss of precision."
        )
    return float(value)
