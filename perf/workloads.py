"""Representative captures, generated with dpkt: what `make perf` replays.

Each workload is the client side of many TCP connections as a capture on the online host would
hold them (Ethernet frames, client -> service, with the client's own ISNs, timestamps and the
acks of the answers it had received), written as a pcap. The answers' sizes are not guessed:
`calibrate` asks the real target once for each kind of request, so the acks in the file match
what the target will send in the replay (as in a real capture of the same service).

    HTTP short connections   SYN, ACK, GET, ACK of answer + server FIN, FIN       (5 packets)
    HTTP keep-alive          SYN, ACK, (GET, ACK) x K, FIN, ACK
    uploads                  keep-alive POSTs of 256 KiB, MSS-sized segments
    database                 PostgreSQL protocol: startup, (simple query, ACK) x K, terminate

Runs in the perf harness's process (perf/run.py); the calibration runs inside the lab.
"""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dpkt

MSS = 1448                                  # payload per segment with the timestamp option
UPLOAD_BYTES = 256 * 1024
PG_QUERIES = (b"SELECT 1", b"SELECT n, md5(n::text) FROM generate_series(1, 5) n",
              b"SELECT n, md5(n::text) FROM generate_series(1, 40) n")


@dataclass
class Workload:
    name: str
    port: int
    connections: int
    per_conn: int                      # requests per connection
    conn_rate: float                   # new connections per second in the original
    think: float                       # seconds between a response and the next request
    requests: list[bytes] = field(default_factory=list)   # the kinds of request, used in turn

    def sample(self, i: int) -> bytes:
        return self.requests[i % len(self.requests)]


def http_get(path: str, close: bool) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: target\r\nUser-Agent: tcpcopy-perf\r\n"
            + ("Connection: close\r\n" if close else "") + "\r\n").encode()


def http_post(size: int) -> bytes:
    head = (f"POST /upload HTTP/1.1\r\nHost: target\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {size}\r\n\r\n").encode()
    return head + bytes(random.Random(size).getrandbits(8) for _ in range(size))


def pg_startup() -> bytes:
    body = struct.pack("!I", 196608) + b"user\0postgres\0database\0postgres\0application_name\0perf\0\0"
    return struct.pack("!I", len(body) + 4) + body


def pg_query(sql: bytes) -> bytes:
    return b"Q" + struct.pack("!I", len(sql) + 5) + sql + b"\0"


PG_TERMINATE = b"X\0\0\0\x04"


def standard() -> list[Workload]:
    """The workloads of `make perf`: sized so a topspeed replay runs for several seconds."""
    return [
        Workload("http-short", 8080, 12_000, 1, 1500.0, 0.0, [http_get("/item/1", close=True)]),
        Workload("http-keepalive", 8080, 200, 150, 20.0, 0.02, [http_get("/item/1", close=False)]),
        Workload("upload", 8080, 40, 4, 4.0, 0.05, [http_post(UPLOAD_BYTES)]),
        Workload("database", 5432, 30, 1000, 3.0, 0.005, [pg_query(q) for q in PG_QUERIES]),
    ]


# ---- the pcap ----------------------------------------------------------------------------------
def _ts_opt(val: int, ecr: int) -> bytes:
    return b"\x01\x01\x08\x0a" + struct.pack("!II", val & 0xFFFFFFFF, ecr & 0xFFFFFFFF)


def _syn_options(ts_val: int) -> bytes:
    """MSS 1460, SACK permitted, timestamps, NOP, window scale 7: a Linux client's SYN."""
    return b"\x02\x04\x05\xb4\x04\x02\x08\x0a" + struct.pack("!II", ts_val, 0) + b"\x01\x03\x03\x07"


def _frame(src_mac: bytes, dst_mac: bytes, src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int,
           flags: int, options: bytes, payload: bytes, ip_id: int) -> bytes:
    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq & 0xFFFFFFFF, ack=ack & 0xFFFFFFFF, flags=flags,
                       win=502, opts=options, data=payload)
    tcp.off = (20 + len(options)) // 4
    ip = dpkt.ip.IP(src=src, dst=dst, p=dpkt.ip.IP_PROTO_TCP, id=ip_id & 0xFFFF, ttl=64, data=tcp)
    ip.df = 1
    ip.len = 20 + len(bytes(tcp))
    return bytes(dpkt.ethernet.Ethernet(src=src_mac, dst=dst_mac, type=dpkt.ethernet.ETH_TYPE_IP, data=ip))


