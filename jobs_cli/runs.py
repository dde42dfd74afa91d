"""Run operations and their SQL: the core shared by the CLI and the Python API.

Every function takes an open connection (see `db.connect`) and the schema
name, and returns dataclasses. Times are the database server's `now()`; no
client clock is ever written. Timestamps come back as timezone-aware
datetimes and epoch seconds are computed by the server, so results do not
depend on the client's or the session's time zone.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from functools import cache
from typing import TYPE_CHECKING, Any

from .errors import InvalidInput, NoSuccess, NotFound, Refused

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

IN_PROGRESS = "in_progress"
SUCCESS = "success"
ERROR = "error"
ENDED = (SUCCESS, ERROR)
MAX_RECORDS = 2**31 - 1  # records_processed is an integer column


@dataclass(frozen=True)
class Run:
    id: int
    name: str
    status: str
    start_date: datetime
    end_date: datetime | None
    message: str | None
    records_processed: int | None
    source: str
    destination: str
    host: str | None = None
    pid: int | None = None
    username: str | None = None
    command: str | None = None
    exit_code: int | None = None
    output: str | None = None
    heartbeat_at: datetime | None = None
    lease_until: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: timestamps as ISO-8601 in UTC."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}


RUN_COLUMNS = tuple(f.name for f in fields(Run))


def _jsonable(value: Any) -> Any:
    return iso_utc(value) if isinstance(value, datetime) else value


def iso_utc(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


# -- SQL --------------------------------------------------------------------
# {table} is the schema-qualified jobs table, {columns} the Run fields.

INSERT_RUN = """
INSERT INTO {table} (name, status, start_date, source, destination, records_processed, message)
VALUES (%(name)s, 'in_progress', now(), %(source)s, %(destination)s, 0, %(message)s)
RETURNING {columns}
"""

# An ended run is never changed again: the status guard makes finish/fail
# atomic, so two racing finishers cannot both win.
END_RUN = """
UPDATE {table}
SET status = %(status)s,
    end_date = greatest(now(), start_date),
    records_processed = coalesce(%(records)s, records_processed),
    message = coalesce(%(message)s, message)
WHERE id = %(id)s AND status = 'in_progress'
RETURNING {columns}
"""

SELECT_RUN = "SELECT {columns} FROM {table} WHERE id = %(id)s"

# "Most recent" by end_date as the original did; the answer is the run's start
# (see README: rows changed during that run are picked up by the next one).
# Served by the partial index jobs_success_by_name.
LAST_START_BY_STATUS = """
SELECT floor(extract(epoch FROM start_date))::bigint
FROM {table}
WHERE name = %(name)s AND status = %(status)s
ORDER BY end_date DESC NULLS LAST, id DESC
LIMIT 1
"""


@cache
def statement(template: str, schema: str) -> "sql.Composed":
    from psycopg import sql

    return sql.SQL(template).format(
        table=sql.Identifier(schema, "jobs"),
        columns=sql.SQL(", ").join(sql.Identifier(name) for name in RUN_COLUMNS),
    )


def fetch_run(conn: "psycopg.Connection", template: str, schema: str, params: dict) -> Run | None:
    from psycopg.rows import class_row

    with conn.cursor(row_factory=class_row(Run)) as cur:
        cur.execute(statement(template, schema), params)
        return cur.fetchone()


# -- validation ---------------------------------------------------------------

def validate_name(name: str) -> str:
    """Reject names a person could not tell apart or type; keep every other name exactly."""
    if not name or not name.strip():
        raise InvalidInput("job name must not be empty")
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        raise InvalidInput(f"job name {name!r} contains a control character")
    return name


def parse_run_id(value: str | int) -> int:
    try:
        run_id = int(str(value).strip())
    except ValueError:
        raise Refused(f"run id must be an integer, not {value!r}") from None
    if not 0 < run_id <= MAX_RECORDS:
        raise NotFound(f"no run with id {run_id}")
    return run_id


def validate_records(records: int | None) -> int | None:
    if records is not None and not 0 <= records <= MAX_RECORDS:
        raise InvalidInput(f"records must be between 0 and {MAX_RECORDS}, not {records}")
    return records


# -- operations ---------------------------------------------------------------

def start_run(conn: "psycopg.Connection", schema: str, name: str, *, source: str = "",
              destination: str = "", message: str | None = None) -> Run:
    """Insert an in_progress run started now (server time)."""
    params = {"name": validate_name(name), "source": source, "destination": destination,
              "message": message}
    run = fetch_run(conn, INSERT_RUN, schema, params)
    assert run is not None
    return run


def end_run(conn: "psycopg.Connection", schema: str, run_id: str | int, status: str, *,
            records: int | None = None, message: str | None = None) -> Run:
    """Mark an in_progress run success or error; refuse unknown or already ended runs."""
    if status not in ENDED:
        raise InvalidInput(f"a run ends as {' or '.join(ENDED)}, not {status!r}")
    params = {"id": parse_run_id(run_id), "status": status,
              "records": validate_records(records), "message": message}
    run = fetch_run(conn, END_RUN, schema, params)
    if run is not None:
        return run
    existing = get_run(conn, schema, params["id"])
    raise Refused(f"run {existing.id} ({existing.name}) has already ended: {existing.status}")


def get_run(conn: "psycopg.Connection", schema: str, run_id: str | int) -> Run:
    params = {"id": parse_run_id(run_id)}
    run = fetch_run(conn, SELECT_RUN, schema, params)
    if run is None:
        raise NotFound(f"no run with id {params['id']}")
    return run


def last_start(conn: "psycopg.Connection", schema: str, name: str,
               status: str = SUCCESS) -> int | None:
    """Unix seconds (floor) of the start of the newest run of `name` with `status`."""
    row = conn.execute(statement(LAST_START_BY_STATUS, schema),
                       {"name": validate_name(name), "status": status}).fetchone()
    return row[0] if row else None


def last_success(conn: "psycopg.Connection", schema: str, name: str) -> int:
    """Like last_start for success, raising NoSuccess when the job never succeeded."""
    started = last_start(conn, schema, name)
    if started is None:
        raise NoSuccess(f"{name!r} has never succeeded")
    return started
