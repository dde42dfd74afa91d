"""Run operations and their SQL: the core shared by the CLI and the Python API.

Every function takes an open connection (see `db.connect`) and the schema
name, and returns dataclasses. Times are the database server's `now()`; no
client clock is ever written. Timestamps come back as timezone-aware
datetimes and epoch seconds are computed by the server, so results do not
depend on the client's or the session's time zone.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from functools import cache
from typing import TYPE_CHECKING, Any, NoReturn, Sequence

from .config import INT4_MAX
from .errors import InvalidInput, NotFound, Refused
from .text import jsonable
from .states import DEAD, ENDED, LIVE, RUNNING, SUCCESS

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

# Keeps a name, with the rest of an index entry, within a btree page's limit,
# and names readable in a table.
MAX_NAME_LENGTH = 255
# A cursor travels to the next run as JOBS_LAST_CURSOR: one environment string
# may hold 128 KiB (MAX_ARG_STRLEN), and a larger one would keep every later run
# of the job from starting at all.
MAX_CURSOR_BYTES = 64 * 1024
MAX_LOOKBACK = 36500 * 86400  # a century, as durations


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
    # A data cursor (`finish --cursor`, `report --cursor`): where this run got to.
    cursor: str | None = None
    # What `jobs-cli run` handed the command: JOBS_LAST_SUCCESS (look-back
    # applied) and JOBS_LAST_CURSOR.
    since_handed: datetime | None = None
    cursor_handed: str | None = None
    # `run --after`: the upstream runs it consumed, in --after order.
    upstream_handed: list[int] | None = None
    # Ended by the reaper because its wrapper stopped heartbeating (see ABANDONED).
    abandoned: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: timestamps as ISO-8601 in UTC."""
        return {f.name: jsonable(getattr(self, f.name)) for f in fields(self)}


RUN_COLUMNS = tuple(f.name for f in fields(Run))


# -- SQL --------------------------------------------------------------------
# {table} is the schema-qualified jobs table ({summary} its per-name summary,
# {resets} the resets of watermarks), {columns} the Run fields, and {live},
# {dead} and {running} the liveness rule below.

# Liveness of an in_progress run, by the server's clock (see the recorder
# module): live while the lease its wrapper renews is in the future, dead once
# it has run out, running (unsupervised: `jobs-cli start`) without a lease.
# The one spelling of the rule, for every statement here and in `monitor`.
LIVENESS = {
    LIVE: "status = 'in_progress' AND lease_until > now()",
    DEAD: "status = 'in_progress' AND lease_until <= now()",
    RUNNING: "status = 'in_progress' AND lease_until IS NULL",
}

# The same rule where the caller has judged the runs of its own host (see
# `fencing`): the ids in %(alive_here)s are live and those in %(dead_here)s dead,
# whatever their lease says. For the statements that claim and reap.
FENCED_LIVENESS = {
    "live_here": "status = 'in_progress' AND lease_until IS NOT NULL"
                 " AND ((lease_until > now() AND id <> ALL(%(dead_here)s::integer[]))"
                 "      OR id = ANY(%(alive_here)s::integer[]))",
    "dead_here": "status = 'in_progress' AND lease_until IS NOT NULL"
                 " AND ((lease_until <= now() AND id <> ALL(%(alive_here)s::integer[]))"
                 "      OR id = ANY(%(dead_here)s::integer[]))",
}

# A repeated start (same run_key) inserts nothing; the caller then reads the
# run the first one inserted (RUN_BY_KEY).
INSERT_RUN = """
INSERT INTO {table} (name, status, start_date, source, destination, records_processed, message,
                     run_key)
VALUES (%(name)s, 'in_progress', now(), %(source)s, %(destination)s, 0, %(message)s, %(run_key)s)
ON CONFLICT (run_key) WHERE run_key IS NOT NULL DO NOTHING
RETURNING {columns}
"""

