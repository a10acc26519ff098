"""The transmitting half of a session (`Transmitter`): turns, window, retransmission, ACKs and resets
to the target.

The base class of `Session` (appliance/engine/session.py), split out to keep each module small. It
owns the slots it writes; what it only reads is declared below and set by `Session`. Sans-io like the
rest of the engine: it appends `Emit` commands.
"""

from __future__ import annotations

from collections import deque

from appliance.core.packet import ACK, FIN, PSH, RST, seq_diff, seq_lt, timestamp_option
from appliance.engine.model import Emit, Key, State
from appliance.engine.params import EngineCounters, EngineParams
from appliance.engine.stream import INF, NO_CHUNKS, Chunk, ClientStream, queued


class Transmitter:
    __slots__ = ("state", "closed_at", "ip_id", "snd_nxt", "inflight", "inflight_bytes", "persist_at", "rto_at",
                 "ack_pending", "fin_sent", "last_ts_val", "held_since", "resp_at_release")

    # written here (the slots above)
    state: State
    closed_at: float
    ip_id: int
    snd_nxt: int
    inflight: deque[Chunk] | tuple[Chunk, ...]
    inflight_bytes: int
    persist_at: float
    rto_at: float
    ack_pending: bool
    fin_sent: bool
    last_ts_val: int
    held_since: float
    resp_at_release: int
    # only read here: set by Session
    key: Key
    p: EngineParams
    c: EngineCounters
    out: list[Emit]
    stream: ClientStream
    client_isn: int
    snd_una: int
    snd_wnd: int
    rcv_nxt: int
    rto: float
    payload_max: int
    resp_bytes: int
    last_resp_data: float
    last_target: float
    target_fin: bool
    ts_ok: bool
    ts_recent: int

    def pump(self, now: float) -> None:
        """Send what the turn, the window and the stream allow; then any pending ACK."""
        if self.state is State.ESTABLISHED:
            self._send_ready(now)
        if self.state is State.ESTABLISHED:
            self._flush_ack()

    def _turn_released(self, chunk: Chunk, now: float) -> bool:
        turn_bytes = self.resp_bytes - self.resp_at_release
        if turn_bytes >= chunk.need:
            pass
        elif turn_bytes > 0 and now >= self.last_resp_data + self.p.response_quiet:
            self.c.turns_quiet += 1
        elif now >= chunk.t + self.p.max_lag:
            self.c.turns_lagged += 1
        else:
            if self.held_since == INF:
                self.held_since = now
                self.c.turns_waited += 1
            return False
        self.held_since = INF
        chunk.turn = False
        self.resp_at_release = self.resp_bytes
        return True

    def _close_released(self, head: Chunk, now: float) -> bool:
        """The client's FIN or RST (a bare chunk) may go: every byte before it is acknowledged, and
        the target has answered all it will (it closed, or has been quiet for close_quiet); or it was
        captured session_timeout ago (counted)."""
        if self.inflight:
            return False
        if self.target_fin or now >= self.last_target + self.p.close_quiet:
            return True
        if now >= head.t + self.p.session_timeout:
            self.c.closes_forced += 1
            return True
        return False

    def _send_ready(self, now: float) -> None:
        unsent = self.stream.unsent
        while unsent:
            head = unsent[0]
            if head.flags:
                if not self._close_released(head, now):
                    return
                if head.flags & RST:
                    self.c.sessions_reset_by_client += 1
                    self.reset(now)
                    return
            elif head.turn and not self._turn_released(head, now):
                return
            if head.data:
                room = self.snd_wnd - seq_diff(self.snd_nxt, self.snd_una)
                if room <= 0:
                    if self.persist_at == INF:
                        self.c.window_stalls += 1
                        self.persist_at = now + self.rto
                    return
                size = min(self.payload_max, room)
                chunk = self.stream.pop_front(size)
                if len(chunk.data) < size and len(self.stream.unsent) > 0:
                    chunk = self._coalesce(chunk, size, now)
                self.c.bytes_sent += len(chunk.data)
            else:
                chunk = self.stream.pop_front(0)    # a bare FIN
            self._send_chunk(chunk, now)

    def _coalesce(self, chunk: Chunk, size: int, now: float) -> Chunk:
        """`chunk` and what may follow it at once, in one segment of up to `size` bytes, as the client's
        own kernel would send pipelined requests: a train of tiny segments (requests that fell behind
        and are released together) costs a packet each here and can overrun the target's receive
        memory (pruned, dropped, retransmitted). A chunk that starts a turn joins only a segment that
        starts one too, so a restart still finds its place (see _on_target_reset)."""
        stream = self.stream
        parts = [chunk.data]
        total = len(chunk.data)
        ts_val = chunk.ts_val
        while stream.unsent and total < size:
            nxt = stream.unsent[0]
            if nxt.flags or not nxt.data or (nxt.boundary and not chunk.boundary):
                break
            if nxt.turn and not self._turn_released(nxt, now):
                break
            part = stream.pop_front(size - total)
            parts.append(part.data)
            total += len(part.data)
            if part.ts_val is not None:
                ts_val = part.ts_val
        if len(parts) == 1:
            return chunk
        self.c.chunks_coalesced += len(parts) - 1
        return Chunk(chunk.seq, b"".join(parts), chunk.ack, 0, chunk.t, ts_val, boundary=chunk.boundary)

    def _send_chunk(self, chunk: Chunk, now: float) -> None:
        self._emit(chunk.seq, self.rcv_nxt, ACK | (PSH if chunk.data else 0) | (chunk.flags & FIN),
                   self._ts_options(chunk.ts_val), chunk.data)
        self.ack_pending = False
        chunk.sent = now
        self.inflight = queued(self.inflight, chunk)
        self.inflight_bytes += len(chunk.data)
        self.snd_nxt = chunk.end
        if chunk.flags & FIN:
            self.fin_sent = True
        if self.rto_at == INF:
            self.rto_at = now + self.rto

    def _retransmit_head(self) -> None:
        head = self.inflight[0]
        head.sent = 0.0                      # Karn: an ack of it may be for either copy
        self._emit(head.seq, self.rcv_nxt, ACK | (PSH if head.data else 0) | (head.flags & FIN),
                   self._ts_options(head.ts_val), head.data)
        self.ack_pending = False

    def _flush_ack(self) -> None:
        if self.ack_pending:
            self.ack_pending = False
            self.c.acks_sent += 1
            self._emit(self.snd_nxt, self.rcv_nxt, ACK, self._ts_options(None))

    def _send_reset(self) -> None:
        if self.state is State.SYN_SENT:
            self.c.resets_sent += 1
            self._emit((self.client_isn + 1) & 0xFFFFFFFF, 0, RST)
        elif self.state is State.ESTABLISHED:
            # RFC 5961: the target takes a RST only at exactly its rcv_nxt, which lies between
            # what it acknowledged and what we sent; cover both ends.
            self.c.resets_sent += 1
            self._emit(self.snd_nxt, self.rcv_nxt, RST | ACK)
            if self.snd_una != self.snd_nxt:
                self._emit(self.snd_una, self.rcv_nxt, RST | ACK)

    def _ts_options(self, ts_val: int | None) -> bytes:
        if not self.ts_ok:
            return b""
        if ts_val is not None and seq_lt(self.last_ts_val, ts_val):
            self.last_ts_val = ts_val
        return timestamp_option(self.last_ts_val, self.ts_recent)

    def _emit(self, seq: int, ack: int, flags: int, options: bytes = b"", payload: bytes = b"",
              window: int | None = None) -> None:
        cip, cport, tip, tport = self.key
        self.ip_id = (self.ip_id + 1) & 0xFFFF
        self.c.segments_sent += 1
        self.out.append(Emit(cip, tip, cport, tport, seq, ack, flags,
                             self.p.our_window if window is None else window, options, payload, self.ip_id))

    def _close(self, now: float) -> None:
        self.state = State.CLOSED
        self.closed_at = now
        self.stream.restart_at(self.stream.end)
        self.inflight = NO_CHUNKS
        self.inflight_bytes = 0

    def reset(self, now: float) -> None:
        """Abort the target connection (shutdown, a new SYN on this client port, a timeout)."""
        self._send_reset()
        self._close(now)
