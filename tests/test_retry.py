"""Waiting for the database: what is retried, the loop, writes repeated after a lost
connection, and real outages (a stopped server, a full one) through the CLI."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import threading
import time
import uuid
from dataclasses import replace

import psycopg
import pytest
from conftest import wait_until

from jobs_cli import runs
from jobs_cli.api import Job
from jobs_cli.db import call as call_patiently
from jobs_cli.errors import Refused
from jobs_cli.retry import Patience, call, connect, refused_for_good, transient

SCHEMA = "public"
NO_SOCKET = "host=/nonexistent/jobs-cli-test port=5432 dbname=x user=x"
REFUSED = "host=127.0.0.1 port=1 dbname=x user=x"


def error_of(action) -> psycopg.Error:
    try:
        action()
    except psycopg.Error as error:
        return error
    raise AssertionError("no error")


def count(conn, where: str = "true") -> int:
    return conn.execute(f"SELECT count(*) FROM jobs WHERE {where}").fetchone()[0]


# -- what is retried ---------------------------------------------------------------------

@pytest.mark.parametrize("conninfo", [NO_SOCKET, REFUSED])
def test_no_answer_from_a_server_is_transient(conninfo):
    error = error_of(lambda: psycopg.connect(conninfo))
    assert error.sqlstate is None and transient(error)


@pytest.mark.parametrize("change, state", [
    (("dbname=", "dbname=no_such_"), "3D000"),
    (("user=postgres", "user=no_such_role"), "28000"),
])
def test_what_the_server_says_while_connecting_is_classified_by_its_sqlstate(
        db_url, change, state):
    error = error_of(lambda: connect(db_url.replace(*change)))
    assert error.sqlstate == state and not transient(error)


def test_a_full_server_is_transient(limited_server):
    conninfo = limited_server.ensure_running()
    held = []
    try:
        while True:
            held.append(connect(conninfo))
    except psycopg.Error as error:
        full = error
    finally:
        for conn in held:
            conn.close()
    assert full.sqlstate == "53300" and transient(full)


def test_once_connected_errors_are_worded_as_psycopg_always_does(db_url):
    with connect(db_url, autocommit=True) as conn:
        error = error_of(lambda: conn.execute("SELECT 1/0"))
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert (str(error), error.sqlstate) == ("division by zero", "22012")


def test_an_administrators_shutdown_of_the_connection_is_transient(db_url, conn):
    victim = psycopg.connect(db_url, autocommit=True)
    conn.execute("SELECT pg_terminate_backend(%s)", (victim.info.backend_pid,))
    error = error_of(lambda: victim.execute("SELECT 1"))
    victim.close()
    assert error.sqlstate == "57P01" and transient(error) and not refused_for_good(error)


@pytest.mark.parametrize("statement, state, for_good", [
    ("SELECT FROM no_such_table", "42P01", False),
    ("INSERT INTO jobs (name, status, source, destination) VALUES ('a', 'bogus', '', '')",
     "23514", True),
    ("SELECT 1/0", "22012", True),
])
def test_errors_waiting_cannot_mend_are_permanent(conn, statement, state, for_good):
    error = error_of(lambda: conn.execute(statement))
    assert error.sqlstate == state and not transient(error)
    assert refused_for_good(error) == for_good


def test_a_missing_permission_is_refused_for_good(conn):
    role = f"jobs_cli_test_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE ROLE {role}")
    try:
        conn.execute(f"SET ROLE {role}")
        error = error_of(lambda: conn.execute("UPDATE jobs SET message = 'x'"))
        conn.execute("RESET ROLE")
    finally:
        conn.execute(f"DROP ROLE {role}")
    assert error.sqlstate == "42501" and refused_for_good(error) and not transient(error)


# -- the loop ------------------------------------------------------------------------------

def test_no_patience_is_one_attempt():
    attempts = []
    with pytest.raises(psycopg.OperationalError):
        call(lambda timeout: attempts.append(timeout) or psycopg.connect(REFUSED), Patience())
    assert attempts == [10]


def test_a_transient_failure_is_retried_and_the_wait_told_once(db_url):
    attempts, told = [], []

    def attempt(connect_timeout: int) -> psycopg.Connection:
        attempts.append(connect_timeout)
        return psycopg.connect(REFUSED if len(attempts) < 4 else db_url)

    with call(attempt, Patience(seconds=60, on_wait=told.append), lambda e: "waiting") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert len(attempts) == 4 and told == ["waiting"]
    assert all(2 <= timeout <= 10 for timeout in attempts)


def test_a_permanent_failure_is_raised_at_once(conn):
    attempts, told = [], []
    with pytest.raises(psycopg.errors.UndefinedTable):
        call(lambda _: attempts.append(1) or conn.execute("SELECT FROM no_such_table"),
             Patience(seconds=60, on_wait=told.append))
    assert (attempts, told) == ([1], [])


def test_waiting_ends_with_the_last_failure_when_the_patience_is_spent():
    attempts = []
    began = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        call(lambda _: attempts.append(1) or psycopg.connect(NO_SOCKET), Patience(seconds=0.5))
    assert 0.5 <= time.monotonic() - began < 10 and len(attempts) >= 2


def test_connect_timeouts_stay_within_the_patience_left(db_url):
    timeouts = []

    def attempt(connect_timeout: int):
        timeouts.append(connect_timeout)
        return psycopg.connect(NO_SOCKET)

    with pytest.raises(psycopg.OperationalError):
        call(attempt, Patience(seconds=0.3, connect_timeout=10))
    assert set(timeouts) == {2}  # libpq's least: the patience left is less


# -- writes repeated after a lost connection ------------------------------------------------

def test_a_repeated_start_returns_the_run_it_inserted(conn):
    first = runs.start_run(conn, SCHEMA, "a", run_key="k1")
    assert runs.start_run(conn, SCHEMA, "a", run_key="k1") == first
    assert runs.start_run(conn, SCHEMA, "a").id != first.id  # no key, no such promise
    assert count(conn) == 2


def test_a_repeated_claim_finds_its_own_run_not_an_overlap(conn):
    def invocation(key: str) -> runs.Invocation:
        return runs.Invocation(run_key=key, name="w", source="", destination="", command="true",
                               host="etl1", pid=1, username="etl")

    def claim(key: str) -> runs.Claim:
        return runs.claim_run(conn, SCHEMA, invocation(key), lease_seconds=90,
                              allow_overlap=False)

    first = claim("k1")
    again = claim("k1")
    assert (again.run, again.blocking) == (first.run, None)
    other = claim("k2")
    assert (other.run, other.blocking) == (None, first.run)
    assert count(conn) == 1


def test_a_repeated_end_succeeds_and_any_other_end_is_refused(conn):
    run = runs.start_run(conn, SCHEMA, "a")
    ended = runs.end_run(conn, SCHEMA, run.id, "success", records=5, end_key="e1")
    assert runs.end_run(conn, SCHEMA, run.id, "success", records=5, end_key="e1") == ended
    for other_key in ("e2", None):
        with pytest.raises(Refused, match="has already ended: success"):
            runs.end_run(conn, SCHEMA, run.id, "error", end_key=other_key)
    assert conn.execute("SELECT status, records_processed FROM jobs").fetchall() == [
        ("success", 5)]


def lose_connection_once(conn, attempts: list, operation):
    """An operation whose connection is lost after it was sent, the first time only:
    its fate is unknown to the caller, which must repeat it."""
    def attempt(connection):
        attempts.append(connection.info.backend_pid)
        done = operation(connection)
        if len(attempts) == 1:
            conn.execute("SELECT pg_terminate_backend(%s)", (connection.info.backend_pid,))
            connection.execute("SELECT 1")
        return done
    return attempt


def test_a_start_and_finish_whose_connection_is_lost_record_once(database, conn):
    patient = replace(database, patience=Patience(seconds=30))
    attempts: list[int] = []
    run = call_patiently(patient, lose_connection_once(conn, attempts, lambda c: runs.start_run(
        c, SCHEMA, "a", run_key="k1")))
    assert len(attempts) == 2 and count(conn) == 1
    attempts.clear()
    ended = call_patiently(patient, lose_connection_once(conn, attempts, lambda c: runs.end_run(
        c, SCHEMA, run.id, "success", records=3, end_key="e1")))
    assert len(attempts) == 2 and (ended.id, ended.status, ended.records_processed) == (
        run.id, "success", 3)


# -- through the CLI -------------------------------------------------------------------------

@pytest.mark.parametrize("args, code", [
    (["start", "a"], 1),
    (["run", "--name", "a", "--", "touch", "ran"], 69),
])
def test_giving_up_once_the_patience_is_spent(cli, tmp_path, args, code):
    began = time.monotonic()
    result = cli(*args, env={"JOBS_DATABASE_URL": NO_SOCKET, "JOBS_START_RETRY_SECONDS": "1"})
    assert time.monotonic() - began >= 1
    assert result.returncode == code
    # Not a terminal: no word of waiting, only the outcome.
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(
        'jobs-cli: cannot reach database "x"'), result.stderr
    assert not (tmp_path / "ran").exists()


def test_check_answers_within_ten_seconds_whatever_the_patience(cli):
    began = time.monotonic()
    result = cli("check", "a", "--max-age", "1h",
                 env={"JOBS_DATABASE_URL": NO_SOCKET, "JOBS_START_RETRY_SECONDS": "600"})
    assert time.monotonic() - began < 10
    assert result.returncode == 3 and result.stdout.startswith("UNKNOWN")


def test_a_bad_patience_is_a_usage_error(cli):
    result = cli("last-success", "a", env={"JOBS_START_RETRY_SECONDS": "soon"})
    assert result.returncode == 2 and result.stderr.startswith(
        "jobs-cli: JOBS_START_RETRY_SECONDS: ")


def too_many_clients(server) -> int:
    """How often the server's log says it turned a client away."""
    return sum(path.read_bytes().count(b"too many clients")
               for path in server.log_dir.glob("postgresql-*.log"))


