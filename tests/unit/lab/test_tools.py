"""The lab's real-tool helpers without a lab: nginx's configuration and access log, and what wrk,
ab and tcpdump print, parsed."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.lab.nginx import AccessLog, config
from appliance.lab.tools import STATS, ToolError, ab, parse_ab, parse_wrk

WRK = """Running 1s test @ http://198.18.0.2:8080/
  1 threads and 20 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   290.43us  202.19us   4.13ms   98.15%
    Req/Sec    55.86k     1.59k   57.96k    70.00%
  Latency Distribution
     50%  271.00us
     99%  805.00us
  55575 requests in 1.01s, 7.95MB read
Requests/sec:  55282.83
Transfer/sec:      7.91MB
"""

AB = """Concurrency Level:      5
Time taken for tests:   0.190 seconds
Complete requests:      2000
Failed requests:        7
   (Connect: 0, Receive: 7, Length: 0, Exceptions: 0)
Non-2xx responses:      3
Total transferred:      290000 bytes
Requests per second:    10549.08 [#/sec] (mean)
"""


def test_wrk_summary_with_and_without_errors() -> None:
    clean = parse_wrk(WRK)
    assert (clean.requests, clean.duration_s, clean.errors) == (55575, 1.01, 0)
    errors = "  Socket errors: connect 1, read 2, write 3, timeout 4\n  Non-2xx or 3xx responses: 5\n"
    failing = parse_wrk(WRK.replace("Requests/sec", errors + "Requests/sec").replace("in 1.01s", "in 2.00m"))
    assert (failing.connect_errors, failing.read_errors, failing.write_errors,
            failing.timeouts) == (1, 2, 3, 4)
    assert failing.errors == 15 and failing.duration_s == 120.0
    with pytest.raises(ToolError):
        parse_wrk("unable to connect to 198.18.0.2:8081 Connection refused")


def test_ab_summary_and_refusals() -> None:
    result = parse_ab(AB)
    assert (result.complete, result.failed, result.non_2xx, result.duration_s) == (2000, 7, 3, 0.19)
    assert result.ok == 1990
    with pytest.raises(ToolError):
        parse_ab("apr_socket_recv: Connection reset by peer (104)", 1)
    with pytest.raises(ValueError):
        ab(None, "client", "http://x/", 1)         # type: ignore[arg-type]  # neither -n nor -t


def test_tcpdump_figures_on_sigusr1_and_at_exit() -> None:
    usr1 = "tcpdump: 284015 packets captured, 284272 packets received by filter, 0 packets dropped by kernel"
    final = "1 packet captured\n1 packet received by filter\n2 packets dropped by kernel\n"
    assert STATS.findall(usr1) == [("284015", "284272", "0")]
    assert STATS.findall(final) == [("1", "1", "2")]


def test_nginx_configuration_keeps_everything_in_its_directory(tmp_path: Path) -> None:
    text = config(tmp_path, "198.18.0.3", 8080)
    for line in ("daemon off;", "worker_processes 1;", f"pid {tmp_path}/nginx.pid;",
                 "listen 198.18.0.3:8080 backlog=65535;", "keepalive_requests 1000000;",
                 f"access_log {tmp_path}/access.log tc", f"client_body_temp_path {tmp_path}/body;"):
        assert line in text
    assert "/var/" not in text and "/etc/" not in text
    assert "access_log off;" in config(tmp_path, "198.18.0.3", 8080, access_log=False)


def test_access_log_counts_what_was_appended_and_sums_per_client(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(path)
    assert log.count() == 0
    path.write_text('198.18.0.1:40000 1 1 41 1700000000.100 "GET / HTTP/1.1" 200\n'
                    '198.18.0.1:40000 1 2 41 1700000000.200 "GET / HTTP/1.1" 200\n')
    assert log.count() == 2
    with open(path, "a") as f:
        f.write('198.18.0.1:40002 2 1 0 1700000001.500 "-" 400\nnot a tc line\n')
    assert log.count() == 4
    s = log.summary()
    assert (s.requests, s.ok, s.unparsed, s.connections) == (3, 2, 1, 2)
    assert s.by_client[("198.18.0.1", 40000)] == 2 and s.by_ip["198.18.0.1"] == 3
    assert (s.first_msec, s.last_msec) == (1700000000.1, 1700000001.5)
    assert log.summary(skip=2).requests == 1
