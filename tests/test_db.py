"""Connections: whatever the server's or role's defaults, the tool gets what it needs."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
from conftest import BIN_DIR, NO_WAITING, private_dir, wait_until
from psycopg.conninfo import make_conninfo

from jobs_cli import Job, runs
from jobs_cli.db import Database, connect, describe
from jobs_cli.errors import DatabaseUnavailable
from jobs_cli.migrations import migrate
from jobs_cli.server import EmbeddedServer


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


# -- one connection policy: the URL alone, whatever PG* say ---------------------------

# Each would redirect or break the jobs connection if libpq took it from the environment.
POISON = {
    "PGHOSTADDR": "127.0.0.1",
    "PGOPTIONS": "-c default_transaction_read_only=on",
    "PGAPPNAME": "from-the-environment",
    "PGCONNECT_TIMEOUT": "not-a-number",
    "PGTARGETSESSIONATTRS": "standby",
    "PGREQUIREAUTH": "scram-sha-256",
    "PGGSSENCMODE": "require",
    "PGSSLCERTMODE": "require",
    "PGMAXPROTOCOLVERSION": "bogus",
}


@pytest.fixture
def source_service(tmp_path, monkeypatch):
    """PGSERVICE and PGSERVICEFILE naming a source database, as an ETL host may have them."""
    services = tmp_path / "source-services.conf"
    services.write_text("[defined_elsewhere]\nhost=/nonexistent\nport=1\ndbname=erp\n")
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    return services


@pytest.mark.parametrize("variable", sorted(POISON))
def test_no_pg_variable_reaches_the_connection(database, db_url, source_service, monkeypatch,
                                               variable):
    monkeypatch.setenv(variable, POISON[variable])
    session = "SELECT current_setting('default_transaction_read_only'), " \
              "current_setting('application_name'), inet_server_port()"
    # What libpq alone makes of it: the variable is real poison.
    try:
        with psycopg.connect(db_url) as plain:
            assert plain.execute(session).fetchone() != ("off", "", None)
    except psycopg.Error:
        pass
    with connect(database) as connection:
        assert connection.execute(session).fetchone() == ("off", "", None)


def test_job_ignores_pg_variables_and_leaves_the_environment_as_it_was(db_url, conn,
                                                                     source_service, monkeypatch):
    for variable, value in {**POISON, "PGDATABASE": "nonexistent", "PGHOST": "/nonexistent",
                            "PGUSER": "nobody", "PGPASSWORD": "from-env",
                            "PGSERVICE": "defined_elsewhere"}.items():
        monkeypatch.setenv(variable, value)
    before = dict(os.environ)
    job = Job(name="etl", database_url=db_url)
    assert job.most_recent() is None
    job.start()
    job.result("success", records_processed=3)
    assert dict(os.environ) == before
    assert conn.execute("SELECT status, records_processed FROM jobs").fetchall() == [
        ("success", 3)]


@pytest.fixture(scope="module")
def password_server():
    """A server of its own where role etl must give a password (the session server trusts all)."""
    home = private_dir("jobs-cli-test-password-server-")
    server = EmbeddedServer(home)
    conninfo = server.ensure_running()
    socket_dir, port = server.address()
    hba = home / "data" / "pg_hba.conf"
    hba.write_text("local all etl scram-sha-256\n" + hba.read_text())
    with psycopg.connect(conninfo, autocommit=True) as admin:
        admin.execute("CREATE ROLE etl LOGIN PASSWORD 's3cret'")
        admin.execute("CREATE DATABASE jobs OWNER etl")
        admin.execute("SELECT pg_reload_conf()")
    etl = make_conninfo(host=socket_dir, port=port, dbname="jobs", user="etl")

    def asks_for_a_password() -> bool:
        try:
            psycopg.connect(etl, password="").close()
        except psycopg.OperationalError as exc:
            return "password" in str(exc)
        return False

    wait_until(asks_for_a_password, timeout=60, what="pg_hba.conf reloaded")
    with psycopg.connect(etl, password="s3cret", autocommit=True) as owner:
        migrate(owner, "public")
    yield {"host": socket_dir, "port": str(port), "url": etl}
    server.stop()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def user_home(tmp_path):
    """A HOME of its own for ~/.pgpass and ~/.pg_service.conf."""
    path = tmp_path / "user"
    path.mkdir()
    return path


def write_private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)  # libpq ignores a password file others can read
    return path


def jobs_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("JOBS_", "PG"))}
    clean["PATH"] = f"{BIN_DIR}{os.pathsep}{clean.get('PATH', '')}"
    clean.update(NO_WAITING)
    return subprocess.run(["jobs-cli", *args], env={**clean, **env}, capture_output=True,
                          text=True, timeout=60)


def test_password_files_work_and_password_variables_do_not(password_server, user_home, tmp_path,
                                                          home):
    url = password_server["url"]
    env = {"HOME": str(user_home), "JOBS_HOME": str(home), "JOBS_DATABASE_URL": url}
    elsewhere = write_private(tmp_path / "pgpass", "*:*:jobs:etl:s3cret\n")

    for variable in ({"PGPASSWORD": "s3cret"}, {"PGPASSFILE": str(elsewhere)}):
        # No password is no reason to wait for the database.
        began = time.monotonic()
        refused = jobs_cli({**env, **variable, "JOBS_START_RETRY_SECONDS": "30"}, "start", "a")
        assert time.monotonic() - began < 25
        assert refused.returncode == 1 and "password" in refused.stderr, refused.stderr
    passfile = jobs_cli({**env, "JOBS_DATABASE_URL": f"{url} passfile={elsewhere}"}, "start", "a")
    assert passfile.returncode == 0 and passfile.stdout.strip().isdigit(), passfile.stderr

    write_private(user_home / ".pgpass", "*:*:jobs:etl:s3cret\n")
    default = jobs_cli({**env, "PGPASSWORD": "wrong"}, "start", "a")
    assert default.returncode == 0 and default.stdout.strip().isdigit(), default.stderr


def test_service_from_the_url_is_found_in_the_home_service_file(password_server, user_home,
                                                               tmp_path, home, monkeypatch):
    write_private(user_home / ".pgpass", "*:*:jobs:etl:s3cret\n")
    (user_home / ".pg_service.conf").write_text(
        "# the jobs database\n[source]\nhost=/nonexistent\n\n[jobs]\n"
        f"host={password_server['host']}\nport={password_server['port']}\n"
        "dbname=jobs\n  user=etl\n")
    other = tmp_path / "services.conf"
    other.write_text("[jobs]\nhost=/nonexistent\n")
    env = {"HOME": str(user_home), "JOBS_HOME": str(home), "PGSERVICEFILE": str(other)}

    by_service = jobs_cli({**env, "JOBS_DATABASE_URL": "service=jobs"}, "start", "a")
    assert by_service.returncode == 0 and by_service.stdout.strip().isdigit(), by_service.stderr
    # PGSERVICE does not complete a URL that names no host.
    unnamed = jobs_cli({**env, "PGSERVICE": "jobs", "JOBS_DATABASE_URL": "dbname=jobs user=etl"},
                       "start", "a")
    assert unnamed.returncode == 1 and "the default unix socket" in unnamed.stderr
    undefined = jobs_cli({**env, "JOBS_DATABASE_URL": "service=nope"}, "start", "a")
    assert undefined.stderr == (f"jobs-cli: service 'nope' is not defined in {user_home}/"
                                ".pg_service.conf (the only service file jobs-cli reads)\n")

    # The API, in process, the same way.
    monkeypatch.setenv("HOME", str(user_home))
    monkeypatch.setenv("PGHOST", "/nonexistent")
    job = Job(name="api", database_url="service=jobs")
    job.start()
    assert job.result("success")["status"] == "success"
