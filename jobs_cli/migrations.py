"""The schema as ordered, named migration steps, recorded in the database.

To add a schema change, append a Step at the end of STEPS. Never edit, rename
or reorder a step that has shipped: databases remember steps by name, and a
changed step would never run again where its old version ran. Then
regenerate schema.sql (`python -m jobs_cli.migrations > schema.sql`; a test
checks the two agree).

A step
    `Step(name, sql, kind=DDL, required=False, target=None)`:

    DDL       `sql` runs once, in its own transaction, unqualified (search_path
              is the target schema, SET LOCAL), with `lock_timeout` set; it is
              recorded in the same transaction. Write it idempotent (IF NOT
              EXISTS, a DO block looking at the catalog): an adopted table --
              the City of Austin original, made before any step existed --
              goes through the same steps as a fresh one.
    INDEX     `sql` is a CREATE [UNIQUE] INDEX CONCURRENTLY IF NOT EXISTS that
              names its table `{table}` (it runs outside a transaction, where
              no SET LOCAL search_path can qualify it); `target` is the index's
              name. An INVALID index left by a failed build (which IF NOT EXISTS
              would skip) is dropped CONCURRENTLY and built again.
    VALIDATE  `target` is a constraint added NOT VALID by an earlier DDL step;
              the step runs VALIDATE CONSTRAINT (SHARE UPDATE EXCLUSIVE: reads and
              writes go on). While old rows break it, the step stays pending and
              the applier is told how many rows; `init` tries again every time.
              It scans the whole table, so only `init` runs it.

    `required`: this version cannot record a run without the step (a column or
    index its statements use). Other steps (indexes for speed, constraints,
    the view, the trigger) may wait for `init`; a command that cannot apply
    them says so in one line and carries on.

A step that creates a table or view adds it to roles.GRANTS: after applying
steps (and at every `init`) the roles that exist are granted what that list
says. A trigger that writes elsewhere runs as the owner (SECURITY DEFINER,
with a fixed search_path).

Where steps are recorded
    Table `jobs_cli_migrations (name, applied_at)` next to `jobs`. Reading it is
    the only thing a command does when nothing is pending (one query, no lock
    beyond a read). A schema whose `jobs` table exists but has no such table is
    an adopted one: every step is pending.

Never blocking a live table
    Every transactional step sets `lock_timeout` (LOCK_TIMEOUT_SECONDS). A step
    whose lock is not granted in time is tried again (LOCK_ATTEMPTS in all), then
    fails with one line naming the session in the way, so writers queue behind
    a waiting ALTER TABLE for at most that long. Constraints are added NOT VALID
    and validated in a step of their own; indexes are built CONCURRENTLY.
    Concurrent appliers are serialised per step by a transaction-scoped advisory
    lock (usable through PgBouncer in transaction mode), and each checks again
    that the step is still pending once it holds the lock.

A new schema in one transaction
    Where neither the jobs table nor the steps' table exists yet (the embedded
    server's first use, `init` on an empty database), there is no live table to
    spare: every step runs in one transaction, under the bootstrap step's lock,
    indexes built plainly (the table is new in that very transaction, nobody
    else can see it), and all are recorded and granted at once: one commit (one
    WAL flush) and a few round trips instead of ~26 of each (90 -> 50 ms for
    the embedded server's first call). An applier that finds either table once
    it holds the lock goes step by step, as above, and finds the steps done.

The library never prints: warnings (rows breaking a constraint, steps left
pending) are returned in `Outcome` or handed to a `tell` callback.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Literal

from .errors import DatabaseError, NoJobsTable
from .runs import ALL_NAMES
from .text import error_line

if TYPE_CHECKING:
    import psycopg

DDL = "ddl"
INDEX = "index"
VALIDATE = "validate"
Kind = Literal["ddl", "index", "validate"]

LOCK_TIMEOUT_SECONDS = 5.0
LOCK_ATTEMPTS = 3
TABLE = "jobs"
MIGRATIONS_TABLE = "jobs_cli_migrations"


@dataclass(frozen=True)
class Step:
    name: str
    sql: str = ""
    kind: Kind = DDL
    required: bool = False
    target: str | None = None  # INDEX: the index; VALIDATE: the constraint


def validate(constraint: str) -> Step:
    return Step(f"validate {constraint}", kind=VALIDATE, target=constraint)


def index(name: str, definition: str, required: bool = False, unique: bool = False) -> Step:
    """An INDEX step building `name` CONCURRENTLY: `definition` follows `ON {table}`."""
    create = "CREATE UNIQUE INDEX" if unique else "CREATE INDEX"
    return Step(f"index {name}",
                f"{create} CONCURRENTLY IF NOT EXISTS {name}\n    ON {{table}} {definition}",
                kind=INDEX, required=required, target=name)


MIGRATIONS_DDL = f"""CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
    name       text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""

# Constraints that adopted rows may break: added NOT VALID (they hold for new
# and updated rows at once) and validated by steps of their own.
CHECKS = {
    "jobs_status_check": "status IN ('in_progress', 'success', 'error')",
    "jobs_end_after_start": "end_date >= start_date",
    "jobs_records_nonnegative": "records_processed >= 0",
}

