-- jobs-cli schema: the single source of truth for the `jobs` table.
--
-- Runs unqualified: `jobs-cli init` sets search_path to the target schema
-- (default public, --schema / JOBS_SCHEMA) inside the transaction that applies
-- this file, so `psql -c 'SET search_path TO api' -f schema.sql` does the same.
--
-- Every statement is idempotent and every change additive, so an existing
-- table -- including the City of Austin original (no CHECKs, no indexes,
-- nullable status) -- is upgraded in place without losing or altering a row.
-- New columns must be nullable or have a default.

CREATE TABLE IF NOT EXISTS jobs (
    id                serial PRIMARY KEY,
    name              text NOT NULL,
    start_date        timestamptz NOT NULL DEFAULT now(),
    end_date          timestamptz,
    message           text,
    status            text NOT NULL,
    records_processed integer,
    source            text NOT NULL,
    destination       text NOT NULL
);

-- The original set start_date from the client clock; ours comes from the server.
-- An adopted table's own default, if it has one, is left alone.
DO $$
BEGIN
    IF NOT (SELECT atthasdef FROM pg_attribute
            WHERE attrelid = 'jobs'::regclass AND attname = 'start_date') THEN
        ALTER TABLE jobs ALTER COLUMN start_date SET DEFAULT now();
    END IF;
END
$$;

-- Recorded by `jobs-cli run` (all nullable: rows from `start` and adopted rows
-- have none of them).
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS host         text;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS pid          integer;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS username     text;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS command      text;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS exit_code    integer;
-- Tail of the command's stderr (and stdout with --capture-stdout).
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS output       text;
-- Liveness of a supervised run: the wrapper moves lease_until forward at each
-- heartbeat; an in_progress run whose lease has expired has lost its wrapper.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS heartbeat_at timestamptz;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS lease_until  timestamptz;
-- Unique per `jobs-cli run` invocation: a result spooled while the database
-- was down finds its run by it, and replaying a spooled --fail-open run (which
-- never got an id) inserts it once however often the replay is repeated.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS run_key      text;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_run_key ON jobs (run_key) WHERE run_key IS NOT NULL;
-- Who keeps a supervised run, so that on its own host a live wrapper is never
-- reaped and a dead one is reaped at once (see jobs_cli/fencing.py): the
-- kernel's boot id, the wrapper's start time (clock ticks since boot; with host
-- and pid it names one process), and the process group of its command.
-- Before jobs_latest, whose columns are fixed when it is created.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS boot_id         text;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS wrapper_started bigint;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS pgid            integer;
-- Also given by `jobs-cli start`, so a start repeated after a lost connection
-- finds the run it may already have inserted instead of inserting a second.
-- Set by finish/fail: the same command, repeated after a lost connection,
-- finds the run ended by itself (the same key) and succeeds; anyone else's
-- finish of an ended run is refused.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS end_key      text;
-- True when the reaper ended the run because its wrapper stopped heartbeating
-- (never read from the message, which anyone may write). Rows that existed
-- before this column hold NULL: for them the message still decides (see
-- runs.ABANDONED), so no row is rewritten; every row written since has a value.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_attribute
                   WHERE attrelid = 'jobs'::regclass AND attname = 'abandoned'
                     AND NOT attisdropped) THEN
        ALTER TABLE jobs ADD COLUMN abandoned boolean;
        ALTER TABLE jobs ALTER COLUMN abandoned SET DEFAULT false;
    END IF;
END
$$;

-- Incremental loads (see README); before jobs_latest, whose * is expanded
-- when the view is created. What `jobs-cli run` handed its command:
-- JOBS_LAST_SUCCESS as a time (look-back applied), so `history` can show the
-- window each run loaded.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS since_handed timestamptz;
-- A data cursor: where a run got to (`finish --cursor`, `report --cursor`),
-- and the cursor `run` handed it (JOBS_LAST_CURSOR).
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS cursor        text;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS cursor_handed text;
-- The last success that has a cursor; empty (and free) for jobs without cursors.
CREATE INDEX IF NOT EXISTS jobs_cursor_by_name
    ON jobs (name, end_date DESC NULLS LAST, id DESC)
    WHERE status = 'success' AND cursor IS NOT NULL;
