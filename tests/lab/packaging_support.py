"""Helpers for the `packaging` tests: build the packages and images with make (cheap when up to date)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
DIST = PROJECT / "dist"
VERSION = re.search(r'^version = "([^"]+)"', (PROJECT / "pyproject.toml").read_text(), re.MULTILINE).group(1)
PACKAGES = ("tcpcopy-common", "tcpcopy-online", "tcpcopy-intercept")
MAKE_TIMEOUT = 900.0


def make(target: str) -> None:
    """`make TARGET` in the project, as root (it installs nfpm, rpm, podman... when missing)."""
    if os.geteuid() != 0:
        pytest.skip(f"make {target} needs root (apt packages, podman)")
    done = subprocess.run(["make", "-C", str(PROJECT), target], check=False, capture_output=True, text=True,
                          timeout=MAKE_TIMEOUT)
    assert done.returncode == 0, f"make {target} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def deb(name: str) -> Path:
    return DIST / f"{name}_{VERSION}-1_amd64.deb"


def rpm(name: str) -> Path:
    return DIST / f"{name}-{VERSION}-1.x86_64.rpm"
