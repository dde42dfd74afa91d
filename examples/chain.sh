#!/bin/sh
# A chain of two jobs without an orchestrator: example_extract copies changed
# orders into example_staging; example_load moves staged rows into
# example_warehouse, and runs only once example_extract has succeeded since
# example_load's last success started (`--after`). Otherwise it is skipped:
# exit 75, nothing recorded, nothing printed off a terminal. From cron both
# lines would simply run every few minutes.
#
#   sh examples/chain.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
JOBS_CLI=${JOBS_CLI:-jobs-cli}
EXAMPLE_DB=${JOBS_DATABASE_URL:-$("$JOBS_CLI" server start)}
export EXAMPLE_DB JOBS_CLI
sql() { psql "$EXAMPLE_DB" -X -v ON_ERROR_STOP=1 -qAt "$@"; }

sql -f "$here/orders.sql"
extract() {
    "$JOBS_CLI" run --name example_extract --lookback 10m \
        -- sh "$here/copy_changed.sh" example_orders example_staging
}
load() {
    "$JOBS_CLI" run --name example_load --after example_extract \
        -- sh "$here/copy_by_xid.sh" example_staging example_warehouse || {
        status=$?
        [ "$status" -eq 75 ] || exit "$status"
        echo "example_load skipped: nothing new from example_extract"
    }
}

sql -c "INSERT INTO example_orders (item, amount) VALUES ('chain apples', 3), ('chain pears', 4)"
load
extract
load
load
echo "warehouse: $(sql -c 'SELECT count(*) FROM example_warehouse') orders"
