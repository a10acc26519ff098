"""The differences file: one JSON line per answer of the target that differs from production's.

Runs in each rewrite worker with compare on; every worker appends to the same file. A line is at
most 4 KiB and goes out in one write() on a file opened with O_APPEND, so lines of several workers
never interleave. The file stops growing at its bound; what is not written is counted.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

MODE = 0o640


class DifferencesFile:
    def __init__(self, path: str, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.written = 0
        self.not_written = 0
        self._fd: int | None = None
        self._failed = False

    def write(self, line: str) -> None:
        data = (line + "\n").encode("utf-8", "replace")
        fd = self._open()
        if fd is None:
            self.not_written += 1
            return
        try:
            if os.fstat(fd).st_size + len(data) > self.max_bytes:
                self.not_written += 1
                return
            os.write(fd, data)
            self.written += 1
        except OSError as exc:
            self.not_written += 1
            self._fail(exc)

    def _open(self) -> int | None:
        if self._fd is None and not self._failed:
            try:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                                   MODE)
            except OSError as exc:
                self._fail(exc)
        return self._fd

    def _fail(self, exc: OSError) -> None:
        if not self._failed:
            log.warning("differences file %s: %s; differences are counted, not written", self.path, exc)
        self._failed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