JOBS_LATEST = """CREATE OR REPLACE VIEW jobs_latest AS
WITH RECURSIVE""" + ALL_NAMES.format(table="jobs") + """
SELECT latest.*
FROM names
CROSS JOIN LATERAL (
    SELECT * FROM jobs
    WHERE jobs.name = names.name
    ORDER BY start_date DESC, id DESC
    LIMIT 1
) latest"""

STEPS: tuple[Step, ...] = (
    Step("create table jobs", """CREATE TABLE IF NOT EXISTS jobs (
    id                serial PRIMARY KEY,
    name              text NOT NULL,
    start_date        timestamptz NOT NULL DEFAULT now(),
    end_date          timestamptz,
    message           text,
    status            text NOT NULL,
    records_processed integer,
    source            text NOT NULL,
    destination       text NOT NULL
)""", required=True),
    # The original set start_date from the client clock; ours comes from the
    # server. An adopted table's own default, if it has one, is left alone.
    Step("start_date default", """DO $$
BEGIN
    IF NOT (SELECT atthasdef FROM pg_attribute
            WHERE attrelid = 'jobs'::regclass AND attname = 'start_date') THEN
        ALTER TABLE jobs ALTER COLUMN start_date SET DEFAULT now();
    END IF;
END
$$""", required=True),
    # Recorded by `jobs-cli run` (nullable: rows from `start` and adopted rows
    # have none of them). output: the tail of the command's stderr. The wrapper
    # moves lease_until forward at each heartbeat; an in_progress run whose
    # lease has expired has lost its wrapper. run_key is unique per `run`
    # invocation (and `start`): a spooled result finds its run by it, and a replayed
    # --fail-open run is inserted once however often the replay is repeated.
    Step("run columns", """ALTER TABLE jobs
    ADD COLUMN IF NOT EXISTS host         text,
    ADD COLUMN IF NOT EXISTS pid          integer,
    ADD COLUMN IF NOT EXISTS username     text,
    ADD COLUMN IF NOT EXISTS command      text,
    ADD COLUMN IF NOT EXISTS exit_code    integer,
    ADD COLUMN IF NOT EXISTS output       text,
    ADD COLUMN IF NOT EXISTS heartbeat_at timestamptz,
    ADD COLUMN IF NOT EXISTS lease_until  timestamptz,
    ADD COLUMN IF NOT EXISTS run_key      text""", required=True),
    index("jobs_run_key", "(run_key) WHERE run_key IS NOT NULL", required=True, unique=True),
    # status is NOT NULL in a fresh table; an adopted one may hold NULLs, so it
    # gets a CHECK instead (SET NOT NULL would scan under an exclusive lock).
    Step("check constraints", """DO $$
DECLARE
    c record;
BEGIN
    IF EXISTS (SELECT FROM pg_attribute
               WHERE attrelid = 'jobs'::regclass AND attname = 'status' AND NOT attnotnull)
       AND NOT EXISTS (SELECT FROM pg_constraint
                       WHERE conrelid = 'jobs'::regclass AND conname = 'jobs_status_present') THEN
        ALTER TABLE jobs ADD CONSTRAINT jobs_status_present CHECK (status IS NOT NULL) NOT VALID;
    END IF;
    FOR c IN SELECT * FROM (VALUES
""" + ",\n".join(f"        ('{name}', $c${expr}$c$)" for name, expr in CHECKS.items()) + """
    ) AS t(conname, expr)
    LOOP
        IF NOT EXISTS (SELECT FROM pg_constraint
                       WHERE conrelid = 'jobs'::regclass AND conname = c.conname) THEN
            EXECUTE format('ALTER TABLE jobs ADD CONSTRAINT %I CHECK (%s) NOT VALID',
                           c.conname, c.expr);
        END IF;
    END LOOP;
END
$$"""),
    validate("jobs_status_present"),
    *(validate(name) for name in CHECKS),
    # last-success: newest successful run of a name by end_date, as the original.
    index("jobs_success_by_name", "(name, end_date DESC NULLS LAST, id DESC) "
                                  "WHERE status = 'success'"),
    # Per-name history, newest first; also jobs_latest and overlap checks.
    index("jobs_name_start", "(name, start_date DESC, id DESC)"),
    # Listing all runs newest first.
    index("jobs_start", "(start_date DESC, id DESC)"),
    # Runs still in progress: overlap control, reaping, "running now".
    index("jobs_in_progress", "(name, lease_until) WHERE status = 'in_progress'"),
    # A job's newest runs of one status (`list --status`), and counts by status
    # (`metrics`) read from the index alone.
    index("jobs_name_status_start", "(name, status, start_date DESC, id DESC)"),
    # One row per name: the run with the latest start_date (as the original's
    # view, same columns first). Not DISTINCT ON, which reads the whole table:
    # the names are enumerated by jumping through jobs_name_start (one index
    # descent each) and each name's newest run read from it. `latest.*` is
    # expanded when the view is made: a step adding a column that the view
    # should show replaces the view after it.
    Step("view jobs_latest", JOBS_LATEST),
    # `jobs-cli watch` redraws when the table changes. One notification per
    # statement, with the schema as payload; heartbeats (which only move
    # heartbeat_at and lease_until) notify nobody.
    Step("notify trigger", """CREATE OR REPLACE FUNCTION jobs_notify_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('jobs_cli', TG_TABLE_SCHEMA);
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS jobs_notify_change ON jobs;
CREATE TRIGGER jobs_notify_change
    AFTER INSERT OR DELETE OR UPDATE OF status, end_date, message, records_processed, output
    ON jobs FOR EACH STATEMENT EXECUTE FUNCTION jobs_notify_change()"""),
    Step("summary table", """-- One row per job name, kept current by triggers, so that `status`, `check` and
-- `metrics` cost O(names), not O(history): its run counts (jobs_runs_total), its
-- newest runs (the 20 that monitor.RECENT_RUNS looks at) and its last success,
-- as they would be read from the jobs table itself (tests/test_summary.py checks
-- they always are). Writers need no rights on it: the triggers' functions run as
-- their owner (SECURITY DEFINER), with a fixed search_path.
CREATE TABLE IF NOT EXISTS jobs_summary (
    name                 text PRIMARY KEY,
    runs                 bigint NOT NULL DEFAULT 0,
    successes            bigint NOT NULL DEFAULT 0,
    errors               bigint NOT NULL DEFAULT 0,
    -- The newest runs by (start_date DESC, id DESC), as the views order them.
    recent_ids           bigint[] NOT NULL DEFAULT '{}',
    recent_statuses      text[] NOT NULL DEFAULT '{}',
    recent_starts        timestamptz[] NOT NULL DEFAULT '{}',
    recent_ends          timestamptz[] NOT NULL DEFAULT '{}',
    -- Seconds from start to end; NULL for a run without an end.
    recent_durations     float8[] NOT NULL DEFAULT '{}',
    -- One of them is in progress or has no end: its state and duration move with now().
    recent_unsettled     boolean NOT NULL DEFAULT false,
    -- Found as `last-success` finds it: by end_date.
    last_success_start   timestamptz,
    last_success_end     timestamptz,
    last_success_records integer
)"""),
    Step("summary functions", """-- Adds the count deltas of `names` (taking their rows' locks, in name order), then
-- rereads their newest runs and last success from jobs. In READ COMMITTED the
-- reread takes a snapshot after the lock: a writer that changed the same name
-- and committed first is seen, one that commits later rereads after us. Rows
-- left with no runs go.
CREATE OR REPLACE FUNCTION jobs_summary_apply(names text[], runs_delta bigint[],
                                              successes_delta bigint[], errors_delta bigint[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO jobs_summary AS s (name, runs, successes, errors)
    SELECT * FROM unnest(names, runs_delta, successes_delta, errors_delta) ORDER BY 1
    ON CONFLICT (name) DO UPDATE
        SET runs = s.runs + excluded.runs,
            successes = s.successes + excluded.successes,
            errors = s.errors + excluded.errors;
    UPDATE jobs_summary s
    SET recent_ids = coalesce(recent.ids, '{}'),
        recent_statuses = coalesce(recent.statuses, '{}'),
        recent_starts = coalesce(recent.starts, '{}'),
        recent_ends = coalesce(recent.ends, '{}'),
        recent_durations = coalesce(recent.durations, '{}'),
        recent_unsettled = coalesce(recent.unsettled, false),
        last_success_start = success.start_date,
        last_success_end = success.end_date,
        last_success_records = success.records_processed
    FROM unnest(names) AS n(name)
    CROSS JOIN LATERAL (
        SELECT array_agg(id ORDER BY start_date DESC, id DESC) AS ids,
               array_agg(status ORDER BY start_date DESC, id DESC) AS statuses,
               array_agg(start_date ORDER BY start_date DESC, id DESC) AS starts,
               array_agg(end_date ORDER BY start_date DESC, id DESC) AS ends,
               array_agg(extract(epoch FROM end_date - start_date)::float8
                         ORDER BY start_date DESC, id DESC) AS durations,
               bool_or(status = 'in_progress' OR end_date IS NULL) AS unsettled
        FROM (SELECT id, status, start_date, end_date FROM jobs
              WHERE jobs.name = n.name
              ORDER BY start_date DESC, id DESC
              LIMIT 20) newest
    ) recent
    LEFT JOIN LATERAL (
        SELECT start_date, end_date, records_processed FROM jobs
        WHERE jobs.name = n.name AND status = 'success'
        ORDER BY end_date DESC NULLS LAST, id DESC
        LIMIT 1
    ) success ON true
    WHERE s.name = n.name;
    DELETE FROM jobs_summary WHERE name = ANY (names) AND runs = 0;
END
$$;

-- The names a statement changed, from its transition tables. An UPDATE that
-- leaves every summarised column alone (a heartbeat) changes none. Rows without
-- a name (an adopted table may hold some) belong to no job and are not summarised.
CREATE OR REPLACE FUNCTION jobs_summary_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    names text[];
    runs_delta bigint[];
    successes_delta bigint[];
    errors_delta bigint[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(name), array_agg(n), array_agg(s), array_agg(e)
        INTO names, runs_delta, successes_delta, errors_delta
        FROM (SELECT name, count(*) AS n, count(*) FILTER (WHERE status = 'success') AS s,
                     count(*) FILTER (WHERE status = 'error') AS e
              FROM new_rows WHERE name IS NOT NULL GROUP BY name) d;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(name), array_agg(-n), array_agg(-s), array_agg(-e)
        INTO names, runs_delta, successes_delta, errors_delta
        FROM (SELECT name, count(*) AS n, count(*) FILTER (WHERE status = 'success') AS s,
                     count(*) FILTER (WHERE status = 'error') AS e
              FROM old_rows WHERE name IS NOT NULL GROUP BY name) d;
    ELSE
        WITH before AS (SELECT id, name, status, start_date, end_date, records_processed
                        FROM old_rows),
             after AS (SELECT id, name, status, start_date, end_date, records_processed
                       FROM new_rows),
             changed AS (SELECT name, status, -1 AS sign FROM (TABLE before EXCEPT ALL TABLE after) b
                         UNION ALL
                         SELECT name, status, 1 FROM (TABLE after EXCEPT ALL TABLE before) a)
        SELECT array_agg(name), array_agg(n), array_agg(s), array_agg(e)
        INTO names, runs_delta, successes_delta, errors_delta
        FROM (SELECT name, sum(sign) AS n, coalesce(sum(sign) FILTER (WHERE status = 'success'), 0) AS s,
                     coalesce(sum(sign) FILTER (WHERE status = 'error'), 0) AS e
              FROM changed WHERE name IS NOT NULL GROUP BY name) d;
    END IF;
    IF names IS NOT NULL THEN
        PERFORM jobs_summary_apply(names, runs_delta, successes_delta, errors_delta);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION jobs_summary_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    DELETE FROM jobs_summary;
    RETURN NULL;
END
$$;

-- Pinned to this schema, with pg_temp last: a writer's temporary tables must not
-- stand in for ours in a function that runs with the owner's rights.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION jobs_summary_change() SET search_path = %I, pg_temp',
                   current_schema());
    EXECUTE format('ALTER FUNCTION jobs_summary_truncate() SET search_path = %I, pg_temp',
                   current_schema());
    EXECUTE format('ALTER FUNCTION jobs_summary_apply(text[], bigint[], bigint[], bigint[]) '
                   'SET search_path = %I, pg_temp', current_schema());
END
$$;
REVOKE ALL ON FUNCTION jobs_summary_apply(text[], bigint[], bigint[], bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION jobs_summary_change() FROM PUBLIC;
REVOKE ALL ON FUNCTION jobs_summary_truncate() FROM PUBLIC"""),
    Step("summary triggers", """-- Created once, with the backfill, while writers wait: SHARE ROW EXCLUSIVE (which
-- CREATE TRIGGER takes anyway) lets readers on and holds writers back until the
-- counts and the triggers are in place together, so no run is counted twice or
-- missed. Adopting 10,000,000 runs holds them for seconds (bench/README.md).
-- lock_timeout: an init that cannot have the table soon gives up rather than
-- queueing every writer behind itself.
DO $$
DECLARE
    previous_timeout text := current_setting('lock_timeout');
BEGIN
    IF NOT EXISTS (SELECT FROM pg_trigger
                   WHERE tgrelid = 'jobs'::regclass AND tgname = 'jobs_summary_insert') THEN
        PERFORM set_config('lock_timeout', '5s', true);
        BEGIN
            LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE;
        EXCEPTION WHEN lock_not_available THEN
            RAISE EXCEPTION 'the jobs table stayed busy for 5 s (a long transaction writes '
                            'to it); nothing was changed, run init again';
        END;
        PERFORM set_config('lock_timeout', previous_timeout, true);
        CREATE TRIGGER jobs_summary_insert AFTER INSERT ON jobs
            REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION jobs_summary_change();
        CREATE TRIGGER jobs_summary_update AFTER UPDATE ON jobs
            REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION jobs_summary_change();
        CREATE TRIGGER jobs_summary_delete AFTER DELETE ON jobs
            REFERENCING OLD TABLE AS old_rows
            FOR EACH STATEMENT EXECUTE FUNCTION jobs_summary_change();
        CREATE TRIGGER jobs_summary_truncate AFTER TRUNCATE ON jobs
            FOR EACH STATEMENT EXECUTE FUNCTION jobs_summary_truncate();
        DELETE FROM jobs_summary;
        PERFORM jobs_summary_apply(array_agg(name ORDER BY name), array_agg(n ORDER BY name),
                                   array_agg(s ORDER BY name), array_agg(e ORDER BY name))
        FROM (SELECT name, count(*) AS n, count(*) FILTER (WHERE status = 'success') AS s,
                     count(*) FILTER (WHERE status = 'error') AS e
              FROM jobs WHERE name IS NOT NULL GROUP BY name) d;
    END IF;
END
$$"""),
    # Who keeps a supervised run, so that on its own host a live wrapper is
    # never reaped and a dead one is reaped at once (see jobs_cli/fencing.py):
    # the kernel's boot id, the wrapper's start time (clock ticks since boot;
    # with host and pid it names one process), and the process group of its
    # command.
    Step("fencing columns", """ALTER TABLE jobs
    ADD COLUMN IF NOT EXISTS boot_id         text,
    ADD COLUMN IF NOT EXISTS wrapper_started bigint,
    ADD COLUMN IF NOT EXISTS pgid            integer""", required=True),
    # Also given by `jobs-cli start`, so a start repeated after a lost
    # connection finds the run it may already have inserted instead of
    # inserting a second. Set by finish/fail: the same command, repeated after
    # a lost connection, finds the run ended by itself (the same key) and
    # succeeds; anyone else's finish of an ended run is refused.
    Step("end_key column", "ALTER TABLE jobs ADD COLUMN IF NOT EXISTS end_key text",
         required=True),
    # True when the reaper ended the run because its wrapper stopped
    # heartbeating (never read from the message, which anyone may write). Rows
    # that existed before this column hold NULL: for them the message still
    # decides (see runs.ABANDONED), so no row is rewritten; every row written
    # since has a value.
    Step("abandoned column", """DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_attribute
                   WHERE attrelid = 'jobs'::regclass AND attname = 'abandoned'
                     AND NOT attisdropped) THEN
        ALTER TABLE jobs ADD COLUMN abandoned boolean;
        ALTER TABLE jobs ALTER COLUMN abandoned SET DEFAULT false;
    END IF;
END
$$""", required=True),
    # Incremental loads (see README). What `jobs-cli run` handed its command:
    # JOBS_LAST_SUCCESS as a time (look-back applied), so `history` can show
    # the window each run loaded; a data cursor: where a run got to (`finish
    # --cursor`, `report --cursor`), and the cursor `run` handed it
    # (JOBS_LAST_CURSOR); `run --after`: the upstream runs a run consumed
    # (JOBS_UPSTREAM_RUNS).
    Step("incremental columns", """ALTER TABLE jobs
    ADD COLUMN IF NOT EXISTS since_handed    timestamptz,
    ADD COLUMN IF NOT EXISTS cursor          text,
    ADD COLUMN IF NOT EXISTS cursor_handed   text,
    ADD COLUMN IF NOT EXISTS upstream_handed integer[]""", required=True),
    # The last success that has a cursor; empty (and free) for jobs without cursors.
    index("jobs_cursor_by_name", "(name, end_date DESC NULLS LAST, id DESC) "
                                 "WHERE status = 'success' AND cursor IS NOT NULL"),
    # The view's * was expanded before the columns above existed.
    Step("view jobs_latest with the columns above", JOBS_LATEST),
    # `jobs-cli reset`: an earlier successful run's watermark and cursor made
    # current again (to_run), or none (to_run NULL: the next run is a full
    # load). Never a row of `jobs`, so readers of runs see only runs. In force
    # until a run that started after reset_at succeeds; nothing is ever
    # deleted. last-success reads it, hence required. A new table: its index
    # needs no CONCURRENTLY.
    Step("resets table", """CREATE TABLE IF NOT EXISTS jobs_resets (
    id        serial PRIMARY KEY,
    name      text NOT NULL,
    reset_at  timestamptz NOT NULL DEFAULT now(),
    to_run    integer,
    watermark timestamptz,
    cursor    text,
    username  text,
    host      text
);
CREATE INDEX IF NOT EXISTS jobs_resets_by_name ON jobs_resets (name, reset_at DESC, id DESC)""",
         required=True),
)


