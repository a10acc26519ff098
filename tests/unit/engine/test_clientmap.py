"""Client tuples for copies and pools: distinct, on this shard, stable per connection."""

from __future__ import annotations

from appliance.core.flowkey import shard_of
from appliance.core.packet import ACK, PSH, SYN, ip_to_int
from appliance.engine.clientmap import HIGH_PORT, LOW_PORT, ClientMap
from appliance.engine.params import EngineParams
from appliance.engine.table import SessionTable
from tests.unit.enginekit import CLIENT, SPORT, TARGET, client, target

POOL = tuple(ip_to_int(f"198.18.1.{i}") for i in range(1, 11))


def test_identity_without_pool_and_copies():
    m = ClientMap(0, 2)
    assert m.identity and m.tuples(CLIENT, 40000, TARGET, 8080, new=True) == [(CLIENT, 40000)]
    assert len(m) == 0


def test_copies_are_distinct_on_this_shard_and_sticky():
    m = ClientMap(1, 4, copies=5)
    first = m.tuples(CLIENT, 45000, TARGET, 8080, new=True)
    assert first[0] == (CLIENT, 45000)                      # copy 0 keeps the client's tuple
    assert len(set(first)) == 5
    for ip, port in first[1:]:
        assert ip == CLIENT and LOW_PORT <= port <= HIGH_PORT
        assert shard_of(ip, port, 4) == 1
    assert m.tuples(CLIENT, 45000, TARGET, 8080, new=False) == first


def test_many_connections_never_share_a_tuple():
    m = ClientMap(0, 2, pool=POOL, copies=3)
    seen = set()
    for port in range(40000, 41000):
        for t in m.tuples(CLIENT, port, TARGET, 8080, new=True):
            assert t not in seen
            assert t[0] in POOL and shard_of(t[0], t[1], 2) == 0
            seen.add(t)
    assert len(seen) == 3000 and m.exhausted == 0


def test_released_tuples_are_not_reused_at_once():
    m = ClientMap(0, 1, copies=2)
    (_, a), = [t for t in [m.tuples(CLIENT, 40000, TARGET, 8080, new=True)[1]]]
    m.release((CLIENT, a, TARGET, 8080))
    _, b = m.tuples(CLIENT, 40001, TARGET, 8080, new=True)[1]
    assert b != a


def test_table_replays_each_copy_as_its_own_session():
    table = SessionTable(EngineParams(), clients=ClientMap(0, 1, copies=3))
    table.client_segment(client(1000, 0, SYN), TARGET, SPORT, 10.0)
    table.flush(10.0)
    syns = table.take_output()
    assert [e.flags for e in syns] == [SYN] * 3
    assert len({(e.src_ip, e.src_port) for e in syns}) == 3
    for e in syns:
        table.target_segment(target(5000, 1001, SYN | ACK, port=e.src_port), 10.0)
    table.flush(10.0)
    table.take_output()
    table.client_segment(client(1001, 9001, ACK | PSH, b"GET /"), TARGET, SPORT, 10.0)
    table.flush(10.0)
    sent = [e for e in table.take_output() if e.payload]
    assert [e.payload for e in sent] == [b"GET /"] * 3
    assert {e.src_port for e in sent} == {e.src_port for e in syns}
    assert table.counters.sessions_established == 3


def test_pool_rewrites_the_client_address():
    table = SessionTable(EngineParams(), clients=ClientMap(0, 1, pool=POOL))
    table.client_segment(client(1000, 0, SYN), TARGET, SPORT, 10.0)
    table.flush(10.0)
    (syn,) = table.take_output()
    assert syn.src_ip in POOL and syn.src_ip != CLIENT
