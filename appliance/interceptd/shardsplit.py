"""interceptd's split of the target's answers into one batch per rewrite worker.

Runs in interceptd. Sans-io: subscription messages and records in, (topic, frame) pairs out.
Every tcpcopyd worker subscribes to its own shard topic (`wire.shard_topic`); the shard counts
those topics name are the ones in use, and each answer goes into the batch of the shard that
`flowkey.shard_of` gives its destination (the client) for every count in use, so each worker
receives only what it owns, and one message per batch instead of one per worker.

One splitter per family of topics: the answers' headers (b"R" topics, KIND_RESPONSES batches), and
in compare mode the answers' turns (b"T" topics, KIND_TURNS batches, `wire.turn_topic`), which only
workers comparing answers subscribe to; each family learns its shard counts from its own topics.

A shard count holds one of MAX_SHARD_COUNTS slots (its batch builders) while any topic of it is
subscribed: XPUB hands over the end of a topic's last subscription (an unsubscribe, or the
subscriber's disconnect), and the slot is freed when the count's last topic goes.
"""

from __future__ import annotations

from appliance.core import wire
from appliance.core.flowkey import shard_of

MAX_SHARDS = 1024            # a subscription naming more workers than this is refused (memory bound)
MAX_SHARD_COUNTS = 16        # different worker counts subscribed at once (one per online host config)

# batch kind -> (its topic, the topic's parser)
FAMILIES = {
    wire.KIND_RESPONSES: (wire.shard_topic, wire.parse_shard_topic),
    wire.KIND_TURNS: (wire.turn_topic, wire.parse_turn_topic),
}


class ShardSplitter:
    """Subscriptions in, batches out, for the topics of one batch kind (headers by default). `published`
    counts records that went into at least one batch, `unsubscribed` those added while no worker was
    subscribed (nobody to hand them to)."""

    def __init__(self, source: int, kind: int = wire.KIND_RESPONSES) -> None:
        self.source = source
        self.kind = kind
        self._topic, self._parse = FAMILIES[kind]
        self.topics: set[bytes] = set()
        self.counts: tuple[int, ...] = ()          # shard counts with a subscribed topic
        self._builders: dict[int, list[wire.BatchBuilder]] = {}
        self.pending = 0                           # records added since the last take
        self.published = 0
        self.unsubscribed = 0
        self.refused_subscriptions = 0

    def subscription(self, message: bytes) -> None:
        """An XPUB subscription message: b"\\x01" + topic subscribes, b"\\x00" + topic unsubscribes.
        ZeroMQ hands over the first subscription of a topic and the end of its last one."""
        if not message or message[0] not in (0, 1):
            self.refused_subscriptions += 1
            return
        topic = message[1:]
        if topic == wire.STATS_TOPIC:
            return
        parsed = self._parse(topic)
        if parsed is None or parsed[0] > MAX_SHARDS:
            self.refused_subscriptions += 1
            return
        if message[0] == 1:
            if parsed[0] not in self._builders and len(self._builders) >= MAX_SHARD_COUNTS:
                self.refused_subscriptions += 1
                return
            self.topics.add(topic)
            self._builders.setdefault(parsed[0], [wire.BatchBuilder(self.kind, self.source)
                                                  for _ in range(parsed[0])])
        else:
            self.topics.discard(topic)
        self.counts = tuple(sorted({self._parse(t)[0] for t in self.topics}))  # type: ignore[index]
        if message[0] == 0 and parsed[0] not in self.counts:
            # its last subscriber left: free the slot (records still in its batches had nobody to go to)
            self._builders.pop(parsed[0], None)

    def add(self, ts_ns: int, header: bytes | memoryview, client_ip: int, client_port: int) -> None:
        """One record (an answer's IP+TCP header, or a turn); (client_ip, client_port) is the
        answer's destination."""
        if not self.counts:
            self.unsubscribed += 1
            return
        for count in self.counts:
            self._builders[count][shard_of(client_ip, client_port, count) if count > 1 else 0].add(ts_ns, header)
        self.pending += 1

    def take(self) -> list[tuple[bytes, bytes]]:
        """(topic, batch frame) of every shard that has records; the batches start anew."""
        out = []
        for count, builders in self._builders.items():
            for shard, builder in enumerate(builders):
                if builder.count:
                    frame = builder.take()
                    if count in self.counts:       # else its last subscriber left while it filled
                        out.append((self._topic(count, shard), frame))
        self.published += self.pending
        self.pending = 0
        return out
