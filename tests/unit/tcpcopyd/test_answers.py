"""A rewrite worker's channel from interceptd, over real ZeroMQ (inproc, one context, no root).

An XPUB stands in for interceptd: it publishes batches under shard topics and reports under the
stats topic, as appliance/interceptd/daemon.py does. Every test waits for the subscriptions to
reach the XPUB before it publishes, and for a message, never for a fixed time."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import zmq

from appliance.config.loader import InterceptConfig
from appliance.core import wire
from appliance.interceptd.daemon import Intercept
from appliance.tcpcopyd.answers import AnswerChannel, intercept_endpoints
from tests.unit.interceptkit import ZmqKit, answer, wait_for

SHARDS = 2


@pytest.fixture
def kit() -> Iterator[ZmqKit]:
    k = ZmqKit()
    yield k
    k.close()


class FakeInterceptd:
    """An XPUB bound at `endpoint` publishing like interceptd: batches per shard topic, numbered
    per topic, under its random instance id, and its stats report."""

    def __init__(self, kit: ZmqKit, endpoint: str, instance: int, pid: int) -> None:
        self.pub = kit.socket(zmq.XPUB)
        self.pub.bind(endpoint)
        self.instance, self.pid = instance, pid
        self.builders = [wire.BatchBuilder(wire.KIND_RESPONSES, instance) for _ in range(SHARDS)]
        self.topics: set[bytes] = set()

    def await_subscriptions(self, *topics: bytes, subscribers: tuple[AnswerChannel, ...] = ()) -> None:
        """Wait until XPUB has handed over a subscription to each of `topics` (the first one only).
        A SUB sends its subscriptions again when it reconnects, but only once its own thread takes
        up the reconnection: `subscribers` are polled too, as a worker's loop does."""
        poller = zmq.Poller()
        poller.register(self.pub, zmq.POLLIN)
        for ch in subscribers:
            poller.register(ch.sock, zmq.POLLIN)

        def take(left: float) -> None:
            assert poller.poll(int(left * 1000)), "no subscription reached the XPUB"
            while self.pub.poll(0):
                message = self.pub.recv()
                assert message[0] == 1
                self.topics.add(message[1:])
        wait_for(lambda: self.topics >= set(topics), take)

    def batch(self, shard: int, *clients: int) -> bytes:
        """A batch of the answers to `clients` (answer numbers), published on `shard`'s topic."""
        builder = self.builders[shard]
        for i in clients:
            builder.add(1_000 + i, answer(i)[:52])
        frame = builder.take()
        self.pub.send_multipart((wire.shard_topic(SHARDS, shard), frame))
        return frame

    def lose(self, shard: int) -> None:
        """A batch that never arrives (an HWM drop): its number is used, nothing is sent."""
        self.builders[shard].take()

    def report(self, **counters: int) -> None:
        self.pub.send_multipart((wire.STATS_TOPIC, wire.encode_json(wire.KIND_STATS, {
            "role": "interceptd", "instance": f"{self.instance:08x}", "pid": self.pid,
            "filter": "tcp and src port 8080", "counters": counters or {"captured": 1}})))


def channel(kit: ZmqKit, shard: int, *endpoints: str) -> AnswerChannel:
    ch = AnswerChannel(kit.ctx, SHARDS, shard, endpoints or ("inproc://interceptd",))
    kit.keep(*ch.sockets())
    return ch


def receive_until(ch: AnswerChannel, done, into: list[bytes] | None = None) -> list[bytes]:
    """Batches `ch` hands over until `done(batches)` holds."""
    batches = [] if into is None else into

    def turn(left: float) -> None:
        assert ch.sock.poll(int(left * 1000)), "nothing arrived"
        while (batch := ch.receive()) is not None:
            batches.append(bytes(batch))
    wait_for(lambda: done(batches), turn)
    return batches


def heard(ch: AnswerChannel, *instances: int):
    """done() for receive_until: every one of `instances` has reported (published after the batches,
    on the same pipe, so every batch before it has arrived)."""
    return lambda _batches: {f"{i:08x}" for i in instances} <= ch.intercepts.keys()


ALL = (wire.shard_topic(SHARDS, 0), wire.shard_topic(SHARDS, 1), wire.STATS_TOPIC)


def test_a_channel_receives_only_its_own_shards_batches(kit):
    icd = FakeInterceptd(kit, "inproc://interceptd", 0xA1, 101)
    channels = [channel(kit, 0), channel(kit, 1)]
    icd.await_subscriptions(*ALL)
    sent: list[list[bytes]] = [[], []]
    for n in range(10):
        shard = n % 3 % 2                               # 0, 1, 0, 0, 1, 0, ...
        sent[shard].append(icd.batch(shard, n, n + 20))
    icd.report()
    for shard, ch in enumerate(channels):
        assert receive_until(ch, heard(ch, 0xA1)) == sent[shard]
        assert ch.headers == 2 * len(sent[shard])
        assert (ch.batches_lost, ch.bad_frames, ch.intercept_restarts) == (0, 0, 0)


def test_lost_batches_are_counted_from_the_gap_in_batch_numbers(kit):
    icd = FakeInterceptd(kit, "inproc://interceptd", 0xA1, 101)
    ch = channel(kit, 1)
    icd.await_subscriptions(ALL[1], wire.STATS_TOPIC)
    icd.batch(1, 1)
    icd.lose(1)
    icd.lose(1)
    icd.batch(1, 3)
    icd.lose(0)                                         # another shard's numbers are not this worker's
    icd.batch(0, 5)
    icd.batch(1, 7)
    icd.report()
    got = receive_until(ch, heard(ch, 0xA1))
    assert [wire.decode_batch_header(b).seq for b in got] == [0, 3, 4]
    assert ch.batches_lost == 2 and ch.counters()["batches_lost"] == 2
    assert ch.intercept_restarts == 0


