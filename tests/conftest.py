"""Fixtures: one real PostgreSQL per session, a fresh database per test.

initdb and pg_ctl refuse to run as root, and CI is root, so pytest-postgresql's
`postgresql_proc` cannot start the server there. The session server is
started by jobs-cli's own embedded-server code instead (which runs it as an
unprivileged user when we are root), and pytest-postgresql's DatabaseJanitor
makes a template that jobs-cli's migrations bring up to date (as `init`
does) and clones it for every test.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
from pytest_postgresql.janitor import DatabaseJanitor

from jobs_cli.db import Database
from jobs_cli.migrations import migrate
from jobs_cli.server import PORT, SUPERUSER, EmbeddedServer

# Tests of an unreachable database want its answer now; tests of waiting set their own.
NO_WAITING = {"JOBS_START_RETRY_SECONDS": "0"}
os.environ.update(NO_WAITING)

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = "jobs_template"
BIN_DIR = Path(sys.executable).parent
_database_numbers = itertools.count()


def private_dir(prefix: str) -> Path:
    """A temp dir the embedded server's user can enter when the tests run as root.

    pytest's tmp_path lives under a 0700 directory owned by the test user, and
    the server must not loosen permissions it did not set.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def wait_until(condition, timeout: float = 60.0, what: str = "condition"):
    """Poll `condition` until it returns something truthy, and return that; fail at the deadline.

    The deadline only bounds a hang: CI is a busy 2-core machine where a subprocess
    can take seconds to get going, so no test should be tighter than that.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.02)


def living_group_members(pgid: int) -> list[int]:
    """The pids of process group `pgid` that have not exited (zombies excluded)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        state, _ppid, pgrp = text[text.rindex(")") + 2:].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return members


@pytest.fixture(scope="session")
def pg_server():
    home = private_dir("jobs-cli-test-server-")
    server = EmbeddedServer(home)
    server.ensure_running()
    socket_dir, port = server.address()
    yield {"host": socket_dir, "port": port, "user": SUPERUSER}
    server.stop()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def limited_server():
    """A server of its own with max_connections = 20 and a jobs table, for tests of a full
    server (its log, under log_dir, says when it turned clients away)."""
    home = private_dir("jobs-cli-test-limited-server-")
    server = EmbeddedServer(home)
    server.ensure_running()
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET max_connections = 20")
    server.stop()
    with psycopg.connect(server.ensure_running(), autocommit=True) as conn:
        assert conn.execute("SHOW max_connections").fetchone() == ("20",)
        migrate(conn, "public")
    yield server
    server.stop()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def jobs_template(pg_server):
    janitor = DatabaseJanitor(dbname=TEMPLATE, as_template=True, **pg_server)
    janitor.init()
    # Not janitor.load(schema.sql): it runs the file as one transaction, where
    # CREATE INDEX CONCURRENTLY cannot run.
    with psycopg.connect(host=pg_server["host"], port=PORT, user=SUPERUSER, dbname=TEMPLATE,
                         autocommit=True) as conn:
        migrate(conn, "public")
    yield TEMPLATE
    janitor.drop()


@pytest.fixture
def db_url(pg_server, jobs_template) -> str:
    """conninfo of a fresh database holding an empty jobs table."""
    dbname = f"test_{os.getpid()}_{next(_database_numbers)}"
    janitor = DatabaseJanitor(dbname=dbname, template_dbname=jobs_template, **pg_server)
    with janitor:
        yield f"host='{pg_server['host']}' port={PORT} user={SUPERUSER} dbname={dbname}"


@pytest.fixture
def conn(db_url):
    with psycopg.connect(db_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def home() -> Path:
    path = private_dir("jobs-cli-test-home-")
    yield path
    # A test that started an embedded server in this home leaves it running.
    EmbeddedServer(path).stop() if (path / "data" / "postmaster.pid").exists() else None
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def database(db_url, home) -> Database:
    return Database(url=db_url, home=home)


@pytest.fixture
def cli_env(db_url, home) -> dict[str, str]:
    """Environment for a jobs-cli subprocess pointed at this test's database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBS_", "PG"))}
    env.update(PATH=f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}",
               JOBS_DATABASE_URL=db_url, JOBS_HOME=str(home), **NO_WAITING)
    return env


@pytest.fixture
def cli(cli_env):
    """Run the installed jobs-cli as a subprocess: cli("start", "a") -> CompletedProcess."""
    def run(*args: str, env: dict[str, str] | None = None, input: str | None = None):
        return subprocess.run(["jobs-cli", *args], env={**cli_env, **(env or {})}, input=input,
                              capture_output=True, text=True, timeout=60)
    return run


@pytest.fixture
def sh(cli_env):
    """Run a script with /bin/sh -c, as cron and shell-scripted ETL do."""
    def run(script: str, env: dict[str, str] | None = None):
        return subprocess.run(["sh", "-c", script], env={**cli_env, **(env or {})},
                              capture_output=True, text=True, timeout=60)
    return run


@pytest.fixture
def told() -> list[str]:
    """What a Recorder made by `make_recorder` told the user."""
    return []


@pytest.fixture
def make_recorder(database, told):
    """make(database=this test's, retry_seconds=0.5) -> a Recorder, closed at teardown."""
    from jobs_cli.recorder import Recorder

    opened = []

    def make(target: Database = database, retry_seconds: float = 0.5) -> "Recorder":
        opened.append(Recorder(target, retry_seconds=retry_seconds, tell=told.append))
        return opened[-1]

    yield make
    for recorder in opened:
        recorder.close()
