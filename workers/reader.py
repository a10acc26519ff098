"""Offline reader: plays capture files into the shards as if they were being captured now.

Runs in its own child instead of the capture processes (tcpcopyd --offline). Keeps the packets
a live capture would have kept (those addressed to a transfer's online side), paces them by
their timestamps (original timing, N x speed, or as fast as the workers take them, with idle gaps
optionally cut), and never drops for a full queue: it waits instead. A frame it cannot replay is
counted, never fatal: `not_ip` (not IPv4/TCP), `malformed` (an IPv4/TCP header cut short by the
capture), and pcapfile's drops (FILE_DROPS). Exits 0 at the end, EXIT_DATA (65) on a broken file.
The counters it publishes are the fields of `ReaderCounters` (appliance/core/counters.py).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import zmq

from appliance.config.specs import ReaderSpec, spec_from_json
from appliance.core import wire
from appliance.core.counters import FILE_DROPS, ReaderCounters, as_dict
from appliance.core.errors import EXIT_DATA
from appliance.core.flowkey import shard_of
from appliance.core.packet import client_key_of, frame_ip, server_key_of, tcp_flags_of
from appliance.core.pcapfile import PcapError, packets
from appliance.core.transfer import TransferMap, parse_transfers
from workers.base import Worker, child_main

log = logging.getLogger(__name__)

BATCH = 256
COALESCE = 0.001             # at most one wake-up this often: a packet is at most this late (timing: 1 ms)
DELIVERY_LINGER_MS = 60_000   # at exit, queued batches still reach the workers (offline never drops)
FINAL_STATS_LINGER_MS = 2_000  # at exit, the last heartbeat (the counters the report reads) is delivered


class ReaderWorker(Worker):
    role = "reader"

    def __init__(self, spec: ReaderSpec) -> None:
        super().__init__(0, spec.run_dir, spec.cpus, "tcpcopyd: offline reader")
        self.spec = spec
        self.transfers = TransferMap(parse_transfers(spec.transfers))
        self.read = self.kept = self.not_ip = self.malformed = self.queue_waits = self.syns = 0
        self.file_drops: dict[str, int] = {}         # pcapfile counts the packets it does not yield
        self.clients: set[tuple[int, int]] = set()
        self.file_span_ns = 0
        self.started_at = self.finished_at = 0.0
        self._next_progress = 0.0

    def setup(self) -> None:
        spec = self.spec
        self.pushes = [self.socket(zmq.PUSH, connect=wire.segments_endpoint(spec.run_dir, k), hwm=256)
                       for k in range(spec.shards)]
        for sock in self.pushes:
            sock.linger = DELIVERY_LINGER_MS
        # a short replay ends before its first heartbeat got through: only the last one has its counters
        self.stats_sock.linger = FINAL_STATS_LINGER_MS
        self.builders = [wire.BatchBuilder(wire.KIND_SEGMENTS, 0) for _ in range(spec.shards)]
        self.stream = self._stream()
        self.pending: tuple[float, int, bytes] | None = None
        self.started_at = time.monotonic()

    def _stream(self):
        """(due time in seconds after start, link type, frame) of every packet of every file."""
        speed, max_gap = self.spec.speed, self.spec.max_gap_ms / 1000
        first = prev = None
        skipped = 0.0
        for path in self.spec.files:
            for ts_ns, linktype, frame in packets(path, drops=self.file_drops):
                ts = ts_ns / 1e9
                if first is None:
                    first = prev = ts
                if max_gap and ts - prev > max_gap:
                    skipped += ts - prev - max_gap
                prev = ts
                self.file_span_ns = int((ts - first) * 1e9)
                yield (0.0 if speed == 0 else (ts - first - skipped) / speed), linktype, frame

    def step(self, now: float) -> None:
        elapsed = now - self.started_at
        budget_end = time.monotonic() + 0.05
        while time.monotonic() < budget_end:
            if self.pending is None:
                try:
                    self.pending = next(self.stream)
                except StopIteration:
                    self._flush_all()
                    self.finished_at = time.monotonic()
                    self._progress(final=True)
                    self.stopping = True
                    return
                except PcapError as exc:
                    log.error("%s", exc)
                    sys.exit(EXIT_DATA)
            due, linktype, frame = self.pending
            if due > elapsed:
                # What is due goes out now, in one batch per shard; the next wake-up is at the next
                # packet's time but never sooner than COALESCE after this one: a packet is up to
                # COALESCE late, and a wake-up (the costly part at moderate rates) serves them all.
                self._flush_all()
                self._progress()
                wake = max(due, elapsed + COALESCE)
                time.sleep(max(0.0, min(wake - (time.monotonic() - self.started_at), 0.05)))
                return
            self.pending = None
            self._take(linktype, frame)
        self._flush_all()
        self._progress()

    def _take(self, linktype: int, frame: bytes) -> None:
        self.read += 1
        ip = frame_ip(linktype, frame)
        if ip is None:
            self.not_ip += 1
            return
        key = client_key_of(ip)
        if key is None:
            self._not_replayable(ip)
            return
        flags = tcp_flags_of(ip)
        dst = server_key_of(ip)
        if flags is None or dst is None:             # the IP header's length runs into the cut
            self.malformed += 1
            return
        if not self.transfers.targets(*dst):
            if self.spec.answers and self.transfers.targets(*key):
                self.kept += 1                        # compare: an online answer, to its client's shard
                self._add(dst, ip)
            return
        self.kept += 1
        if flags & 0x12 == 0x02:                            # a SYN: a connection starts
            self.syns += 1
            self.clients.add(key)
        elif key not in self.clients:               # open before the capture began
            self.clients.add(key)
            self.syns += 1
        self._add(key, ip)

    def _add(self, client: tuple[int, int], ip: memoryview) -> None:
        shard = shard_of(client[0], client[1], self.spec.shards)
        builder = self.builders[shard]
        builder.add(time.time_ns(), ip)
        if builder.count >= BATCH:
            self._flush(shard)

    def _not_replayable(self, ip: memoryview) -> None:
        """Off the hot path: IPv4/TCP by its first bytes but too short or with a bad header length
        is `malformed`; anything else is `not_ip`."""
        if len(ip) >= 10 and ip[0] >> 4 == 4 and ip[9] == 6:
            self.malformed += 1
        else:
            self.not_ip += 1

    def _flush_all(self) -> None:
        for shard, builder in enumerate(self.builders):
            if builder.count:
                self._flush(shard)

    def _flush(self, shard: int) -> None:
        frame = self.builders[shard].take()
        sock = self.pushes[shard]
        try:
            sock.send(frame, zmq.NOBLOCK)
            return
        except zmq.Again:
            pass
        while not self.stopping:                     # offline never drops: wait for the worker
            if sock.poll(1000, zmq.POLLOUT):
                sock.send(frame)
                return
            self.queue_waits += 1
            self.publish_stats()

    def _progress(self, final: bool = False) -> None:
        if not self.spec.progress:
            return
        now = time.monotonic()
        if not final and now < self._next_progress:
            return
        self._next_progress = now + 0.5
        done = self.read / max(1, self.spec.total_packets)
        bar = "#" * int(30 * done)
        sys.stderr.write(f"\r[{bar:<30}] {100 * done:5.1f}%  {self.read:,} packets  {now - self.started_at:6.1f} s")
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def counters(self) -> dict[str, Any]:
        return as_dict(ReaderCounters(
            packets_read=self.read, packets_kept=self.kept, not_ip=self.not_ip, malformed=self.malformed,
            **{k: self.file_drops.get(k, 0) for k in FILE_DROPS},
            queue_waits=self.queue_waits, client_connections=self.syns,
            file_span_ms=self.file_span_ns // 1_000_000,
            replay_ms=int(1000 * ((self.finished_at or time.monotonic()) - self.started_at)),
            finished=int(bool(self.finished_at))))


def main(spec_json: str) -> None:
    child_main(lambda: ReaderWorker(spec_from_json(spec_json)))
