"""IPv4/TCP header parsing and packet building for the hot path.

Pure functions on bytes: no sockets, no clock. Used by capture (to find the flow key), by the
rewrite workers (to turn captured frames into segments and segments into packets) and by
interceptd (to cut a response down to its headers). IPv4 only; IP options are skipped on
parse and never emitted.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Final

# TCP flag bits
FIN: Final = 0x01
SYN: Final = 0x02
RST: Final = 0x04
PSH: Final = 0x08
ACK: Final = 0x10
URG: Final = 0x20

# TCP option kinds
OPT_EOL: Final = 0
OPT_NOP: Final = 1
OPT_MSS: Final = 2
OPT_WSCALE: Final = 3
OPT_SACK_OK: Final = 4
OPT_TIMESTAMP: Final = 8

IPV4_HEADER_INT: Final = struct.Struct("!BBHHHBBHII")           # addresses as 32-bit ints
IPV4_TCP_HEADER: Final = struct.Struct("!BBHHHBBHIIHHIIBBHHH")  # both headers, no IP options
TCP_HEADER: Final = struct.Struct("!HHIIBBHHH")
_U32: Final = struct.Struct("!I")
_TS_OPTION: Final = struct.Struct("!BBII")

MIN_IP_HEADER: Final = 20
MIN_TCP_HEADER: Final = 20
SEQ_MOD: Final = 1 << 32

# Link types seen by capture (libpcap DLT values)
DLT_EN10MB: Final = 1
DLT_RAW: Final = 12
DLT_LINUX_SLL: Final = 113
DLT_RAW_ALT: Final = 101
DLT_LINUX_SLL2: Final = 276
ETH_P_IP: Final = 0x0800
ETH_P_8021Q: Final = 0x8100


class MalformedPacket(ValueError):
    """A frame that cannot be an IPv4/TCP segment; the caller counts it as a drop."""


@dataclass(slots=True)
class TcpSegment:
    """One parsed IPv4/TCP segment. Addresses are 32-bit ints, seq/ack 32-bit ints.

    `payload_len` is taken from the IP total length, so it is right for headers-only copies
    (interceptd's response headers) where `payload` is empty.
    """

    src_ip: int
    dst_ip: int
    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    window: int
    options: bytes
    payload: bytes
    payload_len: int
    ip_id: int
    ttl: int = 64

    def from_client(self, ip: int, port: int) -> TcpSegment:
        """This segment as if sent from another client address (a copy; dataclasses.replace is slow)."""
        return TcpSegment(ip, self.dst_ip, port, self.dst_port, self.seq, self.ack, self.flags, self.window,
                          self.options, self.payload, self.payload_len, self.ip_id, self.ttl)

    @property
    def seq_len(self) -> int:
        """Sequence space consumed: payload plus one for SYN and for FIN."""
        return self.payload_len + (1 if self.flags & SYN else 0) + (1 if self.flags & FIN else 0)


@dataclass(slots=True)
class TcpOptions:
    mss: int | None = None
    wscale: int | None = None
    sack_ok: bool = False
    ts_val: int | None = None
    ts_ecr: int | None = None


def ip_to_int(text: str) -> int:
    value: int = _U32.unpack(socket.inet_aton(text))[0]
    return value


def int_to_ip(value: int) -> str:
    return socket.inet_ntoa(_U32.pack(value))


def seq_lt(a: int, b: int) -> bool:
    """a < b in 32-bit sequence space."""
    return ((a - b) & 0xFFFFFFFF) > 0x7FFFFFFF


def seq_le(a: int, b: int) -> bool:
    return a == b or seq_lt(a, b)


def seq_diff(a: int, b: int) -> int:
    """Signed distance a - b in sequence space."""
    d = (a - b) & 0xFFFFFFFF
    return d - SEQ_MOD if d & 0x80000000 else d


def parse_options(options: bytes) -> TcpOptions:
    """Parse the options we act on; unknown or truncated options end the walk."""
    out = TcpOptions()
    i, n = 0, len(options)
    while i < n:
        kind = options[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= n:
            break
        size = options[i + 1]
        if size < 2 or i + size > n:
            break
        if kind == OPT_MSS and size == 4:
            out.mss = (options[i + 2] << 8) | options[i + 3]
        elif kind == OPT_WSCALE and size == 3:
            out.wscale = min(options[i + 2], 14)
        elif kind == OPT_SACK_OK and size == 2:
            out.sack_ok = True
        elif kind == OPT_TIMESTAMP and size == 10:
            _, _, out.ts_val, out.ts_ecr = _TS_OPTION.unpack_from(options, i)
        i += size
    return out


def ts_val_of(options: bytes) -> int | None:
    """The timestamp option's TSval, or None; the usual NOP, NOP, TS layout without a walk."""
    if len(options) == 12 and options[2] == OPT_TIMESTAMP and options[0] == OPT_NOP and options[3] == 10:
        value: int = _U32.unpack_from(options, 4)[0]
        return value
    return parse_options(options).ts_val if options else None


def timestamp_offset(options: bytes) -> int:
    """Offset of the timestamp option inside `options`, or -1."""
    i, n = 0, len(options)
    while i < n:
        kind = options[i]
        if kind == OPT_EOL:
            return -1
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= n:
            return -1
        size = options[i + 1]
        if size < 2 or i + size > n:
            return -1
        if kind == OPT_TIMESTAMP and size == 10:
            return i
        i += size
    return -1


def with_timestamps(options: bytes, ts_val: int, ts_ecr: int) -> bytes:
    """Return options with the timestamp option's values replaced (options unchanged if absent)."""
    at = timestamp_offset(options)
    if at < 0:
        return options
    patched = bytearray(options)
    _TS_OPTION.pack_into(patched, at, OPT_TIMESTAMP, 10, ts_val & 0xFFFFFFFF, ts_ecr & 0xFFFFFFFF)
    return bytes(patched)


def timestamp_option(ts_val: int, ts_ecr: int) -> bytes:
    """NOP, NOP, TS: the 12-byte block for segments we forge."""
    return b"\x01\x01" + _TS_OPTION.pack(OPT_TIMESTAMP, 10, ts_val & 0xFFFFFFFF, ts_ecr & 0xFFFFFFFF)


def mss_option(mss: int) -> bytes:
    return struct.pack("!BBH", OPT_MSS, 4, mss)


def parse_ipv4_tcp(data: bytes | memoryview, keep_payload: bool = True) -> TcpSegment:
    """Parse an IPv4 packet carrying TCP. Raises MalformedPacket on anything else.

    The payload is cut at the IP total length (trailing Ethernet padding is ignored). A capture
    shorter than the total length (snaplen, or a headers-only copy) yields a shorter payload but
    the true `payload_len`.
    """
    n = len(data)
    if n < MIN_IP_HEADER + MIN_TCP_HEADER:
        raise MalformedPacket(f"too short for IPv4+TCP: {n} bytes")
    if data[0] == 0x45:
        # the common case, no IP options: both headers in one unpack
        (_v, _tos, total_len, ip_id, frag, ttl, proto, _csum, src, dst,
         sport, dport, seq, ack, off_byte, flags, window, _tcsum, _urg) = IPV4_TCP_HEADER.unpack_from(data, 0)
        ihl = MIN_IP_HEADER
    else:
        ver_ihl, _tos, total_len, ip_id, frag, ttl, proto, _csum, src, dst = IPV4_HEADER_INT.unpack_from(data, 0)
        if ver_ihl >> 4 != 4:
            raise MalformedPacket(f"not IPv4 (version {ver_ihl >> 4})")
        ihl = (ver_ihl & 0x0F) * 4
        if ihl < MIN_IP_HEADER:
            raise MalformedPacket(f"bad IP header length {ihl}")
        if n < ihl + MIN_TCP_HEADER:
            raise MalformedPacket(f"bad IP total length {total_len}")
        sport, dport, seq, ack, off_byte, flags, window, _tcsum, _urg = TCP_HEADER.unpack_from(data, ihl)
    if proto != 6:
        raise MalformedPacket(f"not TCP (protocol {proto})")
    if frag & 0x3FFF:
        raise MalformedPacket("IP fragment")
    # Captures of offloaded (TSO/GRO) packets may carry total length 0: take the frame length.
    if total_len == 0:
        total_len = n
    if total_len < ihl + MIN_TCP_HEADER:
        raise MalformedPacket(f"bad IP total length {total_len}")
    start = ihl + (off_byte >> 4) * 4
    if start < ihl + MIN_TCP_HEADER or start > total_len or start > n:
        raise MalformedPacket(f"bad TCP data offset {(off_byte >> 4) * 4}")
    options = bytes(data[ihl + MIN_TCP_HEADER:start]) if start > ihl + MIN_TCP_HEADER else b""
    if keep_payload and start < n and start < total_len:
        payload = bytes(data[start:total_len if total_len < n else n])
    else:
        payload = b""
    return TcpSegment(src, dst, sport, dport, seq, ack, flags & 0x3F, window, options, payload,
                      total_len - start, ip_id, ttl)


def _endpoint(data: bytes | memoryview, addr_at: int, port_at: int) -> tuple[int, int] | None:
    if len(data) < MIN_IP_HEADER + MIN_TCP_HEADER or data[0] >> 4 != 4 or data[9] != socket.IPPROTO_TCP:
        return None
    ihl = (data[0] & 0x0F) * 4
    if ihl < MIN_IP_HEADER or len(data) < ihl + 4:
        return None
    return int.from_bytes(data[addr_at:addr_at + 4], "big"), (data[ihl + port_at] << 8) | data[ihl + port_at + 1]


def client_key_of(data: bytes | memoryview) -> tuple[int, int] | None:
    """(src_ip, src_port) of an IPv4/TCP packet without a full parse; None if not one."""
    return _endpoint(data, 12, 0)


def server_key_of(data: bytes | memoryview) -> tuple[int, int] | None:
    """(dst_ip, dst_port) of an IPv4/TCP packet: the client half of a response."""
    return _endpoint(data, 16, 2)


def link_header_len(datalink: int, frame: bytes | memoryview) -> int:
    """Bytes before the IP header for a libpcap link type; -1 when the frame is not IPv4."""
    if datalink == DLT_EN10MB:
        if len(frame) < 14:
            return -1
        ethertype = (frame[12] << 8) | frame[13]
        offset = 14
        while ethertype == ETH_P_8021Q and len(frame) >= offset + 4:
            ethertype = (frame[offset + 2] << 8) | frame[offset + 3]
            offset += 4
        return offset if ethertype == ETH_P_IP else -1
    if datalink in (DLT_RAW, DLT_RAW_ALT):
        return 0
    if datalink == DLT_LINUX_SLL:
        if len(frame) < 16:
            return -1
        return 16 if ((frame[14] << 8) | frame[15]) == ETH_P_IP else -1
    if datalink == DLT_LINUX_SLL2:
        if len(frame) < 20:
            return -1
        return 20 if ((frame[0] << 8) | frame[1]) == ETH_P_IP else -1
    return -1


def frame_ip(datalink: int, frame: bytes | memoryview) -> memoryview | None:
    """The IPv4 packet inside a libpcap frame (a view, no copy); None when the frame carries none.
    Every process that opens captured frames (capture, reader, interceptd) starts here."""
    offset = link_header_len(datalink, frame)
    return None if offset < 0 else memoryview(frame)[offset:]


def tcp_flags_of(ip: bytes | memoryview) -> int | None:
    """The TCP flags byte of a packet that client_key_of accepted; None when the TCP header is cut
    before it."""
    ihl = (ip[0] & 0x0F) * 4
    return ip[ihl + 13] if len(ip) >= ihl + MIN_TCP_HEADER else None


def tcp_headers_of(ip: memoryview) -> memoryview | None:
    """The IP and TCP headers (with options) of a captured packet, as a view (interceptd keeps only
    these of each answer); None when the bytes are not one whole IPv4/TCP header. What it returns
    always passes parse_ipv4_tcp, which the rewrite worker applies: version 4, IHL and data offset at
    least 5 words, TCP, no fragment, both headers captured, the IP total length (0 from an offloading
    NIC) covering them."""
    n = len(ip)
    if n < 40 or ip[0] >> 4 != 4 or ip[9] != 6 or ((ip[6] << 8) | ip[7]) & 0x3FFF:
        return None
    ihl = (ip[0] & 0x0F) * 4
    if ihl < 20 or n < ihl + 20:
        return None
    end = ihl + (ip[ihl + 12] >> 4) * 4
    total = (ip[2] << 8) | ip[3]
    if end < ihl + 20 or n < end or (total and total < end):
        return None
    return ip[:end]


def headers_only(ip_packet: bytes | memoryview) -> bytes:
    """IP header + TCP header with options, no payload (the IP total length is kept); MalformedPacket
    when the bytes are not one whole IPv4/TCP header."""
    view = tcp_headers_of(memoryview(ip_packet))
    if view is None:
        raise MalformedPacket("not one whole IPv4/TCP header")
    return bytes(view)


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """The RFC 1071 sum of `data` (16-bit big-endian words, odd length zero-padded), in 0..0xFFFF.

    2**16 = 1 (mod 0xFFFF), so the whole buffer read as one big integer has the same residue as
    the sum of its words: one C-speed conversion instead of a Python loop over words. Sums of
    parts that start at even offsets add up (mod 0xFFFF) to the sum of the whole.
    """
    value = int.from_bytes(data, "big")
    rest = (value << 8 if len(data) & 1 else value) % 0xFFFF
    return rest if rest or not value else 0xFFFF      # ones' complement "negative zero" stays nonzero


def _finish(total: int) -> int:
    """Checksum field for a sum: a nonzero sum that is 0 mod 0xFFFF folds to 0xFFFF, checksum 0."""
    rest = total % 0xFFFF
    if rest:
        return 0xFFFF - rest
    return 0 if total else 0xFFFF


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """RFC 1071 checksum, returned as a big-endian 16-bit value."""
    return _finish(ones_sum(data) + initial)


def build_into(
    buf: bytearray | memoryview, at: int, src_ip: int, dst_ip: int, src_port: int, dst_port: int, seq: int,
    ack: int, flags: int, window: int, options: bytes = b"", payload: bytes | memoryview = b"", ip_id: int = 0,
    ttl: int = 64, payload_sum: int | None = None,
) -> int:
    """Write a complete IPv4/TCP packet into `buf` at `at`; its length. DF set, no IP options.

    Both checksums are computed from the field values (each 32-bit field counts as its two
    halves, which is its value mod 0xFFFF); only the options and payload bytes are summed.
    `payload_sum` is ones_sum(payload) when the caller already has it. `options` must be a
    multiple of 4 bytes long.
    """
    seq &= 0xFFFFFFFF
    ack &= 0xFFFFFFFF
    window &= 0xFFFF
    ip_id &= 0xFFFF
    n_opt = len(options)
    tcp_len = MIN_TCP_HEADER + n_opt + len(payload)
    off_flags = ((5 + n_opt // 4) << 12) | flags
    total = src_ip + dst_ip + 6 + tcp_len + src_port + dst_port + seq + ack + off_flags + window
    if n_opt:
        total += ones_sum(options)
    if payload:
        total += ones_sum(payload) if payload_sum is None else payload_sum
    ip_total = MIN_IP_HEADER + tcp_len
    ip_csum = _finish(0x4500 + ip_total + ip_id + 0x4000 + (ttl << 8 | 6) + src_ip + dst_ip)
    IPV4_TCP_HEADER.pack_into(buf, at, 0x45, 0, ip_total, ip_id, 0x4000, ttl, 6, ip_csum, src_ip, dst_ip,
                              src_port, dst_port, seq, ack, off_flags >> 8, flags, window, _finish(total), 0)
    at += 40
    if n_opt:
        buf[at:at + n_opt] = options
        at += n_opt
    if payload:
        buf[at:at + len(payload)] = payload
    return ip_total


def build_ipv4_tcp(
    src_ip: int, dst_ip: int, src_port: int, dst_port: int, seq: int, ack: int, flags: int,
    window: int, options: bytes = b"", payload: bytes | memoryview = b"", ip_id: int = 0, ttl: int = 64,
    payload_sum: int | None = None,
) -> bytes:
    """A complete IPv4/TCP packet as bytes (see build_into); options are zero-padded to 4 bytes."""
    if len(options) % 4:
        options = options + b"\x00" * (4 - len(options) % 4)
    buf = bytearray(40 + len(options) + len(payload))
    build_into(buf, 0, src_ip, dst_ip, src_port, dst_port, seq, ack, flags, window, options, payload, ip_id, ttl,
               payload_sum)
    return bytes(buf)
