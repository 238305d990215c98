r"""A dependency-free reader of protobuf text format: Triton's ``config.pbtxt``, TF Serving's files.

Two layers. :func:`parse` turns text into a schema-free tree (:class:`Message` of :class:`Field`
of :class:`Scalar` or :class:`Message`); :func:`decode` checks that tree against a
:class:`MessageSchema` (see ``_textproto_schemas``) and returns plain values in a :class:`Decoded`
dict, which also remembers where each field was written. :func:`load` does both for a file.
Every problem is a :class:`~coserve.ConfigError` reading ``"{path}:{line}:{column}: {problem}"``
(1-based; a file :func:`load` cannot read at all has no line); no input text makes either layer
raise anything else or recurse without bound.

What is accepted (what protobuf's own parsers accept, checked against Python protobuf in the tests):

* ``#`` comments; fields as ``name: value``, ``name { ... }``, ``name: { ... }``, ``name < ... >``,
  each optionally followed by one ``,`` or ``;``;
* lists for repeated fields, ``dims: [16, 3]`` and ``input [{ ... }, { ... }]`` (the ``:`` is
  optional before a list of messages), which mean the same as the field written once per item;
* strings in single or double quotes, adjacent literals concatenated (``"a" "b"``), with the
  escapes ``\a \b \f \n \r \t \v \\ \' \" \?``, octal ``\ooo`` (up to ``\377``),
  ``\xH``/``\xHH``, ``\uXXXX`` and ``\UXXXXXXXX``; escapes make bytes, and a string field's
  bytes must be UTF-8;
* integers in decimal, hex (``0x1F``) and C octal (``017``), negative with a leading ``-``;
  floats such as ``1.5``, ``.5``, ``1e-3``, ``1.5f``, ``-inf``, ``inf``, ``infinity``, ``nan``
  (case-insensitive), integers being accepted for float fields too;
* enum values by name, or by number where the number is one of the enum's values;
  booleans ``true``/``True``/``t``/``1`` and ``false``/``False``/``f``/``0``;
* map fields written as entries, ``input_map { key: "A" value: "B" }`` (a later key wins).

What is not accepted, each as a clean ConfigError:

* extension and ``google.protobuf.Any`` expansion syntax, ``[type.googleapis.com/pkg.Msg] {...}``
  (an ``Any`` can still be written as its two plain fields, ``type_url`` and ``value``);
* field numbers in place of names; groups; nesting deeper than :data:`MAX_DEPTH` messages;
* spellings Python's protobuf takes but C++ protobuf (which Triton and TF Serving run) does not:
  numbers with ``+``, ``_``, ``0b``/``0o`` prefixes or several ``f`` suffixes, and unknown
  escapes such as ``\q``;
* enum numbers that name no value (proto3 enums are open, so protobuf keeps such a number; a
  caller here could do nothing with it);
* a non-repeated field given twice, even where protobuf lets a first default value be overwritten.

Two spellings are read as C++ protobuf reads them, where Python's differs: the escape ``\?`` is
a ``?`` (Python keeps the backslash, with a DeprecationWarning) and an enum number may be written
in C octal, ``07`` (Python refuses it). An empty list sets nothing, but must still name a
repeated field (and, for a scalar field, have its ``:``), as protobuf requires: :class:`Message`
keeps it in ``empty_lists``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeAlias, get_args

from coserve._exceptions import ConfigError

__all__ = [
    "MAX_DEPTH",
    "Decoded",
    "EmptyList",
    "EnumSchema",
    "Field",
    "FieldSchema",
    "Message",
    "MessageSchema",
    "Position",
    "Scalar",
    "decode",
    "enum_field",
    "load",
    "map_field",
    "message_field",
    "parse",
    "scalar_field",
]

MAX_DEPTH = 64
"""How deeply messages may nest; deeper is a ConfigError (so nothing can exhaust the stack)."""

# -- layer 1: the schema-free tree -------------------------------------------------------------

ScalarKindName: TypeAlias = Literal["string", "number", "identifier"]


@dataclass(frozen=True, slots=True)
class Scalar:
    """One value as written: a string literal, a number or a bare identifier.

    ``value`` is the decoded Python value: for ``"string"`` the text (adjacent literals joined,
    escapes decoded; bytes that are not UTF-8 are kept as surrogate escapes, so that a string
    field can reject them and a bytes field can recover them), for ``"number"`` an ``int`` or a
    ``float``, for ``"identifier"`` the identifier itself (``TYPE_FP32``, ``true``, ``inf``).
    ``text`` is the source spelling, which :func:`decode` consults for type-specific rules
    (``0``/``1`` as booleans, no hex for floats); ``line`` and ``column`` are where it starts.
    """

    kind: ScalarKindName
    value: str | int | float
    text: str
    line: int
    column: int


@dataclass(slots=True)
class Message:
    """A ``{ ... }`` block (or the whole file): its fields in the order written.

    ``line`` and ``column`` are those of the opening brace, ``1, 1`` for the file itself.
    ``empty_lists`` holds each ``name: []``, which has no values to put in ``fields``.
    """

    fields: list[Field] = field(default_factory=list)
    line: int = 1
    column: int = 1
    empty_lists: list[EmptyList] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Field:
    """One ``name: value`` (or ``name { ... }``) occurrence.

    A list ``name: [a, b]`` becomes one Field per item, all with ``in_list`` set (protobuf
    allows lists only for repeated fields, which :func:`decode` checks). ``line`` and ``column``
    are those of the field name, or for a list item those of the item.
    """

    name: str
    value: Scalar | Message
    line: int
    column: int
    in_list: bool = False


@dataclass(frozen=True, slots=True)
class EmptyList:
    """A ``name: []`` (or ``name []``): no values, but a name that must be a repeated field."""

    name: str
    line: int
    column: int
    colon: bool


def parse(text: str, path: str | Path) -> Message:
    """Parse protobuf text format into a schema-free :class:`Message` tree.

    Args:
        text: The file's text.
        path: The file, used only in error messages.

    Raises:
        ConfigError: ``"{path}:{line}:{column}: {problem}"`` for any syntax error.
    """
    return _Parser(text, str(path)).run()


class _Token(NamedTuple):
    kind: Literal["identifier", "number", "string", "punct", "eof"]
    text: str
    line: int
    column: int
    data: bytes = b""  # a string literal's decoded bytes


# The token grammar of protobuf's own Python tokenizer, so both split any text the same way;
# what a token means is then decided by the stricter rules below.
_SKIP = re.compile(r"(?:\s|#.*$)+", re.MULTILINE)
_TOKEN = re.compile(
    r"[a-zA-Z_][0-9a-zA-Z_+-]*"  # an identifier
    r"|(?:[0-9+-]|\.[0-9])[0-9a-zA-Z_.+-]*"  # a number (validated when used)
    r"""|"[^"\n\\]*(?:(?:\\.)+[^"\n\\]*)*(?:"|\\?$)"""  # strings, possibly unterminated
    r"""|'[^'\n\\]*(?:(?:\\.)+[^'\n\\]*)*(?:'|\\?$)"""
)
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INTEGER = re.compile(r"-?(?:0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
# Each written so that no two parts can match the same characters: a long number token must not
# make the regex engine backtrack quadratically.
_FLOAT = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?[fF]?")
_MAX_INTEGER_DIGITS = 100  # far beyond 64 bits, far below int()'s limit of 4300
_OCTAL_LIKE = re.compile(r"-?0[0-9]")  # 017 is an octal integer, so never a float
_INF_NAN = re.compile(r"-?(?:inf(?:inity)?|nan)f?", re.IGNORECASE)
_ESCAPE = re.compile(
    r"\\(?:([0-7]{1,3})|x([0-9a-fA-F]{1,2})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|(.))", re.DOTALL
)
_SIMPLE_ESCAPES = {
    "a": b"\a",
    "b": b"\b",
    "f": b"\f",
    "n": b"\n",
    "r": b"\r",
    "t": b"\t",
    "v": b"\v",
    "\\": b"\\",
    "'": b"'",
    '"': b'"',
    "?": b"?",
}


def _error(where: str, line: int, column: int, problem: str) -> ConfigError:
    return ConfigError(f"{where}:{line}:{column}: {problem}")


def _show(token: _Token) -> str:
    """A token as an error message quotes it: short, with control characters escaped."""
    if token.kind == "eof":
        return "the end of the file"
    text = token.text if len(token.text) <= 40 else token.text[:37] + "..."
    return repr(text)


def _tokens(text: str, where: str) -> Iterator[_Token]:
    """The tokens of ``text``, lazily, so an earlier syntax error is reported first."""
    lines = text.split("\n")  # protobuf splits on "\n" only; "\r" is whitespace
    for number, line in enumerate(lines, 1):
        column = 0
        end = len(line)
        while True:
            skip = _SKIP.match(line, column)
            if skip:
                column = skip.end()
            if column >= end:
                break
            match = _TOKEN.match(line, column)
            piece = match.group() if match else line[column]
            first = piece[0]
            if first in "\"'":
                yield _Token(
                    "string", piece, number, column + 1, _unescape(piece, where, number, column + 1)
                )
            elif match and (first.isalpha() or first == "_"):
                yield _Token("identifier", piece, number, column + 1)
            elif match:
                yield _Token("number", piece, number, column + 1)
            else:
                yield _Token("punct", piece, number, column + 1)
            column += len(piece)
    yield _Token("eof", "", len(lines), len(lines[-1]) + 1)


def _unescape(literal: str, where: str, line: int, column: int) -> bytes:
    """The bytes a quoted literal stands for (quotes included in ``literal``)."""
    quote = literal[0]
    if len(literal) < 2 or literal[-1] != quote or _odd_backslashes_before_end(literal):
        raise _error(where, line, column, f"string {_shorten(literal)} is not terminated")
    body = literal[1:-1]
    out = bytearray()
    position = 0
    for escape in _ESCAPE.finditer(body):
        out += _encode(body[position : escape.start()], where, line, column + 1 + position)
        here = column + 1 + escape.start()
        octal, hex2, hex4, hex8, other = escape.groups()
        if octal is not None:
            value = int(octal, 8)
            if value > 0o377:
                raise _error(where, line, here, f"octal escape \\{octal} is over \\377")
            out.append(value)
        elif hex2 is not None:
            out.append(int(hex2, 16))
        elif hex4 is not None or hex8 is not None:
            code = int(hex4 or hex8, 16)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise _error(where, line, here, f"{escape.group()} is not a Unicode character")
            out += chr(code).encode("utf-8")
        elif other in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[other]
        else:
            # \x and \u without their digits land here too.
            raise _error(where, line, here, f"invalid escape {escape.group()!r} in a string")
        position = escape.end()
    out += _encode(body[position:], where, line, column + 1 + position)
    return bytes(out)


def _odd_backslashes_before_end(literal: str) -> bool:
    r"""Whether the closing quote is itself escaped, as in the unterminated ``"abc\"``."""
    count = 0
    index = len(literal) - 2
    while index >= 1 and literal[index] == "\\":
        count += 1
        index -= 1
    return count % 2 == 1


def _encode(text: str, where: str, line: int, column: int) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as error:
        # Only a lone surrogate in the source text gets here.
        raise _error(where, line, column + error.start, "a string holds a lone surrogate") from None


def _shorten(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _number(text: str) -> int | float | None:
    """A number token's value, or None where it is no number protobuf's C++ parser reads."""
    if _INTEGER.fullmatch(text):
        if len(text) > _MAX_INTEGER_DIGITS:
            return None  # also keeps int() clear of Python's limit on digits
        negative = text.startswith("-")
        digits = text[1:] if negative else text
        if digits[:2] in ("0x", "0X"):
            value = int(digits[2:], 16)
        elif len(digits) > 1 and digits[0] == "0":
            value = int(digits[1:], 8)
        else:
            value = int(digits)
        return -value if negative else value
    if _INF_NAN.fullmatch(text):
        spelled = text.lower()
        # "inff", "infinityf" and "nanf" carry a float suffix; "inf" ends in "f" of its own.
        if spelled.endswith(("inff", "infinityf", "nanf")):
            spelled = spelled[:-1]
        return float(spelled)
    if _FLOAT.fullmatch(text) and not _OCTAL_LIKE.match(text):
        return float(text.rstrip("fF"))
    return None


@dataclass(slots=True)
class _List:
    """An open ``name: [ ... ]`` list of the message on top of the stack."""

    name: str
    line: int
    column: int
    colon: bool
    after_item: bool = False
    after_comma: bool = False


@dataclass(slots=True)
class _Frame:
    """A message being filled: what closes it, and whether it is an item of a list."""

    message: Message
    name: str
    closer: str | None  # None for the file itself
    in_list: bool
    list: _List | None = None


class _Parser:
    """An iterative parser: an explicit stack, so nesting is bounded by MAX_DEPTH, not by Python."""

    def __init__(self, text: str, where: str) -> None:
        self._where = where
        self._tokens = _tokens(text, where)
        self._peeked: _Token | None = None

    def _next(self) -> _Token:
        if self._peeked is not None:
            token, self._peeked = self._peeked, None
            return token
        return next(self._tokens)

    def _peek(self) -> _Token:
        if self._peeked is None:
            self._peeked = next(self._tokens)
        return self._peeked

    def _fail(self, token: _Token, problem: str) -> ConfigError:
        return _error(self._where, token.line, token.column, problem)

    def _separator(self) -> None:
        # For historical reasons protobuf allows one "," or ";" after any field.
        token = self._peek()
        if token.kind == "punct" and token.text in ",;":
            self._next()

    def _open(self, stack: list[_Frame], token: _Token, name: str, in_list: bool) -> Message:
        if len(stack) > MAX_DEPTH:
            raise self._fail(token, f"messages nest deeper than {MAX_DEPTH} levels")
        child = Message([], token.line, token.column)
        stack.append(_Frame(child, name, "}" if token.text == "{" else ">", in_list))
        return child

    def run(self) -> Message:
        root = Message()
        stack = [_Frame(root, "", None, False)]
        while True:
            frame = stack[-1]
            token = self._next()
            if frame.list is not None:
                self._list_step(stack, frame, frame.list, token)
                continue
            if token.kind == "eof":
                if frame.closer is None:
                    return root
                raise self._fail(
                    token,
                    f"the file ends inside '{frame.name}' (opened at line "
                    f"{frame.message.line}, column {frame.message.column}): "
                    f"expected '{frame.closer}'",
                )
            if token.kind == "punct" and token.text in "}>":
                if token.text != frame.closer:
                    expected = f"'{frame.closer}' or a field" if frame.closer else "a field name"
                    raise self._fail(token, f"unexpected {_show(token)}: expected {expected}")
                stack.pop()
                if not frame.in_list:
                    self._separator()
                continue
            self._field(stack, frame, token)

    def _field(self, stack: list[_Frame], frame: _Frame, name: _Token) -> None:
        if name.kind == "punct" and name.text == "[":
            raise self._fail(name, "extension and Any type URL fields ([...]) are not supported")
        if name.kind != "identifier" or not _FIELD_NAME.fullmatch(name.text):
            raise self._fail(name, f"expected a field name, got {_show(name)}")
        token = self._next()
        colon = token.kind == "punct" and token.text == ":"
        if colon:
            token = self._next()
        if token.kind == "punct" and token.text in "{<":
            child = self._open(stack, token, name.text, in_list=False)
            frame.message.fields.append(Field(name.text, child, name.line, name.column))
        elif token.kind == "punct" and token.text == "[":
            frame.list = _List(name.text, name.line, name.column, colon)
        elif not colon:
            raise self._fail(token, f"expected ':' or '{{' after field name '{name.text}'")
        else:
            value = self._scalar(token, name.text)
            frame.message.fields.append(Field(name.text, value, name.line, name.column))
            self._separator()

    def _list_step(self, stack: list[_Frame], frame: _Frame, items: _List, token: _Token) -> None:
        is_punct = token.kind == "punct"
        if items.after_item:
            if is_punct and token.text == "]":
                frame.list = None
                self._separator()
            elif is_punct and token.text == ",":
                items.after_item, items.after_comma = False, True
            else:
                raise self._fail(
                    token, f"expected ',' or ']' in the list of '{items.name}', got {_show(token)}"
                )
        elif is_punct and token.text == "]" and not items.after_comma:
            empty = EmptyList(items.name, items.line, items.column, items.colon)
            frame.message.empty_lists.append(empty)
            frame.list = None
            self._separator()
        elif is_punct and token.text in "{<":
            child = self._open(stack, token, items.name, in_list=True)
            frame.message.fields.append(
                Field(items.name, child, token.line, token.column, in_list=True)
            )
            items.after_item = True
        else:
            if not items.colon:
                raise self._fail(
                    token, f"expected ':' between field name '{items.name}' and its values"
                )
            value = self._scalar(token, items.name)
            frame.message.fields.append(
                Field(items.name, value, token.line, token.column, in_list=True)
            )
            items.after_item = True

    def _scalar(self, token: _Token, name: str) -> Scalar:
        if token.kind == "string":
            pieces = [token]
            while self._peek().kind == "string":  # "a" "b" is "ab", as in C
                pieces.append(self._next())
            # Joined as bytes, then decoded: "\303" "\251" is one "é", as in protobuf.
            data = b"".join(piece.data for piece in pieces)
            text = data.decode("utf-8", "surrogateescape")
            spelling = " ".join(piece.text for piece in pieces)
            return Scalar("string", text, spelling, token.line, token.column)
        if token.kind == "identifier":
            return Scalar("identifier", token.text, token.text, token.line, token.column)
        if token.kind == "number":
            number = _number(token.text)
            if number is None:
                raise self._fail(token, f"invalid number {_show(token)}")
            return Scalar("number", number, token.text, token.line, token.column)
        raise self._fail(token, f"expected a value for field '{name}', got {_show(token)}")


# -- layer 2: schemas ----------------------------------------------------------------------------

ScalarKind: TypeAlias = Literal[
    "string", "bytes", "bool", "int32", "int64", "uint32", "uint64", "float", "double"
]
FieldKind: TypeAlias = Literal[
    "string",
    "bytes",
    "bool",
    "int32",
    "int64",
    "uint32",
    "uint64",
    "float",
    "double",
    "enum",
    "message",
    "map",
]
_SCALAR_KINDS: frozenset[str] = frozenset(get_args(ScalarKind))

_RANGES = {
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
}
_FLOAT_MAX = float.fromhex("0x1.fffffep+127")
_FLOAT_MAX_ROUNDED = 3.4028235677973366e38  # doubles up to here round to _FLOAT_MAX, not inf


@dataclass(frozen=True, slots=True, eq=False)  # compared by identity, as MessageSchema is
class EnumSchema:
    """An enum type: its full protobuf name and its values, name to number, in declared order."""

    name: str
    values: Mapping[str, int]

    def name_of(self, number: int) -> str | None:
        """The first value with this number (protobuf's choice when aliases share one)."""
        for name, value in self.values.items():
            if value == number:
                return name
        return None

    @property
    def default(self) -> str:
        """The value protobuf defaults to: the one numbered 0, else the first declared."""
        return self.name_of(0) or next(iter(self.values))


@dataclass(frozen=True, slots=True, eq=False)  # eq=False: a recursive schema must not recurse
class FieldSchema:
    """One field of a message type. Build it with the ``*_field`` helpers.

    ``kind`` is a scalar kind, ``"enum"`` (with ``enum``), ``"message"`` (with ``message``) or
    ``"map"`` (with ``message`` the entry type, fields ``key`` and ``value``; always repeated).
    ``oneof`` names the oneof the field belongs to: at most one of its members may be given.
    ``number`` is the field's number in the proto (0 where the schema does not say): the text
    format does not use it, the binary encoding of a schema's messages does.
    """

    name: str
    kind: FieldKind
    repeated: bool = False
    oneof: str | None = None
    enum: EnumSchema | None = None
    message: MessageSchema | None = None
    number: int = 0


class MessageSchema:
    """A message type: its full protobuf name and its fields.

    Give the fields at construction, or declare first and :meth:`define` later, which is how a
    recursive type (or two that refer to each other) is written.
    """

    __slots__ = ("_fields", "name")

    def __init__(self, name: str, *fields: FieldSchema) -> None:
        self.name = name
        self._fields: dict[str, FieldSchema] | None = None
        if fields:
            self.define(*fields)

    def define(self, *fields: FieldSchema) -> MessageSchema:
        """Set the fields (once); returns the schema itself."""
        if self._fields is not None:
            raise RuntimeError(f"message schema {self.name} is already defined")
        self._fields = {spec.name: spec for spec in fields}
        if len(self._fields) != len(fields):
            raise RuntimeError(f"message schema {self.name} names a field twice")
        return self

    @property
    def fields(self) -> Mapping[str, FieldSchema]:
        """The fields by name, in declared order (empty for a message with none)."""
        return self._fields if self._fields is not None else {}

    def __repr__(self) -> str:
        return f"MessageSchema({self.name!r}, {len(self.fields)} fields)"


def scalar_field(
    name: str,
    kind: ScalarKind,
    *,
    repeated: bool = False,
    oneof: str | None = None,
    number: int = 0,
) -> FieldSchema:
    """A string, bytes, bool, integer or floating-point field."""
    if kind not in _SCALAR_KINDS:
        raise ValueError(f"{kind!r} is not a scalar kind")
    return FieldSchema(name, kind, repeated, oneof, number=number)


def enum_field(
    name: str,
    enum: EnumSchema,
    *,
    repeated: bool = False,
    oneof: str | None = None,
    number: int = 0,
) -> FieldSchema:
    """A field whose values are names (or numbers) of ``enum``."""
    return FieldSchema(name, "enum", repeated, oneof, enum=enum, number=number)


def message_field(
    name: str,
    message: MessageSchema,
    *,
    repeated: bool = False,
    oneof: str | None = None,
    number: int = 0,
) -> FieldSchema:
    """A field holding a nested message of type ``message``."""
    return FieldSchema(name, "message", repeated, oneof, message=message, number=number)


def map_field(
    name: str,
    key: ScalarKind,
    value: ScalarKind | EnumSchema | MessageSchema,
    *,
    number: int = 0,
) -> FieldSchema:
    """A ``map<key, value>`` field, written as entries ``name { key: ... value: ... }``."""
    if key not in ("string", "bool", "int32", "int64", "uint32", "uint64"):
        raise ValueError(f"{key!r} cannot be a map key")
    if isinstance(value, EnumSchema):
        value_spec = enum_field("value", value, number=2)
    elif isinstance(value, MessageSchema):
        value_spec = message_field("value", value, number=2)
    else:
        value_spec = scalar_field("value", value, number=2)
    entry = MessageSchema(f"entry of map '{name}'", scalar_field("key", key, number=1), value_spec)
    return FieldSchema(name, "map", repeated=True, message=entry, number=number)


# -- layer 2: decoding ---------------------------------------------------------------------------


class Position(NamedTuple):
    """Where a field was written: 1-based line and column."""

    line: int
    column: int


class Decoded(dict[Any, Any]):
    """A decoded message (field name to value) or map (key to value), with where each was written.

    Values are plain Python: ``str``, ``bytes``, ``bool``, ``int`` (all integer kinds, never
    strings), ``float``, an enum value's name (``str``), a nested :class:`Decoded` for a message
    or a map, and a ``list`` for a repeated field. Only what the text gives is present: defaults
    are the caller's business. ``positions`` maps each key to the :class:`Position` of its first
    occurrence (for a map key, of the entry that set it), so a caller can say, for instance,
    ``f"{decoded.where('optimization')}: field optimization is not supported"``.
    """

    __slots__ = ("path", "positions")

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.positions: dict[Any, Position] = {}

    def where(self, key: Any) -> str:
        """``"{path}:{line}:{column}"`` of ``key``'s first occurrence (KeyError if absent)."""
        line, column = self.positions[key]
        return f"{self.path}:{line}:{column}"


def decode(message: Message, schema: MessageSchema, path: str | Path) -> Decoded:
    """Check a parsed tree against ``schema`` and return its values.

    Args:
        message: What :func:`parse` returned.
        schema: The message type of the whole file, e.g. ``TRITON_MODEL_CONFIG``.
        path: The file, used in error messages and kept in each :class:`Decoded`.

    Raises:
        ConfigError: ``"{path}:{line}:{column}: {problem}"`` for an unknown field (with the
            closest known name, or the list of known ones), a value of the wrong type, an integer
            out of range, an enum name the enum lacks (with the allowed ones), a non-repeated
            field given twice or as a list, two members of one oneof, or a message where a value
            belongs (and the reverse).
    """
    return _Decoder(str(path)).message(message, schema, 0)


def load(path: str | Path, schema: MessageSchema) -> Decoded:
    """Read, parse and decode a text-format file.

    Raises:
        ConfigError: as :func:`parse` and :func:`decode` do; also ``"{path}: cannot read ..."``
            for a file that cannot be read, and a line and column for bytes that are not UTF-8.
    """
    where = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"{where}: cannot read the file: {error.strerror or error}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        start = data.rfind(b"\n", 0, error.start) + 1
        line = data.count(b"\n", 0, error.start) + 1
        column = len(data[start : error.start].decode("utf-8", "replace")) + 1
        raise _error(where, line, column, "the file is not valid UTF-8") from None
    return decode(parse(text, where), schema, where)


_KIND_WORDS = {
    "string": "a quoted string",
    "bytes": "a quoted string",
    "bool": "true or false",
    "int32": "an integer (int32)",
    "int64": "an integer (int64)",
    "uint32": "an unsigned integer (uint32)",
    "uint64": "an unsigned integer (uint64)",
    "float": "a number (float)",
    "double": "a number (double)",
}
_TRUE = frozenset({"true", "True", "t"})
_FALSE = frozenset({"false", "False", "f"})


class _Decoder:
    def __init__(self, where: str) -> None:
        self._where = where

    def _fail(self, line: int, column: int, problem: str) -> ConfigError:
        return _error(self._where, line, column, problem)

    def message(self, message: Message, schema: MessageSchema, depth: int) -> Decoded:
        if depth > MAX_DEPTH:  # parse() cannot build such a tree; a hand-made one might
            raise self._fail(message.line, message.column, f"nesting deeper than {MAX_DEPTH}")
        specs = schema.fields
        out = Decoded(self._where)
        first: dict[str, Field] = {}
        oneofs: dict[str, Field] = {}
        for item in message.fields:
            spec = specs.get(item.name)
            if spec is None:
                raise self._unknown(item, schema)
            if spec.oneof is not None:
                other = oneofs.setdefault(spec.oneof, item)
                if other.name != item.name:
                    raise self._fail(
                        item.line,
                        item.column,
                        f"field '{item.name}' and field '{other.name}' (line {other.line}) are "
                        f"both in oneof '{spec.oneof}' of {schema.name}: give only one",
                    )
            earlier = first.setdefault(item.name, item)
            if not spec.repeated:
                if item.in_list:
                    raise self._not_repeated(item, schema)
                if earlier is not item:
                    raise self._fail(
                        item.line,
                        item.column,
                        f"field '{item.name}' of {schema.name} is given twice (first at line "
                        f"{earlier.line}); it is not a repeated field",
                    )
            position = Position(item.line, item.column)
            out.positions.setdefault(item.name, position)
            if spec.kind == "map":
                self._map_entry(item, spec, out, position, depth)
                continue
            value = self._value(item, spec, depth)
            if spec.repeated:
                out.setdefault(item.name, []).append(value)
            else:
                out[item.name] = value
        for empty in message.empty_lists:
            self._empty_list(empty, schema)
        return out

    def _empty_list(self, empty: EmptyList, schema: MessageSchema) -> None:
        """``name: []`` sets nothing, but protobuf still checks the name, as we do."""
        spec = schema.fields.get(empty.name)
        if spec is None:
            raise self._unknown(empty, schema)
        if not spec.repeated:
            raise self._not_repeated(empty, schema)
        if not empty.colon and spec.kind not in ("message", "map"):
            raise self._fail(
                empty.line, empty.column, f"expected ':' after field name '{empty.name}'"
            )

    def _not_repeated(self, item: Field | EmptyList, schema: MessageSchema) -> ConfigError:
        return self._fail(
            item.line,
            item.column,
            f"field '{item.name}' of {schema.name} is not repeated: "
            "a [...] list is only for repeated fields",
        )

    def _unknown(self, item: Field | EmptyList, schema: MessageSchema) -> ConfigError:
        known = list(schema.fields)
        close = _close_match(item.name, known)
        if close:
            hint = f"did you mean '{close[0]}'?"
        elif known:
            hint = "known fields: " + ", ".join(known)
        else:
            hint = "it has no fields"
        return self._fail(
            item.line, item.column, f"unknown field {_shorten(item.name)} in {schema.name}; {hint}"
        )

    def _map_entry(
        self, item: Field, spec: FieldSchema, out: Decoded, position: Position, depth: int
    ) -> None:
        entry = self._value(item, spec, depth)
        assert spec.message is not None  # map_field() always sets the entry type
        specs = spec.message.fields
        key = entry["key"] if "key" in entry else _default(specs["key"], self._where)
        value = entry["value"] if "value" in entry else _default(specs["value"], self._where)
        mapping = out.get(item.name)
        if mapping is None:
            mapping = out[item.name] = Decoded(self._where)
        mapping[key] = value  # as in protobuf, a later entry with the same key wins
        mapping.positions[key] = position

    def _value(self, item: Field, spec: FieldSchema, depth: int) -> Any:
        value = item.value
        if spec.kind in ("message", "map"):
            assert spec.message is not None  # message_field() and map_field() always set it
            if not isinstance(value, Message):
                what = "a map" if spec.kind == "map" else f"a message ({spec.message.name})"
                body = "key: ... value: ..." if spec.kind == "map" else "..."
                raise self._fail(
                    value.line,
                    value.column,
                    f"field '{item.name}' is {what}: write '{item.name} {{ {body} }}', not a value",
                )
            return self.message(value, spec.message, depth + 1)
        if isinstance(value, Message):
            wanted = f"a value of enum {spec.enum.name}" if spec.enum else _KIND_WORDS[spec.kind]
            raise self._fail(
                value.line,
                value.column,
                f"field '{item.name}' takes {wanted}, not a message: write '{item.name}: ...'",
            )
        if spec.kind == "enum":
            assert spec.enum is not None  # enum_field() always sets it
            return self._enum(item.name, value, spec.enum)
        return self._scalar(item.name, value, spec.kind)

    def _enum(self, name: str, value: Scalar, enum: EnumSchema) -> str:
        allowed = ", ".join(enum.values)
        if value.kind == "identifier" and isinstance(value.value, str):
            if value.value in enum.values:
                return value.value
            close = _close_match(value.value, list(enum.values))
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise self._fail(
                value.line,
                value.column,
                f"field '{name}': {_shorten(value.value)} is not a value of enum {enum.name}; "
                f"{hint}allowed: {allowed}",
            )
        if value.kind == "number" and isinstance(value.value, int):
            found = enum.name_of(value.value)
            if found is not None:
                return found
            raise self._fail(
                value.line,
                value.column,
                f"field '{name}': {value.text} is not a value of enum {enum.name}; "
                f"allowed: {allowed}",
            )
        raise self._fail(
            value.line,
            value.column,
            f"field '{name}' takes a value of enum {enum.name}, got {_shorten(value.text)}; "
            f"allowed: {allowed}",
        )

    def _scalar(self, name: str, value: Scalar, kind: str) -> Any:
        raw = value.value
        if kind in ("string", "bytes") and value.kind == "string" and isinstance(raw, str):
            if kind == "bytes":
                return raw.encode("utf-8", "surrogateescape")
            if any("\udc80" <= char <= "\udcff" for char in raw):
                raise self._fail(
                    value.line, value.column, f"field '{name}': the string is not valid UTF-8"
                )
            return raw
        if kind == "bool":
            # protobuf reads the numbers 1 and 0 as booleans too, spelled just so.
            if (value.kind == "identifier" and raw in _TRUE) or value.text == "1":
                return True
            if (value.kind == "identifier" and raw in _FALSE) or value.text == "0":
                return False
        elif kind in _RANGES and value.kind == "number" and isinstance(raw, int):
            low, high = _RANGES[kind]
            if not low <= raw <= high:
                raise self._fail(
                    value.line,
                    value.column,
                    f"field '{name}': {value.text} is out of range for {kind} ({low} to {high})",
                )
            return raw
        elif kind in ("float", "double"):
            number = _float(value)
            if number is not None:
                return _to_float32(number) if kind == "float" else number
        raise self._fail(
            value.line,
            value.column,
            f"field '{name}' takes {_KIND_WORDS[kind]}, got {_shorten(value.text)}",
        )


def _close_match(word: str, candidates: list[str]) -> list[str]:
    """The closest candidate, if one is close; a huge word is not worth difflib's time."""
    return difflib.get_close_matches(word, candidates, n=1) if len(word) <= 100 else []


def _float(value: Scalar) -> float | None:
    """A float field's value: decimal numbers and inf/nan, never hex or octal integers."""
    raw = value.value
    if value.kind == "number":
        if isinstance(raw, float):
            return raw
        digits = value.text.lstrip("-")
        if digits.startswith(("0x", "0X")) or _OCTAL_LIKE.match(digits):
            return None  # protobuf reads no hex or octal floats
        return float(value.text)  # decimal: exact, and "-0" stays -0.0
    if value.kind == "identifier" and _INF_NAN.fullmatch(value.text):
        return _number(value.text)  # always a float here: identifiers have no "-"
    return None


def _to_float32(number: float) -> float:
    """Overflow as protobuf (C++ ``SafeDoubleToFloat``) has it; in-range values stay exact."""
    if number > _FLOAT_MAX:
        return _FLOAT_MAX if number <= _FLOAT_MAX_ROUNDED else float("inf")
    if number < -_FLOAT_MAX:
        return -_FLOAT_MAX if number >= -_FLOAT_MAX_ROUNDED else float("-inf")
    return number


def _default(spec: FieldSchema, where: str) -> Any:
    """The default a map entry's missing key or value takes."""
    if spec.kind == "enum":
        assert spec.enum is not None
        return spec.enum.default
    if spec.kind == "message":
        return Decoded(where)
    return {
        "string": "",
        "bytes": b"",
        "bool": False,
        "float": 0.0,
        "double": 0.0,
    }.get(spec.kind, 0)
