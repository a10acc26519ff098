"""interceptd's split of answers per worker: subscriptions in, one batch per shard out."""

from __future__ import annotations

from appliance.core import wire
from appliance.core.flowkey import shard_of
from appliance.interceptd.shardsplit import MAX_SHARD_COUNTS, MAX_SHARDS, ShardSplitter

CLIENTS = [(0xC6120001 + i, 40000 + 7 * i) for i in range(200)]


def subscribe(split: ShardSplitter, shards: int, shard: int, on: bool = True) -> None:
    split.subscription(bytes((1 if on else 0,)) + wire.shard_topic(shards, shard))


def header(i: int) -> memoryview:
    return memoryview(i.to_bytes(4, "big") * 10)


def batches(split: ShardSplitter) -> dict[tuple[int, int], list[bytes]]:
    out: dict[tuple[int, int], list[bytes]] = {}
    for topic, frame in split.take():
        parsed = wire.parse_shard_topic(topic)
        assert parsed is not None
        head, records = wire.decode_batch(frame)
        assert head.kind == wire.KIND_RESPONSES and head.source == 7
        out[parsed] = [bytes(p) for _, p in records]
    return out


def test_each_answer_goes_to_the_shard_that_owns_its_client_for_every_count_in_use():
    split = ShardSplitter(7)
    for k in range(2):
        subscribe(split, 2, k)
    for k in range(3):
        subscribe(split, 3, k)
    for i, (ip, port) in enumerate(CLIENTS):
        split.add(i, header(i), ip, port)
    got = batches(split)
    for count in (2, 3):
        for i, (ip, port) in enumerate(CLIENTS):
            assert bytes(header(i)) in got[(count, shard_of(ip, port, count))]
        assert sum(len(got[(count, k)]) for k in range(count)) == len(CLIENTS)
    assert split.published == len(CLIENTS) and split.pending == 0
    assert split.take() == []                     # batches start anew


def test_answers_without_any_subscriber_are_counted_not_kept():
    split = ShardSplitter(7)
    split.add(0, header(0), *CLIENTS[0])
    assert split.unsubscribed == 1 and split.take() == []
    subscribe(split, 1, 0)
    split.add(0, header(1), *CLIENTS[1])
    subscribe(split, 1, 0, on=False)
    assert split.counts == () and split.take() == []      # its last subscriber left while it filled
    assert split.published == 1 and split.unsubscribed == 1


def test_batch_numbers_count_per_topic():
    split = ShardSplitter(7)
    subscribe(split, 1, 0)
    seqs = []
    for i in range(3):
        split.add(i, header(i), *CLIENTS[i])
        (_topic, frame), = split.take()
        seqs.append(wire.decode_batch_header(frame).seq)
    assert seqs == [0, 1, 2]


def test_bad_subscriptions_are_refused_and_bounded():
    split = ShardSplitter(7)
    for message in (b"", b"\x05" + wire.shard_topic(2, 0), b"\x01garbage",
                    b"\x01" + wire.shard_topic(MAX_SHARDS + 1, 0)):
        split.subscription(message)
    assert split.refused_subscriptions == 4 and split.counts == ()
    split.subscription(b"\x01" + wire.STATS_TOPIC)          # the stats topic is no shard count
    assert split.counts == () and split.refused_subscriptions == 4
    for n in range(1, MAX_SHARD_COUNTS + 3):
        subscribe(split, n, 0)
    assert len(split.counts) == MAX_SHARD_COUNTS and split.refused_subscriptions == 6


# ---- slots of shard counts: freed with their last subscriber (issue 14) -------------------------
def test_a_shard_count_frees_its_slot_when_its_last_topic_is_unsubscribed():
    split = ShardSplitter(7)
    for n in range(1, 3 * MAX_SHARD_COUNTS):          # worker counts come and go, one at a time
        for k in range(n):
            subscribe(split, n, k)
        assert split.counts == (n,)
        for k in range(n):
            subscribe(split, n, k, on=False)
        assert split.counts == ()
    assert split.refused_subscriptions == 0
    assert split._builders == {}                      # nothing kept for counts nobody uses


def test_a_slot_stays_while_any_shard_of_its_count_is_subscribed():
    split = ShardSplitter(7)
    subscribe(split, 2, 0)
    subscribe(split, 2, 1)
    subscribe(split, 2, 0, on=False)                  # one of the two workers left
    split.add(0, header(0), *CLIENTS[0])
    split.add(1, header(1), *CLIENTS[1])
    assert split.counts == (2,)
    got = batches(split)
    assert set(got) <= {(2, 0), (2, 1)} and sum(len(v) for v in got.values()) == 2
    assert split._builders.keys() == {2}


def test_slots_are_freed_by_real_xpub_unsubscriptions():
    """ZeroMQ's XPUB says when the last subscriber of a topic leaves, unsubscribing or closing its socket."""
    import zmq
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.bind("inproc://answers")
    split = ShardSplitter(7)
    subs: list[zmq.Socket] = []

    def take_subscription() -> bytes:
        assert pub.poll(5000), "no subscription message from XPUB"
        message = pub.recv()
        split.subscription(message)
        return message
    try:
        for n in range(1, 2 * MAX_SHARD_COUNTS + 1):
            sub = ctx.socket(zmq.SUB)
            subs.append(sub)
            sub.connect("inproc://answers")
            sub.setsockopt(zmq.SUBSCRIBE, wire.shard_topic(n, 0))
            assert take_subscription()[0] == 1 and split.counts == (n,)
            if n % 2:
                sub.setsockopt(zmq.UNSUBSCRIBE, wire.shard_topic(n, 0))
            sub.close(linger=0)                       # even numbers: the disconnect ends the subscription
            assert take_subscription()[0] == 0 and split.counts == ()
        assert split.refused_subscriptions == 0 and split._builders == {}
    finally:
        for sock in subs + [pub]:
            sock.close(linger=0)
        ctx.term()


# ---- compare mode: a splitter of turn topics (issue 16) -----------------------------------------
def test_a_turn_splitter_takes_turn_topics_only_and_makes_turn_batches():
    split = ShardSplitter(7, wire.KIND_TURNS)
    split.subscription(b"\x01" + wire.shard_topic(2, 0))          # a header topic is not its family
    assert split.refused_subscriptions == 1 and split.counts == ()
    for k in range(2):
        split.subscription(b"\x01" + wire.turn_topic(2, k))
    assert split.counts == (2,)
    for i, (ip, port) in enumerate(CLIENTS[:20]):
        split.add(i, b"turn %d" % i, ip, port)
    frames = split.take()
    assert {topic for topic, _ in frames} <= {wire.turn_topic(2, 0), wire.turn_topic(2, 1)}
    for topic, frame in frames:
        header = wire.decode_batch_header(frame[:1] + bytes([wire.KIND_RESPONSES]) + frame[2:])
        assert frame[1] == wire.KIND_TURNS and header.source == 7 and header.seq == 0
        shard = wire.parse_turn_topic(topic)[1]                     # type: ignore[index]
        assert header.count == sum(1 for ip, port in CLIENTS[:20] if shard_of(ip, port, 2) == shard)
    header_split = ShardSplitter(7)
    header_split.subscription(b"\x01" + wire.turn_topic(2, 0))      # and the other way round
    assert header_split.refused_subscriptions == 1 and header_split.counts == ()
