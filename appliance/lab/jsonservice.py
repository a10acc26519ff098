"""A small HTTP/JSON order service for the lab, and a client that drives it.

    python -m appliance.lab.jsonservice serve --bind IP --port 8090 --store FILE
    python -m appliance.lab.jsonservice client --server IP:PORT --orders 1000 --conns 20

The service keeps orders in memory and appends every order it accepts to FILE as one JSON line
(what it received, nothing it computed), so the online and the target stores can be compared.
POST /orders with {"id", "item", "qty"} answers 201 and the stored order; GET /orders/ID answers
200 or 404; anything else 404. HTTP/1.1 keep-alive, Content-Length bodies only.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import random
import signal
import sys
import time
from pathlib import Path

MAX_BODY = 1 << 20


class OrderService:
    def __init__(self, store: Path) -> None:
        self.orders: dict[str, dict] = {}
        self.file = open(store, "a", buffering=1)

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        if method == "POST" and path == "/orders":
            try:
                order = json.loads(body)
                key = str(order["id"])
                record = {"id": key, "item": str(order["item"]), "qty": int(order["qty"])}
            except (ValueError, KeyError, TypeError):
                return 400, {"error": "expected {id, item, qty}"}
            self.orders[key] = record
            self.file.write(json.dumps(record, sort_keys=True) + "\n")
            return 201, record
        if method == "GET" and path.startswith("/orders/"):
            found = self.orders.get(path[len("/orders/"):])
            return (200, found) if found else (404, {"error": "no such order"})
        return 404, {"error": "not found"}


class _Conn(asyncio.Protocol):
    def __init__(self, service: OrderService) -> None:
        self.service = service
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].decode("latin-1").split("\r\n")
            parts = head[0].split(" ")
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
            length = int(headers.get("content-length", "0") or 0)
            if len(parts) != 3 or length > MAX_BODY:
                self.transport.close()
                return
            if len(self.buf) < head_end + 4 + length:
                return
            body = self.buf[head_end + 4:head_end + 4 + length]
            self.buf = self.buf[head_end + 4 + length:]
            status, obj = self.service.handle(parts[0], parts[1], body)
            out = json.dumps(obj).encode()
            close = headers.get("connection", "").lower() == "close"
            self.transport.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: "
                                 f"{len(out)}\r\n{'Connection: close' + chr(13) + chr(10) if close else ''}\r\n"
                                 .encode() + out)
            if close:
                self.transport.close()
                return


async def serve(bind: str, port: int, store: Path) -> None:
    service = OrderService(store)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Conn(service), bind, port, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"LISTENING {bind}:{port}", flush=True)
    await stop.wait()
    server.close()
    service.file.close()


def client(server: str, orders: int, conns: int, seed: int) -> dict:
    """Place `orders` orders over `conns` keep-alive connections, reading some back."""
    host, _, port = server.rpartition(":")
    rng = random.Random(seed)
    ok = errors = 0
    started = time.monotonic()
    per_conn = -(-orders // conns)
    for c in range(conns):
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        for i in range(per_conn):
            n = c * per_conn + i
            if n >= orders:
                break
            order = {"id": f"{seed}-{n}", "item": rng.choice(["disk", "cpu", "ram", "nic"]),
                     "qty": rng.randint(1, 99)}
            conn.request("POST", "/orders", json.dumps(order), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            ok += resp.status == 201
            errors += resp.status != 201
            if i % 5 == 4:
                conn.request("GET", f"/orders/{seed}-{n}")
                resp = conn.getresponse()
                resp.read()
                errors += resp.status != 200
        conn.close()
    return {"orders": orders, "ok": ok, "errors": errors, "elapsed": round(time.monotonic() - started, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m appliance.lab.jsonservice")
    sub = ap.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--bind", required=True)
    s.add_argument("--port", type=int, default=8090)
    s.add_argument("--store", type=Path, required=True)
    c = sub.add_parser("client")
    c.add_argument("--server", required=True)
    c.add_argument("--orders", type=int, default=1000)
    c.add_argument("--conns", type=int, default=20)
    c.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    if args.mode == "serve":
        asyncio.run(serve(args.bind, args.port, args.store))
        return 0
    summary = client(args.server, args.orders, args.conns, args.seed)
    print(json.dumps(summary))
    return 0 if summary["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
