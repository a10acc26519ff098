"""interceptd's loop, on the assistant host: capture the target's answers, publish their headers.

One process. Captures with a small snaplen in immediate mode (the answers' headers are on the
critical path of every request turn); an answer waits at most COALESCE (0.2 ms) for others to
share its batch, which saves a worker's wake-up per answer at moderate rates. Keeps IP+TCP
headers with options and the original IP total length, and publishes them on an XPUB socket
to which every rewrite worker of every tcpcopyd subscribes with its shard's topic: each batch is
split per shard (appliance/interceptd/shardsplit.py), so a worker receives only its own clients' answers
and no process on the online host relays them. Each batch carries this instance's random id and
a sequence number per topic so subscribers count losses.

Compare mode (`compare = true`, issue 16): the capture keeps whole answers (the headers path is
unchanged: workers still get IP+TCP headers only), and while some worker subscribes to a turn topic
every answer also goes to a turn assembler (appliance/interceptd/turnfeed.py), whose turns are
published per shard on the b"T" topics next to the headers. With compare off, or on with nobody
comparing, each frame takes exactly the code path it took before compare mode existed.

Whatever the capture delivers, the pcap callback never raises (an exception would leave
libpcap's dispatch and end interceptd): a frame that is not one whole IPv4/TCP header is counted
(`not_ip`, `malformed`), and anything unforeseen is counted as `unexpected`, its traceback logged once.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import time
from collections.abc import Callable
from typing import Any

import pcap
import zmq

from appliance.compare.turns import AssemblerCounters
from appliance.config.loader import InterceptConfig
from appliance.core import wire
from appliance.core.packet import frame_ip, server_key_of, tcp_headers_of
from appliance.host import curvekeys
from appliance.interceptd.shardsplit import ShardSplitter
from appliance.interceptd.turnfeed import TurnFeed

log = logging.getLogger(__name__)

POLL_MS = 100
COALESCE = 0.0002        # seconds an answer may wait for others to share its batch (one wake-up downstream)
SUMMARY_INTERVAL = 30.0
STATS_INTERVAL = 1.0
PUB_HWM = 100_000
FLUSH_LINGER_MS = 500    # at exit, the flushed turns may take this long to leave (else linger 0)


class Intercept:
    def __init__(self, config: InterceptConfig) -> None:
        self.config = config
        self.instance = int.from_bytes(os.urandom(4), "big")
        self.stopping = False
        self.captured = 0
        self.split = ShardSplitter(self.instance)
        self.feed = TurnFeed(self.instance, config.compare) if config.compare is not None else None
        self.turn_batches = 0
        self.not_ip = 0
        self.malformed = 0
        self.unexpected = 0
        self.batches = 0
        self.kernel_drops = 0
        self.subscribers = 0
        self.started = time.time()
        self.handles: list[pcap.pcap] = []
        self.checker: curvekeys.KeyChecker | None = None
        self._warned_compare_off = False

    def counters(self) -> dict[str, Any]:
        try:
            self.kernel_drops = sum(h.stats()[1] for h in self.handles)
        except OSError:
            pass
        checker = self.checker
        split = self.split
        feed = self.feed
        turns = feed.split if feed is not None else ShardSplitter(0, wire.KIND_TURNS)    # compare off: zeros
        asm = feed.counters if feed is not None else AssemblerCounters()
        return {"captured": self.captured, "published": split.published, "not_ip": self.not_ip,
                "malformed": self.malformed, "unexpected": self.unexpected, "batches": self.batches,
                "kernel_drops": self.kernel_drops,
                "no_subscriber": split.unsubscribed,
                "subscriptions_refused": split.refused_subscriptions + turns.refused_subscriptions,
                "shard_counts": len(split.counts),
                "subscribers": self.subscribers, "keys_accepted": checker.accepted if checker else 0,
                "keys_refused": checker.refused if checker else 0,
                "turn_segments": asm.segments, "turns": asm.turns_emitted, "turns_published": turns.published,
                "turn_batches": self.turn_batches, "turns_no_subscriber": turns.unsubscribed,
                "turns_unencodable": feed.unencodable if feed is not None else 0,
                "turns_incomplete": asm.incomplete_turns, "turn_shard_counts": len(turns.counts),
                "turn_flows": len(feed.assembler) if feed is not None else 0,
                "turn_flows_created": asm.flows_created, "turn_flows_evicted": asm.flows_evicted,
                "turn_flows_expired": asm.flows_expired, "turn_gaps": asm.gaps,
                "turn_short_captures": asm.short_captures, "turn_retransmitted_bytes": asm.retransmitted_bytes,
                "turn_late_data": asm.late_data, "turn_after_close": asm.after_close}

    def _stats_frame(self) -> bytes:
        return wire.encode_json(wire.KIND_STATS, {
            "role": "interceptd", "instance": f"{self.instance:08x}", "pid": os.getpid(),
            "time": time.time(), "started": self.started, "filter": self.config.bpf,
            "interfaces": list(self.config.interfaces), "counters": self.counters()})

    def _on_monitor(self, monitor: zmq.Socket) -> None:
        """Count subscriber connections from the PUB socket's monitor events."""
        from zmq.utils.monitor import recv_monitor_message
        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_ACCEPTED:
                self.subscribers += 1
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self.subscribers = max(0, self.subscribers - 1)

    def _open(self, interface: str) -> pcap.pcap:
        c = self.config
        handle = pcap.pcap(name=interface, snaplen=c.snaplen, promisc=False, timeout_ms=1, immediate=True,
                           timestamp_in_ns=True, buffer_size=c.buffer_bytes)
        handle.setfilter(c.bpf)
        handle.setnonblock(True)
        return handle

    def _on_frame(self, ts_ns: int, frame: bytes, datalink: int) -> None:
        """libpcap's callback for every captured frame (live, or a file in the fuzz tests). Never raises."""
        try:
            ip = frame_ip(datalink, frame)
            if ip is None:
                self.not_ip += 1
                return
            header = tcp_headers_of(ip)
            key = None if header is None else server_key_of(header)
            if header is None or key is None:
                self.malformed += 1
                return
            self.captured += 1
            self.split.add(ts_ns, header, key[0], key[1])
        except Exception:
            # Decision: a broad catch, because this is an entry point (called from libpcap's C loop),
            # where an exception would stop interceptd: counted, and the first one logged in full.
            self._unexpected()

    def _on_answer(self, ts_ns: int, frame: bytes, datalink: int) -> None:
        """libpcap's callback in compare mode while some worker compares: `_on_frame`'s work, and the
        whole answer into the turn feed. Never raises.

        Decision: a copy of `_on_frame` plus the feed's line, chosen once per dispatch, so that the
        frames of an interceptd nobody compares with run exactly the code they ran before."""
        try:
            ip = frame_ip(datalink, frame)
            if ip is None:
                self.not_ip += 1
                return
            header = tcp_headers_of(ip)
            key = None if header is None else server_key_of(header)
            if header is None or key is None:
                self.malformed += 1
                return
            self.captured += 1
            self.split.add(ts_ns, header, key[0], key[1])
            if self.feed is not None:
                self.feed.segment(ts_ns, ip, len(header))
        except Exception:
            # Decision: a broad catch, as in `_on_frame` (an entry point called from libpcap's C loop).
            self._unexpected()

    def _unexpected(self) -> None:
        self.unexpected += 1
        if self.unexpected == 1:
            log.exception("interceptd: a captured frame raised; counted as unexpected (logged once)")

    def feed_file(self, path: str) -> int:
        """Every frame of a capture file through the callback the live capture would use (`_on_frame`,
        or `_on_answer` while a worker compares), as libpcap delivers them; the number of frames. For
        the fuzz runs and tests."""
        handle = pcap.pcap(name=path, timestamp_in_ns=True)
        return handle.dispatch(-1, self._callback(), handle.datalink())

    def _callback(self) -> Callable[[int, bytes, int], None]:
        """The frame callback for the next dispatch: the turn feed's only while a worker compares."""
        return self._on_answer if self.feed is not None and self.feed.active else self._on_frame

    def publisher(self, ctx: zmq.Context) -> zmq.Socket:
        """The XPUB the answers go out on (not yet bound; CURVE, when configured, is set after)."""
        pub = ctx.socket(zmq.XPUB)
        pub.linger = 0
        pub.sndhwm = PUB_HWM
        pub.setsockopt(zmq.MAXMSGSIZE, wire.MAX_SUBSCRIBER_MESSAGE)   # it receives subscriptions only
        return pub

    def run(self) -> int:
        """interceptd's process: open the captures, bind the XPUB, drop root, turn the loop until
        SIGTERM or SIGINT, then close everything. The exit code."""
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        c = self.config
        self.handles = [self._open(i) for i in c.interfaces]
        ctx = zmq.Context()
        pub = self.publisher(ctx)
        if c.secret_key:
            self.checker = curvekeys.KeyChecker(ctx, c.authorized_keys)
            curvekeys.make_server(pub, c.secret_key)
        checker = self.checker
        monitor = pub.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        pub.bind(f"tcp://{c.bind}:{c.port}")
        if c.user:
            from appliance.host.privileges import drop_to
            drop_to(c.user)          # captures open, socket bound: root is no longer needed
        log.info("interceptd %08x on %s, filter %r, publishing on tcp://%s:%d (%s)", self.instance,
                 ",".join(c.interfaces), c.bpf, c.bind, c.port,
                 "CURVE, keys from " + c.authorized_keys if c.secret_key else "plaintext, anyone may subscribe")
        if c.compare is not None:
            log.info("interceptd compare mode: whole answers captured (snaplen %d, ring %d MiB per interface); "
                     "turns with their first %d bytes published to the workers that subscribe to them",
                     c.snaplen, c.buffer_bytes >> 20, c.compare.head_bytes)
        log.debug("interceptd configuration %s", c)
        self.attach(pub, monitor)
        linger = 0
        try:
            while not self.stopping:
                self.turn()
            if self.flush():
                linger = FLUSH_LINGER_MS
        finally:
            log.info("interceptd exiting, counters %s", self.counters())
            pub.disable_monitor()
            monitor.close(linger=0)
            pub.close(linger=linger)
            if checker is not None:
                checker.stop()
            ctx.term()
        return 0

    def attach(self, pub: zmq.Socket, monitor: zmq.Socket) -> None:
        """Set up the loop on the bound XPUB, its monitor (accepted and disconnected events), the
        key checker, if any, and `handles`, the open captures. Called by `run`; a test passes
        inproc sockets and stand-ins for the captures (datalink, dispatch, fileno, stats), and
        turns the loop itself. The caller keeps the sockets and closes them."""
        self.pub = pub
        self.monitor = monitor
        self.poller = zmq.Poller()
        self.poller.register(monitor, zmq.POLLIN)
        self.poller.register(pub, zmq.POLLIN)             # subscriptions of the workers
        if self.checker is not None:
            self.poller.register(self.checker.socket, zmq.POLLIN)
        for h in self.handles:
            self.poller.register(h.fileno(), zmq.POLLIN)
        self._pcap_fds = [h.fileno() for h in self.handles]
        self._next_summary = time.monotonic() + SUMMARY_INTERVAL
        self._next_stats = 0.0
        self._first_held = 0.0                 # when the oldest answer not yet published was captured

    def turn(self) -> None:
        """One turn of the loop: take what the captures hold (a full batch goes out at once), let
        held answers wait up to COALESCE for more, publish them; then, waiting at most POLL_MS,
        subscriptions, monitor events, key checks, the stats report once a second."""
        c = self.config
        pub = self.pub
        feed = self.feed
        on_frame = self._callback()
        for h in self.handles:
            dl = h.datalink()
            for _ in range(64):
                n = h.dispatch(c.batch_max, on_frame, dl)
                if self.split.pending >= c.batch_max:
                    self._publish(pub)
                if n < c.batch_max:
                    break
        if self.split.pending or (feed is not None and feed.pending):
            now = time.monotonic()
            if not self._first_held:
                self._first_held = now
            wait = self._first_held + COALESCE - now
            if wait > 0 and select.select(self._pcap_fds, [], [], wait)[0]:
                return               # more answers came within the window: take them too
            self._publish(pub)
        self._first_held = 0.0
        ready = dict(self.poller.poll(POLL_MS))
        if ready.get(self.monitor):
            self._on_monitor(self.monitor)
        if ready.get(pub):
            self._on_subscriptions(pub)
        if self.checker is not None and ready.get(self.checker.socket):
            self.checker.handle()
        now = time.monotonic()
        if now >= self._next_stats:
            self._next_stats = now + STATS_INTERVAL
            if feed is not None and feed.active:
                feed.poll(time.time_ns())             # the capture's clock: wall time
                self._publish(pub)
            pub.send_multipart((wire.STATS_TOPIC, self._stats_frame()))
        if now >= self._next_summary:
            self._next_summary = now + SUMMARY_INTERVAL
            log.info("interceptd counters %s", self.counters())

    def _publish(self, pub: zmq.Socket) -> None:
        for topic, frame in self.split.take():
            pub.send_multipart((topic, frame))   # XPUB never blocks; HWM drops show as gaps in seq
            self.batches += 1
        feed = self.feed
        if feed is not None and feed.pending:
            for topic, frame in feed.take():
                pub.send_multipart((topic, frame))
                self.turn_batches += 1

    def flush(self) -> int:
        """At exit (called by `run` after the loop's last turn): every open turn published, as if
        idle. The number of turn batches sent."""
        feed = self.feed
        if feed is None or not feed.active:
            return 0
        before = self.turn_batches
        feed.flush()
        self._publish(self.pub)
        return self.turn_batches - before

    def _on_subscriptions(self, pub: zmq.Socket) -> None:
        while True:
            try:
                message = pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.subscription(message)

    def subscription(self, message: bytes) -> None:
        """An XPUB subscription message, to the splitter of its topic's family: turn topics to the
        turn feed (refused and counted when compare mode is off), anything else to the headers'."""
        if message[1:2] != wire.TURN_TOPIC_PREFIX:
            self.split.subscription(message)
        elif self.feed is not None:
            self.feed.subscription(message)
        else:
            self.split.refused_subscriptions += 1
            if not self._warned_compare_off:
                self._warned_compare_off = True
                log.warning("interceptd: a tcpcopyd worker asks for answer turns (compare mode), but compare "
                            "is off here: its subscriptions are refused (set interceptd.compare = true)")

    def _stop(self, signum: int, frame: object) -> None:
        self.stopping = True
