"""Unit-test guard: a pure-logic test that takes seconds is a hang (e.g. a timer loop that never
advances), so turn it into a failure instead of a stuck run."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

UNIT_TEST_LIMIT = 20.0   # seconds; the whole unit suite runs in well under that


class UnitTestHang(Exception):
    pass


def _raise_hang(signum: int, frame: object) -> None:
    raise UnitTestHang("unit test ran past its time limit: a hang?")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hang_limit(seconds): fail a unit test that runs longer than this")


@pytest.fixture(autouse=True)
def _hang_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    if not hasattr(signal, "setitimer"):       # pragma: no cover - non-POSIX
        yield
        return
    marker = request.node.get_closest_marker("hang_limit")
    limit = float(marker.args[0]) if marker else UNIT_TEST_LIMIT
    old = signal.signal(signal.SIGALRM, _raise_hang)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
