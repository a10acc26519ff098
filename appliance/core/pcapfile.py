"""Reading capture files for offline replay: classic pcap (any byte order, us or ns) and pcapng.

`scan` checks a whole file up front and reports the first problem with the file name and the
byte offset where it is; `packets` then yields (timestamp ns, link type, frame) in file order.
Runs in tcpcopyd's main process (scan, before anything starts) and in the offline reader process.

What is refused (PcapError, tcpcopyd exits 65) and what is a counted drop:
- refused: anything but a regular file (a FIFO or a device cannot be read twice, and /dev/zero
  never ends), a foreign magic, a truncated record or block, a length field outside its bounds
  (pcap captured length over MAX_RECORD; pcapng block total length under 12, not a multiple of 4,
  over MAX_BLOCK or not repeated at the block's end; a packet longer than its block);
- dropped and counted in `drops` (the reader reports them): a packet longer than MAX_FRAME
  (`oversized`: no IP packet the pipeline carries is that long), a pcapng packet of an interface
  the section never described (`unknown_interface`), a packet of a link type the reader cannot
  strip (`link_unsupported`, per pcapng interface).
The file is read in chunks of CHUNK bytes; a length field is checked before anything is read for it.
"""

from __future__ import annotations

import io
import os
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from appliance.core.counters import FILE_DROPS
from appliance.core.packet import DLT_EN10MB, DLT_LINUX_SLL, DLT_LINUX_SLL2, DLT_RAW, DLT_RAW_ALT

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1000),      # little-endian, microseconds
    b"\xa1\xb2\xc3\xd4": (">", 1000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),         # little-endian, nanoseconds
    b"\xa1\xb2\x3c\x4d": (">", 1),
}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
PCAPNG_ORDERS = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}

CHUNK = 1 << 20
MAX_LINK_HEADER = 64                       # Ethernet with stacked VLAN tags and an FCS, Linux cooked v2
MAX_FRAME = 0xFFFF + MAX_LINK_HEADER       # the largest IPv4 packet and its link header
MAX_RECORD = 256 * 1024                    # pcap: tcpdump's largest snaplen; beyond it the header is corrupt
MAX_BLOCK = 16 << 20                       # pcapng: Wireshark's bound on a block; beyond it, corrupt
SUPPORTED_LINKTYPES = frozenset((DLT_EN10MB, DLT_RAW, DLT_RAW_ALT, DLT_LINUX_SLL, DLT_LINUX_SLL2))
DROP_COUNTERS = FILE_DROPS                 # the names counted in `drops`: ReaderCounters' `file` group

BT_SHB, BT_IDB, BT_PB, BT_SPB, BT_EPB = 0x0A0D0D0A, 1, 2, 3, 6
OPT_END, OPT_TSRESOL, OPT_TSOFFSET = 0, 9, 14


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
    drops: dict[str, int] = field(default_factory=dict)


class _Chunks:
    """A file read a chunk at a time: `buf` holds its bytes from file offset `base` on."""

    __slots__ = ("f", "buf", "base")

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.buf = b""
        self.base = 0

    def refill(self, at: int, need: int) -> bytes:
        """Keep buf[at:] and read on until `need` bytes follow it (fewer at the end of the file);
        `at` is then 0. The caller has checked `need` against its bounds."""
        rest = self.buf[at:]
        self.base += at
        self.buf = rest + self.f.read(max(need - len(rest), CHUNK))
        return self.buf

    def next_header(self, at: int, size: int, path: str, what: str) -> bytes:
        """`refill` for the fixed-size header that starts at `at`: b"" at a clean end of the file,
        PcapError when the file ends inside it."""
        buf = self.refill(at, size)
        if buf and len(buf) < size:
            raise PcapError(path, self.base, f"truncated {what} ({len(buf)} of {size} bytes)")
        return buf


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISDIR, "a directory"),
          (stat.S_ISSOCK, "a socket"))


def _open(path: str) -> BinaryIO:
    # O_NONBLOCK: opening a FIFO must not wait for a writer before it is refused.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise PcapError(path, 0, f"cannot open: {exc.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = next((name for test, name in _KINDS if test(mode)), "a device")
        raise PcapError(path, 0, f"{kind}, not a regular file (offline replay reads each file twice)")
    return os.fdopen(fd, "rb")


def scan(path: str) -> FileSummary:
    """Check the whole file; count packets and find the time span. Raises PcapError."""
    count, first, last, linktype = 0, 0, 0, 0
    drops: dict[str, int] = {}
    for _frame, lt, ts in _iter_file(path, None, False, drops):
        if not count:
            first = ts
        count, last, linktype = count + 1, ts, lt
    return FileSummary(path, count, first, last, linktype, drops)


