"""PostgreSQL through the replicator: a turn-taking protocol whose handshake breaks if pipelined (G6).

libpq (sslmode=prefer, the default) sends an SSLRequest and must wait for the server's one-byte
'N' before its StartupMessage; the original tcpcopy's no-wait mode pushed both and lost half the
sessions. Ours holds every turn for the target's answer, so pgbench's history matches exactly.
"""

from __future__ import annotations

import pytest

from appliance.lab.postgres import PG_PORT, pg_bindir
from appliance.lab.rig import ReplicationRig

pytestmark = [pytest.mark.lab,
              pytest.mark.skipif(pg_bindir() is None, reason="PostgreSQL server not installed")]

HISTORY = "select count(*), coalesce(sum(delta), 0) from pgbench_history"


def test_pgbench_replays_exactly_with_ssl_negotiation(lab, clusters, tmp_path):
    online, target = clusters
    rig = ReplicationRig(lab, tmp_path / "rig", port=PG_PORT)
    try:
        rig.start(services=False)
        # paced: the replay keeps up, so every turn (SSLRequest -> 'N' -> StartupMessage ...) waits
        run = online.client("pgbench", "-c", "4", "-T", "4", "-R", "40", "-n", "postgres",
                            from_host="client", timeout=60)
        assert "number of failed transactions: 0" in run.stdout, run.stdout
        expected, got = online.wait_same(target, HISTORY)
        assert int(expected.split("|")[0]) > 50, run.stdout[-500:]
        assert got == expected, f"target history {got} != online {expected}"
        rewrite = rig.fresh_status()["totals"]["rewrite"]
        assert rewrite["turns_waited"] > 0
        assert rewrite["turns_lagged"] == 0, "at this rate every turn waits for the target's answer"
        # flat out: sessions faster than the answer loop fall back to pipelining past max_lag,
        # which PostgreSQL accepts once the session is started; the history still matches
        run = online.client("pgbench", "-c", "8", "-T", "8", "-n", "postgres", from_host="client", timeout=60)
        assert "number of failed transactions: 0" in run.stdout, run.stdout
        expected, got = online.wait_same(target, HISTORY)
        assert got == expected, f"target history {got} != online {expected}"
        rewrite = rig.fresh_status()["totals"]["rewrite"]
        assert rewrite["sessions_reset_by_target"] == 0 and rewrite["handshake_timeouts"] == 0
        assert rewrite["sessions_started"] == rewrite["sessions_established"] >= 8   # pgbench adds one per run
    finally:
        rig.close()
