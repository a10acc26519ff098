"""tcpcopyd: the online-host appliance. Reads the configuration and runs the supervisor.

Settings come from defaults, then `--config FILE` (TOML, see conf/tcpcopy.toml), then the
command-line flags, which take the original tcpcopy's letters where it had one.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from appliance import __version__
from appliance.config import add_setting_flags, load, online_config
from appliance.errors import EXIT_CONFIG, EXIT_NO_PERMISSION, ConfigError
from appliance.logs import setup_logging
from appliance.settings import ONLINE

log = logging.getLogger("tcpcopyd")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tcpcopyd", description="Replicate live TCP sessions to a target server.")
    p.add_argument("--config", metavar="FILE", default=os.environ.get("TCPCOPYD_CONFIG"),
                   help="TOML configuration file (flags override it)")
    add_setting_flags(p, ONLINE)
    p.add_argument("-v", "--version", action="version", version=f"tcpcopyd {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = online_config(load(ONLINE, args.config, args), args.config or "command line")
    except ConfigError as exc:
        print(f"tcpcopyd: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.log_level)
    if os.geteuid() != 0:
        print("tcpcopyd: needs root (or CAP_NET_RAW and CAP_NET_ADMIN) for capture and raw sends",
              file=sys.stderr)
        return EXIT_NO_PERMISSION
    log.info("capture filter: %s", config.bpf)
    log.debug("effective configuration: %s", config)
    from appliance.supervisor import Supervisor
    return Supervisor(config, args.config, args).run()


if __name__ == "__main__":
    sys.exit(main())
