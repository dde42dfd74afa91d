"""Database connections: the configured URL, else the embedded server.

`connect()` is the one way the tool reaches PostgreSQL. It yields an
autocommit psycopg connection and turns every psycopg failure raised inside
the `with` block into a `JobsError` with a one-line message, so neither the
CLI nor the Python API ever shows a driver traceback, and a password in the
URL never reaches a message (messages name only host and database).

On the embedded default the schema is applied when the cluster is new and
whenever the bundled schema.sql changes (a digest per schema name is kept in
JOBS_HOME), so upgrading the tool upgrades its private table too. A configured
database is only changed by an explicit `jobs-cli init`.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from . import config
from .errors import DatabaseError, DatabaseUnavailable, JobsError

if TYPE_CHECKING:
    import psycopg

CONNECT_TIMEOUT_SECONDS = 10


@dataclass(frozen=True)
class Database:
    """Where runs are kept: a libpq URL or key=value string, or None for the embedded server."""

    url: str | None = None
    schema: str = config.DEFAULT_SCHEMA
    home: Path = field(default_factory=config.home)

    @property
    def embedded(self) -> bool:
        return not self.url


def describe(conninfo: str) -> str:
    """'database "x" on host "y"' for messages; never includes the password."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(conninfo)
    except Exception:
        return "the configured database"
    host = params.get("host") or params.get("hostaddr") or "localhost"
    dbname = params.get("dbname") or params.get("user") or "(default)"
    return f'database "{dbname}" on host "{host}"'


@contextmanager
def connect(database: Database) -> Iterator["psycopg.Connection"]:
    with translated_errors(database), open_connection(database) as conn:
        yield conn


def open_connection(database: Database, **options: object) -> "psycopg.Connection":
    """A new autocommit connection, starting the embedded server if needed.

    psycopg errors are not translated: use it inside `translated_errors`.
    `options` are further libpq connection parameters.
    """
    if database.embedded:
        return _connect_embedded(database, **options)
    return _open(database.url, **options)


@contextmanager
def translated_errors(database: Database) -> Iterator[None]:
    """Turn psycopg errors raised in the block into JobsErrors with one-line messages."""
    import psycopg

    try:
        yield
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot reach {where(database)}: {first_line(exc)}") from None
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn,
            psycopg.errors.InvalidSchemaName, psycopg.errors.UndefinedFunction) as exc:
        raise DatabaseError(f"{first_line(exc)}: the jobs table in schema {database.schema!r} "
                            "is missing or older than this jobs-cli; run `jobs-cli init`") from None
    except psycopg.Error as exc:
        raise DatabaseError(first_line(exc)) from None


def where(database: Database) -> str:
    if database.embedded:
        return f"the embedded server in {database.home}"
    return describe(database.url)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _open(conninfo: str, **options: object) -> "psycopg.Connection":
    import psycopg

    options.setdefault("connect_timeout", CONNECT_TIMEOUT_SECONDS)
    return psycopg.connect(conninfo, autocommit=True, **options)


def _connect_embedded(database: Database, **options: object) -> "psycopg.Connection":
    import psycopg

    from .server import EmbeddedServer

    server = EmbeddedServer(database.home)
    conninfo = server.conninfo()
    conn = None
    if conninfo:
        try:
            conn = _open(conninfo, **options)
        except psycopg.OperationalError:
            conn = None
    if conn is None:
        conn = _open(server.ensure_running(), **options)
    try:
        _ensure_schema(conn, database)
    except BaseException:
        conn.close()
        raise
    return conn


def _schema_marker(database: Database) -> Path:
    return database.home / f"schema-{database.schema}.sha256"


def _ensure_schema(conn: "psycopg.Connection", database: Database) -> None:
    from .schema import apply_schema, schema_text

    digest = hashlib.sha256(schema_text().encode()).hexdigest()
    marker = _schema_marker(database)
    try:
        if marker.read_text() == digest:
            return
    except OSError:
        pass
    apply_schema(conn, database.schema)
    try:
        marker.write_text(digest)
    except OSError as exc:
        raise JobsError(f"cannot write {marker}: {exc.strerror}") from None
