#!/bin/sh
# Run by `jobs-cli run --lookback …`: copy the rows of table $1 changed since
# JOBS_LAST_SUCCESS (the start of the last successful run, less the look-back;
# empty the first time: everything) into table $2. The look-back reads some
# rows again, so the copy is an upsert.
set -eu
copied=$(psql "$EXAMPLE_DB" -X -v ON_ERROR_STOP=1 -qAt -v source="$1" -v target="$2" \
              -v since="${JOBS_LAST_SUCCESS:-0}" <<'SQL'
WITH copied AS (
    INSERT INTO :"target" (id, item, amount, modified_at)
    SELECT id, item, amount, modified_at FROM :"source"
    WHERE modified_at >= to_timestamp(:since)
    ON CONFLICT (id) DO UPDATE
        SET item = excluded.item, amount = excluded.amount,
            modified_at = excluded.modified_at, xid = excluded.xid
    RETURNING 1
)
SELECT count(*) FROM copied;
SQL
)
"${JOBS_CLI:-jobs-cli}" report --records "$copied"
echo "copied $copied row(s) from $1 to $2"
