"""The head of an HTTP/1.1 inference request, parsed strictly, or refused for uvicorn to parse.

coserve's protocol (``_protocol``) serves inference requests itself and hands every other
connection to uvicorn. It only needs the heads of the requests it serves, and those are simple:
``POST /v2/models/{m}[/versions/{v}]/infer HTTP/1.1``, a ``Content-Length``, a few headers.
:func:`parse_head` accepts exactly that and answers :data:`HANDOFF` for anything else: other
methods, paths and versions, chunked bodies, ``Expect``, upgrades, percent-encoded paths or
query strings, and any line that is not plainly well-formed (bare LF, folded or malformed headers,
control characters, repeated Content-Length). uvicorn's parser then handles the request, and its
errors, as it always has, so nothing this parser lets through is ambiguous.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["HANDOFF", "INCOMPLETE", "MAX_HEAD", "RequestHead", "parse_head"]

MAX_HEAD: Final = 16 * 1024
"""A head not complete within this many bytes is handed off (uvicorn decides what to do)."""

_PREFIX: Final = b"POST /v2/models/"
# The request line, with the inference path's model and version. A path segment is visible
# ASCII but "/", "%" and "?": a percent-encoded path or a query string goes to uvicorn, which
# decodes and splits them. The same paths as ``match_infer_path`` (the ASGI path's matcher).
_SEGMENT = rb"([\x21-\x24\x26-\x2e\x30-\x3e\x40-\x7e]*)"
_REQUEST_LINE = re.compile(
    rb"POST /v2/models/" + _SEGMENT + rb"(?:/versions/" + _SEGMENT + rb")?/infer HTTP/1\.1\r\n"
)
# Every header line at once: an RFC 9110 token, a colon, a value without control characters
# (HTAB allowed), CRLF. One match for the block is cheaper than two per line.
_FIELDS = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*")
_HANDED_OFF_HEADERS: Final = frozenset((b"transfer-encoding", b"expect", b"upgrade"))


class RequestHead:
    """A parsed inference request head."""

    __slots__ = ("content_length", "headers", "keep_alive", "model", "size", "version")

    def __init__(
        self,
        model: str,
        version: str | None,
        headers: list[tuple[bytes, bytes]],
        content_length: int,
        keep_alive: bool,
        size: int,
    ) -> None:
        self.model = model
        self.version = version
        self.headers = headers
        """Every header as ``(lower-case name, value)``, in order."""
        self.content_length = content_length
        self.keep_alive = keep_alive
        """False when the client sent ``Connection: close``."""
        self.size = size
        """Bytes of the head, its blank line included: where the body starts."""


class _Verdict:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


INCOMPLETE: Final = _Verdict("INCOMPLETE")
"""The head is not all here yet."""
HANDOFF: Final = _Verdict("HANDOFF")
"""Not a request this parser serves: hand the connection to uvicorn."""


def parse_head(
    buffer: bytes | bytearray, max_headers: int = 100, max_head: int = MAX_HEAD
) -> RequestHead | _Verdict:
    """Parse the request head at the start of ``buffer``.

    Returns:
        The head; :data:`INCOMPLETE` if more bytes are needed; :data:`HANDOFF` if the request
        is not a plain inference request (or has more than ``max_headers`` header lines, or is
        not complete within ``max_head`` bytes: uvicorn's protocol answers those 431).
    """
    if not buffer.startswith(_PREFIX):
        if len(buffer) >= len(_PREFIX) or not _PREFIX.startswith(bytes(buffer)):
            return HANDOFF
        return INCOMPLETE
    end = buffer.find(b"\r\n\r\n", 0, max_head)
    if end < 0:
        if len(buffer) >= max_head:
            return HANDOFF
        # A line ending in LF alone: not this parser's to judge, and waiting for CRLF CRLF
        # would wait for ever, so the head goes to uvicorn at once (which answers 400). Two
        # counts in C, not a regex: this runs on every read of a partial head.
        if buffer.count(b"\n", 0, max_head) != buffer.count(b"\r\n", 0, max_head):
            return HANDOFF
        return INCOMPLETE
    request_line = _REQUEST_LINE.match(buffer, 0, end + 2)
    if request_line is None:
        return HANDOFF
    fields = bytes(buffer[request_line.end() : end + 2])
    if not _FIELDS.fullmatch(fields):
        return HANDOFF  # also a folded line: it starts with a space, not a token
    model, version = request_line.groups()
    headers = []
    content_length: int | None = None
    keep_alive = True
    lines = fields.split(b"\r\n")[:-1]
    if len(lines) > max_headers:
        return HANDOFF
    for line in lines:
        name, _, value = line.partition(b":")
        value = value.strip(b" \t")
        name = name.lower()
        if name == b"content-length":
            if content_length is not None or not value.isdigit():
                return HANDOFF
            content_length = int(value)
        elif name in _HANDED_OFF_HEADERS:
            return HANDOFF
        elif name == b"connection":
            tokens = {token.strip().lower() for token in value.split(b",")}
            if b"upgrade" in tokens:
                return HANDOFF
            if b"close" in tokens:
                keep_alive = False
        headers.append((name, value))
    if content_length is None:
        return HANDOFF
    return RequestHead(
        model.decode("ascii"),
        None if version is None else version.decode("ascii"),
        headers,
        content_length,
        keep_alive,
        end + 4,
    )
