"""Capture files for offline replay: both formats read; damage reported with file and byte offset."""

from __future__ import annotations

import io

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance import cli
from appliance.errors import EXIT_DATA
from appliance.packet import ACK, PSH, build_ipv4_tcp
from appliance.pcapfile import PcapError, packets, scan

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


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_damaged_files_only_ever_raise_pcap_error(tmp_path_factory, data):
    base = data.draw(st.sampled_from([pcap_bytes(), pcapng_bytes()]))
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