def packets(path: str, data: bytes | None = None,
            drops: dict[str, int] | None = None) -> Iterator[tuple[int, int, bytes]]:
    """(timestamp ns, link type, frame) of every packet, in file order. Raises PcapError.

    Packets that cannot be replayed are counted in `drops` (names in DROP_COUNTERS) instead.
    `data` gives the file's bytes directly (fuzzing); `path` then only names it in errors."""
    for frame, linktype, ts in _iter_file(path, data, True, {} if drops is None else drops):
        yield ts, linktype, frame  # type: ignore[misc]


def _iter_file(path: str, data: bytes | None, frames: bool,
               drops: dict[str, int]) -> Iterator[tuple[bytes | None, int, int]]:
    try:
        with (io.BytesIO(data) if data is not None else _open(path)) as f:
            src = _Chunks(f)
            magic = src.refill(0, 4)[:4]
            if magic in PCAP_MAGICS:
                yield from _pcap(path, src, frames, drops)
            elif magic == PCAPNG_MAGIC:
                yield from _pcapng(path, src, frames, drops)
            else:
                raise PcapError(path, 0, f"not a pcap or pcapng file (magic {magic.hex() or 'empty'})")
    except OSError as exc:
        raise PcapError(path, 0, f"cannot read: {exc.strerror}") from None


def _drop(drops: dict[str, int], name: str) -> None:
    drops[name] = drops.get(name, 0) + 1


def _pcap(path: str, src: _Chunks, frames: bool,
          drops: dict[str, int]) -> Iterator[tuple[bytes | None, int, int]]:
    """Records of a classic pcap: 16-byte header (seconds, fraction, captured and original length)."""
    buf = src.buf if len(src.buf) >= 24 else src.refill(0, 24)
    if len(buf) < 24:
        raise PcapError(path, len(buf), "file too short for a pcap header")
    order, unit = PCAP_MAGICS[buf[:4]]
    linktype = struct.unpack_from(order + "I", buf, 20)[0] & 0x0FFFFFFF
    dropped = None if linktype in SUPPORTED_LINKTYPES else "link_unsupported"
    header = struct.Struct(order + "IIII")
    at = 24
    while True:
        if at + 16 > len(buf):
            buf, at = src.next_header(at, 16, path, "record header"), 0
            if not buf:
                return
        sec, frac, caplen, _orig = header.unpack_from(buf, at)
        if caplen > MAX_RECORD:
            raise PcapError(path, src.base + at, f"corrupt record header (captured length {caplen})")
        end = at + 16 + caplen
        if end > len(buf):
            buf, at, end = src.refill(at, 16 + caplen), 0, 16 + caplen
            if end > len(buf):
                raise PcapError(path, src.base, f"truncated record ({len(buf) - 16} of {caplen} bytes)")
        if dropped or caplen > MAX_FRAME:
            _drop(drops, dropped or "oversized")
        else:
            yield (buf[at + 16:end] if frames else None), linktype, sec * 1_000_000_000 + frac * unit
        at = end


@dataclass(frozen=True, slots=True)
class _Layouts:
    """The pcapng structures in one byte order."""
    head: struct.Struct        # block type, block total length
    u32: struct.Struct
    shb: struct.Struct         # byte-order magic (raw), major, minor
    idb: struct.Struct         # link type, reserved, snaplen
    opt: struct.Struct         # option code, option length
    i64: struct.Struct
    epb: struct.Struct         # interface, ts high, ts low, captured length, original length
    pb: struct.Struct          # interface (u16), drops (u16), then as epb


LAYOUTS = {o: _Layouts(struct.Struct(o + "II"), struct.Struct(o + "I"), struct.Struct(o + "4sHH"),
                       struct.Struct(o + "HHI"), struct.Struct(o + "HH"), struct.Struct(o + "q"),
                       struct.Struct(o + "IIIII"), struct.Struct(o + "HHIIII")) for o in "<>"}

# An interface of a pcapng section: link type, ts multiplier, ts divisor, ts offset ns, snaplen, drop reason.
_Iface = tuple[int, int, int, int, int, str | None]


