"""Least privilege: jobs_writer records runs and cannot erase them; jobs_reader only reads.

Roles are cluster-wide and the session server is shared: login roles get a
name of their own per test and are dropped at teardown. jobs_writer and
jobs_reader themselves stay (they hold grants in other tests' databases).
"""

from __future__ import annotations

import itertools
import os

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from jobs_cli.roles import GRANTS, READER, WRITER

_numbers = itertools.count()


@pytest.fixture
def login_role(cli, conn, db_url):
    """make(member_of) -> the URL of a new login role that is a member of member_of."""
    made = []

    def make(member_of: str) -> str:
        assert cli("init", "--roles").returncode == 0
        name = f"etl_{os.getpid()}_{next(_numbers)}"
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
            sql.Identifier(name), sql.Identifier(member_of)))
        made.append(name)
        return make_conninfo(db_url, user=name)

    yield make
    for name in made:
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_init_roles_is_idempotent_and_makes_nologin_roles(cli, conn):
    for _ in range(2):
        result = cli("init", "--roles")
        assert result.returncode == 0, result.stderr
    assert conn.execute("SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = ANY(%s) "
                        "ORDER BY rolname", ([WRITER, READER],)).fetchall() == [
        (READER, False), (WRITER, False)]


def test_every_command_works_for_a_writer(cli, conn, login_role):
    env = {"JOBS_DATABASE_URL": login_role(WRITER)}

    def ok(*args: str, code: int = 0) -> str:
        result = cli(*args, env=env)
        assert result.returncode == code, (args, result.stderr)
        return result.stdout

    assert ok("start", "a") == "1\n"
    ok("finish", "1", "--records", "3")
    ok("start", "b")
    ok("fail", "2", "--message", "boom")
    ok("run", "--name", "c", "--", "sh", "-c", '"$JOBS_CLI" report --records 5')
    ok("start", "d")
    assert ok("reap", "--older-than", "1ms") == "4\n"
    ok("flush")
    ok("last-success", "a")
    ok("list")
    ok("show", "1")
    ok("status", code=0)
    ok("check", "a", "--max-age", "1h")
    ok("metrics")
    ok("run", "--name", "e", "--after", "a", "--lookback", "1m", "--", "true")
    ok("last-success", "e", "--cursor", code=3)
    ok("reset", "a", "--to", "1", "--yes")
    ok("history", "a")
    assert conn.execute("SELECT name, status FROM jobs ORDER BY id").fetchall() == [
        ("a", "success"), ("b", "error"), ("c", "success"), ("d", "error"), ("e", "success")]


def test_a_writer_cannot_erase_or_change_the_schema(conn, login_role):
    with psycopg.connect(login_role(WRITER), autocommit=True) as writer:
        writer.execute("INSERT INTO jobs (name, status, source, destination) "
                       "VALUES ('a', 'success', '', '')")
        for statement in ("DELETE FROM jobs", "TRUNCATE jobs", "DROP TABLE jobs",
                          "ALTER TABLE jobs ADD COLUMN x int", "CREATE TABLE jobs_copy ()"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                writer.execute(statement)
    assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (1,)


def test_a_reader_sees_everything_and_writes_nothing(cli, conn, login_role, tmp_path):
    assert cli("start", "a").returncode == 0
    reader = login_role(READER)
    env = {"JOBS_DATABASE_URL": reader}
    for args in (("list",), ("show", "1"), ("status",), ("metrics",), ("history", "a"),
                 ("last-success", "a", "--default", "0"), ("check", "a", "--max-age", "1h")):
        result = cli(*args, env=env)
        assert result.returncode in (0, 2) and result.stderr == "", (args, result.stderr)
    role = psycopg.conninfo.conninfo_to_dict(reader)["user"]
    for args, table in ((("start", "b"), "jobs"), (("finish", "1"), "jobs"),
                        (("reap", "--older-than", "1ms"), "jobs"),
                        (("reset", "a", "--to-start", "--yes"), "jobs_resets")):
        result = cli(*args, env=env)
        assert result.returncode == 1
        assert result.stderr == (f"jobs-cli: permission denied for table {table} (role {role!r} "
                                 f"lacks it: members of {WRITER} may record runs, members of "
                                 f"{READER} only read them)\n")
    # Refused, not unreachable: nothing runs, --fail-open or not, and nothing is spooled.
    for fail_open in ((), ("--fail-open",)):
        refused = cli("run", "--name", "b", *fail_open, "--", "touch", str(tmp_path / "ran"),
                      env=env)
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1
        assert "permission denied" in refused.stderr and not (tmp_path / "ran").exists()
    assert conn.execute("SELECT name, status FROM jobs").fetchall() == [("a", "in_progress")]


def test_roles_are_granted_on_another_schema_too(cli, conn, login_role):
    assert cli("--schema", "etl", "init").returncode == 0
    env = {"JOBS_DATABASE_URL": login_role(WRITER), "JOBS_SCHEMA": "etl"}
    assert cli("start", "a", env=env).returncode == 0
    assert conn.execute("SELECT count(*) FROM etl.jobs").fetchone() == (1,)


def test_every_table_and_view_of_the_schema_is_in_grants(conn):
    """Whoever adds a table or a view lists it in roles.GRANTS, or the roles cannot read it."""
    relations = {name for (name,) in conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
        "AND relkind IN ('r', 'v', 'm', 'p')")}
    assert relations <= {grant.relation for grant in GRANTS}
