"""Database connections: the configured URL, else the embedded server.

`connect()` is the one way the tool reaches PostgreSQL. It yields an
autocommit psycopg connection and turns every psycopg failure raised inside
the `with` block into a `JobsError` with a one-line message, so neither the
CLI nor the Python API ever shows a driver traceback, and a password in the
URL never reaches a message (messages name only host and database).

Every connection first reads which migration steps the schema has
(`migrations`: one query, no lock beyond a read). Steps still pending are
applied then and there when the role may change the table (validations are
left to `init`); a role that may not is told in one line (`Database.tell`, a
RuntimeWarning without one), and refused when this version cannot record a
run without them. A missing table is an error -- except on the embedded
server's default schema, which its first use creates, so the embedded default
needs no setup. Only `init` creates a schema.

One connection policy
    The jobs connection is made from the URL alone, for the CLI and the API
    alike: in an ETL process PGHOST, PGUSER, PGOPTIONS... describe the
    *source* database. libpq fills every parameter a connection string leaves
    out from its PG* variable, but never one given explicitly, even empty; so
    `libpq_params` gives every such parameter, from the URL or else libpq's
    built-in default. Nothing touches os.environ (other threads may read it,
    and the caller's own code needs it as it was).

    Files still work as the README documents: the password file is
    `passfile=` in the URL, else ~/.pgpass; `service=` in the URL is looked up
    in ~/.pg_service.conf here (libpq would also consult PGSERVICEFILE and
    PGSYSCONFDIR). What cannot be shut out: libpq still looks up a service
    that PGSERVICE names (an undefined one fails the connection; a defined
    one supplies nothing, every parameter being given), and sends PGDATESTYLE,
    PGTZ and PGGEQO as session settings; DateStyle is forced below and nothing
    here depends on the other two.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, TypeVar

from . import config, retry
from .errors import DatabaseError, DatabaseUnavailable, NoJobsTable, PermissionDenied
from .text import error_line

if TYPE_CHECKING:
    import threading

    import psycopg

T = TypeVar("T")

CONNECT_TIMEOUT_SECONDS = 10
# Server parameter -> the value (prefix) every connection needs.
SESSION_SETTINGS = {"DateStyle": "ISO", "client_encoding": "UTF8"}
# Parameters for which libpq treats an empty value other than a missing one,
# and publishes no built-in default: given only when their variable is set, as
# what libpq does without it. (require_auth: any method; libpq 18's oauth is
# left out, an older libpq rejects the name.)
DEFAULT_WHEN_EMPTY_IS_INVALID = {
    "sslcertmode": "allow", "min_protocol_version": "3.0", "max_protocol_version": "3.0",
    "require_auth": "password,md5,gss,sspi,scram-sha-256,none"}
SERVICE_FILE = "~/.pg_service.conf"


@dataclass(frozen=True)
class Database:
    """Where runs are kept: a libpq URL or key=value string, or None for the embedded server."""

    url: str | None = None
    schema: str = config.DEFAULT_SCHEMA
    home: Path = field(default_factory=config.home)
    # How long to wait for a database that is down, restarting or full (see `retry`).
    patience: retry.Patience = retry.Patience()
    # Where a line for the user goes (pending steps this role may not apply).
    tell: Callable[[str], None] | None = field(default=None, compare=False, repr=False)

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
    if params.get("service") and not host:
        return f'service "{params["service"]}"'
    dbname = params.get("dbname") or params.get("user") or "(default)"
    # No host means libpq's default unix socket, not localhost over TCP.
    where = f'host "{host}"' if host else "the default unix socket"
    port = f' port "{params["port"]}"' if params.get("port") else ""
    return f'database "{dbname}" on {where}{port}'


@contextmanager
def connect(database: Database, *, check_schema: bool = True) -> Iterator["psycopg.Connection"]:
    """A connection, waiting for the database as its patience allows."""
    if database.embedded:
        head_start(database)

    def attempt(database: Database, **options: object) -> "psycopg.Connection":
        return open_connection(database, check_schema=check_schema, **options)

    with translated_errors(database), patiently(database, attempt) as conn:
        yield conn


# Home -> the thread that started its server: one head start per home and process
# (the entry point's, else the command's connection's).
_starting: dict[Path, "threading.Thread"] = {}


def head_start(database: Database) -> None:
    """Start the embedded server (creating its cluster on first use: a second or
    more) in a thread while this one imports click and psycopg (~0.15 s of a short
    command).

    `_connect_embedded` then waits for it on the server lock. Whatever goes wrong
    in the thread, the same call in `_connect_embedded` meets again and reports.
    A cluster created just now gets its schema from the thread too, while its
    files are synced (`EmbeddedServer.ensure_running`): 50-100 ms that would
    otherwise follow the sync.
    """
    from .server import EmbeddedServer

    if database.home in _starting:
        return  # started, or failed: then the command's connection meets it, and says why
    server = EmbeddedServer(database.home)
    if server.conninfo() is None:
        import threading

        try:
            # Here, not in the thread, where its walk of ~1,100 files would crawl, each
            # file's stat() waiting for the GIL that this thread's imports hold.
            server.check_wheel()
        except Exception:
            return  # the command's own connection meets it again, and says why

        def schema(conninfo: str) -> None:
            try:
                with _open(conninfo) as conn:
                    ensure_schema(conn, database)
            except Exception:
                pass  # the command's own connection applies it, or says why not

        def start() -> None:
            try:
                server.ensure_running(meanwhile=schema)
            except Exception:
                pass  # reported by the caller's own ensure_running

        thread = _starting[database.home] = threading.Thread(target=start,
                                                             name="jobs-cli server start")
        thread.start()


def call(database: Database, operation: Callable[["psycopg.Connection"], T]) -> T:
    """`operation(conn)` on a new connection, repeated on another one after a transient failure.

    Only for operations safe to run twice: a connection lost mid-statement
    leaves unknown whether the statement took effect (see `retry`).
    """
    def once(database: Database, **options: object) -> T:
        with open_connection(database, **options) as conn:
            return operation(conn)

    if database.embedded:
        head_start(database)
    with translated_errors(database):
        return patiently(database, once)


def patiently(database: Database, attempt: Callable[..., T]) -> T:
    """`attempt(database, connect_timeout=…)`, retried as the database's patience allows."""
    def waiting(error: BaseException) -> str:
        return (f"waiting up to {database.patience.seconds:g}s for {where(database)} "
                f"({redacted(error_line(error), database)})")

    return retry.call(lambda timeout: attempt(database, connect_timeout=timeout),
                      database.patience, waiting)


