"""interceptd: on the assistant host, capture the target's answers and publish their headers.

Settings come from defaults, then `--config FILE` (TOML, see conf/intercept.toml), then flags.
"""

from __future__ import annotations

import argparse
import os
import sys

from appliance import __version__
from appliance.config.keys import INTERCEPT
from appliance.config.loader import add_setting_flags, intercept_config, load
from appliance.core.buildinfo import build_info
from appliance.core.errors import EXIT_CONFIG, EXIT_NO_PERMISSION, ConfigError
from appliance.core.logs import setup_logging
from appliance.host.privileges import has_net_capabilities


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="interceptd", description="Return the target's answer headers (in compare "
                                "mode also its answer turns) to tcpcopyd.")
    p.add_argument("--config", metavar="FILE", default=os.environ.get("INTERCEPTD_CONFIG"),
                   help="TOML configuration file (flags override it)")
    add_setting_flags(p, INTERCEPT)
    p.add_argument("-v", "--version", action="version", version=f"interceptd {__version__} ({build_info()})")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = intercept_config(load(INTERCEPT, args.config, args))
    except ConfigError as exc:
        print(f"interceptd: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.log_level)
    if not has_net_capabilities():
        print("interceptd: needs root (or CAP_NET_RAW) to capture", file=sys.stderr)
        return EXIT_NO_PERMISSION
    from appliance.interceptd.daemon import Intercept
    return Intercept(config).run()


if __name__ == "__main__":
    sys.exit(main())
