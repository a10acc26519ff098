"""interceptd's loop over real ZeroMQ (inproc, one context, no root, no pcap): answers from a
stand-in capture are split per shard and published on the XPUB; subscriptions and unsubscriptions
arrive as XPUB messages through the loop itself (`Intercept.attach` and `Intercept.turn`).

Ordering is the synchronisation: one publisher's messages reach a subscriber in the order they
were sent, so a marker sent after the batches proves every batch before it has arrived."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import zmq

from appliance.config.loader import InterceptConfig
from appliance.core import wire
from appliance.core.flowkey import shard_of
from appliance.core.packet import parse_ipv4_tcp
from appliance.interceptd.daemon import Intercept
from appliance.tcpcopyd.answers import AnswerChannel
from tests.unit.interceptkit import CLIENT, FakeCapture, ZmqKit, answer, wait_for

ENDPOINT = "inproc://interceptd"
MARKER = b"end of test batch"      # sent on the stats topic: its subscription is no shard count


@pytest.fixture
def kit() -> Iterator[ZmqKit]:
    k = ZmqKit()
    yield k
    k.close()


@pytest.fixture
def loop(kit) -> Iterator[tuple[Intercept, FakeCapture]]:
    """interceptd's loop on an inproc XPUB, fed by a stand-in capture."""
    ic = Intercept(InterceptConfig(interfaces=("fake",), bpf="tcp"))
    capture = FakeCapture()
    ic.handles = [capture]
    pub = ic.publisher(kit.ctx)
    kit.keep(pub)
    monitor = pub.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
    kit.keep(monitor)
    pub.bind(ENDPOINT)
    ic.attach(pub, monitor)
    yield ic, capture
    pub.disable_monitor()
    capture.close()


def turn_until(ic: Intercept, what) -> None:
    wait_for(what, lambda left: ic.turn())


def subscriber(kit: ZmqKit, *topics: bytes) -> zmq.Socket:
    sub = kit.socket(zmq.SUB)
    for topic in topics + (wire.STATS_TOPIC,):
        sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.connect(ENDPOINT)
    return sub


def until_marker(ic: Intercept, *subs: zmq.Socket) -> list[list[bytes]]:
    """Send a marker after what the loop published; each subscriber's answer headers before it."""
    ic.pub.send_multipart((wire.STATS_TOPIC, MARKER))
    got: list[list[bytes]] = []
    for sub in subs:
        headers: list[bytes] = []
        while True:
            assert sub.poll(5000), "the marker did not arrive"
            topic, body = sub.recv_multipart()
            if body == MARKER:
                break
            if topic != wire.STATS_TOPIC:                # not the loop's own report
                head, records = wire.decode_batch(body)
                assert head.kind == wire.KIND_RESPONSES and head.source == ic.instance
                assert wire.parse_shard_topic(topic) is not None
                headers += [bytes(p) for _, p in records]
        got.append(headers)
    return got


def owned(count: int, shard: int, clients: range) -> list[bytes]:
    """The headers of answers to `clients` that shard `shard` of `count` owns, in capture order."""
    return [answer(i)[:52] for i in clients if shard_of(CLIENT, 40000 + i, count) == shard]


def test_each_shard_receives_exactly_its_clients_answers(kit, loop):
    ic, capture = loop
    subs = [subscriber(kit, wire.shard_topic(2, k)) for k in range(2)]
    turn_until(ic, lambda: ic.split.counts == (2,) and len(ic.split.topics) == 2)
    clients = range(64)
    capture.put([answer(i) for i in clients])
    turn_until(ic, lambda: ic.split.published == len(clients))
    got = until_marker(ic, *subs)
    assert got == [owned(2, 0, clients), owned(2, 1, clients)]
    assert all(got) and ic.captured == len(clients) and ic.malformed == 0


