"""appliance.core.packet: parse/build, options, malformed input, link headers, sequence arithmetic."""

from __future__ import annotations

import socket
import struct

import dpkt
import pytest

from appliance.core.packet import (
    ACK,
    DLT_EN10MB,
    DLT_LINUX_SLL,
    DLT_LINUX_SLL2,
    DLT_RAW,
    DLT_RAW_ALT,
    FIN,
    PSH,
    RST,
    SYN,
    MalformedPacket,
    TcpSegment,
    build_ipv4_tcp,
    client_key_of,
    headers_only,
    int_to_ip,
    internet_checksum,
    ip_to_int,
    link_header_len,
    mss_option,
    parse_ipv4_tcp,
    parse_options,
    seq_diff,
    seq_le,
    seq_lt,
    server_key_of,
    timestamp_offset,
    timestamp_option,
    with_timestamps,
)

SRC = ip_to_int("192.0.2.10")
DST = ip_to_int("198.51.100.20")
SYN_OPTIONS = (b"\x02\x04\x05\xb4"            # MSS 1460
               b"\x04\x02"                    # SACK permitted
               b"\x08\x0a\x00\x00\x30\x39\x00\x00\x00\x00"   # TS 12345, 0
               b"\x01"                        # NOP
               b"\x03\x03\x07")               # WS 7


def sample(payload: bytes = b"hello world", options: bytes = b"", flags: int = ACK | PSH) -> bytes:
    return build_ipv4_tcp(SRC, DST, 40001, 8080, 0xDEADBEEF, 0x01020304, flags, 29200,
                          options=options, payload=payload, ip_id=4242, ttl=63)


def _ip_options_packet() -> bytes:
    """A packet with 4 bytes of IP options (ihl 6), checksums not needed for parsing."""
    pkt = bytearray(sample(b"xyz"))
    ip, tcp = pkt[:20], pkt[20:]
    ip[0] = 0x46
    struct.pack_into("!H", ip, 2, len(pkt) + 4)
    return bytes(ip + b"\x01\x01\x01\x00" + tcp)


# ---- build / parse --------------------------------------------------------------------------
def test_build_checksums_verify_independently_with_dpkt():
    cases = [(b"", b""), (b"hello world", b""), (b"odd", SYN_OPTIONS), (bytes(range(256)) * 5, b"")]
    for payload, options in cases:
        pkt = sample(payload, options)
        ip = dpkt.ip.IP(pkt)
        assert ip.v == 4 and ip.hl == 5 and ip.p == dpkt.ip.IP_PROTO_TCP
        assert ip.len == len(pkt)
        assert ip.id == 4242 and ip.ttl == 63
        assert ip.df and not ip.mf and ip.offset == 0
        # the one's-complement sum over a header including its checksum is zero
        assert dpkt.in_cksum(pkt[:20]) == 0
        tcp_bytes = pkt[20:]
        pseudo = socket.inet_aton("192.0.2.10") + socket.inet_aton("198.51.100.20") + \
            struct.pack("!BBH", 0, 6, len(tcp_bytes))
        assert dpkt.in_cksum(pseudo + tcp_bytes) == 0
        tcp = ip.data
        assert (tcp.sport, tcp.dport, tcp.seq, tcp.ack) == (40001, 8080, 0xDEADBEEF, 0x01020304)
        assert tcp.flags == ACK | PSH and tcp.win == 29200
        assert bytes(tcp.data) == payload
        # dpkt recomputes both checksums from scratch: they must equal ours
        ip.sum = 0
        tcp.sum = 0
        assert bytes(ip) == pkt


