"""Fixtures of the service's tests: a throwaway PostgreSQL server, and a fresh records database
on it or on SQLite."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway PostgreSQL server (Debian's postgresql package; the tests that ask for it are
    skipped without it), on a Unix socket only: the records of a fleet (docs/DEPLOY.md) run on
    one, and SQLite alone left that path untested. Yields the URL of its server, no database."""
    import glob
    import os
    import shutil
    import subprocess

    pytest.importorskip("psycopg", reason="psycopg: the PostgreSQL driver (the dev extra)")
    found = shutil.which("initdb") or max(glob.glob("/usr/lib/postgresql/*/bin/initdb"), default=None)
    if found is None:
        pytest.skip("no PostgreSQL server here (Debian: apt-get install postgresql)")
    bindir = Path(found).parent
    base = Path(tempfile.mkdtemp(prefix="rpepad-pg-"))  # short (a socket path is at most 107 bytes)
    as_server = []
    if os.geteuid() == 0:  # the server refuses to run as root: as Debian's postgres user
        try:
            shutil.chown(base, "postgres")
        except LookupError:
            shutil.rmtree(base)
            pytest.skip("running as root with no postgres user for the server")
        as_server = ["runuser", "-u", "postgres", "--"]

    def run(*args: str) -> None:
        subprocess.run(as_server + [str(bindir / args[0]), *args[1:]], check=True, capture_output=True, timeout=120)

    try:
        run("initdb", "-D", str(base / "data"), "-A", "trust", "-U", "rpepad", "--no-sync")
        run("pg_ctl", "-D", str(base / "data"), "-w", "-l", str(base / "log"), "start", "-o",
            f"-k {base} -c listen_addresses='' -p 5432 -F")
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    try:
        yield f"postgresql+psycopg://rpepad@/{{}}?host={base}&port=5432"
    finally:
        run("pg_ctl", "-D", str(base / "data"), "-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def records_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty records database: SQLite in a file, or a new database on ``postgres``."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'records.sqlite3'}"
    from sqlalchemy import create_engine, text

    server, name = request.getfixturevalue("postgres"), f"t{uuid.uuid4().hex[:12]}"
    admin = create_engine(server.format("postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return server.format(name)
