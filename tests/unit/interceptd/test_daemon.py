"""interceptd's capture path: every frame libpcap hands over is published or counted, never fatal.

Frames go through pcap files that pypcap replays into `Intercept._on_frame`, the callback of the
live capture (issue 14: one TCP header with a data offset below 5 used to stop interceptd)."""

from __future__ import annotations

import logging

from appliance.core import wire
from appliance.core.packet import DLT_RAW, parse_ipv4_tcp
from appliance.core.packet import tcp_headers_of as answer_header
from appliance.tcpcopyd.answers import intercept_report
from tests.unit.interceptkit import ETH, answer, feed, interceptd, with_data_offset


def published(ic) -> list[bytes]:
    out = []
    for _topic, frame in ic.split.take():
        out += [bytes(p) for _, p in wire.decode_batch(frame)[1]]
    return out


def test_a_tcp_header_with_data_offset_below_5_is_counted_not_fatal():
    ic = interceptd(1)
    frames = [ETH + with_data_offset(answer(1), words) for words in range(5)] + [ETH + answer(2)]
    assert feed(ic, frames) == 6
    assert (ic.malformed, ic.captured, ic.unexpected) == (5, 1, 0)
    assert published(ic) == [answer(2)[:52]]          # headers with options, no payload


def test_frames_that_are_not_whole_ipv4_tcp_headers_are_counted_by_kind():
    ip = answer(3)
    bad_ip = [
        bytes([0x44]) + ip[1:],                          # IHL 4
        bytes([0x40]) + ip[1:],                          # IHL 0
        bytes([0x4F]) + ip[1:],                          # IHL 15: the TCP header would be past the capture
        bytes([0x65]) + ip[1:],                          # version 6
        ip[:9] + b"\x11" + ip[10:],                      # UDP
        ip[:6] + b"\x20\x00" + ip[8:],                   # a fragment (more fragments)
        ip[:6] + b"\x00\x10" + ip[8:],                   # a fragment (offset)
        ip[:2] + b"\x00\x28" + ip[4:],                   # total length 40 < the 52 bytes of headers
        ip[:45],                                         # cut inside the TCP options
        ip[:30],
        with_data_offset(ip, 15),                        # options past the end of the packet
    ]
    ic = interceptd(2)
    feed(ic, [ETH + p for p in bad_ip] + [b"\x00" * 10, ETH[:12] + b"\x86\xdd" + ip])
    assert (ic.malformed, ic.not_ip, ic.captured, ic.unexpected) == (len(bad_ip), 2, 0, 0)
    assert published(ic) == []


def test_what_is_published_parses_in_the_rewrite_worker():
    ic = interceptd(1, 3)
    options = [b"", b"\x02\x04\x05\xb4", b"\x01" * 40]
    ips = [answer(i, options[i % 3]) for i in range(30)]
    ips.append(ips[0][:2] + b"\x00\x00" + ips[0][4:])  # total length 0 (offloaded): the frame's length
    feed(ic, ips, DLT_RAW)
    assert ic.captured == len(ips) and ic.malformed == 0
    headers = published(ic)
    assert len(headers) == 2 * len(ips)                 # once for each shard count in use
    for h in headers:
        seg = parse_ipv4_tcp(h, keep_payload=False)
        assert seg.src_ip == 0xC6120003 and seg.payload == b""


def test_no_exception_leaves_the_callback_and_the_first_is_logged(caplog, monkeypatch):
    ic = interceptd(1)

    def broken(*args):
        raise KeyError("a bug in the splitter")
    monkeypatch.setattr(ic.split, "add", broken)
    with caplog.at_level(logging.ERROR, logger="appliance.interceptd.daemon"):
        assert feed(ic, [ETH + answer(i) for i in range(3)]) == 3
    assert ic.unexpected == 3
    logged = [r for r in caplog.records if "unexpected" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None


def test_the_drop_counters_reach_tcpcopyctl_status():
    from appliance.tcpcopyctl.cli import format_status
    from tests.unit.tcpcopyctl.test_cli import status_doc
    ic = interceptd(1)
    feed(ic, [ETH + with_data_offset(answer(1), 2), b"\x00", ETH + answer(2)])
    report = intercept_report(wire.decode_json(ic._stats_frame(), wire.KIND_STATS))
    assert report is not None
    instance, kept, dropped = report
    assert dropped == 0 and kept["counters"]["malformed"] == 1 and kept["counters"]["unexpected"] == 0
    doc = status_doc(intercepts={instance: dict(kept, age=0.5)})
    line = next(x for x in format_status(doc).splitlines() if x.startswith("interceptd"))
    assert "captured 1" in line and "malformed 1" in line and "not IP 1" in line and "unexpected 0" in line


def test_answer_header_refuses_short_views():
    for n in range(40):
        assert answer_header(memoryview(answer(0, b"")[:n])) is None
    assert answer_header(memoryview(answer(0, b""))) is not None
