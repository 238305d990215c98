"""The protobuf text-format reader: syntax, schemas, errors, and agreement with protobuf itself.

The official protos (tritonclient's model_config_pb2, tensorflow-serving-api's
model_server_config_pb2) are the oracle: real and hand-written files must decode to what
``google.protobuf.text_format`` plus ``json_format.MessageToDict`` make of them, our schemas must
match the descriptors field by field, and under random mutation we must never crash and never
refuse what protobuf accepts, except where we are stricter on purpose (listed in STRICTER).

Running this file (``.venv/bin/python tests/test_textproto.py``) prints the generated parts of
``coserve/models/_textproto_schemas.py`` from the installed descriptors.
"""

from __future__ import annotations

import base64
import math
import random
import re
import struct
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coserve import ConfigError
from coserve.models._textproto import (
    MAX_DEPTH,
    Decoded,
    EnumSchema,
    FieldSchema,
    Message,
    MessageSchema,
    Position,
    Scalar,
    decode,
    enum_field,
    load,
    map_field,
    message_field,
    parse,
    scalar_field,
)
from coserve.models._textproto_schemas import (
    TFS_BATCHING_PARAMETERS,
    TFS_MODEL_SERVER_CONFIG,
    TRITON_MODEL_CONFIG,
)

DATA = Path(__file__).parent / "data" / "textproto"
TRITON_FILES = sorted((DATA / "triton").glob("*.pbtxt")) + sorted(
    (DATA / "ours").glob("triton_*.pbtxt")
)
TFS_FILES = sorted((DATA / "ours").glob("tfs_*.config"))
PATH = "models/m/config.pbtxt"


def read(text: str, schema: MessageSchema = TRITON_MODEL_CONFIG) -> Decoded:
    return decode(parse(text, PATH), schema, PATH)


def error_of(text: str, schema: MessageSchema = TRITON_MODEL_CONFIG) -> str:
    with pytest.raises(ConfigError) as caught:
        read(text, schema)
    return str(caught.value)


# -- the protobuf oracle -------------------------------------------------------------------------


def triton_descriptor() -> Any:
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    return model_config_pb2.ModelConfig.DESCRIPTOR


def tfs_descriptor() -> Any:
    model_server_config_pb2 = pytest.importorskip(
        "tensorflow_serving.config.model_server_config_pb2"
    )
    return model_server_config_pb2.ModelServerConfig.DESCRIPTOR


def protobuf_reading(text: str, descriptor: Any) -> tuple[bool, dict[str, Any] | None]:
    r"""Whether protobuf accepts ``text``, and what it makes of it as MessageToDict has it.

    The dict is None where MessageToDict cannot render an accepted message: a
    ``google.protobuf.Any`` whose ``type_url`` names no known type. Warnings are errors here, as
    in the whole suite: protobuf's Python unescaping keeps an unknown escape such as ``\q`` with
    a DeprecationWarning, which so counts as a refusal (C++ refuses it too).
    """
    from google.protobuf import json_format, message_factory, text_format

    message = message_factory.GetMessageClass(descriptor)()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            text_format.Parse(text, message)
        except Exception:  # ParseError, and the ValueErrors its helpers let through
            return False, None
        try:
            result: dict[str, Any] = json_format.MessageToDict(
                message, preserving_proto_field_name=True
            )
        except Exception:  # an Any it cannot unpack
            return True, None
    return True, result


def as_message_to_dict(decoded: Mapping[Any, Any], descriptor: Any) -> dict[str, Any]:
    """Our decoded message in MessageToDict's form, checking every Python type on the way.

    MessageToDict writes 64-bit integers as strings, floats at float32 precision (the shortest
    spelling that round-trips), inf and nan as strings, bytes as base64, map keys as strings, and
    leaves out scalars at their default unless the field tracks presence (oneof members, proto3
    ``optional``); we return what the text says, so the conversion happens here.
    """
    out: dict[str, Any] = {}
    for name, value in decoded.items():
        field = descriptor.fields_by_name[name]
        if is_map(field):
            assert isinstance(value, Decoded)
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            out[name] = {
                json_key(key, key_field): json_value(item, value_field)
                for key, item in value.items()
            }
        elif field.is_repeated:
            assert isinstance(value, list)
            assert value, "an empty list is never decoded"
            out[name] = [json_value(item, field) for item in value]
        elif field.has_presence or not is_default(value, field):
            out[name] = json_value(value, field)
    return out


def is_map(field: Any) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def json_key(key: Any, field: Any) -> str:
    if field.type == field.TYPE_BOOL:
        assert isinstance(key, bool)
        return "true" if key else "false"
    assert isinstance(key, str if field.type == field.TYPE_STRING else int)
    return str(key)


def json_value(value: Any, field: Any) -> Any:
    if field.message_type is not None:
        assert isinstance(value, Decoded)
        return as_message_to_dict(value, field.message_type)
    if field.enum_type is not None:
        assert value in field.enum_type.values_by_name
        return value
    if field.type == field.TYPE_BOOL:
        assert isinstance(value, bool)
        return value
    if field.type == field.TYPE_STRING:
        assert isinstance(value, str)
        return value
    if field.type == field.TYPE_BYTES:
        assert isinstance(value, bytes)
        return base64.b64encode(value).decode()
    if field.type in (field.TYPE_FLOAT, field.TYPE_DOUBLE):
        assert isinstance(value, float)
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        if field.type == field.TYPE_FLOAT:
            from google.protobuf.internal import type_checkers

            return type_checkers.ToShortestFloat(float32(value))
        return value
    assert isinstance(value, int)
    assert not isinstance(value, bool)
    wide = field.cpp_type in (field.CPPTYPE_INT64, field.CPPTYPE_UINT64)
    return str(value) if wide else value


