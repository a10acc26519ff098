"""Off-the-shelf tools against nginx on both hosts: the traffic a new user tries first (issue 12).

nginx-light on online:8080 and target:8080 (appliance.lab.nginx: one worker, one access-log line per
request), veth offloads off, interceptd and tcpcopyd with CURVE keys as the README says; wrk and ab
as clients, tcpdump recording on the online host. Requests are counted in the two access logs: the
online one is the truth (for a capture: what the online server answered while it was recorded).
Each test prints its figures (run with -s): requests on both sides, the share, how much later the
target's last request came than the online one's, tcpcopyd's counters and the target kernel's.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.lab.netns import ADDR, Lab
from appliance.lab.nginx import LogSummary
from appliance.lab.rig import ReplicationRig
from appliance.lab.tools import (
    CaptureStats,
    ab,
    capturing,
    counters_delta,
    kernel_counters,
    port_range,
    wrk,
)

pytestmark = pytest.mark.lab

URL = f"http://{ADDR['online']}:8080/"
LIVE_SETTLE_LIMIT = 30.0        # after the load, for the target's log to stop growing and the sessions to end
OFFLINE_TAIL = "20"             # --offline-tail: seconds for the sessions after the files end
ENGINE_COUNTERS = ("sessions_started", "sessions_completed", "sessions_reset_by_target",
                   "sessions_reset_by_client", "sessions_timed_out", "restarts", "handshake_timeouts",
                   "handshake_refused", "port_reuse_resets", "port_reuse_waits", "capture_gaps",
                   "buffer_overflows", "window_stalls", "turns_lagged", "client_late", "client_no_session",
                   "retransmits")
NEW_COUNTERS = re.compile(r"moves|closes_forced|coalesced|syn_retransmits|resets_challenged|resets_ignored|shed"
                          r"|stale|isn_changes")
KERNEL_COUNTERS = re.compile(r"Reset|Prune|Listen|PAWS|TW|TimeWait|ReqQ|Drop|Challenge|Syncookies"
                             r"|AttemptFails|AbortOn")


@pytest.fixture
def rig(lab_offloads_off: Lab, tmp_path: Path) -> Iterator[ReplicationRig]:
    made = ReplicationRig(lab_offloads_off, tmp_path / "rig")
    try:
        made.start_nginx()
        yield made
    finally:
        made.close()


# ---- figures ------------------------------------------------------------------------------------
def _show(label: str, online: LogSummary, target: LogSummary, settled: tuple[bool, float],
          counters: dict[str, Any], kernel: dict[str, int], extra: str = "", live: bool = True) -> float:
    """Print one scenario's figures; the share of online's answered requests seen on the target."""
    share = 100.0 * target.ok / online.ok if online.ok else 0.0
    lag = target.last_msec - online.last_msec if target.requests else float("nan")
    print(f"\n[{label}] {extra}")
    print(f"  online {online.ok:,} requests ({online.requests:,} lines, {online.connections:,} connections, "
          f"{len(online.by_client):,} client ports); target {target.ok:,} ({target.requests:,} lines, "
          f"statuses {dict(target.statuses)}) = {share:.2f} %")
    print((f"  target's last request {lag:.2f} s after online's; " if live else "  ") +
          f"target settled: {'yes' if settled[0] else 'NO'} {settled[1]:.1f} s after the "
          f"{'load' if live else 'replay'}")
    differ = sum(1 for c, n in online.by_client.items() if target.by_client.get(c, 0) != n)
    print(f"  client ip:port with another count on the target: {differ:,} of {len(online.by_client):,}")
    shown = {k: counters.get(k, 0) for k in ENGINE_COUNTERS}
    shown.update({k: v for k, v in counters.items() if NEW_COUNTERS.search(k) and v})
    print("  tcpcopyd: " + ", ".join(f"{k} {v:,}" for k, v in shown.items()))
    print("  target kernel (nstat): " + (", ".join(f"{k} {v:,}" for k, v in sorted(kernel.items())
                                                     if KERNEL_COUNTERS.search(k)) or "nothing of note"))
    return share


def _settled_figures(rig: ReplicationRig, load_ended: float, limit: float) -> tuple[bool, float]:
    """Wait for the target to finish (its log quiet 2 s, no session open), then for online's log
    (flushed once a second); (target settled?, seconds after the load)."""
    _, settled = rig.settle_log("target", limit=limit)
    waited = time.monotonic() - load_ended
    rig.settle_log("online", quiet=1.5, limit=10.0, sessions=False)
    return settled, waited


def _rewrite_totals(rig: ReplicationRig) -> dict[str, Any]:
    return rig.fresh_status().get("totals", {}).get("rewrite", {})


# ---- capture and offline replay -------------------------------------------------------------------
def _record(rig: ReplicationRig, name: str,
            load: Callable[[], Any]) -> tuple[Path, LogSummary, CaptureStats, Any]:
    """tcpdump on the online host while `load` runs, no tcpcopyd anywhere: the file, what the
    online nginx answered meanwhile (its log from where it stood), tcpdump's figures and the
    load's result."""
    pcap = rig.dir / f"{name}.pcap"
    before = rig.nginx["online"].log.count()
    with capturing(rig.lab, "online", pcap) as dump:
        result = load()
        rig.settle_log("online", quiet=1.5, limit=10.0, sessions=False)
    assert dump.stats is not None and dump.stats.complete, f"the capture misses packets: {dump.stats}"
    return pcap, rig.nginx["online"].log.summary(skip=before), dump.stats, result


