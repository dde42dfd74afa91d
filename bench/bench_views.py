"""How long the views' statements take on 1,000,000 runs over 1,000 job names.

The requirement: no statement of `list`, `status` or `last-success` may take more
than 100 ms of database time. Each statement is run through EXPLAIN ANALYZE a few
times and the median of planning + execution time is reported, next to a naive
baseline measured in the same run (DISTINCT ON over the whole table, the original's
`jobs_latest`), so the ratio says what the query shapes and indexes buy.

    python bench/bench_views.py                      # a private server in a temp dir
    python bench/bench_views.py --database-url URL   # a schema of its own, dropped after

Exit status 1 when a required statement is over the limit.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import psycopg
from psycopg import sql

from jobs_cli import monitor, runs
from jobs_cli.schema import apply_schema
from jobs_cli.server import EmbeddedServer

LIMIT_MS = 100.0
REPEATS = 5

# Each name runs once every 1000 rows, ~10 h apart; 95% succeed. The newest run of
# one name in twenty is unfinished: live, dead, or unsupervised (no lease).
GENERATE = """
INSERT INTO {table} (name, status, start_date, end_date, records_processed, source,
                     destination, message, lease_until)
SELECT 'job_' || lpad((i %% %(names)s)::text, 4, '0'),
       status,
       start_date,
       CASE WHEN status <> 'in_progress' THEN start_date + (i %% 600) * interval '1 second' END,
       i %% 5000, 'erp', 'dwh',
       CASE WHEN status = 'error' THEN 'source unreachable' END,
       CASE WHEN status = 'in_progress' AND i %% 3 = 0 THEN now() + interval '1 minute'
            WHEN status = 'in_progress' AND i %% 3 = 1 THEN now() - interval '1 hour' END
FROM generate_series(1, %(rows)s) AS i,
     LATERAL (SELECT now() - (%(rows)s - i) * interval '36 seconds' AS start_date) s,
     LATERAL (SELECT CASE
         WHEN i > %(rows)s - %(names)s AND i %% 20 = 0 THEN 'in_progress'
         WHEN i %% 20 = 7 THEN 'error'
         ELSE 'success' END AS status) t
"""

BASELINE = "SELECT DISTINCT ON (name) * FROM {table} ORDER BY name, start_date DESC, id DESC"


def statements() -> dict[str, tuple[str, dict, bool]]:
    """label -> (template, params, bound by the 100 ms requirement)."""
    def listing(**filters) -> tuple[str, dict, bool]:
        template, params = monitor.list_query(**filters)
        return template, params, True

    summaries, summary_params = monitor.summaries_query()
    checked, check_params = monitor.summaries_query(["job_0001", "job_0500", "job_0999"])
    return {
        "list": listing(),
        "list --name job_0042": listing(name="job_0042"),
        "list --name 'job_004*'": listing(name="job_004*"),
        "list --name '*'": listing(name="*"),
        "list --status success": listing(status="success"),
        "list --status error": listing(status="error"),
        "list --status dead": listing(status="dead"),
        "list --status in_progress": listing(status="in_progress"),
        "list --since 2h": listing(since=timedelta(hours=2)),
        "list --name job_0042 --status error": listing(name="job_0042", status="error"),
        "status": (summaries, summary_params, True),
        "last-success": (runs.LAST_START_BY_STATUS, {"name": "job_0042", "status": "success"},
                         True),
        "show": (monitor.SELECT_RUN_VIEW, {"id": 123456}, False),
        "check (3 names)": (checked, check_params, False),
        "metrics: counts": (monitor.ENDED_COUNTS, {}, False),
        # Unqualified: found through the search_path, which main() sets to the schema.
        "SELECT * FROM jobs_latest": ("SELECT * FROM jobs_latest", {}, False),
    }


def explain_ms(conn: psycopg.Connection, statement: sql.Composable, params: dict) -> float:
    """Median planning + execution time in ms, after one warm-up run."""
    explain = sql.SQL("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) ") + statement
    times = []
    for _ in range(REPEATS + 1):
        (plan,) = conn.execute(explain, params).fetchone()
        times.append(plan[0]["Planning Time"] + plan[0]["Execution Time"])
    return statistics.median(times[1:])


def fill(conn: psycopg.Connection, schema: str, rows: int, names: int) -> None:
    """Insert the runs into an existing jobs table (the tests use it too)."""
    conn.execute(runs.statement(GENERATE, schema), {"rows": rows, "names": names})
    # As autovacuum would: statistics for the planner, a visibility map for index-only scans.
    conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(schema, "jobs")))


def generate(conn: psycopg.Connection, schema: str, rows: int, names: int) -> None:
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    apply_schema(conn, schema)
    began = time.monotonic()
    fill(conn, schema, rows, names)
    print(f"generated {rows:,} runs over {names:,} names in {time.monotonic() - began:.1f} s")


@contextmanager
def database(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    home = Path(tempfile.mkdtemp(prefix="jobs-cli-bench-"))
    home.chmod(0o755)  # as root the server runs as another user, who must enter it
    server = EmbeddedServer(home)
    try:
        yield server.ensure_running()
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="use this database (default: a private server)")
    parser.add_argument("--schema", default="jobs_bench", help="schema to create and drop")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--names", type=int, default=1_000)
    parser.add_argument("--keep", action="store_true", help="keep the schema afterwards")
    args = parser.parse_args()

    with database(args.database_url) as url, psycopg.connect(url, autocommit=True) as conn:
        try:
            generate(conn, args.schema, args.rows, args.names)
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(args.schema)))
            baseline = explain_ms(conn, runs.statement(BASELINE, args.schema), {})
            print(f"\nbaseline, DISTINCT ON over the table: {baseline:8.2f} ms\n")
            print(f"{'statement':40} {'ms':>8} {'baseline/ms':>12}  verdict")
            failed = False
            for label, (template, params, required) in statements().items():
                took = explain_ms(conn, runs.statement(template, args.schema), params)
                verdict = ("PASS" if took <= LIMIT_MS else "FAIL") if required else "(info)"
                failed |= required and took > LIMIT_MS
                print(f"{label:40} {took:8.2f} {baseline / took:11.0f}x  {verdict}")
        finally:
            if not args.keep:
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(args.schema)))
    print(f"\n{'FAIL' if failed else 'PASS'}: required statements within {LIMIT_MS:g} ms")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