def float32(value: float) -> float:
    """``value`` as protobuf stores it in a float field (ours keep the double the text says)."""
    rounded: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return rounded


def is_default(value: Any, field: Any) -> bool:
    if field.message_type is not None:
        return False
    if field.enum_type is not None:
        return bool(field.enum_type.values_by_name[value].number == 0)
    if isinstance(value, float):
        if field.type == field.TYPE_FLOAT and not math.isinf(value):
            value = float32(value)  # 1e-50 is stored as 0.0, which is the default
        return value == 0.0 and math.copysign(1.0, value) > 0  # -0.0 is not the default
    return bool(value in (0, "", b"", False))


# -- the generator of _textproto_schemas.py and the field-by-field cross-check --------------------

_KINDS = {  # FieldDescriptor.TYPE_* -> our kind; fixed/sfixed/sint read as the plain integers
    1: "double",
    2: "float",
    3: "int64",
    4: "uint64",
    5: "int32",
    6: "uint64",
    7: "uint32",
    8: "bool",
    9: "string",
    12: "bytes",
    13: "uint32",
    15: "int32",
    16: "int64",
    17: "int32",
    18: "int64",
}


def real_oneof(field: Any) -> str | None:
    """The field's oneof, except the synthetic one protobuf makes for a proto3 ``optional``."""
    oneof = field.containing_oneof
    if oneof is None or (len(oneof.fields) == 1 and oneof.name == "_" + field.name):
        return None
    return str(oneof.name)


def describe_descriptor(root: Any) -> dict[str, dict[str, tuple[Any, ...]]]:
    """Every message type reachable from ``root``: its fields' kind, repetition, oneof, type."""

    def detail(field: Any) -> Any:
        if field.enum_type is not None:
            enum = field.enum_type
            return ("enum", enum.full_name, tuple((v.name, v.number) for v in enum.values))
        if field.message_type is not None:
            return ("message", field.message_type.full_name)
        return (_KINDS[field.type],)

    described: dict[str, dict[str, tuple[Any, ...]]] = {}
    todo = [root]
    while todo:
        message = todo.pop()
        if message.full_name in described:
            continue
        fields: dict[str, tuple[Any, ...]] = {}
        for field in message.fields:
            if is_map(field):
                key, value = (field.message_type.fields_by_name[n] for n in ("key", "value"))
                fields[field.name] = ("map", _KINDS[key.type], detail(value), field.number)
                if value.message_type is not None:
                    todo.append(value.message_type)
                continue
            fields[field.name] = (
                detail(field),
                field.is_repeated,
                real_oneof(field),
                field.number,
            )
            if field.message_type is not None:
                todo.append(field.message_type)
        described[message.full_name] = fields
    return described


def describe_schema(root: MessageSchema) -> dict[str, dict[str, tuple[Any, ...]]]:
    """The same description, of one of our schemas."""

    def detail(spec: FieldSchema) -> Any:
        if spec.enum is not None:
            return ("enum", spec.enum.name, tuple(spec.enum.values.items()))
        if spec.message is not None:
            return ("message", spec.message.name)
        return (spec.kind,)

    described: dict[str, dict[str, tuple[Any, ...]]] = {}
    todo = [root]
    while todo:
        message = todo.pop()
        if message.name in described:
            continue
        fields: dict[str, tuple[Any, ...]] = {}
        for spec in message.fields.values():
            if spec.kind == "map":
                assert spec.message is not None
                key, value = spec.message.fields["key"], spec.message.fields["value"]
                fields[spec.name] = ("map", key.kind, detail(value), spec.number)
                if value.message is not None:
                    todo.append(value.message)
                continue
            fields[spec.name] = (detail(spec), spec.repeated, spec.oneof, spec.number)
            if spec.message is not None:
                todo.append(spec.message)
        described[message.name] = fields
    return described


