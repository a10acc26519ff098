"""tcpcopyd: the online-host appliance. Parses options, builds the config, runs the supervisor."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from appliance import __version__
from appliance.config import DEFAULT_RUN_DIR, OnlineConfig, validate_engine
from appliance.engine.params import EngineParams
from appliance.errors import EXIT_CONFIG, EXIT_NO_PERMISSION, ConfigError
from appliance.logs import setup_logging
from appliance.transfer import capture_filter, parse_transfers
from appliance.wire import parse_intercept_address

log = logging.getLogger("tcpcopyd")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tcpcopyd", description="Replicate live TCP sessions to a target server.")
    p.add_argument("-x", "--transfer", required=True,
                   help="[ONLINE_IP:]PORT-TARGET_IP:PORT[,...]: what to copy and where to")
    p.add_argument("-s", "--intercept", required=True,
                   help="interceptd address(es) HOST[:PORT][,...] (default port 36524)")
    p.add_argument("-i", "--interface", default="any", help="capture interface(s), comma-separated (default any)")
    p.add_argument("-F", "--filter", default=None, help="BPF capture filter (default: built from -x)")
    p.add_argument("-w", "--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="rewrite-and-send workers (shards), 1-64")
    p.add_argument("-B", "--buffer-mb", type=int, default=128, help="capture ring per interface, MiB (8-2048)")
    p.add_argument("-M", "--mtu", type=int, default=1500, help="largest packet sent to the target (576-65535)")
    p.add_argument("-D", "--mss", type=int, default=1460, help="MSS in SYNs forged for sessions without a SYN")
    p.add_argument("-t", "--session-timeout", type=float, default=120.0, help="seconds of silence with data pending")
    p.add_argument("-k", "--keepalive-timeout", type=float, default=720.0, help="seconds of silence when idle")
    p.add_argument("--max-lag", type=float, default=1.0,
                   help="seconds a request may be held for the target's answer before it is sent anyway")
    p.add_argument("--response-quiet", type=float, default=0.010,
                   help="seconds without target data after which its answer counts as complete")
    p.add_argument("--buffer-limit-mb", type=int, default=16, help="bytes buffered per session, MiB")
    p.add_argument("--run-dir", default=os.environ.get("TCPCOPY_RUN_DIR", DEFAULT_RUN_DIR),
                   help="directory for control and queue sockets")
    p.add_argument("--no-pin", action="store_true", help="do not pin children to CPUs")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("-v", "--version", action="version", version=f"tcpcopyd {__version__}")
    return p


def config_from_args(args: argparse.Namespace) -> OnlineConfig:
    try:
        transfers = parse_transfers(args.transfer)
        intercepts = tuple(a.strip() for a in args.intercept.split(",") if a.strip())
        for address in intercepts:
            parse_intercept_address(address)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not 1 <= args.workers <= 64:
        raise ConfigError(f"workers = {args.workers}: must be 1-64")
    if not 8 <= args.buffer_mb <= 2048:
        raise ConfigError(f"buffer-mb = {args.buffer_mb}: must be 8-2048")
    engine = validate_engine(EngineParams(
        mtu=args.mtu, fake_syn_mss=args.mss, session_timeout=args.session_timeout,
        keepalive_timeout=args.keepalive_timeout, max_lag=args.max_lag, response_quiet=args.response_quiet,
        buffer_limit=args.buffer_limit_mb << 20))
    interfaces = tuple(i.strip() for i in args.interface.split(",") if i.strip())
    return OnlineConfig(
        transfers=",".join(str(t) for t in transfers), intercepts=intercepts, interfaces=interfaces,
        bpf=args.filter or capture_filter(transfers), workers=args.workers, run_dir=args.run_dir,
        engine=engine, pin_cpus=not args.no_pin, buffer_bytes=args.buffer_mb << 20)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"tcpcopyd: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if os.geteuid() != 0:
        print("tcpcopyd: needs root (or CAP_NET_RAW and CAP_NET_ADMIN) for capture and raw sends",
              file=sys.stderr)
        return EXIT_NO_PERMISSION
    log.info("capture filter: %s", config.bpf)
    log.debug("effective configuration: %s", config)
    from appliance.supervisor import Supervisor
    return Supervisor(config).run()


if __name__ == "__main__":
    sys.exit(main())