@dataclass
class Outcome:
    """What `migrate` did: steps applied, steps still pending, warnings for the user."""

    applied: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# -- reading the state ------------------------------------------------------------


def applied_steps(conn: "psycopg.Connection", schema: str) -> set[str] | None:
    """Names of the steps recorded in `schema`; None when no step was ever recorded.

    Raises NoJobsTable when the schema has no jobs table (whatever is recorded).
    """
    import psycopg
    from psycopg import sql

    table = qualified(conn, schema, TABLE)
    try:
        names, exists = conn.execute(sql.SQL(
            "SELECT array_agg(name), to_regclass(%s) IS NOT NULL FROM {}").format(
                sql.Identifier(schema, MIGRATIONS_TABLE)), (table,)).fetchone()
        names = set(names or ())
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
        names, exists = None, relation_exists(conn, schema, TABLE)
    if not exists:
        raise NoJobsTable(f"no jobs table in schema {schema!r}: run `jobs-cli init`")
    return names


def pending_steps(conn: "psycopg.Connection", schema: str) -> list[Step]:
    """The steps not yet applied in `schema`, in order; NoJobsTable when there is no table."""
    done = applied_steps(conn, schema) or set()
    return [step for step in STEPS if step.name not in done]


def relation_exists(conn: "psycopg.Connection", schema: str, name: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                        (qualified(conn, schema, name),)).fetchone()[0]


