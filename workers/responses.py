"""Responses relay: subscribes to every interceptd and hands each batch of headers to the workers.

Runs in its own child on the online host. Stateless: it checks the batch header (kind,
interceptd instance, batch number: lost batches are counted here); a batch of a few headers
whose clients all belong to one shard goes to that worker only, any other batch goes whole
(the frame itself, not a copy) to every worker, and each takes the headers of its own shard
(the client address picks the shard with the same `shard_of` that capture uses). Routing record
by record here cost more CPU than anything else on the response path; waking every worker for a
one-header batch cost more than looking at that header. ZeroMQ reconnects by itself when an
interceptd restarts.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from appliance import curve, wire
from appliance.config import ResponsesSpec, spec_from_json
from appliance.flowkey import shard_of
from appliance.packet import server_key_of
from workers.base import Worker, child_main

log = logging.getLogger(__name__)

POLL_MS = 100
DRAIN_LIMIT = 256
SMALL_BATCH = 4          # headers: at most this many are looked at to pick the one worker that needs them


class ResponsesWorker(Worker):
    role = "responses"

    def __init__(self, spec: ResponsesSpec) -> None:
        super().__init__(0, spec.run_dir, spec.cpus, "tcpcopyd: responses")
        self.spec = spec
        self.headers = 0
        self.bad_frames = 0
        self.queue_drops = 0          # headers of batches a worker's full queue refused (once per worker)
        self.batches_lost = 0
        self.intercept_restarts = 0
        self._expected: dict[int, int] = {}   # interceptd instance id -> next batch seq
        self.intercepts: dict[str, dict[str, Any]] = {}   # interceptd instance -> its last stats
        self.handshakes = 0
        self.handshake_failures = 0

    def setup(self) -> None:
        self.sub = self.socket(zmq.SUB, hwm=100_000)
        if self.spec.secret_key:
            curve.make_client(self.sub, self.spec.secret_key, self.spec.intercept_public_key)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.monitor = self.sub.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        self.sub.setsockopt(zmq.RECONNECT_IVL, 100)
        self.sub.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        for address in self.spec.intercepts:
            host, port = wire.parse_intercept_address(address)
            self.sub.connect(wire.intercept_endpoint(host, port))
        self.pushes = [self.socket(zmq.PUSH, connect=wire.responses_endpoint(self.run_dir, k), hwm=4096)
                       for k in range(self.spec.shards)]
        self.poller = zmq.Poller()
        self.poller.register(self.sub, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)
        log.info("responses: subscribed to %s (%s)", ", ".join(self.spec.intercepts),
                 "CURVE" if self.spec.secret_key else "plaintext, unauthenticated")

    def step(self, now: float) -> None:
        ready = dict(self.poller.poll(POLL_MS))
        if self.monitor in ready:
            self._on_monitor()
        if self.sub not in ready:
            return
        for _ in range(DRAIN_LIMIT):
            try:
                frame = self.sub.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            self._route(frame)

    def _route(self, frame: zmq.Frame) -> None:
        data = frame.buffer
        if len(data) >= 2 and data[1] == wire.KIND_STATS:
            self._on_intercept_stats(frame.bytes)
            return
        try:
            header = wire.decode_batch_header(data)
        except wire.WireError:
            self.bad_frames += 1
            return
        if header.kind != wire.KIND_RESPONSES:
            self.bad_frames += 1
            return
        expected = self._expected.get(header.source)
        if expected is None:
            if self._expected:
                self.intercept_restarts += 1
        elif header.seq > expected:
            self.batches_lost += header.seq - expected
        self._expected[header.source] = header.seq + 1
        self.headers += header.count
        for push in self._receivers(data, header.count):
            try:
                push.send(frame, zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self.queue_drops += header.count      # that worker's share of them, at most

    def _receivers(self, data: memoryview, count: int) -> list[zmq.Socket]:
        """The workers a batch goes to: the one shard of a small batch, else all of them."""
        if len(self.pushes) == 1 or count > SMALL_BATCH:
            return self.pushes
        shards = set()
        try:
            for _ts, packet in wire.decode_batch(data)[1]:
                key = server_key_of(packet)
                if key is None:
                    return self.pushes             # let worker 0 count it as malformed
                shards.add(shard_of(key[0], key[1], len(self.pushes)))
        except wire.WireError:
            return self.pushes                     # each worker counts it as a bad frame
        return [self.pushes[k] for k in sorted(shards)]

    def _on_monitor(self) -> None:
        """Count CURVE handshakes with interceptds: a failure is a publisher without the right key."""
        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.handshakes += 1
            else:
                self.handshake_failures += 1

    def shutdown(self) -> None:
        self.sub.disable_monitor()
        self.monitor.close(linger=0)

    def _on_intercept_stats(self, frame: bytes) -> None:
        try:
            obj = wire.decode_json(frame, wire.KIND_STATS)
        except wire.WireError:
            self.bad_frames += 1
            return
        instance = str(obj.get("instance", "?"))[:16]
        counters = obj.get("counters")
        if isinstance(counters, dict):
            self.intercepts[instance] = {
                "pid": obj.get("pid"), "filter": obj.get("filter"), "received": time.time(),
                "counters": {k: v for k, v in counters.items() if isinstance(v, int)}}
            while len(self.intercepts) > 64:           # restarted instances: keep the newest
                del self.intercepts[next(iter(self.intercepts))]

    def counters(self) -> dict[str, Any]:
        return {
            "headers": self.headers, "bad_frames": self.bad_frames,
            "queue_drops": self.queue_drops, "batches_lost": self.batches_lost,
            "intercepts_seen": len(self._expected), "intercept_restarts": self.intercept_restarts,
            "intercept_handshakes": self.handshakes, "intercept_handshake_failures": self.handshake_failures,
            "intercepts": {k: dict(v, age=round(time.time() - v["received"], 1))
                           for k, v in self.intercepts.items()},
        }


def main(spec_json: str) -> None:
    child_main(lambda: ResponsesWorker(spec_from_json(spec_json)))