def open_connection(database: Database, *, check_schema: bool = True,
                    **options: object) -> "psycopg.Connection":
    """A new autocommit connection, starting the embedded server if needed.

    psycopg errors are not translated: use it inside `translated_errors`.
    `options` are further libpq connection parameters. `check_schema`: bring
    the schema up to date as far as this role may (see the module docstring);
    only `init`, which does it all itself, passes False.
    """
    if database.embedded:
        conn = _connect_embedded(database, **options)
    else:
        conn = _open(database.url, **options)
    if check_schema:
        try:
            ensure_schema(conn, database)
        except BaseException:
            conn.close()
            raise
    return conn


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
    except psycopg.errors.InsufficientPrivilege as exc:
        raise PermissionDenied(f"{error_line(exc)} (role {role_of(database)!r} lacks it: members of "
                               "jobs_writer may record runs, members of jobs_reader only read "
                               "them)") from None
    except psycopg.Error as exc:
        raise DatabaseError(redacted(error_line(exc), database)) from None


def role_of(database: Database) -> str:
    """The role the connection logs in as, for messages (libpq's default: the OS user)."""
    import pwd

    try:
        given = libpq_params(database.url or "").get("user")
    except Exception:
        given = None
    return given or pwd.getpwuid(os.geteuid()).pw_name


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
    from psycopg.conninfo import make_conninfo

    try:
        params = libpq_params(conninfo, **options)
    except psycopg.ProgrammingError:
        # libpq's parse errors quote the whole string, password and all.
        raise DatabaseUnavailable("the database URL cannot be parsed (not shown: it may "
                                  "hold a password); see JOBS_DATABASE_URL / --database-url") from None
    _check_ports(params)
    conn = retry.connect(make_conninfo("", **params), autocommit=True)
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


def _check_ports(params: dict[str, str]) -> None:
    """A port that is no port is the URL's mistake: psycopg would report it as a
    failure to resolve the host."""
    ports = params.get("port") or ""
    for port in filter(None, ports.split(",")):
        if not (port.strip().isdigit() and 0 < int(port) < 65536):
            raise DatabaseUnavailable(f'the database URL\'s port "{port}" is not a port number '
                                      "(1-65535); see JOBS_DATABASE_URL / --database-url")