def _replay(rig: ReplicationRig, pcap: Path) -> tuple[dict[str, Any], str, float, dict[str, int]]:
    """tcpcopyd --offline --topspeed of the file to the target nginx; its JSON report, its output,
    when it ended, the target kernel's counters that moved meanwhile."""
    rig.start_interceptd()
    kernel_before = kernel_counters(rig.lab, "target")
    report = rig.dir / "report.json"
    done = rig.run_offline([str(pcap)], "--topspeed", "--offline-tail", OFFLINE_TAIL,
                           "--report-json", str(report), timeout=120)
    ended = time.monotonic()
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    kernel = counters_delta(kernel_before, kernel_counters(rig.lab, "target"))
    return json.loads(report.read_text()), done.stdout, ended, kernel


def _replay_every_request(rig: ReplicationRig, pcap: Path, label: str, online: LogSummary,
                          about_capture: str) -> None:
    """Replay the capture at topspeed, print its figures, and assert the target received every request
    online's log counted while it was recorded."""
    report, out, ended, kernel = _replay(rig, pcap)
    settled = _settled_figures(rig, ended, 10.0)
    target = rig.nginx["target"].log.summary()
    share = _show(f"offline --topspeed, capture of {label}", online, target, settled,
                  report["totals"]["rewrite"], kernel, live=False, extra=
                  f"{about_capture}; replay: {report['read_s']:.2f} s read, {_end_to_end(report)}; "
                  f"not completed {report['not_completed']}")
    got, expected = target.ok, online.ok
    assert got >= expected, f"{got:,} of the capture's {expected:,} requests ({share:.2f} %)\n{out}"


def _end_to_end(report: dict[str, Any]) -> str:
    took = report["end_to_end_s"]
    return f"{took:.2f} s end to end" if took else f"sessions open after --offline-tail {OFFLINE_TAIL} s"


def _client_packets(pcap: Path, bpf: str) -> int:
    """Packets of the file matching a filter (tcpdump -r, no network involved)."""
    out = subprocess.run(["tcpdump", "-r", str(pcap), "-nn", "-q", bpf],
                         capture_output=True, text=True, check=True)
    return len(out.stdout.splitlines())


