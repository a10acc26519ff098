"""The vocabulary shared by the session engine's modules: session states and the send command."""

from __future__ import annotations

import enum
from dataclasses import dataclass

Key = tuple[int, int, int, int]   # client ip, client port, target ip, target port


class State(enum.IntEnum):
    SYN_SENT = 1      # our SYN is out, waiting for the target's SYN-ACK
    ESTABLISHED = 2
    RESYNC = 3        # target connection dropped; waiting for a captured turn to restart on
    CLOSED = 4        # done; lingers to absorb late packets, then forgotten


@dataclass(slots=True)
class Emit:
    """Command: send this segment to the target (the worker builds and sends the packet)."""

    src_ip: int
    dst_ip: int
    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    window: int
    options: bytes = b""
    payload: bytes = b""
    ip_id: int = 0
