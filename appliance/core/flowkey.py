"""Flow affinity: the one function that decides which rewrite worker owns a client connection.

Capture calls it with a captured packet's source (client ip, port); interceptd calls it
with an answer's destination, which is the same pair. The server half is never hashed:
it differs before and after the rewrite.
"""

from __future__ import annotations


def shard_of(client_ip: int, client_port: int, shards: int) -> int:
    """Index in [0, shards) of the worker owning the connection of (client_ip, client_port)."""
    h = (client_ip * 0x9E3779B1 ^ client_port * 0x85EBCA77) & 0xFFFFFFFF
    h ^= h >> 15
    h = (h * 0x2C1B3C6D) & 0xFFFFFFFF
    h ^= h >> 12
    return h % shards
