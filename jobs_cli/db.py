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
from .errors import DatabaseError, DatabaseUnavailable
from .text import error_line

if TYPE_CHECKING:
    import psycopg

CONNECT_TIMEOUT_SECONDS = 10
# Server parameter -> the value (prefix) every connection needs.
SESSION_SETTINGS = {"DateStyle": "ISO", "client_encoding": "UTF8"}


@dataclass(frozen=True)
class Database:
    """Where runs are kept: a libpq URL or key=value string, or None for the embedded server."""

    url: str | None = None
    schema: str = config.DEFAULT_SCHEMA
    home: Path = field(default_factory=config.home)

    @property
    def embedded(self) -> bool:
        return not self.url


def conninfo_params(conninfo: str) -> dict[str, str]:
    """The parameters of a libpq URL or key=value string; psycopg.ProgrammingError if malformed."""
    from psycopg.conninfo import conninfo_to_dict

    return conninfo_to_dict(conninfo)


def describe(conninfo: str) -> str:
    """'database "x" on host "y"' for messages; never includes the password."""
    try:
        params = conninfo_params(conninfo)
    except Exception:
        return "the configured database"
    host = params.get("host") or params.get("hostaddr")
    dbname = params.get("dbname") or params.get("user") or "(default)"
    # No host means libpq's default unix socket, not localhost over TCP.
    where = f'host "{host}"' if host else "the default unix socket"
    port = f' port "{params["port"]}"' if params.get("port") else ""
    return f'database "{dbname}" on {where}{port}'


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
        raise DatabaseUnavailable(
            f"cannot reach {where(database)}: {redacted(error_line(exc), database)}") from None
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn,
            psycopg.errors.InvalidSchemaName, psycopg.errors.UndefinedFunction) as exc:
        raise DatabaseError(f"{error_line(exc)}: the jobs table in schema {database.schema!r} "
                            "is missing or older than this jobs-cli; run `jobs-cli init`") from None
    except psycopg.Error as exc:
        raise DatabaseError(redacted(error_line(exc), database)) from None


def where(database: Database) -> str:
    if database.embedded:
        return f"the embedded server in {database.home}"
    return describe(database.url)


def redacted(message: str, database: Database) -> str:
    """The message with the URL's password masked, should the driver ever quote it."""
    try:
        password = conninfo_params(database.url).get("password") if database.url else None
    except Exception:
        password = None
    return message.replace(password, "***") if password else message


def open_direct(conninfo: str, **options: object) -> "psycopg.Connection":
    """A connection as every command gets one, but with no server started, no schema
    check and no retry (shell completion); psycopg errors are not translated."""
    return _open(conninfo, **options)


def _open(conninfo: str, **options: object) -> "psycopg.Connection":
    import psycopg

    try:
        conninfo_params(conninfo)
    except psycopg.ProgrammingError:
        # libpq's parse errors quote the whole string, password and all.
        raise DatabaseUnavailable("the database URL cannot be parsed (not shown: it may "
                                  "hold a password); see JOBS_DATABASE_URL / --database-url") from None
    _check_ports(conninfo)
    options.setdefault("connect_timeout", CONNECT_TIMEOUT_SECONDS)
    conn = psycopg.connect(conninfo, autocommit=True, **options)
    # Explicit, because the overlap check relies on it: a server or role whose
    # default is REPEATABLE READ would take the claim's snapshot before its lock.
    conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
    # Through PgBouncer in transaction mode a prepared statement may be missing
    # on the next server connection; nothing here runs often enough to gain.
    conn.prepare_threshold = None
    # A role or database may default to a DateStyle psycopg cannot parse, or to
    # an encoding that cannot hold every name. A session SET, yet safe through a
    # transaction pooler: these two are among the few parameters PgBouncer tracks
    # per client and sets again on each server connection it hands that client
    # (tests/test_pgbouncer.py). Any other session state would not follow us.
    settings = [f"SET {name} TO {value}" for name, value in SESSION_SETTINGS.items()
                if not (conn.info.parameter_status(name) or "").startswith(value)]
    if settings:
        conn.execute("; ".join(settings))
    return conn


def _check_ports(conninfo: str) -> None:
    """A port that is no port is the URL's mistake: psycopg would report it as a
    failure to resolve the host."""
    ports = conninfo_params(conninfo).get("port") or ""
    for port in filter(None, ports.split(",")):
        if not (port.strip().isdigit() and 0 < int(port) < 65536):
            raise DatabaseUnavailable(f'the database URL\'s port "{port}" is not a port number '
                                      "(1-65535); see JOBS_DATABASE_URL / --database-url")


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
        raise DatabaseError(f"cannot write {marker}: {exc.strerror}") from None
