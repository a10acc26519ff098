"""appliance.compare.tracker: a rewrite worker's comparison of one connection's answers, from the
captured client data, the online answers and the target's turns, to judged pairs (no sockets)."""

from __future__ import annotations

from appliance.compare.tracker import Comparer
from appliance.compare.verdict import Diff
from appliance.core.counters import CompareCounters
from tests.unit.compare.kit import CLIENT, MS, http_answer, replay


def test_identical_answers_are_all_equal():
    comparer = Comparer()
    answers = [http_answer(body=b"a" * 10), http_answer(body=b"b" * 2000), http_answer(status=404, body=b"")]
    replay(comparer, ["/a", "/b", "/c"], answers, answers)
    counters = comparer.counters()
    assert counters["compared"] == 3 and counters["equal"] == 3
    assert counters["online_turns"] == 3 and counters["target_turns"] == 3
    assert comparer.comparisons() == []


def test_only_the_path_answered_differently_is_flagged_with_its_request():
    comparer = Comparer()
    online = [http_answer(body=b"ok"), http_answer(body=b"ok"), http_answer(body=b"ok")]
    target = [http_answer(body=b"ok"), http_answer(status=500, reason="Oops", body=b"ok"), http_answer(body=b"ok")]
    replay(comparer, ["/a", "/x?id=7", "/b"], online, target)
    differing = comparer.comparisons()
    assert len(differing) == 1
    c = differing[0]
    assert c.diff & Diff.STATUS and (c.method, c.path) == ("GET", "/x")
    assert (c.online.status, c.target.status) == (200, 500)
    assert comparer.counters()["different_status"] == 1 and comparer.counters()["equal"] == 2
    assert [(g.method, g.path) for g in comparer.report.top(5)] == [("GET", "/x")]


def test_a_slower_target_shows_in_the_latency():
    comparer = Comparer()
    answers = [http_answer(body=b"x")] * 2
    replay(comparer, ["/slow", "/slow"], answers, answers, target_delay_ms=50)
    differing = comparer.comparisons()
    assert len(differing) == 2 and all(c.diff == Diff.LATENCY for c in differing)
    assert all(c.target.latency_ns == 50 * MS and c.online.latency_ns == MS for c in differing)
    assert comparer.info()["target_latency"]["total"] == 2


def test_a_new_connection_on_the_same_port_pairs_with_its_own_turns():
    comparer = Comparer()
    replay(comparer, ["/a"], [http_answer(body=b"1")], [http_answer(body=b"1")])
    replay(comparer, ["/a"], [http_answer(body=b"2")], [http_answer(body=b"2")])
    assert comparer.counters()["equal"] == 2 and comparer.counters()["unpaired_online"] == 0


def test_target_turns_of_unknown_connections_wait_and_are_bounded():
    comparer = Comparer(max_connections=4)
    for port in range(10):
        client = (CLIENT[0], 41000 + port)
        replay(comparer, ["/a"], [http_answer()], [http_answer()], client=client)
    assert comparer.counters()["equal"] == 10
    assert comparer.counters()["connections_evicted"] == 6


def test_the_counters_are_the_declared_ones():
    names = set(CompareCounters.__dataclass_fields__)
    assert set(Comparer().counters()) == names - {"differences_written", "differences_not_written"}
