"""tcpcopyd: the online-host appliance. Reads the configuration and runs the supervisor.

Settings come from defaults, then `--config FILE` (TOML, see conf/tcpcopy.toml), then the
command-line flags, which take the original tcpcopy's letters where it had one.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import sys

from appliance import __version__
from appliance.config.keys import ONLINE
from appliance.config.loader import add_setting_flags, load, online_config
from appliance.core.buildinfo import build_info
from appliance.core.errors import EXIT_CONFIG, EXIT_DATA, EXIT_NO_PERMISSION, ConfigError
from appliance.core.logs import setup_logging
from appliance.host.privileges import has_net_capabilities

log = logging.getLogger("tcpcopyd")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tcpcopyd", description="Replicate live TCP sessions to a target server.")
    p.add_argument("--config", metavar="FILE", default=os.environ.get("TCPCOPYD_CONFIG"),
                   help="TOML configuration file (flags override it)")
    add_setting_flags(p, ONLINE)
    off = p.add_argument_group("offline replay (instead of live capture)")
    off.add_argument("--offline", nargs="+", metavar="FILE", help="pcap or pcapng files to replay, in order")
    pace = off.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=1.0, help="N x the original timing (default 1)")
    pace.add_argument("--topspeed", action="store_true", help="as fast as the workers take the packets")
    off.add_argument("--max-gap", type=float, default=0.0, metavar="MS", help="cut idle gaps longer than MS")
    off.add_argument("--offline-tail", type=float, default=30.0, metavar="S",
                     help="seconds to wait for open sessions after the files end (default 30)")
    off.add_argument("--report-json", metavar="FILE", help="also write the final report, with every counter, as JSON")
    p.add_argument("-v", "--version", action="version", version=f"tcpcopyd {__version__} ({build_info()})")
    return p


def _offline_number(flag: str, value: float, *, zero_ok: bool) -> float:
    """argparse's float() takes nan, inf and negative numbers: each would stall or break the replay."""
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        bound = "0 or more" if zero_ok else "greater than 0"
        raise ConfigError(f"{flag} {value!r}: must be a finite number, {bound}")
    return value


def offline_options(args: argparse.Namespace) -> dict:
    """The offline replay's fields of OnlineConfig, checked (ConfigError) even without --offline."""
    speed = _offline_number("--speed", args.speed, zero_ok=False)
    return {"offline": tuple(args.offline or ()), "speed": 0.0 if args.topspeed else speed,
            "max_gap_ms": _offline_number("--max-gap", args.max_gap, zero_ok=True),
            "offline_tail": _offline_number("--offline-tail", args.offline_tail, zero_ok=True)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = online_config(load(ONLINE, args.config, args), args.config or "command line")
        offline = offline_options(args)
        if args.offline:
            config = dataclasses.replace(config, **offline)
    except ConfigError as exc:
        print(f"tcpcopyd: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    files = []
    if config.offline:
        from appliance.core.pcapfile import PcapError
        from appliance.tcpcopyd.offline import check_files
        try:
            files = check_files(config.offline)
        except PcapError as exc:
            print(f"tcpcopyd: {exc}", file=sys.stderr)
            return EXIT_DATA
    setup_logging(config.log_level)
    if not has_net_capabilities():
        print("tcpcopyd: needs root (or CAP_NET_RAW and CAP_NET_ADMIN) for capture and raw sends",
              file=sys.stderr)
        return EXIT_NO_PERMISSION
    log.info("capture filter: %s", config.bpf)
    log.debug("effective configuration: %s", config)
    from appliance.tcpcopyd.policy import LivePolicy, OfflinePolicy, RunPolicy
    from appliance.tcpcopyd.supervisor import Supervisor
    offline_run = OfflinePolicy(sum(f.packets for f in files), config.offline_tail) if config.offline else None
    policy: RunPolicy = offline_run or LivePolicy()
    reread = (lambda: load(ONLINE, args.config, args)) if args.config else None
    sup = Supervisor(config, policy, reread=reread)
    code = sup.run()
    if offline_run is not None:
        from appliance.tcpcopyd.offline import report, report_data, write_json
        data = report_data(sup.rows(), offline_run, files, config.speed)
        print(report(data))
        if args.report_json:
            write_json(args.report_json, data)
    return code


if __name__ == "__main__":
    sys.exit(main())