# An ended run is never changed again: the status guard makes finish/fail
# atomic, so two racing finishers cannot both win. end_key tells the winner
# repeating itself (after a lost connection) from anyone else.
END_RUN = """
UPDATE {table}
SET status = %(status)s,
    end_date = greatest(now(), start_date),
    records_processed = coalesce(%(records)s, records_processed),
    message = coalesce(%(message)s, message),
    cursor = coalesce(%(cursor)s, cursor),
    end_key = %(end_key)s,
    abandoned = false
WHERE id = %(id)s AND status = 'in_progress'
RETURNING {columns}
"""

ENDED_BY = "SELECT end_key FROM {table} WHERE id = %(id)s"

SELECT_RUN = "SELECT {columns} FROM {table} WHERE id = %(id)s"

# Which success is "the last": the last to end, as the original decided (the
# answer is then its start). The order of the index jobs_success_by_name, and
# the one spelling of it for every statement that picks a last success.
LAST_TO_END = "ORDER BY end_date DESC NULLS LAST, id DESC"

# Every job name, one index descent each (a loose index scan: DISTINCT would
# read every row); ends with a NULL row callers filter out. The one spelling,
# for the jobs_latest view and the views' queries.
ALL_NAMES = """
names(name) AS (
    (SELECT name FROM {table} ORDER BY name LIMIT 1)
    UNION ALL
    SELECT (SELECT j.name FROM {table} j WHERE j.name > names.name ORDER BY j.name LIMIT 1)
    FROM names
    WHERE names.name IS NOT NULL
)"""

# "Most recent" by end_date as the original did; the answer is the run's start.
# For success, WATERMARK_STATE below is the rule.
LAST_START_BY_STATUS = """
SELECT floor(extract(epoch FROM start_date))::bigint
FROM {table}
WHERE name = %(name)s AND status = %(status)s
""" + LAST_TO_END + """
LIMIT 1
"""


# What the next run of %(name)s is handed, in one row:
# - watermark: the start of the last successful run (before any look-back),
#   "last" by end_date as the original did (rows changed during that run are
#   picked up by the next one); NULL when there is none. Served by the partial
#   index jobs_success_by_name.
# - cursor: the cursor of the last successful run that has one, NULL when none
#   has. Served by jobs_cursor_by_name, so a job without cursors reads nothing.
# The latest reset (see the watermarks module) stands in for the runs that
# started before it: it is in force until a run started after it succeeds.
WATERMARK_STATE = """
state AS (
    SELECT CASE WHEN last.id IS NOT NULL THEN last.start_date ELSE reset.watermark END
               AS watermark,
           coalesce(last_cursor.cursor, reset.cursor) AS cursor
    FROM (SELECT) AS one
    LEFT JOIN LATERAL (
        SELECT reset_at, watermark, cursor FROM {resets}
        WHERE name = %(name)s
        ORDER BY reset_at DESC, id DESC
        LIMIT 1) AS reset ON true
    LEFT JOIN LATERAL (
        SELECT id, start_date FROM {table}
        WHERE name = %(name)s AND status = 'success'
          AND start_date > coalesce(reset.reset_at, '-infinity')
        """ + LAST_TO_END + """
        LIMIT 1) AS last ON true
    LEFT JOIN LATERAL (
        SELECT cursor FROM {table}
        WHERE name = %(name)s AND status = 'success' AND cursor IS NOT NULL
          AND start_date > coalesce(reset.reset_at, '-infinity')
        """ + LAST_TO_END + """
        LIMIT 1) AS last_cursor ON true
)"""

# Whole unix seconds (floor), less the look-back, as `last-success` prints them
# and `run` hands them: the one spelling of that arithmetic.
HANDED_SECONDS = "(floor(extract(epoch FROM state.watermark))::bigint - %(lookback)s::bigint)"

NEXT_WATERMARK = f"WITH {WATERMARK_STATE}\nSELECT {HANDED_SECONDS} AS since, cursor FROM state"


