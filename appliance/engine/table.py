"""The sessions of one shard, their timers, and the event entry points.

Sans-io and single-threaded: a rewrite worker owns one `SessionTable`, feeds it captured
client segments and target headers, calls `flush` after each batch and `poll` when
`next_deadline` passes, and sends every `Emit` it takes from `take_output`.

Idle established sessions are packed into bytes (`Session.hibernate`) after `hibernate_after`
seconds without traffic, a few thousand per `poll`, and revived by `get` on their next event:
a table of mostly idle keep-alive connections stays small.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Final

from appliance.core.packet import ACK, RST, SYN, TcpSegment, seq_diff
from appliance.engine.clientmap import ClientMap
from appliance.engine.params import EngineCounters, EngineParams
from appliance.engine.session import INF, Emit, Key, Session, State, packed_deadline

MIN_TIMER_STEP: Final = 0.0005    # seconds


class SessionTable:
    def __init__(self, params: EngineParams | None = None, counters: EngineCounters | None = None,
                 clients: ClientMap | None = None) -> None:
        self.params = params or EngineParams()
        self.counters = counters or EngineCounters()
        self.clients = clients if clients is not None else ClientMap(0, 1)
        self.sessions: dict[Key, Session | bytes] = {}     # bytes: hibernated (see get)
        self._out: list[Emit] = []
        self._dirty: dict[Key, Session] = {}
        self._timers: list[tuple[float, Key]] = []     # (when, key): the key breaks ties
        self.paused = False              # runtime: start no new sessions
        self.shedding = False            # overload: start no new sessions (see backlog)
        self.sample_rate = 1.0           # runtime: share of new connections replayed
        self._skipped: dict[Key, float] = {}   # connections not replayed, by choice; last seen
        # new connections on a port whose previous session is still closing: (deadline, segments)
        self._waiting: dict[Key, tuple[float, list[tuple[TcpSegment, float]]]] = {}
        self._next_purge = 0.0
        self._sweep: list[Key] = []          # keys still to look at for hibernation
        self._next_sweep = 0.0
        # A captured segment of a connection whose SYN we never saw is only replayed (behind a forged
        # SYN) when this says the online server accepted that connection: a spoofed segment is not.
        # Set by the live rewrite worker (the host's socket table); None trusts every capture (offline).
        self.accepted_online: Callable[[TcpSegment], bool] | None = None
        # Client ports moved (port reuse, restarts): the tuple a connection arrives on -> its session's
        # tuple, and back. Empty, the lookup costs one truth test per segment.
        self._moved: dict[Key, Key] = {}
        self._moved_from: dict[Key, Key] = {}

    # ---- events -----------------------------------------------------------------------------
    def client_segment(self, seg: TcpSegment, target_ip: int, target_port: int, now: float,
                       t_capture: float | None = None) -> None:
        """A captured client->service segment, already mapped to its target.

        Each copy of the connection (see ClientMap: a client pool, several copies) is a session
        of its own, under the client address that copy uses.
        """
        self.counters.client_segments += 1
        t = now if t_capture is None else t_capture
        if self.clients.identity:
            self._client_copy(seg, target_ip, target_port, now, t, seg)
            return
        new = bool(seg.flags & SYN and not seg.flags & ACK)
        for ip, port in self.clients.tuples(seg.src_ip, seg.src_port, target_ip, target_port, new):
            self._client_copy(seg.from_client(ip, port), target_ip, target_port, now, t, seg)

    def _client_copy(self, seg: TcpSegment, target_ip: int, target_port: int, now: float, t: float,
                     captured: TcpSegment) -> None:
        c = self.counters
        key: Key = (seg.src_ip, seg.src_port, target_ip, target_port)
        arrival = key
        if self._moved:
            moved = self._moved.get(key)
            if moved is not None:
                key = moved
                seg = seg.from_client(key[0], key[1])
        sess = self.get(key)
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting[1].append((seg, t))      # the new connection queues behind the closing one
            return
        if key in self._skipped and not (seg.flags & SYN and not seg.flags & ACK):
            self._skipped[key] = now
            c.client_skipped += 1
            return
        if seg.flags & SYN:
            if seg.flags & ACK:
                c.client_no_session += 1
                return
            c.client_syns += 1
            if sess is not None and sess.state is not State.CLOSED:
                if sess.client_isn == seg.seq:
                    c.client_dup_syns += 1
                    return
                # G4: the client reused its port while the replay of the old connection is still open
                # or closing on the target. The new one comes from another port; the old one delivers
                # what it holds, then closes.
                self._dirty[key] = sess
                moved_to = self._port_reused(arrival, sess, now) if self._replays(arrival) else None
                if moved_to is not None:
                    key, seg, sess = moved_to, seg.from_client(moved_to[0], moved_to[1]), None
                elif not self._replays(arrival):
                    sess.supersede(now)       # the new connection is not replayed; the old one ends
                elif sess.stream.client_closed:
                    # no spare port: let the old close finish first (bounded)
                    c.port_reuse_waits += 1
                    self._waiting[key] = (now + self.params.reuse_wait, [(seg, t)])
                    return
                else:
                    c.port_reuse_resets += 1  # no spare port: the old session gives way to the new one
                    sess.reset(now)
            if not self._admit(key, now, arrival):
                return
            sess = self._new(key, now)
            sess.start_with_syn(seg, now)
        elif sess is None or (sess.state is State.CLOSED and seg.payload
                              and not _same_stream(sess, seg)):
            if not seg.payload or seg.flags & RST:
                c.client_no_session += 1
                return
            if self.accepted_online is not None and not self.accepted_online(captured):
                c.midstream_refused += 1      # not remembered: a spoofing flood must not grow memory
                return
            if not self._admit(key, now, arrival):
                return
            sess = self._new(key, now)
            sess.start_without_syn(seg, now)
            sess.client_segment(seg, now, t)
        else:
            sess.client_segment(seg, now, t)
        self._dirty[key] = sess

    def captured_client(self, key: Key) -> tuple[int, int] | None:
        """The captured client (ip, port) a session key replays (a pool address or a spare port maps
        back); None when `key` is no first copy of a captured connection. For answer comparison."""
        return self.clients.captured(self._moved_from.get(key, key))

    def target_segment(self, hdr: TcpSegment, now: float) -> None:
        """A target->client header relayed by interceptd."""
        self.counters.responses += 1
        key = (hdr.dst_ip, hdr.dst_port, hdr.src_ip, hdr.src_port)
        sess = self.get(key)
        if sess is None:
            self.counters.responses_unmatched += 1
            return
        sess.target_segment(hdr, now)
        self._dirty[key] = sess

    def flush(self, now: float) -> None:
        """After a batch of events: let every touched session send, and re-arm its timer."""
        dirty, self._dirty = self._dirty, {}
        for sess in dirty.values():
            sess.pump(now)
            self._arm(sess)
        if self._waiting:
            self._start_waiting(now)

    def _start_waiting(self, now: float) -> None:
        """Connections queued behind a closing session on their port start once it is done."""
        for key, (deadline, segments) in list(self._waiting.items()):
            old = self.get(key)
            if old is not None and old.state is not State.CLOSED:
                if now < deadline:
                    continue
                self.counters.port_reuse_resets += 1
                old.reset(now)
            del self._waiting[key]
            for seg, t in segments:       # queued behind their own SYN: never a mid-stream start
                self._client_copy(seg, key[2], key[3], now, t, seg)
        dirty, self._dirty = self._dirty, {}
        for sess in dirty.values():
            sess.pump(now)
            self._arm(sess)

    def poll(self, now: float, limit: int = 20_000) -> None:
        """Fire the timers that are due, at most `limit` of them (the rest fire on the next call)."""
        if now >= self._next_purge:
            self._purge_skipped(now)
        timers = self._timers
        while timers and timers[0][0] <= now and limit > 0:
            limit -= 1
            when, key = heapq.heappop(timers)
            found = self.sessions.get(key)
            if found is None or _deadline(found) != when:
                continue                     # stale entry: the session re-armed since
            sess = self.get(key)
            assert sess is not None
            sess.deadline = INF
            if sess.on_timer(now):
                self._arm(sess, not_before=now + MIN_TIMER_STEP)
            else:
                del self.sessions[key]
                self._forget(key)
        self.flush(now)
        if self.params.hibernate_after:
            self._hibernate_some(now)

    def next_deadline(self) -> float:
        waiting = min((deadline for deadline, _ in self._waiting.values()), default=INF)
        timers = self._timers
        while timers:
            when, key = timers[0]
            sess = self.sessions.get(key)
            if sess is not None and _deadline(sess) == when:
                return min(when, waiting)
            heapq.heappop(timers)
        return waiting

    def take_output(self) -> list[Emit]:
        out = self._out[:]
        self._out.clear()     # sessions keep a reference to this very list
        return out

    def get(self, key: Key) -> Session | None:
        """The session of `key`, revived if it was hibernated."""
        sess = self.sessions.get(key)
        if isinstance(sess, bytes):
            sess = self.sessions[key] = Session.revive(key, sess, self.params, self.counters, self._out, self._rekey)
        return sess

    def shutdown(self, now: float) -> None:
        """Reset every open session on the target so its sockets are freed (tcpcopyd stops)."""
        for key in list(self.sessions):
            sess = self.get(key)
            assert sess is not None
            if sess.state in (State.SYN_SENT, State.ESTABLISHED):
                self.counters.sessions_shutdown += 1
                sess.reset(now)

    # ---- introspection ----------------------------------------------------------------------
    def active(self) -> int:
        return sum(1 for s in self.sessions.values() if isinstance(s, bytes) or s.state is not State.CLOSED)

    def hibernated(self) -> int:
        return sum(1 for s in self.sessions.values() if isinstance(s, bytes))

    def buffered_bytes(self) -> int:
        return sum(s.buffered for s in self.sessions.values() if not isinstance(s, bytes))

    # ---- internals --------------------------------------------------------------------------
    def backlog(self, lag: float) -> None:
        """How far behind its capture the worker is (the oldest segment of the batch it takes now):
        past `shed_lag` new sessions are shed, below half of it they are started again."""
        limit = self.params.shed_lag
        if not limit:
            return
        if lag > limit:
            self.shedding = True
        elif lag < limit / 2:
            self.shedding = False

    def _replays(self, arrival: Key) -> bool:
        """Whether a new connection arriving on `arrival` would be replayed (no side effects)."""
        return not self.paused and not self.shedding and (
            self.sample_rate >= 1.0 or sample_point(arrival[0], arrival[1]) < self.sample_rate)

    def _admit(self, key: Key, now: float, arrival: Key) -> bool:
        """Whether a new connection is replayed (sampled by the tuple it arrived on); one that is not
        is remembered under its session's `key` and ignored."""
        if self.paused:
            self.counters.sessions_skipped_paused += 1
        elif self.shedding:
            self.counters.sessions_shed += 1
        elif self.sample_rate < 1.0 and sample_point(arrival[0], arrival[1]) >= self.sample_rate:
            self.counters.sessions_skipped_sampled += 1
        else:
            self._skipped.pop(key, None)
            return True
        self._skipped[key] = now
        self.counters.client_skipped += 1
        return False

    def _purge_skipped(self, now: float) -> None:
        self._next_purge = now + 10.0
        horizon = now - self.params.keepalive_timeout
        for key in [k for k, seen in self._skipped.items() if seen < horizon]:
            del self._skipped[key]
            self.clients.release(key)

    def _new(self, key: Key, now: float) -> Session:
        while len(self.sessions) >= self.params.max_sessions:
            self._evict_oldest(now)
        self.counters.sessions_started += 1
        sess = Session(key, self.params, self.counters, self._out, now, self._rekey)
        self.sessions[key] = sess
        return sess

    # ---- client ports moved: port reuse and restarts ---------------------------------------------
    def _taken(self, key: Key) -> bool:
        return key in self.sessions or key in self._moved_from or key in self._skipped or key in self._waiting

    def _move(self, arrival: Key, to: Key) -> None:
        """Segments arriving on `arrival` go to the session on `to` from now on."""
        before = self._moved.get(arrival)
        if before is not None:
            self._moved_from.pop(before, None)
        self._moved[arrival] = to
        self._moved_from[to] = arrival

    def _port_reused(self, arrival: Key, old: Session, now: float) -> Key | None:
        """A spare tuple for a new connection on `arrival`, whose session `old` is still open or closing
        on the target (`old` is superseded: it closes once its bytes are delivered); None if none is free."""
        spare = self.clients.spare(arrival[0], arrival[2], arrival[3], self._taken)
        if spare is None:
            return None
        old.supersede(now)
        self.counters.port_reuse_moves += 1
        self._move(arrival, spare)
        return spare

    def _rekey(self, sess: Session) -> None:
        """Session.rekey: move a restarting session to a spare client tuple (the target may still hold
        or refuse the one it reset); it stays where it is when none is free."""
        old = sess.key
        spare = self.clients.spare(old[0], old[2], old[3], self._taken)
        if spare is None:
            return
        arrival = self._moved_from.get(old, old)
        del self.sessions[old]
        self.sessions[spare] = sess
        sess.key = spare
        sess.deadline = INF                  # the timer entry under the old key is stale: arm anew
        self._move(arrival, spare)

    def _forget(self, key: Key) -> None:
        """The session on `key` is gone from the table: free its tuple and any move to it."""
        self.clients.release(key)
        arrival = self._moved_from.pop(key, None)
        if arrival is not None:
            if self._moved.get(arrival) == key:
                del self._moved[arrival]
            self.clients.release(arrival)

    def _evict_oldest(self, now: float) -> None:
        """Memory stays bounded: the oldest tracked session gives way (a SYN flood, say)."""
        key = next(iter(self.sessions))
        sess = self.get(key)
        assert sess is not None
        del self.sessions[key]
        if sess.state is not State.CLOSED:
            self.counters.sessions_evicted += 1
            sess.reset(now)
        self._dirty.pop(key, None)
        self._forget(key)

    def _arm(self, sess: Session, not_before: float = -INF) -> None:
        # A timer that fired must move forward in time, or a session whose deadline did not
        # advance would keep poll() spinning on it.
        when = max(sess.next_deadline(), not_before)
        if when != sess.deadline:
            sess.deadline = when
            if when != INF:
                heapq.heappush(self._timers, (when, sess.key))
                if len(self._timers) > 2 * len(self.sessions) + 1024:
                    self._compact_timers()

    def _compact_timers(self) -> None:
        """Drop stale timer entries. A session re-armed later leaves its old entry behind until
        that time comes: with long idle deadlines the heap would grow with every event."""
        live = [(when, key) for key, sess in self.sessions.items() if (when := _deadline(sess)) != INF]
        heapq.heapify(live)
        self._timers = live

    def _hibernate_some(self, now: float, budget: int = 2000) -> None:
        """Pack sessions idle for `hibernate_after` seconds; a sweep over the table in slices."""
        if not self._sweep:
            if now < self._next_sweep:
                return
            self._next_sweep = now + self.params.hibernate_after / 2
            self._sweep = list(self.sessions)
        quiet_since = now - self.params.hibernate_after
        sweep, sessions = self._sweep, self.sessions
        for _ in range(min(budget, len(sweep))):
            key = sweep.pop()
            sess = sessions.get(key)
            if (isinstance(sess, Session) and sess.last_client <= quiet_since and sess.last_target <= quiet_since
                    and sess.can_hibernate()):       # poll() flushed first: no session is dirty now
                sessions[key] = sess.hibernate()
                self.counters.sessions_hibernated += 1


def _deadline(entry: Session | bytes) -> float:
    """The timer deadline of a session, hibernated or not."""
    return packed_deadline(entry) if isinstance(entry, bytes) else entry.deadline


def _same_stream(sess: Session, seg: TcpSegment) -> bool:
    """A late segment of the closed session (not a new connection on the same port)."""
    return abs(seq_diff(seg.seq, sess.stream.end)) < 1 << 24


def sample_point(client_ip: int, client_port: int) -> float:
    """A fixed point in [0, 1) per client (ip, port): a connection is sampled if below the rate."""
    h = (client_ip * 0x85EBCA6B ^ client_port * 0xC2B2AE35 ^ 0x5BD1E995) & 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x7FEB352D) & 0xFFFFFFFF
    h ^= h >> 15
    return h / 4294967296.0
