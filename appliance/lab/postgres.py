"""A throw-away PostgreSQL cluster (Debian's server binaries) inside a lab host.

Runs in the caller's process; the server runs as the `postgres` user inside the host's
namespace, with its data and socket in a directory the caller owns and removes. Trust
authentication for the lab range only: a replayed password challenge could not succeed.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
from pathlib import Path

from appliance.lab.netns import ADDR, Lab

PG_PORT = 5432


def pg_bindir() -> str | None:
    """Directory of the newest installed PostgreSQL server binaries, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return os.path.dirname(found[-1]) if found else None


class PgCluster:
    def __init__(self, lab: Lab, host: str, datadir: Path, port: int = PG_PORT) -> None:
        bindir = pg_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")
        self.bin = bindir
        self.lab = lab
        self.host = host
        self.dir = Path(datadir)
        self.port = port
        self.proc: subprocess.Popen | None = None

    def _as_postgres(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv]

    def init(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.dir, "postgres", "postgres")
        os.chmod(self.dir, 0o700)
        subprocess.run(self._as_postgres([f"{self.bin}/initdb", "-A", "trust", "-U", "postgres", "-D",
                                          str(self.dir / "data")]), check=True, capture_output=True)
        with open(self.dir / "data" / "pg_hba.conf", "a") as hba:
            hba.write("host all all 198.18.0.0/16 trust\n")
        with open(self.dir / "data" / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = '{ADDR[self.host]}'\nport = {self.port}\n"
                       f"unix_socket_directories = '{self.dir}'\nfsync = off\nsynchronous_commit = off\n"
                       "full_page_writes = off\nshared_buffers = 64MB\nssl = off\nmax_connections = 50\n")

    def start(self, timeout: float = 20.0) -> None:
        log = open(self.dir / "server.log", "w")
        self.proc = self.lab.popen(self.host, self._as_postgres([f"{self.bin}/postgres", "-D",
                                                                 str(self.dir / "data")]),
                                   stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = self.lab.run(self.host, [f"{self.bin}/pg_isready", "-h", ADDR[self.host], "-p", str(self.port)],
                                 check=False, capture_output=True, text=True)
            if ready.returncode == 0:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"postgres on {self.host} did not start; see {self.dir / 'server.log'}")

    def client(self, tool: str, *args: str, from_host: str | None = None,
               timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run a libpq tool (psql, pgbench) against this server from a lab host (default: its own)."""
        argv = [f"{self.bin}/{tool}", "-h", ADDR[self.host], "-p", str(self.port), "-U", "postgres", *args]
        return self.lab.run(from_host or self.host, argv, check=True, capture_output=True, text=True,
                            timeout=timeout)

    def query(self, sql: str, from_host: str | None = None) -> str:
        return self.client("psql", "-At", "-d", "postgres", "-c", sql, from_host=from_host).stdout.strip()

    def wait_same(self, other: PgCluster, sql: str, limit: float = 60.0) -> tuple[str, str]:
        """(this server's answer, the other's) once they agree or `limit` seconds passed; both
        asked from the online host (the target routes the client's answers elsewhere)."""
        expected = self.query(sql, from_host="online")
        got = ""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            got = other.query(sql, from_host="online")
            if got == expected:
                break
            time.sleep(0.5)
        return expected, got

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()          # SIGTERM: postgres's "smart" shutdown
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)