# ---- the scenarios ------------------------------------------------------------------------------
def test_live_wrk_keepalive_100_connections(rig: ReplicationRig) -> None:
    """wrk -t1 -c100 -d10s: >= 99.9 % of the requests replicated, no session reset by the target."""
    rig.start(services=False)
    kernel_before = kernel_counters(rig.lab, "target")
    load = wrk(rig.lab, "client", URL, connections=100, seconds=10)
    settled = _settled_figures(rig, time.monotonic(), LIVE_SETTLE_LIMIT)
    counters = _rewrite_totals(rig)
    online, target = rig.nginx["online"].log.summary(), rig.nginx["target"].log.summary()
    share = _show("live wrk -t1 -c100 -d10s keep-alive", online, target, settled, counters,
                  counters_delta(kernel_before, kernel_counters(rig.lab, "target")),
                  f"wrk: {load.requests:,} requests in {load.duration_s:.2f} s ({load.rate:,.0f}/s), "
                  f"{load.errors} errors")
    got, expected = target.ok, online.ok
    assert expected > 100_000, f"the load itself was too small to mean anything: {load.output}"
    assert share >= 99.9, f"{got:,} of {expected:,} requests reached the target"
    reset = counters.get("sessions_reset_by_target", 0)
    assert reset == 0, f"the target reset {reset} sessions"


# wrk leaves a connection with a RST when an answer is still unread as it exits (most of them, as
# a rule); a busy machine can make it read every answer first and end them all with a FIN, which
# is not this scenario: then the capture is made again.
WRK_CAPTURE_ATTEMPTS = 6


def test_offline_topspeed_of_a_wrk_capture_ending_in_resets(rig: ReplicationRig) -> None:
    """A capture of wrk -t1 -c20 -d2s (connections ended by the client's RST) replayed at
    topspeed: every request of the capture on the target."""
    for attempt in range(1, WRK_CAPTURE_ATTEMPTS + 1):
        pcap, online, capture, load = _record(rig, f"wrk{attempt}",
                                              lambda: wrk(rig.lab, "client", URL, connections=20, seconds=2))
        resets = _client_packets(pcap, f"src host {ADDR['client']} and tcp[tcpflags] & tcp-rst != 0")
        if resets:
            break
    assert resets >= 1, f"{WRK_CAPTURE_ATTEMPTS} captures of wrk without a client RST: not the scenario"
    assert online.ok > 10_000, f"the capture holds too few requests to mean anything: {load.output}"
    _replay_every_request(rig, pcap, "wrk -t1 -c20 -d2s", online,
                          f"capture {attempt}: {capture.captured:,} packets, {resets} client RSTs; "
                          f"wrk {load.requests:,} requests")


def test_offline_topspeed_of_an_ab_capture_reusing_client_ports(rig: ReplicationRig) -> None:
    """A capture of ab -c20 -n15000 (short connections from one address, client ports coming back
    within the capture) replayed at topspeed: every request on the target."""
    pcap, online, capture, load = _record(rig, "ab", lambda: ab(rig.lab, "client", URL, concurrency=20,
                                                               requests=15000))
    reused = sum(n - 1 for n in online.by_client.values() if n > 1)
    assert online.ok == 15000, f"ab's requests did not all reach the online nginx: {load.output}"
    assert reused >= 1, "the capture was expected to reuse client ports"
    _replay_every_request(rig, pcap, "ab -c20 -n15000", online,
                          f"capture: {capture.captured:,} packets; ab {load.complete:,} complete, "
                          f"{load.failed} failed, {load.rate:,.0f}/s; {reused:,} connections on a client "
                          "port used before")


# ab's concurrency for the live short-connection run. ab cannot pace itself: 1 to 20 give 3.3-5.1k
# connections/s on the 2 shared cores with tcpcopyd running (each a SYN, a request, FIN and ACKs),
# which tcpcopyd replays as they come (the target's last request within 0.6 s of online's); 50 for
# 15 s (5.4k/s) leaves it behind by 15 s, a load it does not keep up with.
LIVE_AB_CONCURRENCY = 10
LIVE_AB_REQUESTS = 20000