def test_subscriptions_and_unsubscriptions_reach_the_split_through_the_xpub(kit, loop):
    ic, capture = loop
    subs = [subscriber(kit, wire.shard_topic(2, k)) for k in range(2)]
    turn_until(ic, lambda: len(ic.split.topics) == 2)

    subs[1].setsockopt(zmq.UNSUBSCRIBE, wire.shard_topic(2, 1))
    turn_until(ic, lambda: ic.split.topics == {wire.shard_topic(2, 0)})
    first = range(0, 40)
    capture.put([answer(i) for i in first])
    turn_until(ic, lambda: ic.split.published == len(first))
    assert until_marker(ic, *subs) == [owned(2, 0, first), []]

    subs[0].setsockopt(zmq.UNSUBSCRIBE, wire.shard_topic(2, 0))
    turn_until(ic, lambda: ic.split.counts == ())
    second = range(40, 50)
    capture.put([answer(i) for i in second])
    turn_until(ic, lambda: ic.captured == len(first) + len(second))
    assert ic.split.unsubscribed == len(second) and ic.split.published == len(first)
    assert until_marker(ic, *subs) == [[], []]

    subs[1].setsockopt(zmq.SUBSCRIBE, wire.shard_topic(2, 1))
    turn_until(ic, lambda: ic.split.topics == {wire.shard_topic(2, 1)})
    third = range(50, 90)
    capture.put([answer(i) for i in third])
    turn_until(ic, lambda: ic.split.published == len(first) + len(third))
    assert until_marker(ic, *subs) == [[], owned(2, 1, third)]
    assert ic.split.refused_subscriptions == 0


def test_two_tcpcopyd_hosts_with_different_worker_counts_each_get_their_split(kit, loop):
    ic, capture = loop
    subs = [subscriber(kit, wire.shard_topic(2, k)) for k in range(2)]
    subs += [subscriber(kit, wire.shard_topic(3, k)) for k in range(3)]
    turn_until(ic, lambda: ic.split.counts == (2, 3) and len(ic.split.topics) == 5)
    clients = range(90)
    capture.put([answer(i) for i in clients])
    turn_until(ic, lambda: ic.split.published == len(clients))
    assert until_marker(ic, *subs) == [owned(2, k, clients) for k in range(2)] + [
        owned(3, k, clients) for k in range(3)]


def headers_with_report(ic: Intercept, ch: AnswerChannel, count: int) -> list[bytes]:
    """Turn the loop until `ch` has `count` answer headers and the loop's report; the headers."""
    headers: list[bytes] = []

    def take(left: float) -> None:
        ic.turn()                                       # the loop reports once a second
        while (batch := ch.receive()) is not None:
            headers.extend(bytes(p) for _, p in wire.decode_batch(batch)[1])
    wait_for(lambda: len(headers) >= count and f"{ic.instance:08x}" in ch.intercepts, take)
    return headers


def test_the_workers_channels_take_the_loops_batches_and_its_report(kit, loop):
    ic, capture = loop
    channels = [AnswerChannel(kit.ctx, 2, k, (ENDPOINT,)) for k in range(2)]
    for ch in channels:
        kit.keep(*ch.sockets())
    turn_until(ic, lambda: len(ic.split.topics) == 2)
    clients = range(100)
    capture.put([answer(i) for i in clients])
    turn_until(ic, lambda: ic.split.published == len(clients))
    for shard, ch in enumerate(channels):
        want = owned(2, shard, clients)
        headers = headers_with_report(ic, ch, len(want))
        assert headers == want
        for h in headers:
            seg = parse_ipv4_tcp(h, keep_payload=False)
            assert shard_of(seg.dst_ip, seg.dst_port, 2) == shard
        info = ch.intercepts_info()[f"{ic.instance:08x}"]
        assert info["pid"] == os.getpid() and info["filter"] == "tcp"
        assert (ch.bad_frames, ch.batches_lost, ch.intercept_restarts) == (0, 0, 0)
