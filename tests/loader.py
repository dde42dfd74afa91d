"""An incremental loader, run by `jobs-cli run` in the simulation (tests/test_simulation.py,
bench/bench_simulation.py): copies the rows of SOURCE that changed since what the run
was handed into TARGET, with an idempotent upsert.

    python loader.py MODE SOURCE TARGET

MODE says what the run is handed and how it picks rows:
  time  modified_at >= to_timestamp($JOBS_LAST_SUCCESS)  (give `run --lookback` or not)
  id    id > $JOBS_LAST_CURSOR; reports the highest id copied as its cursor
  xid   xid >= $JOBS_LAST_CURSOR and xid < the oldest transaction still open;
        reports that horizon as its cursor (the remedy for sequences, see README)

The database is SIM_DATABASE_URL. SIM_FAIL=1: copy, report, then exit 1, as a load
that dies after part of its work.
"""

from __future__ import annotations

import os
import sys

import psycopg
from psycopg import sql

from jobs_cli import runs

# The source table the simulations write and load: each row knows when and in which
# transaction it was last written.
TABLE = """
CREATE TABLE {name} (
    id          bigserial PRIMARY KEY,
    v           text NOT NULL,
    modified_at timestamptz NOT NULL DEFAULT now(),
    xid         xid8 NOT NULL DEFAULT pg_current_xact_id()
)"""

# Rows that changed since a time: a look-back is the wrapper's (run --lookback).
SINCE_TIME = "modified_at >= to_timestamp({since})"
# Sequences are handed out at insert, not at commit: rows below the cursor can still appear.
AFTER_ID = "id > {cursor}::bigint"
# Every transaction below the horizon has ended: the rows stamped below it are final.
BELOW_HORIZON = "xid >= {cursor}::xid8 AND xid < {horizon}::xid8"

COPY = """
INSERT INTO {target} (id, v, modified_at, xid)
SELECT id, v, modified_at, xid FROM {source} WHERE {condition}
ON CONFLICT (id) DO UPDATE SET v = excluded.v, modified_at = excluded.modified_at
RETURNING id
"""


def main(mode: str, source: str, target: str) -> int:
    cursor = os.environ.get("JOBS_LAST_CURSOR") or "0"
    with psycopg.connect(os.environ["SIM_DATABASE_URL"], autocommit=True) as conn:
        with conn.transaction():
            horizon = conn.execute(
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text").fetchone()[0]
            condition = {
                "time": sql.SQL(SINCE_TIME).format(
                    since=sql.Literal(int(os.environ.get("JOBS_LAST_SUCCESS") or 0))),
                "id": sql.SQL(AFTER_ID).format(cursor=sql.Literal(cursor)),
                "xid": sql.SQL(BELOW_HORIZON).format(cursor=sql.Literal(cursor),
                                                     horizon=sql.Literal(horizon)),
            }[mode]
            copied = [row[0] for row in conn.execute(sql.SQL(COPY).format(
                source=sql.Identifier(source), target=sql.Identifier(target),
                condition=condition)).fetchall()]
        reached = {"time": None, "id": str(max([int(cursor), *copied])), "xid": horizon}[mode]
        runs.report_run(conn, os.environ.get("JOBS_SCHEMA", "public"), os.environ["JOBS_ID"],
                        records=len(copied), message=None, cursor=reached)
    return 1 if os.environ.get("SIM_FAIL") == "1" else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
