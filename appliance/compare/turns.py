"""Answer turns: what a server sent back for one request, assembled from its captured segments.

Sans-io: answer segments in (`feed`, `handle`), `Turn` records out; the clock is the capture
timestamp (int nanoseconds) of the segments and the `now_ns` given to `poll`. The same class runs
on both hosts of compare mode: in interceptd on the target's answers, and in tcpcopyd on the online
server's answers (captured in the reverse direction of its filter).

A turn, for request/response protocols, is the answer bytes a server sends while its ACK number
stays the same: the client's next request moves the server's ACK, which ends the turn. So
`request_end` (that ACK) names the request a turn answers, and `request_offset` names it relative
to the client's ISN when the flow was seen from the server's SYN-ACK (its ACK is ISN + 1), which
stays true across tcpcopyd's address rewrite: the replayed client keeps the captured ISN.

A turn ends when the ACK advances, on the server's FIN or RST, after `turn_idle` without answer
bytes (`poll`), or when its flow is evicted; empty turns (no answer bytes) are never emitted and take
no index. Bytes are digested in sequence order: a retransmitted or overlapping byte is skipped, a
hole (lost or reordered segment) is not waited for: it marks the turn incomplete and is counted,
and the bytes that fill it later count as retransmitted. A turn whose first bytes are b"HTTP/1."
is digested in two parts: the head up to and including b"\\r\\n\\r\\n" (`digest`) and the body
after it (`body_digest`), because heads always differ (Date) while bodies should not.

Memory is bounded: at most `max_flows` flows (the least recently active is evicted, counted),
`head_bytes` kept per open turn, a flow forgotten after `flow_idle` without any segment. A flow
that ended (FIN/RST) stays as a tombstone until then, so late retransmissions start no new turn.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from appliance.core.packet import ACK, FIN, RST, SYN
from appliance.core.wire import (
    MAX_TURN_HEAD,
    TURN_CONTINUED,
    TURN_DIGEST_SIZE,
    TURN_END_EVICTED,
    TURN_END_FIN,
    TURN_END_IDLE,
    TURN_END_RST,
    TURN_HTTP_BODY,
    TURN_INCOMPLETE,
    TURN_ISN_KNOWN,
    TurnRecord,
)

Turn = TurnRecord            # the assembler's output is exactly what interceptd publishes
Flow = tuple[int, int, int, int]   # (server ip, server port, client ip, client port); ips as 32-bit ints

HTTP_MAGIC = b"HTTP/1."
HEAD_END = b"\r\n\r\n"
_SEQ_MOD = 1 << 32
_HALF = 1 << 31
_NONE: tuple[Turn, ...] = ()
_NO_HASH = hashlib.blake2b(digest_size=TURN_DIGEST_SIZE)   # a flow's between turns; never updated

# how an open turn's bytes are digested
_UNDECIDED = 0     # fewer than len(HTTP_MAGIC) bytes so far: kept in `pending`
_SCAN = 1          # HTTP, looking for the end of the head
_BODY = 2          # HTTP, past the head: bytes go to the body digest
_RAW = 3           # not HTTP (or a head longer than max_http_head): one digest


@dataclass(frozen=True, slots=True, kw_only=True)
class AssemblerSpec:
    """head_bytes: answer bytes kept per turn (16..wire.MAX_TURN_HEAD); max_flows: flows tracked;
    turn_idle / flow_idle: seconds without answer bytes before an open turn is emitted / without any
    segment before a flow is forgotten; max_http_head: bytes searched for the end of an HTTP head."""

    head_bytes: int = 512
    max_flows: int = 65536
    turn_idle: float = 2.0
    flow_idle: float = 300.0
    max_http_head: int = 65536

    def __post_init__(self) -> None:
        if not 16 <= self.head_bytes <= MAX_TURN_HEAD:
            raise ValueError(f"head_bytes must be 16..{MAX_TURN_HEAD}, not {self.head_bytes}")
        if self.max_flows < 1 or self.max_http_head < 4:
            raise ValueError("max_flows and max_http_head must be positive")
        if not 0 < self.turn_idle <= self.flow_idle:
            raise ValueError("need 0 < turn_idle <= flow_idle")


@dataclass(slots=True)
class AssemblerCounters:
    segments: int = 0
    turns_emitted: int = 0
    incomplete_turns: int = 0
    flows_created: int = 0
    flows_evicted: int = 0           # live flows pushed out by max_flows (their later turns misalign)
    flows_expired: int = 0           # forgotten after flow_idle (tombstones included)
    gaps: int = 0                    # holes in an answer's sequence space
    retransmitted_bytes: int = 0
    short_captures: int = 0          # segments captured shorter than their payload (snaplen)
    late_data: int = 0               # new bytes carrying an older ACK than the turn's (reordering)
    after_close: int = 0             # segments of a flow that had ended (FIN/RST retransmissions)


@dataclass(frozen=True, slots=True)
class AnswerSegment:
    """One segment a server sent. `length` is the payload length on the wire (the IP total length
    tells it); it exceeds len(payload) when the capture was cut short. None means len(payload)."""

    flow: Flow
    seq: int
    ack: int
    flags: int
    payload: bytes | memoryview
    ts_ns: int
    length: int | None = None


class _FlowState:
    __slots__ = ("key", "isn", "next_seq", "ack", "index", "closed", "last_ns", "continued_ack",
                 "open", "span", "first_ns", "t_last_ns", "captured", "incomplete", "continued",
                 "mode", "pending", "tail", "hash", "body_hash", "body_offset", "head")

    def __init__(self, key: Flow, next_seq: int, ack: int, isn: int | None) -> None:
        self.key = key
        self.isn = isn                      # client ISN, from the SYN-ACK's ACK
        self.next_seq = next_seq            # next in-order answer byte
        self.ack = ack                      # the current turn's request_end
        self.index = 0
        self.closed = False
        self.last_ns = 0
        self.continued_ack: int | None = None   # ACK of a turn emitted by turn_idle
        self.open = False
        self.span = 0                       # sequence space of the turn: bytes seen and holes between
        self.first_ns = 0
        self.t_last_ns = 0
        self.captured = 0                   # bytes digested in this turn
        self.incomplete = False
        self.continued = False
        self.mode = _UNDECIDED
        self.pending = b""
        self.tail = b""
        self.hash = _NO_HASH                # a hasher of its own from the turn's first byte on
        self.body_hash: hashlib.blake2b | None = None
        self.body_offset = 0
        self.head = bytearray()


def _signed(delta: int) -> int:
    """A 32-bit sequence difference as a signed number (RFC 1982 style)."""
    return ((delta + _HALF) % _SEQ_MOD) - _HALF


class TurnAssembler:
    """Per-host table of answer flows. Not thread-safe; one per capture loop (interceptd) or per
    rewrite worker (tcpcopyd). Every method returns the turns it completed, oldest first."""

    def __init__(self, spec: AssemblerSpec | None = None) -> None:
        self.spec = spec or AssemblerSpec()
        self.counters = AssemblerCounters()
        self._flows: OrderedDict[Flow, _FlowState] = OrderedDict()    # least recently active first
        self._open: OrderedDict[Flow, _FlowState] = OrderedDict()     # open turns, oldest last byte first
        self._turn_idle_ns = int(self.spec.turn_idle * 1e9)
        self._flow_idle_ns = int(self.spec.flow_idle * 1e9)

    def __len__(self) -> int:
        return len(self._flows)

    def handle(self, ev: AnswerSegment) -> tuple[Turn, ...]:
        return self.feed(ev.flow, ev.seq, ev.ack, ev.flags, ev.payload, ev.ts_ns, ev.length)

    def feed(self, flow: Flow, seq: int, ack: int, flags: int, payload: bytes | memoryview, ts_ns: int,
             length: int | None = None) -> tuple[Turn, ...]:
        """One answer segment (server -> client), with its capture time. The hot path: returns the
        shared empty tuple when no turn ends."""
        c = self.counters
        c.segments += 1
        if length is None:
            length = len(payload)
        fl = self._flows.get(flow)
        out: tuple[Turn, ...] = _NONE
        if flags & SYN:
            if not flags & ACK:
                return _NONE                 # a server does not open connections; nothing to learn
            isn = (ack - 1) % _SEQ_MOD
            if fl is not None and not fl.closed and fl.isn == isn:
                return _NONE                 # the SYN-ACK again (the client's ACK was lost)
            if fl is not None:               # the address pair serves a new connection
                out = self._forget(fl, TURN_END_EVICTED)
            fl = self._insert(flow, (seq + 1) % _SEQ_MOD, ack, isn, ts_ns)
            return out + self._pop_evicted()
        if fl is None:
            if flags & RST:
                return _NONE
            # first sight in mid-stream: indexes count from here, no ISN
            fl = self._insert(flow, seq, ack, None, ts_ns)
            out = self._pop_evicted()
        elif fl.closed:
            c.after_close += 1
            return _NONE
        else:
            self._flows.move_to_end(flow)
            fl.last_ns = ts_ns
        behind = _signed(seq - fl.next_seq)          # < 0: bytes seen already; > 0: a hole before them
        if behind > 0 and length == 0 and not flags & RST:
            # a bare ACK or FIN past the bytes seen: the open turn lost its tail
            c.gaps += 1
            if fl.open:
                fl.incomplete = True
                fl.span += behind
            fl.next_seq = seq
            behind = 0
        if flags & ACK and ack != fl.ack:
            if _signed(ack - fl.ack) > 0:
                # ACK advanced: the client sent more, so the answer to its previous request is over
                if fl.open:
                    if behind > 0:               # the hole is the old turn's tail or the new one's start
                        fl.incomplete = True
                    out = out + (self._emit(fl, 0),)
                fl.ack = ack
                fl.continued_ack = None
            elif length > max(0, -behind):
                c.late_data += 1                 # new bytes with an older ACK: reordered; kept, flagged
                fl.incomplete = True
        if length > 0:
            self._data(fl, seq, behind, payload, length, ts_ns)
        if flags & (FIN | RST):
            if fl.open:
                out = out + (self._emit(fl, TURN_END_FIN if flags & FIN else TURN_END_RST),)
            fl.closed = True
        return out

    def poll(self, now_ns: int) -> tuple[Turn, ...]:
        """Emit turns idle for turn_idle and forget flows idle for flow_idle. Call about once a second."""
        out: list[Turn] = []
        while self._open:
            fl = next(iter(self._open.values()))
            if now_ns - fl.t_last_ns < self._turn_idle_ns:
                break
            out.append(self._emit(fl, TURN_END_IDLE))
            fl.continued_ack = fl.ack
        while self._flows:
            fl = next(iter(self._flows.values()))
            if now_ns - fl.last_ns < self._flow_idle_ns:
                break
            out.extend(self._forget(fl, TURN_END_IDLE))
            self.counters.flows_expired += 1
        return tuple(out)

    def flush(self) -> tuple[Turn, ...]:
        """Every open turn, as if idle (at shutdown); the flows are kept."""
        return tuple(self._emit(fl, TURN_END_IDLE) for fl in list(self._open.values()))

    # ---- internals ------------------------------------------------------------------------------
    def _insert(self, flow: Flow, next_seq: int, ack: int, isn: int | None, ts_ns: int) -> _FlowState:
        fl = _FlowState(flow, next_seq, ack, isn)
        fl.last_ns = ts_ns
        self._flows[flow] = fl
        self.counters.flows_created += 1
        return fl

    def _pop_evicted(self) -> tuple[Turn, ...]:
        out: tuple[Turn, ...] = _NONE
        while len(self._flows) > self.spec.max_flows:
            fl = next(iter(self._flows.values()))
            if not fl.closed:
                self.counters.flows_evicted += 1
            out = out + self._forget(fl, TURN_END_EVICTED)
        return out

    def _forget(self, fl: _FlowState, reason: int) -> tuple[Turn, ...]:
        del self._flows[fl.key]
        return (self._emit(fl, reason),) if fl.open else _NONE

    def _open_turn(self, fl: _FlowState, ts_ns: int) -> None:
        if fl.open:
            return
        fl.open = True
        fl.hash = hashlib.blake2b(digest_size=TURN_DIGEST_SIZE)
        fl.span = 0
        fl.first_ns = ts_ns
        fl.continued = fl.continued_ack == fl.ack

    def _data(self, fl: _FlowState, seq: int, behind: int, payload: bytes | memoryview, length: int,
              ts_ns: int) -> None:
        c = self.counters
        if behind < 0:
            skip = -behind
            if skip >= length:
                c.retransmitted_bytes += length
                return
            c.retransmitted_bytes += skip
            seq = fl.next_seq
            payload = payload[skip:]
            length -= skip
        if behind > 0:
            c.gaps += 1
            fl.incomplete = True
            if fl.open:                      # a hole inside the turn counts in its length
                fl.span += behind
        self._open_turn(fl, ts_ns)
        fl.span += length
        if len(payload) < length:
            c.short_captures += 1
            fl.incomplete = True
        elif len(payload) > length:          # capture padding (Ethernet minimum frame)
            payload = payload[:length]
        fl.next_seq = (seq + length) % _SEQ_MOD
        fl.t_last_ns = ts_ns
        self._open[fl.key] = fl
        self._open.move_to_end(fl.key)
        if payload:
            self._digest(fl, bytes(payload))

    def _digest(self, fl: _FlowState, data: bytes) -> None:
        if fl.mode == _UNDECIDED:
            data = fl.pending + data
            if len(data) < len(HTTP_MAGIC):
                fl.pending = data
                return
            fl.pending = b""
            fl.mode = _SCAN if data.startswith(HTTP_MAGIC) else _RAW
        room = self.spec.head_bytes - len(fl.head)
        if room > 0:
            fl.head += data[:room]
        if fl.mode == _SCAN:
            window = fl.tail + data
            at = window.find(HEAD_END)
            if at < 0:
                fl.hash.update(data)
                fl.tail = window[-3:]
                if fl.captured + len(data) > self.spec.max_http_head:
                    fl.mode = _RAW               # no end of head in sight: one digest for the whole
            else:
                cut = at + len(HEAD_END) - len(fl.tail)
                fl.hash.update(data[:cut])
                fl.body_offset = fl.captured + cut
                fl.body_hash = hashlib.blake2b(data[cut:], digest_size=TURN_DIGEST_SIZE)
                fl.mode = _BODY
        elif fl.mode == _BODY and fl.body_hash is not None:
            fl.body_hash.update(data)
        else:
            fl.hash.update(data)
        fl.captured += len(data)

    def _emit(self, fl: _FlowState, reason: int) -> Turn:
        if fl.mode == _UNDECIDED and fl.pending:
            fl.mode = _RAW
            fl.hash.update(fl.pending)
            fl.head += fl.pending
            fl.captured += len(fl.pending)
        flags = reason
        if fl.incomplete:
            flags |= TURN_INCOMPLETE
            self.counters.incomplete_turns += 1
        if fl.continued:
            flags |= TURN_CONTINUED
        if fl.isn is not None:
            flags |= TURN_ISN_KNOWN
        http = fl.mode == _BODY and fl.body_hash is not None
        if http:
            flags |= TURN_HTTP_BODY
        turn = Turn(
            fl.key[0], fl.key[1], fl.key[2], fl.key[3], fl.ack,
            None if fl.isn is None else (fl.ack - fl.isn - 1) % _SEQ_MOD,
            fl.index, fl.first_ns, max(fl.t_last_ns, fl.first_ns), fl.span,
            fl.hash.digest(), fl.body_offset if http else None,
            fl.body_hash.digest() if http and fl.body_hash is not None else None,
            flags, bytes(fl.head))
        self.counters.turns_emitted += 1
        fl.index += 1
        self._open.pop(fl.key, None)
        # the flow's next turn starts afresh
        fl.open = False
        fl.captured = 0
        fl.incomplete = False
        fl.continued = False
        fl.mode = _UNDECIDED
        fl.pending = b""
        fl.tail = b""
        fl.hash = _NO_HASH
        fl.body_hash = None
        fl.body_offset = 0
        fl.head = bytearray()
        return turn