def test_parse_round_trip():
    pkt = sample(b"GET / HTTP/1.1\r\n\r\n", SYN_OPTIONS, flags=SYN | ACK)
    seg = parse_ipv4_tcp(pkt)
    assert (seg.src_ip, seg.dst_ip, seg.src_port, seg.dst_port) == (SRC, DST, 40001, 8080)
    assert (seg.seq, seg.ack, seg.flags, seg.window) == (0xDEADBEEF, 0x01020304, SYN | ACK, 29200)
    assert seg.options == SYN_OPTIONS                 # 20 bytes: no padding needed
    assert seg.payload == b"GET / HTTP/1.1\r\n\r\n" and seg.payload_len == 18
    assert seg.ip_id == 4242 and seg.ttl == 63
    rebuilt = build_ipv4_tcp(seg.src_ip, seg.dst_ip, seg.src_port, seg.dst_port, seg.seq, seg.ack,
                             seg.flags, seg.window, seg.options, seg.payload, seg.ip_id, seg.ttl)
    assert rebuilt == pkt


def test_build_pads_options_to_four_bytes():
    seg = parse_ipv4_tcp(sample(b"", options=b"\x02\x04\x05\xb4\x01\x03\x03\x07"[:7]))
    assert seg.options == b"\x02\x04\x05\xb4\x01\x03\x03\x00"
    assert parse_options(seg.options).mss == 1460


def test_parse_accepts_memoryview_and_keep_payload_false():
    pkt = sample(b"abcdef")
    seg = parse_ipv4_tcp(memoryview(pkt)[:], keep_payload=False)
    assert seg.payload == b"" and seg.payload_len == 6


def test_parse_of_dpkt_built_packet():
    tcp = dpkt.tcp.TCP(sport=5555, dport=80, seq=7, ack=9, flags=dpkt.tcp.TH_ACK | dpkt.tcp.TH_FIN,
                       win=1000, data=b"bye")
    ip = dpkt.ip.IP(src=socket.inet_aton("10.1.2.3"), dst=socket.inet_aton("10.3.2.1"), p=6, data=tcp, id=77)
    seg = parse_ipv4_tcp(bytes(ip))
    assert (int_to_ip(seg.src_ip), int_to_ip(seg.dst_ip)) == ("10.1.2.3", "10.3.2.1")
    assert (seg.src_port, seg.dst_port, seg.seq, seg.ack) == (5555, 80, 7, 9)
    assert seg.flags == ACK | FIN and seg.payload == b"bye" and seg.seq_len == 4


def test_flags_keep_only_low_six_bits():
    pkt = bytearray(sample())
    pkt[33] = 0xC0 | ACK                       # ECE/CWR set on the wire
    assert parse_ipv4_tcp(bytes(pkt)).flags == ACK


def test_seq_len_counts_syn_and_fin():
    base = dict(src_ip=1, dst_ip=2, src_port=3, dst_port=4, seq=0, ack=0, window=0, options=b"",
                payload=b"", ip_id=0)
    assert TcpSegment(flags=SYN, payload_len=0, **base).seq_len == 1
    assert TcpSegment(flags=ACK | FIN, payload_len=10, **base).seq_len == 11
    assert TcpSegment(flags=ACK, payload_len=10, **base).seq_len == 10
    assert TcpSegment(flags=SYN | FIN, payload_len=0, **base).seq_len == 2


def test_ethernet_padding_is_not_payload():
    pkt = sample(b"ab") + b"\x00" * 6              # 60-byte minimum Ethernet frame padding
    seg = parse_ipv4_tcp(pkt)
    assert seg.payload == b"ab" and seg.payload_len == 2


def test_snaplen_short_capture_keeps_true_payload_len():
    pkt = sample(b"x" * 1000)
    seg = parse_ipv4_tcp(pkt[:100])
    assert seg.payload_len == 1000 and seg.payload == b"x" * 60


def test_total_length_zero_tso_capture_uses_frame_length():
    pkt = bytearray(sample(b"y" * 3000))
    struct.pack_into("!H", pkt, 2, 0)
    seg = parse_ipv4_tcp(bytes(pkt))
    assert seg.payload_len == 3000 and seg.payload == b"y" * 3000


def test_ip_options_are_skipped():
    seg = parse_ipv4_tcp(_ip_options_packet())
    assert (seg.src_port, seg.dst_port, seg.payload) == (40001, 8080, b"xyz")


