"""Tunables and counters of the session engine. Plain data, shared by every shard."""

from __future__ import annotations

from dataclasses import dataclass, fields

from appliance.core.counterfield import total


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
    """Monotonic counters of one shard. Every drop and every give-up has its own name.

    Each field's metadata (kind, groups, description: appliance/core/counterfield.py) is what
    status, metrics, the schema and the reports list it by; the engine only ever does `+= 1` on the
    attributes, and the worker reads them with `as_dict` once a second.
    """

    client_segments: int = total("captured client segments handed to the engine", "rate")
    client_syns: int = total("captured client SYNs")
    client_dup_syns: int = total("retransmitted client SYNs of a session already started")
    client_pure_acks: int = total("captured pure ACKs, dropped by design: the engine forges its own ACKs")
    client_retransmits: int = total("captured segments whose bytes were already in the stream "
                                    "(the client retransmitted)")
    client_no_session: int = total("captured FIN, RST or ACK of a connection never seen starting: ignored",
                                   "drop")
    client_late: int = total("captured segments that came after their session closed: ignored", "drop")
    sessions_started: int = total("sessions started on the target", "rate")
    sessions_fake_syn: int = total("sessions started mid-stream with a forged SYN (open before tcpcopyd, "
                                   "or after a resync)")
    midstream_refused: int = total("mid-stream connections the online host's socket table does not hold "
                                   "(spoofed segments?): not replayed", "drop")
    sessions_established: int = total("sessions whose handshake with the target completed")
    sessions_completed: int = total("sessions closed cleanly on both sides", "rate")
    sessions_reset_by_client: int = total("sessions the client reset", "not_completed")
    closes_forced: int = total("client FINs/RSTs sent session_timeout after their capture, bytes still "
                               "unacknowledged", "drop")
    sessions_reset_by_target: int = total("sessions the target reset", "not_completed")
    target_resets_challenged: int = total("RSTs from the target's side not at rcv_nxt: a challenge ACK sent",
                                          "repair")
    target_resets_ignored: int = total("RSTs from the target's side outside the window (or not for our SYN): "
                                       "ignored (forged?)", "drop")
    sessions_timed_out: int = total("sessions reset after session_timeout (or keepalive_timeout) without "
                                    "traffic", "drop", "not_completed")
    handshake_timeouts: int = total("SYNs no SYN-ACK answered within handshake_timeout (route, assistant, "
                                    "filter?)", "drop", "not_completed")
    handshake_refused: int = total("SYNs the target answered with a RST (nothing listening?)",
                                   "drop", "not_completed")
    target_stale_resets: int = total("SYNs answered with an ACK for an older connection on the 4-tuple: "
                                     "that one reset", "repair")
    target_isn_changes: int = total("second SYN-ACKs with another ISN (SYN cookies, our SYN sent twice)",
                                    "repair")
    port_reuse_moves: int = total("new SYNs on a client port whose session was still open or closing on the "
                                  "target: replayed from a spare port (the old one finishes)", "repair")
    port_reuse_resets: int = total("new SYNs on a client port still in use and no spare port: the old "
                                   "session was reset", "drop", "not_completed")
    port_reuse_waits: int = total("new SYNs on a client port whose session was closing and no spare "
                                  "port: the new one waited for it")
    capture_gaps: int = total("holes in the captured client stream that never filled", "drop", "not_completed")
    gap_bytes_skipped: int = total("client bytes skipped over capture gaps")
    buffer_overflows: int = total("sessions resynchronised because they buffered more than buffer_limit",
                                  "drop", "not_completed")
    resync_bytes_dropped: int = total("captured bytes dropped while waiting for a turn to resync on", "drop")
    restarts: int = total("new target connections for an existing client session", "repair")
    sessions_shutdown: int = total("sessions reset on the target because tcpcopyd stopped", "not_completed")
    sessions_evicted: int = total("oldest sessions reset and forgotten: the table was full (max_sessions)",
                                  "not_completed")
    sessions_skipped_paused: int = total("sessions not replayed: they started while replication was paused",
                                         "drop", "not_completed")
    sessions_skipped_sampled: int = total("sessions not replayed: outside the sample rate",
                                          "drop", "not_completed")
    sessions_shed: int = total("sessions not replayed: the worker was more than shed_lag behind its "
                               "capture (overload)", "drop")
    client_skipped: int = total("captured segments of connections not replayed (by choice)")
    segments_sent: int = total("segments emitted towards the target (SYNs, data, ACKs, RSTs)")
    chunks_coalesced: int = total("captured segments sent inside an earlier one's segment (pipelined)",
                                  "repair")
    bytes_sent: int = total("client payload bytes sent to the target (first sends only)", "rate")
    retransmits: int = total("segments sent to the target again, on timeout", "repair", "rate")
    syn_retransmits: int = total("SYNs sent again: no SYN-ACK yet (target down, slow or unreachable)",
                                 "repair")
    fast_retransmits: int = total("segments sent to the target again, on 3 duplicate ACKs", "repair")
    acks_sent: int = total("pure ACKs forged")
    resets_sent: int = total("RSTs sent to the target")
    window_stalls: int = total("sends held by the target's window")
    turns_waited: int = total("requests held for the target's answer")
    turns_quiet: int = total("held requests released by response quiet time (sizes differ)")
    turns_lagged: int = total("held requests released because the session fell max_lag behind")
    responses: int = total("target response headers handed to the engine", "rate")
    responses_unmatched: int = total("response headers for no session of ours", "drop")
    responses_late: int = total("response headers for a session already closed")
    response_gaps: int = total("response headers missing between two that arrived")
    bytes_acked: int = total("client payload bytes the target acknowledged")
    sessions_hibernated: int = total("idle sessions packed into bytes (revived on their next packet)")

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