def variable_name(full_name: str, taken: dict[str, str]) -> str:
    """``inference.ModelSequenceBatching.Control`` -> ``_MODEL_SEQUENCE_BATCHING_CONTROL``."""
    package, _, rest = full_name.partition(".")
    prefix = {"inference": "_", "tensorflow": "_TFS_", "google": "_PB_"}[package]
    if package != "inference":
        rest = rest.partition(".")[2]  # tensorflow.serving.X, google.protobuf.X
    parts = [re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", part).upper() for part in rest.split(".")]
    for size in range(2, len(parts) + 2):  # the last two parts, unless that name is taken
        name = prefix + "_".join(parts[-size:])
        if taken.setdefault(name, full_name) == full_name:
            return name
    raise AssertionError(full_name)


def render_schemas(public_name: str, root: Any) -> str:
    """Python source for ``root``'s schema: enums, then message types, each after what it uses."""
    taken: dict[str, str] = {}
    enums: dict[str, Any] = {}
    order: list[Any] = []
    placed: set[str] = set()

    def visit(message: Any) -> None:
        placed.add(message.full_name)
        for field in message.fields:
            for inner in field.message_type.fields if is_map(field) else [field]:
                if inner.enum_type is not None:
                    enums.setdefault(inner.enum_type.full_name, inner.enum_type)
                if inner.message_type is not None and inner.message_type.full_name not in placed:
                    visit(inner.message_type)  # depth is the protos', a handful of levels
        order.append(message)

    visit(root)
    names = {root.full_name: public_name}

    def ref(message: Any) -> str:
        return names.get(message.full_name) or variable_name(message.full_name, taken)

    def value_type(field: Any) -> str:
        if field.enum_type is not None:
            return variable_name(field.enum_type.full_name, taken)
        if field.message_type is not None:
            return ref(field.message_type)
        return repr(_KINDS[field.type])

    chunks = []
    for enum in enums.values():
        values = ", ".join(f"{value.name!r}: {value.number}" for value in enum.values)
        name = variable_name(enum.full_name, taken)
        chunks.append(f"{name} = EnumSchema({enum.full_name!r}, {{{values}}})\n")
    for message in order:
        lines = []
        for field in message.fields:
            options = ", repeated=True" if field.is_repeated else ""
            oneof = real_oneof(field)
            options += f", oneof={oneof!r}" if oneof else ""
            options += f", number={field.number}"
            if is_map(field):
                key, value = (field.message_type.fields_by_name[n] for n in ("key", "value"))
                lines.append(
                    f"map_field({field.name!r}, {_KINDS[key.type]!r}, {value_type(value)}, "
                    f"number={field.number})"
                )
            elif field.message_type is not None:
                lines.append(f"message_field({field.name!r}, {ref(field.message_type)}{options})")
            elif field.enum_type is not None:
                lines.append(f"enum_field({field.name!r}, {value_type(field)}{options})")
            else:
                lines.append(f"scalar_field({field.name!r}, {_KINDS[field.type]!r}{options})")
        body = "".join(f"    {line},\n" for line in lines)
        chunks.append(f"{ref(message)} = MessageSchema(\n    {message.full_name!r},\n{body})\n")
    return "\n".join(chunks).replace("'", '"')


class TestSchemasMatchTheProtos:
    def test_triton_model_config(self) -> None:
        """Every message type, field, kind, repetition, oneof and enum value of the proto."""
        expected = describe_descriptor(triton_descriptor())
        assert describe_schema(TRITON_MODEL_CONFIG) == expected
        assert len(expected) > 40  # the walk really went deep

    def test_tf_serving_model_server_config(self) -> None:
        """The same for ModelServerConfig, down to google.protobuf.Any."""
        expected = describe_descriptor(tfs_descriptor())
        assert describe_schema(TFS_MODEL_SERVER_CONFIG) == expected
        assert "google.protobuf.Any" in expected

    def test_batching_parameters(self) -> None:
        """Written by hand from session_bundle_config.proto (not in the pip package).

        Its field numbers are not given (0): only the text format is read.
        """
        described = describe_schema(TFS_BATCHING_PARAMETERS)
        int64_value = ("message", "google.protobuf.Int64Value")
        assert described["tensorflow.serving.BatchingParameters"] == {
            "max_batch_size": (int64_value, False, None, 0),
            "batch_timeout_micros": (int64_value, False, None, 0),
            "max_enqueued_batches": (int64_value, False, None, 0),
            "num_batch_threads": (int64_value, False, None, 0),
            "thread_pool_name": (("message", "google.protobuf.StringValue"), False, None, 0),
            "allowed_batch_sizes": (("int64",), True, None, 0),
            "pad_variable_length_inputs": (("bool",), False, None, 0),
            "enable_large_batch_splitting": (
                ("message", "google.protobuf.BoolValue"),
                False,
                None,
                0,
            ),
            "max_execution_batch_size": (int64_value, False, None, 0),
        }
        assert described["google.protobuf.Int64Value"] == {"value": (("int64",), False, None, 0)}

    def test_the_generator_reproduces_the_committed_schemas(self) -> None:
        """Regenerating from the installed protos would change nothing."""
        from coserve.models import _textproto

        for public, descriptor, committed in [
            ("TRITON_MODEL_CONFIG", triton_descriptor(), TRITON_MODEL_CONFIG),
            ("TFS_MODEL_SERVER_CONFIG", tfs_descriptor(), TFS_MODEL_SERVER_CONFIG),
        ]:
            namespace: dict[str, Any] = vars(_textproto).copy()
            exec(render_schemas(public, descriptor), namespace)
            assert describe_schema(namespace[public]) == describe_schema(committed)


# -- agreement with protobuf on whole files --------------------------------------------------------


@pytest.mark.parametrize("path", TRITON_FILES, ids=lambda path: path.name)
def test_triton_files_decode_as_protobuf_reads_them(path: Path) -> None:
    """The real Triton configs and ours: the same values as protobuf, field for field."""
    text = path.read_text()
    descriptor = triton_descriptor()
    accepted, expected = protobuf_reading(text, descriptor)
    assert accepted
    assert expected is not None
    assert as_message_to_dict(read(text), descriptor) == expected


@pytest.mark.parametrize("path", TFS_FILES, ids=lambda path: path.name)
def test_tf_serving_files_decode_as_protobuf_reads_them(path: Path) -> None:
    """ModelServerConfig files: the same values as protobuf."""
    text = path.read_text()
    descriptor = tfs_descriptor()
    accepted, expected = protobuf_reading(text, descriptor)
    assert accepted
    assert expected is not None
    assert as_message_to_dict(read(text, TFS_MODEL_SERVER_CONFIG), descriptor) == expected


def test_the_test_files_use_every_triton_field() -> None:
    """Together the files set every field of every Triton message type at least once."""
    used: set[tuple[str, str]] = set()

    def walk(decoded: Mapping[Any, Any], schema: MessageSchema) -> None:
        for name, value in decoded.items():
            spec = schema.fields[name]
            used.add((schema.name, name))
            if spec.kind == "map":
                assert spec.message is not None
                value_spec = spec.message.fields["value"]
                if value_spec.message is not None:
                    for item in value.values():
                        walk(item, value_spec.message)
            elif spec.message is not None:
                for item in value if spec.repeated else [value]:
                    walk(item, spec.message)

    for path in TRITON_FILES:
        walk(read(path.read_text()), TRITON_MODEL_CONFIG)
    every = {
        (message, name)
        for message, fields in describe_schema(TRITON_MODEL_CONFIG).items()
        for name in fields
    }
    assert every - used == set()


# -- syntax ----------------------------------------------------------------------------------------


class TestSyntax:
    def test_tree_keeps_order_kinds_and_positions(self) -> None:
        tree = parse('name: "m"\n# a comment\nmax_batch_size: 8\ninput { dims: [1, 2] }', PATH)
        assert [field.name for field in tree.fields] == ["name", "max_batch_size", "input"]
        assert tree.fields[0].value == Scalar("string", "m", '"m"', 1, 7)
        assert (tree.fields[1].line, tree.fields[1].column) == (3, 1)
        inner = tree.fields[2].value
        assert isinstance(inner, Message)
        assert (inner.line, inner.column) == (4, 7)
        dims = inner.fields
        assert [(f.name, f.value, f.in_list, f.column) for f in dims] == [
            ("dims", Scalar("number", 1, "1", 4, 16), True, 16),
            ("dims", Scalar("number", 2, "2", 4, 19), True, 19),
        ]

    @pytest.mark.parametrize(
        "text",
        [
            'input { name: "a" }',
            'input: { name: "a" }',
            'input < name: "a" >',
            'input: < name: "a" >',
            'input [ { name: "a" } ]',
            'input: [ { name: "a" } ]',
            'input [ < name: "a" > ];',
            'input { name: "a"; },',
            "input { name: 'a' }",
            'input { name: "" "a" }',
            "input {\n  name:\n  'a'  # trailing comment\n}\n",
        ],
    )
    def test_message_and_separator_forms(self, text: str) -> None:
        assert read(text) == {"input": [{"name": "a"}]}

    @pytest.mark.parametrize(
        ("literal", "value"),
        [
            (r'"plain"', "plain"),
            (r"'single \"double\" inside'", 'single "double" inside'),
            (r'"a" "b" ' + "'c'", "abc"),
            (r'"\n\t\r\\\'\"\a\b\f\v\?"', "\n\t\r\\'\"\a\b\f\v?"),
            (r'"\101\60\0"', "A0\0"),
            (r'"\x41\x4a\x4"', "AJ\x04"),
            (r'"\x414"', "A4"),  # at most two hex digits
            (r'"\u00e9\U0001F600"', "é😀"),
            (r'"\303\251"', "é"),  # escapes make bytes, which are then UTF-8
            ('"é ☃"', "é ☃"),
            (r'"#not a comment"', "#not a comment"),
        ],
    )
    def test_strings(self, literal: str, value: str) -> None:
        assert read(f"name: {literal}") == {"name": value}

    def test_bytes_keep_what_is_not_utf8(self) -> None:
        decoded = read(r'custom_model_config { value: "\377\000a" }', TFS_MODEL_SERVER_CONFIG)
        assert decoded == {"custom_model_config": {"value": b"\xff\x00a"}}

    @pytest.mark.parametrize(
        ("literal", "value"),
        [
            ("16", 16),
            ("-16", -16),
            ("0", 0),
            ("-0", 0),
            ("0x1F", 31),
            ("0X1f", 31),
            ("-0x10", -16),
            ("017", 15),
            ("2147483647", 2**31 - 1),
        ],
    )
    def test_integers(self, literal: str, value: int) -> None:
        decoded = read(f"max_batch_size: {literal}")
        assert decoded == {"max_batch_size": value}
        assert type(decoded["max_batch_size"]) is int

    @pytest.mark.parametrize(
        ("literal", "value"),
        [
            ("1.5", 1.5),
            (".5", 0.5),
            ("-.5", -0.5),
            ("1.", 1.0),
            ("1e-3", 0.001),
            ("1E+3", 1000.0),
            ("1.5f", 1.5),
            ("2F", 2.0),
            ("3", 3.0),
            ("inf", math.inf),
            ("-inf", -math.inf),
            ("Infinity", math.inf),
            ("-INFF", -math.inf),
            ("1e39", math.inf),  # past float32, as protobuf has it
        ],
    )
    def test_floats(self, literal: str, value: float) -> None:
        decoded = read(f"sequence_batching {{ direct {{ minimum_slot_utilization: {literal} }} }}")
        number = decoded["sequence_batching"]["direct"]["minimum_slot_utilization"]
        assert number == value
        assert type(number) is float

    @pytest.mark.parametrize("literal", ["nan", "NaN", "nanf", "-nan"])
    def test_nan(self, literal: str) -> None:
        decoded = read(
            f"model_metrics {{ metric_control {{ histogram_options {{ buckets: {literal} }} }} }}"
        )
        assert math.isnan(
            decoded["model_metrics"]["metric_control"][0]["histogram_options"]["buckets"][0]
        )

    @pytest.mark.parametrize(
        ("literal", "value"),
        [
            *[("true", True), ("True", True), ("t", True), ("1", True)],
            *[("false", False), ("False", False), ("f", False), ("0", False)],
        ],
    )
    def test_booleans(self, literal: str, value: bool) -> None:
        assert read(f"response_cache {{ enable: {literal} }}") == {
            "response_cache": {"enable": value}
        }

    def test_enums_by_name_or_number(self) -> None:
        decoded = read("input { data_type: TYPE_FP32 format: 2 }")
        assert decoded == {"input": [{"data_type": "TYPE_FP32", "format": "FORMAT_NCHW"}]}

    def test_deep_nesting_is_bounded(self) -> None:
        """64 levels parse (iteratively); the 65th is an error, never a RecursionError."""
        nested = MessageSchema("test.Nested")
        nested.define(message_field("child", nested), scalar_field("leaf", "int32"))
        ok = "child { " * MAX_DEPTH + "leaf: 1" + " }" * MAX_DEPTH
        decoded: Any = read(ok, nested)
        for _ in range(MAX_DEPTH):
            decoded = decoded["child"]
        assert decoded == {"leaf": 1}
        message = error_of("child { " * (MAX_DEPTH + 1) + " }" * (MAX_DEPTH + 1), nested)
        assert message.startswith(f"{PATH}:1:{8 * MAX_DEPTH + 7}: messages nest deeper than 64")
        huge = "a {" * 100_000
        assert "nest deeper" in error_of(huge, nested)


# -- decoding ----------------------------------------------------------------------------------


class TestDecode:
    def test_values_are_plain_python(self) -> None:
        decoded = read(
            'name: "m" max_batch_size: 8 input [{ name: "x" dims: [-1, 3] }]\n'
            "dynamic_batching { max_queue_delay_microseconds: 100 preserve_ordering: true }\n"
            'parameters { key: "k" value { string_value: "v" } }\n'
        )
        assert decoded == {
            "name": "m",
            "max_batch_size": 8,
            "input": [{"name": "x", "dims": [-1, 3]}],
            "dynamic_batching": {"max_queue_delay_microseconds": 100, "preserve_ordering": True},
            "parameters": {"k": {"string_value": "v"}},
        }
        assert type(decoded["dynamic_batching"]["max_queue_delay_microseconds"]) is int

    def test_maps(self) -> None:
        """Keys keep their type; a missing key or value is the default; a later key wins."""
        decoded = read(
            "dynamic_batching {\n"
            "  priority_queue_policy { key: 1 value { max_queue_size: 2 } }\n"
            "  priority_queue_policy [ { key: 2 }, { value { max_queue_size: 3 } } ]\n"
            "  priority_queue_policy { key: 1 value { max_queue_size: 4 } }\n"
            "}\n"
        )
        policies = decoded["dynamic_batching"]["priority_queue_policy"]
        assert policies == {1: {"max_queue_size": 4}, 2: {}, 0: {"max_queue_size": 3}}
        assert policies.positions == {1: Position(4, 3), 2: Position(3, 27), 0: Position(3, 39)}

    def test_wrappers_decode_as_messages(self) -> None:
        decoded = load(DATA / "ours" / "tfs_batching.txt", TFS_BATCHING_PARAMETERS)
        assert decoded == {
            "max_batch_size": {"value": 32},
            "batch_timeout_micros": {"value": 1000},
            "max_enqueued_batches": {"value": 100},
            "num_batch_threads": {"value": 4},
            "thread_pool_name": {"value": "batch_threads"},
            "allowed_batch_sizes": [8, 16, 32],
            "pad_variable_length_inputs": True,
            "enable_large_batch_splitting": {"value": True},
            "max_execution_batch_size": {"value": 16},
        }
        assert decoded.where("allowed_batch_sizes") == f"{DATA / 'ours' / 'tfs_batching.txt'}:7:1"

    def test_positions_say_where_each_field_was_written(self) -> None:
        decoded = read(
            'name: "m"\n\ninput {\n  name: "x"\n}\ninput { name: "y"\n  dims: 1 }\n'
            'parameters { key: "a" value {} }\nparameters { key: "b" value {} }\n'
        )
        assert decoded.positions["name"] == Position(1, 1)
        assert decoded.positions["input"] == Position(3, 1)  # the first occurrence
        assert decoded["input"][1].positions == {"name": Position(6, 9), "dims": Position(7, 3)}
        assert decoded["parameters"].where("b") == f"{PATH}:9:1"
        assert decoded.path == PATH

    def test_only_what_is_written_is_present(self) -> None:
        decoded = read("max_batch_size: 0 input {}")
        assert decoded == {"max_batch_size": 0, "input": [{}]}

    def test_load_reports_unreadable_and_non_utf8_files(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="cannot read the file"):
            load(tmp_path / "missing.pbtxt", TRITON_MODEL_CONFIG)
        path = tmp_path / "config.pbtxt"
        path.write_bytes(b'name: "m"\nplatform: "\xff"\n')
        with pytest.raises(
            ConfigError, match=re.escape(f"{path}:2:12: the file is not valid UTF-8")
        ):
            load(path, TRITON_MODEL_CONFIG)

    def test_enum_schema_defaults(self) -> None:
        enum = EnumSchema("test.E", {"B": 1, "A": 0, "ALIAS": 1})
        assert enum.default == "A"
        assert enum.name_of(1) == "B"
        assert enum.name_of(7) is None

    def test_map_with_enum_values_and_bool_keys(self) -> None:
        color = EnumSchema("test.Color", {"RED": 0, "BLUE": 1})
        schema = MessageSchema(
            "test.M", map_field("colors", "bool", color), enum_field("one", color)
        )
        assert read("colors { key: true value: BLUE } colors { key: f }", schema) == {
            "colors": {True: "BLUE", False: "RED"}
        }

    def test_schema_definition_mistakes_are_caught(self) -> None:
        with pytest.raises(ValueError, match="not a scalar kind"):
            scalar_field("x", "int8")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="cannot be a map key"):
            map_field("x", "float", "string")
        schema = MessageSchema("test.M", scalar_field("x", "int32"))
        with pytest.raises(RuntimeError, match="already defined"):
            schema.define()
        with pytest.raises(RuntimeError, match="names a field twice"):
            MessageSchema("test.N", scalar_field("x", "int32"), scalar_field("x", "string"))


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        # syntax
        ('name: "m"\nmax_batch_size 8', "2:16", "expected ':' or '{' after field name"),
        ('name: "unterminated\n', "1:7", "is not terminated"),
        ('name: "abc\\"', "1:7", "is not terminated"),
        ('name: "\\q"', "1:8", "invalid escape '\\\\q'"),
        ('name: "\\x"', "1:8", "invalid escape '\\\\x'"),
        ('name: "\\777"', "1:8", "octal escape \\777 is over \\377"),
        ('name: "\\ud800"', "1:8", "is not a Unicode character"),
        ("input {\n  dims: [1, 2\n}", "3:1", "expected ',' or ']' in the list of 'dims'"),
        ('input {\n  name: "x"\n', "3:1", "the file ends inside 'input' (opened at line 1"),
        ("input { name: 'x' >", "1:19", "unexpected '>'"),
        ("}", "1:1", "unexpected '}': expected a field name"),
        ("max_batch_size: 1x", "1:17", "invalid number '1x'"),
        ("max_batch_size: +1", "1:17", "invalid number '+1'"),
        ("max_batch_size: 1_000", "1:17", "invalid number '1_000'"),
        ("max_batch_size: 08", "1:17", "invalid number '08'"),
        ("max_batch_size: " + "9" * 200, "1:17", "invalid number"),
        ("max_batch_size: ,", "1:17", "expected a value for field 'max_batch_size', got ','"),
        ("dims [1]", "1:7", "expected ':' between field name 'dims' and its values"),
        ("dims: [1,]", "1:10", "expected a value for field 'dims'"),
        ("[ext.field]: 1", "1:1", "extension and Any type URL fields ([...]) are not supported"),
        (
            "custom_model_config { [type.googleapis.com/a.B] { } }",
            "1:23",
            "extension and Any type URL fields ([...]) are not supported",
        ),
        ("1: 5", "1:1", "expected a field name, got '1'"),
        ("na-me: 5", "1:1", "expected a field name, got 'na-me'"),
        ("\x00", "1:1", "expected a field name, got '\\x00'"),
        ("\ufeffname: 'x'", "1:1", "expected a field name, got '\\ufeff'"),
        # schema
        ('nmae: "m"', "1:1", "unknown field 'nmae' in inference.ModelConfig; did you mean 'name'?"),
        ("zzz: 1", "1:1", "unknown field 'zzz' in inference.ModelConfig; known fields: name, "),
        ("parameters { key: 'a' vlaue {} }", "1:23", "in entry of map 'parameters'; did you mean"),
        ("max_batch_size: 'eight'", "1:17", "takes an integer (int32), got \"'eight'\""),
        ("max_batch_size: 1.0", "1:17", "takes an integer (int32), got '1.0'"),
        ("max_batch_size: 2147483648", "1:17", "out of range for int32 (-2147483648 to"),
        ("dynamic_batching { priority_levels: -1 }", "1:37", "out of range for uint64"),
        ("name: m", "1:7", "field 'name' takes a quoted string, got 'm'"),
        ("name: 5", "1:7", "field 'name' takes a quoted string, got '5'"),
        ('name: "\\377"', "1:7", "field 'name': the string is not valid UTF-8"),
        ("response_cache { enable: yes }", "1:26", "takes true or false, got 'yes'"),
        ("response_cache { enable: 2 }", "1:26", "takes true or false, got '2'"),
        (
            "sequence_batching { direct { minimum_slot_utilization: 0x1 } }",
            "1:56",
            "takes a number (float), got '0x1'",
        ),
        (
            "sequence_batching { direct { minimum_slot_utilization: 017 } }",
            "1:56",
            "takes a number (float), got '017'",
        ),
        (
            "input { data_type: TYPE_FP33 }",
            "1:20",
            "'TYPE_FP33' is not a value of enum inference.DataType; did you mean 'TYPE_FP32'? "
            "allowed: TYPE_INVALID, TYPE_BOOL,",
        ),
        ("input { data_type: 99 }", "1:20", "99 is not a value of enum inference.DataType"),
        ("input { data_type: 'TYPE_FP32' }", "1:20", "takes a value of enum inference.DataType"),
        ('name: "a"\nname: "b"', "2:1", "field 'name' of inference.ModelConfig is given twice"),
        ("version_policy { all {} all {} }", "1:25", "field 'all' of inference.ModelVersionPolicy"),
        (
            "max_batch_size: [8]",
            "1:18",
            "field 'max_batch_size' of inference.ModelConfig is not re",
        ),
        ("max_batch_size: []", "1:1", "field 'max_batch_size' of inference.ModelConfig is not re"),
        ("nmae: []", "1:1", "unknown field 'nmae' in inference.ModelConfig; did you mean 'name'?"),
        ("input { dims [] }", "1:9", "expected ':' after field name 'dims'"),
        (
            "version_policy { latest {} all {} }",
            "1:28",
            "field 'all' and field 'latest' (line 1) are both in oneof 'policy_choice'",
        ),
        ("input: 5", "1:8", "field 'input' is a message (inference.ModelInput): write 'input {"),
        ("parameters: 5", "1:13", "field 'parameters' is a map: write 'parameters { key: ..."),
        ("name { }", "1:6", "field 'name' takes a quoted string, not a message"),
        (
            "input { format { } }",
            "1:16",
            "takes a value of enum inference.ModelInput.Format, not a",
        ),
    ],
)
def test_errors_name_the_file_line_and_problem(text: str, where: str, problem: str) -> None:
    message = error_of(text)
    assert message.startswith(f"{PATH}:{where}: "), message
    assert problem in message, message


