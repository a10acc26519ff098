"""appliance.core.flowkey: the single flow-affinity function."""

from __future__ import annotations

import random
from collections import Counter

from appliance.core.flowkey import shard_of
from appliance.core.packet import ip_to_int


def test_deterministic_and_in_range():
    rng = random.Random(7)
    for _ in range(2000):
        ip, port, n = rng.getrandbits(32), rng.randrange(65536), rng.randrange(1, 17)
        k = shard_of(ip, port, n)
        assert 0 <= k < n
        assert shard_of(ip, port, n) == k


def test_single_shard_is_zero():
    assert {shard_of(ip_to_int("10.0.0.1"), p, 1) for p in range(1000)} == {0}


def test_spreads_random_clients_evenly():
    rng = random.Random(20240601)
    counts = Counter(shard_of(rng.getrandbits(32), rng.randrange(1024, 65536), 4) for _ in range(10_000))
    assert set(counts) == {0, 1, 2, 3}
    for shard, n in counts.items():
        assert abs(n - 2500) <= 500, (shard, counts)


def test_spreads_ports_of_one_client():
    # one busy client (or one -c address) must not pin everything to one worker
    ip = ip_to_int("203.0.113.7")
    counts = Counter(shard_of(ip, port, 4) for port in range(32768, 42768))
    for n in counts.values():
        assert abs(n - 2500) <= 500, counts


def test_spreads_sequential_addresses():
    base = ip_to_int("10.0.0.0")
    counts = Counter(shard_of(base + i, 80, 4) for i in range(10_000))
    for n in counts.values():
        assert abs(n - 2500) <= 500, counts


def test_client_key_from_capture_equals_key_from_response():
    # capture hashes (src ip, src port) of the client's packet; the relay hashes (dst ip, dst port)
    # of the target's answer: the same numbers, so the same shard, for any worker count
    from appliance.core.packet import ACK, build_ipv4_tcp, client_key_of, server_key_of
    c, t = ip_to_int("198.18.5.5"), ip_to_int("10.0.0.2")
    captured = build_ipv4_tcp(c, ip_to_int("10.0.0.1"), 41000, 80, 1, 1, ACK, 100)
    response = build_ipv4_tcp(t, c, 8080, 41000, 1, 1, ACK, 100)
    for n in (1, 2, 3, 8):
        assert shard_of(*client_key_of(captured), n) == shard_of(*server_key_of(response), n)
