"""appliance.core.transfer: -x specs, the capture filter, and the captured-destination -> targets map."""

from __future__ import annotations

import pytest

from appliance.core.packet import ACK, PSH, SYN, build_ipv4_tcp, ip_to_int
from appliance.core.transfer import Transfer, TransferMap, capture_filter, parse_transfers

pcap = pytest.importorskip("pcap")


def test_parse_single_wildcard():
    assert parse_transfers("80-10.0.0.2:8080") == (Transfer(None, 80, "10.0.0.2", 8080),)


def test_parse_list_with_online_ip_and_spaces():
    got = parse_transfers(" 10.0.0.1:80-10.0.0.2:8080 , 443-10.0.0.3:443,")
    assert got == (Transfer("10.0.0.1", 80, "10.0.0.2", 8080), Transfer(None, 443, "10.0.0.3", 443))
    assert [str(t) for t in got] == ["10.0.0.1:80-10.0.0.2:8080", "443-10.0.0.3:443"]


def test_parse_rejects_ambiguous_leading_zero_octets():
    with pytest.raises(ValueError, match="target address '010.0.0.2'"):
        parse_transfers("80-010.0.0.2:8080")


@pytest.mark.parametrize("text, names", [
    ("80", ["'80'", "expected [ONLINE_IP:]PORT-TARGET_IP:PORT"]),
    ("80-10.0.0.2", ["'80-10.0.0.2'", "target needs an address and a port"]),       # issue #367
    ("80-:8080", ["target needs an address and a port"]),
    ("x-10.0.0.2:8080", ["online port 'x'"]),
    ("0-10.0.0.2:8080", ["online port '0'"]),
    ("80-10.0.0.2:0", ["target port '0'"]),
    ("80-10.0.0.2:70000", ["target port '70000'"]),
    ("80-10.0.0.2:http", ["target port 'http'"]),
    ("300.1.1.1:80-10.0.0.2:8080", ["online address '300.1.1.1'"]),
    ("80-target.lab:8080", ["target address 'target.lab'"]),
    ("80-10.0.0.2:8080,81-10.0.0.2:x", ["'81-10.0.0.2:x'", "target port 'x'"]),
    ("", ["no transfer given"]),
    (" , ,", ["no transfer given"]),
])
def test_parse_errors_name_the_bad_part(text, names):
    with pytest.raises(ValueError) as err:
        parse_transfers(text)
    for name in names:
        assert name in str(err.value)


# ---- capture filter -------------------------------------------------------------------------
def _pkt(src: str, dst: str, sport: int, dport: int, flags: int = ACK | PSH) -> bytes:
    return build_ipv4_tcp(ip_to_int(src), ip_to_int(dst), sport, dport, 1, 1, flags, 100, payload=b"x")


def test_capture_filter_text_excludes_each_target():
    f = capture_filter(parse_transfers("80-10.0.0.2:80,10.0.0.1:443-10.0.0.3:8443"))
    assert f.startswith("tcp and (")
    assert "(dst port 80 and not (dst host 10.0.0.2 and dst port 80))" in f
    assert "(dst port 443 and dst host 10.0.0.1 and not (dst host 10.0.0.3 and dst port 8443))" in f
    assert " or " in f


def _bpf(text: str):
    try:
        return pcap.bpf(text.encode())                # DLT_RAW: our IP packets as they are
    except OSError as exc:                           # pragma: no cover - depends on libpcap
        pytest.fail(f"filter does not compile: {text!r}: {exc}")


def test_capture_filter_compiles_and_never_matches_our_output():
    transfers = parse_transfers("80-10.0.0.2:80,10.0.0.1:443-10.0.0.3:8443")
    bpf = _bpf(capture_filter(transfers))
    # client -> online service: captured
    assert bpf.filter(_pkt("192.0.2.1", "10.0.0.9", 5555, 80))
    assert bpf.filter(_pkt("192.0.2.1", "10.0.0.1", 5555, 443, SYN))
    # our replica leaves this host to the target with the same port (G7): never captured
    assert not bpf.filter(_pkt("192.0.2.1", "10.0.0.2", 5555, 80))
    assert not bpf.filter(_pkt("192.0.2.1", "10.0.0.3", 5555, 8443))
    # other traffic
    assert not bpf.filter(_pkt("192.0.2.1", "10.0.0.9", 5555, 81))
    assert not bpf.filter(_pkt("192.0.2.1", "10.0.0.7", 5555, 443))     # exact online ip only
    assert not bpf.filter(_pkt("10.0.0.9", "192.0.2.1", 80, 5555))      # service -> client


def test_capture_filter_for_ethernet_compiles():
    pcap.bpf(capture_filter(parse_transfers("8080-10.0.0.2:8080")).encode(), pcap.DLT_EN10MB)


# ---- transfer map ---------------------------------------------------------------------------
def test_map_exact_beats_wildcard():
    m = TransferMap(parse_transfers("10.0.0.1:80-10.0.0.2:8080,80-10.0.0.3:80"))
    assert m.targets(ip_to_int("10.0.0.1"), 80) == [(ip_to_int("10.0.0.2"), 8080)]
    assert m.targets(ip_to_int("10.0.0.5"), 80) == [(ip_to_int("10.0.0.3"), 80)]
    assert m.targets(ip_to_int("10.0.0.1"), 81) == []


def test_map_exact_only():
    m = TransferMap(parse_transfers("10.0.0.1:80-10.0.0.2:8080"))
    assert m.targets(ip_to_int("10.0.0.5"), 80) == []


def test_map_fans_out_one_port_to_two_targets():
    m = TransferMap(parse_transfers("80-10.0.0.2:8080,80-10.0.0.3:9090,10.0.0.1:81-10.0.0.2:81,"
                                    "10.0.0.1:81-10.0.0.4:81"))
    assert m.targets(ip_to_int("10.9.9.9"), 80) == [(ip_to_int("10.0.0.2"), 8080),
                                                    (ip_to_int("10.0.0.3"), 9090)]
    assert m.targets(ip_to_int("10.0.0.1"), 81) == [(ip_to_int("10.0.0.2"), 81), (ip_to_int("10.0.0.4"), 81)]