def qualified(conn: "psycopg.Connection", schema: str, name: str) -> str:
    from psycopg import sql

    return sql.Identifier(schema, name).as_string(conn)


def may_apply(conn: "psycopg.Connection", schema: str) -> bool:
    """Whether this role may change the table: a member of its owner, with CREATE on the schema."""
    return conn.execute("""
        SELECT pg_has_role(c.relowner, 'USAGE') AND has_schema_privilege(c.relnamespace, 'CREATE')
        FROM pg_class c WHERE c.oid = to_regclass(%s)""",
                        (qualified(conn, schema, TABLE),)).fetchone()[0]


# -- applying ---------------------------------------------------------------------


def migrate(conn: "psycopg.Connection", schema: str, *, create: bool = True,
            validations: bool = True, lock_timeout: float = LOCK_TIMEOUT_SECONDS,
            attempts: int = LOCK_ATTEMPTS, exclusive: bool = False,
            synchronous: bool = True) -> Outcome:
    """Apply the pending steps to `schema` in order; `conn` must be in autocommit.

    `create`: create the schema and table if missing, and grant the roles
    (`init`); otherwise a missing table raises NoJobsTable. `validations`: run VALIDATE steps (`init`
    only). `exclusive`: hold a session-level advisory lock for the whole run
    (never through a pooler), so a concurrent applier waits and finds all done.
    `synchronous=False`: a brand-new schema's commit does not wait for its WAL
    flush. Any later synchronous commit (a run recorded in it) flushes it
    first; a crash before that loses the new schema whole, never part of it
    (for the embedded server's first use, which the next use makes again).
    Raises DatabaseError when a step fails or its lock stays taken.
    """
    if not exclusive:
        return _migrate(conn, schema, create, validations, lock_timeout, attempts, synchronous)
    key = f"jobs-cli migrations {schema}"
    # Polled, not waited for: a statement waiting for the lock would hold a
    # snapshot that the holder's CREATE INDEX CONCURRENTLY waits for in turn.
    while not conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                           (key,)).fetchone()[0]:
        time.sleep(0.05)
    try:
        return _migrate(conn, schema, create, validations, lock_timeout, attempts, synchronous)
    finally:
        conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))