# Whether the reaper declared a run abandoned is the `abandoned` column, set by
# the reaper alone (never read back from the message, which anyone may write:
# `jobs-cli fail ID --message "abandoned: ..."` is an ordinary failure). The
# column came after the first release; rows that ended before it existed hold
# NULL, and for them only the old rule can tell: an error without an exit
# code whose message the reaper began with "abandoned:". Every row written
# since holds true or false (false by default; finishing or failing a run
# sets false), so NULL never describes a run ended by this version.
ABANDONED = ("coalesce(abandoned, status = 'error' AND exit_code IS NULL"
             " AND left(message, 10) = 'abandoned:')")


def _column(name: str) -> "sql.Composable":
    from psycopg import sql

    if name == "abandoned":
        return sql.SQL(f"{ABANDONED} AS abandoned")
    return sql.Identifier(name)


@cache
def statement(template: str, schema: str) -> "sql.Composed":
    from psycopg import sql

    return sql.SQL(template).format(
        table=sql.Identifier(schema, "jobs"),
        summary=sql.Identifier(schema, "jobs_summary"),
        resets=sql.Identifier(schema, "jobs_resets"),
        columns=sql.SQL(", ").join(_column(name) for name in RUN_COLUMNS),
        abandoned=sql.SQL(f"({ABANDONED})"),
        **{state: sql.SQL(f"({condition})")
           for state, condition in (*LIVENESS.items(), *FENCED_LIVENESS.items())},
    )


def fetch_run(conn: "psycopg.Connection", template: str, schema: str, params: dict) -> Run | None:
    from psycopg.rows import class_row

    with conn.cursor(row_factory=class_row(Run)) as cur:
        cur.execute(statement(template, schema), params)
        return cur.fetchone()


def _run_cursor(conn: "psycopg.Connection", template: str, schema: str,
                params: dict) -> "psycopg.Cursor[Run]":
    """An executed cursor yielding Runs; in pipeline mode its rows come at the sync."""
    from psycopg.rows import class_row

    return conn.cursor(row_factory=class_row(Run)).execute(statement(template, schema), params)


# -- validation ---------------------------------------------------------------

