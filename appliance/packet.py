"""IPv4/TCP header parsing and packet building for the hot path.

Pure functions on bytes: no sockets, no clock. Used by capture (to find the flow key), by the
rewrite workers (to turn captured frames into segments and segments into packets) and by
interceptd (to cut a response down to its headers). IPv4 only; IP options are skipped on
parse and never emitted.
"""

from __future__ import annotations

import socket
import struct
import sys
from array import array
from dataclasses import dataclass

# TCP flag bits
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20

# TCP option kinds
OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WSCALE = 3
OPT_SACK_OK = 4
OPT_TIMESTAMP = 8

IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
TCP_HEADER = struct.Struct("!HHIIBBHHH")
PSEUDO_HEADER = struct.Struct("!4s4sBBH")
_U32 = struct.Struct("!I")
_TS_OPTION = struct.Struct("!BBII")

MIN_IP_HEADER = 20
MIN_TCP_HEADER = 20
SEQ_MOD = 1 << 32

# Link types seen by capture (libpcap DLT values)
DLT_EN10MB = 1
DLT_RAW = 12
DLT_LINUX_SLL = 113
DLT_RAW_ALT = 101
DLT_LINUX_SLL2 = 276
ETH_P_IP = 0x0800
ETH_P_8021Q = 0x8100


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
    return _U32.unpack(socket.inet_aton(text))[0]


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
    ver_ihl, _tos, total_len, ip_id, frag, ttl, proto, _csum, src, dst = IPV4_HEADER.unpack_from(data, 0)
    if ver_ihl >> 4 != 4:
        raise MalformedPacket(f"not IPv4 (version {ver_ihl >> 4})")
    ihl = (ver_ihl & 0x0F) * 4
    if ihl < MIN_IP_HEADER:
        raise MalformedPacket(f"bad IP header length {ihl}")
    if proto != socket.IPPROTO_TCP:
        raise MalformedPacket(f"not TCP (protocol {proto})")
    if frag & 0x1FFF or frag & 0x2000:
        raise MalformedPacket("IP fragment")
    # Captures of offloaded (TSO/GRO) packets may carry total length 0: take the frame length.
    if total_len == 0:
        total_len = n
    if total_len < ihl + MIN_TCP_HEADER or n < ihl + MIN_TCP_HEADER:
        raise MalformedPacket(f"bad IP total length {total_len}")
    sport, dport, seq, ack, off_byte, flags, window, _tcsum, _urg = TCP_HEADER.unpack_from(data, ihl)
    doff = (off_byte >> 4) * 4
    if doff < MIN_TCP_HEADER or ihl + doff > total_len or ihl + doff > n:
        raise MalformedPacket(f"bad TCP data offset {doff}")
    start = ihl + doff
    payload_len = total_len - start
    options = bytes(data[ihl + MIN_TCP_HEADER:start])
    payload = bytes(data[start:min(total_len, n)]) if keep_payload else b""
    return TcpSegment(
        src_ip=int.from_bytes(src, "big"), dst_ip=int.from_bytes(dst, "big"),
        src_port=sport, dst_port=dport, seq=seq, ack=ack, flags=flags & 0x3F, window=window,
        options=options, payload=payload, payload_len=payload_len, ip_id=ip_id, ttl=ttl,
    )


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


def headers_only(ip_packet: bytes | memoryview) -> bytes:
    """IP header + TCP header with options, no payload (the IP total length is kept)."""
    ihl = (ip_packet[0] & 0x0F) * 4
    doff = (ip_packet[ihl + 12] >> 4) * 4
    return bytes(ip_packet[:ihl + doff])


_NATIVE_LITTLE = sys.byteorder == "little"


def internet_checksum(data: bytes | bytearray, initial: int = 0) -> int:
    """RFC 1071 checksum, returned as a big-endian 16-bit value."""
    if len(data) & 1:
        data = bytes(data) + b"\x00"
    words = array("H", data)
    if _NATIVE_LITTLE:
        words.byteswap()
    total = sum(words) + initial
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def build_ipv4_tcp(
    src_ip: int, dst_ip: int, src_port: int, dst_port: int, seq: int, ack: int, flags: int,
    window: int, options: bytes = b"", payload: bytes | memoryview = b"", ip_id: int = 0, ttl: int = 64,
) -> bytes:
    """A complete IPv4/TCP packet with both checksums filled in (DF set, no IP options)."""
    if len(options) % 4:
        options = options + b"\x00" * (4 - len(options) % 4)
    tcp_len = MIN_TCP_HEADER + len(options) + len(payload)
    src = src_ip.to_bytes(4, "big")
    dst = dst_ip.to_bytes(4, "big")
    tcp = bytearray(TCP_HEADER.pack(src_port, dst_port, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                                    (5 + len(options) // 4) << 4, flags, window & 0xFFFF, 0, 0))
    tcp += options
    tcp += payload
    csum = internet_checksum(PSEUDO_HEADER.pack(src, dst, 0, socket.IPPROTO_TCP, tcp_len) + tcp)
    tcp[16] = csum >> 8
    tcp[17] = csum & 0xFF
    ip = bytearray(IPV4_HEADER.pack(0x45, 0, MIN_IP_HEADER + tcp_len, ip_id & 0xFFFF, 0x4000, ttl,
                                    socket.IPPROTO_TCP, 0, src, dst))
    icsum = internet_checksum(ip)
    ip[10] = icsum >> 8
    ip[11] = icsum & 0xFF
    return bytes(ip + tcp)
