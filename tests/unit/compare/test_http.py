"""appliance.compare.http: response heads (whole, cut short, garbage) and request lines."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.compare.http import (
    MAX_PATH,
    ResponseHead,
    is_http_response,
    parse_request_line,
    parse_response_head,
)
from tests.unit.compare.kit import http_answer

FAST = settings(max_examples=400, deadline=None)


def test_whole_head() -> None:
    data = http_answer(201, b"{}", {"Content-Type": "Application/JSON; Charset=UTF-8", "X-A": "1"}, "Created")
    head = parse_response_head(data)
    assert head is not None
    assert (head.version, head.status, head.reason, head.truncated) == ("HTTP/1.1", 201, "Created", False)
    assert head.content_length == 2 and head.content_type == "application/json;charset=utf-8"
    assert head.headers["x-a"] == "1" and head.headers["server"] == "online/1.0"
    assert head.head_end == data.index(b"\r\n\r\n") + 4


def test_head_cut_mid_headers_keeps_whole_lines_only() -> None:
    data = http_answer(404, b"", {"X-Cut": "abcdefgh"}, "Not Found")
    cut = data[:data.index(b"abcd") + 2]
    head = parse_response_head(cut)
    assert head is not None and head.truncated and head.head_end is None
    assert head.status == 404 and "x-cut" not in head.headers and "date" in head.headers


def test_head_cut_in_the_status_line() -> None:
    assert parse_response_head(b"HTTP/1.1 503") == ResponseHead("HTTP/1.1", 503, "", truncated=True)
    assert parse_response_head(b"HTTP/1.1 50") == ResponseHead("HTTP/1.1", None, "", truncated=True)
    assert parse_response_head(b"HTTP/1.") == ResponseHead("HTTP/1.", None, "", truncated=True)


def test_not_http() -> None:
    for data in (b"", b"SSH-2.0-OpenSSH\r\n", b"HTTP/2 200\r\n\r\n", b"HTTP/1.1 2000 OK\r\n\r\n",
                 b"HTTP/1.1 abc OK\r\n\r\n", b"HTTP/1.x 200 OK\r\n\r\n", b"HTTP/1.1 099 Low\r\n\r\n",
                 b"\x00" * 40):
        assert parse_response_head(data) is None, data
    assert not is_http_response(b"HTTP/2 ") and is_http_response(b"HTTP/1.0 200")


def test_header_quirks() -> None:
    data = (b"HTTP/1.0 200 \r\nA: 1\r\nA: 2\r\nFolded: x\r\n  y\r\nno colon line\r\nBad Name: z\r\n"
            b"Content-Length: 7, 7\r\n\r\n")
    head = parse_response_head(data)
    assert head is not None and head.reason == ""
    assert head.headers["a"] == "1, 2" and head.headers["folded"] == "x y" and "bad name" not in head.headers
    assert head.content_length == 7
    conflicting = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 7, 8\r\n\r\n")
    assert conflicting is not None and conflicting.content_length is None
    negative = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n")
    assert negative is not None and negative.content_length is None


@FAST
@given(st.binary(max_size=600))
def test_garbage_never_raises(data: bytes) -> None:
    head = parse_response_head(data)
    assert head is None or is_http_response(data)
    parse_request_line(data)


@FAST
@given(st.binary(max_size=400))
def test_garbage_after_the_magic_never_raises(rest: bytes) -> None:
    head = parse_response_head(b"HTTP/1.1 " + rest)
    assert head is None or isinstance(head, ResponseHead)
    parse_request_line(b"GET /" + rest)


_NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
_VALUE = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30)


@FAST
@given(status=st.integers(100, 999), headers=st.dictionaries(_NAME, _VALUE, max_size=8),
       cut=st.integers(0, 2000))
def test_generated_heads_parse_back_whole_or_cut(status: int, headers: dict[str, str], cut: int) -> None:
    data = f"HTTP/1.1 {status} Reason\r\n".encode() + b"".join(
        f"{k}: {v}\r\n".encode() for k, v in headers.items()) + b"\r\nbody"
    head = parse_response_head(data)
    assert head is not None and head.status == status and not head.truncated
    assert dict(head.headers) == {k: v.strip() for k, v in headers.items()}
    part = parse_response_head(data[:cut])
    if cut >= len(b"HTTP/1."):
        assert part is not None
        assert set(part.headers) <= set(head.headers)              # a cut head never invents headers
        assert all(part.headers[k] == head.headers[k] for k in part.headers)


def test_request_lines() -> None:
    line = parse_request_line(b"GET /api/items?id=7#frag HTTP/1.1\r\nHost: x\r\n\r\n")
    assert line is not None and (line.method, line.path, line.target, line.version) == (
        "GET", "/api/items", "/api/items?id=7#frag", "HTTP/1.1")
    absolute = parse_request_line(b"POST http://example.test:8080/submit?q=1 HTTP/1.0\r\n")
    assert absolute is not None and absolute.path == "/submit"
    star = parse_request_line(b"OPTIONS * HTTP/1.1\r\n")
    assert star is not None and star.path == "*"
    cut = parse_request_line(b"DELETE /thing/4")
    assert cut is not None and cut.truncated and cut.path == "/thing/4" and cut.version is None
    partial_version = parse_request_line(b"GET /a HTTP/1")
    assert partial_version is not None and partial_version.version is None
    long = parse_request_line(b"GET /" + b"a" * 1000 + b" HTTP/1.1\r\n")
    assert long is not None and len(long.path) == MAX_PATH


def test_not_request_lines() -> None:
    for data in (b"", b"get / HTTP/1.1\r\n", b"GET / SPDY/3\r\n", b"GET /\r\n", b"GET  / HTTP/1.1\r\n",
                 b"GET /a\x01b HTTP/1.1\r\n", b"\x16\x03\x01\x02\x00", b"GET / HTTP/1.1 extra\r\n",
                 b"VERYLONGMETHODNAMEXXXXXXX / HTTP/1.1\r\n"):
        assert parse_request_line(data) is None, data