def test_a_model_server_config_error() -> None:
    message = error_of(
        "model_config_list {\n  config { name: 'a' model_type: KERAS }\n}",
        TFS_MODEL_SERVER_CONFIG,
    )
    assert message.startswith(f"{PATH}:2:34: field 'model_type': 'KERAS' is not a value of enum")


# -- agreement with protobuf, spelling by spelling ----------------------------------------------

VALUE_SITES = {  # a field of each kind, "{}" where the value goes
    "int32": "max_batch_size: {}",
    "int64": "input {{ dims: {} }}",
    "uint32": "model_warmup {{ batch_size: {} }}",
    "uint64": "dynamic_batching {{ max_queue_delay_microseconds: {} }}",
    "float": "sequence_batching {{ direct {{ minimum_slot_utilization: {} }} }}",
    "double": "model_metrics {{ metric_control {{ histogram_options {{ buckets: {} }} }} }}",
    "bool": "response_cache {{ enable: {} }}",
    "enum": "input {{ data_type: {} }}",
    "string": "name: {}",
}


def words(text: str) -> list[str]:
    return text.split()


VALUES = [
    *words("0 -0 1 01 07 08 00 017 0x1F -0x1F 0X1f 0x +1 1_0 0b1 0o7 - --1 1e5f 0.0.1"),
    *words("1.5 1. .5 -.5 0.5 00.5 0e1 1e3 1E+3 1e 1.5f 1.5F 1.5ff 5f 1e39 -1e39 1e-50 1e400"),
    *words("3.4028235e38 3.40282357e38 inf -inf Infinity -Infinity INF inff nan -nan NaN nanf"),
    *words("infinity infinityf true false t f True False TRUE yes 2 -1 TYPE_FP32 11 99"),
    *words("4294967295 4294967296 2147483648 -2147483649 0x7fffffff -0x80000000 -0x80000001"),
    *words("9223372036854775808 18446744073709551615 18446744073709551616 [] [1] [1,2] {}"),
    *[r"'x'", r'"x"', r'"a" "b"', r"'\x41'", r"'\?'", r"'\q'", r"'\777'", r"'\377'"],
    *[r"'\u00e9'", r"'\ud800'", r"'\U0001F600'", r"'\U00110000'", r"'\x4'", r"'\xg'"],
    *[r"'\0'", r"'\000'", r"'\0000'", r'"\'"', r"'\"'", r"'\\'", r"'abc", r"'abc\'"],
]
SYNTAX_CORNERS = [
    *["input [ ]", "input: []", "input []", "input [{}]", "input: [{},]", "input {} ,"],
    *["input {};", "input {},;", 'name: "a",;', 'name: "a" ,', "input { } }", "input <}"],
    *["input { >", "dims: [1 2]", "input { dims: 1, 2 }", "[", "name:", "name", "dims: [ ]"],
    *['name: "a"\n"b"', "name: \"a\"'b'", 'name:"a"', "input{dims:[1,2]}", 'name: "x"#c'],
    *['max_batch_size:8name:"x"', "name: 'a\"b'", 'name:\u00a0"x"', 'name: "x"\r\n'],
    *['max_batch_size: 8\x0bname: "x"', 'max_batch_size: 8\x1cname: "x"', "input { dims [] }"],
    *['max_batch_size: 8\u2028name: "x"', 'name: "x\u2028y"', '# c\u2028name: "x"', ""],
    *['parameters { key: "a" }', "parameters { value { } }", "parameters { key: 1 }"],
    *['parameters { key: "a" key: "b" }', 'parameters { key: "" key: "b" }', "parameters []"],
    *['parameters: [{key: "a"}, {key: "a"}]', "dynamic_batching {} sequence_batching {}"],
    *["version_policy { latest {} latest {} }", "max_batch_size: 0 max_batch_size: 1"],
    *['name: "" name: "x"', 'name: "x" name: ""', "input [ {} {} ]", "input [ {}; {} ]"],
    *["input: < }", "input { reshape { } reshape { } }", "version_policy: { all: 1 }"],
    *["TYPE_FP32: 1", 'name: "a" ; ;', ",", ";", ":", "name\n:\n'a'", "#", "input {}}"],
    'model_warmup { inputs { key: "a" value { zero_data: false random_data: true } } }',
    'ensemble_scheduling { step { input_map { key: "a" value: "b" } input_map { key: "a" } } }',
    'optimization { cuda { graph_spec { input { key: "a" value { dim: 1 } } input { key: "a" } } } '
    "}",
]
# Refused by Python's protobuf, read by ours as C++ protobuf reads them (see the module docstring).
LENIENT = {"input { data_type: 01 }", "input { data_type: 07 }", r"name: '\?'"}