def libpq_params(conninfo: str, **options: object) -> dict[str, str]:
    """Every libpq parameter that has a PG* variable, given explicitly (see the module doc).

    From the URL (or key=value string), then `options`, then the URL's
    service in ~/.pg_service.conf, then libpq's built-in default (empty for
    most, which libpq treats as unset). psycopg.ProgrammingError if malformed;
    DatabaseUnavailable for a service that is not defined.
    """
    params: dict[str, str] = {**conninfo_params(conninfo),
                              **{key: str(value) for key, value in options.items()}}
    params.setdefault("connect_timeout", str(CONNECT_TIMEOUT_SECONDS))
    service = params.pop("service", None)
    if service:
        for key, value in service_params(service).items():
            params.setdefault(key, value)
    for keyword, envvar, default in _environment_defaults():
        if keyword in params or keyword == "service":
            continue
        if keyword in DEFAULT_WHEN_EMPTY_IS_INVALID:
            if envvar in os.environ:
                params[keyword] = DEFAULT_WHEN_EMPTY_IS_INVALID[keyword]
        else:
            params[keyword] = default
    return params


@cache
def _environment_defaults() -> tuple[tuple[str, str, str], ...]:
    """(keyword, variable, built-in default) for each parameter libpq may take from PG*.

    Asked of the libpq in use, so parameters a newer libpq adds are covered.
    """
    return tuple((keyword, envvar, default) for keyword, envvar, default in _libpq_options()
                 if envvar)


@cache
def _libpq_options() -> tuple[tuple[str, str | None, str], ...]:
    from psycopg import pq

    return tuple((option.keyword.decode(), option.envvar.decode() if option.envvar else None,
                  option.compiled.decode() if option.compiled is not None else "")
                 for option in pq.Conninfo.get_defaults())


def service_params(service: str) -> dict[str, str]:
    """The parameters of `service` in ~/.pg_service.conf, read as libpq reads that file."""
    path = Path(SERVICE_FILE).expanduser()
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        lines = []
    except OSError as exc:
        raise DatabaseUnavailable(f"service {service!r}: cannot read {path}: "
                                  f"{exc.strerror}") from None
    found: dict[str, str] | None = None
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            if found is not None:
                break
            if line == f"[{service}]":
                found = {}
        elif found is not None:
            key, equals, value = line.partition("=")
            if not equals or key == "service" or key not in _keywords():
                raise DatabaseUnavailable(f"syntax error in service file {path}, line {number}")
            found.setdefault(key, value)
    if found is None:
        raise DatabaseUnavailable(f"service {service!r} is not defined in {path} (the only "
                                  "service file jobs-cli reads)")
    return found


def _keywords() -> set[str]:
    return {keyword for keyword, _, _ in _libpq_options()}


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
    return conn


def ensure_schema(conn: "psycopg.Connection", database: Database) -> None:
    """Bring the schema up to date as far as this role may, or say why not (module docstring)."""
    from . import migrations

    private = database.embedded and database.schema == config.DEFAULT_SCHEMA
    try:
        pending = migrations.pending_steps(conn, database.schema)
    except NoJobsTable:
        if not private:
            raise
        pending = list(migrations.STEPS)
    if not private:
        # Validations scan the whole table: `init`'s job, and no reason to wait.
        pending = [step for step in pending if step.kind != migrations.VALIDATE]
    if not pending:
        return
    if private or migrations.may_apply(conn, database.schema):
        try:
            # The private server is never pooled: a session lock may make a
            # concurrent first use wait for the whole migration. Its new schema's
            # commit need not wait for the WAL flush (~40 ms on a busy disk): the
            # first run recorded flushes it, and a crash before loses it whole.
            outcome = migrations.migrate(conn, database.schema, create=private,
                                         validations=private, exclusive=private,
                                         synchronous=not private)
        except DatabaseError as exc:
            left = migrations.pending_steps(conn, database.schema)
            if any(step.required for step in left):
                raise
            _tell(database, str(exc))
            return
        for warning in outcome.warnings:
            _tell(database, f"warning: {warning}")
        return
    line = (f"the jobs table in schema {database.schema!r} lacks step(s) "
            f"{', '.join(repr(step.name) for step in pending)} of this jobs-cli, "
            "which this role may not apply: run `jobs-cli init` as the table's owner")
    if any(step.required for step in pending):
        raise DatabaseError(line)
    _tell(database, line)


def _tell(database: Database, line: str) -> None:
    if database.tell is not None:
        database.tell(line)
    else:
        warnings.warn(f"jobs-cli: {line}", RuntimeWarning, stacklevel=4)
