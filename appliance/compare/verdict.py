"""The verdict of compare mode: does the target answer each request as the online server did?

Sans-io; runs in tcpcopyd's rewrite workers, which hold both sides of a session: the online
server's turns (assembled from the reverse-direction capture) and the target's (assembled by
interceptd, carried as wire.KIND_TURNS batches). `Verdicts` pairs them per session by turn index n;
when both turns know their request offset (both flows were seen from the SYN-ACK) the offsets must
agree, or the pair is counted `misaligned` and not judged. `compare_turns` is the pure judgement.

HTTP (either head starts with b"HTTP/1."; the online answer is the reference):
  status   the status codes differ;
  size     Content-Length differs, or without it on both sides the body (else whole turn) lengths;
  body     the body digests differ (the head is left out: Date and friends always differ);
  headers  a header not in `ignore_headers` differs (Content-Type included, compared lower-cased
           without blanks; Content-Length is `size`); a header present on one side only counts when
           neither head was cut short by head_bytes;
  latency  the target took more than `latency_factor` times the online latency and more than
           `latency_floor` seconds longer. Latencies are inputs: the caller measures each side on
           one clock (request sent -> first answer byte).
Any other protocol: size (turn lengths) and body (whole-turn digests).
A turn with a hole (`incomplete`) has no trustworthy digest or length: its pair is judged on status,
Content-Length, headers and latency only, and counted `uncomparable`.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field

from appliance.compare.http import ResponseHead, parse_request_line, parse_response_head
from appliance.compare.turns import Turn
from appliance.config.keys import IGNORED_HEADERS

# Headers that differ between any two servers or any two answers: ignored by default. Tracing and
# request ids, clocks and caches, per-deploy validators (ETag and Last-Modified of nginx derive from
# file times), cookies (session ids); Content-Length is judged as `size`, not here.
DEFAULT_IGNORED_HEADERS = IGNORED_HEADERS          # the configuration's default (compare.ignore_headers)


class Diff(enum.IntFlag):
    NONE = 0
    STATUS = 1
    SIZE = 2
    BODY = 4
    HEADERS = 8
    LATENCY = 16
    MISALIGNED = 32            # the pair answers different requests: nothing else judged


@dataclass(frozen=True, slots=True, kw_only=True)
class VerdictSpec:
    """latency_factor (> 1) and latency_floor (seconds) both must be exceeded to flag latency;
    max_sessions: sessions with unpaired turns tracked; max_pending: turns one side may be ahead."""

    ignore_headers: frozenset[str] = DEFAULT_IGNORED_HEADERS
    latency_factor: float = 2.0
    latency_floor: float = 0.010
    max_sessions: int = 65536
    max_pending: int = 2048   # a fast keep-alive connection (1,000 req/s) may see the target a second behind

    def __post_init__(self) -> None:
        if self.latency_factor < 1.0 or self.latency_floor < 0.0:
            raise ValueError("latency_factor must be >= 1 and latency_floor >= 0")
        if self.max_sessions < 1 or self.max_pending < 1:
            raise ValueError("max_sessions and max_pending must be positive")
        if any(name != name.lower() for name in self.ignore_headers):
            raise ValueError("ignore_headers are lower-case names")


@dataclass(frozen=True, slots=True)
class SideResult:
    """One side of a pair: `size` is Content-Length when present, else the body length (HTTP), else
    the turn's length; `status` is None when the answer is not HTTP."""

    status: int | None
    size: int
    content_type: str | None
    latency_ns: int | None
    length: int
    incomplete: bool
    head: bytes


@dataclass(frozen=True, slots=True)
class Comparison:
    server_port: int                         # of the online server: names the service of a non-HTTP pair
    index: int
    request_offset: int | None
    diff: Diff
    http: bool
    method: str | None
    path: str | None
    online: SideResult
    target: SideResult
    header_diffs: tuple[str, ...] = ()       # names of the differing headers, sorted
    uncomparable: bool = False               # a side was incomplete: body and length not judged

    @property
    def equal(self) -> bool:
        """No difference, and everything was judged."""
        return self.diff == Diff.NONE and not self.uncomparable


