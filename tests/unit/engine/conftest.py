"""Engine playbooks fail on output the test did not look at (tests/unit/enginekit.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit import enginekit


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    __tracebackhide__ = True
    enginekit.PLAYBOOKS.clear()
    try:
        result = yield                  # a test that failed already keeps its own failure
        enginekit.verify_playbooks()
    finally:
        enginekit.PLAYBOOKS.clear()
    return result
