"""Which client (ip, port) each copy of a captured connection uses towards the target.

Sans-io, one per rewrite worker (shard). Without a client pool (`-c`) and with one copy (`-n 1`)
the client keeps its own address: the identity, and nothing is stored. Otherwise every copy of a
connection gets a tuple of its own, allocated so that

- no two live copies share a (client ip, client port, target ip, target port), and
- `shard_of(ip, port)` is this shard, so interceptd sends the target's answers for it here.

A pool gives every copy an address from the pool (the target's route must cover the pool).
Without a pool, copy 0 keeps the client's address and further copies use the client's IP with
ports below the usual ephemeral range (1024-32767), taken round-robin so a tuple is not reused
soon after its session ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from appliance.core.flowkey import shard_of
from appliance.engine.model import Key

Tuple4 = Key                               # client ip, client port, target ip, target port (model.Key)
Origin = tuple[int, int, int, int, int]   # captured client ip, port, target ip, port, copy number

LOW_PORT: Final = 1024
HIGH_PORT: Final = 32767                  # copies without a pool stay below Linux's ephemeral range


class ClientMap:
    def __init__(self, shard: int, shards: int, pool: tuple[int, ...] = (), copies: int = 1) -> None:
        self.shard = shard
        self.shards = shards
        self.pool = pool
        self.copies = copies
        self.identity = not pool and copies == 1
        self._by_origin: dict[Origin, Tuple4] = {}
        self._origin_of: dict[Tuple4, Origin] = {}
        self._cursor = 0
        self._spare_cursor = 0
        self.exhausted = 0                 # copies that found no free tuple (counted, not sent)

    def __len__(self) -> int:
        return len(self._origin_of)

    def tuples(self, ip: int, port: int, tip: int, tport: int, new: bool) -> list[tuple[int, int]]:
        """The (ip, port) of every copy of this captured connection; `new` for a captured SYN."""
        if self.identity:
            return [(ip, port)]
        out = []
        for copy in range(self.copies):
            origin = (ip, port, tip, tport, copy)
            have = self._by_origin.get(origin)
            if have is not None and not new:
                out.append((have[0], have[1]))
                continue
            got = self._allocate(origin)
            if got is None:
                self.exhausted += 1
                continue
            out.append(got)
        return out

    def spare(self, ip: int, tip: int, tport: int, taken: Callable[[Tuple4], bool]) -> Tuple4 | None:
        """Another client tuple of `ip` for this shard (ports 1024-32767, round-robin so one is not
        reused soon), for a connection whose own tuple is still busy on the target; None if none is free."""
        span = HIGH_PORT - LOW_PORT + 1
        for _ in range(span):
            self._spare_cursor = (self._spare_cursor + 1) % span
            key = (ip, LOW_PORT + self._spare_cursor, tip, tport)
            if shard_of(ip, key[1], self.shards) == self.shard and key not in self._origin_of and not taken(key):
                return key
        return None

    def captured(self, key: Tuple4) -> tuple[int, int] | None:
        """The captured client (ip, port) whose first copy uses `key`; None for any other copy or tuple."""
        if self.identity:
            return key[0], key[1]
        origin = self._origin_of.get(key)
        return (origin[0], origin[1]) if origin is not None and origin[4] == 0 else None

    def release(self, key: Tuple4) -> None:
        """The session on `key` is gone: its tuple may be given out again (later)."""
        origin = self._origin_of.pop(key, None)
        if origin is not None and self._by_origin.get(origin) == key:
            del self._by_origin[origin]

    def _allocate(self, origin: Origin) -> tuple[int, int] | None:
        ip, port, tip, tport, copy = origin
        if not self.pool and copy == 0:
            return self._take(origin, (ip, port, tip, tport))   # the client's own tuple, as captured
        if self.pool:
            # sticky first choice: the same pool address for a client IP, its own port
            first = self.pool[(ip + copy) % len(self.pool)]
            if shard_of(first, port, self.shards) == self.shard and (first, port, tip, tport) not in self._origin_of:
                return self._take(origin, (first, port, tip, tport))
        span = HIGH_PORT - LOW_PORT + 1
        ips = self.pool or (ip,)
        for _ in range(span * len(ips)):
            self._cursor += 1
            cand_ip = ips[(self._cursor // span) % len(ips)]
            cand_port = LOW_PORT + self._cursor % span
            key = (cand_ip, cand_port, tip, tport)
            if shard_of(cand_ip, cand_port, self.shards) == self.shard and key not in self._origin_of:
                return self._take(origin, key)
        return None

    def _take(self, origin: Origin, key: Tuple4) -> tuple[int, int]:
        # a new connection on a captured tuple leaves the old copy's tuple taken until its
        # session is forgotten (release), so the two never share one
        self._by_origin[origin] = key
        self._origin_of[key] = origin
        return key[0], key[1]
