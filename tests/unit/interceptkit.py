"""Frames as interceptd captures them, written to pcap files that pypcap replays into the very
callback interceptd's live capture uses (`Intercept.feed_file`)."""

from __future__ import annotations

import io
import os
import tempfile

import dpkt

from appliance.core import wire
from appliance.config.loader import InterceptConfig
from appliance.core.packet import ACK, DLT_EN10MB, DLT_RAW, build_ipv4_tcp
from appliance.interceptd.daemon import Intercept

ETH = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"
TARGET, CLIENT = 0xC6120003, 0xC6120001


def answer(i: int = 0, options: bytes = b"\x01\x01\x08\x0a" + b"\x00" * 8, payload: bytes = b"ok") -> bytes:
    """An IPv4/TCP answer of the target to client port 40000 + i."""
    return build_ipv4_tcp(TARGET, CLIENT, 8080, 40000 + i, 1000 + i, 2000, ACK, 512, options, payload)


def with_data_offset(ip: bytes, words: int) -> bytes:
    """`ip` (IHL 5) with its TCP data offset field set to `words`."""
    return ip[:32] + bytes([(words << 4) | (ip[32] & 0x0F)]) + ip[33:]


def pcap_bytes(frames: list[bytes], linktype: int = DLT_EN10MB) -> bytes:
    out = io.BytesIO()
    writer = dpkt.pcap.Writer(out, snaplen=65535, linktype=linktype, nano=True)
    for n, frame in enumerate(frames):
        writer.writepkt(frame, 1000.0 + n * 0.001)
    return out.getvalue()


def interceptd(*shard_counts: int) -> Intercept:
    """An interceptd (nothing opened) whose splitter has every shard of each count subscribed."""
    ic = Intercept(InterceptConfig(interfaces=("lo",), bpf="tcp"))
    for count in shard_counts:
        for shard in range(count):
            ic.split.subscription(b"\x01" + wire.shard_topic(count, shard))
    return ic


def feed(ic: Intercept, frames: list[bytes], linktype: int = DLT_EN10MB) -> int:
    """Write `frames` to a pcap file and replay it through `ic`'s capture callback with pypcap."""
    fd, path = tempfile.mkstemp(suffix=".pcap")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pcap_bytes(frames, linktype))
        return ic.feed_file(path)
    finally:
        os.unlink(path)


__all__ = ["DLT_EN10MB", "DLT_RAW", "ETH", "answer", "feed", "interceptd", "pcap_bytes", "with_data_offset"]
