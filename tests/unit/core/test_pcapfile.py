"""Capture files for offline replay: both formats read; damage reported with file and byte offset."""

from __future__ import annotations

import io
import os
import struct
import time

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.core import pcapfile, wire
from appliance.core.errors import EXIT_DATA
from appliance.core.packet import ACK, PSH, build_ipv4_tcp
from appliance.core.pcapfile import MAX_FRAME, PcapError, packets, scan
from appliance.tcpcopyd import cli
from tests.unit import pcapkit
from tests.unit.pcapkit import epb, idb, shb

ETH = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"
FRAMES = [ETH + build_ipv4_tcp(0xC6120001, 0xC6120002, 40000 + i, 8080, i, 1, ACK | PSH, 512, b"", b"x" * i)
          for i in range(1, 6)]


def pcap_bytes(nano: bool = False) -> bytes:
    out = io.BytesIO()
    writer = dpkt.pcap.Writer(out, snaplen=65535, nano=nano)
    for i, frame in enumerate(FRAMES):
        writer.writepkt(frame, 1000.0 + i * 0.5)
    return out.getvalue()


def pcapng_bytes() -> bytes:
    out = io.BytesIO()
    writer = dpkt.pcapng.Writer(out, snaplen=65535)
    for i, frame in enumerate(FRAMES):
        writer.writepkt(frame, 1000.0 + i * 0.5)
    return out.getvalue()


@pytest.mark.parametrize("maker", [pcap_bytes, lambda: pcap_bytes(nano=True), pcapng_bytes],
                         ids=["pcap", "pcap-ns", "pcapng"])
def test_formats_read_in_order_with_timestamps(tmp_path, maker):
    path = tmp_path / "f"
    path.write_bytes(maker())
    summary = scan(str(path))
    assert summary.packets == 5 and summary.linktype == 1
    assert summary.last_ns - summary.first_ns == 2_000_000_000
    assert [frame for _ts, _lt, frame in packets(str(path))] == FRAMES


def test_truncated_record_names_the_file_and_offset(tmp_path):
    data = pcap_bytes()
    path = tmp_path / "cut.pcap"
    path.write_bytes(data[:-3])
    with pytest.raises(PcapError) as err:
        scan(str(path))
    last = len(data) - 16 - len(FRAMES[-1])
    assert str(path) in str(err.value) and f"byte offset {last}" in str(err.value)


def test_corrupt_length_and_foreign_files(tmp_path):
    data = bytearray(pcap_bytes())
    data[24 + 8:24 + 12] = (10**7).to_bytes(4, "little")       # first record: absurd captured length
    path = tmp_path / "bad.pcap"
    path.write_bytes(bytes(data))
    with pytest.raises(PcapError, match="corrupt record header .* at byte offset 24"):
        scan(str(path))
    path.write_bytes(b"GIF89a" + b"\x00" * 40)
    with pytest.raises(PcapError, match="not a pcap or pcapng file"):
        scan(str(path))


def test_tcpcopyd_refuses_a_damaged_file_with_its_code_and_no_traceback(tmp_path, capsys):
    path = tmp_path / "cut.pcap"
    path.write_bytes(pcap_bytes()[:-3])
    code = cli.main(["-x", "8080-198.18.0.3:8080", "-s", "198.18.0.4", "--insecure", "true",
                     "--offline", str(path)])
    err = capsys.readouterr().err
    assert code == EXIT_DATA == 65
    assert str(path) in err and "byte offset" in err and "Traceback" not in err


def multi_interface_pcapng() -> tuple[bytes, list[tuple[int, int, bytes]]]:
    """Two sections; interfaces of different link types and clocks; packets of an unsupported link
    type and of interfaces never described. Returns the file and the packets a reader must yield."""
    eth, raw, raw_be = FRAMES[0], pcapkit.ip_packet(2), pcapkit.ip_packet(3)
    blob = (shb() + idb(1) + idb(101, tsresol=9) + idb(105) + idb(1, tsresol=0x80 | 10, tsoffset=100)
            + epb(0, 1_500_000, eth)                 # microseconds (no if_tsresol)
            + epb(1, 2_000_000_001, raw)             # nanoseconds, raw IP
            + epb(2, 7, b"\x08" * 60)                # 802.11: not a link type the reader strips
            + epb(3, 3 * 1024 + 512, eth)            # 1/1024 s, plus if_tsoffset 100 s
            + epb(9, 1, eth)                         # no interface 9
            + shb(">") + idb(12, order=">")          # a new section: big-endian, its own interfaces
            + epb(0, 4_000_000, raw_be, ">")
            + epb(1, 4_000_001, raw_be, ">"))        # interface 1 was the old section's
    want = [(1_500_000_000, 1, eth), (2_000_000_001, 101, raw), (103_500_000_000, 1, eth),
            (4_000_000_000, 12, raw_be)]
    return blob, want


def test_each_pcapng_interface_has_its_own_link_type_and_clock(tmp_path):
    blob, want = multi_interface_pcapng()
    path = tmp_path / "multi.pcapng"
    path.write_bytes(blob)
    drops: dict[str, int] = {}
    assert list(packets(str(path), drops=drops)) == want
    assert drops == {"link_unsupported": 1, "unknown_interface": 2}
    summary = scan(str(path))
    assert (summary.packets, summary.first_ns, summary.last_ns) == (4, 1_500_000_000, 4_000_000_000)
    assert summary.drops == drops


