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

import struct
from collections.abc import Callable
from typing import Final

from appliance.core.packet import (
    ACK,
    FIN,
    RST,
    SYN,
    TcpSegment,
    mss_option,
    parse_options,
    seq_diff,
    seq_le,
    seq_lt,
    ts_val_of,
)
from appliance.engine.model import Emit, Key, State
from appliance.engine.params import EngineCounters, EngineParams
from appliance.engine.stream import INF, NO_CHUNKS, Chunk, ClientStream
from appliance.engine.transmit import Transmitter

__all__ = ["INF", "Chunk", "Emit", "Key", "Session", "State"]

Rekey = Callable[["Session"], None]   # the table moves a session to another client port (see _restart)

# The receive window a RST is challenged in: what our forged window could mean at the largest scale
# the client's SYN may have offered (65535 << 14); a RST outside it is ignored outright.
RST_WINDOW: Final = 65535 << 14


class Session(Transmitter):
    """State of one client connection and of its replica connection on the target."""

    __slots__ = ("key", "p", "c", "out", "rekey", "created", "last_client", "last_target", "deadline",
                 "restarts", "stream", "client_isn", "snd_una", "syn_options", "syn_window", "syn_sent_at",
                 "syn_rto_at", "syn_interval", "rcv_nxt", "resp_bytes", "last_resp_data", "snd_wnd",
                 "snd_wl1", "snd_wl2", "target_wscale", "ts_ok", "ts_recent", "payload_max", "rto", "srtt",
                 "rttvar", "dupacks", "recover", "recovering", "target_fin")

    def __init__(self, key: Key, params: EngineParams, counters: EngineCounters, out: list[Emit],
                 now: float, rekey: Rekey | None = None) -> None:
        self.key = key
        self.p = params
        self.c = counters
        self.out = out
        self.rekey = rekey
        self.state = State.SYN_SENT
        self.created = now
        self.last_client = now
        self.last_target = now
        self.closed_at = INF
        self.deadline = INF
        self.restarts = 0
        self.ip_id = 0
        self.stream = ClientStream(counters)
        self._new_connection(now)

    @property
    def buffered(self) -> int:
        """Client bytes this session holds: unsent, beyond a hole, or sent and not yet acked."""
        return self.stream.unsent_bytes + self.stream.ooo_bytes + self.inflight_bytes

    # ---- connection set-up ------------------------------------------------------------------
    def _new_connection(self, now: float) -> None:
        """Forget the target connection (the captured stream's turn accounting stays)."""
        self.client_isn = 0
        self.snd_una = 0
        self.snd_nxt = 0
        self.inflight = NO_CHUNKS
        self.inflight_bytes = 0
        self.syn_options = b""
        self.syn_window = 65535
        self.syn_sent_at = now
        self.syn_rto_at = INF
        self.syn_interval = self.p.syn_rto
        self.rcv_nxt = 0
        self.resp_bytes = 0
        self.resp_at_release = 0
        self.last_resp_data = -INF
        self.snd_wnd = 65535
        self.snd_wl1 = 0
        self.snd_wl2 = 0
        self.target_wscale = 0
        self.ts_ok = False
        self.ts_recent = 0
        self.last_ts_val = 0
        self.payload_max = self.p.mtu - 40
        self.rto = self.p.rto_min
        self.srtt = 0.0                  # smoothed round trip to the target and back through interceptd
        self.rttvar = 0.0                # (RFC 6298; 0: no sample yet)
        self.rto_at = INF
        self.persist_at = INF
        self.dupacks = 0
        self.recover = 0                 # snd_nxt when a loss was found: acks below it are partial
        self.recovering = False
        self.fin_sent = False
        self.target_fin = False
        self.ack_pending = False
        self.held_since = INF

    def start_with_syn(self, seg: TcpSegment, now: float) -> None:
        """Captured SYN: send the client's own SYN (its ISN and options) to the target."""
        self.client_isn = seg.seq
        self.snd_una = self.snd_nxt = (seg.seq + 1) & 0xFFFFFFFF
        self.stream.restart_at(self.snd_nxt)
        self.syn_options = seg.options
        self.syn_window = seg.window
        self.last_ts_val = parse_options(seg.options).ts_val or 0
        self._send_syn(now)

    def start_without_syn(self, seg: TcpSegment, now: float) -> None:
        """Captured data of a connection whose SYN we never saw: forge a SYN just before it."""
        self.c.sessions_fake_syn += 1
        self.stream.online_base = seg.ack
        self._forge_syn(seg.seq, now)

    def _forge_syn(self, first_seq: int, now: float) -> None:
        self.client_isn = (first_seq - 1) & 0xFFFFFFFF
        self.snd_una = self.snd_nxt = first_seq
        self.stream.restart_at(first_seq)
        self.syn_options = mss_option(self.p.fake_syn_mss)
        self.syn_window = 65535
        self._send_syn(now)

    def _send_syn(self, now: float) -> None:
        self.state = State.SYN_SENT
        self.syn_sent_at = now
        self.syn_interval = self.p.syn_rto
        self.syn_rto_at = now + self.syn_interval
        self._emit(self.client_isn, 0, SYN, self.syn_options, window=self.syn_window)

    def _on_stale_connection(self, hdr: TcpSegment, now: float) -> None:
        """RFC 793, SYN-SENT: an ACK that does not acknowledge our SYN means the target still holds an
        older connection on this 4-tuple (half-open after a crash, a lost last ACK, TIME_WAIT) and
        answered our SYN with a challenge ACK. A RST at its ack number ends it, as the client's kernel
        would do; the SYN goes again at once, the first time (later ones wait for the retry timer, so a
        target that ignores the RST cannot make us loop)."""
        self.c.target_stale_resets += 1
        self.c.resets_sent += 1
        self._emit(hdr.ack, 0, RST)
        if self.syn_interval == self.p.syn_rto:
            self.syn_rto_at = now

    def _on_syn_ack(self, hdr: TcpSegment, now: float) -> None:
        ours = parse_options(self.syn_options)
        theirs = parse_options(hdr.options)
        self.rcv_nxt = (hdr.seq + 1) & 0xFFFFFFFF
        ws_ok = ours.wscale is not None and theirs.wscale is not None
        self.target_wscale = theirs.wscale if ws_ok and theirs.wscale is not None else 0
        self.ts_ok = ours.ts_val is not None and theirs.ts_val is not None
        if self.ts_ok and theirs.ts_val is not None:
            self.ts_recent = theirs.ts_val
        self.snd_wnd = hdr.window              # a SYN-ACK's window is never scaled
        self.snd_wl1, self.snd_wl2 = hdr.seq, hdr.ack
        mss = min(self.p.mtu - 40, theirs.mss or 536)
        self.payload_max = max(64, mss - (12 if self.ts_ok else 0))
        self.state = State.ESTABLISHED
        self.syn_rto_at = INF
        self.syn_options = b""                 # only a SYN (re)sent from SYN_SENT needs them
        self.c.sessions_established += 1
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
            if self.stream.online_base is None and seg.flags & ACK and seg.seq == self.stream.end:
                self.stream.online_base = seg.ack    # the handshake's third segment
            return
        ts_val = ts_val_of(seg.options)
        close = seg.flags & (FIN | RST)
        if close and seg.payload:           # the bytes, then the close on its own: it waits for them
            self._client_chunk(Chunk(seg.seq, seg.payload, seg.ack, 0, t_capture, ts_val), now)
            self._client_chunk(Chunk((seg.seq + len(seg.payload)) & 0xFFFFFFFF, b"", seg.ack, close, t_capture,
                                     ts_val), now)
        else:
            self._client_chunk(Chunk(seg.seq, seg.payload, seg.ack, close, t_capture, ts_val), now)

    def _client_chunk(self, chunk: Chunk, now: float) -> None:
        if self.state is State.RESYNC:
            self._resync_candidate(chunk, now)
        else:
            self.stream.accept(chunk, now)
            self._check_buffer(now)

    def _check_buffer(self, now: float) -> None:
        if self.buffered > self.p.buffer_limit:
            self.c.buffer_overflows += 1
            self._resync(now)

    # ---- resynchronisation: a new target connection, started at a turn ------------------------
    def _resync(self, now: float) -> None:
        """Reset the target connection; the session restarts at the next captured turn."""
        pending = self.stream.take_ooo()
        self.c.resync_bytes_dropped += self.stream.unsent_bytes      # never reached the target
        self._send_reset()
        self._new_connection(now)
        self.stream.restart_at(self.stream.end)
        self.state = State.RESYNC
        for chunk in pending:
            if self.state is State.RESYNC:
                self._resync_candidate(chunk, now)
            else:
                self.stream.accept(chunk, now)

    def _resync_candidate(self, chunk: Chunk, now: float) -> None:
        if not chunk.data:
            if chunk.flags:                   # the client closed meanwhile: so are we
                self._close(now)
            return
        if self.stream.need_of(chunk) <= self.stream.last_need:
            self.c.resync_bytes_dropped += len(chunk.data)
            return
        self._restart([chunk], now)

    def _restart(self, chunks: list[Chunk], now: float) -> None:
        """A new target connection replaying `chunks` (the first starts a turn). It comes from another
        client port (the table's `rekey`): the target may still hold, or refuse, the 4-tuple it reset."""
        if self.restarts >= self.p.max_restarts:
            self.c.resync_bytes_dropped += sum(len(ch.data) for ch in chunks)
            self._close(now)
            return
        self.restarts += 1
        self.c.restarts += 1
        self.c.sessions_fake_syn += 1
        if self.rekey is not None:
            self.rekey(self)
        first = chunks[0]
        self._new_connection(now)
        self.stream.last_need = self.stream.need_of(first)   # its answer was seen online already
        self._forge_syn(first.seq, now)
        for chunk in chunks:
            chunk.turn, chunk.need, chunk.boundary = False, 0, False
            self.stream.accept(chunk, now)

    # ---- target headers (relayed by interceptd) ---------------------------------------------
    def target_segment(self, hdr: TcpSegment, now: float) -> None:
        self.last_target = now
        if self.state in (State.CLOSED, State.RESYNC):
            self.c.responses_late += 1
            return
        if hdr.flags & RST:
            if self._reset_acceptable(hdr):
                self._on_target_reset(now)
            return
        if self.state is State.SYN_SENT:
            if hdr.flags & ACK and hdr.ack != (self.client_isn + 1) & 0xFFFFFFFF:
                self._on_stale_connection(hdr, now)
            elif hdr.flags & SYN and hdr.flags & ACK:
                self._on_syn_ack(hdr, now)
            return
        if hdr.flags & SYN:                      # our third segment was lost: answer again
            if (hdr.seq + 1) & 0xFFFFFFFF != self.rcv_nxt and not self.resp_bytes and hdr.flags & ACK \
                    and hdr.ack == (self.client_isn + 1) & 0xFFFFFFFF and self.snd_una == hdr.ack:
                # A SYN-ACK with another ISN, nothing exchanged yet: our SYN went twice (the answer to the
                # first was late here) and the target answered the first with a SYN cookie, the second
                # from its SYN queue. Only the second is kept there: an ACK of the first is reset.
                self.c.target_isn_changes += 1
                self.rcv_nxt = (hdr.seq + 1) & 0xFFFFFFFF
                self.snd_wl1 = hdr.seq
                if self.ts_ok:
                    self.ts_recent = ts_val_of(hdr.options) or self.ts_recent
            self.ack_pending = True
            return
        if self.ts_ok and hdr.options:
            ts = ts_val_of(hdr.options)
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
            sent = 0.0
            while self.inflight and seq_le(self.inflight[0].end, ack):
                done = self.inflight.popleft()  # type: ignore[union-attr]
                self.inflight_bytes -= len(done.data)
                self.c.bytes_acked += len(done.data)
                sent = done.sent
            if sent:
                self._rtt_sample(now - sent)
            self.rto = self._base_rto()
            if self.inflight and seq_lt(self.inflight[0].seq, ack):
                head = self.inflight[0]
                cut = seq_diff(ack, head.seq)
                head.data = head.data[cut:]
                head.seq = ack
                self.inflight_bytes -= cut
                self.c.bytes_acked += cut
            if not self.inflight:
                self.inflight = NO_CHUNKS
            self.rto_at = now + self.rto if self.inflight else INF
            if self.recovering:
                if self.inflight and seq_lt(ack, self.recover):
                    # RFC 6582 (NewReno): a partial ack shows the next hole; fill it now, not an RTO later
                    self.c.retransmits += 1
                    self._retransmit_head()
                else:
                    self.recovering = False
        elif ack == self.snd_una and self.inflight and not hdr.payload_len and wnd == self.snd_wnd:
            self.dupacks += 1
            if self.dupacks == 3 and not self.recovering:
                self.c.fast_retransmits += 1
                self._enter_recovery()
        # RFC 793 SND.WL1/WL2: a reordered older segment must not shrink the window back
        if seq_lt(self.snd_wl1, hdr.seq) or (self.snd_wl1 == hdr.seq and seq_le(self.snd_wl2, ack)):
            self.snd_wnd = wnd
            self.snd_wl1, self.snd_wl2 = hdr.seq, ack
            if wnd:
                self.persist_at = INF

    def _reset_acceptable(self, hdr: TcpSegment) -> bool:
        """RFC 5961 3.2, as a client's kernel checks it: only a RST at exactly rcv_nxt resets the
        session (in SYN_SENT: one that acknowledges our SYN). One elsewhere in the window gets a
        challenge ACK (a target that really reset answers it with a RST at the exact number, which
        also recovers from answers interceptd missed); any other is ignored. Either way counted."""
        if self.state is State.SYN_SENT:
            if hdr.flags & ACK and hdr.ack == (self.client_isn + 1) & 0xFFFFFFFF:
                return True
        elif hdr.seq == self.rcv_nxt:
            return True
        elif 0 < seq_diff(hdr.seq, self.rcv_nxt) < RST_WINDOW:
            self.c.target_resets_challenged += 1
            self.c.acks_sent += 1
            self._emit(self.snd_nxt, self.rcv_nxt, ACK, self._ts_options(None))
            return False
        self.c.target_resets_ignored += 1
        return False

    def supersede(self, now: float) -> None:
        """The client opened a new connection on this session's port: it is done with this one. What
        was captured still goes to the target, then a close (the client's, or a FIN in its place)."""
        if self.state is State.RESYNC:
            self._close(now)                # already reset on the target, waiting for a turn: none comes
            return
        stream = self.stream                # SYN_SENT too: the online server accepted the connection
        if not stream.client_closed:
            base = stream.online_base if stream.online_base is not None else 0
            stream.accept(Chunk(stream.end, b"", (base + stream.last_need) & 0xFFFFFFFF, FIN, now, None), now)
        for chunk in stream.take_ooo():     # a hole the new connection can no longer fill
            self.c.gap_bytes_skipped += len(chunk.data)

    def _rtt_sample(self, rtt: float) -> None:
        """RFC 6298 smoothing. The round trip includes interceptd's batching and this worker's own
        backlog: a worker that falls behind waits longer before sending again, instead of
        retransmitting what the target already acknowledged (more load, further behind)."""
        if not self.srtt:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt

    def _base_rto(self) -> float:
        if not self.srtt:
            return self.p.rto_min
        return min(max(self.srtt + max(0.01, 4 * self.rttvar), self.p.rto_min), self.p.rto_max)

    def _enter_recovery(self) -> None:
        """A segment was lost (timeout, or three duplicate acks): send the oldest again, and every
        further hole as partial acks reveal it, until snd_nxt of now is acknowledged."""
        self.recovering = True
        self.recover = self.snd_nxt
        self._retransmit_head()

    def _on_target_reset(self, now: float) -> None:
        if self.state is State.SYN_SENT:
            self.c.handshake_refused += 1
            self._close(now)
            return
        self.c.sessions_reset_by_target += 1
        # The target dropped the connection (e.g. its keep-alive ran out first) while the client
        # went on: requests not yet acknowledged are replayed on a new connection, from a turn.
        unacked = list(self.inflight) + list(self.stream.unsent)
        start = next((i for i, ch in enumerate(unacked) if ch.boundary and ch.data), None)
        if start is None:
            self._close(now)
            return
        self.c.resync_bytes_dropped += sum(len(ch.data) for ch in unacked[:start])
        rest = unacked[start:] + self.stream.take_ooo()
        self._restart(rest, now)

    def _maybe_complete(self, now: float) -> None:
        if self.fin_sent and self.target_fin and self.snd_una == self.snd_nxt:
            self._flush_ack()
            self.c.sessions_completed += 1
            self._close(now)

    # ---- timers -----------------------------------------------------------------------------
    def _idle_deadline(self) -> float:
        pending = self.stream.unsent or self.inflight or self.stream.ooo
        return max(self.last_client, self.last_target) + (
            self.p.session_timeout if pending else self.p.keepalive_timeout)

    def on_timer(self, now: float) -> bool:
        """Run due timers; False when the session should be forgotten.

        Every due-check is written as `now >= start + limit`, the very sum next_deadline()
        returns: `now - start >= limit` can round below limit at that instant, and poll()
        would then re-arm an already-due timer forever.
        """
        if self.state is State.CLOSED:
            return now < self.closed_at + self.p.linger
        if now >= self._idle_deadline():
            self.c.sessions_timed_out += 1
            self.reset(now)
            return True
        if self.state is State.SYN_SENT:
            if now >= self.syn_sent_at + self.p.handshake_timeout:
                self.c.handshake_timeouts += 1
                self.reset(now)
            elif now >= self.syn_rto_at:
                self.syn_interval = min(self.syn_interval * 2, self.p.rto_max)
                self.syn_rto_at = now + self.syn_interval
                self.c.syn_retransmits += 1
                self._emit(self.client_isn, 0, SYN, self.syn_options, window=self.syn_window)
            return True
        if self.state is State.RESYNC:
            return True
        stream = self.stream
        if stream.ooo and now >= stream.gap_since + self.p.gap_timeout:
            self.c.capture_gaps += 1
            first = min(stream.ooo.values(), key=lambda ch: seq_diff(ch.seq, stream.end))
            self.c.gap_bytes_skipped += seq_diff(first.seq, stream.end)
            self._resync(now)
            return True
        if now >= self.rto_at and self.inflight:
            self.c.retransmits += 1
            self._enter_recovery()
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
        d = self._idle_deadline()
        if self.state is State.SYN_SENT:
            return min(d, self.syn_rto_at, self.syn_sent_at + self.p.handshake_timeout)
        if self.state is State.RESYNC:
            return d
        stream = self.stream
        d = min(d, self.rto_at if self.inflight else INF, self.persist_at,
                stream.gap_since + self.p.gap_timeout)
        if stream.unsent and stream.unsent[0].flags:
            head = stream.unsent[0]
            if not self.inflight:
                d = min(d, self.last_target + self.p.close_quiet, head.t + self.p.session_timeout)
        elif stream.unsent and stream.unsent[0].turn:
            head = stream.unsent[0]
            d = min(d, head.t + self.p.max_lag)
            if self.resp_bytes > self.resp_at_release:
                d = min(d, self.last_resp_data + self.p.response_quiet)
        return d

    # ---- hibernation: an idle session packed into bytes ----------------------------------------
    def can_hibernate(self) -> bool:
        """Established, nothing queued or owed: all that is left is numbers (see `hibernate`)."""
        return (self.state is State.ESTABLISHED and not self.inflight and not self.stream.unsent
                and not self.stream.ooo and not self.ack_pending and self.held_since == INF)

    def hibernate(self) -> bytes:
        """This session's state as bytes (~250 instead of ~1,500 as objects). Runs in the owning
        worker; an in-memory format, never on a wire. `deadline` comes first (see packed_deadline)."""
        stream = self.stream
        return _PACKED.pack(*[getattr(self, n) for n in _FLOATS], *[getattr(stream, n) for n in _STREAM_FLOATS],
                            *[getattr(self, n) for n in _INTS], *[getattr(stream, n) for n in _STREAM_INTS],
                            -1 if stream.online_base is None else stream.online_base,
                            *[getattr(self, n) for n in _BOOLS], *[getattr(stream, n) for n in _STREAM_BOOLS],
                            self.state)

    @classmethod
    def revive(cls, key: Key, packed: bytes, params: EngineParams, counters: EngineCounters,
               out: list[Emit], rekey: Rekey | None = None) -> Session:
        """The session `hibernate` packed, as it was."""
        values = _PACKED.unpack(packed)
        # A new session (empty queues, no SYN options: the precondition), every packed value then set
        # over it: a class compiled by mypyc cannot be made without its __init__.
        sess = cls(key, params, counters, out, 0.0, rekey)
        stream = sess.stream
        at = 0
        numbers: tuple[tuple[object, tuple[str, ...]], ...] = (
            (sess, _FLOATS), (stream, _STREAM_FLOATS), (sess, _INTS), (stream, _STREAM_INTS))
        flags: tuple[tuple[object, tuple[str, ...]], ...] = ((sess, _BOOLS), (stream, _STREAM_BOOLS))
        for owner, names in numbers:
            for name in names:
                setattr(owner, name, values[at])
                at += 1
        stream.online_base = None if values[at] == -1 else values[at]
        at += 1
        for owner, names in flags:
            for name in names:
                setattr(owner, name, values[at])
                at += 1
        sess.state = State(values[at])
        return sess