@dataclass(slots=True)
class VerdictCounters:
    """Every judged pair counts in `compared`; in `equal` when it has no difference and both sides were
    complete; a pair may count in several different_* kinds; `uncomparable` counts pairs with an
    incomplete side (with or without a difference). Misaligned pairs count only as `misaligned`."""

    compared: int = 0
    equal: int = 0
    different_status: int = 0
    different_size: int = 0
    different_body: int = 0
    different_headers: int = 0
    different_latency: int = 0
    uncomparable: int = 0
    misaligned: int = 0
    unpaired_online: int = 0
    unpaired_target: int = 0
    sessions_evicted: int = 0

    def count(self, c: Comparison) -> None:
        if c.diff & Diff.MISALIGNED:
            self.misaligned += 1
            return
        self.compared += 1
        self.equal += c.equal
        self.different_status += bool(c.diff & Diff.STATUS)
        self.different_size += bool(c.diff & Diff.SIZE)
        self.different_body += bool(c.diff & Diff.BODY)
        self.different_headers += bool(c.diff & Diff.HEADERS)
        self.different_latency += bool(c.diff & Diff.LATENCY)
        self.uncomparable += c.uncomparable


def compare_turns(online: Turn, target: Turn, spec: VerdictSpec, *, online_latency_ns: int | None = None,
                  target_latency_ns: int | None = None, request: bytes | None = None) -> Comparison:
    """Judge one pair. `request`: the first bytes of the client's request (method and path)."""
    line = parse_request_line(request) if request else None
    method, path = (line.method, line.path) if line else (None, None)
    if online.request_offset is not None and target.request_offset is not None \
            and online.request_offset != target.request_offset:
        return Comparison(online.server_port, online.index, online.request_offset, Diff.MISALIGNED, False,
                          method, path, _side(online, None, online_latency_ns),
                          _side(target, None, target_latency_ns))
    o_head = parse_response_head(online.head)
    t_head = parse_response_head(target.head)
    http = o_head is not None or t_head is not None
    o_side = _side(online, o_head, online_latency_ns)
    t_side = _side(target, t_head, target_latency_ns)
    uncomparable = online.incomplete or target.incomplete
    diff = Diff.NONE
    header_diffs: tuple[str, ...] = ()
    if http:
        if o_side.status != t_side.status:
            diff |= Diff.STATUS
        o_cl = o_head.content_length if o_head else None
        t_cl = t_head.content_length if t_head else None
        if o_cl is not None and t_cl is not None:
            if o_cl != t_cl:
                diff |= Diff.SIZE
        elif not uncomparable and o_side.size != t_side.size:
            diff |= Diff.SIZE
        if not uncomparable:
            if online.body_digest is not None and target.body_digest is not None:
                if online.body_digest != target.body_digest:
                    diff |= Diff.BODY
            elif (online.body_digest is None) != (target.body_digest is None):
                diff |= Diff.BODY             # one head ends, the other does not
            elif online.digest != target.digest:
                diff |= Diff.BODY             # neither head ends within max_http_head
        header_diffs = _header_diffs(o_head, t_head, spec.ignore_headers)
        if header_diffs:
            diff |= Diff.HEADERS
    elif not uncomparable:
        if online.length != target.length:
            diff |= Diff.SIZE
        if online.digest != target.digest:
            diff |= Diff.BODY
    if online_latency_ns is not None and target_latency_ns is not None \
            and target_latency_ns > online_latency_ns * spec.latency_factor \
            and target_latency_ns - online_latency_ns > spec.latency_floor * 1e9:
        diff |= Diff.LATENCY
    return Comparison(online.server_port, online.index, online.request_offset, diff, http, method, path,
                      o_side, t_side, header_diffs, uncomparable)


