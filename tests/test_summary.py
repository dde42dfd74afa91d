"""jobs_summary, the per-name summary the triggers keep: always what the jobs table says.

Whatever writes (the tool, a DBA with SQL, a role with no rights on the summary,
two writers at once, `init` adopting a table while writers go on), the summary
must equal the same figures computed from the whole table.
"""

from __future__ import annotations

import threading
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from jobs_cli import runs
from jobs_cli.migrations import migrate

SCHEMA = "public"
WRITER = "jobs_summary_test_writer"

# The summary's columns, computed from the whole table.
FROM_THE_TABLE = """
SELECT *, coalesce((SELECT bool_or(status = 'in_progress' OR end_date IS NULL)
                    FROM unnest(recent_statuses, recent_ends) AS run(status, end_date)), false)
FROM (
SELECT name, count(*) AS runs,
       count(*) FILTER (WHERE status = 'success') AS successes,
       count(*) FILTER (WHERE status = 'error') AS errors,
       (array_agg(id::bigint ORDER BY start_date DESC, id DESC))[1:20] AS recent_ids,
       (array_agg(status ORDER BY start_date DESC, id DESC))[1:20] AS recent_statuses,
       (array_agg(start_date ORDER BY start_date DESC, id DESC))[1:20] AS recent_starts,
       (array_agg(end_date ORDER BY start_date DESC, id DESC))[1:20] AS recent_ends,
       (array_agg(extract(epoch FROM end_date - start_date)::float8
                  ORDER BY start_date DESC, id DESC))[1:20] AS recent_durations,
       (array_agg(start_date ORDER BY end_date DESC NULLS LAST, id DESC)
            FILTER (WHERE status = 'success'))[1] AS last_success_start,
       (array_agg(end_date ORDER BY end_date DESC NULLS LAST, id DESC)
            FILTER (WHERE status = 'success'))[1] AS last_success_end,
       (array_agg(records_processed ORDER BY end_date DESC NULLS LAST, id DESC)
            FILTER (WHERE status = 'success'))[1] AS last_success_records
FROM {table} GROUP BY name
) counted ORDER BY name
"""
KEPT = """
SELECT name, runs, successes, errors, recent_ids, recent_statuses, recent_starts, recent_ends,
       recent_durations, last_success_start, last_success_end, last_success_records,
       recent_unsettled
FROM {summary} ORDER BY name
"""


def assert_summary_is_the_table(conn: psycopg.Connection, schema: str = SCHEMA) -> None:
    expected = conn.execute(runs.statement(FROM_THE_TABLE, schema)).fetchall()
    assert conn.execute(runs.statement(KEPT, schema)).fetchall() == expected


@pytest.fixture
def writer_url(conn, db_url) -> str:
    """A role that may write runs but has no right at all on the summary."""
    conn.execute(f"""DO $$ BEGIN CREATE ROLE {WRITER} LOGIN;
                     EXCEPTION WHEN duplicate_object THEN NULL; END $$""")
    conn.execute(f"GRANT USAGE ON SCHEMA public TO {WRITER}")
    conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON jobs TO {WRITER}")
    conn.execute(f"GRANT USAGE ON SEQUENCE jobs_id_seq TO {WRITER}")
    return f"{db_url} user={WRITER}"


@pytest.fixture
def writer(writer_url):
    with psycopg.connect(writer_url, autocommit=True) as connection:
        yield connection


def test_the_writer_role_cannot_touch_the_summary(writer):
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        writer.execute("SELECT * FROM jobs_summary")


