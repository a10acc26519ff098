"""Prometheus text endpoint, served from the supervisor's loop (no thread, never blocking it).

Off unless `metrics_listen` is set. Each scrape is answered from the same cached rows that
`tcpcopyctl status` shows: every integer counter of every child becomes
`tcpcopy_<role>_<counter>` with labels `index` (and `errno` for send errors). Whether it is a
gauge or a counter, and its help text, come from the role's counters record
(appliance/core/counters.py); a name no record declares is exported as a counter, its help its name.
"""

from __future__ import annotations

import logging
import select
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from appliance.core import counters as records
from appliance.tcpcopyd.status import differences_of

log = logging.getLogger(__name__)

REQUEST_LIMIT = 8192       # bytes of a request read; more, or no end of headers by then, is answered anyway
CLIENT_TIMEOUT = 2.0       # seconds a connection may stay open, from accept to the last byte of the answer
MAX_CLIENTS = 64           # connections open at once
LISTEN_BACKLOG = 16
ACCEPT_REST = 1.0


def _help(role: str, name: str) -> str:
    """The record's description of a counter; its name when no record declares it."""
    return records.description(role, name) if records.kind_of(role, name) else name


class _RowsCollector:
    def __init__(self, rows: Callable[[], list[dict]]) -> None:
        self._rows = rows

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        rows = self._rows()
        for row in rows:
            index = str(row["index"])
            counters = dict(row["counters"])
            # a rewrite worker's channel from interceptd keeps the names of the totals.responses it is summed into
            for key, value in counters.pop("response_channel", {}).items():
                counters[("responses", key)] = value
            for name, value in counters.items():
                role, name = name if isinstance(name, tuple) else (row["role"], name)
                metric = f"tcpcopy_{role}_{name}"
                if isinstance(value, bool) or records.kind_of(role, name) == "info":
                    continue
                if isinstance(value, int):
                    fam = families.get(metric)
                    if fam is None:
                        fam = families[metric] = (GaugeMetricFamily(metric, _help(role, name), labels=["index"])
                                                  if records.kind_of(role, name) == "gauge" else
                                                  CounterMetricFamily(metric, _help(role, name), labels=["index"]))
                    fam.add_metric([index], value)
                elif isinstance(value, dict):
                    fam = families.get(metric)
                    if fam is None:
                        label = "errno" if name == "send_errors" else "kind"
                        fam = families[metric] = CounterMetricFamily(metric, _help(role, name),
                                                                     labels=["index", label])
                    for key, count in value.items():
                        fam.add_metric([index, str(key)], count)
            for name, value in (("up", 1 if row["pid"] else 0), ("restarts", row["restarts"])):
                metric = f"tcpcopy_child_{name}"
                fam = families.get(metric)
                if fam is None:
                    fam = families[metric] = GaugeMetricFamily(metric, name, labels=["role", "index"])
                fam.add_metric([row["role"], index], value)
        yield from families.values()
        yield from _latency_histograms(rows)


def _latency_histograms(rows: list[dict]) -> Iterator[Metric]:
    """Compare mode: how long the online server and the target took to answer, over every pair."""
    report = differences_of(rows, top=0)
    if not report["online_latency"]["total"] and not report["target_latency"]["total"]:
        return
    fam = HistogramMetricFamily("tcpcopy_compare_latency_seconds",
                                "time from a request's end to its answer's first byte, per side (compare)",
                                labels=["side"])
    for side in ("online", "target"):
        h = report[f"{side}_latency"]
        running, buckets = 0, []
        for le, n in zip([*h["buckets"], "+Inf"], h["counts"], strict=True):
            running += n
            buckets.append((str(le), running))
        fam.add_metric([side], buckets, sum_value=h["sum"])
    yield fam


@dataclass(slots=True)
class _Client:
    """One scraper's connection: reading its request, then writing the answer."""

    sock: socket.socket
    deadline: float                       # monotonic; past it the connection is closed unanswered
    request: bytearray = field(default_factory=bytearray)
    reply: memoryview | None = None       # what is left to send, once the request is complete


