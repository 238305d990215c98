"""The strict head parser of coserve's protocol, checked against httptools (uvicorn's parser).

Whatever the parser accepts must mean exactly what httptools reads from the same bytes; whatever
it is unsure of it hands to uvicorn. Hypothesis builds heads from well-formed and broken parts.
"""

from __future__ import annotations

from typing import Any

import httptools
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from coserve.server._native_http import HANDOFF, INCOMPLETE, MAX_HEAD, RequestHead, parse_head
from coserve.server._v2_rest import match_infer_path

INFER = b"POST /v2/models/digits/infer HTTP/1.1\r\n"
GOOD = (
    b"POST /v2/models/digits/infer HTTP/1.1\r\n"
    b"Host: localhost:8000\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n"
    b'{"inputs":1}'
)


def test_a_plain_inference_head_is_parsed() -> None:
    head = parse_head(GOOD)
    assert isinstance(head, RequestHead)
    assert (head.model, head.version, head.content_length, head.keep_alive) == (
        "digits",
        None,
        12,
        True,
    )
    assert head.headers == [
        (b"host", b"localhost:8000"),
        (b"content-type", b"application/json"),
        (b"content-length", b"12"),
    ]
    assert GOOD[head.size :] == b'{"inputs":1}'


def test_a_version_and_connection_close() -> None:
    head = parse_head(
        b"POST /v2/models/m/versions/3/infer HTTP/1.1\r\n"
        b"Connection: Keep-Alive, CLOSE\r\nContent-Length: 0\r\n\r\n"
    )
    assert isinstance(head, RequestHead)
    assert (head.model, head.version, head.keep_alive) == ("m", "3", False)


@pytest.mark.parametrize("cut", [0, 1, 10, 16, 40, len(GOOD) - len(b'{"inputs":1}') - 1])
def test_a_head_cut_short_asks_for_more(cut: int) -> None:
    assert parse_head(GOOD[:cut]) is INCOMPLETE


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /v2/health/ready HTTP/1.1\r\n\r\n",
        b"POST /v2/models/digits/ready HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        b"POST /v2/models/digits/infer HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
        b"POST /v2/models/digits/infer HTTP/1.1\r\n\r\n",  # no Content-Length
        b"POST /v2/models/digits/infer HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /v2/models/digits/infer HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        b"POST /v2/models/digits/infer HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
        b"POST /v2/models/digits/infer HTTP/1.1\r\nContent-Length: 1\r\n Folded: x\r\n\r\n",
        b"POST /v2/models/digits/infer HTTP/1.1\r\nBad Name: x\r\nContent-Length: 1\r\n\r\n",
        b"POST /v2/models/digits/infer HTTP/1.1\r\nX: a\nb\r\nContent-Length: 1\r\n\r\n",
        INFER + b"Expect: 100-continue\r\nContent-Length: 1\r\n\r\n",
        INFER + b"Connection: upgrade\r\nContent-Length: 1\r\n\r\n",
        b"POST /v2/models/dig%69ts/infer HTTP/1.1\r\nContent-Length: 1\r\n\r\n",
        b"POST /v2/models/digits/infer?x=1 HTTP/1.1\r\nContent-Length: 1\r\n\r\n",
        b"POST /v2/models/digits/infer  HTTP/1.1\r\nContent-Length: 1\r\n\r\n",
        b"POST /v2/models/digits/infer HTTP/1.1\r\nX: \x00\r\nContent-Length: 1\r\n\r\n",
        b"POST /v2/models/" + b"a" * MAX_HEAD,  # no end of head in sight
    ],
)
def test_anything_unusual_is_handed_to_uvicorn(raw: bytes) -> None:
    assert parse_head(raw) is HANDOFF


