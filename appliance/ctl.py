"""tcpcopyctl: ask a running tcpcopyd for its status, or tell it to stop.

Exit codes of `status` follow LSB: 0 running, 3 not running, 4 unknown/unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid

import zmq

from appliance import wire
from appliance.config import DEFAULT_RUN_DIR
from appliance.control import Request, decode_reply, encode_request

LSB_RUNNING = 0
LSB_NOT_RUNNING = 3
LSB_UNKNOWN = 4


def call(run_dir: str, command: str, args: dict | None = None, timeout: float = 2.0) -> dict | None:
    """One request/reply; None when nobody answered in time."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.linger = 0
    try:
        sock.connect(wire.control_endpoint(run_dir))
        sock.send(encode_request(Request(uuid.uuid4().hex[:8], command, args or {})))
        if not sock.poll(int(timeout * 1000)):
            return None
        return decode_reply(sock.recv())
    finally:
        sock.close(linger=0)
        ctx.term()


def format_status(data: dict) -> str:
    sup = data["supervisor"]
    lines = [f"tcpcopyd pid {sup['pid']}  {sup['state']}  up {sup['uptime']:.0f}s  "
             f"transfers {data['config']['transfers']}  intercepts {','.join(data['config']['intercepts'])}", "",
             f"{'ROLE':<10} {'IDX':>3} {'PID':>7} {'STATE':<9} {'CPUS':<6} {'RESTARTS':>8} {'HB AGE':>7}"]
    for ch in data["children"]:
        age = "-" if ch["heartbeat_age"] is None else f"{ch['heartbeat_age']:.1f}s"
        cpus = ",".join(str(c) for c in ch["cpus"]) or "any"
        lines.append(f"{ch['role']:<10} {ch['index']:>3} {ch['pid'] or '-':>7} {ch['state']:<9} {cpus:<6} "
                     f"{ch['restarts']:>8} {age:>7}")
    lines += ["", "loss funnel:"]
    for name, value in data["funnel"].items():
        lines.append(f"  {name:<28} {value:>12}")
    rew = data["totals"].get("rewrite", {})
    drops = {k: v for k, v in rew.items() if v and k in (
        "client_no_session", "client_late", "capture_gaps", "buffer_overflows", "resync_bytes_dropped",
        "handshake_timeouts", "handshake_refused", "port_reuse_resets", "responses_unmatched",
        "bad_frames", "malformed", "no_transfer", "sessions_timed_out")}
    if drops:
        lines += ["", "drops and give-ups:"] + [f"  {k:<28} {v:>12}" for k, v in drops.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tcpcopyctl", description="Control a running tcpcopyd.")
    p.add_argument("--run-dir", default=os.environ.get("TCPCOPY_RUN_DIR", DEFAULT_RUN_DIR))
    p.add_argument("--timeout", type=float, default=2.0)
    sub = p.add_subparsers(dest="command", required=True)
    st = sub.add_parser("status", help="processes, counters and the loss funnel")
    st.add_argument("--json", action="store_true")
    sub.add_parser("stop", help="stop tcpcopyd (same path as SIGTERM)")
    args = p.parse_args(argv)
    if not os.path.exists(os.path.join(args.run_dir, "ctl")):
        print(f"tcpcopyd is not running (no control socket in {args.run_dir})", file=sys.stderr)
        return LSB_NOT_RUNNING
    reply = call(args.run_dir, args.command, timeout=args.timeout)
    if reply is None:
        print("Timed out.", file=sys.stderr)
        return LSB_UNKNOWN
    if reply.get("status") != "ok":
        print(f"error: {reply.get('error')} ({reply.get('errno')})", file=sys.stderr)
        return 1
    if args.command == "status":
        print(json.dumps(reply["data"], indent=2) if args.json else format_status(reply["data"]))
    else:
        print(json.dumps(reply["data"]))
    return LSB_RUNNING


if __name__ == "__main__":
    sys.exit(main())