def packed_deadline(packed: bytes) -> float:
    """The timer deadline of a hibernated session, without reviving it."""
    deadline: float = _DEADLINE.unpack_from(packed)[0]
    return deadline


_FLOATS = ("deadline", "created", "last_client", "last_target", "closed_at", "syn_sent_at", "syn_rto_at",
           "syn_interval", "last_resp_data", "rto", "srtt", "rttvar", "rto_at", "persist_at", "held_since")
_STREAM_FLOATS = ("gap_since",)
_INTS = ("restarts", "ip_id", "client_isn", "snd_una", "snd_nxt", "inflight_bytes", "syn_window", "rcv_nxt",
         "resp_bytes", "resp_at_release", "snd_wnd", "snd_wl1", "snd_wl2", "target_wscale", "ts_recent",
         "last_ts_val", "payload_max", "dupacks", "recover")
_STREAM_INTS = ("end", "unsent_bytes", "ooo_bytes", "last_need")
_BOOLS = ("ts_ok", "recovering", "fin_sent", "target_fin", "ack_pending")
_STREAM_BOOLS = ("client_closed",)
# Slots that are not numbers: restored from the table (key, params, counters, output list) or
# empty by the precondition (queues, SYN options); `online_base` (int or None) and `state` are
# packed by hand.
NOT_PACKED = {"key", "p", "c", "out", "rekey", "stream", "inflight", "syn_options", "state", "unsent", "ooo",
              "online_base"}
_PACKED = struct.Struct("=" + "d" * (len(_FLOATS) + len(_STREAM_FLOATS)) + "q" * (len(_INTS) + len(_STREAM_INTS) + 1)
                        + "?" * (len(_BOOLS) + len(_STREAM_BOOLS)) + "B")
_DEADLINE = struct.Struct("=d")