def _pcapng(path: str, src: _Chunks, frames: bool,
            drops: dict[str, int]) -> Iterator[tuple[bytes | None, int, int]]:
    """Blocks of a pcapng file; a section header (SHB) sets the byte order and starts a new
    list of interfaces (IDB), whose link type and timestamp unit apply to their packets."""
    lay = LAYOUTS["<"]
    ifaces: list[_Iface] = []
    buf, at, last_ts = src.buf, 0, 0
    while True:
        if at + 12 > len(buf):
            buf, at = src.next_header(at, 12, path, "block header"), 0
            if not buf:
                return
        btype, blen = lay.head.unpack_from(buf, at)
        if btype == BT_SHB:
            order = PCAPNG_ORDERS.get(buf[at + 8:at + 12])
            if order is None:
                raise PcapError(path, src.base + at + 8,
                                f"bad pcapng byte-order magic {buf[at + 8:at + 12].hex()}")
            lay, ifaces = LAYOUTS[order], []
            blen = lay.u32.unpack_from(buf, at + 4)[0]
        if blen < 12 or blen & 3 or blen > MAX_BLOCK:
            raise PcapError(path, src.base + at,
                            f"corrupt pcapng block (type {btype:#x}, total length {blen})")
        end = at + blen
        if end > len(buf):
            buf, at, end = src.refill(at, blen), 0, blen
            if end > len(buf):
                raise PcapError(path, src.base, f"truncated pcapng block ({len(buf)} of {blen} bytes)")
        if lay.u32.unpack_from(buf, end - 4)[0] != blen:
            raise PcapError(path, src.base + at, f"corrupt pcapng block (type {btype:#x}: trailing length "
                                                  f"differs from {blen})")
        if btype == BT_EPB or btype == BT_PB:
            if blen < 32:
                raise PcapError(path, src.base + at, f"corrupt packet block (total length {blen})")
            if btype == BT_EPB:
                iface, hi, lo, caplen, _orig = lay.epb.unpack_from(buf, at + 8)
            else:
                iface, _d, hi, lo, caplen, _orig = lay.pb.unpack_from(buf, at + 8)
            if caplen > blen - 32:
                raise PcapError(path, src.base + at, f"corrupt packet block (captured length {caplen} "
                                                      f"in a block of {blen})")
            if iface >= len(ifaces):
                _drop(drops, "unknown_interface")
            else:
                linktype, mul, div, off, _snap, dropped = ifaces[iface]
                if dropped or caplen > MAX_FRAME:
                    _drop(drops, dropped or "oversized")
                else:
                    last_ts = ((hi << 32) | lo) * mul // div + off
                    yield (buf[at + 28:at + 28 + caplen] if frames else None), linktype, last_ts
        elif btype == BT_SPB:
            # no timestamp and interface 0: it goes out with the previous packet's time
            if blen < 16:
                raise PcapError(path, src.base + at, f"corrupt simple packet block (total length {blen})")
            if not ifaces:
                _drop(drops, "unknown_interface")
            else:
                linktype, _m, _d, _o, snap, dropped = ifaces[0]
                caplen = min(lay.u32.unpack_from(buf, at + 8)[0], blen - 16, snap or MAX_BLOCK)
                if dropped or caplen > MAX_FRAME:
                    _drop(drops, dropped or "oversized")
                else:
                    yield (buf[at + 12:at + 12 + caplen] if frames else None), linktype, last_ts
        elif btype == BT_IDB:
            ifaces.append(_interface(path, src.base, buf, at, blen, lay))
        elif btype == BT_SHB:
            _check_section(path, src.base, buf, at, blen, lay)
        at = end


def _check_section(path: str, base: int, buf: bytes, at: int, blen: int, lay: _Layouts) -> None:
    if blen < 28:
        raise PcapError(path, base + at, f"corrupt section header block (total length {blen})")
    _bom, major, minor = lay.shb.unpack_from(buf, at + 8)
    if major != 1:
        raise PcapError(path, base + at, f"pcapng version {major}.{minor} is not supported (1.x is)")


def _interface(path: str, base: int, buf: bytes, at: int, blen: int, lay: _Layouts) -> _Iface:
    """An IDB's link type, snaplen and timestamp unit (if_tsresol, default microseconds) and offset
    (if_tsoffset, seconds)."""
    if blen < 20:
        raise PcapError(path, base + at, f"corrupt interface description block (total length {blen})")
    linktype, _reserved, snaplen = lay.idb.unpack_from(buf, at + 8)
    resol, offset = 6, 0
    opt, end = at + 16, at + blen - 4
    while opt + 4 <= end:
        code, olen = lay.opt.unpack_from(buf, opt)
        if code == OPT_END:
            break
        if opt + 4 + olen > end:
            raise PcapError(path, base + opt, f"corrupt interface option (code {code}, length {olen})")
        if code == OPT_TSRESOL and olen >= 1:
            resol = buf[opt + 4]
        elif code == OPT_TSOFFSET and olen >= 8:
            offset = lay.i64.unpack_from(buf, opt + 4)[0]
        opt += 4 + ((olen + 3) & ~3)
    exp = resol & 0x7F
    if resol & 0x80:                                   # 2^-exp seconds
        mul, div = 1_000_000_000, 1 << exp
    elif exp <= 9:                                     # 10^-exp seconds
        mul, div = 10 ** (9 - exp), 1
    else:
        mul, div = 1, 10 ** (exp - 9)
    dropped = None if linktype in SUPPORTED_LINKTYPES else "link_unsupported"
    return linktype, mul, div, offset * 1_000_000_000, snaplen, dropped
