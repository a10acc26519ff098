"""Capture files built byte by byte for the reader's tests: pcapng blocks with hand-written structs
(dpkt writes one interface only), classic pcap through dpkt."""

from __future__ import annotations

import io
import struct

import dpkt

from appliance.core.packet import ACK, PSH, build_ipv4_tcp

ETH = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"


def ip_packet(i: int, payload: bytes = b"") -> bytes:
    return build_ipv4_tcp(0xC6120001, 0xC6120002, 40000 + i, 8080, i, 1, ACK | PSH, 512, b"", payload or b"x" * i)


def cut_ihl_packet() -> bytes:
    """IPv4/TCP with 40 bytes of IP options whose capture ends inside the TCP header, after the ports
    (to the online port, so a reader keeps looking at it)."""
    ip = ip_packet(1)
    return bytes([0x4F]) + ip[1:20] + b"\x01" * 40 + ip[20:26]


def pcap(frames: list[bytes], linktype: int = 1, nano: bool = False) -> bytes:
    out = io.BytesIO()
    writer = dpkt.pcap.Writer(out, snaplen=262144, linktype=linktype, nano=nano)
    for i, frame in enumerate(frames):
        writer.writepkt(frame, 1000.0 + i * 0.5)
    return out.getvalue()


def block(btype: int, body: bytes, order: str = "<") -> bytes:
    body += b"\x00" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(order + "II", btype, n) + body + struct.pack(order + "I", n)


def shb(order: str = "<", major: int = 1) -> bytes:
    return block(0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, major, 0, -1), order)


def option(code: int, value: bytes, order: str = "<") -> bytes:
    return struct.pack(order + "HH", code, len(value)) + value + b"\x00" * (-len(value) % 4)


def idb(linktype: int, tsresol: int | None = None, tsoffset: int | None = None, order: str = "<") -> bytes:
    opts = b""
    if tsresol is not None:
        opts += option(9, bytes([tsresol]), order)
    if tsoffset is not None:
        opts += option(14, struct.pack(order + "q", tsoffset), order)
    if opts:
        opts += struct.pack(order + "HH", 0, 0)
    return block(1, struct.pack(order + "HHI", linktype, 0, 262144) + opts, order)


def epb(iface: int, ts: int, frame: bytes, order: str = "<", caplen: int | None = None) -> bytes:
    head = struct.pack(order + "IIIII", iface, ts >> 32, ts & 0xFFFFFFFF,
                       len(frame) if caplen is None else caplen, len(frame))
    return block(6, head + frame, order)