def validate_text(text: str | None, what: str) -> str | None:
    """A message, source or destination: any text PostgreSQL can store, kept exactly."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise InvalidInput(f"{what} must be text, not {type(text).__name__}")
    try:
        text.encode()
    except UnicodeEncodeError:
        # Bytes that are not UTF-8 on the command line arrive as lone surrogates.
        raise InvalidInput(f"{what} {text[:40]!r} is not valid UTF-8") from None
    if "\0" in text:
        raise InvalidInput(f"{what} contains a NUL character, which PostgreSQL cannot store")
    return text


def _one_line(text: str, what: str) -> str:
    """validate_text, and no control characters: names and cursors are typed, compared
    and handed on through `$(...)` and the environment."""
    validate_text(text, what)
    if any(unicodedata.category(ch) == "Cc" for ch in text):
        raise InvalidInput(f"{what} {text[:40]!r} contains a control character "
                           "(newline, tab...)")
    return text


def validate_name(name: str) -> str:
    """Reject names a person could not tell apart or type; keep every other name exactly."""
    if isinstance(name, str) and not name.strip():
        raise InvalidInput("job name must not be empty")
    return _one_line(name, "job name")


def validate_new_name(name: str) -> str:
    """validate_name, and short enough for a new run; an adopted longer name can still be read."""
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(f"job name {name[:40]!r}… is longer than {MAX_NAME_LENGTH} characters")
    return validate_name(name)


def parse_run_id(value: str | int) -> int:
    try:
        run_id = int(str(value).strip())
    except ValueError:
        raise InvalidInput(f"run id must be a whole number, not {value!r}") from None
    if not 0 < run_id <= INT4_MAX:
        raise NotFound(f"no run with id {run_id}")
    return run_id


def validate_lookback(seconds: float) -> int:
    """A look-back in whole seconds, rounded up: a shorter one than asked could miss rows."""
    if not 0 <= seconds <= MAX_LOOKBACK:
        raise InvalidInput(f"look-back must be between 0 and {MAX_LOOKBACK} seconds, not {seconds}")
    return math.ceil(seconds)


def validate_cursor(cursor: str | None) -> str | None:
    """A cursor is one line of text, handed back exactly as given: `$(...)` and an
    environment variable must carry it unchanged."""
    if cursor is None:
        return None
    if cursor == "":
        raise InvalidInput("a cursor must be non-empty text")
    _one_line(cursor, "cursor")
    if len(cursor.encode()) > MAX_CURSOR_BYTES:
        raise InvalidInput(f"cursor {cursor[:40]!r}… is longer than {MAX_CURSOR_BYTES} bytes")
    return cursor


def validate_upstream(name: str, after: Sequence[str]) -> list[str]:
    """The upstream jobs of `run --after`, each once, in the order given."""
    upstream = list(dict.fromkeys(validate_name(each) for each in after))
    if name in upstream:
        raise InvalidInput(f"{name!r} cannot run --after itself")
    return upstream


def validate_records(records: int | None) -> int | None:
    if records is not None and not 0 <= records <= INT4_MAX:
        raise InvalidInput(f"records must be between 0 and {INT4_MAX}, not {records}")
    return records


# -- operations ---------------------------------------------------------------

def start_run(conn: "psycopg.Connection", schema: str, name: str, *, source: str = "",
              destination: str = "", message: str | None = None,
              run_key: str | None = None) -> Run:
    """Insert an in_progress run started now (server time).

    Given the same `run_key` again (a retry after a lost connection), it
    returns the run inserted the first time instead of inserting another.
    """
    params = {"name": validate_new_name(name), "source": validate_text(source, "source"),
              "destination": validate_text(destination, "destination"),
              "message": validate_text(message, "message"), "run_key": run_key}
    run = fetch_run(conn, INSERT_RUN, schema, params) or run_by_key(conn, schema, run_key)
    assert run is not None
    return run


def end_run(conn: "psycopg.Connection", schema: str, run_id: str | int, status: str, *,
            records: int | None = None, message: str | None = None,
            cursor: str | None = None, end_key: str | None = None) -> Run:
    """Mark an in_progress run success or error; refuse unknown or already ended runs.

    A cursor is kept either way, but only a success's is ever handed on. A run
    already ended with this `end_key` (a retry after a lost connection) is
    returned as it is: that ending was this call's own.
    """
    if status not in ENDED:
        raise InvalidInput(f"a run ends as {' or '.join(ENDED)}, not {status!r}")
    params = {"id": parse_run_id(run_id), "status": status,
              "records": validate_records(records), "message": validate_text(message, "message"),
              "cursor": validate_cursor(cursor), "end_key": end_key}
    run = fetch_run(conn, END_RUN, schema, params)
    if run is None and end_key is not None:
        ended_by = conn.execute(statement(ENDED_BY, schema), params).fetchone()
        if ended_by == (end_key,):
            return get_run(conn, schema, params["id"])
    return run or _refuse(conn, schema, params["id"])


def _update_in_progress(conn: "psycopg.Connection", template: str, schema: str,
                        params: dict) -> Run:
    """Run `template`, an UPDATE of the in_progress run params["id"]; refuse unknown
    or already ended runs."""
    return fetch_run(conn, template, schema, params) or _refuse(conn, schema, params["id"])


def _refuse(conn: "psycopg.Connection", schema: str, run_id: int) -> NoReturn:
    existing = get_run(conn, schema, run_id)
    raise Refused(f"run {existing.id} ({existing.name}) has already ended: {existing.status}")


def get_run(conn: "psycopg.Connection", schema: str, run_id: str | int) -> Run:
    params = {"id": parse_run_id(run_id)}
    run = fetch_run(conn, SELECT_RUN, schema, params)
    if run is None:
        raise NotFound(f"no run with id {params['id']}")
    return run


def last_start(conn: "psycopg.Connection", schema: str, name: str,
               status: str = SUCCESS) -> int | None:
    """Unix seconds (floor) of the start of the newest run of `name` with `status`.

    For success that is the watermark, as `last-success` prints it.
    """
    if status == SUCCESS:
        return next_watermark(conn, schema, name).since
    row = conn.execute(statement(LAST_START_BY_STATUS, schema),
                       {"name": validate_name(name), "status": status}).fetchone()
    return row[0] if row else None


@dataclass(frozen=True)
class Watermark:
    """What the next run of a job is handed."""

    since: int | None  # unix seconds (floor) of the last success's start, less the look-back
    cursor: str | None  # the cursor of the last success that has one


def next_watermark(conn: "psycopg.Connection", schema: str, name: str, *,
                   lookback: float = 0) -> Watermark:
    """What the next run of `name` is handed (None where there is nothing)."""
    from psycopg.rows import class_row

    params = {"name": validate_name(name), "lookback": validate_lookback(lookback)}
    with conn.cursor(row_factory=class_row(Watermark)) as cur:
        return cur.execute(statement(NEXT_WATERMARK, schema), params).fetchone()


def iso_seconds(epoch: int) -> str:
    """Unix seconds as ISO-8601 UTC to the second, as `last-success --iso` prints them."""
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- supervised runs (`jobs-cli run`) -----------------------------------------
# Liveness is a lease: see the `recorder` module for why and how.

@dataclass(frozen=True)
class Invocation:
    """Who runs what, recorded with a supervised run."""

    run_key: str  # unique per `jobs-cli run` invocation; see migrations.py
    name: str
    source: str
    destination: str
    command: str | None  # None: `run --no-record-command`
    host: str
    pid: int  # the wrapper's: the process whose heartbeats keep the lease
    username: str
    # Who keeps the run, for `fencing`; None when unknown (and in older spool entries).
    boot_id: str | None = None
    wrapper_started: int | None = None
    pgid: int | None = None


@dataclass(frozen=True)
class Claim:
    """What `claim_run` found and did."""

    run: Run | None  # None: not inserted, because `blocking` is live
    blocking: Run | None
    last_success: int | None  # the watermark handed (look-back applied), unix seconds
    abandoned: list[Run]  # dead runs of the name reaped on the way
    cursor: str | None = None  # the cursor handed
    # Not inserted because these upstream jobs (`run --after`) have no new success.
    waiting_for: list[str] = field(default_factory=list)

    @property
    def upstream_runs(self) -> list[int]:
        """The upstream runs consumed: the newest new success of each --after job."""
        return list(self.run.upstream_handed or []) if self.run else []


@dataclass(frozen=True)
class RunResult:
    """How a supervised run ended: what `record_result` writes, and what the spool keeps."""

    invocation: Invocation
    run_id: int | None  # None: never claimed (--fail-open with the database down)
    start_date: datetime  # the server's, from the claim; this host's when never claimed
    elapsed: float  # seconds from the claim to the command's end, by the monotonic clock
    status: str
    exit_code: int
    headline: str  # what happened: "exit code 3", "timed out after 1m", ...
    output: str  # the tail of the command's stderr
    note: str | None = None  # said in the message when the run is inserted only now


# Serialises the claims of one job name. Transaction-scoped, hence usable
# through PgBouncer in transaction mode, where session-level locks are not.
CLAIM_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(%(lock_key)s, 0))"

# The supervised runs in progress on a host (of one name, or of all), for `fencing`.
HELD_HERE = """
SELECT id, host, boot_id, pid, wrapper_started, pgid FROM {table}
WHERE status = 'in_progress' AND lease_until IS NOT NULL AND host = %(host)s
  AND (%(name)s::text IS NULL OR name = %(name)s)
