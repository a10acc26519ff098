"""The units' SystemCallFilter=@system-service, checked on a real run: the daemons start under strace
with a seccomp filter that stops them only at system calls outside that set (so at almost no cost),
and the test asserts there were none. Used by the lab tests that start the daemons as the units do."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path


def system_service_calls() -> set[str]:
    """The system calls SystemCallFilter=@system-service allows, as this host's systemd lists them."""
    text = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        item = line.strip()
        if line.startswith("@"):
            current = groups.setdefault(item, [])
        elif current is not None and item and not item.startswith("#"):
            current.append(item)

    def expand(group: str) -> set[str]:
        return set().union(*({m} if not m.startswith("@") else expand(m) for m in groups[group]))
    return expand("@system-service")


def outside_filter_prefix(base: Path) -> tuple[str, ...]:
    """strace following every process (one file each), stopping (seccomp-bpf) only at the calls outside
    @system-service; -D: strace runs aside, so the daemon keeps the pid and the signals the rig sends.
    strace sets no_new_privs, as the units' NoNewPrivileges=yes does. Empty without strace or systemd."""
    if shutil.which("strace") is None or shutil.which("systemd-analyze") is None:
        return ()
    allowed = ",".join(f"?{name}" for name in sorted(system_service_calls()))
    return ("strace", "-D", "-ff", "--seccomp-bpf", "-qq", "-e", f"trace=!{allowed}", "-e", "signal=none",
            "-o", str(base / "outside-filter"))


def calls_outside_filter(base: Path) -> dict[str, str]:
    """Each system call strace saw (all outside @system-service) with its first line."""
    seen: dict[str, str] = {}
    for path in base.glob("outside-filter.*"):
        for line in path.read_text().splitlines():
            call = re.match(r"(\w+)\(", line)
            if call:
                seen.setdefault(call.group(1), f"{path.name}: {line}")
    return seen
