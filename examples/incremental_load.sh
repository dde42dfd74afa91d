#!/bin/sh
# An incremental load recorded by jobs-cli: new orders are copied from
# example_orders to example_orders_copy, each run taking only the rows changed
# since the last successful run started, less a 10-minute look-back.
#
#   sh examples/incremental_load.sh
#
# Needs psql and jobs-cli on PATH (or JOBS_CLI), nothing else: the tables go
# into jobs-cli's embedded server, or into JOBS_DATABASE_URL when it is set.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
JOBS_CLI=${JOBS_CLI:-jobs-cli}
# `server start` prints a URL that psql takes as it is.
EXAMPLE_DB=${JOBS_DATABASE_URL:-$("$JOBS_CLI" server start)}
export EXAMPLE_DB JOBS_CLI
sql() { psql "$EXAMPLE_DB" -X -v ON_ERROR_STOP=1 -qAt "$@"; }

sql -f "$here/orders.sql"
new_orders() {
    sql -c "INSERT INTO example_orders (item, amount)
            SELECT 'item ' || i, i FROM generate_series(1, $1) AS i"
}
load() {
    "$JOBS_CLI" run --name example_orders_sync --lookback 10m \
        -- sh "$here/copy_changed.sh" example_orders example_orders_copy
}

new_orders 3
load
new_orders 2
load

echo "source:      $(sql -c 'SELECT count(*) FROM example_orders') orders"
echo "destination: $(sql -c 'SELECT count(*) FROM example_orders_copy') orders"
"$JOBS_CLI" history example_orders_sync --limit 2
