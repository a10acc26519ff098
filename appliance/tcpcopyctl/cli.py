"""tcpcopyctl: look at a running tcpcopyd and steer it.

    tcpcopyctl status [--json] [--watch [SECONDS]]
    tcpcopyctl pause | resume | stop
    tcpcopyctl set sample-rate 0.25 | set log-level debug
    tcpcopyctl doctor --role online|target|assistant [--client IP --assistant IP ...]
    tcpcopyctl keygen [--dir /etc/tcpcopy/curve] [--force] NAME

Exit codes of `status` follow LSB: 0 running, 3 not running, 4 unknown/unreachable; with --json,
stdout has a document in every case (`{"state": "not running" | "unknown", "reason", "run_dir"}`
when tcpcopyd does not answer). Every string of the status document is printed with its
non-printable characters escaped: some come from other hosts (interceptd's report).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from typing import Any

import zmq

from appliance.config.loader import DEFAULT_RUN_DIR
from appliance.core import wire
from appliance.core.control import Request, decode_reply, encode_request, error_reply

# drops and give-ups; repairs: what the engine did to keep a session whole when the traffic or the
# target did not play along (the records' `drop` and `repair` groups, in pipeline order)
from appliance.core.counters import DROP_COUNTERS, REPAIR_COUNTERS

LSB_RUNNING = 0
LSB_NOT_RUNNING = 3
LSB_UNKNOWN = 4
EXIT_REFUSED = 1

SHARD_COLUMNS = (("sessions_active", "active"), ("sessions_completed", "done"),
                 ("sessions_reset_by_target", "reset"), ("sessions_timed_out", "t/o"),
                 ("packets_sent", "sent"), ("retransmits", "retrans"), ("responses", "resp"),
                 ("responses_unmatched", "unmatched"))
MAX_SHOWN = 300            # characters of one string of the status document printed

DIFF_KINDS = ("status", "size", "body", "headers", "latency")     # the compare counters different_*


def call(run_dir: str, command: str, args: dict | None = None, timeout: float = 2.0) -> dict | None:
    """One request/reply; None when nobody answered in time; a garbled reply is an EPROTO error reply."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.linger = 0
    sock.setsockopt(zmq.MAXMSGSIZE, wire.MAX_JSON_MESSAGE)
    try:
        sock.connect(wire.control_endpoint(run_dir))
        sock.send(encode_request(Request(uuid.uuid4().hex[:8], command, args or {})))
        if not sock.poll(int(timeout * 1000)):
            return None
        try:
            return decode_reply(sock.recv())
        except wire.WireError as exc:
            return error_reply("", f"garbled reply: {exc}", "EPROTO")
    finally:
        sock.close(linger=0)
        ctx.term()


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024  # type: ignore[assignment]
    return "-"


