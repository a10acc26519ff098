"""A bad link for the lab, where the kernel has no netem: loss, delay, jitter (hence reordering).

    python -m appliance.lab.impair --a IF_A --b IF_B [--loss 0.01] [--delay-ms 10] [--jitter-ms 10]

Runs in a namespace of its own between the target and the lab bridge (see `splice`), relaying
every Ethernet frame between two interfaces with AF_PACKET sockets: each frame is dropped with
probability `loss`, else sent on after `delay + uniform(0, jitter)` ms, so frames overtake each
other. Stops on SIGTERM; prints one JSON line of counts.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import select
import signal
import socket
import subprocess
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def relay(a: str, b: str, loss: float, delay: float, jitter: float, seed: int) -> dict:
    rng = random.Random(seed)
    socks = {}
    for name in (a, b):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((name, 0))
        s.setblocking(False)
        socks[name] = s
    other = {a: socks[b], b: socks[a]}
    queue: list[tuple[float, int, socket.socket, bytes]] = []
    counts = {"frames": 0, "dropped": 0, "sent": 0, "reordered": 0}
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    last_due = 0.0
    tie = 0
    while not stop[0]:
        timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else 0.1
        ready, _, _ = select.select(list(socks.values()), [], [], min(timeout, 0.1))
        now = time.monotonic()
        for name, s in socks.items():
            if s not in ready:
                continue
            while True:
                try:
                    frame, addr = s.recvfrom(65535)
                except BlockingIOError:
                    break
                if addr[2] == PACKET_OUTGOING:
                    continue
                counts["frames"] += 1
                if rng.random() < loss:
                    counts["dropped"] += 1
                    continue
                due = now + delay + rng.uniform(0, jitter)
                if due < last_due:
                    counts["reordered"] += 1
                last_due = max(last_due, due)
                tie += 1
                heapq.heappush(queue, (due, tie, other[name], frame))
        while queue and queue[0][0] <= time.monotonic():
            _, _, out, frame = heapq.heappop(queue)
            try:
                out.send(frame)
                counts["sent"] += 1
            except OSError:
                counts["dropped"] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m appliance.lab.impair")
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--loss", type=float, default=0.01)
    ap.add_argument("--delay-ms", type=float, default=10.0)
    ap.add_argument("--jitter-ms", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    print("RELAYING", flush=True)
    counts = relay(args.a, args.b, args.loss, args.delay_ms / 1000, args.jitter_ms / 1000, args.seed)
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())


class BadLink:
    """Splices the relay between the target and the lab bridge; `restore` puts the link back."""

    def __init__(self, lab, loss: float = 0.01, delay_ms: float = 10.0, jitter_ms: float = 10.0) -> None:  # type: ignore[no-untyped-def]
        from appliance.lab.netns import _run
        self.lab, self.run = lab, _run
        self.ns = f"{lab.prefix}-imp"
        self.args = ["--loss", str(loss), "--delay-ms", str(delay_ms), "--jitter-ms", str(jitter_ms)]
        self.proc: subprocess.Popen | None = None

    def splice(self) -> None:
        run, br, ns = self.run, self.lab.bridge_namespace, self.ns
        run(["ip", "netns", "add", ns])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "-n", br, "link", "set", "target", "nomaster"])
        run(["ip", "-n", br, "link", "set", "target", "netns", ns])
        run(["ip", "-n", ns, "link", "add", "uplink", "type", "veth", "peer", "name", "imp0", "netns", br])
        run(["ip", "-n", br, "link", "set", "imp0", "master", "br0", "up"])
        for ns_name, dev in ((ns, "target"), (ns, "uplink"), (br, "imp0"), (self.lab.namespace("target"), "eth0")):
            run(["ip", "netns", "exec", ns_name, "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off"])
            run(["ip", "-n", ns_name, "link", "set", dev, "promisc", "on", "up"])
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "appliance.lab.impair",
                                      "--a", "target", "--b", "uplink", *self.args], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if not self.proc.stdout.readline().startswith("RELAYING"):
            raise RuntimeError("the impairment relay did not start")

    def restore(self) -> dict:
        counts: dict = {}
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            out, _ = self.proc.communicate(timeout=10)
            counts = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
        run, br, ns = self.run, self.lab.bridge_namespace, self.ns
        run(["ip", "-n", ns, "link", "set", "target", "netns", br], check=False)
        run(["ip", "-n", br, "link", "set", "target", "master", "br0", "up"], check=False)
        run(["ip", "-n", br, "link", "del", "imp0"], check=False)
        run(["ip", "netns", "del", ns], check=False)
        return counts