# Statements a DBA or another program might run, each on a slice of the table.
INSERT = """
INSERT INTO jobs (name, status, start_date, end_date, records_processed, source, destination)
SELECT 'job_' || (i %% %(names)s), %(status)s, now() - (i * interval '7 minutes'),
       CASE WHEN %(status)s <> 'in_progress' THEN now() - (i * interval '7 minutes') + interval '1 minute' END,
       i, 'erp', 'dwh'
FROM generate_series(1, %(count)s) AS i
"""
OPERATIONS = {
    "insert": st.fixed_dictionaries({
        "count": st.integers(1, 30), "names": st.integers(1, 4),
        "status": st.sampled_from(["success", "error", "in_progress"])}),
    "end": st.fixed_dictionaries({"status": st.sampled_from(["success", "error"]),
                                  "modulo": st.integers(1, 4)}),
    "rename": st.fixed_dictionaries({"modulo": st.integers(2, 5), "name": st.sampled_from(
        ["job_0", "job_9"])}),
    "move": st.fixed_dictionaries({"modulo": st.integers(2, 5), "hours": st.integers(-48, 48)}),
    "records": st.fixed_dictionaries({"modulo": st.integers(1, 5)}),
    "heartbeat": st.just({}),
    "delete": st.fixed_dictionaries({"modulo": st.integers(2, 6)}),
    "truncate": st.just({}),
}
SQL = {
    "insert": INSERT,
    "end": """UPDATE jobs SET status = %(status)s, end_date = start_date + interval '2 minutes'
              WHERE status = 'in_progress' AND id %% %(modulo)s = 0""",
    "rename": "UPDATE jobs SET name = %(name)s WHERE id %% %(modulo)s = 1",
    "move": """UPDATE jobs SET start_date = start_date + %(hours)s * interval '1 hour',
                               end_date = end_date + %(hours)s * interval '1 hour'
               WHERE id %% %(modulo)s = 0""",
    "records": "UPDATE jobs SET records_processed = records_processed + 1 WHERE id %% %(modulo)s = 0",
    "heartbeat": "UPDATE jobs SET lease_until = now() + interval '1 minute' WHERE status = 'in_progress'",
    "delete": "DELETE FROM jobs WHERE id %% %(modulo)s = 0",
    "truncate": "TRUNCATE jobs",
}
operation = st.one_of(*(st.tuples(st.just(name), params) for name, params in OPERATIONS.items()))


@settings(deadline=None, derandomize=True, database=None, max_examples=25,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(operation, min_size=1, max_size=8))
def test_after_any_statement_by_anyone_the_summary_is_the_table(conn, writer, operations):
    """INSERT, UPDATE, DELETE and TRUNCATE, by a role with no rights on the summary,
    in one transaction or each on its own."""
    writer.execute("TRUNCATE jobs")
    for name, params in operations:
        writer.execute(SQL[name], params)
        assert_summary_is_the_table(conn)
    with writer.transaction():
        for name, params in operations:
            writer.execute(SQL[name], params)
    assert_summary_is_the_table(conn)


EACH_KIND = [
    ("insert", {"count": 30, "names": 3, "status": "success"}),
    ("insert", {"count": 5, "names": 2, "status": "in_progress"}),
    ("heartbeat", {}), ("records", {"modulo": 1}), ("end", {"status": "error", "modulo": 1}),
    ("move", {"modulo": 2, "hours": 5}), ("rename", {"modulo": 2, "name": "job_9"}),
    ("delete", {"modulo": 3}), ("truncate", {}), ("insert", {"count": 3, "names": 1,
                                                             "status": "error"}),
]


def test_each_kind_of_statement(conn, writer):
    for name, params in EACH_KIND:
        writer.execute(SQL[name], params)
        assert_summary_is_the_table(conn)


def test_an_update_that_leaves_the_summary_alone_writes_nothing_to_it(conn, writer):
    writer.execute(INSERT, {"count": 3, "names": 1, "status": "in_progress"})
    (before,) = conn.execute("SELECT xmin::text FROM jobs_summary").fetchone()
    writer.execute(SQL["heartbeat"])
    assert conn.execute("SELECT xmin::text FROM jobs_summary").fetchone() == (before,)


def test_concurrent_writers_of_the_same_names(conn, writer_url):
    """The tool's own statements from two connections at once, on the same names."""
    start = threading.Barrier(2)
    failures = []

    def write(worker: int) -> None:
        try:
            with psycopg.connect(writer_url, autocommit=True) as connection:
                start.wait()
                for round in range(40):
                    run = runs.start_run(connection, SCHEMA, f"job_{round % 3}")
                    runs.end_run(connection, SCHEMA, run.id, "success" if round % 4 else "error",
                                 records=worker)
                    if round % 10 == 9:  # ended runs only: the other may be about to end its own
                        connection.execute("DELETE FROM jobs WHERE id %% 7 = %s AND status <> "
                                           "'in_progress'", (worker,))
        except Exception as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert_summary_is_the_table(conn)