"""

LIVE_RUN = """
SELECT {columns} FROM {table}
WHERE name = %(name)s AND {live_here}
ORDER BY start_date, id
LIMIT 1
"""

# Unless overlap is allowed, inserted only while no run of the name is live,
# and (`run --after`) only when each upstream job has a success that ended
# after this job's watermark (the start of its last success; any success when
# it has none). The run keeps what it is handed: the watermark, the cursor and
# the newest such upstream run of each job, in --after order. The statement
# says whether it inserted and which upstream jobs are not ready; the run
# itself is read by its run_key, in the same transaction. Only once per
# run_key: a claim repeated after a lost connection finds its own run rather
# than meeting it as an overlap.
CLAIM_RUN = f"""
WITH {WATERMARK_STATE},
upstream AS (
    SELECT up.name, up.ord,
           (SELECT id FROM {{table}}
            WHERE name = up.name AND status = 'success'
              AND end_date > coalesce(state.watermark, '-infinity')
            {LAST_TO_END}
            LIMIT 1) AS run_id
    FROM state CROSS JOIN unnest(%(after)s::text[]) WITH ORDINALITY AS up(name, ord)
),
claimed AS (
    INSERT INTO {{table}} (name, status, start_date, source, destination, host, pid, username,
                         command, heartbeat_at, lease_until, run_key, since_handed,
                         cursor_handed, upstream_handed, boot_id, wrapper_started, pgid)
    -- statement_timestamp(), not now(): the transaction began before it waited for
    -- the name's lock, and a reset made meanwhile (at its clock_timestamp(), under
    -- the same lock) must count as before this run, whose watermark it sets.
    SELECT %(name)s, 'in_progress', statement_timestamp(), %(source)s, %(destination)s,
           %(host)s, %(pid)s, %(username)s, %(command)s, statement_timestamp(),
           statement_timestamp() + make_interval(secs => %(lease_seconds)s),
           %(run_key)s, to_timestamp({HANDED_SECONDS}), state.cursor,
           (SELECT array_agg(run_id ORDER BY ord) FROM upstream), %(boot_id)s,
           %(wrapper_started)s, %(pgid)s
    FROM state
    WHERE NOT EXISTS (SELECT FROM {{table}} WHERE run_key = %(run_key)s)
      AND (%(allow_overlap)s
           OR NOT EXISTS (SELECT FROM {{table}} WHERE name = %(name)s AND {{live_here}}))
      AND NOT EXISTS (SELECT FROM upstream WHERE run_id IS NULL)
    RETURNING id
)
SELECT EXISTS (SELECT FROM claimed),
       array(SELECT name FROM upstream WHERE run_id IS NULL ORDER BY ord)
