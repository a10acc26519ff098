"""Helpers for session-engine playbooks: build segments, run the table, read what it sent.

A playbook's every step returns what the engine emitted, and the test must look at it: compare it,
unpack it, iterate over it, or take its length. Output nobody looked at fails the test when it ends
(tests/unit/engine/conftest.py), naming the step and its line, so an engine that emits a command the
script did not expect cannot pass unnoticed. Indexing alone (`out[0]`) is not looking: it misses
whatever follows."""

from __future__ import annotations

import os
import sys
from typing import Any

from appliance.core.flowkey import shard_of
from appliance.core.packet import ACK, SYN, TcpSegment, ip_to_int, timestamp_option
from appliance.engine.clientmap import HIGH_PORT, LOW_PORT, ClientMap
from appliance.engine.params import EngineParams
from appliance.engine.session import Emit
from appliance.engine.table import SessionTable

CLIENT = ip_to_int("198.18.0.1")
ONLINE = ip_to_int("198.18.0.2")
TARGET = ip_to_int("198.18.0.3")
CPORT = 40000
SPORT = 8080
C_ISN = 1000
O_ISN = 500_000       # the online server's ISN, as seen in the client's acks
T_ISN = 9_000_000     # the target's ISN


def client(seq: int, ack: int, flags: int, payload: bytes = b"", options: bytes = b"",
           port: int = CPORT) -> TcpSegment:
    return TcpSegment(CLIENT, ONLINE, port, SPORT, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, flags, 502,
                      options, payload, len(payload), 1)


def target(seq: int, ack: int, flags: int, payload_len: int = 0, window: int = 65535,
           options: bytes = b"", port: int = CPORT) -> TcpSegment:
    return TcpSegment(TARGET, CLIENT, SPORT, port, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, flags | 0,
                      window, options, b"", payload_len, 7)


# what the engine sends for the playbooks' one connection, as `brief` shows it
OUR_SYN = (SYN, C_ISN, 0, 0)                     # the client's SYN, replayed
THIRD_ACK = (ACK, C_ISN + 1, T_ISN + 1, 0)       # ours, answering the target's SYN-ACK


def without_spare_ports(ip: int = CLIENT) -> ClientMap:
    """Clients that keep their own tuple (no pool, one copy) in a shard that owns none of `ip`'s spare
    ports (1024-32767): `spare` finds none, as when every one is taken. (The engine may be compiled
    with mypyc, so a test cannot patch `ClientMap.spare` on an instance.)"""
    shards = 1 << 16
    owned = {shard_of(ip, port, shards) for port in range(LOW_PORT, HIGH_PORT + 1)}
    return ClientMap(next(s for s in range(shards) if s not in owned), shards)


def ts(val: int, ecr: int) -> bytes:
    return timestamp_option(val, ecr)


class Output(list[Any]):
    """What one playbook step emitted; records whether the test looked at all of it."""

    looked = False

    def __eq__(self, other: object) -> bool:
        self.looked = True
        return list.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        self.looked = True
        return list.__ne__(self, other)

    def __iter__(self):
        self.looked = True
        return list.__iter__(self)

    def __len__(self) -> int:
        self.looked = True
        return list.__len__(self)

    def __add__(self, other: list[Any]) -> list[Any]:      # type: ignore[override]
        self.looked = True
        if isinstance(other, Output):
            other.looked = True
        return list.__add__(list(self), list(other))

    def __radd__(self, other: list[Any]) -> list[Any]:
        self.looked = True
        return list.__add__(list(other), list(self))


PLAYBOOKS: list[Playbook] = []      # of the running test, checked when it ends (engine/conftest.py)


def verify_playbooks() -> None:
    """Fail when any playbook of the test emitted something the test did not look at."""
    __tracebackhide__ = True
    found = [line for pb in PLAYBOOKS for line in pb.unexpected()]
    if found:
        more = f"\n  ... and {len(found) - 8} more steps" if len(found) > 8 else ""
        raise AssertionError("the playbook did not expect what the engine emitted:\n  "
                             + "\n  ".join(found[:8]) + more)