def test_headers_only_keeps_ip_total_length():
    pkt = sample(b"z" * 500, options=timestamp_option(1, 2))
    hdr = headers_only(pkt)
    assert len(hdr) == 20 + 32
    assert struct.unpack_from("!H", hdr, 2)[0] == len(pkt)
    seg = parse_ipv4_tcp(hdr)
    assert seg.payload == b"" and seg.payload_len == 500
    assert parse_options(seg.options).ts_val == 1


# ---- malformed input ------------------------------------------------------------------------
def _mutate(offset: int, value: int, payload: bytes = b"abc") -> bytes:
    pkt = bytearray(sample(payload))
    pkt[offset] = value
    return bytes(pkt)


@pytest.mark.parametrize("data, why", [
    (b"", "too short"),
    (sample()[:39], "too short"),
    (_mutate(0, 0x65), "not IPv4"),                 # version 6
    (_mutate(9, 17), "not TCP"),                    # UDP
    (_mutate(0, 0x44), "bad IP header length"),     # ihl 16 bytes
    (_mutate(0, 0x40), "bad IP header length"),     # ihl 0
    (_mutate(6, 0x20), "IP fragment"),              # MF
    (_mutate(7, 0x01), "IP fragment"),              # offset 8
    (_mutate(6, 0x3F), "IP fragment"),              # MF + large offset
    (_mutate(32, 0x40), "bad TCP data offset"),     # doff 16 bytes
    (_mutate(32, 0xF0), "bad TCP data offset"),     # doff 60 > packet
    (_mutate(3, 30), "bad IP total length"),        # total length 30 < 40
    (_mutate(0, 0x4F), "bad"),                      # ihl 60 > frame
])
def test_malformed_raises(data, why):
    with pytest.raises(MalformedPacket, match=why):
        parse_ipv4_tcp(data)


def test_malformed_packet_is_a_value_error():
    assert issubclass(MalformedPacket, ValueError)


def test_df_only_is_not_a_fragment():
    pkt = sample()
    assert struct.unpack_from("!H", pkt, 6)[0] == 0x4000
    parse_ipv4_tcp(pkt)


# ---- options --------------------------------------------------------------------------------
def test_parse_syn_options():
    o = parse_options(SYN_OPTIONS)
    assert o.mss == 1460 and o.sack_ok and o.wscale == 7
    assert (o.ts_val, o.ts_ecr) == (12345, 0)


def test_parse_options_defaults_empty():
    o = parse_options(b"")
    assert (o.mss, o.wscale, o.sack_ok, o.ts_val, o.ts_ecr) == (None, None, False, None, None)


def test_wscale_is_capped_at_14():
    assert parse_options(b"\x03\x03\x20").wscale == 14


def test_unknown_options_are_skipped_and_eol_ends():
    opts = b"\x1e\x06abcd" + b"\x02\x04\x02\x18" + b"\x00" + b"\x04\x02"
    o = parse_options(opts)
    assert o.mss == 0x218 and not o.sack_ok      # SACK-perm is after EOL


@pytest.mark.parametrize("opts", [
    b"\x04\x02\x02",             # kind without a length
    b"\x04\x02\x02\x04\x05",     # length past the end
    b"\x04\x02\x08\x0a\x00\x00", # truncated timestamp
])
def test_truncated_options_end_the_walk(opts):
    o = parse_options(opts)
    assert o.sack_ok                           # what came before still counts
    assert o.mss is None and o.ts_val is None
    assert timestamp_offset(opts) == -1


def test_option_length_below_two_ends_the_walk():
    o = parse_options(b"\x1e\x01\x02\x04\x05\xb4" + b"\x04\x02")
    assert o.mss is None and not o.sack_ok


def test_options_with_wrong_sizes_are_ignored():
    o = parse_options(b"\x02\x03\x05" + b"\x03\x04\x07\x00" + b"\x08\x06\x00\x00\x00\x01" + b"\x04\x02")
    assert o.mss is None and o.wscale is None and o.ts_val is None and o.sack_ok


