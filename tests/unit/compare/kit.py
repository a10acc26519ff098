"""Helpers of the compare-mode tests: a scripted server that answers on one flow, real turns out."""

from __future__ import annotations

import hashlib

from appliance.compare.tracker import Comparer
from appliance.compare.turns import AssemblerSpec, Flow, Turn, TurnAssembler
from appliance.core.packet import ACK, FIN, PSH, RST, SYN
from appliance.core.wire import TURN_DIGEST_SIZE

SERVER = (0xC6120002, 80)          # 198.18.0.2:80
CLIENT = (0xC6120001, 40000)       # 198.18.0.1:40000
FLOW: Flow = (*SERVER, *CLIENT)
MS = 1_000_000


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=TURN_DIGEST_SIZE).digest()


def http_answer(status: int = 200, body: bytes = b"hello", headers: dict[str, str] | None = None,
                reason: str = "OK") -> bytes:
    fields = {"Date": "Mon, 01 Jan 2024 00:00:00 GMT", "Server": "online/1.0", "Content-Type": "text/plain",
              "Content-Length": str(len(body))}
    fields.update(headers or {})
    lines = "".join(f"{k}: {v}\r\n" for k, v in fields.items() if v)
    head = f"HTTP/1.1 {status} {reason}\r\n{lines}\r\n"
    return head.encode("latin-1") + body


class Server:
    """One server side of a connection, sending answers as segments into an assembler.
    `client_seq` is where the client's next request starts (the server's ACK)."""

    def __init__(self, asm: TurnAssembler, flow: Flow = FLOW, server_isn: int = 1000, client_isn: int = 5000,
                 now: int = 0) -> None:
        self.asm = asm
        self.flow = flow
        self.seq = (server_isn + 1) % (1 << 32)
        self.client_seq = (client_isn + 1) % (1 << 32)
        self.now = now
        self.turns: list[Turn] = []
        self._isn = server_isn
        self._client_isn = client_isn

    def syn_ack(self) -> Server:
        """The SYN-ACK (again, when called again: a retransmission)."""
        ack = (self._client_isn + 1) % (1 << 32)
        self.turns += self.asm.feed(self.flow, self._isn, ack, SYN | ACK, b"", self.now)
        return self

    def request(self, size: int, pure_ack: bool = False) -> None:
        """The client sent `size` bytes; with pure_ack the server acknowledges them at once."""
        self.client_seq = (self.client_seq + size) % (1 << 32)
        if pure_ack:
            self.send(b"")

    def send(self, data: bytes, flags: int = ACK | PSH, *, seq: int | None = None, advance: bool = True,
             dt: int = MS, length: int | None = None) -> list[Turn]:
        self.now += dt
        at = self.seq if seq is None else seq
        out = list(self.asm.feed(self.flow, at, self.client_seq, flags, data, self.now, length))
        if advance and seq is None:
            self.seq = (self.seq + (len(data) if length is None else length)) % (1 << 32)
        self.turns += out
        return out

    def answer(self, data: bytes, mss: int = 1460) -> None:
        for i in range(0, len(data), mss):
            self.send(data[i:i + mss])

    def fin(self) -> list[Turn]:
        return self.send(b"", ACK | FIN)

    def rst(self) -> list[Turn]:
        return self.send(b"", RST)


def one_turn(data: bytes, *, request: int = 100, spec: AssemblerSpec | None = None, mss: int = 1460) -> Turn:
    """`data` answered to one request on a connection seen from its SYN-ACK, closed by FIN."""
    srv = Server(TurnAssembler(spec)).syn_ack()
    srv.request(request)
    srv.answer(data, mss)
    srv.fin()
    assert len(srv.turns) == 1
    return srv.turns[0]


TARGET = (0xC6120003, 80)
ISN = 5000


def request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def replay(comparer: Comparer, paths: list[str], online: list[bytes], target: list[bytes],
           client: tuple[int, int] = CLIENT, target_delay_ms: int = 1) -> None:
    """One keep-alive connection: each request captured, sent to the target and answered on both
    sides; then both servers close."""
    comparer.client_data(client, ISN, SYN, b"", 0)
    comparer.online_answer(SERVER, client, 999, ISN + 1, SYN | ACK, b"", 0)
    twin = Server(TurnAssembler(), flow=(*TARGET, *client), server_isn=7000, client_isn=ISN)
    twin.syn_ack()
    seq, online_seq, now = ISN + 1, 1000, 0
    for path, mine, theirs in zip(paths, online, target, strict=True):
        data = request(path)
        now += 10 * MS
        comparer.client_data(client, seq, ACK | PSH, data, now)
        seq += len(data)
        twin.now = now
        comparer.sent(client, seq, now)                # the replay left at once
        twin.request(len(data))
        twin.send(theirs, dt=target_delay_ms * MS)
        comparer.online_answer(SERVER, client, online_seq, seq, ACK | PSH, mine, now + MS)
        online_seq += len(mine)
    comparer.online_answer(SERVER, client, online_seq, seq, ACK | FIN, b"", now + 2 * MS)
    twin.fin()
    for turn in twin.turns:
        comparer.target_turn(client, turn)
