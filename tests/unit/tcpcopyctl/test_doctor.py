"""Doctor checks against a fake host."""

from __future__ import annotations

from appliance.tcpcopyctl.doctor import (
    CAP_NET_ADMIN,
    CAP_NET_RAW,
    check_capabilities,
    check_conntrack,
    check_neighbour,
    check_route_via,
    run_checks,
)


class FakeProbe:
    def __init__(self, **kw):
        self.sysctls = kw.get("sysctls", {"net.ipv4.ip_forward": "0"})
        self.routes = kw.get("routes", {})
        self.neigh = kw.get("neigh", {})
        self.caps = kw.get("caps", (1 << CAP_NET_RAW) | (1 << CAP_NET_ADMIN))
        self.refused = kw.get("refused", set())

    def sysctl(self, name):
        return self.sysctls.get(name)

    def route_get(self, ip):
        return self.routes.get(ip)

    def neighbour(self, ip):
        return self.neigh.get(ip)

    def capabilities(self):
        return self.caps

    def tcp_connect(self, host, port, timeout):
        return "Connection refused" if host in self.refused else None

    def offloads(self, interface):
        return {"tx-checksumming": True}


def test_route_to_clients_must_go_via_the_assistant():
    direct = FakeProbe(routes={"10.9.0.1": {"dev": "eth0"}})
    f = check_route_via(direct, "10.9.0.1", "10.0.0.4")
    assert not f.ok and "directly on eth0" in f.detail and f.fix == "ip route add 10.9.0.1 via 10.0.0.4"
    good = FakeProbe(routes={"10.9.0.1": {"dev": "eth0", "gateway": "10.0.0.4"}})
    assert check_route_via(good, "10.9.0.1", "10.0.0.4").ok


def test_conntrack_nearly_full_is_a_problem_with_a_fix():
    f = check_conntrack(FakeProbe(sysctls={"net.netfilter.nf_conntrack_count": "900",
                                           "net.netfilter.nf_conntrack_max": "1000"}))
    assert not f.ok and "EPERM" in f.detail and "nf_conntrack_max=4000" in f.fix
    assert check_conntrack(FakeProbe(sysctls={})).ok


def test_failed_neighbour_and_missing_capabilities():
    probe = FakeProbe(routes={"10.0.0.3": {"dev": "eth0"}}, neigh={"10.0.0.3": ["FAILED"]}, caps=0)
    f = check_neighbour(probe, "10.0.0.3", "target")
    assert not f.ok and "ping -c1 10.0.0.3" in f.fix
    assert "CAP_NET_RAW, CAP_NET_ADMIN" in check_capabilities(probe).detail


def test_online_role_reports_an_unreachable_interceptd():
    probe = FakeProbe(routes={"10.0.0.3": {"dev": "eth0"}}, neigh={"10.0.0.3": ["PERMANENT"]}, refused={"10.0.0.4"})
    findings = run_checks("online", probe, "10.9.0.1", "10.0.0.4", "10.0.0.3", ["10.0.0.4", "10.0.0.5:4000"], "eth0")
    bad = [f.check for f in findings if not f.ok]
    assert bad == ["interceptd 10.0.0.4:36524"]