@pytest.fixture
def full_server(limited_server, cli_env):
    """cli_env pointed at limited_server (max_connections = 20), with an empty table."""
    conninfo = limited_server.ensure_running()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("TRUNCATE jobs RESTART IDENTITY")
    cli_env.update(JOBS_DATABASE_URL=conninfo, JOBS_START_RETRY_SECONDS="120")
    return conninfo


def test_a_run_started_while_the_server_is_down_runs_once_it_is_back(
        limited_server, full_server, cli_env, tmp_path):
    limited_server.stop()
    terminal, stderr = pty.openpty()
    wrapper = subprocess.Popen(["jobs-cli", "run", "--name", "back", "--", "sh", "-c",
                                "echo ran >> ran"], env=cli_env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=stderr)
    os.close(stderr)
    said = bytearray()

    def waiting_said() -> bool:
        if select.select([terminal], [], [], 0.1)[0]:
            said.extend(os.read(terminal, 4096))
        return b"waiting up to 120s for " in said

    try:
        wait_until(waiting_said, timeout=60, what="the wrapper to say it is waiting")
        assert not (tmp_path / "ran").exists()
        limited_server.ensure_running()
        assert wrapper.wait(timeout=120) == 0
    finally:
        wrapper.kill()
        wrapper.communicate()
        os.close(terminal)
    assert said.count(b"waiting") == 1
    assert (tmp_path / "ran").read_text() == "ran\n"
    with psycopg.connect(full_server) as conn:
        assert conn.execute("SELECT name, status FROM jobs").fetchall() == [("back", "success")]


