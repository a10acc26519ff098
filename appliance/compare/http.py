"""HTTP/1.x heads for compare mode: an answer's status line and headers, a request's request line.

Pure functions on bytes, used by tcpcopyd's verdict (appliance/compare/verdict.py) on the heads the
assemblers kept. A head is only the first bytes of an answer, so it may end mid-headers: the parser
returns what it read with `truncated` set, and drops the last, partial line. Input is untrusted
and never raises: anything that is not an HTTP/1.x head yields None ("not HTTP"). Work is bounded by
MAX_HEAD bytes and MAX_HEADERS lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

HTTP_MAGIC = b"HTTP/1."
MAX_HEAD = 65536
MAX_HEADERS = 256
MAX_REQUEST_LINE = 8192
MAX_PATH = 256                 # a grouping key longer than this is cut (and marked with a trailing "…")
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """`headers`: names lower-cased, repeated headers joined with ", " (latin-1 text);
    `content_type`: lower-cased without blanks, for comparing; `head_end`: offset of the body in the
    bytes parsed, None when truncated."""

    version: str
    status: int | None
    reason: str
    headers: Mapping[str, str] = field(default_factory=dict)
    content_length: int | None = None
    content_type: str | None = None
    head_end: int | None = None
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class RequestLine:
    """`path`: the target without query string or fragment (absolute-form reduced to its path),
    at most MAX_PATH characters; the grouping key of the diff report."""

    method: str
    target: str
    path: str
    version: str | None
    truncated: bool = False


def is_http_response(head: bytes) -> bool:
    """How compare mode detects HTTP: the answer starts like an HTTP/1.x status line."""
    return head[:len(HTTP_MAGIC)] == HTTP_MAGIC


def parse_response_head(data: bytes) -> ResponseHead | None:
    """The status line and headers at the start of an answer, or None when it is not HTTP/1.x."""
    data = data[:MAX_HEAD]
    if not is_http_response(data):
        return None
    end = data.find(b"\r\n\r\n")
    truncated = end < 0
    lines = (data if truncated else data[:end]).split(b"\r\n")
    if truncated:
        lines.pop()                       # the partial last line (or b"" after a final CRLF)
        if not lines:                     # not even the status line
            return _status_only(data)
    status_line = _status_line(lines[0])
    if status_line is None:
        return None
    version, status, reason = status_line
    headers: dict[str, str] = {}
    last = ""
    for raw in lines[1:MAX_HEADERS + 1]:
        if raw[:1] in (b" ", b"\t") and last:            # obsolete line folding
            headers[last] += " " + raw.strip().decode("latin-1")
            continue
        name, colon, value = raw.partition(b":")
        if not colon or not name or not _is_token(name):
            last = ""
            continue                      # not a header line: skipped
        last = name.decode("ascii").lower()
        text = value.strip().decode("latin-1")
        headers[last] = f"{headers[last]}, {text}" if last in headers else text
    return ResponseHead(
        version, status, reason, headers, _content_length(headers.get("content-length")),
        _normalize_media_type(headers.get("content-type")), None if truncated else end + 4, truncated)


def _status_only(data: bytes) -> ResponseHead | None:
    """A head cut inside its status line: the version, and the status when its digits are whole."""
    parts = data.split(b" ", 2)
    version = parts[0]
    if len(version) < 8:
        return ResponseHead(version.decode("ascii"), None, "", truncated=True)
    if len(version) != 8 or not version[7:8].isdigit():
        return None
    status = parts[1] if len(parts) > 1 else b""
    whole = len(status) == 3 and status.isdigit() and status[:1] != b"0"
    return ResponseHead(version.decode("ascii"), int(status) if whole else None, "", truncated=True)


def _status_line(line: bytes) -> tuple[str, int, str] | None:
    parts = line.split(b" ", 2)
    if len(parts) < 2:
        return None
    version, status = parts[0], parts[1]
    if len(version) != 8 or not version[7:8].isdigit() or len(status) != 3 or not status.isdigit() \
            or status[:1] == b"0":
        return None
    reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
    return version.decode("ascii"), int(status), reason


def _is_token(name: bytes) -> bool:
    return all(b in _TOKEN for b in name)


def _content_length(value: str | None) -> int | None:
    """A valid Content-Length (repeated identical values allowed, RFC 9110 8.6), else None."""
    if value is None:
        return None
    values = {v.strip() for v in value.split(",")}
    if len(values) != 1:
        return None
    text = values.pop()
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        return None
    return int(text)


def _normalize_media_type(value: str | None) -> str | None:
    return None if value is None else "".join(value.lower().split())


def parse_request_line(data: bytes) -> RequestLine | None:
    """The request line at the start of a client's request bytes, or None when it is not HTTP/1.x.
    A line cut before its end is returned with `truncated` (its target may be cut too)."""
    data = data[:MAX_REQUEST_LINE]
    end = data.find(b"\n")
    truncated = end < 0
    line = data if truncated else data[:end].removesuffix(b"\r")
    parts = line.split(b" ")
    method = parts[0]
    if not method or len(method) > 20 or not _is_token(method) or not method.isupper():
        return None
    if len(parts) < 2 or not parts[1]:
        return None
    if len(parts) > 3 or (len(parts) == 2 and not truncated):
        return None
    target = parts[1]
    if any(b <= 0x20 or b >= 0x7F for b in target):
        return None
    version: str | None = None
    if len(parts) == 3:
        v = parts[2]
        if len(v) == 8 and v.startswith(HTTP_MAGIC) and v[7:8].isdigit():
            version = v.decode("ascii")
        elif not (truncated and len(v) < 8 and HTTP_MAGIC.startswith(v)):
            return None
    text = target.decode("ascii")
    return RequestLine(method.decode("ascii"), text, _path(text), version, truncated)


def _path(target: str) -> str:
    if "://" in target[:16]:
        after = target.split("://", 1)[1]
        slash = after.find("/")
        target = after[slash:] if slash >= 0 else "/"
    for sep in "?#":
        target = target.split(sep, 1)[0]
    return target if len(target) <= MAX_PATH else target[:MAX_PATH - 1] + "…"
