"""interceptd's loop in compare mode over real ZeroMQ (inproc, no root, no pcap): answers from a
stand-in capture, turn topics subscribed through the XPUB, KIND_TURNS batches per shard next to the
header batches, and the report. As in test_publish.py, a marker sent after the batches proves every
batch before it has arrived (one publisher's messages keep their order)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator

import pytest
import zmq

from appliance.compare.turns import AssemblerSpec
from appliance.config.loader import InterceptConfig
from appliance.core import wire
from appliance.core.flowkey import shard_of
from appliance.interceptd import daemon
from appliance.interceptd.daemon import Intercept
from appliance.tcpcopyd.answers import intercept_report
from tests.unit.interceptkit import (
    CLIENT,
    FakeCapture,
    ZmqKit,
    compare_config,
    conversation,
    expected_turns,
    turn_facts,
    wait_for,
)

ENDPOINT = "inproc://interceptd-compare"
MARKER = b"end of test batch"
SPEC = AssemblerSpec(head_bytes=100)
CLIENTS = range(40)


def answers_of(i: int) -> list[bytes]:
    return [bytes([i]) * (30 + 11 * i), bytes([i, 1]) * (700 + i), b"last %d" % i]


def frames() -> list[bytes]:
    return [p for i in CLIENTS for p in conversation(i, answers_of(i), mss=500)]


BASE_NS = time.time_ns() + 3600 * 1_000_000_000


def counting_clock() -> Callable[[], int]:
    """Capture times BASE + 1, 2, 3, ... ms: the same frames carry the same times in every run. An
    hour ahead of the wall clock, which the loop's idle poll reads: no turn of these tests idles."""
    ticks = itertools.count(1)
    return lambda: BASE_NS + next(ticks) * 1_000_000


@pytest.fixture
def kit() -> Iterator[ZmqKit]:
    k = ZmqKit()
    yield k
    k.close()


Loop = Callable[[InterceptConfig], tuple[Intercept, FakeCapture]]


@pytest.fixture
def start(kit) -> Iterator[Loop]:
    """start(config): interceptd's loop on an inproc XPUB, fed by a stand-in capture (one per test)."""
    made: list[tuple[Intercept, FakeCapture]] = []

    def _start(config: InterceptConfig) -> tuple[Intercept, FakeCapture]:
        ic = Intercept(config)
        capture = FakeCapture(clock=counting_clock())
        ic.handles = [capture]
        pub = ic.publisher(kit.ctx)
        kit.keep(pub)
        monitor = pub.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        kit.keep(monitor)
        pub.bind(ENDPOINT if not made else f"{ENDPOINT}-{len(made)}")
        ic.attach(pub, monitor)
        made.append((ic, capture))
        return ic, capture
    yield _start
    for ic, capture in made:
        ic.pub.disable_monitor()
        capture.close()


def subscriber(kit: ZmqKit, endpoint: str, *topics: bytes) -> zmq.Socket:
    sub = kit.socket(zmq.SUB)
    sub.setsockopt(zmq.MAXMSGSIZE, wire.MAX_RESPONSE_MESSAGE)    # what a worker's SUB allows
    for topic in topics + (wire.STATS_TOPIC,):
        sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.connect(endpoint)
    return sub


def turn_until(ic: Intercept, what: Callable[[], bool]) -> None:
    wait_for(what, lambda left: ic.turn())


def until_marker(ic: Intercept, sub: zmq.Socket) -> list[tuple[bytes, bytes]]:
    """(topic, body) of every batch `sub` received before a marker sent now (not the reports)."""
    ic.pub.send_multipart((wire.STATS_TOPIC, MARKER))
    got = []
    while True:
        assert sub.poll(5000), "the marker did not arrive"
        topic, body = sub.recv_multipart()
        if body == MARKER:
            return got
        if topic != wire.STATS_TOPIC:
            got.append((topic, body))


def headers_of(batches: list[tuple[bytes, bytes]]) -> list[tuple[bytes, int, int, list[tuple[int, bytes]]]]:
    """(topic, batch seq, count, [(ts, header)]) of the header batches, in arrival order."""
    out = []
    for topic, body in batches:
        if wire.parse_shard_topic(topic) is not None:
            head, records = wire.decode_batch(body)
            assert head.kind == wire.KIND_RESPONSES
            out.append((topic, head.seq, head.count, [(ts, bytes(p)) for ts, p in records]))
    return out