-- `run --after`: the upstream runs a run consumed (JOBS_UPSTREAM_RUNS).
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS upstream_handed integer[];

-- Constraints. Adopted rows may break them; such a constraint is then added
-- NOT VALID (it holds for every new or updated row, old rows stay as they
-- were) and a WARNING tells how many rows break it. A later init validates it
-- once the old rows are mended.
DO $$
DECLARE
    c record;
    broken bigint;
BEGIN
    -- status is NOT NULL in a fresh table; an adopted one may hold NULLs.
    IF EXISTS (SELECT 1 FROM pg_attribute
               WHERE attrelid = 'jobs'::regclass AND attname = 'status' AND NOT attnotnull) THEN
        SELECT count(*) INTO broken FROM jobs WHERE status IS NULL;
        IF broken = 0 THEN
            ALTER TABLE jobs ALTER COLUMN status SET NOT NULL;
            ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_status_present;
        ELSE
            IF NOT EXISTS (SELECT 1 FROM pg_constraint
                           WHERE conrelid = 'jobs'::regclass AND conname = 'jobs_status_present') THEN
                ALTER TABLE jobs ADD CONSTRAINT jobs_status_present CHECK (status IS NOT NULL) NOT VALID;
            END IF;
            RAISE WARNING '% existing row(s) have no status; kept as they are, new rows must have one', broken;
        END IF;
    END IF;

    FOR c IN SELECT * FROM (VALUES
        ('jobs_status_check', $c$status IN ('in_progress', 'success', 'error')$c$,
         'have a status other than in_progress, success or error'),
        ('jobs_end_after_start', 'end_date >= start_date',
         'end before they start'),
        ('jobs_records_nonnegative', 'records_processed >= 0',
         'have negative records_processed')
    ) AS t(conname, expr, what)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_constraint
                       WHERE conrelid = 'jobs'::regclass AND conname = c.conname) THEN
            -- A CHECK passes when its expression is NULL, hence IS NOT TRUE.
            EXECUTE format('SELECT count(*) FROM jobs WHERE (%s) IS FALSE', c.expr) INTO broken;
            IF broken = 0 THEN
                EXECUTE format('ALTER TABLE jobs ADD CONSTRAINT %I CHECK (%s)', c.conname, c.expr);
            ELSE
                EXECUTE format('ALTER TABLE jobs ADD CONSTRAINT %I CHECK (%s) NOT VALID', c.conname, c.expr);
                RAISE WARNING '% existing row(s) % (%); kept as they are, new rows are checked',
                    broken, c.what, c.conname;
            END IF;
        ELSIF EXISTS (SELECT 1 FROM pg_constraint
                      WHERE conrelid = 'jobs'::regclass AND conname = c.conname AND NOT convalidated) THEN
            EXECUTE format('SELECT count(*) FROM jobs WHERE (%s) IS FALSE', c.expr) INTO broken;
            IF broken = 0 THEN
                EXECUTE format('ALTER TABLE jobs VALIDATE CONSTRAINT %I', c.conname);
            ELSE
                RAISE WARNING '% existing row(s) % (%); kept as they are, new rows are checked',
                    broken, c.what, c.conname;
            END IF;
        END IF;
    END LOOP;
END
$$;

-- last-success: newest successful run of a name by end_date, as the original.
CREATE INDEX IF NOT EXISTS jobs_success_by_name
    ON jobs (name, end_date DESC NULLS LAST, id DESC) WHERE status = 'success';
-- Per-name history, newest first; also jobs_latest and overlap checks.
CREATE INDEX IF NOT EXISTS jobs_name_start
    ON jobs (name, start_date DESC, id DESC);
