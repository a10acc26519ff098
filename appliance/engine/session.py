"""One replicated TCP session: plays the real client's side of a connection with the target.

Sans-io: methods take the event and `now` (seconds, the caller's clock) and append `Emit`
commands to the shared output list. Runs inside a rewrite worker, one shard's sessions only.

The client's byte stream is replayed unchanged (same sequence numbers, same bytes); only the
ack number, the timestamp echo and the window are ours. Pacing follows the original
conversation: a captured segment whose ack shows the client had received more response bytes
than before starts a *turn* and is held until the target has answered (as many bytes, or a
quiet pause after some), but never longer than `max_lag` after it was captured.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from appliance.engine.params import EngineCounters, EngineParams
from appliance.packet import (
    ACK, FIN, PSH, RST, SYN, TcpSegment, mss_option, parse_options, seq_diff, seq_le, seq_lt,
    timestamp_option,
)

INF = float("inf")
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


@dataclass(slots=True)
class Chunk:
    """Captured client bytes (or a FIN/RST) waiting to be sent or acknowledged."""

    seq: int
    data: bytes
    ack: int            # the client's ack field when it sent this
    flags: int          # FIN or RST when this chunk carries one
    t: float            # capture time
    ts_val: int | None
    need: int = 0       # response bytes the client received since the previous turn
    turn: bool = False  # held until the target has answered

    @property
    def end(self) -> int:
        return (self.seq + len(self.data) + (1 if self.flags & FIN else 0)) & 0xFFFFFFFF


class Session:
    """State of one client connection and its replica on the target."""

    def __init__(self, key: Key, params: EngineParams, counters: EngineCounters, out: list[Emit],
                 now: float) -> None:
        self.key = key
        self.p = params
        self.c = counters
        self.out = out
        self.state = State.SYN_SENT
        self.created = now
        self.last_client = now
        self.last_target = now
        self.closed_at = INF
        self.deadline = INF
        self.restarts = 0
        self.online_base: int | None = None   # client's ack value before any response bytes
        self.last_need = 0                    # response bytes (relative) the client had seen
        self._new_connection(now)

    # ---- connection set-up ------------------------------------------------------------------
    def _new_connection(self, now: float) -> None:
        self.client_isn = 0
        self.stream_end = 0          # next captured client seq expected (contiguous end)
        self.snd_una = 0
        self.snd_nxt = 0
        self.unsent: deque[Chunk] = deque()
        self.inflight: deque[Chunk] = deque()
        self.ooo: dict[int, Chunk] = {}
        self.gap_since = INF
        self.buffered = 0
        self.syn_options = b""
        self.syn_window = 65535
        self.syn_sent_at = now
        self.syn_rto_at = INF
        self.syn_interval = self.p.syn_rto
        self.target_isn = 0
        self.rcv_nxt = 0
        self.resp_bytes = 0
        self.resp_at_release = 0
        self.last_resp_data = -INF
        self.snd_wnd = 65535
        self.target_wscale = 0
        self.ws_ok = False
        self.ts_ok = False
        self.ts_recent = 0
        self.last_ts_val = 0
        self.payload_max = self.p.mtu - 40
        self.rto = self.p.rto_min
        self.rto_at = INF
        self.persist_at = INF
        self.dupacks = 0
        self.fin_sent = False
        self.target_fin = False
        self.ack_pending = False
        self.ip_id = 0
        self.held_since = INF

    def start_with_syn(self, seg: TcpSegment, now: float) -> None:
        """Captured SYN: send the client's own SYN (its ISN and options) to the target."""
        self.client_isn = seg.seq
        self.stream_end = self.snd_una = self.snd_nxt = (seg.seq + 1) & 0xFFFFFFFF
        self.syn_options = seg.options
        self.syn_window = seg.window
        opts = parse_options(seg.options)
        self.last_ts_val = opts.ts_val or 0
        self._send_syn(now)

    def start_without_syn(self, seg: TcpSegment, now: float) -> None:
        """Captured data of a connection whose SYN we never saw: forge a SYN just before it."""
        self.c.sessions_fake_syn += 1
        self.client_isn = (seg.seq - 1) & 0xFFFFFFFF
        self.stream_end = self.snd_una = self.snd_nxt = seg.seq
        self.syn_options = mss_option(self.p.fake_syn_mss)
        self.syn_window = 65535
        self.online_base = seg.ack
        self.last_need = 0
        self._send_syn(now)

    def _send_syn(self, now: float) -> None:
        self.state = State.SYN_SENT
        self.syn_sent_at = now
        self.syn_interval = self.p.syn_rto
        self.syn_rto_at = now + self.syn_interval
        self._emit(self.client_isn, 0, SYN, self.syn_options, window=self.syn_window)

    def _on_syn_ack(self, hdr: TcpSegment, now: float) -> None:
        ours = parse_options(self.syn_options)
        theirs = parse_options(hdr.options)
        self.target_isn = hdr.seq
        self.rcv_nxt = (hdr.seq + 1) & 0xFFFFFFFF
        self.ws_ok = ours.wscale is not None and theirs.wscale is not None
        self.target_wscale = theirs.wscale if self.ws_ok and theirs.wscale is not None else 0
        self.ts_ok = ours.ts_val is not None and theirs.ts_val is not None
        if self.ts_ok and theirs.ts_val is not None:
            self.ts_recent = theirs.ts_val
        self.snd_wnd = hdr.window              # a SYN-ACK's window is never scaled
        mss = min(self.p.mtu - 40, theirs.mss or 536)
        self.payload_max = max(64, mss - (12 if self.ts_ok else 0))
        self.state = State.ESTABLISHED
        self.syn_rto_at = INF
        self.c.sessions_established += 1
        self.resp_at_release = 0
        self._emit(self.snd_nxt, self.rcv_nxt, ACK, self._ts_options(None))   # third segment, forged
        self.c.acks_sent += 1

    # ---- captured client segments -----------------------------------------------------------
    def client_segment(self, seg: TcpSegment, now: float, t_capture: float) -> None:
        self.last_client = now
        if self.state is State.CLOSED:
            self.c.client_late += 1
            return
        if not seg.payload and not seg.flags & (FIN | RST):
            self.c.client_pure_acks += 1
            if self.online_base is None and seg.flags & ACK and seg.seq == self.stream_end:
                self.online_base = seg.ack    # the handshake's third segment
            return
        opts_ts = parse_options(seg.options).ts_val if seg.options else None
        chunk = Chunk(seg.seq, seg.payload, seg.ack, seg.flags & (FIN | RST), t_capture, opts_ts)
        if self.state is State.RESYNC:
            self._resync_candidate(chunk, now)
            return
        self._accept(chunk, now)

    def _accept(self, chunk: Chunk, now: float) -> None:
        rel = seq_diff(chunk.seq, self.stream_end)
        if rel < 0:
            overlap = -rel
            # whole chunk already in the stream, unless it carries a FIN beyond what we have
            if overlap >= len(chunk.data) and not (chunk.flags and seq_lt(self.stream_end, chunk.end)):
                self.c.client_retransmits += 1
                return
            chunk.data = chunk.data[overlap:]
            chunk.seq = self.stream_end
        elif rel > 0:
            old = self.ooo.get(chunk.seq)
            if old is None or seq_lt(old.end, chunk.end):    # keep the longer of two at one seq
                self.buffered += len(chunk.data) - (len(old.data) if old else 0)
                self.ooo[chunk.seq] = chunk
                if self.gap_since == INF:
                    self.gap_since = now
            self._check_buffer(now)
            return
        self._append(chunk)
        while self.ooo:
            nxt = self._pop_ooo()
            if nxt is None:
                break
            self._append(nxt)
        if not self.ooo:
            self.gap_since = INF
        self._check_buffer(now)

    def _pop_ooo(self) -> Chunk | None:
        """The buffered chunk that continues the stream, or None; drops chunks now behind it.

        Chunks buffered ahead of a hole may overlap each other (a retransmission segmented
        differently): one that starts before stream_end but reaches past it is trimmed and used.
        """
        nxt = self.ooo.pop(self.stream_end, None)
        if nxt is not None:
            self.buffered -= len(nxt.data)
            return nxt
        for seq in [s for s in self.ooo if seq_lt(s, self.stream_end)]:
            ch = self.ooo[seq]
            if seq_le(ch.end, self.stream_end):      # wholly behind the stream: stale
                del self.ooo[seq]
                self.buffered -= len(ch.data)
            elif nxt is None:                        # straddles the stream's end: trim and use
                del self.ooo[seq]
                self.buffered -= len(ch.data)
                ch.data = ch.data[seq_diff(self.stream_end, ch.seq):]
                ch.seq = self.stream_end
                nxt = ch
        return nxt

    def _append(self, chunk: Chunk) -> None:
        if self.online_base is None:
            self.online_base = chunk.ack
        need = seq_diff(chunk.ack, self.online_base)
        if need > self.last_need:
            chunk.turn = True
            chunk.need = need - self.last_need
            self.last_need = need
        self.unsent.append(chunk)
        self.buffered += len(chunk.data)
        self.stream_end = chunk.end

    def _check_buffer(self, now: float) -> None:
        if self.buffered > self.p.buffer_limit:
            self.c.buffer_overflows += 1
            self._resync(now)

    # ---- resynchronisation: drop the target connection, restart at the next turn -------------
    def _resync(self, now: float) -> None:
        """Reset the target connection; the session restarts at the next captured turn."""
        pending = sorted(self.ooo.values(), key=lambda ch: seq_diff(ch.seq, self.stream_end))
        self.c.resync_bytes_dropped += sum(len(ch.data) for ch in self.unsent)
        self._send_reset()
        self._new_connection(now)
        self.state = State.RESYNC
        for chunk in pending:
            if self.state is State.RESYNC:
                self._resync_candidate(chunk, now)
            else:
                self._accept(chunk, now)

    def _resync_candidate(self, chunk: Chunk, now: float) -> None:
        base = self.online_base if self.online_base is not None else chunk.ack
        if seq_diff(chunk.ack, base) <= self.last_need or not chunk.data:
            self.c.resync_bytes_dropped += len(chunk.data)
            return
        if self.restarts >= self.p.max_restarts:
            self.c.resync_bytes_dropped += len(chunk.data)
            self._close(now)
            return
        self.restarts += 1
        self.c.restarts += 1
        self.c.sessions_fake_syn += 1
        self.client_isn = (chunk.seq - 1) & 0xFFFFFFFF
        self.stream_end = self.snd_una = self.snd_nxt = chunk.seq
        self.syn_options = mss_option(self.p.fake_syn_mss)
        self.syn_window = 65535
        self.last_need = seq_diff(chunk.ack, base)   # this turn's answer was already seen online
        self._send_syn(now)
        self._accept(chunk, now)

    # ---- target headers (relayed by interceptd) ---------------------------------------------
    def target_segment(self, hdr: TcpSegment, now: float) -> None:
        self.last_target = now
        if self.state in (State.CLOSED, State.RESYNC):
            self.c.responses_late += 1
            return
        if hdr.flags & RST:
            self._on_target_reset(now)
            return
        if self.state is State.SYN_SENT:
            if hdr.flags & SYN and hdr.flags & ACK and hdr.ack == (self.client_isn + 1) & 0xFFFFFFFF:
                self._on_syn_ack(hdr, now)
            return
        if hdr.flags & SYN:                      # our third segment was lost: answer again
            self.ack_pending = True
            return
        if self.ts_ok and hdr.options:
            ts = parse_options(hdr.options).ts_val
            if ts is not None:
                self.ts_recent = ts
        if hdr.flags & ACK:
            self._on_ack(hdr, now)
        seq_len = hdr.payload_len + (1 if hdr.flags & FIN else 0)
        if seq_len:
            end = (hdr.seq + seq_len) & 0xFFFFFFFF
            if seq_lt(self.rcv_nxt, hdr.seq):
                self.c.response_gaps += 1    # headers we never saw: ack past them anyway
            if seq_lt(self.rcv_nxt, end):
                self.resp_bytes += seq_diff(end, self.rcv_nxt)
                self.rcv_nxt = end
                self.last_resp_data = now
            if hdr.flags & FIN:
                self.target_fin = True
            self.ack_pending = True
        self._maybe_complete(now)

    def _on_ack(self, hdr: TcpSegment, now: float) -> None:
        ack = hdr.ack
        wnd = hdr.window << self.target_wscale
        if seq_lt(self.snd_una, ack) and seq_le(ack, self.snd_nxt):
            self.snd_una = ack
            self.dupacks = 0
            self.rto = self.p.rto_min
            while self.inflight and seq_le(self.inflight[0].end, ack):
                done = self.inflight.popleft()
                self.buffered -= len(done.data)
                self.c.bytes_acked += len(done.data)
            if self.inflight and seq_lt(self.inflight[0].seq, ack):
                head = self.inflight[0]
                cut = seq_diff(ack, head.seq)
                head.data = head.data[cut:]
                head.seq = ack
                self.buffered -= cut
                self.c.bytes_acked += cut
            self.rto_at = now + self.rto if self.inflight else INF
        elif ack == self.snd_una and self.inflight and not hdr.payload_len and wnd == self.snd_wnd:
            self.dupacks += 1
            if self.dupacks == 3:
                self.c.fast_retransmits += 1
                self._retransmit_head()
        self.snd_wnd = wnd
        if wnd:
            self.persist_at = INF

    def _on_target_reset(self, now: float) -> None:
        if self.state is State.SYN_SENT:
            self.c.handshake_refused += 1
            self._close(now)
            return
        self.c.sessions_reset_by_target += 1
        if any(ch.turn for ch in self.unsent) and self.restarts < self.p.max_restarts:
            # the target dropped the connection while the client went on: restart at a turn
            first_turn = next(i for i, ch in enumerate(self.unsent) if ch.turn)
            rest = list(self.unsent)[first_turn:]
            self.c.resync_bytes_dropped += sum(len(ch.data) for ch in list(self.unsent)[:first_turn])
            self._new_connection(now)
            self.state = State.RESYNC
            self.last_need -= sum(ch.need for ch in rest)
            for chunk in rest:
                chunk.turn, chunk.need = False, 0
                if self.state is State.RESYNC:
                    self._resync_candidate(chunk, now)
                else:
                    self._accept(chunk, now)
            return
        self._close(now)

    def _maybe_complete(self, now: float) -> None:
        if self.fin_sent and self.target_fin and self.snd_una == self.snd_nxt:
            self._flush_ack()
            self.c.sessions_completed += 1
            self._close(now)

    # ---- sending ----------------------------------------------------------------------------
    def pump(self, now: float) -> None:
        """Send what the turn, the window and the stream allow; then any pending ACK."""
        if self.state is State.ESTABLISHED:
            self._send_ready(now)
        if self.state is State.ESTABLISHED:
            self._flush_ack()

    def _turn_released(self, chunk: Chunk, now: float) -> bool:
        turn_bytes = self.resp_bytes - self.resp_at_release
        if turn_bytes >= chunk.need:
            released = True
        elif turn_bytes > 0 and now >= self.last_resp_data + self.p.response_quiet:
            self.c.turns_quiet += 1
            released = True
        elif now >= chunk.t + self.p.max_lag:
            self.c.turns_lagged += 1
            released = True
        else:
            if self.held_since == INF:
                self.held_since = now
                self.c.turns_waited += 1
            return False
        self.held_since = INF
        chunk.turn = False
        self.resp_at_release = self.resp_bytes
        return True

    def _send_ready(self, now: float) -> None:
        while self.unsent:
            head = self.unsent[0]
            if head.turn and not self._turn_released(head, now):
                return
            if head.flags & RST:
                if self.inflight:
                    return                      # let the target take every byte first
                self.unsent.popleft()
                self.c.sessions_reset_by_client += 1
                self._send_reset()
                self._close(now)
                return
            if not head.data:                   # a bare FIN
                self.unsent.popleft()
                self._send_chunk(head, now)
                self.fin_sent = True
                continue
            room = self.snd_wnd - seq_diff(self.snd_nxt, self.snd_una)
            if room <= 0:
                if self.persist_at == INF:
                    self.c.window_stalls += 1
                    self.persist_at = now + self.rto
                return
            size = min(self.payload_max, room)
            if len(head.data) > size:
                part = Chunk(head.seq, head.data[:size], head.ack, 0, head.t, head.ts_val)
                head.data = head.data[size:]
                head.seq = (head.seq + size) & 0xFFFFFFFF
                head = part
            else:
                self.unsent.popleft()
            self._send_chunk(head, now)
            self.c.bytes_sent += len(head.data)
            if head.flags & FIN:
                self.fin_sent = True

    def _send_chunk(self, chunk: Chunk, now: float) -> None:
        flags = ACK | (PSH if chunk.data else 0) | (chunk.flags & FIN)
        self._emit(chunk.seq, self.rcv_nxt, flags, self._ts_options(chunk.ts_val), chunk.data)
        self.ack_pending = False
        self.inflight.append(chunk)
        self.snd_nxt = chunk.end
        if self.rto_at == INF:
            self.rto_at = now + self.rto

    def _retransmit_head(self) -> None:
        head = self.inflight[0]
        flags = ACK | (PSH if head.data else 0) | (head.flags & FIN)
        self._emit(head.seq, self.rcv_nxt, flags, self._ts_options(head.ts_val), head.data)
        self.ack_pending = False

    def _flush_ack(self) -> None:
        if self.ack_pending:
            self.ack_pending = False
            self.c.acks_sent += 1
            self._emit(self.snd_nxt, self.rcv_nxt, ACK, self._ts_options(None))

    def _send_reset(self) -> None:
        if self.state in (State.CLOSED, State.RESYNC):
            return
        seq = self.snd_nxt if self.state is State.ESTABLISHED else (self.client_isn + 1) & 0xFFFFFFFF
        self.c.resets_sent += 1
        self._emit(seq, self.rcv_nxt, RST | ACK if self.state is State.ESTABLISHED else RST)

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
                             self.p.our_window if window is None else window,
                             options, payload, self.ip_id))

    def _close(self, now: float) -> None:
        self.state = State.CLOSED
        self.closed_at = now
        self.unsent.clear()
        self.inflight.clear()
        self.ooo.clear()
        self.buffered = 0

    def reset(self, now: float) -> None:
        """Abort the target connection (shutdown, or a new SYN on this client port)."""
        self._send_reset()
        self._close(now)

    # ---- timers -----------------------------------------------------------------------------
    def on_timer(self, now: float) -> bool:
        """Run due timers; False when the session should be forgotten."""
        if self.state is State.CLOSED:
            return now < self.closed_at + self.p.linger
        idle_limit = self.p.session_timeout if (self.unsent or self.inflight or self.ooo) \
            else self.p.keepalive_timeout
        # Every due-check is written as `now >= start + limit`, the very sum next_deadline()
        # returns: `now - start >= limit` can round below limit at that instant, and poll()
        # would then re-arm an already-due timer forever.
        if now >= max(self.last_client, self.last_target) + idle_limit:
            self.c.sessions_timed_out += 1
            self.reset(now)
            return True
        if self.state is State.SYN_SENT:
            if now >= self.syn_sent_at + self.p.handshake_timeout:
                self.c.handshake_timeouts += 1
                self.reset(now)
            elif now >= self.syn_rto_at:
                self.syn_interval *= 2
                self.syn_rto_at = now + self.syn_interval
                self._emit(self.client_isn, 0, SYN, self.syn_options, window=self.syn_window)
            return True
        if self.state is State.RESYNC:
            return True
        if self.ooo and now >= self.gap_since + self.p.gap_timeout:
            self.c.capture_gaps += 1
            first = min(self.ooo.values(), key=lambda ch: seq_diff(ch.seq, self.stream_end))
            self.c.gap_bytes_skipped += seq_diff(first.seq, self.stream_end)
            self._resync(now)
            return True
        if now >= self.rto_at and self.inflight:
            self.c.retransmits += 1
            self._retransmit_head()
            self.rto = min(self.rto * 2, self.p.rto_max)
            self.rto_at = now + self.rto
        if now >= self.persist_at:
            # zero-window probe: an old sequence number makes the target re-advertise its window
            self._emit((self.snd_nxt - 1) & 0xFFFFFFFF, self.rcv_nxt, ACK, self._ts_options(None))
            self.persist_at = now + min(self.rto * 2, self.p.rto_max)
        self.pump(now)
        return True

    def next_deadline(self) -> float:
        if self.state is State.CLOSED:
            return self.closed_at + self.p.linger
        pending = self.unsent or self.inflight or self.ooo
        d = max(self.last_client, self.last_target) + (
            self.p.session_timeout if pending else self.p.keepalive_timeout)
        if self.state is State.SYN_SENT:
            return min(d, self.syn_rto_at, self.syn_sent_at + self.p.handshake_timeout)
        if self.state is State.RESYNC:
            return d
        d = min(d, self.rto_at if self.inflight else INF, self.persist_at, self.gap_since + self.p.gap_timeout)
        if self.unsent and self.unsent[0].turn:
            head = self.unsent[0]
            d = min(d, head.t + self.p.max_lag)
            if self.resp_bytes > self.resp_at_release:
                d = min(d, self.last_resp_data + self.p.response_quiet)
        return d
