"""interceptd: on the assistant host, capture the target's answers and publish their headers."""

from __future__ import annotations

import argparse
import os
import sys

from appliance import __version__
from appliance.config import InterceptConfig
from appliance.errors import EXIT_NO_PERMISSION
from appliance.logs import setup_logging
from appliance.wire import DEFAULT_INTERCEPT_PORT


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="interceptd", description="Return the target's answer headers to tcpcopyd.")
    p.add_argument("-i", "--interface", default="any", help="capture interface(s), comma-separated (default any)")
    p.add_argument("-F", "--filter", required=True,
                   help="BPF filter for the target's answers, e.g. 'tcp and src host T and src port 8080'")
    p.add_argument("-b", "--bind", default="0.0.0.0", help="address to publish on")
    p.add_argument("-p", "--port", type=int, default=DEFAULT_INTERCEPT_PORT, help="port to publish on")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("-v", "--version", action="version", version=f"interceptd {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    if os.geteuid() != 0:
        print("interceptd: needs root (or CAP_NET_RAW) to capture", file=sys.stderr)
        return EXIT_NO_PERMISSION
    interfaces = tuple(i.strip() for i in args.interface.split(",") if i.strip())
    config = InterceptConfig(interfaces=interfaces, bpf=args.filter, bind=args.bind, port=args.port)
    from workers.intercept import Intercept
    return Intercept(config).run()


if __name__ == "__main__":
    sys.exit(main())
