"""A rewrite worker's subscription to every interceptd: its own shard's answer headers.

Runs inside each rewrite worker. One SUB socket connects to every interceptd (CURVE when keys
are configured) and subscribes to the shard topic of this worker (`wire.shard_topic`), so
interceptd sends it only the answers to its own clients, and to interceptd's stats topic, whose
once-a-second report also tells that the subscription is in place. Checks each batch's header
(kind, interceptd instance, batch number: lost batches are counted here). ZeroMQ reconnects by
itself when an interceptd restarts.

Every worker's channel hears every interceptd and counts the same things the same way: lost
batches of its own shard, and interceptd restarts (an instance id it has not seen, once it has
heard as many instances as it has interceptds). The supervisor merges the workers' reports.

An interceptd's report is input from another host: it is decoded by wire.decode_json (bounded)
and every field kept is checked for type and size (`intercept_report`); a bad field is dropped
and counted (`intercept_fields_dropped`), so the heartbeat that carries the reports to the
status document stays small and well formed whatever interceptd sends.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from appliance.core import wire
from appliance.host import curvekeys

log = logging.getLogger(__name__)

SUB_HWM = 100_000            # batches; beyond it ZeroMQ drops, which shows as lost batches
MAX_INTERCEPTS_SHOWN = 64    # restarted interceptds: keep the newest
MAX_INSTANCES_KEPT = 1024    # instance ids remembered (restarts, batch numbers): a bound on what peers send
# bounds of an interceptd's report as kept (64 of them ride in a worker's heartbeat: about 200 KiB at most)
MAX_FILTER_CHARS = 1024
MAX_TURNS_WAITING = 65536     # turns received, not yet taken by the worker; more are counted, dropped
MAX_COUNTERS_KEPT = 64       # interceptd reports 30 (compare mode included)
MAX_COUNTER_VALUE = (1 << 63) - 1
INSTANCE = re.compile(r"[0-9a-f]{1,16}")
COUNTER_NAME = re.compile(r"[a-z0-9_]{1,48}")


def intercept_report(obj: dict[str, Any]) -> tuple[str, dict[str, Any], int] | None:
    """(instance, {pid, filter, counters}, fields dropped) of a decoded interceptd report, each
    field bounded in type and size (a bad one is None, or left out of `counters`); None when the
    report names no instance or has no counters object (a bad frame)."""
    instance, counters = obj.get("instance"), obj.get("counters")
    if not isinstance(instance, str) or not INSTANCE.fullmatch(instance) or not isinstance(counters, dict):
        return None
    dropped = 0
    pid = obj.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid < 1 << 31:
        pid, dropped = None, dropped + 1
    bpf = obj.get("filter")
    if not isinstance(bpf, str) or len(bpf) > MAX_FILTER_CHARS:
        bpf, dropped = None, dropped + 1
    kept: dict[str, int] = {}
    for name, value in counters.items():
        if (len(kept) < MAX_COUNTERS_KEPT and COUNTER_NAME.fullmatch(name) and isinstance(value, int)
                and not isinstance(value, bool) and 0 <= value <= MAX_COUNTER_VALUE):
            kept[name] = value
        else:
            dropped += 1
    return instance, {"pid": pid, "filter": bpf, "counters": kept}, dropped


def intercept_endpoints(addresses: tuple[str, ...]) -> tuple[str, ...]:
    """The ZeroMQ endpoints of interceptds given as `HOST[:PORT]` (the config's `intercepts`)."""
    return tuple(wire.intercept_endpoint(*wire.parse_intercept_address(a)) for a in addresses)


class AnswerChannel:
    """The SUB socket (`sock`, for the caller's poller) and the channel's counters.

    `endpoints` are ZeroMQ endpoints (`intercept_endpoints` of the config's addresses; a test passes
    inproc:// ones); the socket connects to each, so their number is the number of interceptds."""

    def __init__(self, ctx: zmq.Context[Any], shards: int, shard: int, endpoints: tuple[str, ...],
                 secret_key: str = "", intercept_public_key: str = "", *, compare: bool = False) -> None:
        self.sock = ctx.socket(zmq.SUB)
        self.sock.linger = 0
        self.sock.rcvhwm = SUB_HWM
        self.sock.setsockopt(zmq.MAXMSGSIZE, wire.MAX_RESPONSE_MESSAGE)   # more: ZeroMQ drops the publisher
        if secret_key:
            curvekeys.make_client(self.sock, secret_key, intercept_public_key)
        # shard topic first: a stats frame arriving proves this subscription reached the publisher
        self.sock.setsockopt(zmq.SUBSCRIBE, wire.shard_topic(shards, shard))
        self.sock.setsockopt(zmq.SUBSCRIBE, wire.STATS_TOPIC)
        if compare:                      # interceptd assembles and sends turns only while someone asks
            self.sock.setsockopt(zmq.SUBSCRIBE, wire.turn_topic(shards, shard))
        self.monitor = self.sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 100)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        for endpoint in endpoints:
            self.sock.connect(endpoint)
        self.publishers = len(endpoints)
        self.headers = 0
        self.bad_frames = 0
        self.fields_dropped = 0
        self.batches_lost = 0
        self.intercept_restarts = 0
        self.handshakes = 0
        self.handshake_failures = 0
        self._expected: dict[int, int] = {}                  # interceptd instance id -> next batch seq
        self._instances: dict[int, None] = {}                # interceptd instance ids heard, oldest first
        self.intercepts: dict[str, dict[str, Any]] = {}      # interceptd instance -> its last stats
        self.turns: list[wire.TurnRecord] = []               # the target's answer turns (compare), not yet taken
        self.turns_received = 0
        self.turns_dropped = 0

    def receive(self) -> memoryview | None:
        """The next batch of this shard's headers (its records not yet checked), or None when the
        queue is empty. Stats reports and bad frames are taken care of (and counted) here."""
        while True:
            try:
                topic, frame = self._recv_pair()
            except zmq.Again:
                return None
            if topic == wire.STATS_TOPIC:
                self._on_intercept_stats(frame)
                continue
            if topic[:1] == wire.TURN_TOPIC_PREFIX:
                self._on_turns(frame)
                continue
            data = memoryview(frame)
            try:
                header = wire.decode_batch_header(data)
            except wire.WireError:
                self.bad_frames += 1
                continue
            if header.kind != wire.KIND_RESPONSES:
                self.bad_frames += 1
                continue
            self._check_seq(header.source, header.seq)
            self.headers += header.count
            return data

    def _recv_pair(self) -> tuple[bytes, bytes]:
        """(topic, body); a message of any other shape is a bad frame, never a crash."""
        while True:
            parts = self.sock.recv_multipart(zmq.NOBLOCK)
            if len(parts) == 2:
                return parts[0], parts[1]
            self.bad_frames += 1

    def _on_turns(self, frame: bytes) -> None:
        try:
            header, turns = wire.decode_turn_batch(frame)
        except wire.WireError:
            self.bad_frames += 1
            return
        self._check_seq(header.source, header.seq, wire.KIND_TURNS)
        self.turns_received += len(turns)
        room = MAX_TURNS_WAITING - len(self.turns)
        if len(turns) > room:
            self.turns_dropped += len(turns) - max(0, room)
            turns = turns[:max(0, room)]
        self.turns.extend(turns)

    def take_turns(self) -> list[wire.TurnRecord]:
        turns, self.turns = self.turns, []
        return turns

    def _check_seq(self, source: int, seq: int, kind: int = wire.KIND_RESPONSES) -> None:
        """Batch sequence numbers count per interceptd instance and per topic kind (headers, turns)."""
        stream = (source << 8) | kind
        expected = self._expected.get(stream)
        if expected is None:
            self._heard(source)
            if len(self._expected) >= MAX_INSTANCES_KEPT:
                del self._expected[next(iter(self._expected))]
        elif seq > expected:
            self.batches_lost += seq - expected
        self._expected[stream] = seq + 1

    def _heard(self, instance: int) -> None:
        """An interceptd instance in a batch header or a stats report. Decision: the first instance
        heard from each interceptd is no restart; a SUB cannot tell which publisher sent a message,
        so once there are as many instances as interceptds, each new one counts as a restart. Reports
        come once a second from every interceptd, so every worker counts a restart, busy shard or not."""
        if instance not in self._instances:
            if len(self._instances) >= max(1, self.publishers):
                self.intercept_restarts += 1
            if len(self._instances) >= MAX_INSTANCES_KEPT:
                del self._instances[next(iter(self._instances))]
            self._instances[instance] = None

    def on_monitor(self) -> None:
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

    def _on_intercept_stats(self, frame: bytes) -> None:
        try:
            report = intercept_report(wire.decode_json(frame, wire.KIND_STATS))
        except wire.WireError:
            report = None
        if report is None:
            self.bad_frames += 1
            return
        instance, kept, dropped = report
        self._heard(int(instance, 16))
        self.fields_dropped += dropped
        self.intercepts.pop(instance, None)                  # re-inserted: the newest are last
        self.intercepts[instance] = dict(kept, received=time.time())
        while len(self.intercepts) > MAX_INTERCEPTS_SHOWN:
            del self.intercepts[next(iter(self.intercepts))]

    def counters(self) -> dict[str, Any]:
        """The channel's counters (the worker reports them as its `response_channel`)."""
        return {"headers": self.headers, "bad_frames": self.bad_frames, "batches_lost": self.batches_lost,
                "intercept_fields_dropped": self.fields_dropped,
                "intercept_restarts": self.intercept_restarts, "intercept_handshakes": self.handshakes,
                "intercept_handshake_failures": self.handshake_failures, "turns": self.turns_received,
                "turns_dropped": self.turns_dropped}

    def intercepts_info(self) -> dict[str, dict[str, Any]]:
        """The last report of each interceptd instance heard (the newest last), with its age in seconds."""
        return {k: dict(v, age=round(time.time() - v["received"], 1)) for k, v in self.intercepts.items()}

    def sockets(self) -> list[zmq.Socket[Any]]:
        """Both sockets, for the worker to close before its context ends."""
        self.monitor.linger = 0
        return [self.sock, self.monitor]