def test_spellings_agree_with_protobuf() -> None:
    """Every value spelling in every kind of field, and syntax corners, against protobuf."""
    texts = [site.format(value) for site in VALUE_SITES.values() for value in VALUES]
    outcomes = {text: check_against_protobuf(text, "triton") for text in [*texts, *SYNTAX_CORNERS]}
    assert {text for text, outcome in outcomes.items() if outcome == "lenient"} == LENIENT
    assert sum(outcome == "both" for outcome in outcomes.values()) > 200  # many are refused


# -- fuzzing -----------------------------------------------------------------------------------

# Where Python's protobuf accepts what we refuse, on purpose (see the _textproto docstring):
STRICTER = (
    "invalid number",  # Python's int()/float() take "+1", "1_0", "0b1", "0o7", "1.5ff"
    "is not a value of enum",  # proto3 enums are open: Python keeps an unknown number
    "is given twice",  # Python lets a scalar at its default be overwritten
)
FUZZ_PATH = "fuzz/config.pbtxt"
SEEDS = [(path.read_text(), "triton") for path in TRITON_FILES] + [
    (path.read_text(), "tfs") for path in TFS_FILES
]
SCHEMAS = {"triton": TRITON_MODEL_CONFIG, "tfs": TFS_MODEL_SERVER_CONFIG}
PIECES = st.sampled_from(
    [
        *"{}<>[]:;,\"'\\#-+.0123456789xefintTF_ \n\t",
        *["TYPE_FP32", "name", "dims", "key", "value", "inf", "true", "0x", "\\x", "\\u", "e-"],
    ]
)
MUTATION = st.tuples(
    st.sampled_from(["delete", "insert", "replace", "truncate"]),
    st.integers(0, 1 << 16),
    st.integers(1, 8),
    st.lists(PIECES, max_size=4).map("".join),
)