def test_garbage_frames_are_refused_and_counted_and_the_channel_goes_on(kit):
    icd = FakeInterceptd(kit, "inproc://interceptd", 0xA1, 101)
    ch = channel(kit, 0)
    icd.await_subscriptions(ALL[0], wire.STATS_TOPIC)
    topic = ALL[0]
    segments = wire.BatchBuilder(wire.KIND_SEGMENTS, 3)
    segments.add(0, answer(0))
    garbage = [
        (topic,),                                       # no body
        (topic, b"x", b"y"),                            # three frames
        (topic, b"\x01\x02"),                           # shorter than a batch header
        (topic, b"\x09" + wire.BatchBuilder(wire.KIND_RESPONSES, 0xA1).take()[1:]),   # another version
        (topic, segments.take()),                       # a batch of captured segments, not answers
        (wire.STATS_TOPIC, b"\x01\x03{not json"),
        (wire.STATS_TOPIC, wire.encode_json(wire.KIND_STATS, {"instance": "0a"})),   # no counters
        (wire.STATS_TOPIC, wire.encode_json(wire.KIND_CONTROL, {"instance": "0a", "counters": {}})),
    ]
    for message in garbage:
        icd.pub.send_multipart(message)
    good = icd.batch(0, 1, 2)
    icd.report()
    assert receive_until(ch, heard(ch, 0xA1)) == [good]
    assert ch.bad_frames == len(garbage) and ch.counters()["bad_frames"] == len(garbage)
    assert ch.headers == 2 and ch.batches_lost == 0
    assert list(ch.intercepts) == ["000000a1"]


def test_the_channel_keeps_interceptds_own_report(kit):
    """The report as interceptd's daemon encodes it, kept as the status document shows it."""
    icd = FakeInterceptd(kit, "inproc://interceptd", 0, 0)
    ch = channel(kit, 0)
    icd.await_subscriptions(wire.STATS_TOPIC)
    real = Intercept(InterceptConfig(interfaces=("lo",), bpf="tcp and src port 8080"))
    real.captured = 12
    icd.pub.send_multipart((wire.STATS_TOPIC, real._stats_frame()))
    receive_until(ch, heard(ch, real.instance))
    (instance, info), = ch.intercepts_info().items()
    assert instance == f"{real.instance:08x}"
    assert info["pid"] == os.getpid() and info["filter"] == "tcp and src port 8080"
    assert info["counters"]["captured"] == 12 and info["counters"]["malformed"] == 0
    assert 0 <= info["age"] < 5
    assert ch.fields_dropped == 0 and ch.bad_frames == 0 and ch.intercept_restarts == 0


def test_every_worker_counts_an_interceptd_restart_once_busy_shard_or_not(kit, tmp_path):
    """interceptd restarts: a new process (pid) with a new random instance id, batch numbers from 0.
    Worker 1 has no answers at all and still counts it, from the reports. (ipc: a SUB reconnects
    to a new bind there, as over TCP; inproc does not.)"""
    endpoint = f"ipc://{tmp_path}/interceptd"
    first = FakeInterceptd(kit, endpoint, 0xA1, 101)
    channels = [channel(kit, 0, endpoint), channel(kit, 1, endpoint)]
    first.await_subscriptions(*ALL)
    first.batch(0, 1)
    first.batch(0, 2)
    first.report()
    for ch in channels:
        receive_until(ch, heard(ch, 0xA1))              # all read: nothing left in the SUBs
    first.pub.close(linger=0)                           # the old process is gone; the new one binds
    again = FakeInterceptd(kit, endpoint, 0xB2, 202)
    again.await_subscriptions(*ALL, subscribers=tuple(channels))   # reconnected, subscribed again
    again.batch(0, 3)                                   # number 0 again: no loss, no second restart
    again.report()
    for shard, ch in enumerate(channels):
        got = receive_until(ch, heard(ch, 0xB2))
        assert len(got) == (1 if shard == 0 else 0)
        assert ch.intercept_restarts == 1 and ch.counters()["intercept_restarts"] == 1
        assert ch.batches_lost == 0
        info = ch.intercepts_info()
        assert list(info) == ["000000a1", "000000b2"]   # the newest last
        assert (info["000000a1"]["pid"], info["000000b2"]["pid"]) == (101, 202)


def test_several_interceptds_are_no_restart_but_a_new_instance_after_them_is(kit):
    a = FakeInterceptd(kit, "inproc://a", 0xA1, 101)
    b = FakeInterceptd(kit, "inproc://b", 0xB1, 102)
    ch = channel(kit, 0, "inproc://a", "inproc://b")
    for icd in (a, b):
        icd.await_subscriptions(ALL[0], wire.STATS_TOPIC)
        icd.batch(0, 1)
        icd.report()
    receive_until(ch, heard(ch, 0xA1, 0xB1))
    assert ch.intercept_restarts == 0 and ch.batches_lost == 0
    a.instance = 0xA2                                   # as if interceptd a restarted
    a.builders[0] = wire.BatchBuilder(wire.KIND_RESPONSES, 0xA2)
    a.report()
    receive_until(ch, heard(ch, 0xA2))
    assert ch.intercept_restarts == 1


def test_intercept_addresses_become_tcp_endpoints():
    assert intercept_endpoints(("198.18.0.5", "198.18.0.6:4000")) == (
        f"tcp://198.18.0.5:{wire.DEFAULT_INTERCEPT_PORT}", "tcp://198.18.0.6:4000")
    with pytest.raises(ValueError):
        intercept_endpoints(("198.18.0.5:0",))
