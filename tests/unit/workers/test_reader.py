"""The offline reader, run in this process against PULL sockets: frames it cannot replay are counted
drops, and what it batches decodes on the workers' side."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.config.specs import ReaderSpec
from appliance.core import wire
from tests.unit.pcapkit import ETH, cut_ihl_packet, epb, idb, ip_packet, shb
from workers.reader import ReaderWorker

SHARDS = 2


@pytest.fixture
def pulls(tmp_path) -> Iterator[list[zmq.Socket]]:
    ctx = zmq.Context()
    socks = []
    for k in range(SHARDS):
        sock = ctx.socket(zmq.PULL)
        sock.linger = 0
        sock.bind(wire.segments_endpoint(str(tmp_path), k))
        socks.append(sock)
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close(linger=0)
        ctx.term()


def _replay(tmp_path, blob: bytes, pulls: list[zmq.Socket]) -> tuple[ReaderWorker, list[bytes]]:
    """Run the reader over `blob` to its end; the IP packets the workers received."""
    path = tmp_path / "f.pcapng"
    path.write_bytes(blob)
    reader = ReaderWorker(ReaderSpec(run_dir=str(tmp_path), shards=SHARDS, transfers="8080-198.18.0.3:8080",
                                     files=(str(path),), speed=0.0))
    reader.ctx = zmq.Context()
    try:
        reader.stats_sock = reader.socket(zmq.PUB, connect=wire.stats_endpoint(str(tmp_path)))
        reader.setup()
        while not reader.stopping:
            reader.step(time.monotonic())
    finally:
        for sock in reader._sockets:
            sock.close()                         # its own linger: queued batches are delivered
        reader.ctx.term()
    got: list[bytes] = []
    poller = zmq.Poller()
    for sock in pulls:
        poller.register(sock, zmq.POLLIN)
    while len(got) < reader.kept:
        ready = dict(poller.poll(5000))
        assert ready, f"{len(got)} of {reader.kept} packets reached the workers"
        for sock in ready:
            got += [bytes(p) for _ts, p in wire.decode_batch(sock.recv())[1]]
    return reader, got


def test_frames_that_do_not_parse_are_counted_and_the_rest_replayed(tmp_path, pulls):
    good = [ip_packet(i) for i in range(1, 6)]
    arp = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + bytes(28)
    frames = [ETH + good[0], ETH + cut_ihl_packet(), ETH + good[1],
              ETH + good[2][:30],                              # IPv4/TCP cut inside the IP header
              arp, ETH + good[3], ETH + bytes(280 * 1024), ETH + good[4]]
    blob = shb() + idb(1) + b"".join(epb(0, i, f) for i, f in enumerate(frames)) + epb(5, 9, ETH + good[0])
    reader, got = _replay(tmp_path, blob, pulls)
    assert sorted(got) == sorted(good[:2] + good[3:])
    c = reader.counters()
    assert (c["malformed"], c["not_ip"], c["oversized"], c["unknown_interface"]) == (2, 1, 1, 1)
    assert c["packets_read"] == 7 and c["packets_kept"] == 4 and c["finished"] == 1


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=80), st.sampled_from([1, 12, 101, 113, 276]), st.data())
def test_any_frame_is_taken_or_counted_never_a_crash(garbage, linktype, data):
    base = ETH + ip_packet(3) if linktype == 1 else ip_packet(3)
    from_base = data.draw(st.booleans())
    frame = bytearray(base if from_base else garbage)
    if from_base and data.draw(st.booleans()):               # any IP header length, options or not
        ihl = data.draw(st.integers(0, 15))
        start = len(frame) - len(ip_packet(3))
        frame[start:start + 20] = bytes([0x40 | ihl]) + frame[start + 1:start + 20] + b"\x01" * max(0, 4 * ihl - 20)
    for _ in range(data.draw(st.integers(0, 4))):
        if frame:
            frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
    frame = frame[:data.draw(st.integers(0, len(frame)))]
    reader = ReaderWorker(ReaderSpec(run_dir="/nonexistent", shards=SHARDS, transfers="8080-198.18.0.3:8080", files=()))
    reader.builders = [wire.BatchBuilder(wire.KIND_SEGMENTS, 0) for _ in range(SHARDS)]
    reader._take(linktype, bytes(frame))
    assert reader.read == 1 and reader.kept + reader.not_ip + reader.malformed <= 1
    for builder in reader.builders:
        wire.decode_batch(builder.take())
