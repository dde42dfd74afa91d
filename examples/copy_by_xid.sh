#!/bin/sh
# Run by `jobs-cli run`: copy the rows of table $1 into table $2 by a cursor
# that is a transaction id. Every transaction below the horizon
# pg_snapshot_xmin(pg_current_snapshot()) has ended, so the rows stamped below
# it are final; a transaction still open holds the horizon back instead of
# being overtaken, as `id > last id` would be. The horizon is reported as the
# cursor, and handed to the next run as JOBS_LAST_CURSOR.
set -eu
result=$(psql "$EXAMPLE_DB" -X -v ON_ERROR_STOP=1 -qAt -v source="$1" -v target="$2" \
              -v after="${JOBS_LAST_CURSOR:-0}" <<'SQL'
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT pg_snapshot_xmin(pg_current_snapshot()) AS horizon \gset
WITH copied AS (
    INSERT INTO :"target" (id, item, amount, modified_at)
    SELECT id, item, amount, modified_at FROM :"source"
    WHERE xid >= :'after'::xid8 AND xid < :'horizon'::xid8
    ON CONFLICT (id) DO UPDATE
        SET item = excluded.item, amount = excluded.amount,
            modified_at = excluded.modified_at, xid = excluded.xid
    RETURNING 1
)
SELECT count(*) || ' ' || :'horizon' FROM copied;
COMMIT;
SQL
)
"${JOBS_CLI:-jobs-cli}" report --records "${result% *}" --cursor "${result#* }"
echo "copied ${result% *} row(s) from $1 to $2${JOBS_UPSTREAM_RUNS:+, after upstream run(s) $JOBS_UPSTREAM_RUNS}"
