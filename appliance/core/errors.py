"""The small exception taxonomy and the exit codes that are part of the contract."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2           # bad command line
EXIT_CONFIG = 78         # bad configuration value (EX_CONFIG)
EXIT_BOOT_ERROR = 70     # a child failed to boot repeatedly; the appliance halted (EX_SOFTWARE)
EXIT_NO_PERMISSION = 77  # raw sockets or capture need root / CAP_NET_RAW (EX_NOPERM)
EXIT_DATA = 65           # an offline capture file is truncated or corrupt (EX_DATAERR)


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names it."""


class HaltAppliance(BaseException):
    """Stop the whole appliance with `code`; a BaseException so library code cannot swallow it."""

    def __init__(self, reason: str, code: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