def _migrate(conn: "psycopg.Connection", schema: str, create: bool, validations: bool,
             lock_timeout: float, attempts: int, synchronous: bool) -> Outcome:
    outcome = Outcome()
    try:
        done = applied_steps(conn, schema)
    except NoJobsTable:
        if not create:
            raise
        done = None
    applier = _Applier(conn, schema, lock_timeout, attempts)
    if done is None:
        applied = applier.create_all(validations, synchronous) if create else None
        if applied is not None:
            outcome.applied = applied
            outcome.pending = [step.name for step in STEPS if step.name not in applied]
            return outcome
        applier.bootstrap(create)
        done = set()
    for step in STEPS:
        if step.name in done:
            continue
        if step.kind == VALIDATE and not validations:
            outcome.pending.append(step.name)
            continue
        applied, warning = applier.apply(step)
        if applied:
            outcome.applied.append(step.name)
        else:
            outcome.pending.append(step.name)
        if warning:
            outcome.warnings.append(warning)
    if outcome.applied or create:
        applier.grant()
    return outcome


class _Applier:
    def __init__(self, conn: "psycopg.Connection", schema: str, lock_timeout: float,
                 attempts: int) -> None:
        from psycopg import sql

        self.conn = conn
        self.schema = schema
        self.lock_seconds = lock_timeout
        self.lock_timeout = f"{int(lock_timeout * 1000)}ms"
        self.attempts = attempts
        self.table = sql.Identifier(schema, TABLE)

    def bootstrap(self, create_schema: bool) -> None:
        from psycopg import sql

        def run() -> None:
            self._create_steps_table(create_schema)
            # A table dropped by hand: the records of its steps are stale.
            self.conn.execute(sql.SQL("DELETE FROM {} WHERE to_regclass(%s) IS NULL").format(
                sql.Identifier(self.schema, MIGRATIONS_TABLE)), (self.table.as_string(self.conn),))

        self._in_transaction("bootstrap", run, record=False)

    def create_all(self, validations: bool, synchronous: bool) -> list[str] | None:
        """Every step in one transaction, if neither the table nor the record of steps
        exists once the bootstrap lock is held (see the module docstring): the steps
        applied, or None if it found either."""
        from psycopg import sql

        from .roles import grant

        applied: list[str] = []

        def run() -> None:
            applied.clear()  # a lock wait tries again
            if self.conn.execute(
                    "SELECT to_regclass(%s) IS NOT NULL OR to_regclass(%s) IS NOT NULL",
                    (self.table.as_string(self.conn),
                     qualified(self.conn, self.schema, MIGRATIONS_TABLE))).fetchone()[0]:
                return
            if not synchronous:
                self.conn.execute("SET LOCAL synchronous_commit = off")
            self._create_steps_table(create_schema=True)
            for step in STEPS:
                if step.kind == DDL:
                    self.conn.execute(step.sql)
                elif step.kind == INDEX:
                    # CONCURRENTLY cannot run in a transaction, nor has anyone to spare here.
                    self.conn.execute(sql.SQL(step.sql.replace(" CONCURRENTLY", "", 1)).format(
                        table=self.table))
                elif validations:
                    self._validate_if_needed(step)  # an empty table: nothing breaks it
                else:
                    continue
                applied.append(step.name)
            self.conn.execute(sql.SQL("INSERT INTO {} (name) SELECT unnest(%s::text[])").format(
                sql.Identifier(self.schema, MIGRATIONS_TABLE)), (applied,))
            grant(self.conn, self.schema)

        self._in_transaction("bootstrap", run, record=False)
        return applied or None

    def _create_steps_table(self, create_schema: bool) -> None:
        """The record of steps, and the schema first if asked."""
        from psycopg import sql

        if create_schema:
            self.conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                sql.Identifier(self.schema)))
        self.conn.execute(MIGRATIONS_DDL)

    def grant(self) -> None:
        """Grant the roles of roles.py what they need on objects the steps made."""
        from .roles import grant

        self._in_transaction("grants", lambda: grant(self.conn, self.schema), record=False)

    def apply(self, step: Step) -> tuple[bool, str | None]:
        """(applied, warning): a VALIDATE step that old rows break is not applied."""
        if step.kind == INDEX:
            return self._build_index(step)
        if step.kind == VALIDATE:
            return self._validate(step)
        return self._in_transaction(step.name, lambda: self.conn.execute(step.sql)), None

    # A transactional step, recorded in its own transaction.
    def _in_transaction(self, name: str, body: Callable[[], object],
                        record: bool = True) -> bool:
        import psycopg

        for attempt in range(self.attempts):
            try:
                with self.conn.transaction():
                    self._locals()
                    self.conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                                      (f"jobs-cli migration {self.schema}.{name}",))
                    if record and self._recorded(name):
                        return False
                    body()
                    if record:
                        self._record(name)
                return True
            except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
                # A deadlock with another applier (its concurrent index build waits
                # for this transaction) rolls one back: the retry finds the way clear.
                if attempt + 1 == self.attempts:
                    raise DatabaseError(self._busy(name)) from None
            except psycopg.OperationalError:
                raise  # the connection's trouble, not the step's
            except psycopg.Error as exc:
                raise DatabaseError(f"step {name!r} failed: {error_line(exc)}") from None
        raise AssertionError("unreachable")

    def _locals(self) -> None:
        from psycopg import sql

        self.conn.execute(
            "SELECT set_config('lock_timeout', %s, true), set_config('search_path', %s, true),"
            " set_config('client_min_messages', 'warning', true)",
            (self.lock_timeout, sql.Identifier(self.schema).as_string(self.conn)))

    def _recorded(self, name: str) -> bool:
        from psycopg import sql

        return self.conn.execute(sql.SQL("SELECT EXISTS (SELECT FROM {} WHERE name = %s)").format(
            sql.Identifier(self.schema, MIGRATIONS_TABLE)), (name,)).fetchone()[0]

    def _record(self, name: str) -> None:
        from psycopg import sql

        self.conn.execute(sql.SQL("INSERT INTO {} (name) VALUES (%s) ON CONFLICT DO NOTHING").format(
            sql.Identifier(self.schema, MIGRATIONS_TABLE)), (name,))

    def _busy(self, name: str) -> str:
        """One line: the step could not get its lock, and who holds one on the table."""
        holder = self.conn.execute("""
            SELECT a.pid, to_char(a.xact_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                   to_char(a.query_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
            FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.relation = to_regclass(%s) AND l.granted AND l.pid <> pg_backend_pid()
            ORDER BY a.xact_start NULLS LAST LIMIT 1""",
                                    (self.table.as_string(self.conn),)).fetchone()
        seconds = self.lock_timeout
        where = f"in schema {self.schema!r}"
        if holder is None:
            who = "another session held the lock it needed"
        else:
            pid, xact_start, query_start = holder
            since = xact_start or query_start
            who = f"session pid {pid} holds a lock on the table" + (
                f" (its transaction started {since}, its query {query_start})"
                if since else "")
        return (f"step {name!r} {where} got no lock in {self.attempts} tries of {seconds}: "
                f"{who}; nothing was changed by that step, run `jobs-cli init` again later")

    # -- INDEX --------------------------------------------------------------------

    def _build_index(self, step: Step) -> tuple[bool, str | None]:
        import psycopg
        from psycopg import sql

        create = sql.SQL(step.sql).format(table=self.table)
        deadline = time.monotonic() + self.attempts * self.lock_seconds
        failures = 0
        while True:
            valid = self.conn.execute(
                "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)",
                (qualified(self.conn, self.schema, step.target),)).fetchone()
            if valid and valid[0]:
                return self._in_transaction(step.name, lambda: None), None
            worker = self._worker()
            if worker is not None:
                # Most likely another applier building this very index (CONCURRENTLY
                # holds that lock from start to end): its INVALID entry is no
                # leftover, and a second build would only wait for it.
                if not step.required:
                    return False, (f"index {step.target} not built now: session pid {worker} "
                                   "is working on the table (an index build or a vacuum); "
                                   "the next `jobs-cli init` builds it")
                if time.monotonic() > deadline:
                    raise DatabaseError(self._busy(step.name))
                time.sleep(0.1)
                continue
            try:
                self.conn.execute("SELECT set_config('lock_timeout', %s, false)",
                                  (self.lock_timeout,))
                try:
                    if valid is not None:
                        # A failed build's leftover, which IF NOT EXISTS would skip.
                        self.conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                            sql.Identifier(self.schema, step.target)))
                    self.conn.execute(create)
                finally:
                    self.conn.execute("RESET lock_timeout")
            except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
                failures += 1
                if failures == self.attempts:
                    raise DatabaseError(self._busy(step.name)) from None
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                failures += 1
                if not _catalog_race(exc) or failures == self.attempts:
                    raise DatabaseError(f"step {step.name!r} failed: {error_line(exc)}") from None

    def _worker(self) -> int | None:
        """Another session holding SHARE UPDATE EXCLUSIVE on the table, if any."""
        row = self.conn.execute("""
            SELECT pid FROM pg_locks WHERE relation = to_regclass(%s) AND granted
            AND mode = 'ShareUpdateExclusiveLock' AND pid <> pg_backend_pid() LIMIT 1""",
                                (self.table.as_string(self.conn),)).fetchone()
        return row[0] if row else None

    # -- VALIDATE -----------------------------------------------------------------

    def _validate(self, step: Step) -> tuple[bool, str | None]:
        from psycopg import sql

        try:
            return self._in_transaction(step.name, lambda: self._validate_if_needed(step)), None
        except _Broken:
            pass
        expression, definition = self.conn.execute(
            "SELECT pg_get_expr(conbin, conrelid), pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = %s::regclass AND conname = %s",
            (self.table.as_string(self.conn), step.target)).fetchone()
        # A CHECK passes when its expression is NULL, hence IS FALSE.
        broken = self.conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE ({}) IS FALSE").format(
            self.table, sql.SQL(expression))).fetchone()[0]
        return False, (f"{broken} existing row(s) break {step.target} ({definition}); "
                       "kept as they are, new rows are checked; mend them and run "
                       "`jobs-cli init` again to validate it")

    def _validate_if_needed(self, step: Step) -> None:
        import psycopg
        from psycopg import sql

        unvalidated = self.conn.execute(
            "SELECT NOT convalidated FROM pg_constraint WHERE conrelid = 'jobs'::regclass"
            " AND conname = %s", (step.target,)).fetchone()
        if not unvalidated or not unvalidated[0]:
            return  # absent (a fresh table needs no jobs_status_present) or valid already
        try:
            self.conn.execute(sql.SQL("ALTER TABLE jobs VALIDATE CONSTRAINT {}").format(
                sql.Identifier(step.target)))
        except psycopg.errors.CheckViolation:
            raise _Broken() from None


