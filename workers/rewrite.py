"""Rewrite-and-send process: owns one shard's sessions and talks to the target with a raw socket.

Runs in its own pinned child. Binds its segments queue (batches from the captures or the offline
reader), subscribes to every interceptd for its shard's response headers (appliance/tcpcopyd/answers.py),
takes answers first (they unblock sends), feeds the sans-io `SessionTable`, and sends what it
emits with IP_HDRINCL so the target sees the real client address. Send errors are counted by
errno; none stops the worker. In compare mode it also takes the online server's answers from its
queue and the target's answer turns from interceptd, and pairs them (appliance/compare/tracker.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import zmq

from appliance.compare.report import to_json_line
from appliance.compare.tracker import Comparer
from appliance.compare.turns import AssemblerSpec
from appliance.compare.verdict import VerdictSpec
from appliance.config.specs import RewriteSpec, spec_from_json
from appliance.core import wire
from appliance.core.counters import RewriteCounters, as_dict
from appliance.core.packet import MalformedPacket, ip_to_int, parse_ipv4_tcp
from appliance.core.transfer import TransferMap, parse_transfers
from appliance.engine.clientmap import ClientMap
from appliance.engine.session import INF, Emit
from appliance.engine.table import SessionTable
from appliance.host.rawsend import RawSender
from appliance.host.sockdiag import SocketTable
from appliance.tcpcopyd.answers import AnswerChannel, intercept_endpoints
from appliance.tcpcopyd.differences import DifferencesFile
from workers.base import Worker, child_main

log = logging.getLogger(__name__)

MAX_POLL_MS = 100
LATENCY_SAMPLES = 4096
STEP_BUDGET = 0.05        # seconds of queue draining per loop turn: heartbeats and timers keep going


class RewriteWorker(Worker):
    role = "rewrite"

    def __init__(self, spec: RewriteSpec) -> None:
        super().__init__(spec.index, spec.run_dir, spec.cpus,
                         f"tcpcopyd: rewrite {spec.index}/{spec.shards}")
        self.spec = spec
        pool = tuple(ip_to_int(a) for a in spec.client_pool)
        self.table = SessionTable(spec.engine, clients=ClientMap(spec.index, spec.shards, pool, spec.copies))
        self.table.sample_rate = spec.sample_rate
        self.transfers = TransferMap(parse_transfers(spec.transfers))
        self.bad_frames = 0
        self.malformed = 0
        self.no_transfer = 0
        self.segment_batches = 0
        self.segments_received = 0
        self.response_batches = 0
        self.capture_latency_max = 0.0
        self.last_send_at = 0.0        # epoch: an offline replay's end is its workers' last send
        self._handshakes_warned = 0
        self._latencies = [0.0] * LATENCY_SAMPLES   # capture -> worker, the most recent segments
        self._lat_at = 0
        self._unmatched_warned = 0
        self._next_handshake_warning = 0.0
        self._midstream_warned = 0
        self._shed_warned = 0
        self._next_shed_warning = 0.0
        self._next_midstream_warning = 0.0
        c = spec.compare
        self.comparer = None if c is None else Comparer(
            AssemblerSpec(head_bytes=c.head_bytes),
            VerdictSpec(ignore_headers=frozenset(c.ignore_headers), latency_factor=c.latency_factor,
                        latency_floor=c.latency_floor))

    def setup(self) -> None:
        self.sender = RawSender(self.spec.engine.mtu)
        log.debug("rewrite %d: %s", self.index, "sendmmsg batches" if self.sender.batched else "one sendto each")
        self.segments = self.socket(zmq.PULL, bind=wire.segments_endpoint(self.run_dir, self.index), hwm=4096)
        spec = self.spec
        assert self.ctx is not None
        self.channel = AnswerChannel(self.ctx, spec.shards, spec.index, intercept_endpoints(spec.intercepts),
                                     spec.secret_key, spec.intercept_public_key, compare=self.comparer is not None)
        self.differences = (DifferencesFile(spec.compare.differences_file, spec.compare.differences_max_bytes)
                            if spec.compare is not None else None)
        self._sockets.extend(self.channel.sockets())
        self.responses = self.channel.sock
        if spec.verify_midstream:
            sockets = SocketTable()
            # the captured segment goes client -> online server: the server's socket is (dst, src)
            self.table.accepted_online = lambda seg: sockets.holds(seg.dst_ip, seg.dst_port, seg.src_ip, seg.src_port)
        self.poller = zmq.Poller()
        self.poller.register(self.responses, zmq.POLLIN)
        self.poller.register(self.segments, zmq.POLLIN)
        # the monitor is read with the stats, not polled: each polled socket costs syscalls per wake-up
        log.info("rewrite %d: subscribed to %s (%s)", self.index, ", ".join(spec.intercepts),
                 "CURVE" if spec.secret_key else "plaintext, unauthenticated")

    def step(self, now: float) -> None:
        deadline = self.table.next_deadline()
        timeout = MAX_POLL_MS if deadline == INF else max(0, min(MAX_POLL_MS, int((deadline - now) * 1000) + 1))
        ready = dict(self.poller.poll(timeout))
        until = time.monotonic() + STEP_BUDGET
        # recv only from a socket the poller saw ready: a poll costs less than a refused recv
        while ready:
            if self.responses in ready:
                batch = self.channel.receive()
                if batch is not None:
                    self._decoded(batch, self._on_responses)
                if self.comparer is not None and self.channel.turns:
                    self._on_target_turns()
            if self.segments in ready:
                self._decoded(self.segments.recv(zmq.NOBLOCK, copy=True), self._on_segments)
            if time.monotonic() >= until:
                break
            ready = dict(self.poller.poll(0))
        now = time.monotonic()
        self.table.poll(now)
        self._put_on_wire(self.table.take_output())

    def _decoded(self, frame: bytes | memoryview,
                 handler: Callable[[wire.BatchHeader, list[tuple[int, memoryview]]], None]) -> None:
        try:
            header, records = wire.decode_batch(frame)
        except wire.WireError:
            self.bad_frames += 1
            return
        handler(header, records)
        self._put_on_wire(self.table.take_output())

    def _on_segments(self, header: wire.BatchHeader, records: list[tuple[int, memoryview]]) -> None:
        if header.kind != wire.KIND_SEGMENTS:
            self.bad_frames += 1
            return
        self.segment_batches += 1
        self.segments_received += len(records)
        now = time.monotonic()
        wall_to_mono = now - time.time()
        table = self.table
        if records:
            table.backlog(now - (records[0][0] / 1e9 + wall_to_mono))     # the batch's oldest segment
        for ts_ns, packet in records:
            try:
                seg = parse_ipv4_tcp(packet)
            except MalformedPacket:
                self.malformed += 1
                continue
            targets = self.transfers.targets(seg.dst_ip, seg.dst_port)
            if not targets:
                if self.comparer is not None and self.transfers.targets(seg.src_ip, seg.src_port):
                    # compare: an answer of the online server (its capture filter takes them too)
                    self.comparer.online_answer((seg.src_ip, seg.src_port), (seg.dst_ip, seg.dst_port), seg.seq,
                                                seg.ack, seg.flags, seg.payload, ts_ns, seg.payload_len)
                    continue
                self.no_transfer += 1
                continue
            if self.comparer is not None:
                self.comparer.client_data((seg.src_ip, seg.src_port), seg.seq, seg.flags, seg.payload, ts_ns)
            t_capture = ts_ns / 1e9 + wall_to_mono
            lag = now - t_capture
            if lag > self.capture_latency_max:
                self.capture_latency_max = lag
            self._latencies[self._lat_at] = lag
            self._lat_at = (self._lat_at + 1) % LATENCY_SAMPLES
            for target_ip, target_port in targets:
                table.client_segment(seg, target_ip, target_port, now, min(t_capture, now))
        table.flush(now)

    def _on_responses(self, header: wire.BatchHeader, records: list[tuple[int, memoryview]]) -> None:
        if header.kind != wire.KIND_RESPONSES:
            self.bad_frames += 1
            return
        self.response_batches += 1
        now = time.monotonic()
        table = self.table
        for _ts, packet in records:       # interceptd sends this worker its own shard's headers only
            try:
                hdr = parse_ipv4_tcp(packet, keep_payload=False)
            except MalformedPacket:
                self.malformed += 1
                continue
            table.target_segment(hdr, now)
        table.flush(now)

    def _put_on_wire(self, out: list[Emit]) -> None:
        """The engine's segments, built into packets and written to the raw socket in one batch."""
        if not out:
            return
        add = self.sender.add
        for e in out:
            add(e.src_ip, e.dst_ip, e.src_port, e.dst_port, e.seq, e.ack, e.flags, e.window, e.options,
                e.payload, e.ip_id)
        self.sender.flush()
        self.last_send_at = time.time()
        if self.comparer is not None:
            self._requests_sent(out)

    def _requests_sent(self, out: list[Emit]) -> None:
        """Compare: when each request's bytes left for the target (its answer's latency starts there)."""
        comparer, now_ns = self.comparer, time.time_ns()
        assert comparer is not None
        for e in out:
            if e.payload:
                client = self.table.captured_client((e.src_ip, e.src_port, e.dst_ip, e.dst_port))
                if client is not None:
                    comparer.sent(client, e.seq + len(e.payload), now_ns)

    def _on_target_turns(self) -> None:
        """Compare: the target's answer turns (from interceptd), paired with the online ones."""
        comparer = self.comparer
        assert comparer is not None
        for turn in self.channel.take_turns():
            client = self.table.captured_client((turn.client_ip, turn.client_port, turn.server_ip, turn.server_port))
            if client is None:
                comparer.target_turns_unmatched += 1
                continue
            comparer.target_turn(client, turn)

    def _compare_tick(self) -> dict[str, Any]:
        """Once a second: idle online turns judged, the differences written, the counters and report."""
        comparer, differences = self.comparer, self.differences
        assert comparer is not None and differences is not None
        comparer.poll(time.time_ns())
        for c in comparer.comparisons():
            differences.write(to_json_line(c, extra={"worker": self.index, "time": round(time.time(), 3)}))
        counters = comparer.counters()
        counters["differences_written"] = differences.written
        counters["differences_not_written"] = differences.not_written + comparer.not_kept
        return {"compare": counters, "compare_report": comparer.info()}

    def counters(self) -> dict[str, Any]:
        self.channel.on_monitor()
        self._warn_about_handshakes()
        # the engine's counters, then the worker's own (RewriteCounters, appliance/core/counters.py);
        # every worker passes on the interceptds' reports: the supervisor merges them
        out: dict[str, Any] = self.table.counters.as_dict()
        out.update(as_dict(RewriteCounters(
            sessions_active=self.table.active(), sessions_tracked=len(self.table.sessions),
            client_tuples_in_use=len(self.table.clients), client_tuples_exhausted=self.table.clients.exhausted,
            buffered_bytes=self.table.buffered_bytes(), packets_sent=self.sender.sent,
            send_errors=dict(self.sender.errors), bad_frames=self.bad_frames,
            malformed=self.malformed, no_transfer=self.no_transfer,
            segment_batches=self.segment_batches, segments_received=self.segments_received,
            response_batches=self.response_batches,
            capture_latency_max_ms=round(self.capture_latency_max * 1000, 3),
            **self._latency_percentiles(),
            last_send_at=self.last_send_at,
            response_channel=self.channel.counters(),
            intercepts_heard=len(self.channel.intercepts),
            intercepts=self.channel.intercepts_info())))
        if self.comparer is not None:
            out.update(self._compare_tick())
        return out

    def _latency_percentiles(self) -> dict[str, float]:
        seen = sorted(x for x in self._latencies if x > 0)
        if not seen:
            return {"capture_to_worker_p50_ms": 0.0, "capture_to_worker_p99_ms": 0.0}
        return {"capture_to_worker_p50_ms": round(seen[len(seen) // 2] * 1000, 3),
                "capture_to_worker_p99_ms": round(seen[min(len(seen) - 1, int(len(seen) * 0.99))] * 1000, 3)}

    def apply_runtime(self, runtime: dict[str, Any]) -> None:
        super().apply_runtime(runtime)
        self.table.paused = bool(runtime.get("paused", False))
        rate = runtime.get("sample_rate")
        if isinstance(rate, (int, float)) and 0.0 <= rate <= 1.0:
            self.table.sample_rate = float(rate)

    def _warn_about_handshakes(self) -> None:
        """G8: a SYN the target never answers (as far as we can see) gets a hint, not silence."""
        c = self.table.counters
        if c.sessions_shed > self._shed_warned and time.monotonic() >= self._next_shed_warning:
            log.warning(
                "%d new session(s) shed so far: this worker fell more than shed_lag behind its capture "
                "(overload); the sessions it started go on. More workers or CPU, or a lower sample rate",
                c.sessions_shed)
            self._shed_warned = c.sessions_shed
            self._next_shed_warning = time.monotonic() + 10.0
        if c.midstream_refused > self._midstream_warned and time.monotonic() >= self._next_midstream_warning:
            log.warning(
                "%d connection(s) seen mid-stream were not replayed: this host's socket table does not hold "
                "them (spoofed segments?). If tcpcopyd does not run where the online server's sockets are "
                "(a mirror port, another network namespace), set midstream = trust", c.midstream_refused)
            self._midstream_warned = c.midstream_refused
            self._next_midstream_warning = time.monotonic() + 10.0
        failed = c.handshake_timeouts + c.handshake_refused
        now = time.monotonic()
        if failed > self._handshakes_warned and now >= self._next_handshake_warning:
            log.warning(
                "%d handshake(s) timed out and %d were refused by the target so far: a SYN-ACK that never "
                "arrives means the target's answers do not reach interceptd (check on the target: "
                "'ip route get CLIENT_IP' must go via the assistant; on the assistant: ip_forward=0 and "
                "interceptd's -F must match 'src host TARGET and src port PORT'); a refusal means nothing "
                "listens on the target port", c.handshake_timeouts, c.handshake_refused)
            if c.responses_unmatched > self._unmatched_warned + 10:
                log.warning(
                    "%d response headers matched no session: interceptd sees the target's answers come from "
                    "addresses tcpcopyd never sent to. Is there NAT between tcpcopyd and the target (a published "
                    "container port)? Route the answers through the NAT host, and filter interceptd on the "
                    "published address (README, 'Containers')", c.responses_unmatched)
                self._unmatched_warned = c.responses_unmatched
            self._handshakes_warned = failed
            self._next_handshake_warning = now + 10.0

    def shutdown(self) -> None:
        self.table.shutdown(time.monotonic())
        self._put_on_wire(self.table.take_output())
        if self.differences is not None:
            self.differences.close()


def main(spec_json: str) -> None:
    child_main(lambda: RewriteWorker(spec_from_json(spec_json)))