class Playbook:
    """Feed events with an explicit clock and collect what the engine emits."""

    def __init__(self, **params: object) -> None:
        self.table = SessionTable(EngineParams(**params))  # type: ignore[arg-type]
        self.now = 100.0
        self._outputs: list[tuple[str, str, Output]] = []
        PLAYBOOKS.append(self)

    @property
    def c(self):
        return self.table.counters

    def unexpected(self) -> list[str]:
        """Every step whose output, not empty, the test did not look at (then forgets them all)."""
        found = [f"{where}: {step} emitted [{', '.join(describe(e) for e in list.__iter__(out))}]"
                 for where, step, out in self._outputs if list.__len__(out) and not out.looked]
        self._outputs = []
        return found

    def _output(self, step: str, out: list[Any]) -> Output:
        caller = sys._getframe(2)                      # the test (or its helper) that took the step
        while caller.f_back is not None and caller.f_code.co_filename == __file__:
            caller = caller.f_back
        where = f"{os.path.basename(caller.f_code.co_filename)}:{caller.f_lineno}"
        output = Output(out)
        self._outputs.append((where, f"{step} at t={self.now}", output))
        return output

    def cap(self, seg: TcpSegment, t: float | None = None) -> Output:
        self.table.client_segment(seg, TARGET, SPORT, self.now, t)
        self.table.flush(self.now)
        return self._output(f"cap({describe(seg)})", self.table.take_output())

    def resp(self, *hdrs: TcpSegment) -> Output:
        for h in hdrs:
            self.table.target_segment(h, self.now)
        self.table.flush(self.now)
        return self._output(f"resp({', '.join(describe(h) for h in hdrs)})", self.table.take_output())

    def advance(self, dt: float) -> Output:
        self.now += dt
        self.table.poll(self.now)
        return self._output(f"advance({dt})", self.table.take_output())

    def establish(self) -> None:
        """Captured SYN and handshake ACK, target SYN-ACK: an established session. Exactly our SYN
        (the client's) and our forged third ACK go out; the client's own ACK is not forwarded."""
        assert brief(self.cap(client(C_ISN, 0, SYN))) == [OUR_SYN]
        assert brief(self.resp(target(T_ISN, C_ISN + 1, SYN | ACK, options=b"\x02\x04\x05\xb4"))) == [THIRD_ACK]
        assert self.cap(client(C_ISN + 1, O_ISN + 1, ACK)) == []

    # ---- additions for the engine playbooks -------------------------------------------------
    @property
    def session(self):
        """The one session of a single-connection playbook."""
        (key,) = self.table.sessions
        return self.table.get(key)

    def advance_to(self, t: float) -> Output:
        """Set the clock to absolute time t (exactly, no float sum) and fire what is due."""
        self.now = t
        self.table.poll(self.now)
        return self._output(f"advance_to({t})", self.table.take_output())

    def to_deadline(self) -> Output:
        """Advance the clock to exactly the table's next deadline and fire it."""
        return self.advance_to(self.table.next_deadline())

    def run_until(self, t: float) -> Output:
        """Fire every deadline up to absolute time t, one at a time; (time, emit) pairs."""
        got: list[tuple[float, Emit]] = []
        while self.table.next_deadline() <= t:
            got += [(self.now, e) for e in self.to_deadline()]
        got += [(t, e) for e in self.advance_to(t)]
        return self._output(f"run_until({t})", got)

    def shutdown(self) -> Output:
        """The worker stops: every session is reset."""
        self.table.shutdown(self.now)
        return self._output("shutdown()", self.table.take_output())


def brief(out: list[Any]) -> list[tuple[int, int, int, int]]:
    """(flags, seq, ack, payload length) of each emitted segment."""
    return [(e.flags, e.seq, e.ack, len(e.payload)) for e in out]


FLAG_NAMES = ((0x02, "SYN"), (0x10, "ACK"), (0x08, "PSH"), (0x01, "FIN"), (0x04, "RST"))


def describe(item: Any) -> str:
    """One segment (emitted, captured or answered) or a run_until pair, for a failure message."""
    if isinstance(item, tuple):
        return f"(t={item[0]}, {describe(item[1])})"
    flags = "|".join(name for bit, name in FLAG_NAMES if item.flags & bit) or "none"
    size = len(item.payload) if isinstance(item, Emit) else item.payload_len
    return f"{flags} seq={item.seq} ack={item.ack} len={size} port={item.src_port}->{item.dst_port}"
