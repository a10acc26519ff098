"""Transfer specs (`-x [ONLINE_IP:]PORT-TARGET_IP:PORT`) and the capture filter built from them."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from appliance.core.packet import ip_to_int


@dataclass(frozen=True, slots=True)
class Transfer:
    """Copy traffic for online_ip:online_port (online_ip None = any local address) to the target."""

    online_ip: str | None
    online_port: int
    target_ip: str
    target_port: int

    def __str__(self) -> str:
        online = f"{self.online_ip}:{self.online_port}" if self.online_ip else str(self.online_port)
        return f"{online}-{self.target_ip}:{self.target_port}"


def _port(text: str, what: str, spec: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"transfer {spec!r}: {what} port {text!r} is not 1-65535")
    return int(text)


def _ipv4(text: str, what: str, spec: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise ValueError(f"transfer {spec!r}: {what} address {text!r} is not an IPv4 address") from None


def parse_transfers(text: str) -> tuple[Transfer, ...]:
    """Parse a comma-separated list of transfer specs; raises ValueError naming the bad part."""
    out = []
    for spec in (s.strip() for s in text.split(",")):
        if not spec:
            continue
        online, sep, target = spec.partition("-")
        if not sep:
            raise ValueError(f"transfer {spec!r}: expected [ONLINE_IP:]PORT-TARGET_IP:PORT")
        oip, _, oport = online.rpartition(":")
        tip, tsep, tport = target.rpartition(":")
        if not tsep or not tip:
            raise ValueError(f"transfer {spec!r}: the target needs an address and a port (IP:PORT)")
        out.append(Transfer(_ipv4(oip, "online", spec) if oip else None, _port(oport, "online", spec),
                            _ipv4(tip, "target", spec), _port(tport, "target", spec)))
    if not out:
        raise ValueError("no transfer given (-x [ONLINE_IP:]PORT-TARGET_IP:PORT)")
    return tuple(out)


def capture_filter(transfers: tuple[Transfer, ...]) -> str:
    """BPF for client->service segments of every transfer, never our own output.

    Our replicas leave this host addressed to target_ip:target_port; when the online port
    equals the target port they would otherwise match, so each term excludes them (G7).
    """
    return _service_filter(transfers, "dst")


def _service_filter(transfers: tuple[Transfer, ...], side: str) -> str:
    """Segments whose `side` ("dst": to the service, "src": from it) is a transfer's online
    service, never our own output to the target."""
    terms = []
    for t in transfers:
        term = f"{side} port {t.online_port}"
        if t.online_ip:
            term += f" and {side} host {t.online_ip}"
        term += f" and not (dst host {t.target_ip} and dst port {t.target_port})"
        terms.append(f"({term})")
    return "tcp and (" + " or ".join(terms) + ")"


def answer_filter(transfers: tuple[Transfer, ...]) -> str:
    """BPF for the online server's answers to its clients (compare mode), never our own output."""
    return _service_filter(transfers, "src")


class TransferMap:
    """Captured (dst ip, dst port) -> every (target ip, target port) it is copied to."""

    def __init__(self, transfers: tuple[Transfer, ...]) -> None:
        self._exact: dict[tuple[int, int], list[tuple[int, int]]] = {}
        self._any: dict[int, list[tuple[int, int]]] = {}
        for t in transfers:
            dest = (ip_to_int(t.target_ip), t.target_port)
            if t.online_ip:
                self._exact.setdefault((ip_to_int(t.online_ip), t.online_port), []).append(dest)
            else:
                self._any.setdefault(t.online_port, []).append(dest)

    def targets(self, dst_ip: int, dst_port: int) -> list[tuple[int, int]]:
        found = self._exact.get((dst_ip, dst_port))
        if found is not None:
            return found
        return self._any.get(dst_port, [])
