"""A four-host test lab built from Linux network namespaces.

Layout (all in 198.18.0.0/24, the benchmarking range; nothing is configured in the root namespace)::

    {prefix}-client     eth0 198.18.0.1 --+
    {prefix}-online     eth0 198.18.0.2 --+-- veth peers "client", "online", ... on bridge br0
    {prefix}-target     eth0 198.18.0.3 --+   in namespace {prefix}-br
    {prefix}-assistant  eth0 198.18.0.4 --+

Contract of a lab that is up:
- every host has a static, permanent neighbour entry for every other host (no ARP at all);
- the target routes 198.18.0.1/32 via the assistant, whose ip_forward is 0, so answers to the client
  die there;
- rp_filter is 0 on every host, IPv6 is off, and no namespace has a default route.

Everything here shells out to `ip`, `sysctl` and `ethtool` and needs root (CAP_NET_ADMIN).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from typing import Any

import psutil

HOSTS: tuple[str, ...] = ("client", "online", "target", "assistant")
ADDR: dict[str, str] = {
    "client": "198.18.0.1",
    "online": "198.18.0.2",
    "target": "198.18.0.3",
    "assistant": "198.18.0.4",
}
MAC: dict[str, str] = {host: f"02:00:c6:12:00:0{i}" for i, host in enumerate(HOSTS, start=1)}
BRIDGE_PORT_MAC: dict[str, str] = {host: f"02:00:c6:12:01:0{i}" for i, host in enumerate(HOSTS, start=1)}
PREFIX_LEN = 24
BRIDGE = "br0"
BRIDGE_NS_SUFFIX = "br"
HOST_IFACE = "eth0"
OFFLOAD_FEATURES: tuple[str, ...] = ("tx", "rx", "tso", "gso", "gro")

PREFIX_PATTERN = re.compile(r"^[a-z][a-z0-9]{0,15}$")
STOP_GRACE_SECONDS = 3.0
KILL_WAIT_SECONDS = 2.0
COMMAND_TIMEOUT_SECONDS = 20.0
PING_WAIT_SECONDS = 1

Check = tuple[str, bool, str]


class LabError(Exception):
    """A lab command failed; the message carries the command line and its stderr."""


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_SECONDS, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out: {' '.join(argv)}") from exc
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} -> exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def list_namespaces() -> list[str]:
    """Names of all network namespaces known to `ip netns` (the files under /run/netns)."""
    out = _run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def find_prefixes(base: str = "tcl") -> list[str]:
    """Prefixes of labs (complete or half-built) whose names are `base` followed by digits or nothing.

    Used to clean up after crashed test runs, whose labs carry per-process prefixes such as "tcl4242".
    """
    suffixes = "|".join((*HOSTS, BRIDGE_NS_SUFFIX))
    pattern = re.compile(rf"^({re.escape(base)}[0-9]*)-({suffixes})$")
    found = {m.group(1) for name in list_namespaces() if (m := pattern.match(name))}
    return sorted(found)


def tools_missing() -> list[str]:
    """Commands the lab needs that are not on PATH."""
    return [tool for tool in ("ip", "sysctl", "ethtool", "ping") if shutil.which(tool) is None]


class Lab:
    """One lab instance, identified by its namespace prefix.

    Methods run in the calling process and block; none of them leaves a thread or child behind.
    """

    def __init__(self, prefix: str = "tcl") -> None:
        if not PREFIX_PATTERN.match(prefix):
            raise ValueError(f"lab prefix must match {PREFIX_PATTERN.pattern}: {prefix!r}")
        self.prefix = prefix

    def __repr__(self) -> str:
        return f"Lab(prefix={self.prefix!r})"


    def namespace(self, host: str) -> str:
        """Namespace name of a host ("client", ...), or of the bridge ("br")."""
        if host not in HOSTS and host != BRIDGE_NS_SUFFIX:
            raise ValueError(f"unknown lab host {host!r}; expected one of {HOSTS} or 'br'")
        return f"{self.prefix}-{host}"

    @property
    def bridge_namespace(self) -> str:
        return self.namespace(BRIDGE_NS_SUFFIX)

    @property
    def all_namespaces(self) -> list[str]:
        """Bridge namespace first, then the hosts in HOSTS order."""
        return [self.bridge_namespace, *(self.namespace(h) for h in HOSTS)]

    def present(self) -> list[str]:
        """Those of our namespaces that currently exist, extensions (e.g. the docker host) included."""
        existing = list_namespaces()
        ours = [ns for ns in self.all_namespaces if ns in existing]
        return ours + sorted(ns for ns in existing if ns.startswith(f"{self.prefix}-") and ns not in ours)

    def exists(self) -> bool:
        """True when all five namespaces exist (says nothing about their health; see check())."""
        return set(self.all_namespaces) <= set(self.present())


    def up(self, offloads: bool = True) -> None:
        """Build the lab.

        offloads=True leaves veth defaults (checksum offload, TSO/GSO/GRO on); False turns tx, rx, tso,
        gso and gro off on both ends of every veth. Raises LabError if any namespace of this prefix already
        exists; on a failure half way, everything built so far is removed before the error propagates.
        """
        leftover = self.present()
        if leftover:
            raise LabError(f"lab {self.prefix!r} already (partly) exists: {leftover}; take it down first")
        try:
            self._build(offloads)
        except BaseException:
            self.down()
            raise

    def _build(self, offloads: bool) -> None:
        br = self.bridge_namespace
        for ns in self.all_namespaces:
            _run(["ip", "netns", "add", ns])
            # IPv6 off before any interface exists, so no link-local or DAD traffic ever appears.
            self._sysctl(ns, {"net.ipv6.conf.all.disable_ipv6": "1",
                              "net.ipv6.conf.default.disable_ipv6": "1"})
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "-n", br, "link", "add", BRIDGE, "type", "bridge",
              "stp_state", "0", "forward_delay", "0"])
        _run(["ip", "-n", br, "link", "set", BRIDGE, "up"])
        for host in HOSTS:
            ns = self.namespace(host)
            _run([
                "ip", "-n", ns, "link", "add", HOST_IFACE, "address", MAC[host], "type", "veth",
                "peer", "name", host, "address", BRIDGE_PORT_MAC[host], "netns", br,
            ])
            _run(["ip", "-n", br, "link", "set", host, "master", BRIDGE, "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{ADDR[host]}/{PREFIX_LEN}", "dev", HOST_IFACE])
            self._sysctl(ns, {
                "net.ipv4.ip_forward": "0",
                "net.ipv4.conf.all.rp_filter": "0",
                "net.ipv4.conf.default.rp_filter": "0",
                f"net.ipv4.conf.{HOST_IFACE}.rp_filter": "0",
            })
            _run(["ip", "-n", ns, "link", "set", HOST_IFACE, "up"])
            for other in HOSTS:
                if other != host:
                    _run([
                        "ip", "-n", ns, "neigh", "replace", ADDR[other], "lladdr", MAC[other],
                        "dev", HOST_IFACE, "nud", "permanent",
                    ])
            if not offloads:
                self._offloads_off(ns, HOST_IFACE)
                self._offloads_off(br, host)
        _run([
            "ip", "-n", self.namespace("target"), "route", "add", f"{ADDR['client']}/32",
            "via", ADDR["assistant"], "dev", HOST_IFACE,
        ])

    def down(self, grace_seconds: float = STOP_GRACE_SECONDS) -> list[str]:
        """Remove whatever exists of this lab; idempotent, and works on a half-built lab.

        Every process living in one of our namespaces gets SIGTERM, then SIGKILL after grace_seconds;
        then the namespaces are deleted (which destroys their veths). Returns the namespaces deleted.
        """
        present = self.present()
        pids: set[int] = set()
        for ns in present:
            pids.update(self.pids(ns))
        _stop_pids(pids, grace_seconds)
        for ns in present:
            _run(["ip", "netns", "del", ns], check=False)
        still = self.present()
        if still:
            raise LabError(f"namespaces survived 'ip netns del': {still}")
        return present

    def pids(self, ns: str) -> list[int]:
        """Processes whose network namespace is `ns` (as listed by `ip netns pids`)."""
        out = _run(["ip", "netns", "pids", ns], check=False).stdout
        return [int(tok) for tok in out.split() if tok.isdigit()]


    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        """The argv that runs `argv` inside a host's namespace (`ip netns exec` execs it: same pid)."""
        return ["ip", "netns", "exec", self.namespace(host), *argv]

    def popen(self, host: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start argv inside a host namespace; the caller owns the process and must reap it."""
        return subprocess.Popen(self.command(host, argv), **kw)

    def run(
        self, host: str, argv: Sequence[str], check: bool = True, **kw: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run argv inside a host namespace to completion.

        Output is captured as text unless the caller passes other stdout/stderr/text arguments;
        check=True raises subprocess.CalledProcessError on a non-zero exit.
        """
        if "stdout" not in kw and "stderr" not in kw:
            kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(self.command(host, argv), check=check, **kw)


    def status(self, with_checks: bool = True) -> dict[str, Any]:
        """A JSON-serialisable description: namespaces present, per-host addresses, and check() results."""
        present = set(self.present())
        hosts: dict[str, Any] = {}
        for host in HOSTS:
            ns = self.namespace(host)
            addresses: list[str] = []
            if ns in present:
                out = _run(["ip", "-n", ns, "-o", "-4", "addr", "show"], check=False).stdout
                addresses = [" ".join(line.split()[1:4:2]) for line in out.splitlines() if line.strip()]
            hosts[host] = {
                "namespace": ns, "present": ns in present, "expected_address": ADDR[host],
                "mac": MAC[host], "addresses": addresses,
            }
        state = "up" if len(present) == len(self.all_namespaces) else ("down" if not present else "partial")
        result: dict[str, Any] = {
            "prefix": self.prefix,
            "state": state,
            "namespaces": {ns: ns in present for ns in self.all_namespaces},
            "hosts": hosts,
        }
        if with_checks and state == "up":
            result["checks"] = [{"name": n, "ok": ok, "detail": d} for n, ok, d in self.check()]
        return result

    def check(self) -> list[Check]:
        """Verify the lab's contract: (name, ok, detail) per check; a failed check never raises."""
        missing = [ns for ns in self.all_namespaces if ns not in set(self.present())]
        if missing:
            return [("namespaces present", False, f"missing: {', '.join(missing)}")]
        checks: list[Check] = [("namespaces present", True, ", ".join(self.all_namespaces))]
        checks.extend(self._ping_checks())
        forward = self.run("assistant", ["sysctl", "-n", "net.ipv4.ip_forward"], check=False).stdout.strip()
        checks.append(("assistant ip_forward=0", forward == "0", f"net.ipv4.ip_forward={forward}"))
        route = _run(["ip", "-n", self.namespace("target"), "route", "get", ADDR["client"]], check=False)
        via = f"via {ADDR['assistant']}"
        route_text = " ".join(route.stdout.split())
        checks.append(("target routes client via assistant", via in route.stdout, route_text))
        offenders = []
        for ns in self.all_namespaces:
            for family in ("-4", "-6"):
                out = _run(["ip", "-n", ns, family, "route", "show", "default"], check=False).stdout.strip()
                if out:
                    offenders.append(f"{ns}: {out}")
        checks.append(("no default route", not offenders, "; ".join(offenders) or "none in any namespace"))
        return checks

    def _ping_checks(self) -> list[Check]:
        pairs = [(src, dst) for src in HOSTS for dst in ("online", "target", "assistant") if src != dst]
        procs = {
            pair: self.popen(
                pair[0], ["ping", "-n", "-q", "-c", "1", "-W", str(PING_WAIT_SECONDS), ADDR[pair[1]]],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            for pair in pairs
        }
        results: list[Check] = []
        for (src, dst), proc in procs.items():
            answered = proc.wait(timeout=COMMAND_TIMEOUT_SECONDS) == 0
            if (src, dst) == ("client", "target"):
                results.append((
                    "client->target ping fails (answer goes via assistant)", not answered,
                    "answered: the target's reply reached the client" if answered
                    else "no answer, as designed",
                ))
            else:
                outcome = "answered" if answered else "silent"
                results.append((f"ping {src}->{dst}", answered, f"{ADDR[dst]} {outcome}"))
        return results


    def _sysctl(self, ns: str, values: dict[str, str]) -> None:
        # -e: a kernel without IPv6 has no net.ipv6 keys; that is fine for the lab.
        settings = [f"{key}={value}" for key, value in values.items()]
        _run(["ip", "netns", "exec", ns, "sysctl", "-q", "-e", "-w", *settings])

    def _offloads_off(self, ns: str, iface: str) -> None:
        features = [word for feature in OFFLOAD_FEATURES for word in (feature, "off")]
        _run(["ip", "netns", "exec", ns, "ethtool", "-K", iface, *features])


def terminate(proc: subprocess.Popen[Any], timeout: float, sig: int = signal.SIGTERM) -> int | None:
    """`sig` (SIGTERM) to a process this lab started, SIGKILL if it is not gone after `timeout`; its
    exit code. Idempotent."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(KILL_WAIT_SECONDS)
    return proc.returncode


def _stop_pids(pids: set[int], grace_seconds: float) -> None:
    """SIGTERM each pid, wait up to grace_seconds for all to go (zombies count as gone), SIGKILL the rest."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    remaining = {pid for pid in pids if _alive(pid)}
    while remaining and time.monotonic() < deadline:
        time.sleep(0.05)
        remaining = {pid for pid in remaining if _alive(pid)}
    for pid in remaining:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + KILL_WAIT_SECONDS
    while remaining and time.monotonic() < deadline:
        time.sleep(0.05)
        remaining = {pid for pid in remaining if _alive(pid)}


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
