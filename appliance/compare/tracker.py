"""Per rewrite worker: the online answers it captures and the target's turns from interceptd,
paired per replayed connection and judged. Sans-io: events in, `Comparison` records out.

Runs in a tcpcopyd rewrite worker with compare on. A connection is named by its client's captured
address and ISN (tcpcopyd keeps the client's sequence numbers, so both sides agree on it); the
worker maps the target's client tuple (a pool address, a spare port) back to the captured one.

Latency of a turn: from the end of the request it answers to the turn's first byte. Online, both
times are capture timestamps of this host; on the target side, the request's end is when this
worker first sent its last byte and the first byte is interceptd's capture timestamp (the hosts'
clocks must agree: NTP, or the lab's single clock).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from appliance.compare.report import DiffReport
from appliance.compare.turns import AssemblerSpec, Turn, TurnAssembler
from appliance.compare.verdict import Comparison, Verdicts, VerdictSpec

Client = tuple[int, int]                 # the captured client's (ip, port)
REQUEST_HEAD = 256                       # request bytes kept per turn: the method and path
ENDS_KEPT = 16                           # request ends remembered per connection (pipelining depth)
SEQ_MOD = 1 << 32
MAX_DONE = 10_000                        # differences kept for the file between two takes


@dataclass(slots=True)
class _Connection:
    """What one captured client connection needs for its comparisons."""

    isn: int | None = None
    request_heads: OrderedDict[int, bytes] = field(default_factory=OrderedDict)   # seq -> first bytes
    captured_end: OrderedDict[int, int] = field(default_factory=OrderedDict)      # end seq -> capture ns
    sent_end: OrderedDict[int, int] = field(default_factory=OrderedDict)          # end seq -> first send ns
    next_request: int | None = None      # where the next request starts (the last answered one's end)
    answered: bool = True                # an answer came since the last request began


def _remember(table: OrderedDict[int, Any], key: int, value: Any) -> None:
    if key not in table:
        table[key] = value
        while len(table) > ENDS_KEPT:
            table.popitem(last=False)


class Comparer:
    """Pairs and judges; `comparisons()` hands over what was judged since the last call."""

    def __init__(self, assembler: AssemblerSpec | None = None, verdict: VerdictSpec | None = None, *,
                 max_connections: int = 65536, report_groups: int = 1000) -> None:
        self.online_turns = TurnAssembler(assembler)
        self.verdicts = Verdicts(verdict)
        self.report = DiffReport(max_groups=report_groups)      # its latency histograms: every pair
        self.max_connections = max_connections
        self.connections_evicted = 0
        self.target_turns = 0
        self.target_turns_unmatched = 0
        self.not_kept = 0                                # differences beyond MAX_DONE between two takes
        self._conns: OrderedDict[Client, _Connection] = OrderedDict()
        self._done: list[Comparison] = []

    # ---- events -----------------------------------------------------------------------------
    def client_data(self, client: Client, seq: int, flags: int, payload: bytes, ts_ns: int) -> None:
        """A captured client segment (SYN or data): remembers where requests start and end."""
        conn = self._conn(client)
        if flags & 0x02:                                   # SYN: a new connection on this port
            conn = self._conns[client] = _Connection(isn=seq, next_request=(seq + 1) % SEQ_MOD)
            return
        if not payload:
            return
        if conn.answered:
            # the first data after an answer starts a request (pipelined ones share the turn)
            conn.answered = False
            _remember(conn.request_heads, seq, bytes(payload[:REQUEST_HEAD]))
        _remember(conn.captured_end, (seq + len(payload)) % SEQ_MOD, ts_ns)

    def online_answer(self, server: Client, client: Client, seq: int, ack: int, flags: int,
                      payload: bytes | memoryview, ts_ns: int, length: int | None = None) -> None:
        """A captured answer of the online server to `client`."""
        conn = self._conn(client)
        if payload:
            conn.answered = True
        for turn in self.online_turns.feed((server[0], server[1], client[0], client[1]), seq, ack, flags, payload,
                                           ts_ns, length):
            self._online_turn(client, conn, turn)

    def sent(self, client: Client, end_seq: int, ts_ns: int) -> None:
        """Request bytes up to `end_seq` left for the target (the first send counts, not a retransmit)."""
        _remember(self._conn(client).sent_end, end_seq % SEQ_MOD, ts_ns)

    def target_turn(self, client: Client, turn: Turn) -> None:
        """A turn of the target's answers to the replay of `client`'s connection (from interceptd)."""
        self.target_turns += 1
        conn = self._conn(client)
        sent = conn.sent_end.get(turn.request_end)
        latency = turn.first_ns - sent if sent is not None and turn.first_ns >= sent else None
        self._judged(self.verdicts.target(self._session(client, conn), turn, latency_ns=latency))

    def poll(self, now_ns: int) -> None:
        """About once a second: online turns idle long enough are emitted and judged."""
        for turn in self.online_turns.poll(now_ns):
            client = (turn.client_ip, turn.client_port)
            self._online_turn(client, self._conn(client), turn)

    def comparisons(self) -> list[Comparison]:
        done, self._done = self._done, []
        return done

    # ---- inside -----------------------------------------------------------------------------
    def _online_turn(self, client: Client, conn: _Connection, turn: Turn) -> None:
        request = None
        start = conn.next_request
        if start is not None:
            request = conn.request_heads.pop(start, None)
        if request is None and conn.request_heads:     # the start was not captured: the oldest head
            _, request = conn.request_heads.popitem(last=False)
        conn.next_request = turn.request_end
        captured = conn.captured_end.get(turn.request_end)
        latency = turn.first_ns - captured if captured is not None and turn.first_ns >= captured else None
        self._judged(self.verdicts.online(self._session(client, conn), turn, latency_ns=latency, request=request))

    def _session(self, client: Client, conn: _Connection) -> tuple[int, int, int | None]:
        return client[0], client[1], conn.isn

    def _judged(self, c: Comparison | None) -> None:
        if c is None:
            return
        self.report.add(c)
        if not c.equal:
            if len(self._done) < MAX_DONE:
                self._done.append(c)
            else:
                self.not_kept += 1

    def _conn(self, client: Client) -> _Connection:
        conn = self._conns.get(client)
        if conn is None:
            conn = self._conns[client] = _Connection()
            while len(self._conns) > self.max_connections:
                self._conns.popitem(last=False)
                self.connections_evicted += 1
        else:
            self._conns.move_to_end(client)
        return conn

    # ---- what the heartbeat carries ---------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        """The names of CompareCounters (appliance/core/counters.py) but the differences file's two."""
        v, a = self.verdicts.counters, self.online_turns.counters
        out = {name: getattr(v, name) for name in v.__slots__}
        out.update({"online_turns": a.turns_emitted, "online_incomplete_turns": a.incomplete_turns,
                    "online_gaps": a.gaps, "online_flows_evicted": a.flows_evicted,
                    "target_turns": self.target_turns, "target_turns_unmatched": self.target_turns_unmatched,
                    "connections_evicted": self.connections_evicted})
        return out

    def info(self, top: int = 50) -> dict[str, Any]:
        """The differences grouped by request, and both sides' latency histograms (report.to_dict)."""
        return self.report.to_dict(top)