-- Listing all runs newest first.
CREATE INDEX IF NOT EXISTS jobs_start
    ON jobs (start_date DESC, id DESC);
-- Runs still in progress: overlap control, reaping, "running now".
CREATE INDEX IF NOT EXISTS jobs_in_progress
    ON jobs (name, lease_until) WHERE status = 'in_progress';
-- A job's newest runs of one status (`list --status`), and counts by status
-- (`metrics`) read from the index alone.
CREATE INDEX IF NOT EXISTS jobs_name_status_start
    ON jobs (name, status, start_date DESC, id DESC);

-- One row per name: the run with the latest start_date (as the original's view,
-- same columns). Not DISTINCT ON, which reads the whole table: the names are
-- enumerated by jumping through jobs_name_start (one index descent each) and
-- each name's newest run read from it.
CREATE OR REPLACE VIEW jobs_latest AS
    WITH RECURSIVE names(name) AS (
        (SELECT name FROM jobs ORDER BY name LIMIT 1)
        UNION ALL
        SELECT (SELECT j.name FROM jobs j WHERE j.name > names.name ORDER BY j.name LIMIT 1)
        FROM names
        WHERE names.name IS NOT NULL
    )
    SELECT latest.*
    FROM names
    CROSS JOIN LATERAL (
        SELECT * FROM jobs
        WHERE jobs.name = names.name
        ORDER BY start_date DESC, id DESC
        LIMIT 1
    ) latest;

-- `jobs-cli watch` redraws when the table changes. One notification per
-- statement, with the schema as payload; heartbeats (which only move
-- heartbeat_at and lease_until) notify nobody.
CREATE OR REPLACE FUNCTION jobs_notify_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('jobs_cli', TG_TABLE_SCHEMA);
    RETURN NULL;
END
$$;
-- Created once: replacing it at every init would lock a shared table for nothing.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_trigger
                   WHERE tgrelid = 'jobs'::regclass AND tgname = 'jobs_notify_change') THEN
        CREATE TRIGGER jobs_notify_change
            AFTER INSERT OR DELETE OR UPDATE OF status, end_date, message, records_processed, output
            ON jobs FOR EACH STATEMENT EXECUTE FUNCTION jobs_notify_change();
    END IF;
END
$$;

-- One row per job name, kept current by triggers, so that `status`, `check` and
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
);

-- Adds the count deltas of `names` (taking their rows' locks, in name order), then
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
-- leaves every summarised column alone (a heartbeat) changes none.
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
              FROM new_rows GROUP BY name) d;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(name), array_agg(-n), array_agg(-s), array_agg(-e)
        INTO names, runs_delta, successes_delta, errors_delta
        FROM (SELECT name, count(*) AS n, count(*) FILTER (WHERE status = 'success') AS s,
                     count(*) FILTER (WHERE status = 'error') AS e
              FROM old_rows GROUP BY name) d;
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
              FROM changed GROUP BY name) d;
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
REVOKE ALL ON FUNCTION jobs_summary_truncate() FROM PUBLIC;

-- Created once, with the backfill, while writers wait: SHARE ROW EXCLUSIVE (which
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
              FROM jobs GROUP BY name) d;
    END IF;
END
$$;

-- `jobs-cli reset`: an earlier successful run's watermark and cursor made
-- current again (to_run), or none (to_run NULL: the next run is a full load).
-- Never a row of `jobs`, so readers of runs see only runs. In force until a
-- run that started after reset_at succeeds; nothing is ever deleted.
CREATE TABLE IF NOT EXISTS jobs_resets (
    id        serial PRIMARY KEY,
    name      text NOT NULL,
    reset_at  timestamptz NOT NULL DEFAULT now(),
    to_run    integer,
    watermark timestamptz,
    cursor    text,
    username  text,
    host      text
);
CREATE INDEX IF NOT EXISTS jobs_resets_by_name ON jobs_resets (name, reset_at DESC, id DESC);