def turns_of(batches: list[tuple[bytes, bytes]], ic: Intercept) -> dict[bytes, list[wire.TurnRecord]]:
    out: dict[bytes, list[wire.TurnRecord]] = {}
    seqs: dict[bytes, list[int]] = {}
    for topic, body in batches:
        if topic[:1] == wire.TURN_TOPIC_PREFIX:
            head, turns = wire.decode_turn_batch(body)
            assert head.source == ic.instance and wire.parse_turn_topic(topic) is not None
            out.setdefault(topic, []).extend(turns)
            seqs.setdefault(topic, []).append(head.seq)
    assert all(s == list(range(len(s))) for s in seqs.values())      # batch seq counts per topic from 0
    return out


def owned_turns(count: int, shard: int) -> list[tuple[object, ...]]:
    return sorted(fact for i in CLIENTS if shard_of(CLIENT, 40000 + i, count) == shard
                  for fact in expected_turns(i, answers_of(i), SPEC.head_bytes))


def owned_headers(count: int, shard: int) -> list[bytes]:
    """The IP+TCP headers (no options) of the answers to the clients `shard` owns, in capture order."""
    return [p[:40] for i in CLIENTS if shard_of(CLIENT, 40000 + i, count) == shard
            for p in conversation(i, answers_of(i), mss=500)]


def run(start: Loop, kit: ZmqKit, config: InterceptConfig, endpoint: str, *topics: bytes
        ) -> tuple[Intercept, list[tuple[bytes, bytes]]]:
    """Start a loop, subscribe one socket to `topics`, put every frame, turn until all are captured
    and published; the loop and what the socket received."""
    ic, capture = start(config)
    sub = subscriber(kit, endpoint, *topics)
    subscribed = [t for t in topics if t[:1] == b"R" or ic.feed is not None]
    turn_until(ic, lambda: len(ic.split.topics) + len(ic.feed.split.topics if ic.feed else ()) == len(subscribed))
    capture.put(frames())
    turn_until(ic, lambda: capture.delivered == len(frames()) and not ic.split.pending
               and not (ic.feed and ic.feed.pending))
    return ic, until_marker(ic, sub)


def test_compare_off_sends_no_turns_and_the_same_headers_as_compare_on(kit, start):
    topics = (wire.shard_topic(2, 0), wire.shard_topic(2, 1), wire.turn_topic(2, 0), wire.turn_topic(2, 1))
    off, got_off = run(start, kit, InterceptConfig(interfaces=("fake",), bpf="tcp"), ENDPOINT, *topics)
    turn_until(off, lambda: off.counters()["subscriptions_refused"] == 2)
    assert turns_of(got_off, off) == {} and all(t[:1] == b"R" for t, _ in got_off)
    on, got_on = run(start, kit, compare_config(SPEC), f"{ENDPOINT}-1", *topics)
    assert on.counters()["subscriptions_refused"] == 0
    assert headers_of(got_off) == headers_of(got_on) != []          # times, bytes, batching, seq
    for k in range(2):
        assert [p for h in headers_of(got_on) if h[0] == wire.shard_topic(2, k) for _, p in h[3]] == owned_headers(2, k)
    turns = turns_of(got_on, on)
    for k in range(2):
        assert sorted(map(turn_facts, turns[wire.turn_topic(2, k)])) == owned_turns(2, k) != []