"""

HEARTBEAT = """
UPDATE {table}
SET heartbeat_at = now(), lease_until = now() + make_interval(secs => %(lease_seconds)s)
WHERE id = %(id)s AND status = 'in_progress'
"""

# What the command reports about itself while it runs; the wrapper's final
# update keeps it (see RECORD_RESULT).
REPORT_RUN = """
UPDATE {table}
SET records_processed = coalesce(%(records)s, records_processed),
    message = coalesce(%(message)s, message),
    cursor = coalesce(%(cursor)s, cursor)
WHERE id = %(id)s AND status = 'in_progress'
RETURNING {columns}
"""

# Dead supervised runs (lease run out, or wrapper known dead on this host) and,
# given an age, unsupervised runs (no lease: `jobs-cli start`) older than that.
# A reported message is kept after the reason.
REAP_RUNS = """
UPDATE {table}
SET status = 'error',
    abandoned = true,
    -- A dead run ended at its last proof of life, not when someone noticed.
    end_date = CASE WHEN lease_until IS NULL THEN greatest(now(), start_date)
                    ELSE greatest(heartbeat_at, start_date) END,
    message = concat_ws('; ', 'abandoned: ' || CASE
        WHEN lease_until IS NULL THEN %(unsupervised_reason)s::text
        ELSE 'no heartbeat since '
             || coalesce(to_char(heartbeat_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                         'its start')
             || coalesce(' from pid ' || pid || ' on ' || host, '')
        END, message)
WHERE ({dead_here}
       OR ({running} AND start_date <= now() - make_interval(secs => %(older_than)s::float8)))
  AND (%(name)s::text IS NULL OR name = %(name)s)
RETURNING {columns}
"""

# A result inserts its run when the run is missing: a --fail-open run that
# never got an id, or a run deleted meanwhile. NOT EXISTS keeps the usual case
# from spending a serial value on a conflict.
INSERT_MISSING_RUN = """
INSERT INTO {table} (name, status, start_date, source, destination, host, pid, username,
                     command, message, run_key)
SELECT %(name)s, 'in_progress', %(start_date)s, %(source)s, %(destination)s, %(host)s,
       %(pid)s, %(username)s, %(command)s, %(note)s, %(run_key)s
WHERE NOT EXISTS (SELECT FROM {table} WHERE run_key = %(run_key)s)
ON CONFLICT (run_key) WHERE run_key IS NOT NULL DO NOTHING
"""

# The wrapper's final word. The status guard makes a replayed result count
# once. It overrules a reaper that took the run for abandoned (its heartbeats
# could not reach the database; the `abandoned` flag, see ABANDONED) but not
# anyone else who ended it, whatever their message says; the run is then no
# longer abandoned, and its message tells the story. A success
# keeps the reported message; an error says what happened first, then the
# reported message, then the output tail. Overruling, both say what happened
# and that it was "recorded after being marked abandoned: …" (the reaper's
# message, which keeps the reported one). end_date is the claim's server time
# plus the elapsed time, so a result recorded late still ends when it ended;
# never later than now(), though: the elapsed time counts from before the
# claim connected, and a run that a waiting `run` follows must have ended
# before that one starts.
RECORD_RESULT = """
UPDATE {table}
SET status = %(status)s,
    abandoned = false,
    end_date = least(start_date + make_interval(secs => %(elapsed)s), now()),
    exit_code = %(exit_code)s,
    output = %(output)s,
    message = CASE WHEN %(status)s = 'success' AND status = 'in_progress' THEN message
                   ELSE concat_ws(E'\\n',
                                  concat_ws('; ', %(headline)s::text,
                                            CASE WHEN status = 'in_progress' THEN message
                                                 ELSE 'recorded after being marked ' || message
                                            END),
                                  CASE WHEN %(status)s = 'error'
                                       THEN nullif(rtrim(%(output)s, E'\\n'), '') END)
              END
WHERE run_key = %(run_key)s
  AND (status = 'in_progress' OR (status = 'error' AND exit_code IS NULL AND {abandoned}))
RETURNING {columns}
"""

RUN_BY_KEY = "SELECT {columns} FROM {table} WHERE run_key = %(run_key)s"


def claim_run(conn: "psycopg.Connection", schema: str, invocation: Invocation, *,
              lease_seconds: float, allow_overlap: bool, lookback: float = 0,
              after: Sequence[str] = ()) -> Claim:
    """In one transaction and two round trips: judge the name's runs on this host
    (see `fencing`), reap the name's dead runs, insert the run unless another is
    live (or overlap is allowed) or an upstream job in `after` has no new success,
    with the watermark it is handed (the last success's start less `lookback`
    seconds), its cursor and the upstream runs it consumes.

    Safe to repeat: a repeated claim of the same invocation returns its run."""
    # One set of parameters for every statement: only dead supervised runs are reaped.
    params = {**vars(invocation), "lease_seconds": lease_seconds,
              "allow_overlap": allow_overlap, "lock_key": f"{schema}.jobs:{invocation.name}",
              "older_than": None, "unsupervised_reason": None,
              "lookback": validate_lookback(lookback),
              "after": validate_upstream(invocation.name, after) or None}
    with conn.pipeline() as pipeline, conn.transaction():
        conn.execute(CLAIM_LOCK, params)
        # Judged under the lock: no claim of the name can come between.
        held = conn.execute(statement(HELD_HERE, schema), params)
        pipeline.sync()
        params.update(judge_here(held.fetchall(), invocation.host))
        reaped = _run_cursor(conn, REAP_RUNS, schema, params)
        live = _run_cursor(conn, LIVE_RUN, schema, params)
        claimed = conn.execute(statement(CLAIM_RUN, schema), params)
        inserted = _run_cursor(conn, RUN_BY_KEY, schema, params)
    _, waiting_for = claimed.fetchone()
    run = inserted.fetchone()  # inserted now, or by an earlier try of this claim
    since = run and run.since_handed
    return Claim(run=run, blocking=None if run else live.fetchone(),
                 last_success=None if since is None else int(since.timestamp()),
                 cursor=run and run.cursor_handed, abandoned=reaped.fetchall(),
                 waiting_for=[] if run else waiting_for)


def heartbeat(conn: "psycopg.Connection", schema: str, run_id: int, *,
              lease_seconds: float, timeout: float) -> bool:
    """Move the run's lease forward; False when the run is no longer in progress.

    SET LOCAL bounds the statement and works through PgBouncer, as a session SET does not.
    """
    with conn.pipeline(), conn.transaction():
        conn.execute("SELECT set_config('statement_timeout', %s, true),"
                     " set_config('lock_timeout', %s, true)", (f"{timeout * 1000:.0f}",) * 2)
        updated = conn.execute(statement(HEARTBEAT, schema),
                               {"id": run_id, "lease_seconds": lease_seconds})
    return updated.rowcount == 1


def report_run(conn: "psycopg.Connection", schema: str, run_id: str | int, *,
               records: int | None, message: str | None, cursor: str | None = None) -> Run:
    """Set what the command reports about itself on its in_progress run."""
    params = {"id": parse_run_id(run_id), "records": validate_records(records),
              "message": validate_text(message, "message"), "cursor": validate_cursor(cursor)}
    return _update_in_progress(conn, REPORT_RUN, schema, params)


def reap_runs(conn: "psycopg.Connection", schema: str, *,
              unsupervised_older_than: float | None = None) -> list[Run]:
    """Mark runs whose wrapper died, and old unsupervised ones if asked, error "abandoned: …".

    On this host a wrapper's liveness is judged from /proc (see `fencing`). A
    wrapper judged alive that dies before the update is left for the next reap;
    a dead one stays dead.
    """
    import socket

    from .durations import format_duration

    reason = None
    if unsupervised_older_than is not None:
        reason = (f"started without a wrapper (jobs-cli start) and still in progress after "
                  f"more than {format_duration(unsupervised_older_than)}")
    host = socket.gethostname()
    params = {"older_than": unsupervised_older_than, "unsupervised_reason": reason,
              "name": None, "host": host}
    held = conn.execute(statement(HELD_HERE, schema), params).fetchall()
    params.update(judge_here(held, host))
    return _run_cursor(conn, REAP_RUNS, schema, params).fetchall()


def judge_here(held: list[tuple], host: str) -> dict[str, list[int]]:
    """The ids of HELD_HERE's rows whose wrapper is known alive, and known dead."""
    from .fencing import ALIVE, DEAD, Holder, verdict

    verdicts = {run_id: verdict(Holder(*holder), host) for run_id, *holder in held}
    return {"alive_here": [run_id for run_id, said in verdicts.items() if said == ALIVE],
            "dead_here": [run_id for run_id, said in verdicts.items() if said == DEAD]}


def record_result(conn: "psycopg.Connection", schema: str, result: RunResult) -> Run | None:
    """Record how a supervised run ended, once; None when it had already ended.

    Idempotent: replaying the same result changes nothing.
    """
    params = {**vars(result.invocation), **vars(result)}
    with conn.pipeline(), conn.transaction():
        conn.execute(statement(INSERT_MISSING_RUN, schema), params)
        recorded = _run_cursor(conn, RECORD_RESULT, schema, params)
    return recorded.fetchone()


def run_by_key(conn: "psycopg.Connection", schema: str, run_key: str) -> Run | None:
    return fetch_run(conn, RUN_BY_KEY, schema, {"run_key": run_key})