ORIGINAL_TABLE = """
CREATE TABLE {table} (
    id serial PRIMARY KEY, name text NOT NULL, start_date timestamptz NOT NULL,
    end_date timestamptz, message text, status text, records_processed integer,
    source text NOT NULL, destination text NOT NULL)
"""
ORIGINAL_INSERT = """
INSERT INTO {table} (name, start_date, end_date, status, records_processed, source, destination)
VALUES (%(name)s, now() - %(ago)s * interval '1 minute', now(), %(status)s, 1, 'erp', 'dwh')
"""

# Some without a status, as the original allowed. Run without parameters: % is modulo.
ORIGINAL_ROWS = """
INSERT INTO {table} (name, start_date, end_date, status, records_processed, source, destination)
SELECT 'job_' || i % 5, now() - i * interval '1 minute', now(),
       (ARRAY['success', 'error', NULL])[i % 3 + 1], 1, 'erp', 'dwh'
FROM generate_series(1, 2000) AS i
"""


def test_init_adopting_a_table_backfills_it_while_a_writer_goes_on(conn, db_url):
    """Rows written before, during and after `init` all count, exactly once."""
    schema = "adopted"
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    conn.execute(runs.statement(ORIGINAL_TABLE, schema))
    conn.execute(runs.statement(ORIGINAL_ROWS, schema))
    adopted = threading.Event()
    written, failures = [], []

    def write() -> None:
        try:
            with psycopg.connect(db_url, autocommit=True) as connection:
                statement = runs.statement(ORIGINAL_INSERT, schema)
                # Writes until init is done, then a few more under the triggers.
                while len(written) < 20 or not adopted.is_set() or len(written) < after + 20:
                    connection.execute(statement, {"name": f"job_{len(written) % 7}",
                                                   "ago": len(written), "status": "success"})
                    written.append(1)
        except Exception as exc:  # reported by the main thread
            failures.append(exc)
            adopted.wait()

    after = 10**9
    thread = threading.Thread(target=write)
    thread.start()
    migrate(conn, schema)
    after = len(written)
    adopted.set()
    thread.join()
    assert failures == []
    assert_summary_is_the_table(conn, schema)
    assert conn.execute(runs.statement("SELECT sum(runs) FROM {summary}", schema)).fetchone() \
        == (2000 + len(written),)
    # Adopting again changes nothing.
    migrate(conn, schema)
    assert_summary_is_the_table(conn, schema)


def test_status_and_metrics_read_the_summary(conn):
    """What the views show comes from the summary's figures (the table's, in the end)."""
    from jobs_cli.monitor import ended_counts, job_summaries

    conn.execute(INSERT, {"count": 45, "names": 3, "status": "success"})
    conn.execute(INSERT, {"count": 6, "names": 3, "status": "error"})
    # Run 1 (job_1's) becomes its newest, and dead.
    conn.execute("""UPDATE jobs SET status = 'in_progress', start_date = now(), end_date = NULL,
                                    lease_until = now() - interval '1 minute' WHERE id = 1""")
    counts = {(c.name, c.status): c.count for c in ended_counts(conn, SCHEMA)}
    assert counts == {("job_0", "success"): 15, ("job_1", "success"): 14,
                      ("job_2", "success"): 15, ("job_0", "error"): 2, ("job_1", "error"): 2,
                      ("job_2", "error"): 2}
    summaries = {s.name: s for s in job_summaries(conn, SCHEMA)}
    assert summaries["job_1"].dead == 1 and summaries["job_1"].last_state == "dead"
    conn.execute("DELETE FROM jobs WHERE name = 'job_2'")
    assert [s.name for s in job_summaries(conn, SCHEMA)] == ["job_0", "job_1"]
    assert job_summaries(conn, SCHEMA, ["job_2"])[0].last_run_id is None