def test_timestamp_helpers():
    opts = b"\x01\x01" + b"\x02\x04\x05\xb4" + b"\x08\x0a" + struct.pack("!II", 5, 6)
    assert timestamp_offset(opts) == 6
    patched = with_timestamps(opts, 0x1_0000_0007, 8)       # masked to 32 bits
    assert patched[:6] == opts[:6]
    assert parse_options(patched).ts_val == 7 and parse_options(patched).ts_ecr == 8
    assert timestamp_offset(b"\x02\x04\x05\xb4") == -1
    assert timestamp_offset(b"\x00\x08\x0a" + bytes(8)) == -1
    assert with_timestamps(b"\x02\x04\x05\xb4", 1, 2) == b"\x02\x04\x05\xb4"
    block = timestamp_option(10, 20)
    assert len(block) == 12 and block[:2] == b"\x01\x01"
    assert (parse_options(block).ts_val, parse_options(block).ts_ecr) == (10, 20)
    assert parse_options(mss_option(1400)).mss == 1400


# ---- checksums ------------------------------------------------------------------------------
def test_internet_checksum_matches_dpkt_odd_and_even():
    for data in [b"", b"\x01", b"\x01\x02\x03", bytes(range(255)), b"\xff" * 64]:
        assert internet_checksum(data) == dpkt.in_cksum(data)


# ---- link headers ---------------------------------------------------------------------------
MAC = b"\x02\x00\x00\x00\x00\x01"


@pytest.mark.parametrize("dlt, frame, expected", [
    (DLT_EN10MB, MAC * 2 + b"\x08\x00" + b"ip", 14),
    (DLT_EN10MB, MAC * 2 + b"\x81\x00\x00\x05\x08\x00" + b"ip", 18),
    (DLT_EN10MB, MAC * 2 + b"\x81\x00\x00\x05\x81\x00\x00\x06\x08\x00" + b"ip", 22),
    (DLT_EN10MB, MAC * 2 + b"\x86\xdd" + b"ip", -1),        # IPv6
    (DLT_EN10MB, MAC * 2 + b"\x08\x06" + b"ip", -1),        # ARP
    (DLT_EN10MB, MAC * 2 + b"\x81\x00\x00\x05\x86\xdd", -1),
    (DLT_EN10MB, MAC * 2 + b"\x81\x00", -1),                # VLAN tag cut off
    (DLT_EN10MB, MAC * 2, -1),
    (DLT_RAW, b"", 0),
    (DLT_RAW_ALT, b"E", 0),
    (DLT_LINUX_SLL, bytes(14) + b"\x08\x00", 16),
    (DLT_LINUX_SLL, bytes(14) + b"\x86\xdd", -1),
    (DLT_LINUX_SLL, bytes(15), -1),
    (DLT_LINUX_SLL2, b"\x08\x00" + bytes(18), 20),
    (DLT_LINUX_SLL2, b"\x86\xdd" + bytes(18), -1),
    (DLT_LINUX_SLL2, b"\x08\x00" + bytes(10), -1),
    (9999, bytes(40), -1),
])
def test_link_header_len(dlt, frame, expected):
    assert link_header_len(dlt, frame) == expected


def test_link_header_then_parse_ethernet_frame():
    pkt = sample(b"payload")
    eth = dpkt.ethernet.Ethernet(dst=MAC, src=MAC, type=dpkt.ethernet.ETH_TYPE_IP, data=pkt)
    frame = bytes(eth)
    off = link_header_len(DLT_EN10MB, frame)
    assert parse_ipv4_tcp(memoryview(frame)[off:]).payload == b"payload"