def _catalog_race(exc: "psycopg.Error") -> bool:
    """Whether another applier created the same index at the same moment (look again)."""
    import psycopg

    return (isinstance(exc, psycopg.errors.DuplicateTable)
            or (isinstance(exc, psycopg.errors.UniqueViolation)
                and exc.diag.constraint_name == "pg_class_relname_nsp_index")
            or (exc.sqlstate == "XX000" and "concurrently updated" in str(exc)))


class _Broken(Exception):
    """Old rows break the constraint being validated (rolls its transaction back)."""


# -- schema.sql -------------------------------------------------------------------


def schema_sql() -> str:
    """The whole schema as one psql script: every step, each recorded when it succeeds."""
    parts = [SCHEMA_SQL_HEADER, MIGRATIONS_DDL + ";\n"]
    for step in STEPS:
        record = f"INSERT INTO {MIGRATIONS_TABLE} (name) VALUES ('{step.name}') ON CONFLICT DO NOTHING"
        parts.append(f"-- step: {step.name}{' (required)' if step.required else ''}")
        if step.kind == DDL:
            parts.append(f"BEGIN;\n{step.sql};\n{record};\nCOMMIT;\n")
        elif step.kind == INDEX:
            # Outside a transaction, as CONCURRENTLY must be; recorded only once valid.
            parts.append(
                f"{step.sql.format(table=TABLE)};\n"
                f"INSERT INTO {MIGRATIONS_TABLE} (name) SELECT '{step.name}' FROM pg_index\n"
                f"    WHERE indexrelid = to_regclass('{step.target}') AND indisvalid\n"
                f"    ON CONFLICT DO NOTHING;\n")
        else:
            parts.append(f"""DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_constraint WHERE conrelid = 'jobs'::regclass
               AND conname = '{step.target}' AND NOT convalidated) THEN
        ALTER TABLE jobs VALIDATE CONSTRAINT {step.target};
    END IF;
    {record};
EXCEPTION WHEN check_violation THEN
    RAISE WARNING 'old rows break {step.target}; mend them and run this again';
END
$$;
""")
    return "\n".join(parts)


SCHEMA_SQL_HEADER = """\
-- jobs-cli schema, generated from jobs_cli/migrations.py: do not edit, run
-- `python -m jobs_cli.migrations > schema.sql` after adding a step there.
--
-- For psql users; `jobs-cli init` applies the same steps (and is the better
-- way: it takes no lock a writer waits long for). Runs unqualified, in
-- autocommit (not `psql -1`: indexes are built CONCURRENTLY), for example:
--
--     PGOPTIONS='-c search_path=api' psql -v ON_ERROR_STOP=1 -f schema.sql
--
-- Every step is idempotent and additive, so an existing table -- including
-- the City of Austin original -- is upgraded in place without losing or
-- altering a row. Each step is recorded in jobs_cli_migrations once it
-- succeeded, so jobs-cli knows what is done.
"""


if __name__ == "__main__":
    print(schema_sql(), end="")
