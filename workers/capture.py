"""Capture process: libpcap on one interface -> batches of client segments, sharded by client.

Runs in its own pinned child. It never blocks on a slow worker: a batch a worker's queue will
not take is dropped and counted (`queue_drops`). Frames that are not IPv4/TCP are counted too.
The counters it publishes are the fields of `CaptureCounters` (appliance/core/counters.py).
"""

from __future__ import annotations

import logging
from typing import Any

import pcap
import zmq

from appliance.config.specs import CaptureSpec, spec_from_json
from appliance.core import wire
from appliance.core.counters import CaptureCounters, as_dict
from appliance.core.flowkey import shard_of
from appliance.core.packet import client_key_of, frame_ip, server_key_of
from appliance.core.transfer import TransferMap, parse_transfers
from workers.base import Worker, child_main

log = logging.getLogger(__name__)

POLL_MS = 100
QUEUE_HWM = 4096          # batches per worker queue


class CaptureWorker(Worker):
    role = "capture"

    def __init__(self, spec: CaptureSpec) -> None:
        super().__init__(spec.index, spec.run_dir, spec.cpus,
                         f"tcpcopyd: capture {spec.index} {spec.interface}")
        self.spec = spec
        self.captured = 0
        self.bytes = 0
        self.not_ip = 0
        self.malformed = 0
        self.queue_drops = 0
        self.batches = 0
        self.kernel_received = 0
        self.kernel_drops = 0
        self.if_drops = 0
        self.largest = 0
        # compare: the online server's answers are captured too, and go to their client's shard
        self.services = TransferMap(parse_transfers(spec.answers_of)) if spec.answers_of else None

    def setup(self) -> None:
        spec = self.spec
        self.pcap = pcap.pcap(name=spec.interface, snaplen=spec.snaplen, promisc=False,
                              timeout_ms=spec.block_timeout_ms, immediate=False,
                              timestamp_in_ns=True, buffer_size=spec.buffer_bytes)
        self.pcap.setfilter(spec.bpf)
        self.pcap.setnonblock(True)
        self.datalink = self.pcap.datalink()
        self.pushes = [self.socket(zmq.PUSH, connect=wire.segments_endpoint(spec.run_dir, k), hwm=QUEUE_HWM)
                       for k in range(spec.shards)]
        self.builders = [wire.BatchBuilder(wire.KIND_SEGMENTS, spec.index) for _ in range(spec.shards)]
        self.poller = zmq.Poller()
        self.poller.register(self.pcap.fileno(), zmq.POLLIN)
        log.info("capture %d on %s, filter %r, datalink %d", spec.index, spec.interface, spec.bpf,
                 self.datalink)

    def _on_frame(self, ts_ns: int, frame: bytes) -> None:
        ip = frame_ip(self.datalink, frame)
        if ip is None:
            self.not_ip += 1
            return
        key = client_key_of(ip)
        if key is None:
            self.malformed += 1
            return
        if self.services is not None and self.services.targets(*key):
            key = server_key_of(ip) or key           # an answer: its destination is the client
        self.captured += 1
        self.bytes += len(ip)
        if len(ip) > self.largest:
            self.largest = len(ip)
        self.builders[shard_of(key[0], key[1], self.spec.shards)].add(ts_ns, ip)

    def step(self, now: float) -> None:
        if not self.poller.poll(POLL_MS):
            return
        # Bounded dispatch rounds keep the stats heartbeat and SIGTERM responsive under flood.
        for _ in range(64):
            n = self.pcap.dispatch(self.spec.batch_max, self._on_frame)
            self._flush()
            if n < self.spec.batch_max:
                break

    def _flush(self) -> None:
        for shard, builder in enumerate(self.builders):
            if not builder.count:
                continue
            count = builder.count
            frame = builder.take()
            try:
                self.pushes[shard].send(frame, zmq.NOBLOCK)
                self.batches += 1
            except zmq.Again:
                self.queue_drops += count

    def counters(self) -> dict[str, Any]:
        try:
            received, dropped, if_dropped = self.pcap.stats()
            self.kernel_received, self.kernel_drops, self.if_drops = received, dropped, if_dropped
        except (AttributeError, OSError):
            pass
        return as_dict(CaptureCounters(
            captured=self.captured, bytes=self.bytes, not_ip=self.not_ip, malformed=self.malformed,
            queue_drops=self.queue_drops, batches=self.batches, kernel_received=self.kernel_received,
            kernel_drops=self.kernel_drops, if_drops=self.if_drops, largest_packet=self.largest))

    def shutdown(self) -> None:
        self._flush()


def main(spec_json: str) -> None:
    child_main(lambda: CaptureWorker(spec_from_json(spec_json)))
