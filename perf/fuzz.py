"""Long fuzz run: millions of mutated packets and batch frames through the parsers.

    .venv/bin/python perf/fuzz.py [--inputs 10000000] [--seed 1]

Each input is a valid packet or frame with random bytes overwritten, truncated or extended, or
plain random bytes. The only acceptable outcomes are a parse or the documented error
(MalformedPacket, WireError); anything else stops the run with the input printed in hex.
Prints the count of inputs, how many parsed, and the rate.
"""

from __future__ import annotations

import argparse
import random
import time

from appliance import wire
from appliance.packet import ACK, PSH, MalformedPacket, build_ipv4_tcp, parse_ipv4_tcp, parse_options
from appliance.pcapfile import PcapError, packets

SEEDS = [build_ipv4_tcp(0xC6120001, 0xC6120002, 40000, 8080, 1, 2, ACK | PSH, 512,
                        b"\x01\x01\x08\x0a" + b"\x00" * 8, b"GET / HTTP/1.1\r\n\r\n"),
         build_ipv4_tcp(0xC6120003, 0xC6120001, 8080, 40000, 5, 6, ACK, 512, b"\x02\x04\x05\xb4\x04\x02")]


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


def _pcap_of(ip_packets: list[bytes]) -> bytes:
    import io

    import dpkt
    out = io.BytesIO()
    writer = dpkt.pcap.Writer(out, snaplen=65535, linktype=dpkt.pcap.DLT_RAW)
    for n, pkt in enumerate(ip_packets):
        writer.writepkt(pkt, 1000.0 + n)
    return out.getvalue()


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
    parsed = 0
    started = time.monotonic()
    for i in range(args.inputs):
        if i % 3 == 2:
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
        elif i % 3 == 1:
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
    took = time.monotonic() - started
    print(f"{args.inputs:,} inputs (a third each: packets, batch frames, pcap files), "
          f"{parsed:,} parsed, the rest refused with the documented error; {args.inputs / took:,.0f} inputs/s, "
          f"{took:.0f} s")


if __name__ == "__main__":
    main()