def test_a_hundred_runs_and_start_finish_pairs_on_twenty_connections_all_record(
        limited_server, full_server, cli_env, monkeypatch):
    # Every slot taken first, so every client is turned away at least once.
    held = []
    while True:
        try:
            held.append(psycopg.connect(full_server, autocommit=True))
        except psycopg.OperationalError:
            break
    turned_away = too_many_clients(limited_server)
    # All wait on one pipe and start together when the test closes its end.
    gate, release = os.pipe()
    wrappers = [subprocess.Popen(["sh", "-c", 'read go; exec jobs-cli run --name "run$0" -- true',
                                  str(n)], stdin=gate, env=cli_env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE) for n in range(100)]
    os.close(gate)
    monkeypatch.setenv("JOBS_START_RETRY_SECONDS", "120")
    jobs = [Job(f"pair{n}", database_url=full_server) for n in range(100)]
    go, failures = threading.Event(), []

    def start_and_finish(job: Job) -> None:
        go.wait()
        try:
            job.start()
            job.result("success", records_processed=1)
        except Exception as error:  # reported by the assertion below
            failures.append(error)

    pairs = [threading.Thread(target=start_and_finish, args=(job,)) for job in jobs]
    for pair in pairs:
        pair.start()
    try:
        os.close(release)
        go.set()
        wait_until(lambda: too_many_clients(limited_server) >= turned_away + 100, timeout=120,
                   what="clients turned away by the full server")
    finally:
        for conn in held:
            conn.close()
    outcomes = [wrapper.communicate(timeout=300) + (wrapper.returncode,) for wrapper in wrappers]
    for pair in pairs:
        pair.join(timeout=300)
    assert [outcome for outcome in outcomes if outcome != (b"", b"", 0)] == []
    assert failures == []
    with psycopg.connect(full_server) as conn:
        assert conn.execute("SELECT count(DISTINCT name), count(*) FROM jobs "
                            "WHERE status = 'success'").fetchone() == (200, 200)
        assert count(conn) == 200
