"""Connections: whatever the server's or role's defaults, the tool gets what it needs."""

from __future__ import annotations

import psycopg
import pytest

from jobs_cli import runs
from jobs_cli.db import Database, connect, describe
from jobs_cli.errors import DatabaseUnavailable


@pytest.fixture
def dbname(conn):
    return conn.info.dbname


@pytest.mark.parametrize("datestyle", ["German", "SQL, DMY", "Postgres, MDY"])
def test_a_non_iso_datestyle_default_does_not_break_commands(conn, dbname, cli, datestyle):
    conn.execute(f"ALTER DATABASE {dbname} SET datestyle = '{datestyle}'")
    started = cli("start", "a", "--json")
    assert started.returncode == 0, started.stderr
    assert started.stdout.count('"start_date": "20') == 1
    assert cli("list", "--json").returncode == 0


def test_a_latin1_client_encoding_in_the_url_still_stores_any_name(db_url, database, conn):
    latin1 = Database(url=db_url + " client_encoding=LATIN1", home=database.home)
    with connect(latin1) as connection:
        run = runs.start_run(connection, "public", "snow ☃")
    assert conn.execute("SELECT name FROM jobs WHERE id = %s", (run.id,)).fetchone() == ("snow ☃",)


def test_claims_are_read_committed_whatever_the_default(conn, dbname, database):
    conn.execute(f"ALTER DATABASE {dbname} SET default_transaction_isolation = 'serializable'")
    with connect(database) as connection, connection.transaction():
        level = connection.execute("SHOW transaction_isolation").fetchone()[0]
    assert level == "read committed"


@pytest.mark.parametrize("url", [
    "postgresql://etl:s3cret@db.example/warehouse",
    "host=db.example dbname=warehouse user=etl password=s3cret",
])
def test_describe_names_host_and_database_only(url):
    assert describe(url) == 'database "warehouse" on host "db.example"'


def test_describe_without_a_host_names_the_default_socket_not_localhost():
    assert describe("dbname=warehouse password=s3cret") == \
        'database "warehouse" on the default unix socket'


def test_describe_names_the_port_as_given():
    assert describe("postgresql://etl@db.internal:6543/warehouse") == \
        'database "warehouse" on host "db.internal" port "6543"'


@pytest.mark.parametrize("port", ["abc", "99999", "0"])
def test_a_port_that_is_no_port_is_named_not_resolved(home, port):
    with pytest.raises(DatabaseUnavailable) as raised:
        with connect(Database(url=f"postgresql://u:s3cret@localhost:{port}/db", home=home)):
            pass
    assert str(raised.value).startswith(f'the database URL\'s port "{port}" is not a port number')
    assert "s3cret" not in str(raised.value)


def test_a_malformed_url_is_not_quoted(home):
    database = Database(url="postgresql://u:s3cret@[::1/db", home=home)
    with pytest.raises(DatabaseUnavailable) as raised:
        with connect(database):
            pass
    assert "s3cret" not in str(raised.value) and "cannot be parsed" in str(raised.value)


def test_connections_never_prepare_statements(database):
    """Prepared statements do not survive PgBouncer's transaction pooling."""
    with connect(database) as connection:
        for _ in range(10):
            connection.execute("SELECT %s::int", (1,))
        prepared = connection.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
    assert prepared == (0,)


def test_psycopg_errors_become_one_line_jobs_errors(database):
    with pytest.raises(Exception) as raised:
        with connect(database) as connection:
            connection.execute("SELECT 1/0")
    assert not isinstance(raised.value, psycopg.Error)
    assert str(raised.value) == "division by zero"