def _connection(w: Workload, index: int, start: float, answers: dict[bytes, int], first_answer: int,
                rnd: random.Random) -> Iterator[tuple[float, int, int, int, int, bytes, bytes]]:
    """(time, port, seq, ack, flags, options, payload) of one connection's client packets."""
    port = 1024 + index % 64000
    isn, s_isn, tsv = rnd.getrandbits(32), rnd.getrandbits(32), rnd.getrandbits(30)
    rtt = 0.0002
    t = start
    yield t, port, isn, 0, dpkt.tcp.TH_SYN, _syn_options(tsv), b""
    seq, ack = isn + 1, s_isn + 1
    t += rtt
    yield t, port, seq, ack, dpkt.tcp.TH_ACK, _ts_opt(tsv + 1, 1), b""
    requests = [w.sample(index * w.per_conn + k) for k in range(w.per_conn)]
    if w.port == 5432:
        requests = [pg_startup()] + requests
    for k, request in enumerate(requests):
        t += w.think if k else 0.0001
        flags = dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH
        for at in range(0, len(request), MSS):
            part = request[at:at + MSS]
            yield t, port, seq, ack, flags, _ts_opt(tsv + 2 + k, 2 + k), part
            seq += len(part)
            t += 0.00001
        answer = first_answer if (w.port == 5432 and k == 0) else answers[request]
        ack += answer
        t += rtt + 0.0005
        yield t, port, seq, ack, dpkt.tcp.TH_ACK, _ts_opt(tsv + 3 + k, 3 + k), b""
    end_ts = tsv + 10 + len(requests)
    if w.port == 5432:
        yield t + 0.0001, port, seq, ack, dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, _ts_opt(end_ts, 9), PG_TERMINATE
        seq += len(PG_TERMINATE)
    if w.requests and b"Connection: close" in w.requests[0]:
        # the server closed after its answer: the client acked both, then closes
        yield t, port, seq, ack + 1, dpkt.tcp.TH_ACK, _ts_opt(end_ts, 10), b""
        yield t + 0.0001, port, seq, ack + 1, dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK, _ts_opt(end_ts + 1, 10), b""
        return
    yield t + 0.0002, port, seq, ack, dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK, _ts_opt(end_ts, 10), b""
    yield t + 0.0004, port, seq + 1, ack + 1, dpkt.tcp.TH_ACK, _ts_opt(end_ts + 1, 11), b""


def write_pcap(w: Workload, path: Path, answers: dict[bytes, int], client_ip: str, service_ip: str,
               client_mac: str, service_mac: str, first_answer: int = 0) -> dict[str, float]:
    """The workload's client packets, in time order, as a pcap; what the file holds."""
    rnd = random.Random(w.name)
    packets: list[tuple[float, int, int, int, int, bytes, bytes]] = []
    for i in range(w.connections):
        packets.extend(_connection(w, i, 1.0 + i / w.conn_rate, answers, first_answer, rnd))
    packets.sort(key=lambda p: p[0])
    src, dst = socket.inet_aton(client_ip), socket.inet_aton(service_ip)
    smac, dmac = bytes.fromhex(client_mac.replace(":", "")), bytes.fromhex(service_mac.replace(":", ""))
    size = payload_bytes = 0
    with open(path, "wb") as fh:
        out = dpkt.pcap.Writer(fh, snaplen=65535, linktype=dpkt.pcap.DLT_EN10MB)
        for n, (t, port, seq, ack, flags, options, payload) in enumerate(packets):
            frame = _frame(smac, dmac, src, dst, port, w.port, seq, ack, flags, options, payload, n)
            out.writepkt(frame, ts=t)
            size += len(frame)
            payload_bytes += len(payload)
    return {"packets": len(packets), "bytes": size, "payload_bytes": payload_bytes, "connections": w.connections,
            "span_s": packets[-1][0] - packets[0][0] if packets else 0.0}


# ---- asking the real target how long its answers are --------------------------------------------
CALIBRATE = r"""
import json, socket, struct, sys
host, port, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
requests = [bytes.fromhex(h) for h in sys.stdin.read().split()]

def read_http(s):
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        body += s.recv(65536)
    return len(head) + 4 + length

def read_pg(s):
    got = b""
    while True:
        while len(got) < 5:
            got += s.recv(65536)
        at = 0
        while at + 5 <= len(got):
            kind_, n = got[at:at + 1], struct.unpack("!I", got[at + 1:at + 5])[0]
            if at + 1 + n > len(got):
                break
            at += 1 + n
            if kind_ == b"Z":
                return at
        got += s.recv(65536)

sizes = {}
s = socket.create_connection((host, port), timeout=10)
if kind == "pg":
    s.sendall(requests[0])
    sizes["startup"] = read_pg(s)
    for r in requests[1:]:
        s.sendall(r)
        sizes[r.hex()] = read_pg(s)
else:
    for r in requests:
        if b"Connection: close" in r:
            s = socket.create_connection((host, port), timeout=10)
        s.sendall(r)
        sizes[r.hex()] = read_http(s)
print(json.dumps(sizes))
"""