class _Oracle:
    """What httptools reads from a request: method, URL, headers, and where the body starts."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.complete = False
        self.head_done = False
        self.keep_alive: bool | None = None
        self.parser: Any = None

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.head_done = True
        # Read here: once a message completes, llhttp resets its flags for the next one, and
        # should_keep_alive() answers for that (a Content-Length: 0 request completes at once).
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


def httptools_reading(raw: bytes) -> tuple[_Oracle, Any] | None:
    oracle = _Oracle()
    parser = oracle.parser = httptools.HttpRequestParser(oracle)
    try:
        parser.feed_data(raw)
    except httptools.HttpParserError:
        return None
    return oracle, parser


_names = st.sampled_from(
    [
        b"Host",
        b"Content-Type",
        b"X-Id",
        b"content-LENGTH",
        b"Connection",
        b"Transfer-Encoding",
        b"Expect",
        b"Upgrade",
    ]
)
_values = st.one_of(
    st.sampled_from(
        [b"localhost", b" spaced ", b"12", b"close", b"keep-alive, Close", b"chunked", b"upgrade"]
    ),
    st.binary(max_size=8),
)
_lines = st.one_of(
    st.tuples(_names, _values).map(lambda t: t[0] + b": " + t[1]),
    st.binary(max_size=12),
)
_starts = st.sampled_from(
    [
        b"POST /v2/models/digits/infer HTTP/1.1",
        b"POST /v2/models/digits/versions/1/infer HTTP/1.1",
        b"POST /v2/models/d/infer HTTP/1.0",
        b"POST /v2/models//infer HTTP/1.1",
        b"POST /v2/models/a b/infer HTTP/1.1",
    ]
)


@settings(max_examples=400, deadline=None)
@given(
    start=_starts,
    lines=st.lists(_lines, max_size=5),
    length=st.one_of(st.none(), st.integers(0, 20)),
    separator=st.sampled_from([b"\r\n", b"\n"]),
    body=st.binary(max_size=24),
)
@example(
    start=b"POST /v2/models/digits/infer HTTP/1.1",
    lines=[b"Host: x"],
    length=3,
    separator=b"\r\n",
    body=b"abc",
)
def test_what_the_parser_accepts_httptools_reads_the_same(
    start: bytes, lines: list[bytes], length: int | None, separator: bytes, body: bytes
) -> None:
    """Any head accepted agrees with httptools on path, headers, length and where the body is."""
    if length is not None:
        lines = [*lines, b"Content-Length: %d" % length]
    raw = separator.join([start, *lines]) + separator + separator + body
    head = parse_head(raw)
    if head is HANDOFF or head is INCOMPLETE:
        return
    assert isinstance(head, RequestHead)
    read = httptools_reading(raw[: head.size + head.content_length])  # then the next request
    assert read is not None, "accepted a head that httptools refuses"
    oracle, parser = read
    assert oracle.head_done
    assert parser.get_method() == b"POST"
    path = "/v2/models/" + head.model + (f"/versions/{head.version}" if head.version else "")
    assert oracle.url.decode() == path + "/infer"
    assert head.headers == [(name, value.strip(b" \t")) for name, value in oracle.headers]
    declared = [int(value) for name, value in oracle.headers if name == b"content-length"]
    assert declared == [head.content_length]
    assert head.keep_alive == oracle.keep_alive
    if len(body) >= head.content_length:
        assert oracle.complete
        assert oracle.body == raw[head.size : head.size + head.content_length]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_break_the_parser(raw: bytes) -> None:
    verdict = parse_head(b"POST /v2/models/" + raw)
    assert verdict is HANDOFF or verdict is INCOMPLETE or isinstance(verdict, RequestHead)


_path_parts = st.sampled_from(
    ["v2", "models", "versions", "infer", "m", "1", "", "%41", "a?b", "x.y"]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_path_parts, min_size=1, max_size=7))
def test_the_parser_and_the_asgi_path_agree_on_inference_paths(parts: list[str]) -> None:
    """Both serving paths find the same model and version in a path, and refuse the same ones."""
    path = "/" + "/".join(parts)
    head = parse_head(f"POST {path} HTTP/1.1\r\nContent-Length: 0\r\n\r\n".encode())
    expected = match_infer_path(path)
    if "%" in path or "?" in path:
        assert head is HANDOFF  # uvicorn decodes and splits those first
    elif expected is None:
        assert head is HANDOFF
    else:
        assert isinstance(head, RequestHead)
        assert (head.model, head.version) == expected