def mutate(text: str, mutations: list[tuple[str, int, int, str]]) -> str:
    for action, where, size, piece in mutations:
        at = where % (len(text) + 1)
        if action == "delete":
            text = text[:at] + text[at + size :]
        elif action == "insert":
            text = text[:at] + piece + text[at:]
        elif action == "replace":
            text = text[:at] + piece + text[at + len(piece) :]
        else:
            text = text[:at]
    return text


def check_against_protobuf(text: str, kind: str) -> str:
    """Ours either decodes or names the path and a line; never disagrees with protobuf's values.

    Returns how the two compare: "both" accept, "neither" does, we are "stricter" (for one of
    the reasons in STRICTER) or "lenient" (only for the spellings in LENIENT, as it turns out);
    "unchecked" where the protos are not installed, so that only the no-crash part runs.
    """
    try:
        ours: Decoded | None = decode(parse(text, FUZZ_PATH), SCHEMAS[kind], FUZZ_PATH)
        refusal = ""
    except ConfigError as error:
        ours, refusal = None, str(error)
        match = re.match(rf"{re.escape(FUZZ_PATH)}:(\d+):(\d+): \S", refusal)
        assert match, refusal
        assert 1 <= int(match[1]) <= text.count("\n") + 1, refusal
    try:
        descriptor = triton_descriptor() if kind == "triton" else tfs_descriptor()
    except pytest.skip.Exception:
        return "unchecked"
    accepted, expected = protobuf_reading(text, descriptor)
    if not accepted:
        # Protobuf refuses: so do we, except for the two spellings that C++ protobuf reads and
        # Python's does not (the escape \?, an octal enum number); either way, no crash.
        return "neither" if ours is None else "lenient"
    if ours is None:
        assert any(reason in refusal for reason in STRICTER), (refusal, text)
        return "stricter"
    if expected is not None:
        assert as_message_to_dict(ours, descriptor) == expected, text
    return "both"


