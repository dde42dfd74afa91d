"""A job's watermark over time: `history` lists it, `reset` moves it back.

The watermark a run is handed (its time and its cursor, see
runs.WATERMARK_STATE) comes from the job's last successful run. `reset`
makes an earlier successful run's watermark current again, or none at all
(`--to-start`: the next run is a full load), without deleting or rewriting
a row of `jobs`: a reset is a row of its own in `jobs_resets`, so `check`,
`status` and the original's readers still see only runs. It is in force
until a run that started after it succeeds. A run that was already going
when the reset was made loaded from the old watermark, so its success does
not end the reset.

A reset takes the job's claim lock (runs.CLAIM_LOCK), so a `run` starting at
the same moment either comes before it and is overruled, or after it and is
handed the reset's watermark. Its time is taken once it holds the lock:
every run claimed before it started earlier.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import runs
from .errors import InvalidInput, Refused
from .states import SUCCESS
from .text import jsonable

if TYPE_CHECKING:
    import psycopg

RUN, RESET = "run", "reset"

# What the job's last success said as of run %(run_id)s: its start, and the
# cursor of the newest success up to it that has one.
INSERT_RESET = """
INSERT INTO {resets} (name, reset_at, to_run, watermark, cursor, username, host)
SELECT %(name)s, clock_timestamp(), %(run_id)s, target.start_date,
       CASE WHEN target.id IS NOT NULL THEN
           (SELECT cursor FROM {table}
            WHERE name = %(name)s AND status = 'success' AND cursor IS NOT NULL
              AND (coalesce(end_date, '-infinity'), id)
                  <= (coalesce(target.end_date, '-infinity'), target.id)
            """ + runs.LAST_TO_END + """
            LIMIT 1)
       END,
       %(username)s, %(host)s
FROM (SELECT) AS one
LEFT JOIN {table} AS target ON target.id = %(run_id)s
RETURNING id, reset_at, to_run, watermark, cursor
"""

# Successes and resets of a name, newest first: a success at its end (the
# order `last-success` uses), a reset when it was made.
HISTORY = """
SELECT * FROM (
    (SELECT 'run' AS kind, id, end_date AS at, start_date, since_handed AS since,
            cursor_handed, cursor, records_processed, upstream_handed, NULL::integer AS to_run,
            NULL::text AS made_by
     FROM {table}
     WHERE name = %(name)s AND status = 'success'
     """ + runs.LAST_TO_END + """
     LIMIT %(limit)s)
    UNION ALL
    (SELECT 'reset', id, reset_at, NULL, watermark, NULL, cursor, NULL, NULL, to_run,
            concat_ws('@', username, host)
     FROM {resets}
     WHERE name = %(name)s
     ORDER BY reset_at DESC, id DESC
     LIMIT %(limit)s)
) AS entries
ORDER BY at DESC NULLS LAST, kind, id DESC
LIMIT %(limit)s
"""


@dataclass(frozen=True)
class Reset:
    id: int
    reset_at: datetime
    to_run: int | None  # None: to the start (the next run is a full load)
    watermark: datetime | None  # the start of to_run: what the next run is handed
    cursor: str | None


@dataclass(frozen=True)
class HistoryEntry:
    """A successful run (kind "run") or a reset (kind "reset")."""

    kind: str
    id: int
    at: datetime | None  # a run's end, a reset's time
    start_date: datetime | None  # a run's start: the end of the window it loaded
    # A run: the watermark it was handed (the start of the window it loaded).
    # A reset: the watermark it makes current.
    since: datetime | None
    cursor_handed: str | None
    cursor: str | None  # where a run got to; the cursor a reset makes current
    records_processed: int | None
    upstream_handed: list[int] | None
    to_run: int | None  # a reset's target; None for --to-start (and for runs)
    made_by: str | None  # a reset's user@host

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: timestamps as ISO-8601 in UTC; what does not apply is left out."""
        kept = RUN_FIELDS if self.kind == RUN else RESET_FIELDS
        return {f.name: jsonable(getattr(self, f.name)) for f in fields(self)
                if f.name in kept}


RUN_FIELDS = {"kind", "id", "at", "start_date", "since", "cursor_handed", "cursor",
              "records_processed", "upstream_handed"}
RESET_FIELDS = {"kind", "id", "at", "since", "cursor", "to_run", "made_by"}


def reset_target(conn: "psycopg.Connection", schema: str, name: str,
                 run_id: str | int | None) -> runs.Run | None:
    """The run a reset of `name` goes back to (None: to the start); refuse a run of
    another job or one that did not succeed."""
    runs.validate_name(name)
    if run_id is None:
        return None
    run = runs.get_run(conn, schema, run_id)
    if run.name != name:
        raise Refused(f"run {run.id} is a run of {run.name!r}, not of {name!r}")
    if run.status != SUCCESS:
        raise Refused(f"run {run.id} of {name!r} did not succeed ({run.status}): "
                      "only a successful run's watermark can be made current again")
    return run


def reset(conn: "psycopg.Connection", schema: str, name: str, target: runs.Run | None, *,
          username: str, host: str) -> Reset:
    """Make `target`'s watermark and cursor current for `name` (None: none, a full load)."""
    from psycopg.rows import class_row

    params = {"name": name, "run_id": None if target is None else target.id,
              "username": username, "host": host,
              "lock_key": f"{schema}.jobs:{name}"}
    with conn.transaction():
        conn.execute(runs.CLAIM_LOCK, params)
        if target is not None:
            # Checked again under the lock: a run is never un-succeeded, but it
            # may have been deleted since it was shown to the user.
            reset_target(conn, schema, name, target.id)
        with conn.cursor(row_factory=class_row(Reset)) as cur:
            return cur.execute(runs.statement(INSERT_RESET, schema), params).fetchone()


def history(conn: "psycopg.Connection", schema: str, name: str, *,
            limit: int) -> list[HistoryEntry]:
    """The successful runs and resets of `name`, newest first, at most `limit`."""
    from psycopg.rows import class_row

    if limit < 1:
        raise InvalidInput(f"limit must be at least 1, not {limit}")
    params = {"name": runs.validate_name(name), "limit": limit}
    with conn.cursor(row_factory=class_row(HistoryEntry)) as cur:
        return cur.execute(runs.statement(HISTORY, schema), params).fetchall()
