"""The seed's bridge-network deployment: target and assistant as containers behind a docker host
that publishes the target's port with DNAT. The seed's routing fails; the fixed one replicates,
whether or not the docker host passes bridged frames through its connection tracking."""

from __future__ import annotations

import time

import pytest

from appliance.lab.dockerhost import DockerHost
from appliance.lab.rig import ReplicationRig

pytestmark = pytest.mark.lab


@pytest.fixture
def dock(lab):
    host = DockerHost(lab)
    try:
        yield host
    finally:
        host.down()


def _rig(lab, dock, tmp_path, variant: str, br_netfilter: bool) -> ReplicationRig:
    dock.up(variant, br_netfilter=br_netfilter)
    rig = ReplicationRig(lab, tmp_path / variant, placement=dock.placement(),
                         intercept_filter=dock.intercept_filter(variant), tcpcopyd_args=("--handshake-timeout", "3"))
    rig.start()
    return rig


@pytest.mark.parametrize("br_netfilter", [True, False], ids=["br_netfilter", "no_br_netfilter"])
def test_fixed_routing_replicates_through_the_published_port(lab, dock, tmp_path, br_netfilter):
    rig = _rig(lab, dock, tmp_path, "fixed", br_netfilter)
    try:
        load = rig.load("mix", "--short", "1000", "--keepalive", "20", "--per-conn", "50", "--post-every", "5")
        assert load["errors"] == 0
        v = rig.verdict(load, time.time())
        c = v.comparison
        assert c.sessions_online == 1020
        assert c.completeness_pct >= 99.9, c.summary()
        assert v.status["totals"]["rewrite"]["responses_unmatched"] == 0
    finally:
        rig.close()


@pytest.mark.parametrize("br_netfilter", [True, False], ids=["br_netfilter", "no_br_netfilter"])
def test_seed_routing_fails_and_says_why(lab, dock, tmp_path, br_netfilter):
    rig = _rig(lab, dock, tmp_path, "broken", br_netfilter)
    try:
        load = rig.load("mix", "--short", "20", "--keepalive", "0")
        assert load["errors"] == 0
        status = rig.wait_until("20 handshake timeouts",
                                lambda s: s["totals"]["rewrite"]["handshake_timeouts"] >= 20)
        rewrite = status["totals"]["rewrite"]
        assert rewrite["sessions_established"] == 0 and rewrite["handshake_timeouts"] == 20
        (intercept,) = status["intercepts"].values()
        if br_netfilter:
            # the answers were un-NATed on docker0 (source 198.18.0.5:18080): a filter on the
            # container's port 8080 sees none of them
            assert intercept["counters"]["captured"] == 0
        else:
            # the answers bypassed the NAT: they come from the container's address, unknown to tcpcopyd
            assert intercept["counters"]["captured"] >= 20
            assert rewrite["responses_unmatched"] >= 20
        rig.wait_for_log("tcpcopyd", "handshake(s) timed out")
        if not br_netfilter:
            rig.wait_for_log("tcpcopyd", "addresses tcpcopyd never sent to")
    finally:
        rig.close()
