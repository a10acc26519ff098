"""The seed's bridge-network deployment, rebuilt from namespaces: a "docker host" on the lab
bridge, with its own bridge and two "containers" (target and assistant) behind it.

    lab bridge 198.18.0.0/24 --- dock 198.18.0.5 (ip_forward=1, DNAT 18080 -> target:8080,
                                      |              36524 -> assistant:36524)
                                  docker0 198.18.2.1/24
                                   /               \\
                   ctarget 198.18.2.3:8080      cassist 198.18.2.4 (ip_forward=0, interceptd)

Two ways to route the target's answers for the client:

- "broken", as the seed did it: a route in the target container, client via the assistant
  container. The answers go container to container on docker0 and never pass the docker host,
  so they are never un-NATed: interceptd sees them from 198.18.2.3:8080, a source tcpcopyd never
  sent to (it sent to 198.18.0.5:18080), and the docker host's connection tracking never sees a
  SYN-ACK, so it treats the next segments of the connection as invalid. No handshake completes.
- "fixed": the container keeps its default route to the docker host; the docker host routes the
  client via the assistant container. Each answer passes the docker host, is un-NATed there
  (source 198.18.0.5:18080, and conntrack sees the whole connection), and is then forwarded to
  the assistant, which captures it and, not forwarding, drops it.

Runs in the caller's process; everything is inside namespaces named after the lab's prefix, so
`Lab.down()` removes it too.
"""

from __future__ import annotations

from appliance.lab.netns import ADDR, BRIDGE, HOSTS, MAC, Lab, _run, _stop_pids, list_namespaces
from appliance.lab.rig import Placement

DOCK = "dock"
CONTAINERS = {"ctarget": "198.18.2.3", "cassist": "198.18.2.4"}
DOCK_ADDR = "198.18.0.5"
DOCK_MAC = "02:00:c6:12:00:05"
DOCKER0_ADDR = "198.18.2.1"
CONTAINER_MACS = {"ctarget": "02:00:c6:12:02:03", "cassist": "02:00:c6:12:02:04"}
SERVICE_PORT = 8080          # in the target container
MAPPED_PORT = 18080          # published on the docker host
INTERCEPT_PORT = 36524


class DockerHost:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def ns(self, name: str) -> str:
        return f"{self.lab.prefix}-{name}"

    def up(self, variant: str, br_netfilter: bool = True) -> None:
        """Build the docker host and its containers on a lab that is up; variant: broken | fixed.

        br_netfilter: whether frames bridged on docker0 pass the docker host's iptables and
        connection tracking (Docker turns this on; other container runtimes may not).
        """
        if variant not in ("broken", "fixed"):
            raise ValueError("variant must be 'broken' or 'fixed'")
        dock, br = self.ns(DOCK), self.lab.bridge_namespace
        for name in (DOCK, *CONTAINERS):
            _run(["ip", "netns", "add", self.ns(name)])
            _run(["ip", "netns", "exec", self.ns(name), "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                  "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"])
            _run(["ip", "-n", self.ns(name), "link", "set", "lo", "up"])
        # the docker host's uplink on the lab bridge
        _run(["ip", "-n", dock, "link", "add", "eth0", "address", DOCK_MAC, "type", "veth", "peer", "name", DOCK,
              "netns", br])
        _run(["ip", "-n", br, "link", "set", DOCK, "master", BRIDGE, "up"])
        _run(["ip", "-n", dock, "addr", "add", f"{DOCK_ADDR}/24", "dev", "eth0"])
        _run(["ip", "-n", dock, "link", "set", "eth0", "up"])
        for host in HOSTS:
            _run(["ip", "-n", dock, "neigh", "replace", ADDR[host], "lladdr", MAC[host], "dev", "eth0",
                  "nud", "permanent"])
            _run(["ip", "-n", self.lab.namespace(host), "neigh", "replace", DOCK_ADDR, "lladdr", DOCK_MAC,
                  "dev", "eth0", "nud", "permanent"])
        # docker0 and the containers
        _run(["ip", "-n", dock, "link", "add", "docker0", "type", "bridge", "stp_state", "0", "forward_delay", "0"])
        _run(["ip", "-n", dock, "addr", "add", f"{DOCKER0_ADDR}/24", "dev", "docker0"])
        _run(["ip", "-n", dock, "link", "set", "docker0", "up"])
        for name, addr in CONTAINERS.items():
            cns = self.ns(name)
            _run(["ip", "-n", cns, "link", "add", "eth0", "address", CONTAINER_MACS[name], "type", "veth",
                  "peer", "name", f"v{name}", "netns", dock])
            _run(["ip", "-n", dock, "link", "set", f"v{name}", "master", "docker0", "up"])
            _run(["ip", "-n", cns, "addr", "add", f"{addr}/24", "dev", "eth0"])
            _run(["ip", "-n", cns, "link", "set", "eth0", "up"])
            _run(["ip", "-n", cns, "route", "add", "default", "via", DOCKER0_ADDR])
        _run(["ip", "netns", "exec", dock, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        _run(["ip", "netns", "exec", dock, "sysctl", "-qw",
              f"net.bridge.bridge-nf-call-iptables={1 if br_netfilter else 0}"])
        _run(["ip", "netns", "exec", self.ns("cassist"), "sysctl", "-qw", "net.ipv4.ip_forward=0"])
        for port, (name, inner) in ((MAPPED_PORT, ("ctarget", SERVICE_PORT)),
                                    (INTERCEPT_PORT, ("cassist", INTERCEPT_PORT))):
            _run(["ip", "netns", "exec", dock, "iptables", "-t", "nat", "-A", "PREROUTING", "-d", DOCK_ADDR,
                  "-p", "tcp", "--dport", str(port), "-j", "DNAT", "--to-destination",
                  f"{CONTAINERS[name]}:{inner}"])
        client, assistant = ADDR["client"], CONTAINERS["cassist"]
        if variant == "broken":
            _run(["ip", "-n", self.ns("ctarget"), "route", "add", f"{client}/32", "via", assistant])
        else:
            _run(["ip", "-n", dock, "route", "add", f"{client}/32", "via", assistant])

    def down(self) -> None:
        """Remove the docker host and its containers (the lab itself stays)."""
        # the uplink's bridge end first: a deleted namespace frees its veths only some time later
        _run(["ip", "-n", self.lab.bridge_namespace, "link", "del", DOCK], check=False)
        for name in (*CONTAINERS, DOCK):
            ns = self.ns(name)
            if ns in list_namespaces():
                _stop_pids(set(self.lab.pids(ns)), 3.0)
                _run(["ip", "netns", "del", ns], check=False)
        for host in HOSTS:
            _run(["ip", "-n", self.lab.namespace(host), "neigh", "del", DOCK_ADDR, "dev", "eth0"], check=False)

    def placement(self) -> Placement:
        """Where the rig runs the target service and interceptd, and what tcpcopyd is told."""
        return Placement(target_host="ctarget", target_bind=CONTAINERS["ctarget"], assistant_host="cassist",
                         send_to=f"{DOCK_ADDR}:{MAPPED_PORT}", intercept=f"{DOCK_ADDR}:{INTERCEPT_PORT}")

    def intercept_filter(self, variant: str) -> str:
        """What the assistant container sees the answers come from, in each variant."""
        if variant == "broken":
            return f"tcp and src port {SERVICE_PORT}"
        return f"tcp and src host {DOCK_ADDR} and src port {MAPPED_PORT}"