FUZZ_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@FUZZ_SETTINGS
@given(seed=st.sampled_from(SEEDS), mutations=st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_configs_never_crash_and_agree_with_protobuf(
    seed: tuple[str, str], mutations: list[tuple[str, int, int, str]]
) -> None:
    text, kind = seed
    check_against_protobuf(mutate(text, mutations), kind)


@FUZZ_SETTINGS
@given(
    text=st.one_of(
        st.text(max_size=200),
        st.lists(PIECES, max_size=60).map("".join),
        st.binary(max_size=200).map(lambda data: data.decode("latin-1")),
    )
)
def test_random_text_never_crashes(text: str) -> None:
    check_against_protobuf(text, "triton")


SPELLINGS = {  # valid spellings per kind, so schema-driven texts are often accepted
    "int32": words("0 1 -1 8 0x10 017"),
    "int64": words("0 -1 16 0x10 9223372036854775807"),
    "uint32": words("0 3 0x10"),
    "uint64": words("0 3 18446744073709551615"),
    "float": words("0 0.5 -2.5e3 1.5f inf .5"),
    "double": words("0 0.5 -2.5e3 1e-300 -inf nan"),
    "bool": words("true false t f 1 0 True"),
    "string": ["'a'", '"b" "c"', r'"\x41\n"', '""'],
    "bytes": ["'a'", r'"\377"'],
}


def message_text(rng: random.Random, schema: MessageSchema, depth: int = 0) -> str:
    """A text for ``schema``: mostly valid values, sometimes any spelling at all.

    Plain ``random``, seeded by hypothesis, rather than nested strategies: those cost more time
    than the checks.
    """
    specs = list(schema.fields.values())
    if not specs or depth > 6:
        return ""
    fields = []
    chosen = rng.sample(specs, k=min(len(specs), rng.randint(0, 4)))
    oneofs: set[str] = set()
    for spec in list(chosen):
        if spec.oneof in oneofs and rng.random() < 0.9:  # mostly one member, as protobuf wants
            chosen.remove(spec)
        oneofs.add(spec.oneof or "")
    if chosen and rng.random() < 0.05:
        chosen.append(rng.choice(chosen))  # the same field again
    for spec in chosen:
        colon = ":" if spec.message is None else rng.choice([":", ""])
        if spec.repeated and rng.random() < 0.5:
            items = [field_value(rng, spec, depth) for _ in range(rng.randint(0, 3))]
            written = f"{spec.name}{colon} [{', '.join(items)}]"
        else:
            written = f"{spec.name}{colon} {field_value(rng, spec, depth)}"
        fields.append(written + rng.choice(["", "", ",", ";"]))
    return rng.choice([" ", "\n"]).join(fields)


def field_value(rng: random.Random, spec: FieldSchema, depth: int) -> str:
    if rng.random() < 0.1:
        return rng.choice(VALUES)
    if spec.message is not None:
        opening, closing = rng.choice([("{", "}"), ("<", ">")])
        return f"{opening} {message_text(rng, spec.message, depth + 1)} {closing}"
    if spec.enum is not None:
        return rng.choice([*spec.enum.values, "0"])
    return rng.choice(SPELLINGS[spec.kind])


@FUZZ_SETTINGS
@given(kind=st.sampled_from(["triton", "tfs"]), seed=st.integers(0, 2**32))
def test_schema_driven_texts_agree_with_protobuf(kind: str, seed: int) -> None:
    check_against_protobuf(message_text(random.Random(seed), SCHEMAS[kind]), kind)


if __name__ == "__main__":
    from tensorflow_serving.config import model_server_config_pb2  # type: ignore[import-untyped]
    from tritonclient.grpc import model_config_pb2  # type: ignore[import-untyped]

    print(render_schemas("TRITON_MODEL_CONFIG", model_config_pb2.ModelConfig.DESCRIPTOR))
    print(
        render_schemas(
            "TFS_MODEL_SERVER_CONFIG", model_server_config_pb2.ModelServerConfig.DESCRIPTOR
        )
    )
