"""tcpcopy-lab: build, inspect and remove the four-host namespace lab.

    tcpcopy-lab up [--offloads on|off] [--prefix P]
    tcpcopy-lab down [--prefix P | --all]
    tcpcopy-lab status [--prefix P] [--json]     exit 0 up, 3 down, 4 partial
    tcpcopy-lab check [--prefix P] [--json]      exit 0 when every check passes, 1 otherwise
    tcpcopy-lab demo

Each subcommand is a function `cmd_<name>(args) -> exit code` listed in COMMANDS; its arguments are
declared in build_parser().
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from appliance.lab.netns import ADDR, HOSTS, Lab, LabError, find_prefixes, tools_missing

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
EXIT_UNKNOWN = 4


def cmd_up(args: argparse.Namespace) -> int:
    lab = Lab(args.prefix)
    lab.up(offloads=args.offloads == "on")
    print(f"lab {lab.prefix} is up (offloads {args.offloads})")
    for host in HOSTS:
        print(f"  {host:<10} {ADDR[host]:<12} ip netns exec {lab.namespace(host)} ...")
    return EXIT_OK


def cmd_down(args: argparse.Namespace) -> int:
    prefixes = find_prefixes(args.prefix) if args.all else [args.prefix]
    removed: list[str] = []
    for prefix in prefixes:
        removed.extend(Lab(prefix).down())
    print(f"removed: {', '.join(removed)}" if removed else "nothing to remove")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    lab = Lab(args.prefix)
    status = lab.status(with_checks=not args.no_checks)
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(f"lab {lab.prefix}: {status['state']}")
        for host, info in status["hosts"].items():
            addresses = ", ".join(info["addresses"]) or "-"
            presence = "present" if info["present"] else "absent"
            print(f"  {host:<10} {info['namespace']:<18} {presence:<8} {addresses}")
        for check in status.get("checks", []):
            print(f"  [{'ok' if check['ok'] else 'FAIL':>4}] {check['name']}: {check['detail']}")
    return {"up": EXIT_OK, "down": EXIT_NOT_RUNNING}.get(status["state"], EXIT_UNKNOWN)


def cmd_check(args: argparse.Namespace) -> int:
    checks = Lab(args.prefix).check()
    if args.json:
        print(json.dumps([{"name": n, "ok": ok, "detail": d} for n, ok, d in checks], indent=2))
    else:
        for name, ok, detail in checks:
            print(f"[{'ok' if ok else 'FAIL':>4}] {name}: {detail}")
    return EXIT_OK if all(ok for _, ok, _ in checks) else EXIT_FAILED


def cmd_demo(args: argparse.Namespace) -> int:
    from appliance.lab.demo import run_demo, run_postgres_demo
    if args.service == "postgres":
        return run_postgres_demo(args.prefix, duration=args.duration or 30.0)
    return run_demo(args.prefix, duration=args.duration or 20.0, offloads=args.offloads == "on")


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "up": cmd_up,
    "down": cmd_down,
    "status": cmd_status,
    "check": cmd_check,
    "demo": cmd_demo,
}
NEEDS_ROOT = {"up", "down", "status", "check", "demo"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tcpcopy-lab", description="network-namespace lab for tcpcopy-py")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--prefix", default="tcl", help="namespace name prefix (default tcl)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", parents=[common], help="build the lab")
    up.add_argument("--offloads", choices=("on", "off"), default="on",
                    help="veth checksum/segmentation offloads (default on = kernel defaults)")
    down = sub.add_parser("down", parents=[common], help="remove the lab and kill what runs inside")
    down.add_argument("--all", action="store_true",
                      help="remove every lab named PREFIX or PREFIX<digits> (leftovers of test runs)")
    status = sub.add_parser("status", parents=[common], help="namespaces, addresses and checks")
    status.add_argument("--json", action="store_true")
    status.add_argument("--no-checks", action="store_true", help="skip the ping checks (faster)")
    check = sub.add_parser("check", parents=[common], help="verify the lab's contract")
    check.add_argument("--json", action="store_true")
    demo = sub.add_parser("demo", parents=[common], help="run the end-to-end demonstration")
    demo.add_argument("--service", choices=("http", "postgres"), default="http",
                      help="what the client talks to: the HTTP service (default) or PostgreSQL with pgbench")
    demo.add_argument("--duration", type=float, default=None,
                      help="seconds of client load (default 20 for http, 30 for postgres)")
    demo.add_argument("--offloads", choices=("on", "off"), default="on")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in NEEDS_ROOT:
        if os.geteuid() != 0:
            print(f"tcpcopy-lab {args.command}: needs root (CAP_NET_ADMIN)", file=sys.stderr)
            return EXIT_UNKNOWN if args.command == "status" else EXIT_FAILED
        missing = tools_missing()
        if missing:
            print(f"tcpcopy-lab: missing tools: {', '.join(missing)} (run: make setup)", file=sys.stderr)
            return EXIT_UNKNOWN if args.command == "status" else EXIT_FAILED
    try:
        return COMMANDS[args.command](args)
    except (LabError, ValueError) as exc:
        print(f"tcpcopy-lab {args.command}: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN if args.command == "status" else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
