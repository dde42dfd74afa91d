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

CREATE TABLE IF NOT EXISTS jobs_cli_migrations (
    name       text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- step: create table jobs (required)
BEGIN;
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
INSERT INTO jobs_cli_migrations (name) VALUES ('create table jobs') ON CONFLICT DO NOTHING;
COMMIT;

-- step: start_date default (required)
BEGIN;
DO $$
BEGIN
    IF NOT (SELECT atthasdef FROM pg_attribute
            WHERE attrelid = 'jobs'::regclass AND attname = 'start_date') THEN
        ALTER TABLE jobs ALTER COLUMN start_date SET DEFAULT now();
    END IF;
END
$$;
INSERT INTO jobs_cli_migrations (name) VALUES ('start_date default') ON CONFLICT DO NOTHING;
COMMIT;

-- step: run columns (required)
BEGIN;
ALTER TABLE jobs
    ADD COLUMN IF NOT EXISTS host         text,
    ADD COLUMN IF NOT EXISTS pid          integer,
    ADD COLUMN IF NOT EXISTS username     text,
    ADD COLUMN IF NOT EXISTS command      text,
    ADD COLUMN IF NOT EXISTS exit_code    integer,
    ADD COLUMN IF NOT EXISTS output       text,
    ADD COLUMN IF NOT EXISTS heartbeat_at timestamptz,
    ADD COLUMN IF NOT EXISTS lease_until  timestamptz,
    ADD COLUMN IF NOT EXISTS run_key      text;
INSERT INTO jobs_cli_migrations (name) VALUES ('run columns') ON CONFLICT DO NOTHING;
COMMIT;

-- step: index jobs_run_key (required)
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS jobs_run_key
    ON jobs (run_key) WHERE run_key IS NOT NULL;
INSERT INTO jobs_cli_migrations (name) SELECT 'index jobs_run_key' FROM pg_index
    WHERE indexrelid = to_regclass('jobs_run_key') AND indisvalid
    ON CONFLICT DO NOTHING;

-- step: check constraints
BEGIN;
DO $$
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
        ('jobs_status_check', $c$status IN ('in_progress', 'success', 'error')$c$),
        ('jobs_end_after_start', $c$end_date >= start_date$c$),
        ('jobs_records_nonnegative', $c$records_processed >= 0$c$)
    ) AS t(conname, expr)
    LOOP
        IF NOT EXISTS (SELECT FROM pg_constraint
                       WHERE conrelid = 'jobs'::regclass AND conname = c.conname) THEN
            EXECUTE format('ALTER TABLE jobs ADD CONSTRAINT %I CHECK (%s) NOT VALID',
                           c.conname, c.expr);
        END IF;
    END LOOP;
END
$$;
INSERT INTO jobs_cli_migrations (name) VALUES ('check constraints') ON CONFLICT DO NOTHING;
COMMIT;

-- step: validate jobs_status_present
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_constraint WHERE conrelid = 'jobs'::regclass
               AND conname = 'jobs_status_present' AND NOT convalidated) THEN
        ALTER TABLE jobs VALIDATE CONSTRAINT jobs_status_present;
    END IF;
    INSERT INTO jobs_cli_migrations (name) VALUES ('validate jobs_status_present') ON CONFLICT DO NOTHING;
EXCEPTION WHEN check_violation THEN
    RAISE WARNING 'old rows break jobs_status_present; mend them and run this again';
END
$$;

-- step: validate jobs_status_check
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_constraint WHERE conrelid = 'jobs'::regclass
               AND conname = 'jobs_status_check' AND NOT convalidated) THEN
        ALTER TABLE jobs VALIDATE CONSTRAINT jobs_status_check;
    END IF;
    INSERT INTO jobs_cli_migrations (name) VALUES ('validate jobs_status_check') ON CONFLICT DO NOTHING;
EXCEPTION WHEN check_violation THEN
    RAISE WARNING 'old rows break jobs_status_check; mend them and run this again';
END
$$;

-- step: validate jobs_end_after_start
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_constraint WHERE conrelid = 'jobs'::regclass
               AND conname = 'jobs_end_after_start' AND NOT convalidated) THEN
        ALTER TABLE jobs VALIDATE CONSTRAINT jobs_end_after_start;
    END IF;
    INSERT INTO jobs_cli_migrations (name) VALUES ('validate jobs_end_after_start') ON CONFLICT DO NOTHING;
EXCEPTION WHEN check_violation THEN
    RAISE WARNING 'old rows break jobs_end_after_start; mend them and run this again';
END
$$;

-- step: validate jobs_records_nonnegative
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_constraint WHERE conrelid = 'jobs'::regclass
               AND conname = 'jobs_records_nonnegative' AND NOT convalidated) THEN
        ALTER TABLE jobs VALIDATE CONSTRAINT jobs_records_nonnegative;
    END IF;
    INSERT INTO jobs_cli_migrations (name) VALUES ('validate jobs_records_nonnegative') ON CONFLICT DO NOTHING;
EXCEPTION WHEN check_violation THEN
    RAISE WARNING 'old rows break jobs_records_nonnegative; mend them and run this again';
END
$$;

-- step: index jobs_success_by_name
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_success_by_name
    ON jobs (name, end_date DESC NULLS LAST, id DESC) WHERE status = 'success';
INSERT INTO jobs_cli_migrations (name) SELECT 'index jobs_success_by_name' FROM pg_index
    WHERE indexrelid = to_regclass('jobs_success_by_name') AND indisvalid
    ON CONFLICT DO NOTHING;

