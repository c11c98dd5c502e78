"""A real PostgreSQL 15 for the tests: initdb and pg_ctl in a temp folder, on a free loopback port.

PostgreSQL refuses to run as root: as root the cluster belongs to `nobody` and its commands run through
`runuser`. Without the binaries (Debian: postgresql-15; or on PATH) the fixture skips, saying so.

Use: `from engines.postgres import postgres_server` in a test module (the import registers the
fixture); `postgres_server.new_database()` gives each test its own empty database URL.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from support import free_port

START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 20
_SEARCH = ("/usr/local/bin", "/usr/lib/postgresql/15/bin")


def _binary(name: str) -> str | None:
    for folder in _SEARCH:
        candidate = Path(folder) / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name)


@dataclass
class PostgresServer:
    port: int
    folder: Path
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its SQLAlchemy URL."""
        import psycopg

        name = f"hub_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _as_owner(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "nobody", "--", *argv] if os.geteuid() == 0 else argv


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl): apt-get install postgresql-15")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: PostgreSQL cannot run as root")
    # Not under pytest's tmp folder: its parents are private to root, and `nobody` must reach this one.
    folder = Path(tempfile.mkdtemp(prefix="devmesh-pg-"))
    data, sockets = folder / "data", folder / "sockets"
    sockets.mkdir()
    if os.geteuid() == 0:
        for path in (folder, sockets):
            shutil.chown(path, "nobody")
    port = free_port()
    try:
        subprocess.run(
            _as_owner([initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]),
            check=True,
            capture_output=True,
            timeout=START_TIMEOUT_S * 2,
        )
        options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        subprocess.run(
            _as_owner([pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"]),
            check=True,
            capture_output=True,
            timeout=START_TIMEOUT_S,
        )
    except subprocess.CalledProcessError as error:
        log = (folder / "log").read_text(errors="replace") if (folder / "log").exists() else ""
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {error.stderr.decode(errors='replace')}\n{log}")
    try:
        yield PostgresServer(port, folder)
    finally:
        subprocess.run(
            _as_owner([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]),
            capture_output=True,
            timeout=STOP_TIMEOUT_S,
        )
        shutil.rmtree(folder, ignore_errors=True)
