"""Secrets in a command line are masked before `run` records it."""

from __future__ import annotations

import pytest

from jobs_cli.redact import recorded_command, redact


@pytest.mark.parametrize("argument, masked", [
    ("postgresql://etl:s3cret@db.internal/warehouse", "postgresql://etl:***@db.internal/warehouse"),
    ("postgres://:s3cret@db", "postgres://:***@db"),
    ("mysql://etl:p@ss@db:3306/x", "mysql://etl:***@db:3306/x"),  # an unencoded "@" too
    ("https://ci:token123@git.example/repo.git", "https://ci:***@git.example/repo.git"),
    ("--source=redis://default:s3cret@cache:6379/0", "--source=redis://default:***@cache:6379/0"),
    ("host=db password=s3cret dbname=x", "host=db password=*** dbname=x"),
    (r"host=db password='it\'s s3cret' dbname=x", "host=db password=*** dbname=x"),
    ("postgresql://etl@db/x?password=s3cret&sslmode=require",
     "postgresql://etl@db/x?password=***&sslmode=require"),
    ("--password=s3cret", "--password=***"),
    ("--db-passwd=s3cret", "--db-passwd=***"),
    ('PGPASSWORD=s3cret psql -c "select 1"', 'PGPASSWORD=*** psql -c "select 1"'),
    ('export DB_PASSWORD="s3 cret"; ./load.sh', "export DB_PASSWORD=***; ./load.sh"),
])
def test_passwords_are_masked(argument, masked):
    assert redact(argument) == masked


@pytest.mark.parametrize("argument", [
    "ssh://git@host/repo", "http://host:8080/a@b", "postgresql://etl@db/x", "--password-file=/x",
    "user@example.com", "./sync.sh --since 2024-05-01", "dbname=x user=etl",
])
def test_everything_else_is_kept(argument):
    assert redact(argument) == argument


def test_the_argument_after_a_password_option_is_masked_and_quoting_kept():
    assert recorded_command(["mysql", "--password", "s3cret", "-e", "select 'a b'"]) == \
        "mysql --password '***' -e 'select '\"'\"'a b'\"'\"''"
