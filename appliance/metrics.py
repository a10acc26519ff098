"""Prometheus text endpoint, served from the supervisor's loop (no thread).

Off unless `metrics_listen` is set. Each scrape is answered from the same cached rows that
`tcpcopyctl status` shows: every integer counter of every child becomes
`tcpcopy_<role>_<counter>` with labels `index` (and `errno` for send errors).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from appliance.observe import GAUGES

log = logging.getLogger(__name__)

REQUEST_LIMIT = 8192
CLIENT_TIMEOUT = 0.2


class _RowsCollector:
    def __init__(self, rows: Callable[[], list[dict]]) -> None:
        self._rows = rows

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for row in self._rows():
            index = str(row["index"])
            counters = dict(row["counters"])
            # a rewrite worker's channel from interceptd keeps the names the responses relay had
            for key, value in counters.pop("response_channel", {}).items():
                counters[("responses", key)] = value
            for name, value in counters.items():
                role, name = name if isinstance(name, tuple) else (row["role"], name)
                metric = f"tcpcopy_{role}_{name}"
                if isinstance(value, bool):
                    continue
                if isinstance(value, int):
                    fam = families.get(metric)
                    if fam is None:
                        fam = families[metric] = (GaugeMetricFamily(metric, name, labels=["index"])
                                                  if name in GAUGES else
                                                  CounterMetricFamily(metric, name, labels=["index"]))
                    fam.add_metric([index], value)
                elif isinstance(value, dict):
                    fam = families.get(metric)
                    if fam is None:
                        fam = families[metric] = CounterMetricFamily(metric, name, labels=["index", "errno"])
                    for key, count in value.items():
                        fam.add_metric([index, str(key)], count)
            for name, value in (("up", 1 if row["pid"] else 0), ("restarts", row["restarts"])):
                metric = f"tcpcopy_child_{name}"
                fam = families.get(metric)
                if fam is None:
                    fam = families[metric] = GaugeMetricFamily(metric, name, labels=["role", "index"])
                fam.add_metric([row["role"], index], value)
        yield from families.values()


class MetricsServer:
    """A listening socket the supervisor polls; each ready accept gets one scrape answered."""

    def __init__(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, int(port)))
        self.sock.listen(16)
        self.sock.setblocking(False)
        log.info("metrics on http://%s/metrics", listen)

    def fileno(self) -> int:
        return self.sock.fileno()

    def serve(self, rows: Callable[[], list[dict]]) -> None:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(CLIENT_TIMEOUT)
            try:
                request = conn.recv(REQUEST_LIMIT)
                if not request.startswith(b"GET "):
                    conn.sendall(b"HTTP/1.0 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                    return
                registry = _Registry(_RowsCollector(rows))
                body = generate_latest(registry)   # type: ignore[arg-type]
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: " + CONTENT_TYPE_LATEST.encode()
                             + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            except OSError:
                pass                     # a scraper that went away or is too slow: next scrape

    def close(self) -> None:
        self.sock.close()


class _Registry:
    """The minimal registry interface generate_latest needs: one collector."""

    def __init__(self, collector: _RowsCollector) -> None:
        self._collector = collector

    def collect(self) -> Iterator[Metric]:
        return self._collector.collect()
