"""Long fuzz run: millions of mutated packets, batch frames, capture files, JSON frames and
captured answers through the parsers.

    .venv/bin/python perf/fuzz.py [--inputs 10000000] [--seed 1]

Each input is a valid packet or frame with random bytes overwritten, truncated or extended, or
plain random bytes. The only acceptable outcomes are a parse or the documented error
(MalformedPacket, WireError, PcapError); anything else stops the run with the input printed in hex.
Spoofed segments go into a session table as a live worker runs it (SpoofFuzz): nothing of
them may reach the target, no RST off the expected number may reset a session.
interceptd's capture path is fuzzed as it runs: mutated frames are written to pcap files
(INTERCEPT_FILE_FRAMES at a time) that libpcap (pypcap) replays into interceptd's capture
callback; every frame must be published or counted, never `unexpected`, and every published
header must parse as the rewrite worker parses it. Prints the count of inputs, how many parsed,
and the rate.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time

from appliance.config.loader import InterceptConfig
from appliance.core import wire
from appliance.core.packet import (
    ACK,
    PSH,
    RST,
    SYN,
    MalformedPacket,
    TcpSegment,
    build_ipv4_tcp,
    ip_to_int,
    parse_ipv4_tcp,
    parse_options,
)
from appliance.core.pcapfile import PcapError, packets
from appliance.interceptd.daemon import Intercept

SEEDS = [build_ipv4_tcp(0xC6120001, 0xC6120002, 40000, 8080, 1, 2, ACK | PSH, 512,
                        b"\x01\x01\x08\x0a" + b"\x00" * 8, b"GET / HTTP/1.1\r\n\r\n"),
         build_ipv4_tcp(0xC6120003, 0xC6120001, 8080, 40000, 5, 6, ACK, 512, b"\x02\x04\x05\xb4\x04\x02")]
ETH = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"
JSON_SEEDS = [b'{"id":"1","command":"set","args":{"name":"sample-rate","value":0.25}}',
              b'{"role":"interceptd","instance":"0a0b0c0d","pid":42,"counters":{"captured":1,"published":1}}']
KINDS = 6
CLIENT, ONLINE, TARGET = ip_to_int("198.18.0.1"), ip_to_int("198.18.0.2"), ip_to_int("198.18.0.3")
INTERCEPT_FILE_FRAMES = 2000


def mutate_json(rng: random.Random, base: bytes) -> bytes:
    """A JSON seed with a number blown up (past 4,300 digits, past a float, NaN), nesting added,
    or bytes flipped."""
    choice = rng.random()
    if choice < 0.3:
        number = rng.choice([b"9" * rng.randrange(1, 6000), b"1e" + str(rng.randrange(300, 400)).encode(),
                             b"NaN", b"-Infinity", b"-" + b"1" * rng.randrange(15, 30)])
        return base.replace(b"0.25", number).replace(b"42", number)
    if choice < 0.4:
        depth = rng.randrange(1, 3000)
        return base[:-1] + b',"x":' + b"[" * depth + b"]" * depth + b"}"
    return mutate(rng, base)


def mutate(rng: random.Random, base: bytes) -> bytes:
    choice = rng.random()
    if choice < 0.05:
        return rng.randbytes(rng.randrange(0, 120))
    data = bytearray(base)
    for _ in range(rng.randrange(1, 6)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    if choice < 0.2:
        del data[rng.randrange(len(data)):]
    elif choice < 0.3:
        data += rng.randbytes(rng.randrange(1, 40))
    return bytes(data)


def _pcap_of(ip_packets: list[bytes], linktype: int | None = None) -> bytes:
    """A pcap file of the packets: raw IP, or `linktype` (1: Ethernet frames)."""
    import io

    import dpkt
    out = io.BytesIO()
    linktype = dpkt.pcap.DLT_RAW if linktype is None else linktype
    writer = dpkt.pcap.Writer(out, snaplen=65535, linktype=linktype)
    for n, pkt in enumerate(ip_packets):
        writer.writepkt(pkt, 1000.0 + n)
    return out.getvalue()


class InterceptFuzz:
    """Captured answers for interceptd, fed a pcap file at a time through its capture callback."""

    def __init__(self) -> None:
        self.ic = Intercept(InterceptConfig(interfaces=("lo",), bpf="tcp"))
        for count in (1, 3):
            for shard in range(count):
                self.ic.split.subscription(b"\x01" + wire.shard_topic(count, shard))
        self.frames: list[bytes] = []
        self.fed = 0

    def add(self, frame: bytes) -> None:
        self.frames.append(frame)
        if len(self.frames) >= INTERCEPT_FILE_FRAMES:
            self.flush()

    def flush(self) -> int:
        """Feed the frames gathered; the number of headers published. Raises on a broken promise
        (the pcap file is kept and named)."""
        if not self.frames:
            return 0
        ic = self.ic
        fd, path = tempfile.mkstemp(prefix="interceptd-fuzz-", suffix=".pcap")
        with os.fdopen(fd, "wb") as f:
            f.write(_pcap_of(self.frames, linktype=1))
        fed = ic.feed_file(path)
        self.fed += fed
        published = 0
        for _topic, frame in ic.split.take():
            for _ts, header in wire.decode_batch(frame)[1]:
                parse_ipv4_tcp(header, keep_payload=False)      # raises MalformedPacket: a broken promise
                published += 1
        if fed != len(self.frames) or ic.unexpected or ic.captured + ic.malformed + ic.not_ip != self.fed:
            raise AssertionError(f"interceptd's capture callback: fed {fed} of {len(self.frames)}, counters "
                                 f"{ic.counters()}; frames kept in {path}")
        os.unlink(path)
        self.frames = []
        return published


class SpoofFuzz:
    """Spoofed traffic into a session table as a live worker runs it (mid-stream segments checked
    against the online host's socket table, which holds none of them), beside established sessions
    that spoofed answers try to reset: no spoofed segment may reach the target, no session may be
    reset by a RST off its expected sequence number."""

    SESSIONS = 64

    def __init__(self) -> None:
        from appliance.engine.table import SessionTable
        self.table = SessionTable()
        self.table.accepted_online = lambda seg: False
        self.rcv_nxt: dict[int, int] = {}
        for port in range(41000, 41000 + self.SESSIONS):
            self.table.client_segment(self._client(port, 1000, 0, SYN), TARGET, 8080, 0.0)
            self.table.target_segment(self._target(port, 5000, 1001, SYN | ACK), 0.0)
            self.rcv_nxt[port] = 5001
        self.table.flush(0.0)
        self.table.take_output()
        self.refused = self.challenged = 0

    @staticmethod
    def _client(port: int, seq: int, ack: int, flags: int, payload: bytes = b"") -> TcpSegment:
        return TcpSegment(CLIENT, ONLINE, port, 8080, seq, ack, flags, 512, b"", payload, len(payload), 1)

    @staticmethod
    def _target(port: int, seq: int, ack: int, flags: int) -> TcpSegment:
        return TcpSegment(TARGET, CLIENT, 8080, port, seq, ack, flags, 512, b"", b"", 0, 1)

    def feed(self, rng: random.Random, i: int) -> None:
        table = self.table
        if rng.random() < 0.5:                  # data without a SYN, any port, any numbers
            port = rng.randrange(1024, 65536)
            if 41000 <= port < 41000 + self.SESSIONS:
                port += self.SESSIONS
            seg = self._client(port, rng.getrandbits(32), rng.getrandbits(32), ACK | PSH, rng.randbytes(20))
            table.client_segment(seg, TARGET, 8080, 1.0)
        else:                                   # a RST (or RST-ACK) off the expected number
            port = 41000 + rng.randrange(self.SESSIONS)
            seq = rng.getrandbits(32)
            if seq == self.rcv_nxt[port]:
                seq += 1
            table.target_segment(self._target(port, seq, rng.getrandbits(32), RST | rng.choice((0, ACK))), 1.0)
        table.flush(1.0)
        out = table.take_output()
        if any(e.payload or e.flags & (SYN | RST) for e in out) or table.counters.sessions_reset_by_target:
            raise AssertionError(f"spoofed input {i} reached the target or reset a session: {out[:3]}")
        self.challenged += len(out)

    def summary(self) -> str:
        c = self.table.counters
        return (f"spoofing: {c.midstream_refused:,} mid-stream segments refused, {c.target_resets_challenged:,} "
                f"RSTs challenged, {c.target_resets_ignored:,} ignored, {c.sessions_reset_by_target} sessions reset")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", type=int, default=10_000_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    b = wire.BatchBuilder(wire.KIND_RESPONSES, 9)
    for s in SEEDS:
        b.add(1, s)
    frames = [b.take()]
    pcap_file = _pcap_of(SEEDS)
    intercept = InterceptFuzz()
    spoof = SpoofFuzz()
    parsed = 0
    started = time.monotonic()
    for i in range(args.inputs):
        kind = i % KINDS
        if kind == 5:
            spoof.feed(rng, i)
        elif kind == 4:
            answer = ETH + SEEDS[1]
            intercept.add(mutate(rng, answer) if rng.random() < 0.9 else rng.randbytes(rng.randrange(60)))
        elif kind == 3:
            data = bytes([wire.VERSION, wire.KIND_CONTROL]) + mutate_json(rng, JSON_SEEDS[i % 2])
            try:
                wire.decode_json(data, wire.KIND_CONTROL)
                parsed += 1
            except wire.WireError:
                pass
            except Exception:
                print(f"JSON decoder raised on input {i}: {data[:200].hex()}... ({len(data)} bytes)")
                raise
        elif kind == 2:
            data = mutate(rng, pcap_file)
            try:
                for _ in packets("fuzz.pcap", data):
                    pass
                parsed += 1
            except PcapError:
                pass
            except Exception:
                print(f"pcap reader raised on input {i}: {data.hex()}")
                raise
        elif kind == 1:
            data = mutate(rng, frames[0])
            try:
                wire.decode_batch(data)
                parsed += 1
            except wire.WireError:
                pass
            except Exception:
                print(f"wire decoder raised on input {i}: {data.hex()}")
                raise
        else:
            data = mutate(rng, SEEDS[i % 4 // 2])
            try:
                parse_options(parse_ipv4_tcp(data).options)
                parsed += 1
            except MalformedPacket:
                pass
            except Exception:
                print(f"packet parser raised on input {i}: {data.hex()}")
                raise
    intercept.flush()
    parsed += intercept.ic.captured
    took = time.monotonic() - started
    ic = intercept.ic
    print(f"{args.inputs:,} inputs (a sixth each: packets, batch frames, pcap files, JSON frames, frames "
          f"captured by interceptd, spoofed segments), {parsed:,} parsed, the rest refused with the documented "
          f"error or counted (interceptd: {ic.captured:,} captured, {ic.malformed:,} malformed, {ic.not_ip:,} "
          f"not IP, {ic.unexpected} unexpected); {spoof.summary()}; {args.inputs / took:,.0f} inputs/s, "
          f"{took:.0f} s")


if __name__ == "__main__":
    main()