def printable(value: object) -> str:
    """`value` as text for a terminal: control, format and other non-printable characters escaped
    (an ESC from the wire becomes the four characters \\x1b), at most MAX_SHOWN characters."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_SHOWN:
        text = text[:MAX_SHOWN] + "..."
    return text if text.isprintable() else "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def printable_tree(obj: Any) -> Any:
    """The document with every string, key or value, made `printable`; numbers, booleans and null
    as they are."""
    if isinstance(obj, dict):
        return {printable(k): printable_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [printable_tree(v) for v in obj]
    return printable(obj) if isinstance(obj, str) else obj


def format_status(data: dict) -> str:
    """The human view of a status document; every string in it is escaped first (`printable`)."""
    data = printable_tree(data)
    sup, cfg, rt = data["supervisor"], data["config"], data.get("runtime", {})
    mode = "PAUSED" if rt.get("paused") else "replicating"
    lines = [f"tcpcopyd pid {sup['pid']}  {sup['state']}, {mode}  up {sup['uptime']:.0f}s  "
             f"sample rate {rt.get('sample_rate', 1.0):g}  log {rt.get('log_level', '?')}",
             f"transfers {cfg['transfers']}  intercepts {','.join(cfg['intercepts'])}  "
             f"interfaces {','.join(cfg['interfaces'])}", "",
             f"{'ROLE':<10} {'IDX':>3} {'PID':>7} {'STATE':<9} {'CPUS':<5} {'CPU%':>6} {'RSS':>7} "
             f"{'RESTARTS':>8} {'HB AGE':>7}"]
    for ch in data["children"]:
        age = "-" if ch["heartbeat_age"] is None else f"{ch['heartbeat_age']:.1f}s"
        cpus = ",".join(str(c) for c in ch["cpus"]) or "any"
        cpu = "-" if ch.get("cpu_percent") is None else f"{ch['cpu_percent']:.1f}"
        lines.append(f"{ch['role']:<10} {ch['index']:>3} {ch['pid'] or '-':>7} {ch['state']:<9} {cpus:<5} "
                     f"{cpu:>6} {_size(ch.get('rss_bytes')):>7} {ch['restarts']:>8} {age:>7}")
    shards = [ch for ch in data["children"] if ch["role"] == "rewrite"]
    lines += ["", "shard " + " ".join(f"{title:>10}" for _, title in SHARD_COLUMNS)]
    for ch in shards:
        lines.append(f"{ch['index']:>5} " + " ".join(f"{ch['counters'].get(k, 0):>10}" for k, _ in SHARD_COLUMNS))
    total = data["totals"].get("rewrite", {})
    lines.append("total " + " ".join(f"{total.get(k, 0):>10}" for k, _ in SHARD_COLUMNS))
    rates = data.get("rates", {}).get("per_second", {})
    if rates:
        cap, rew = rates.get("capture", {}), rates.get("rewrite", {})
        lines += ["", f"last {data['rates']['window_seconds']:.0f}s: captured {cap.get('captured', 0):,.0f}/s  "
                  f"sent {rew.get('packets_sent', 0):,.0f}/s  new sessions {rew.get('sessions_started', 0):,.1f}/s  "
                  f"responses {rew.get('responses', 0):,.0f}/s  retransmits {rew.get('retransmits', 0):,.1f}/s"]
    f = data["funnel"]
    lines += ["", "loss funnel: captured {captured} -> handed to workers {handed_to_workers} (queue drops "
              "{queue_drops_capture}, in queues {in_queues}) -> sent {sent_packets} packets (send errors "
              "{send_errors}) -> {bytes_acked_by_target}/{bytes_sent} bytes acknowledged by the target".format(**f),
              "  sessions started {sessions_started}, established {sessions_established}, completed "
              "{sessions_completed}; kernel drops {kernel_drops}; response batches lost "
              "{response_batches_lost}".format(**f),
              "  losing traffic at: " + (", ".join(f["lost_at"]) if f["lost_at"] else "nowhere")]
    errors = total.get("send_errors", {})
    if errors:
        lines.append("  send errors: " + ", ".join(f"{k} {v}" for k, v in sorted(errors.items())))
    drops = {}
    for role_totals in data["totals"].values():
        for k in DROP_COUNTERS:
            if role_totals.get(k):
                drops[k] = drops.get(k, 0) + role_totals[k]
    if drops:
        lines += ["", "drops and give-ups: " + ", ".join(f"{k} {v}" for k, v in drops.items())]
    repairs = {k: total[k] for k in REPAIR_COUNTERS if total.get(k)}
    if repairs:
        lines.append("repairs: " + ", ".join(f"{k} {v}" for k, v in repairs.items()))
    compare = total.get("compare", {})
    if compare.get("compared") or compare.get("online_turns"):
        lines.append(compare_line(compare))
    bad = {k: v for k, v in sup.get("bad_frames", {}).items() if v}
    if bad:
        lines.append("supervisor refused frames: " + ", ".join(f"{k} {v}" for k, v in bad.items()))
    for instance, ic in data.get("intercepts", {}).items():
        c = ic.get("counters", {})
        lines.append(f"interceptd {instance} pid {ic.get('pid')}: captured {c.get('captured', 0)} published "
                     f"{c.get('published', 0)} kernel drops {c.get('kernel_drops', 0)} subscribers "
                     f"{c.get('subscribers', 0)} no subscriber {c.get('no_subscriber', 0)} not IP "
                     f"{c.get('not_ip', 0)} malformed {c.get('malformed', 0)} "
                     f"unexpected {c.get('unexpected', 0)} (report {ic.get('age', '?')}s old)")
    return "\n".join(lines)


def compare_line(c: dict) -> str:
    """The answer comparison in one line (status, and the end of `make demo`)."""
    compared = c.get("compared", 0)
    share = f" ({100 * c.get('equal', 0) / compared:.1f} %)" if compared else ""
    kinds = ", ".join(f"{kind} {c.get('different_' + kind, 0)}" for kind in DIFF_KINDS)
    return (f"compare: {compared} answers compared, {c.get('equal', 0)} equal{share}; different: {kinds}; "
            f"unpaired {c.get('unpaired_online', 0)}/{c.get('unpaired_target', 0)} (online/target)")


def _ms(value: object) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def format_diff(data: dict) -> str:
    """`tcpcopyctl diff`: the differing answers grouped by request, both sides side by side."""
    data = printable_tree(data)
    lines = [compare_line(data.get("counters", {})), ""]
    groups = data.get("groups", [])
    if not groups:
        return "\n".join(lines + ["no differences"])
    lines.append(f"{'COUNT':>7}  {'METHOD':<7} {'PATH':<32} {'KINDS':<22} {'STATUS online>target':<22} "
                 f"{'SIZE online/target':<20} {'LATENCY ms online/target':<24}")
    for g in groups:
        kinds = ",".join(k for k, n in g.get("kinds", {}).items() if n)
        statuses = " ".join(f"{k}x{n}" for k, n in list(g.get("statuses", {}).items())[:3])
        sizes = "/".join(str(s) for s in g.get("sizes", ()))
        lat = "/".join(_ms(g.get(side, {}).get("mean_ms")) for side in ("online_latency", "target_latency"))
        lines.append(f"{g.get('count', 0):>7}  {str(g.get('method')):<7} {str(g.get('path'))[:32]:<32} "
                     f"{kinds[:22]:<22} {statuses[:22]:<22} {sizes[:20]:<20} {lat:<24}")
    if data.get("group_count", 0) > len(groups):
        lines.append(f"... {data['group_count'] - len(groups)} more groups (--top N)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tcpcopyctl", description="Look at a running tcpcopyd and steer it.")
    p.add_argument("--run-dir", default=os.environ.get("TCPCOPY_RUN_DIR", DEFAULT_RUN_DIR))
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for an answer")
    sub = p.add_subparsers(dest="command", required=True)
    st = sub.add_parser("status", help="processes, counters, rates and the loss funnel")
    st.add_argument("--json", action="store_true",
                    help="the status document (fields: appliance/tcpcopyd/status_schema.py)")
    st.add_argument("--watch", type=float, nargs="?", const=2.0, metavar="SECONDS",
                    help="refresh every SECONDS (default 2) until interrupted")
    df = sub.add_parser("diff", help="compare mode: the target's answers that differ from production's, by request")
    df.add_argument("--json", action="store_true", help="the merged report as JSON")
    df.add_argument("--top", type=int, default=20, metavar="N", help="groups shown, the largest first (default 20)")
    sub.add_parser("stop", help="stop tcpcopyd (same path as SIGTERM)")
    sub.add_parser("pause", help="start no new sessions (open ones go on)")
    sub.add_parser("resume", help="start new sessions again")
    st = sub.add_parser("set", help="change a runtime setting")
    st.add_argument("name", choices=("sample-rate", "log-level"))
    st.add_argument("value")
    kg = sub.add_parser("keygen", help="make a CURVE key pair (NAME.key public, NAME.key_secret secret)")
    kg.add_argument("--dir", default="/etc/tcpcopy/curve",
                    help="where to write the two files (made 0750 if missing; it must be yours)")
    kg.add_argument("--force", action="store_true", help="replace an existing pair of that name")
    kg.add_argument("name", help="e.g. interceptd, or tcpcopyd-HOSTNAME (A-Z a-z 0-9 _ . -, 1-64)")
    dr = sub.add_parser("doctor", help="check this host's set-up for its role; print fixes")
    dr.add_argument("--role", required=True, choices=("online", "target", "assistant"))
    dr.add_argument("--client", default="198.18.0.1", help="a client address (or one of the -c pool)")
    dr.add_argument("--assistant", default="198.18.0.4", help="the assistant host's address")
    dr.add_argument("--target", default="198.18.0.3", help="the target host's address")
    dr.add_argument("--intercept", default="198.18.0.4", help="interceptd address(es) HOST[:PORT][,...]")
    dr.add_argument("--interface", default="eth0", help="the capture interface")
    dr.add_argument("--json", action="store_true")
    return p


def doctor(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from appliance.tcpcopyctl.doctor import LocalProbe, report, run_checks
    findings = run_checks(args.role, LocalProbe(), args.client, args.assistant, args.target,
                          [a for a in args.intercept.split(",") if a], args.interface)
    print(json.dumps([asdict(f) for f in findings], indent=2) if args.json else report(findings))
    return 0 if all(f.ok for f in findings) else EXIT_REFUSED


RUNTIME_COMMANDS = ("pause", "resume", "set")


def settings_applied(status: dict, seq: int) -> bool:
    """Every running child has applied the runtime settings numbered `seq` (its heartbeat says so)."""
    running = [ch for ch in status.get("children", []) if ch.get("state") == "running"]
    return all(isinstance(ch.get("settings_seq"), int) and ch["settings_seq"] >= seq for ch in running)


def _wait_applied(args: argparse.Namespace, runtime: dict) -> int:
    """The runtime channel has no reply of its own: a change is in effect once every child's
    heartbeat echoes its number. Prints the settings with `applied`; exit 1 when not confirmed in time."""
    seq = runtime.get("seq", 0)
    deadline = time.monotonic() + max(args.timeout, 5.0)
    applied = False
    while True:
        reply = call(args.run_dir, "status", timeout=args.timeout)
        applied = bool(reply and reply.get("status") == "ok" and settings_applied(reply["data"], seq))
        if applied or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    print(json.dumps({**runtime, "applied": applied}))
    if not applied:
        print("not confirmed by every child in time (see tcpcopyctl status)", file=sys.stderr)
        return EXIT_REFUSED
    return LSB_RUNNING


def keygen(args: argparse.Namespace) -> int:
    from appliance.host.curvekeys import KeygenError
    from appliance.host.curvekeys import keygen as make_pair
    try:
        public, secret = make_pair(args.dir, args.name, force=args.force)
    except (KeygenError, OSError) as exc:
        print(f"tcpcopyctl keygen: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    print(f"public key {public} (give it to the peer)\nsecret key {secret} (keep it here, mode 0600)")
    return 0


def _no_status(args: argparse.Namespace, state: str, reason: str, code: int) -> int:
    """tcpcopyd gave no status document: `status --json` prints one of its own, so a script always
    finds `state` on stdout. Returns the LSB exit code `code`."""
    if args.command == "status" and args.json:
        print(json.dumps({"state": state, "reason": reason, "run_dir": args.run_dir}))
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "doctor":
        return doctor(args)
    if args.command == "keygen":
        return keygen(args)
    if not os.path.exists(os.path.join(args.run_dir, "ctl")):
        print(f"tcpcopyd is not running (no control socket in {args.run_dir})", file=sys.stderr)
        return _no_status(args, "not running", f"no control socket in {args.run_dir}", LSB_NOT_RUNNING)
    request_args = ({"name": args.name, "value": args.value} if args.command == "set" else
                    {"top": args.top} if args.command == "diff" else {})
    while True:
        reply = call(args.run_dir, args.command, request_args, timeout=args.timeout)
        if reply is None:
            print("Timed out.", file=sys.stderr)
            return _no_status(args, "unknown", f"no answer within {args.timeout:g} s", LSB_UNKNOWN)
        if reply.get("status") != "ok":
            error = f"error: {printable(reply.get('error'))} ({printable(reply.get('errno'))})"
            print(error, file=sys.stderr)
            if args.command == "status":
                return _no_status(args, "unknown", error, LSB_UNKNOWN)
            return EXIT_REFUSED
        if args.command in RUNTIME_COMMANDS:
            return _wait_applied(args, reply["data"])
        if args.command == "diff":
            print(json.dumps(reply["data"], indent=2) if args.json else format_diff(reply["data"]))
            return LSB_RUNNING
        if args.command != "status":
            print(json.dumps(reply["data"]))
            return LSB_RUNNING
        text = json.dumps(reply["data"], indent=2) if args.json else format_status(reply["data"])
        if not args.watch:
            print(text)
            return LSB_RUNNING
        print("\033[H\033[J" + text, flush=True)
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return LSB_RUNNING


if __name__ == "__main__":
    sys.exit(main())
