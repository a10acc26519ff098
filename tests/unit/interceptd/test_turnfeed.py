"""interceptd's compare mode without sockets: captured answers -> turns -> KIND_TURNS batches per shard.

Frames go through `Intercept.feed_file` (pcap files replayed by pypcap into the live capture's
callback) or straight into the turn feed; batches come out of `TurnFeed.take` and are decoded as a
tcpcopyd worker would (`wire.decode_turn_batch`)."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.compare.turns import AssemblerSpec
from appliance.config.keys import INTERCEPT
from appliance.config.loader import HEADERS_SNAPLEN, WHOLE_SNAPLEN, intercept_config, load
from appliance.core import wire
from appliance.core.errors import ConfigError
from appliance.core.flowkey import shard_of
from appliance.core.packet import ACK, DLT_RAW, FIN, PSH, RST, SYN, tcp_headers_of
from appliance.interceptd import cli as intercept_cli
from appliance.interceptd.shardsplit import MAX_SHARD_COUNTS, MAX_SHARDS
from appliance.interceptd.turnfeed import TurnFeed
from appliance.tcpcopyd.answers import intercept_report
from tests.unit.compare.kit import http_answer
from tests.unit.interceptkit import (
    CLIENT,
    ETH,
    TARGET,
    answer,
    conversation,
    digest,
    expected_turns,
    feed,
    interceptd,
    turn_facts,
    with_data_offset,
)

SPEC = AssemblerSpec(head_bytes=64)
SEC = 1_000_000_000


def answers_of(i: int) -> list[bytes]:
    """Three answers of sizes that differ per client, none of them HTTP (one digest each)."""
    return [bytes([i, n]) * (50 + 37 * i + 400 * n) for n in range(3)]


def turns_by_shard(pairs: list[tuple[bytes, bytes]]) -> dict[tuple[int, int], list[wire.TurnRecord]]:
    out: dict[tuple[int, int], list[wire.TurnRecord]] = {}
    for topic, frame in pairs:
        parsed = wire.parse_turn_topic(topic)
        assert parsed is not None
        header, turns = wire.decode_turn_batch(frame)
        assert header.kind == wire.KIND_TURNS
        out.setdefault(parsed, []).extend(turns)
    return out


def test_each_shard_gets_exactly_the_turns_of_its_clients_with_the_answers_bytes():
    ic = interceptd(compare=SPEC, turn_counts=(2, 3))
    clients = range(24)
    frames = [p for i in clients for p in conversation(i, answers_of(i), mss=700)]
    assert feed(ic, frames, DLT_RAW) == len(frames)
    assert ic.feed is not None
    got = turns_by_shard(ic.feed.take())
    for count in (2, 3):
        for shard in range(count):
            mine = [i for i in clients if shard_of(CLIENT, 40000 + i, count) == shard]
            want = [fact for i in mine for fact in expected_turns(i, answers_of(i), SPEC.head_bytes)]
            turns = got.get((count, shard), [])
            assert sorted(map(turn_facts, turns)) == sorted(want)
            assert all(t.flags & wire.TURN_ISN_KNOWN and not t.incomplete for t in turns)
    assert ic.feed.split.published == 3 * len(clients)
    assert ic.split.unsubscribed == len(frames)       # no worker asked for headers: counted as before
    counters = ic.counters()
    assert counters["turns"] == counters["turns_published"] == 3 * len(clients)
    assert counters["turn_segments"] == len(frames) and counters["turn_flows"] == len(clients)
    assert counters["turn_batches"] == 0              # batches are counted when the loop sends them


def test_http_answers_carry_the_heads_digest_and_the_bodys():
    answers = [http_answer(200, b"x" * 3000), http_answer(404, b"gone")]
    ic = interceptd(compare=SPEC, turn_counts=(1,))
    feed(ic, conversation(0, answers, mss=1000), DLT_RAW)
    assert ic.feed is not None
    turns = turns_by_shard(ic.feed.take())[(1, 0)]
    assert [t.index for t in turns] == [0, 1]
    for turn, data in zip(turns, answers, strict=True):
        head_end = data.index(b"\r\n\r\n") + 4
        assert turn.flags & wire.TURN_HTTP_BODY and turn.body_offset == head_end
        assert turn.digest == digest(data[:head_end]) and turn.body_digest == digest(data[head_end:])
        assert turn.length == len(data) and turn.head == data[:SPEC.head_bytes]


def test_the_payload_ends_at_the_ip_total_length_and_a_short_capture_is_counted():
    data = b"abcdefgh" * 100
    padded = [p + b"\x00" * 6 for p in conversation(0, [data, b"second"])]   # link padding after the packet
    ic = interceptd(compare=SPEC, turn_counts=(1,))
    feed(ic, padded, DLT_RAW)
    assert ic.feed is not None
    assert list(map(turn_facts, turns_by_shard(ic.feed.take())[(1, 0)])) == expected_turns(
        0, [data, b"second"], SPEC.head_bytes)

    packets = conversation(1, [data, b"second"], mss=len(data))
    offloaded = packets[1][:2] + b"\x00\x00" + packets[1][4:]       # total length 0: the frame's length
    cut = packets[2][:40 + 3]                                        # snaplen cut inside the payload
    feed(ic, [packets[0], offloaded, cut, packets[3]], DLT_RAW)
    first, second = turns_by_shard(ic.feed.take())[(1, 0)]
    assert turn_facts(first) == expected_turns(1, [data], SPEC.head_bytes)[0] and not first.incomplete
    assert second.incomplete and second.length == len(b"second") and second.head == b"sec"
    assert ic.counters()["turn_short_captures"] == 1 and ic.counters()["turns_incomplete"] == 1


def test_batches_are_cut_at_the_decoders_limit_and_numbered_per_topic():
    feed_ = TurnFeed(7, AssemblerSpec(head_bytes=16, max_flows=4000))
    feed_.subscription(b"\x01" + wire.turn_topic(1, 0))
    flows = 2 * wire.MAX_TURN_RECORDS + 100
    for i in range(flows):                          # one open turn per connection, seen mid-stream
        feed_.segment(i, memoryview(answer(i, b"", b"data", seq=1, ack=1)), 40)
    assert feed_.pending == 0 and feed_.take() == []
    feed_.poll(100 * SEC)                            # every turn idle: 2148 turns at once
    pairs = feed_.take()
    decoded = [wire.decode_turn_batch(frame) for _, frame in pairs]
    assert [h.count for h, _ in decoded] == [wire.MAX_TURN_RECORDS, wire.MAX_TURN_RECORDS, 100]
    assert [h.seq for h, _ in decoded] == [0, 1, 2] and {h.source for h, _ in decoded} == {7}
    assert {topic for topic, _ in pairs} == {wire.turn_topic(1, 0)}
    assert all(t.flags & wire.TURN_END_IDLE for _, turns in decoded for t in turns)
    assert feed_.split.published == flows and feed_.pending == 0


def test_turns_are_assembled_only_while_a_worker_subscribes_and_forgotten_when_the_last_leaves():
    ic = interceptd(1, compare=SPEC)                 # headers subscribed, turns not
    assert ic.feed is not None and not ic.feed.active
    feed(ic, conversation(0, [b"one"]), DLT_RAW)
    assert ic.counters()["turn_segments"] == 0 and ic.split.pending == 3     # the headers' path only

    topic = wire.turn_topic(1, 0)
    ic.subscription(b"\x01" + topic)
    feed(ic, conversation(1, [b"two", b"three"], mss=2, fin=False), DLT_RAW)
    assert len(ic.feed.assembler) == 1 and ic.counters()["turn_segments"] == 6
    ic.subscription(b"\x00" + topic)                 # the last comparing worker left
    assert not ic.feed.active and len(ic.feed.assembler) == 0
    counters = ic.counters()
    assert counters["turns_no_subscriber"] == 1     # "three" was still open, "two" is in a batch nobody takes
    assert counters["turn_segments"] == 6 and counters["turn_flows_created"] == 1   # carried over
    assert ic.feed.take() == []

    ic.subscription(b"\x01" + topic)
    feed(ic, conversation(2, [b"four"]), DLT_RAW)
    (turn,) = turns_by_shard(ic.feed.take())[(1, 0)]
    assert turn_facts(turn) == expected_turns(2, [b"four"])[0]
    counters = ic.counters()
    assert (counters["turn_segments"], counters["turns"], counters["turn_flows"]) == (6 + 3, 1 + 1 + 1, 1)


def test_turn_subscriptions_are_checked_and_bounded():
    ic = interceptd(compare=SPEC)
    assert ic.feed is not None
    for message in (b"\x01T", b"\x01T\x00\x02\x00", b"\x05" + wire.turn_topic(2, 0),
                    b"\x01" + wire.turn_topic(2, 0) + b"x", b"\x01" + wire.turn_topic(2, 2),
                    b"\x01" + wire.turn_topic(MAX_SHARDS + 1, 0), b"\x01Rxxxx"):
        ic.subscription(message)
    assert ic.counters()["subscriptions_refused"] == 7 and not ic.feed.active
    for n in range(1, MAX_SHARD_COUNTS + 3):
        ic.subscription(b"\x01" + wire.turn_topic(n, 0))
    assert len(ic.feed.split.counts) == MAX_SHARD_COUNTS
    counters = ic.counters()
    assert counters["subscriptions_refused"] == 9 and counters["turn_shard_counts"] == MAX_SHARD_COUNTS
    assert counters["shard_counts"] == 0             # the headers' counts are their own


def test_with_compare_off_turn_subscriptions_are_refused_counted_and_said_once(caplog):
    ic = interceptd(2)
    assert ic.feed is None
    with caplog.at_level(logging.WARNING, logger="appliance.interceptd.daemon"):
        for k in range(2):
            ic.subscription(b"\x01" + wire.turn_topic(2, k))
    assert ic.counters()["subscriptions_refused"] == 2 and ic.split.counts == (2,)
    assert len([r for r in caplog.records if "compare" in r.getMessage()]) == 1
    feed(ic, conversation(0, [b"answer"]), DLT_RAW)
    assert ic.split.pending == 3 and ic.flush() == 0
    assert all(v == 0 for k, v in ic.counters().items() if k.startswith("turn"))


def test_a_turn_the_encoder_refuses_is_counted_not_published(monkeypatch):
    def refuse(turn: wire.TurnRecord) -> bytes:
        raise wire.WireError("refused for the test")
    ic = interceptd(compare=SPEC, turn_counts=(1,))
    monkeypatch.setattr(wire, "encode_turn", refuse)
    feed(ic, conversation(0, [b"a", b"b"]), DLT_RAW)
    assert ic.feed is not None and ic.feed.take() == []
    counters = ic.counters()
    assert (counters["turns"], counters["turns_unencodable"], counters["turns_published"]) == (2, 2, 0)


def test_bad_frames_in_compare_mode_are_counted_as_without_it():
    ip = answer(3, payload=b"payload")
    bad = [bytes([0x44]) + ip[1:], ip[:9] + b"\x11" + ip[10:], ip[:6] + b"\x20\x00" + ip[8:],
           ip[:2] + b"\x00\x28" + ip[4:], ip[:45], with_data_offset(ip, 15), with_data_offset(ip, 3)]
    ic = interceptd(1, compare=SPEC, turn_counts=(1,))
    feed(ic, [ETH + p for p in bad] + [b"\x00" * 10, ETH + ip])
    assert (ic.malformed, ic.not_ip, ic.captured, ic.unexpected) == (len(bad), 1, 1, 0)
    assert ic.counters()["turn_segments"] == 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
                          st.sampled_from([ACK, ACK | PSH, ACK | FIN, RST, SYN, SYN | ACK, 0, 0xFF]),
                          st.binary(max_size=300), st.integers(0, 400)), max_size=40))
def test_any_sequence_of_answer_segments_makes_only_valid_batches(segments):
    ic = interceptd(compare=AssemblerSpec(head_bytes=16, max_flows=2), turn_counts=(2,))
    assert ic.feed is not None
    for n, (client, seq, ack, flags, payload, cut) in enumerate(segments):
        ip = answer(client, b"", payload, seq=seq, ack=ack, flags=flags)
        ic._on_answer(n, ip[:40 + cut], DLT_RAW)
    ic.feed.poll(10**12)
    ic.feed.flush()
    assert ic.unexpected == 0
    pairs = ic.feed.take()
    for _, frame in pairs:
        wire.decode_turn_batch(frame)
    counters = ic.counters()
    assert counters["turns"] == counters["turns_published"] + counters["turns_unencodable"]
    assert counters["turns_unencodable"] == 0


def test_the_turn_counters_reach_the_workers_report():
    ic = interceptd(compare=SPEC, turn_counts=(1,))
    feed(ic, conversation(0, [b"x" * 100, b"y"], mss=40), DLT_RAW)
    report = intercept_report(wire.decode_json(ic._stats_frame(), wire.KIND_STATS))
    assert report is not None
    _, kept, dropped = report
    assert dropped == 0 and kept["counters"] == ic.counters()
    assert kept["counters"]["turns"] == 2 and kept["counters"]["turn_segments"] == 6


# ---- configuration --------------------------------------------------------------------------------
def config(*argv: str):
    args = intercept_cli.build_parser().parse_args(["-F", "tcp", "--insecure", "true", *argv])
    return intercept_config(load(INTERCEPT, None, args))


def test_compare_is_off_by_default_and_changes_nothing():
    c = config()
    assert c.compare is None and c.snaplen == HEADERS_SNAPLEN == 14 + 60 + 60
    assert interceptd().feed is None


def test_compare_on_captures_whole_answers_with_the_assemblers_settings():
    c = config("--compare", "true", "--compare-head-bytes", "100", "--compare-turn-idle", "0.5",
               "--compare-flow-idle", "60", "--compare-max-flows", "1000")
    assert c.snaplen == WHOLE_SNAPLEN >= 20 + 65535
    assert c.compare == dataclasses.replace(AssemblerSpec(), head_bytes=100, turn_idle=0.5, flow_idle=60,
                                            max_flows=1000)
    assert config("--compare", "true").compare == AssemblerSpec()
    head = next(s for s in INTERCEPT if s.key == "compare_head_bytes")
    assert head.check.range == f"16-{wire.MAX_TURN_HEAD}"   # type: ignore[attr-defined]


@pytest.mark.parametrize("argv", [
    ("--compare-head-bytes", "4097"), ("--compare-head-bytes", "15"), ("--compare", "maybe"),
    ("--compare-turn-idle", "0"), ("--compare-max-flows", "10"),
    ("--compare", "true", "--compare-turn-idle", "30", "--compare-flow-idle", "10"),
])
def test_compare_settings_are_checked(argv):
    with pytest.raises(ConfigError):
        config(*argv)


def test_what_the_feed_reads_of_a_packet_is_its_headers_view():
    """`TurnFeed.segment` relies on `tcp_headers_of` having accepted the packet: the header length it
    is given is the view's length, IP options included."""
    ip = answer(0, b"\x01" * 8, b"payload")
    header = tcp_headers_of(memoryview(ip))
    assert header is not None and len(header) == 48
    f = TurnFeed(1, SPEC)
    f.subscription(b"\x01" + wire.turn_topic(1, 0))
    f.segment(5, memoryview(ip), len(header))
    f.flush()
    (turn,) = turns_by_shard(f.take())[(1, 0)]
    assert turn.flow == (TARGET, 8080, CLIENT, 40000) and turn.head == b"payload" and turn.first_ns == 5