-- step: index jobs_name_start
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_name_start
    ON jobs (name, start_date DESC, id DESC);
INSERT INTO jobs_cli_migrations (name) SELECT 'index jobs_name_start' FROM pg_index
    WHERE indexrelid = to_regclass('jobs_name_start') AND indisvalid
    ON CONFLICT DO NOTHING;

-- step: index jobs_start
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_start
    ON jobs (start_date DESC, id DESC);
INSERT INTO jobs_cli_migrations (name) SELECT 'index jobs_start' FROM pg_index
    WHERE indexrelid = to_regclass('jobs_start') AND indisvalid
    ON CONFLICT DO NOTHING;

-- step: index jobs_in_progress
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_in_progress
    ON jobs (name, lease_until) WHERE status = 'in_progress';
INSERT INTO jobs_cli_migrations (name) SELECT 'index jobs_in_progress' FROM pg_index
    WHERE indexrelid = to_regclass('jobs_in_progress') AND indisvalid
    ON CONFLICT DO NOTHING;

-- step: index jobs_name_status_start
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_name_status_start
    ON jobs (name, status, start_date DESC, id DESC);
INSERT INTO jobs_cli_migrations (name) SELECT 'index jobs_name_status_start' FROM pg_index
    WHERE indexrelid = to_regclass('jobs_name_status_start') AND indisvalid
    ON CONFLICT DO NOTHING;

-- step: view jobs_latest
BEGIN;
CREATE OR REPLACE VIEW jobs_latest AS
WITH RECURSIVE
names(name) AS (
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
INSERT INTO jobs_cli_migrations (name) VALUES ('view jobs_latest') ON CONFLICT DO NOTHING;
COMMIT;

-- step: notify trigger
BEGIN;
CREATE OR REPLACE FUNCTION jobs_notify_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('jobs_cli', TG_TABLE_SCHEMA);
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS jobs_notify_change ON jobs;
CREATE TRIGGER jobs_notify_change
    AFTER INSERT OR DELETE OR UPDATE OF status, end_date, message, records_processed, output
    ON jobs FOR EACH STATEMENT EXECUTE FUNCTION jobs_notify_change();
INSERT INTO jobs_cli_migrations (name) VALUES ('notify trigger') ON CONFLICT DO NOTHING;
COMMIT;

-- step: summary table
BEGIN;
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
INSERT INTO jobs_cli_migrations (name) VALUES ('summary table') ON CONFLICT DO NOTHING;
COMMIT;

-- step: summary functions
BEGIN;
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
REVOKE ALL ON FUNCTION jobs_summary_truncate() FROM PUBLIC;
INSERT INTO jobs_cli_migrations (name) VALUES ('summary functions') ON CONFLICT DO NOTHING;
COMMIT;

-- step: summary triggers
BEGIN;
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
              FROM jobs WHERE name IS NOT NULL GROUP BY name) d;
    END IF;
END
$$;
INSERT INTO jobs_cli_migrations (name) VALUES ('summary triggers') ON CONFLICT DO NOTHING;
COMMIT;

-- step: fencing columns (required)
BEGIN;
ALTER TABLE jobs
    ADD COLUMN IF NOT EXISTS boot_id         text,
    ADD COLUMN IF NOT EXISTS wrapper_started bigint,
    ADD COLUMN IF NOT EXISTS pgid            integer;
INSERT INTO jobs_cli_migrations (name) VALUES ('fencing columns') ON CONFLICT DO NOTHING;
COMMIT;

-- step: end_key column (required)
BEGIN;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS end_key text;
INSERT INTO jobs_cli_migrations (name) VALUES ('end_key column') ON CONFLICT DO NOTHING;
COMMIT;

-- step: abandoned column (required)
BEGIN;
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
INSERT INTO jobs_cli_migrations (name) VALUES ('abandoned column') ON CONFLICT DO NOTHING;
COMMIT;

-- step: incremental columns (required)
BEGIN;
ALTER TABLE jobs
    ADD COLUMN IF NOT EXISTS since_handed    timestamptz,
    ADD COLUMN IF NOT EXISTS cursor          text,
    ADD COLUMN IF NOT EXISTS cursor_handed   text,
    ADD COLUMN IF NOT EXISTS upstream_handed integer[];
INSERT INTO jobs_cli_migrations (name) VALUES ('incremental columns') ON CONFLICT DO NOTHING;
COMMIT;

-- step: index jobs_cursor_by_name
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_cursor_by_name
    ON jobs (name, end_date DESC NULLS LAST, id DESC) WHERE status = 'success' AND cursor IS NOT NULL;
INSERT INTO jobs_cli_migrations (name) SELECT 'index jobs_cursor_by_name' FROM pg_index
    WHERE indexrelid = to_regclass('jobs_cursor_by_name') AND indisvalid
    ON CONFLICT DO NOTHING;

-- step: view jobs_latest with the columns above
BEGIN;
CREATE OR REPLACE VIEW jobs_latest AS
WITH RECURSIVE
names(name) AS (
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
INSERT INTO jobs_cli_migrations (name) VALUES ('view jobs_latest with the columns above') ON CONFLICT DO NOTHING;
COMMIT;

-- step: resets table (required)
BEGIN;
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
INSERT INTO jobs_cli_migrations (name) VALUES ('resets table') ON CONFLICT DO NOTHING;
COMMIT;