class MetricsServer:
    """The metrics listener and its connections, all non-blocking, behind one epoll fd.

    Runs in the supervisor's loop, which polls `fileno()` (readable whenever the listener or any
    connection is ready) and calls `serve(rows, now)` on every turn. Decision: an epoll set of our
    own instead of a thread (STYLE rule 1) or a blocking read with a timeout (one idle connection
    stalled the loop 0.2 s): a slow or idle scraper costs a few syscalls per turn, and is closed
    at its deadline (CLIENT_TIMEOUT after it connected). At most MAX_CLIENTS are open at once;
    more are closed at once (`refused`).
    """

    def __init__(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, int(port)))
        self.sock.listen(LISTEN_BACKLOG)
        self.sock.setblocking(False)
        self._epoll = select.epoll()
        self._epoll.register(self.sock.fileno(), select.EPOLLIN)
        self._clients: dict[int, _Client] = {}
        self._accept_resumes = 0.0            # after a failed accept (EMFILE) the listener rests a second
        self.served = 0
        self.timed_out = 0
        self.refused = 0
        log.info("metrics on http://%s/metrics", listen)

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port): the port the kernel chose when `listen` named port 0."""
        return self.sock.getsockname()[:2]

    def fileno(self) -> int:
        return self._epoll.fileno()

    def serve(self, rows: Callable[[], list[dict]], now: float) -> None:
        """Whatever is ready, without waiting: accepts, request bytes, answer bytes; then closes the
        connections past their deadline. `rows` is called only when an answer is due."""
        if self._accept_resumes and now >= self._accept_resumes:
            self._accept_resumes = 0.0
            self._epoll.modify(self.sock.fileno(), select.EPOLLIN)
        for fd, events in self._epoll.poll(0):
            if fd == self.sock.fileno():
                self._accept(now)
            elif fd in self._clients:
                self._on_client(self._clients[fd], events, rows)
        for client in [c for c in self._clients.values() if c.deadline <= now]:
            self.timed_out += 1
            self._close(client)

    def _accept(self, now: float) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:             # e.g. EMFILE: a ready listener would spin the loop
                log.warning("metrics: accept failed: %s; not accepting for %.0f s", exc, ACCEPT_REST)
                self._accept_resumes = now + ACCEPT_REST
                self._epoll.modify(self.sock.fileno(), 0)
                return
            if len(self._clients) >= MAX_CLIENTS:
                self.refused += 1
                conn.close()
                continue
            conn.setblocking(False)
            self._clients[conn.fileno()] = _Client(conn, now + CLIENT_TIMEOUT)
            self._epoll.register(conn.fileno(), select.EPOLLIN)

    def _on_client(self, client: _Client, events: int, rows: Callable[[], list[dict]]) -> None:
        try:
            if client.reply is None and events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                data = client.sock.recv(REQUEST_LIMIT)
                if not data:
                    self._close(client)          # went away before asking
                    return
                client.request += data
                if b"\r\n\r\n" not in client.request and len(client.request) < REQUEST_LIMIT:
                    return
                client.reply = memoryview(self._answer(bytes(client.request), rows))
                self._epoll.modify(client.sock.fileno(), select.EPOLLOUT)
            if client.reply is not None:
                client.reply = client.reply[client.sock.send(client.reply):]
                if not client.reply:
                    self.served += 1
                    self._close(client)
        except (BlockingIOError, InterruptedError):
            pass                                 # not ready after all: the next turn
        except OSError:
            self._close(client)                  # a scraper that went away: next scrape

    @staticmethod
    def _answer(request: bytes, rows: Callable[[], list[dict]]) -> bytes:
        if not request.startswith(b"GET "):
            return b"HTTP/1.0 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n"
        body = generate_latest(_Registry(_RowsCollector(rows)))   # type: ignore[arg-type]
        return (b"HTTP/1.0 200 OK\r\nContent-Type: " + CONTENT_TYPE_LATEST.encode()
                + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

    def _close(self, client: _Client) -> None:
        fd = client.sock.fileno()
        self._clients.pop(fd, None)
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass
        client.sock.close()

    def close(self) -> None:
        for client in list(self._clients.values()):
            self._close(client)
        self._epoll.close()
        self.sock.close()


class _Registry:
    """The minimal registry interface generate_latest needs: one collector."""

    def __init__(self, collector: _RowsCollector) -> None:
        self._collector = collector

    def collect(self) -> Iterator[Metric]:
        return self._collector.collect()
