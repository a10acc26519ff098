"""Helpers for session-engine playbooks: build segments, run the table, read what it sent."""

from __future__ import annotations

from appliance.engine.params import EngineParams
from appliance.engine.session import Emit
from appliance.engine.table import SessionTable
from appliance.core.packet import ACK, TcpSegment, ip_to_int, timestamp_option

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


def ts(val: int, ecr: int) -> bytes:
    return timestamp_option(val, ecr)


class Playbook:
    """Feed events with an explicit clock and collect what the engine emits."""

    def __init__(self, **params: object) -> None:
        self.table = SessionTable(EngineParams(**params))  # type: ignore[arg-type]
        self.now = 100.0

    @property
    def c(self):
        return self.table.counters

    def cap(self, seg: TcpSegment, t: float | None = None) -> list[Emit]:
        self.table.client_segment(seg, TARGET, SPORT, self.now, t)
        self.table.flush(self.now)
        return self.table.take_output()

    def resp(self, *hdrs: TcpSegment) -> list[Emit]:
        for h in hdrs:
            self.table.target_segment(h, self.now)
        self.table.flush(self.now)
        return self.table.take_output()

    def advance(self, dt: float) -> list[Emit]:
        self.now += dt
        self.table.poll(self.now)
        return self.table.take_output()

    def establish(self, ws: bool = False) -> None:
        """Captured SYN and handshake ACK, target SYN-ACK: an established session."""
        self.cap(client(C_ISN, 0, 0x02))
        self.resp(target(T_ISN, C_ISN + 1, 0x12, options=b"\x02\x04\x05\xb4"))
        self.cap(client(C_ISN + 1, O_ISN + 1, ACK))

    # ---- additions for the engine playbooks -------------------------------------------------
    @property
    def session(self):
        """The one session of a single-connection playbook."""
        (key,) = self.table.sessions
        return self.table.get(key)

    def advance_to(self, t: float) -> list[Emit]:
        """Set the clock to absolute time t (exactly, no float sum) and fire what is due."""
        self.now = t
        self.table.poll(self.now)
        return self.table.take_output()

    def to_deadline(self) -> list[Emit]:
        """Advance the clock to exactly the table's next deadline and fire it."""
        return self.advance_to(self.table.next_deadline())

    def run_until(self, t: float) -> list[tuple[float, Emit]]:
        """Fire every deadline up to absolute time t, one at a time; (time, emit) pairs."""
        got: list[tuple[float, Emit]] = []
        while self.table.next_deadline() <= t:
            got += [(self.now, e) for e in self.to_deadline()]
        got += [(t, e) for e in self.advance_to(t)]
        return got


def brief(out: list[Emit]) -> list[tuple[int, int, int, int]]:
    """(flags, seq, ack, payload length) of each emitted segment."""
    return [(e.flags, e.seq, e.ack, len(e.payload)) for e in out]
