"""The captured client byte stream of one session: reassembly in sequence order, and turns.

Sans-io, part of the session engine (runs inside a rewrite worker). Captured segments come in
any order, duplicated or overlapping; `ClientStream` keeps the contiguous part in `unsent` (the
send queue) and the rest in `ooo` until the hole fills. Each chunk is marked with the response
bytes the client had received when it sent it (its ack, relative to `online_base`): a chunk that
shows more than any earlier one starts a turn, and the session holds it until the target answered.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from appliance.core.packet import FIN, seq_diff, seq_le, seq_lt
from appliance.engine.params import EngineCounters

INF: Final = float("inf")

# Most tracked sessions are idle: their queues are empty. An empty deque costs ~600 bytes and an
# empty dict 64, so an empty queue is this shared tuple and an empty `ooo` this read-only mapping;
# the real containers are made when something is queued and dropped when they empty again.
NO_CHUNKS: Final[tuple[()]] = ()
NO_OOO: Final[Mapping[int, Chunk]] = MappingProxyType({})


def queued(queue: deque[Chunk] | tuple[Chunk, ...], chunk: Chunk) -> deque[Chunk]:
    """`queue` with `chunk` appended: an empty one (NO_CHUNKS, or a drained deque) becomes a new deque."""
    if not queue:
        queue = deque()
    queue.append(chunk)  # type: ignore[union-attr]
    return queue  # type: ignore[return-value]


@dataclass(slots=True)
class Chunk:
    """Captured client bytes (or a FIN/RST) waiting to be sent or acknowledged."""

    seq: int
    data: bytes
    ack: int               # the client's ack field when it sent this
    flags: int             # FIN or RST when this chunk carries one
    t: float               # capture time
    ts_val: int | None
    need: int = 0          # response bytes the client received since the previous turn
    turn: bool = False     # held until the target has answered (cleared when released)
    boundary: bool = False # starts a turn (kept): a place where a new connection may restart
    sent: float = 0.0      # when first sent to the target; 0 once sent again (no RTT sample: Karn)

    @property
    def end(self) -> int:
        return (self.seq + len(self.data) + (1 if self.flags & FIN else 0)) & 0xFFFFFFFF


class ClientStream:
    __slots__ = ("c", "end", "unsent", "ooo", "unsent_bytes", "ooo_bytes", "gap_since", "client_closed",
                 "online_base", "last_need")

    def __init__(self, counters: EngineCounters) -> None:
        self.c = counters
        self.end = 0                         # next client seq expected (end of the contiguous part)
        self.unsent: deque[Chunk] | tuple[Chunk, ...] = NO_CHUNKS
        self.ooo: dict[int, Chunk] | Mapping[int, Chunk] = NO_OOO
        self.unsent_bytes = 0
        self.ooo_bytes = 0
        self.gap_since = INF                 # when the oldest unfilled hole appeared
        self.online_base: int | None = None  # client's ack before any response byte
        self.last_need = 0                   # response bytes (relative) the client had seen
        self.client_closed = False           # the client's FIN or RST is in the stream

    def restart_at(self, seq: int) -> None:
        """Empty the stream; the next byte expected is `seq` (turn accounting is kept)."""
        self.end = seq
        self.unsent = NO_CHUNKS
        self.ooo = NO_OOO
        self.unsent_bytes = self.ooo_bytes = 0
        self.gap_since = INF

    def need_of(self, chunk: Chunk) -> int:
        base = self.online_base if self.online_base is not None else chunk.ack
        return seq_diff(chunk.ack, base)

    def take_ooo(self) -> list[Chunk]:
        """Remove and return the chunks beyond the hole, in sequence order."""
        pending = sorted(self.ooo.values(), key=lambda ch: seq_diff(ch.seq, self.end))
        self.ooo = NO_OOO
        self.ooo_bytes = 0
        self.gap_since = INF
        return pending

    def accept(self, chunk: Chunk, now: float) -> None:
        """Add a captured chunk: append it, buffer it beyond a hole, or trim/drop what we have."""
        rel = seq_diff(chunk.seq, self.end)
        if rel < 0:
            overlap = -rel
            self.c.client_retransmits += 1
            # whole chunk already in the stream, unless it carries a FIN beyond what we have
            if overlap >= len(chunk.data) and not (chunk.flags and seq_lt(self.end, chunk.end)):
                return
            chunk.data = chunk.data[overlap:]
            chunk.seq = self.end
        elif rel > 0:
            old = self.ooo.get(chunk.seq)
            if old is None or seq_lt(old.end, chunk.end):    # keep the longer of two at one seq
                self.ooo_bytes += len(chunk.data) - (len(old.data) if old else 0)
                if not self.ooo:
                    self.ooo = {}
                self.ooo[chunk.seq] = chunk  # type: ignore[index]
                if self.gap_since == INF:
                    self.gap_since = now
            return
        self._append(chunk)
        advanced = False
        while self.ooo:
            nxt = self._pop_ooo()
            if nxt is None:
                break
            self._append(nxt)
            advanced = True
        if not self.ooo:
            self.ooo = NO_OOO
            self.gap_since = INF
        elif advanced:
            self.gap_since = now             # a later hole remains: its clock starts now

    def _pop_ooo(self) -> Chunk | None:
        """The buffered chunk that continues the stream, or None; drops chunks now behind it.

        Chunks buffered ahead of a hole may overlap each other (a retransmission segmented
        differently): one that starts before the stream's end but reaches past it is trimmed.
        """
        ooo = self.ooo
        assert isinstance(ooo, dict)           # only called while chunks are buffered
        nxt = ooo.pop(self.end, None)
        if nxt is not None:
            self.ooo_bytes -= len(nxt.data)
            return nxt
        for seq in [s for s in ooo if seq_lt(s, self.end)]:
            ch = ooo[seq]
            if seq_le(ch.end, self.end):             # wholly behind the stream: stale
                del ooo[seq]
                self.ooo_bytes -= len(ch.data)
            elif nxt is None:                        # straddles the stream's end: trim and use
                del ooo[seq]
                self.ooo_bytes -= len(ch.data)
                ch.data = ch.data[seq_diff(self.end, ch.seq):]
                ch.seq = self.end
                nxt = ch
        return nxt

    def _append(self, chunk: Chunk) -> None:
        if self.online_base is None:
            self.online_base = chunk.ack
        need = seq_diff(chunk.ack, self.online_base)
        if need > self.last_need:
            chunk.turn = chunk.boundary = True
            chunk.need = need - self.last_need
            self.last_need = need
        self.unsent = queued(self.unsent, chunk)
        self.unsent_bytes += len(chunk.data)
        self.end = chunk.end
        if chunk.flags:
            self.client_closed = True

    def pop_front(self, size: int) -> Chunk:
        """The head chunk, or its first `size` bytes split off when it is longer."""
        head = self.unsent[0]
        if len(head.data) > size:
            part = Chunk(head.seq, head.data[:size], head.ack, 0, head.t, head.ts_val,
                         boundary=head.boundary)
            head.boundary = False
            head.data = head.data[size:]
            head.seq = (head.seq + size) & 0xFFFFFFFF
            self.unsent_bytes -= size
            return part
        self.unsent.popleft()  # type: ignore[union-attr]
        if not self.unsent:
            self.unsent = NO_CHUNKS
        self.unsent_bytes -= len(head.data)
        return head