def _side(turn: Turn, head: ResponseHead | None, latency_ns: int | None) -> SideResult:
    size = turn.length
    if head is not None and head.content_length is not None:
        size = head.content_length
    elif turn.body_offset is not None:
        size = turn.length - turn.body_offset
    return SideResult(head.status if head else None, size, head.content_type if head else None,
                      latency_ns, turn.length, turn.incomplete, turn.head)


def _header_diffs(a: ResponseHead | None, b: ResponseHead | None, ignored: frozenset[str]) -> tuple[str, ...]:
    if a is None or b is None:
        return ()                              # one side is not HTTP: that is `status`
    names = (a.headers.keys() | b.headers.keys()) - ignored
    whole = not a.truncated and not b.truncated
    out = []
    for name in names:
        va, vb = a.headers.get(name), b.headers.get(name)
        if va is None or vb is None:
            if whole:
                out.append(name)
        elif name == "content-type":
            if a.content_type != b.content_type:
                out.append(name)
        elif va != vb:
            out.append(name)
    return tuple(sorted(out))


@dataclass(slots=True)
class _Waiting:
    online: OrderedDict[int, tuple[Turn, int | None, bytes | None]] = field(default_factory=OrderedDict)
    target: OrderedDict[int, tuple[Turn, int | None]] = field(default_factory=OrderedDict)


class Verdicts:
    """Pairs the turns of many sessions and judges each pair. One per rewrite worker; `session` is
    any hashable the caller uses to name a replayed connection on both sides. Call `end(session)`
    once both sides of it are over: turns still waiting count as unpaired."""

    def __init__(self, spec: VerdictSpec | None = None) -> None:
        self.spec = spec or VerdictSpec()
        self.counters = VerdictCounters()
        self._sessions: OrderedDict[Hashable, _Waiting] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def online(self, session: Hashable, turn: Turn, *, latency_ns: int | None = None,
               request: bytes | None = None) -> Comparison | None:
        """An online server's turn, its latency, and the first bytes of the request it answers."""
        w = self._waiting(session)
        other = w.target.pop(turn.index, None)
        if other is None:
            if w.online.pop(turn.index, None) is not None:
                self.counters.unpaired_online += 1      # the same index again: a flow restarted
            w.online[turn.index] = (turn, latency_ns, request)
            self._bound(w)
            return None
        return self._judge(turn, latency_ns, request, other[0], other[1])

    def target(self, session: Hashable, turn: Turn, *, latency_ns: int | None = None) -> Comparison | None:
        """A target's turn (from interceptd) and its latency."""
        w = self._waiting(session)
        other = w.online.pop(turn.index, None)
        if other is None:
            if w.target.pop(turn.index, None) is not None:
                self.counters.unpaired_target += 1
            w.target[turn.index] = (turn, latency_ns)
            self._bound(w)
            return None
        return self._judge(other[0], other[1], other[2], turn, latency_ns)

    def end(self, session: Hashable) -> None:
        w = self._sessions.pop(session, None)
        if w is not None:
            self.counters.unpaired_online += len(w.online)
            self.counters.unpaired_target += len(w.target)

    def _waiting(self, session: Hashable) -> _Waiting:
        w = self._sessions.get(session)
        if w is None:
            w = self._sessions[session] = _Waiting()
            while len(self._sessions) > self.spec.max_sessions:
                oldest = next(iter(self._sessions))
                self.counters.sessions_evicted += 1
                self.end(oldest)
        else:
            self._sessions.move_to_end(session)
        return w

    def _bound(self, w: _Waiting) -> None:
        # a side far ahead of the other: its oldest turns will not be paired any more
        while len(w.online) > self.spec.max_pending:
            w.online.popitem(last=False)
            self.counters.unpaired_online += 1
        while len(w.target) > self.spec.max_pending:
            w.target.popitem(last=False)
            self.counters.unpaired_target += 1

    def _judge(self, online: Turn, online_latency: int | None, request: bytes | None, target: Turn,
               target_latency: int | None) -> Comparison:
        c = compare_turns(online, target, self.spec, online_latency_ns=online_latency,
                          target_latency_ns=target_latency, request=request)
        self.counters.count(c)
        return c
