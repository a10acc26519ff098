"""`tcpcopyctl doctor`: check a host's set-up for its role and say how to fix what is wrong.

Runs on the host being checked (online, target or assistant), reading /proc and asking `ip -j`;
it sends no packet except a TCP connect to each interceptd from the online host. The checks
are pure functions of a `Probe`, so they are tested with a fake one and in the lab with the real.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
from dataclasses import dataclass
from typing import Protocol

from appliance.host.privileges import CAP_NET_ADMIN, CAP_NET_RAW, effective_capabilities

CONNTRACK_HEADROOM = 0.8


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    ok: bool
    detail: str
    fix: str = ""


class Probe(Protocol):
    def sysctl(self, name: str) -> str | None: ...
    def route_get(self, ip: str) -> dict | None: ...
    def neighbour(self, ip: str) -> list[str] | None: ...
    def capabilities(self) -> int: ...
    def tcp_connect(self, host: str, port: int, timeout: float) -> str | None: ...
    def offloads(self, interface: str) -> dict[str, bool]: ...


class LocalProbe:
    """The real host, as seen from this process's network namespace."""

    def sysctl(self, name: str) -> str | None:
        try:
            with open("/proc/sys/" + name.replace(".", "/")) as f:
                return f.read().strip()
        except OSError:
            return None

    def _ip(self, *args: str) -> list | None:
        done = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, timeout=5)
        if done.returncode != 0:
            return None
        try:
            return json.loads(done.stdout or "[]")
        except json.JSONDecodeError:
            return None

    def route_get(self, ip: str) -> dict | None:
        found = self._ip("route", "get", ip)
        return found[0] if found else None

    def neighbour(self, ip: str) -> list[str] | None:
        found = self._ip("neigh", "show", ip)
        return list(found[0].get("state", [])) if found else None

    def capabilities(self) -> int:
        return effective_capabilities()

    def tcp_connect(self, host: str, port: int, timeout: float) -> str | None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return None
        except OSError as exc:
            return exc.strerror or str(exc)

    def offloads(self, interface: str) -> dict[str, bool]:
        done = subprocess.run(["ethtool", "-k", interface], capture_output=True, text=True, timeout=5)
        out = {}
        for line in done.stdout.splitlines():
            name, _, value = line.partition(":")
            if value.strip().startswith(("on", "off")):
                out[name.strip()] = value.strip().startswith("on")
        return out


def check_capabilities(probe: Probe) -> Finding:
    caps = probe.capabilities()
    missing = [name for bit, name in ((CAP_NET_RAW, "CAP_NET_RAW"), (CAP_NET_ADMIN, "CAP_NET_ADMIN"))
               if not caps >> bit & 1]
    if missing:
        return Finding("capabilities", False, f"this process lacks {', '.join(missing)}: no capture, no raw sends",
                       "run as root, or: setcap cap_net_raw,cap_net_admin=ep /opt/tcpcopy-py/bin/python3")
    return Finding("capabilities", True, "CAP_NET_RAW and CAP_NET_ADMIN present")


def check_route_via(probe: Probe, client: str, assistant: str) -> Finding:
    route = probe.route_get(client)
    fix = f"ip route add {client} via {assistant}"
    if route is None:
        return Finding("route to the clients", False, f"no route to {client}: answers cannot leave", fix)
    gateway = route.get("gateway")
    if gateway != assistant:
        via = f"via {gateway}" if gateway else f"directly on {route.get('dev')}"
        return Finding("route to the clients", False,
                       f"answers to {client} go {via}, not via the assistant {assistant}: they reach the real "
                       "client (or nowhere) and tcpcopyd never sees them", fix)
    return Finding("route to the clients", True, f"answers to {client} go via the assistant {assistant}")


def check_rp_filter(probe: Probe, client: str) -> Finding:
    route = probe.route_get(client)
    dev = route.get("dev") if route else None
    values = {name: probe.sysctl(f"net.ipv4.conf.{name}.rp_filter") for name in ("all", dev) if name}
    strict = {name: v for name, v in values.items() if v == "1"}
    if strict:
        return Finding("rp_filter", False,
                       f"strict reverse-path filtering ({', '.join(strict)}): replayed packets from client "
                       "addresses routed elsewhere are dropped silently",
                       "sysctl -w net.ipv4.conf.all.rp_filter=2" + (f" net.ipv4.conf.{dev}.rp_filter=2" if dev else ""))
    return Finding("rp_filter", True, f"not strict ({', '.join(f'{k}={v}' for k, v in values.items())})")


