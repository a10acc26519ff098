"""Fixtures of the tests that run the supervisor's loop in the test's own process."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest


@pytest.fixture
def restored_signals() -> Iterator[None]:
    """The supervisor installs signal handlers and a wake-up fd: put back what was there."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield
    signal.set_wakeup_fd(-1)
    for s, handler in saved.items():
        signal.signal(s, handler)