def test_each_turn_subscriber_gets_exactly_its_clients_turns_and_headers_still_flow(kit, start):
    ic, capture = start(compare_config(SPEC))
    subs = {(count, k): subscriber(kit, ENDPOINT, wire.shard_topic(count, k), wire.turn_topic(count, k))
            for count in (2, 3) for k in range(count)}
    turn_until(ic, lambda: ic.feed is not None and ic.feed.split.counts == (2, 3) == ic.split.counts
               and len(ic.feed.split.topics) == 5)
    capture.put(frames())
    turn_until(ic, lambda: capture.delivered == len(frames()) and not ic.split.pending)
    for (count, k), sub in subs.items():
        got = until_marker(ic, sub)
        turns = turns_of(got, ic)
        assert set(turns) <= {wire.turn_topic(count, k)}
        assert sorted(map(turn_facts, turns.get(wire.turn_topic(count, k), []))) == owned_turns(count, k)
        assert [p for h in headers_of(got) for _, p in h[3]] == owned_headers(count, k)
    counters = ic.counters()
    assert counters["turns"] == counters["turns_published"] == 3 * len(CLIENTS)
    assert counters["turn_batches"] >= 5 and counters["turn_shard_counts"] == 2
    assert (counters["turns_no_subscriber"], counters["turns_unencodable"], counters["unexpected"]) == (0, 0, 0)


def test_turns_without_header_subscribers_and_headers_without_turn_subscribers(kit, start):
    ic, got = run(start, kit, compare_config(SPEC), ENDPOINT, wire.turn_topic(1, 0))
    assert headers_of(got) == [] and ic.split.unsubscribed == len(frames())
    assert sorted(map(turn_facts, turns_of(got, ic)[wire.turn_topic(1, 0)])) == owned_turns(1, 0)

    ic2, got2 = run(start, kit, compare_config(SPEC), f"{ENDPOINT}-1", wire.shard_topic(1, 0))
    assert turns_of(got2, ic2) == {} and sum(len(h[3]) for h in headers_of(got2)) == len(frames())
    counters = ic2.counters()
    assert counters["turn_segments"] == counters["turns"] == counters["turn_flows"] == 0   # nobody compares


def test_open_turns_go_out_at_exit_and_the_report_carries_the_turn_counters(kit, start, monkeypatch):
    monkeypatch.setattr(daemon, "STATS_INTERVAL", 0.0)     # a report (and an idle poll) every turn
    ic, capture = start(compare_config(SPEC))
    sub = subscriber(kit, ENDPOINT, wire.turn_topic(1, 0))
    turn_until(ic, lambda: ic.feed is not None and ic.feed.active)
    capture.put(conversation(0, [b"first", b"still open"], fin=False))
    turn_until(ic, lambda: capture.delivered == 3 and ic.counters()["turns_published"] == 1)
    assert ic.flush() == 1
    turns = turns_of(until_marker(ic, sub), ic)[wire.turn_topic(1, 0)]
    assert [t.head for t in turns] == [b"first", b"still open"]
    assert turns[1].flags & wire.TURN_END_IDLE and not turns[0].flags & wire.TURN_END_IDLE

    reports = []

    def take(left: float) -> None:
        ic.turn()
        while sub.poll(0):
            topic, body = sub.recv_multipart()
            if topic == wire.STATS_TOPIC and body != MARKER:
                reports.append(intercept_report(wire.decode_json(body, wire.KIND_STATS)))
    wait_for(lambda: bool(reports), take)
    report = reports[-1]
    assert report is not None
    _, kept, dropped = report
    assert dropped == 0
    assert kept["counters"]["turns_published"] == 2 and kept["counters"]["turn_batches"] == 2
    assert kept["counters"]["turn_segments"] == 3 and kept["counters"]["turn_shard_counts"] == 1


def test_the_loop_publishes_idle_turns_about_once_a_second(kit, start, monkeypatch):
    ic, capture = start(compare_config(AssemblerSpec(turn_idle=0.05)))
    capture.clock = time.time_ns                               # the wall clock the idle poll reads
    sub = subscriber(kit, ENDPOINT, wire.turn_topic(1, 0))
    turn_until(ic, lambda: ic.feed is not None and ic.feed.active)
    capture.put(conversation(0, [b"first", b"no more after this"], fin=False))
    turn_until(ic, lambda: capture.delivered == 3 and ic.counters()["turns_published"] >= 1)
    monkeypatch.setattr(daemon, "STATS_INTERVAL", 0.0)
    turn_until(ic, lambda: ic.counters()["turns_published"] == 2)
    turns = turns_of(until_marker(ic, sub), ic)[wire.turn_topic(1, 0)]
    assert [t.head for t in turns] == [b"first", b"no more after this"]
    assert turns[1].flags & wire.TURN_END_IDLE and ic.flush() == 0      # nothing left open
