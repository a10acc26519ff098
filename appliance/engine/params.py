"""Tunables and counters of the session engine. Plain data, shared by every shard."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class EngineParams:
    """Session engine settings; times in seconds. Validated by appliance.config.loader."""

    mtu: int = 1500                  # largest IP packet we send; bigger captures are split
    fake_syn_mss: int = 1460         # MSS option placed in SYNs we forge (no SYN captured)
    # A real client retries its SYN for a minute or more: replay rides out a short outage of the
    # target the same way (SYNs at 0.5, 1.5, 3.5, then every rto_max), the captured data held meanwhile.
    handshake_timeout: float = 20.0  # SYN sent, no SYN-ACK by then: reset, count handshake_timeouts
    syn_rto: float = 0.5             # first SYN retransmission; doubles up to rto_max
    rto_min: float = 0.1             # retransmission timeout of data to the target; doubles
    rto_max: float = 3.0
    response_quiet: float = 0.010    # a response is complete after this long without target data
    # The client's FIN or RST goes to the target only once every byte before it is acknowledged and the
    # target has been quiet this long (or closed itself): a RST would destroy requests still unread in
    # the target's socket, a FIN make some servers drop pipelined ones. At most session_timeout late.
    close_quiet: float = 0.2
    max_lag: float = 1.0             # a held request is sent anyway once this far behind its capture
    gap_timeout: float = 0.5         # a hole in the captured client stream this old is a capture gap
    session_timeout: float = 120.0   # nothing from either side while data is pending: reset
    keepalive_timeout: float = 720.0 # nothing from either side on an idle session: reset
    linger: float = 4.0              # closed sessions absorb late packets this long
    buffer_limit: int = 16 << 20     # bytes buffered per session before it is resynchronised
    max_restarts: int = 3            # target-side reconnections of one client session
    our_window: int = 65535          # window field in segments we forge
    max_sessions: int = 100_000      # tracked per worker; beyond it the oldest is reset and forgotten
    reuse_wait: float = 2.0          # a new SYN on a closing session's port waits this long for it
    hibernate_after: float = 10.0    # an established session this long without traffic is packed (0: never)
    # Overload: while the segments a worker takes were captured more than this long ago, it starts no new
    # session (sessions_shed), so the ones it started still complete; it starts them again below half of
    # it. 0: never shed.
    shed_lag: float = 0.5


@dataclass(slots=True)
class EngineCounters:
    """Monotonic counters of one shard. Every drop and every give-up has its own name."""

    client_segments: int = 0         # captured segments handed to the engine
    client_syns: int = 0
    client_dup_syns: int = 0         # retransmitted SYN of a session already started
    client_pure_acks: int = 0        # dropped by design: we forge our own ACKs
    client_retransmits: int = 0      # captured bytes already in the stream (client retransmission)
    client_no_session: int = 0       # FIN/RST/ACK for a connection we never saw start: ignored
    client_late: int = 0             # captured after the session closed: ignored
    sessions_started: int = 0
    sessions_fake_syn: int = 0       # started mid-stream (open before tcpcopyd, or after a resync)
    midstream_refused: int = 0       # mid-stream data of a connection the online host never accepted (spoofed?)
    sessions_established: int = 0
    sessions_completed: int = 0      # both sides closed cleanly
    sessions_reset_by_client: int = 0
    closes_forced: int = 0           # a client FIN/RST sent session_timeout after capture, bytes still unacked
    sessions_reset_by_target: int = 0
    target_resets_challenged: int = 0  # RST from the target's side not at rcv_nxt: a challenge ACK sent
    target_resets_ignored: int = 0   # ... outside the window (or not for our SYN): ignored (forged?)
    sessions_timed_out: int = 0
    handshake_timeouts: int = 0      # G8: no SYN-ACK reached us (route, assistant, filter?)
    handshake_refused: int = 0       # target answered the SYN with RST (nothing listening?)
    target_stale_resets: int = 0     # ... with an ACK: it held an older connection on the 4-tuple, reset
    target_isn_changes: int = 0      # a second SYN-ACK with another ISN (SYN cookies, our SYN sent twice)
    port_reuse_moves: int = 0        # G4: new SYN on a client port whose session was still open or closing
                                     # on the target: replayed from a spare port (the old one finishes)
    port_reuse_resets: int = 0       # ... and no spare port: the old session was reset
    port_reuse_waits: int = 0        # ... and no spare port, the old one closing: the new one waited for it
    capture_gaps: int = 0            # G1: a hole in the captured client stream that never filled
    gap_bytes_skipped: int = 0
    buffer_overflows: int = 0
    resync_bytes_dropped: int = 0    # captured bytes dropped while waiting for a turn to resync on
    restarts: int = 0                # new target connection for an existing client session
    sessions_shutdown: int = 0       # reset on the target because tcpcopyd stopped
    sessions_evicted: int = 0        # oldest sessions reset and forgotten: the table was full
    sessions_skipped_paused: int = 0 # not replayed: they started while replication was paused
    sessions_skipped_sampled: int = 0  # not replayed: outside the sample rate
    sessions_shed: int = 0           # not replayed: the worker was too far behind its capture (overload)
    client_skipped: int = 0          # captured segments of connections not replayed (by choice)
    segments_sent: int = 0
    chunks_coalesced: int = 0        # captured segments sent inside an earlier one's segment (pipelined)
    bytes_sent: int = 0              # client payload bytes sent to the target (first sends only)
    retransmits: int = 0             # to the target, on timeout
    syn_retransmits: int = 0         # SYNs sent again: no SYN-ACK yet (target down, slow or unreachable)
    fast_retransmits: int = 0        # to the target, on 3 duplicate acks
    acks_sent: int = 0               # pure ACKs we forged
    resets_sent: int = 0
    window_stalls: int = 0           # sends held by the target's window
    turns_waited: int = 0            # requests held for the target's answer
    turns_quiet: int = 0             # ... released by response quiet time (sizes differ)
    turns_lagged: int = 0            # ... released because the session fell max_lag behind
    responses: int = 0               # response headers handed to the engine
    responses_unmatched: int = 0     # for no session of ours
    responses_late: int = 0          # for a session already closed
    response_gaps: int = 0           # response headers missing between two we saw
    bytes_acked: int = 0             # client payload bytes acknowledged by the target
    sessions_hibernated: int = 0     # idle sessions packed into bytes (revived on their next packet)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
