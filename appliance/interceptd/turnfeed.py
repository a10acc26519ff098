"""interceptd's compare mode: the target's answers -> turns -> one KIND_TURNS batch per shard.

Runs in interceptd. Sans-io: captured answer packets and the clock in, (topic, frame) pairs out.
The workers of a tcpcopyd that compares answers subscribe to their turn topics (`wire.turn_topic`)
besides their header topics; this feed splits the turns per shard for the shard counts named by
turn topics only (its own ShardSplitter of kind KIND_TURNS), with a batch sequence per topic.

Decision: the assembler is fed only while some worker subscribes to a turn topic (interceptd's
loop checks `active` once per dispatch, not per packet), so compare mode costs nothing beyond the
larger capture while no tcpcopyd compares. When the last turn subscription ends, the flows are
forgotten: a later subscriber's sessions are new connections, and flows left half-fed would
misnumber their turns. Their open turns are counted as `unsubscribed`.

Turns are digests and heads, never held for long: a batch is cut as soon as it holds
`batch_limit` turns (the decoder's MAX_TURN_RECORDS at most), so poll() ending thousands of idle
turns at once still makes valid batches.
"""

from __future__ import annotations

import struct

from appliance.compare.turns import AssemblerCounters, AssemblerSpec, Turn, TurnAssembler
from appliance.core import wire
from appliance.interceptd.shardsplit import ShardSplitter

_IP_ADDRESSES = struct.Struct("!II")        # at IP offset 12: source, destination
_TCP_START = struct.Struct("!HHIIxB")       # ports, seq, ack, (data offset byte), flags


class TurnFeed:
    """The turn assembler of one interceptd and the split of its turns. `split.published` counts
    turns that went into at least one batch, `split.unsubscribed` turns no worker was subscribed
    to, `unencodable` turns `wire.encode_turn` refused (a bug if ever non-zero: counted, not fatal)."""

    def __init__(self, source: int, spec: AssemblerSpec, batch_limit: int = wire.MAX_TURN_RECORDS) -> None:
        if not 0 < batch_limit <= wire.MAX_TURN_RECORDS:
            raise ValueError(f"batch_limit must be 1..{wire.MAX_TURN_RECORDS}")
        self.spec = spec
        self.split = ShardSplitter(source, wire.KIND_TURNS)
        self.assembler = TurnAssembler(spec)
        self.counters: AssemblerCounters = self.assembler.counters     # kept across resets
        self.batch_limit = batch_limit
        self.unencodable = 0
        self._ready: list[tuple[bytes, bytes]] = []      # batches cut at batch_limit, not yet taken

    @property
    def active(self) -> bool:
        """Some worker subscribes to a turn topic: answers are worth assembling."""
        return bool(self.split.counts)

    @property
    def pending(self) -> int:
        """Turns waiting to be taken."""
        return self.split.pending + len(self._ready)

    def subscription(self, message: bytes) -> None:
        """An XPUB subscription message naming a turn topic (or garbage, refused and counted)."""
        was_active = self.active
        self.split.subscription(message)
        if was_active and not self.active:
            # the last comparing worker left: forget the flows (see the module's docstring)
            self.split.unsubscribed += len(self.assembler.flush())
            self.assembler = TurnAssembler(self.spec)
            self.assembler.counters = self.counters

    def segment(self, ts_ns: int, ip: memoryview, header_len: int) -> None:
        """One captured answer: `ip` is the packet from its IP header on, as captured (cut by the
        snaplen or padded by the link), whose `header_len` bytes of IP and TCP headers
        `packet.tcp_headers_of` accepted. Its payload is cut at the IP total length (0, from an
        offloading NIC: the captured length); a capture shorter than that is the assembler's
        short capture."""
        src, dst = _IP_ADDRESSES.unpack_from(ip, 12)
        sport, dport, seq, ack, flags = _TCP_START.unpack_from(ip, (ip[0] & 0x0F) * 4)
        total = ((ip[2] << 8) | ip[3]) or len(ip)
        turns = self.assembler.feed((src, sport, dst, dport), seq, ack, flags, ip[header_len:total], ts_ns,
                                    total - header_len)
        if turns:
            self._add(turns)

    def poll(self, now_ns: int) -> None:
        """Turns idle for turn_idle, flows idle for flow_idle (`now_ns`: the capture clock, wall
        time in nanoseconds). About once a second."""
        turns = self.assembler.poll(now_ns)
        if turns:
            self._add(turns)

    def flush(self) -> None:
        """Every open turn, as if idle: at shutdown."""
        self._add(self.assembler.flush())

    def take(self) -> list[tuple[bytes, bytes]]:
        """(topic, KIND_TURNS batch frame) of every shard with turns; the batches start anew."""
        out = self._ready + self.split.take() if self.split.pending else self._ready
        self._ready = []
        return out

    def _add(self, turns: tuple[Turn, ...]) -> None:
        split = self.split
        for turn in turns:
            try:
                record = wire.encode_turn(turn)
            except wire.WireError:
                self.unencodable += 1
                continue
            split.add(turn.last_ns, record, turn.client_ip, turn.client_port)
            if split.pending >= self.batch_limit:
                self._ready += split.take()