# ---- sequence arithmetic --------------------------------------------------------------------
def test_seq_arithmetic_wraps():
    top = 0xFFFFFFF0
    assert seq_lt(top, 0x10) and not seq_lt(0x10, top)
    assert seq_lt(1, 2) and not seq_lt(2, 1) and not seq_lt(5, 5)
    assert seq_le(5, 5) and seq_le(top, 0x10) and not seq_le(0x10, top)
    assert seq_diff(0x10, top) == 0x20 and seq_diff(top, 0x10) == -0x20
    assert seq_diff(0, 0xFFFFFFFF) == 1 and seq_diff(0xFFFFFFFF, 0) == -1
    assert seq_diff(7, 7) == 0
    # the half-way point: 2^31 ahead reads as behind
    assert seq_diff(0x80000000, 0) == -0x80000000
    assert seq_diff(0x7FFFFFFF, 0) == 0x7FFFFFFF


def test_ip_int_round_trip():
    assert ip_to_int("1.2.3.4") == 0x01020304
    assert int_to_ip(0xC0A80001) == "192.168.0.1"
    assert int_to_ip(ip_to_int("255.255.255.255")) == "255.255.255.255"


# ---- flow keys without a full parse ---------------------------------------------------------
def test_client_and_server_keys():
    pkt = sample(b"abc")
    assert client_key_of(pkt) == (SRC, 40001)
    assert server_key_of(pkt) == (DST, 8080)
    assert client_key_of(memoryview(pkt)) == (SRC, 40001)


def test_keys_honour_ip_options():
    pkt = _ip_options_packet()
    assert client_key_of(pkt) == (SRC, 40001)
    assert server_key_of(pkt) == (DST, 8080)


@pytest.mark.parametrize("data", [b"", sample()[:39], _mutate(0, 0x65), _mutate(9, 17), _mutate(0, 0x43)])
def test_keys_of_non_tcp_are_none(data):
    assert client_key_of(data) is None
    assert server_key_of(data) is None


def test_keys_of_headers_only_response():
    hdr = headers_only(sample(b"q" * 100))
    assert server_key_of(hdr) == (DST, 8080)


def test_rst_flag_constant_values():
    # the engine and the wire depend on the on-the-wire bit values
    assert (FIN, SYN, RST, PSH, ACK) == (1, 2, 4, 8, 16)


# ---- arithmetic checksums against dpkt's word-by-word sum ----------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from appliance.core.packet import ones_sum  # noqa: E402


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=3000), st.integers(0, 3000).map(lambda n: b"\xff" * n),
                 st.integers(0, 300).map(lambda n: b"\x00" * n)))
def test_internet_checksum_equals_the_word_sum(data):
    assert internet_checksum(data) == dpkt.in_cksum(data)


@settings(max_examples=300, deadline=None)
@given(src=st.integers(0, 2**32 - 1), dst=st.integers(0, 2**32 - 1), sport=st.integers(0, 65535),
       dport=st.integers(0, 65535), seq=st.integers(0, 2**32 - 1), ack=st.integers(0, 2**32 - 1),
       flags=st.integers(0, 0x3F), window=st.integers(0, 65535), ip_id=st.integers(0, 65535),
       options=st.sampled_from([b"", b"\x02\x04\x05\xb4", b"\x01\x01\x08\x0a" + b"\xff" * 8]),
       payload=st.binary(max_size=1460), given_sum=st.booleans())
def test_built_packets_carry_checksums_a_receiver_accepts(src, dst, sport, dport, seq, ack, flags, window,
                                                           ip_id, options, payload, given_sum):
    pkt = build_ipv4_tcp(src, dst, sport, dport, seq, ack, flags, window, options, payload, ip_id,
                         payload_sum=ones_sum(payload) if given_sum and payload else None)
    assert dpkt.in_cksum(pkt[:20]) == 0                      # the IP header sums to 0xFFFF
    pseudo = struct.pack("!IIBBH", src, dst, 0, 6, len(pkt) - 20)
    assert dpkt.in_cksum(pseudo + pkt[20:]) == 0             # and so does the TCP segment
    seg = parse_ipv4_tcp(pkt)
    assert (seg.src_ip, seg.dst_ip, seg.seq, seg.ack, seg.flags, seg.payload) == (src, dst, seq, ack, flags, payload)
