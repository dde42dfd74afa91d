-- The example's tables, next to the jobs table (any database will do).
--
-- modified_at is stamped with the writer's transaction start (now()), and
-- the transaction may commit later: hence `--lookback` in incremental_load.sh.
-- xid is the writer's transaction id: chain.sh's second job uses it for a
-- cursor that a transaction still open cannot overtake.
SET client_min_messages = warning;  -- quiet when the tables exist already
CREATE TABLE IF NOT EXISTS example_orders (
    id          bigserial PRIMARY KEY,
    item        text NOT NULL,
    amount      numeric NOT NULL,
    modified_at timestamptz NOT NULL DEFAULT now(),
    xid         xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE TABLE IF NOT EXISTS example_orders_copy (LIKE example_orders INCLUDING ALL);
CREATE TABLE IF NOT EXISTS example_staging (LIKE example_orders INCLUDING ALL);
CREATE TABLE IF NOT EXISTS example_warehouse (LIKE example_orders INCLUDING ALL);