def test_live_ab_short_connections_with_client_ports_coming_back(rig: ReplicationRig) -> None:
    """ab from one address with the client's ephemeral ports narrowed to 40000-40999 (each port
    back every few hundred connections): >= 99.9 % of the requests replicated. Shedding is off: this
    is about ports coming back, and a slower machine than ours must not turn it into the overload
    test (test_an_overload_sheds_new_sessions_and_completes_the_ones_it_started)."""
    rig.tcpcopyd_args = (*rig.tcpcopyd_args, "--shed-lag", "0")
    rig.start(services=False)
    kernel_before = kernel_counters(rig.lab, "target")
    with port_range(rig.lab, "client", 40000, 40999):
        load = ab(rig.lab, "client", URL, concurrency=LIVE_AB_CONCURRENCY, requests=LIVE_AB_REQUESTS)
    settled = _settled_figures(rig, time.monotonic(), LIVE_SETTLE_LIMIT)
    counters = _rewrite_totals(rig)
    online, target = rig.nginx["online"].log.summary(), rig.nginx["target"].log.summary()
    share = _show(f"live ab -c{LIVE_AB_CONCURRENCY} -n{LIVE_AB_REQUESTS}, client ports 40000-40999",
                  online, target, settled, counters,
                  counters_delta(kernel_before, kernel_counters(rig.lab, "target")),
                  f"ab: {load.complete:,} complete, {load.failed} failed in {load.duration_s:.2f} s "
                  f"({load.rate:,.0f}/s)")
    got, expected, ports = target.ok, online.ok, len(online.by_client)
    assert expected == LIVE_AB_REQUESTS, f"ab's requests did not all reach the online nginx: {load.output}"
    assert ports <= 1000, "the client's port range was not narrowed"
    assert share >= 99.9, f"{got:,} of {expected:,} requests reached the target"


# ab's concurrency for the overload: 50 connections at a time from one address are more short
# connections per second than tcpcopyd replays on these 2 shared cores (issue 13: 1.4 % replicated,
# the rest lost in handshakes that came too late); with shedding, the sessions it starts complete.
OVERLOAD_AB_CONCURRENCY = 20
OVERLOAD_AB_SECONDS = 5


def test_an_overload_sheds_new_sessions_and_completes_the_ones_it_started(rig: ReplicationRig) -> None:
    """ab -c20 for 5 s: the workers fall behind their capture, shed new sessions at their SYN
    (counted), and >= 99.9 % of the requests of the sessions they did not shed reach the target.
    One worker and a 0.1 s bound: since the hot path is compiled, two workers keep up with this load
    on our 2 cores (CI5: 59,014 of 59,014, nothing shed), so the overload is made, not hoped for."""
    rig.tcpcopyd_args = (*rig.tcpcopyd_args, "--workers", "1", "--shed-lag", "0.1")
    rig.start(services=False)
    kernel_before = kernel_counters(rig.lab, "target")
    # every client port once (1024-65535 > 5 s of connections): port reuse is the other tests' subject
    with port_range(rig.lab, "client", 1024, 65535):
        load = ab(rig.lab, "client", URL, concurrency=OVERLOAD_AB_CONCURRENCY, seconds=OVERLOAD_AB_SECONDS)
    settled = _settled_figures(rig, time.monotonic(), LIVE_SETTLE_LIMIT)
    counters = _rewrite_totals(rig)
    online, target = rig.nginx["online"].log.summary(), rig.nginx["target"].log.summary()
    shed = counters.get("sessions_shed", 0)
    share = _show(f"live ab -c{OVERLOAD_AB_CONCURRENCY} -t{OVERLOAD_AB_SECONDS} (overload)", online, target,
                  settled, {**counters, "sessions_shed": shed},
                  counters_delta(kernel_before, kernel_counters(rig.lab, "target")),
                  f"ab: {load.complete:,} complete, {load.failed} failed in {load.duration_s:.2f} s "
                  f"({load.rate:,.0f}/s); {shed:,} sessions shed")
    assert shed > 0, "the load was expected to overload tcpcopyd (nothing was shed)"
    # the sessions not shed are the ones started (one request per ab connection); online minus shed
    # would miss that a SYN the client sent again is shed again
    kept = counters["sessions_started"]
    assert target.ok >= 0.999 * kept, f"{target.ok:,} of the {kept:,} requests not shed ({share:.2f} % of all)"
