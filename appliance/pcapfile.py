"""Reading capture files for offline replay: classic pcap (any byte order, us or ns) and pcapng.

`scan` checks a whole file up front and reports the first problem with the file name and the
byte offset where it is; `packets` then yields (timestamp ns, link type, frame) in file order.
Runs in the supervisor (scan, before anything starts) and in the offline reader process.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import dpkt

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1000),      # little-endian, microseconds
    b"\xa1\xb2\xc3\xd4": (">", 1000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),         # little-endian, nanoseconds
    b"\xa1\xb2\x3c\x4d": (">", 1),
}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
MAX_RECORD = 256 * 1024


class PcapError(ValueError):
    """A capture file that cannot be replayed; the message names the file and the byte offset."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"{path}: {reason} at byte offset {offset}")
        self.path = path
        self.offset = offset


@dataclass(frozen=True, slots=True)
class FileSummary:
    path: str
    packets: int
    first_ns: int
    last_ns: int
    linktype: int


def _pcap_records(path: str, data: memoryview) -> Iterator[tuple[int, int, int, int]]:
    """(offset of the frame, length, timestamp ns, link type) of each record of a classic pcap."""
    if len(data) < 24:
        raise PcapError(path, len(data), "file too short for a pcap header")
    order, unit = PCAP_MAGICS[bytes(data[:4])]
    linktype = struct.unpack_from(order + "I", data, 20)[0] & 0x0FFFFFFF
    header = struct.Struct(order + "IIII")
    at = 24
    while at < len(data):
        if at + 16 > len(data):
            raise PcapError(path, at, f"truncated record header ({len(data) - at} of 16 bytes)")
        sec, frac, caplen, _orig = header.unpack_from(data, at)
        if caplen > MAX_RECORD:
            raise PcapError(path, at, f"corrupt record header (captured length {caplen})")
        if at + 16 + caplen > len(data):
            raise PcapError(path, at, f"truncated record ({len(data) - at - 16} of {caplen} bytes)")
        yield at + 16, caplen, sec * 1_000_000_000 + frac * unit, linktype
        at += 16 + caplen


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise PcapError(path, 0, f"cannot read: {exc.strerror}") from None


def scan(path: str) -> FileSummary:
    """Check the whole file; count packets and find the time span. Raises PcapError."""
    data = _read(path)
    count, first, last, linktype = 0, 0, 0, 0
    for _frame, lt, ts in _iter(path, data, frames=False):
        if not count:
            first = ts
        count, last, linktype = count + 1, ts, lt
    return FileSummary(path, count, first, last, linktype)


def packets(path: str, data: bytes | None = None) -> Iterator[tuple[int, int, bytes]]:
    """(timestamp ns, link type, frame) of every packet, in file order. Raises PcapError.

    `data` gives the file's bytes directly (fuzzing); `path` then only names it in errors."""
    data = _read(path) if data is None else data
    for frame, linktype, ts in _iter(path, data, frames=True):
        yield ts, linktype, frame  # type: ignore[misc]


def _iter(path: str, data: bytes, frames: bool) -> Iterator[tuple[object, int, int]]:
    magic = data[:4]
    if magic in PCAP_MAGICS:
        view = memoryview(data)
        for offset, length, ts, linktype in _pcap_records(path, view):
            yield (bytes(view[offset:offset + length]) if frames else None), linktype, ts
        return
    if magic == PCAPNG_MAGIC:
        yield from _pcapng(path, data, frames)
        return
    raise PcapError(path, 0, f"not a pcap or pcapng file (magic {magic.hex() or 'empty'})")


def _pcapng(path: str, data: bytes, frames: bool) -> Iterator[tuple[object, int, int]]:
    stream = io.BytesIO(data)
    try:
        reader = dpkt.pcapng.Reader(stream)
    except Exception as exc:  # noqa: BLE001 - dpkt raises many kinds on damaged input
        raise PcapError(path, 0, f"bad pcapng section header ({exc!r})") from None
    linktype = reader.datalink()
    try:
        for ts, frame in reader:
            yield (bytes(frame) if frames else None), linktype, int(round(ts * 1e9))
    except Exception as exc:  # noqa: BLE001 - dpkt's pcapng reader raises many kinds on damaged input
        raise PcapError(path, stream.tell(), f"corrupt or truncated pcapng block ({exc!r})") from None
