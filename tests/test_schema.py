"""schema.sql: idempotent, additive, adopts an original-style table in place."""

from __future__ import annotations

import psycopg
import pytest

from jobs_cli import runs
from jobs_cli.schema import apply_schema

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


def snapshot(conn, table="api.jobs"):
    return conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()


@pytest.fixture
def original(conn):
    conn.execute(ORIGINAL_DDL)
    return conn


def test_adoption_keeps_every_row_and_reports_violations(original):
    before = snapshot(original)
    warnings = apply_schema(original, "api")
    after = original.execute(
        "SELECT id, name, start_date, end_date, message, status, records_processed, source,"
        " destination FROM api.jobs ORDER BY id").fetchall()
    assert after == before
    text = "\n".join(warnings)
    assert "1 existing row(s) have no status" in text
    assert "1 existing row(s) have a status other than" in text
    assert "1 existing row(s) end before they start" in text
    assert "1 existing row(s) have negative records_processed" in text


def test_adopted_table_checks_new_rows(original):
    apply_schema(original, "api")
    for bad in ("status = NULL", "status = 'done'", "records_processed = -1",
                "end_date = start_date - interval '1 s'"):
        with pytest.raises(psycopg.errors.IntegrityError):
            original.execute(f"UPDATE api.jobs SET {bad} WHERE name = 'good'")
    run = runs.start_run(original, "api", "good")
    assert run.id == 5 and run.start_date is not None


def test_adopted_table_serves_last_success_and_latest_view(original):
    apply_schema(original, "api")
    assert runs.last_start(original, "api", "good") == 1525186800
    latest = dict(original.execute("SELECT name, id FROM api.jobs_latest").fetchall())
    assert latest == {"good": 1, "odd": 4}


def test_adopted_rows_are_not_rewritten_for_the_abandoned_flag(original):
    """Old rows keep NULL (judged by their message); rows written since hold a value."""
    original.execute("INSERT INTO api.jobs (name, start_date, end_date, message, status,"
                     " source, destination) VALUES ('reaped', now(), now(),"
                     " 'abandoned: no heartbeat since 2018-05-01T15:00:00Z', 'error', '', '')")
    apply_schema(original, "api")
    assert original.execute("SELECT count(*) FROM api.jobs WHERE abandoned IS NOT NULL"
                            ).fetchone() == (0,)
    assert runs.get_run(original, "api", 5).abandoned is True
    assert runs.get_run(original, "api", 1).abandoned is False
    run = runs.start_run(original, "api", "new")
    ended = runs.end_run(original, "api", run.id, "error", message="abandoned: by hand")
    assert ended.abandoned is False
    assert original.execute("SELECT abandoned FROM api.jobs WHERE id = %s",
                            (run.id,)).fetchone() == (False,)


def test_reapplying_is_idempotent_and_validates_mended_rows(original):
    apply_schema(original, "api")
    original.execute("UPDATE api.jobs SET status = 'error', records_processed = 0,"
                     " end_date = start_date WHERE name = 'odd'")
    assert apply_schema(original, "api") == []
    unvalidated = original.execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = 'api.jobs'::regclass"
        " AND NOT convalidated").fetchall()
    assert unvalidated == []
    nullable = original.execute(
        "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'api.jobs'::regclass"
        " AND attname = 'status'").fetchone()[0]
    assert nullable is True


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


def test_applying_twice_to_a_fresh_table_changes_nothing(conn):
    def definition():
        return conn.execute("""
            SELECT (SELECT array_agg(pg_get_constraintdef(oid) ORDER BY conname)
                    FROM pg_constraint WHERE conrelid = 'jobs'::regclass),
                   (SELECT array_agg(indexdef ORDER BY indexname) FROM pg_indexes
                    WHERE tablename = 'jobs' AND schemaname = 'public')""").fetchone()
    before = definition()
    assert apply_schema(conn, "public") == []
    assert definition() == before


def test_init_command_adopts_and_reports_on_stderr(original, cli):
    result = cli("--schema", "api", "init")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "warning: 1 existing row(s) end before they start" in result.stderr
    assert original.execute("SELECT count(*) FROM api.jobs").fetchone()[0] == 4


def test_schema_sql_runs_with_psql_semantics(conn):
    """The file needs no client-side processing: one simple-protocol batch, twice."""
    from jobs_cli.schema import schema_text

    conn.execute("CREATE SCHEMA plain; SET search_path TO plain")
    conn.execute(schema_text().encode())
    conn.execute(schema_text().encode())
    assert conn.execute("SELECT count(*) FROM plain.jobs").fetchone()[0] == 0