def test_a_pcap_of_an_unsupported_link_type_is_all_counted_drops(tmp_path):
    path = tmp_path / "wifi.pcap"
    path.write_bytes(pcapkit.pcap(FRAMES, linktype=105))
    summary = scan(str(path))
    assert summary.packets == 0 and summary.drops == {"link_unsupported": 5}


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_oversized_packets_are_counted_drops_and_the_rest_still_fit_a_batch(tmp_path, fmt):
    huge, largest = ETH + bytes(280 * 1024), ETH + bytes(MAX_FRAME - len(ETH))
    frames = [FRAMES[0], huge, largest, ETH + bytes(MAX_FRAME + 1 - len(ETH)), FRAMES[1]]
    if fmt == "pcap":
        frames[1] = ETH + bytes(200 * 1024)      # a pcap record over 256 KiB is a corrupt header instead
        blob = pcapkit.pcap(frames)
    else:
        blob = shb() + idb(1) + b"".join(epb(0, i, f) for i, f in enumerate(frames))
    path = tmp_path / f"big.{fmt}"
    path.write_bytes(blob)
    drops: dict[str, int] = {}
    got = [frame for _ts, _lt, frame in packets(str(path), drops=drops)]
    assert got == [FRAMES[0], largest, FRAMES[1]] and drops == {"oversized": 2}
    # what the reader batches (the IP packets) decodes on the worker's side: nothing is lost with them
    builder = wire.BatchBuilder(wire.KIND_SEGMENTS, 0)
    for frame in got:
        builder.add(1, frame[len(ETH):])
    assert [bytes(p) for _ts, p in wire.decode_batch(builder.take())[1]] == [f[len(ETH):] for f in got]
    assert MAX_FRAME <= wire.MAX_RECORD_BYTES


def _block_at(blob: bytes, n: int) -> int:
    """Byte offset of the n-th pcapng block."""
    at = 0
    for _ in range(n):
        at += struct.unpack_from("<I", blob, at + 4)[0]
    return at


@pytest.mark.parametrize("length, why", [
    (0xFFFFFFF0, "total length 4294967280"),     # checked before anything is read for it
    (pcapfile.MAX_BLOCK + 4, f"total length {pcapfile.MAX_BLOCK + 4}"),
    (30, "total length 30"),                    # not a multiple of 4
    (8, "total length 8"),
    (36, "trailing length differs"),
])
def test_pcapng_block_lengths_outside_their_bounds_are_refused(tmp_path, length, why):
    blob = bytearray(shb() + idb(1) + epb(0, 1, FRAMES[0]) + epb(0, 2, FRAMES[1]))
    second = _block_at(bytes(blob), 3)
    struct.pack_into("<I", blob, second + 4, length)
    path = tmp_path / "bad.pcapng"
    path.write_bytes(bytes(blob))
    with pytest.raises(PcapError, match=f"corrupt pcapng block .*{why}.* at byte offset {second}"):
        scan(str(path))


def test_pcapng_captured_length_past_its_block_and_bad_versions_are_refused(tmp_path):
    path = tmp_path / "bad.pcapng"
    path.write_bytes(shb() + idb(1) + epb(0, 1, FRAMES[0], caplen=len(FRAMES[0]) + 64))
    with pytest.raises(PcapError, match="corrupt packet block .captured length"):
        scan(str(path))
    path.write_bytes(shb(major=2) + idb(1))
    with pytest.raises(PcapError, match="pcapng version 2.0 is not supported"):
        scan(str(path))
    path.write_bytes((shb() + idb(1) + epb(0, 1, FRAMES[0]))[:-6])
    with pytest.raises(PcapError, match=r"truncated pcapng block \(\d+ of \d+ bytes\)"):
        scan(str(path))


@pytest.mark.hang_limit(5)
def test_devices_fifos_and_directories_are_refused_at_once(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)                              # nobody writes: opening it plainly would wait forever
    started = time.monotonic()
    for path, kind in (("/dev/zero", "a character device"), (str(fifo), "a FIFO"), (str(tmp_path), "a directory")):
        with pytest.raises(PcapError, match=f"{kind}, not a regular file .* at byte offset 0"):
            scan(path)
    assert time.monotonic() - started < 1.0


def test_tcpcopyd_refuses_dev_zero_with_the_data_error_code(capsys):
    code = cli.main(["-x", "8080-198.18.0.3:8080", "-s", "198.18.0.4", "--insecure", "true",
                     "--offline", "/dev/zero"])
    assert code == EXIT_DATA
    assert "/dev/zero: a character device, not a regular file" in capsys.readouterr().err


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_records_across_chunk_boundaries_read_the_same(tmp_path, monkeypatch, chunk):
    multi, _want = multi_interface_pcapng()
    blobs = [pcap_bytes(), pcap_bytes(nano=True), pcapng_bytes(), multi]
    expected = [list(packets("f", blob)) for blob in blobs]
    monkeypatch.setattr(pcapfile, "CHUNK", chunk)
    for blob, want in zip(blobs, expected, strict=True):
        path = tmp_path / "f"
        path.write_bytes(blob)
        assert list(packets(str(path))) == want
    path.write_bytes(pcap_bytes()[:-3])
    with pytest.raises(PcapError, match="truncated record"):
        scan(str(path))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_damaged_files_only_ever_raise_pcap_error(tmp_path_factory, data):
    base = data.draw(st.sampled_from([pcap_bytes(), pcapng_bytes(), multi_interface_pcapng()[0]]))
    cut = data.draw(st.integers(0, len(base)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255)), max_size=4))
    blob = bytearray(base[:cut] if data.draw(st.booleans()) else base)
    for i, v in flips:
        if i < len(blob):
            blob[i] = v
    path = tmp_path_factory.mktemp("fz") / "f"
    path.write_bytes(bytes(blob))
    try:
        for _ in packets(str(path)):
            pass
    except PcapError:
        pass