def check_forwarding_off(probe: Probe) -> Finding:
    value = probe.sysctl("net.ipv4.ip_forward")
    if value != "0":
        return Finding("ip_forward", False, "this assistant forwards packets: the target's answers leak to the "
                       "real clients instead of dying here", "sysctl -w net.ipv4.ip_forward=0")
    return Finding("ip_forward", True, "off: the target's answers end here after interceptd saw them")


def check_neighbour(probe: Probe, ip: str, what: str) -> Finding:
    route = probe.route_get(ip)
    if route is None:
        return Finding(f"route to the {what}", False, f"no route to {ip}", f"ip route add {ip} via GATEWAY")
    hop = route.get("gateway") or ip
    states = probe.neighbour(hop) or []
    if any(s in ("FAILED", "INCOMPLETE") for s in states):
        return Finding(f"neighbour of the {what}", False,
                       f"{hop} does not answer ARP ({'/'.join(states)}): raw sends to it are lost without an error",
                       f"ping -c1 {hop}  (or: ip neigh replace {hop} lladdr MAC dev {route.get('dev')})")
    return Finding(f"neighbour of the {what}", True, f"{hop} {'/'.join(states) or 'not cached yet'}")


def check_conntrack(probe: Probe) -> Finding:
    count, limit = probe.sysctl("net.netfilter.nf_conntrack_count"), probe.sysctl("net.netfilter.nf_conntrack_max")
    if count is None or limit is None or not count.isdigit() or not limit.isdigit() or int(limit) == 0:
        return Finding("conntrack headroom", True, "connection tracking not loaded here")
    used = int(count) / int(limit)
    if used >= CONNTRACK_HEADROOM:
        return Finding("conntrack headroom", False,
                       f"{count} of {limit} tracked connections ({used:.0%}): when full, raw sends fail with EPERM",
                       f"sysctl -w net.netfilter.nf_conntrack_max={int(limit) * 4}  "
                       "(or exempt the copies: iptables -t raw -I OUTPUT -p tcp --dport PORT -j NOTRACK)")
    return Finding("conntrack headroom", True, f"{count} of {limit} ({used:.0%})")


def check_offloads(probe: Probe, interface: str) -> Finding:
    offs = probe.offloads(interface)
    on = [k for k in ("tx-checksumming", "tcp-segmentation-offload", "generic-receive-offload") if offs.get(k)]
    return Finding("offloads", True, (f"{', '.join(on)} on {interface}: captures hold partial checksums and "
                                      "super-packets; tcpcopyd recomputes and splits them") if on
                   else f"offloads off on {interface}")


def check_intercept(probe: Probe, address: str) -> Finding:
    from appliance.core.wire import parse_intercept_address
    host, port = parse_intercept_address(address)
    error = probe.tcp_connect(host, port, 2.0)
    if error:
        return Finding(f"interceptd {host}:{port}", False, f"cannot connect: {error}",
                       f"start interceptd on {host} (interceptd -F 'tcp and src host TARGET and src port PORT'), "
                       f"and let {host}:{port}/tcp through its firewall")
    return Finding(f"interceptd {host}:{port}", True, "reachable")


def run_checks(role: str, probe: Probe, client: str, assistant: str, target: str, intercepts: list[str],
               interface: str) -> list[Finding]:
    ipaddress.ip_address(client)
    checks = [check_capabilities(probe)]
    if role == "online":
        checks += [check_neighbour(probe, target, "target"), check_conntrack(probe)]
        checks += [check_intercept(probe, a) for a in intercepts]
        checks.append(check_offloads(probe, interface))
    elif role == "target":
        checks += [check_route_via(probe, client, assistant), check_rp_filter(probe, client),
                   check_neighbour(probe, assistant, "assistant")]
    elif role == "assistant":
        checks += [check_forwarding_off(probe), check_offloads(probe, interface)]
    return checks


def report(findings: list[Finding]) -> str:
    lines = []
    for f in findings:
        lines.append(f"{'ok     ' if f.ok else 'PROBLEM'}  {f.check}: {f.detail}")
        if not f.ok and f.fix:
            lines.append(f"         fix: {f.fix}")
    bad = sum(not f.ok for f in findings)
    lines.append(f"{len(findings) - bad} ok, {bad} problem(s)")
    return "\n".join(lines)
