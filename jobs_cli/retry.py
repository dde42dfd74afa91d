"""Waiting for the database: which failures are worth retrying, and the one retry loop.

A database that is restarting, failing over or out of connection slots comes
back by itself; a cron job due in that window should wait for it (up to
JOBS_START_RETRY_SECONDS) instead of silently not running. A wrong password or
database name never mends, and waiting for it only hides the mistake.

Classification is by SQLSTATE, never by message text (messages are localised):

    retried (transient)                        not retried (permanent)
    no SQLSTATE: no answer from the server     28P01 wrong password, 28000 rejected
      (refused, no socket, timed out, the      3D000 no such database, and no password
      connection lost mid-statement)             to give when the server asks for one
                                               42P01 no such table, 42501 permission
    08xxx connection exceptions                22xxx/23xxx bad data, constraints
    53xxx insufficient resources (53300        ... and every other SQLSTATE
      too many connections)
    57P01 admin shutdown, 57P02 crash shutdown,
      57P03 cannot connect now (starting up)
    25006 read-only transaction (a standby,
      briefly after a failover)
    40001, 40P01 serialization failure, deadlock
      (the server rolled the transaction back)

An error the server sends while a connection is being set up (too many
connections, starting up, a wrong password, an unknown database) reaches
psycopg without its SQLSTATE: libpq keeps the code of that error to itself.
`connect` therefore sets up connections itself, with libpq's verbose error
messages, which put the SQLSTATE in a fixed place, and raises the psycopg
error class of that SQLSTATE. Where libpq cannot be reached that way, such a
failure is retried like a server that does not answer.

What may be repeated
    A failure while connecting sent nothing, so connecting is always retried.
    Once a statement may have reached the server, a lost connection leaves
    its fate unknown: the caller repeats only operations that are safe to run
    twice (reads, and writes carrying a client-generated key, see `runs`).

The library never prints: `Patience.on_wait` is told once, when the first
attempt failed and waiting begins (the CLI passes one only when stderr is a
terminal).
"""

from __future__ import annotations

import math
import random
import re
import time
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:
    import ctypes

    import psycopg

T = TypeVar("T")

TRANSIENT_CLASSES = ("08", "53")
TRANSIENT_STATES = frozenset({"57P01", "57P02", "57P03", "25006", "40001", "40P01"})
REFUSED_CLASSES = ("22", "23")
REFUSED_STATES = frozenset({"42501"})
FIRST_DELAY = 0.1
MAX_DELAY = 2.0
# libpq's connect_timeout is whole seconds, and 1 counts as 2.
MIN_CONNECT_TIMEOUT = 2


@dataclass(frozen=True)
class Patience:
    """How long to wait for the database, and whom to tell that we do."""

    seconds: float = 0.0  # 0: one attempt
    connect_timeout: int = 10  # each attempt's, at most; libpq's whole seconds
    on_wait: Callable[[str], None] | None = None


def transient(error: BaseException) -> bool:
    """Whether waiting may mend `error` (see the table above)."""
    import psycopg

    if not isinstance(error, psycopg.Error):
        return False
    state = error.sqlstate
    if state is None:
        # No answer from the server: refused, no socket, timed out, or the
        # connection was lost. Other errors without a SQLSTATE (a closed cursor,
        # a programming error) come from this side and do not mend.
        return isinstance(error, psycopg.OperationalError)
    return state[:2] in TRANSIENT_CLASSES or state in TRANSIENT_STATES


def refused_for_good(error: BaseException) -> bool:
    """Whether the database refuses a write for a reason in the write itself, so that
    repeating it later cannot succeed: bad data (22xxx), a constraint (23xxx), a permission."""
    state = getattr(error, "sqlstate", None)
    return bool(state) and (state[:2] in REFUSED_CLASSES or state in REFUSED_STATES)


def unavailable(error: BaseException) -> bool:
    """transient(), or any other failure to reach or keep a connection (a database
    not accepting connections, a wrong password...). For a result already
    happened, whose alternative is the spool, waiting a while costs little."""
    import psycopg

    return transient(error) or isinstance(error, psycopg.OperationalError)


def call(attempt: Callable[[int], T], patience: Patience,
         waiting: Callable[[BaseException], str] = str,
         retryable: Callable[[BaseException], bool] = transient) -> T:
    """`attempt(connect_timeout)`, again after a `retryable` failure until the patience runs out.

    Backoff is exponential with full jitter, so clients turned away together
    (a restart, too many connections) come back spread out. The last failure
    is raised as it is. `waiting(error)` words what `on_wait` is told.
    """
    deadline = time.monotonic() + patience.seconds
    delay = FIRST_DELAY
    told = False
    while True:
        remaining = deadline - time.monotonic()
        try:
            return attempt(_connect_timeout(patience, remaining))
        except Exception as error:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not retryable(error):
                raise
            if not told and patience.on_wait is not None:
                patience.on_wait(waiting(error))
                told = True
        time.sleep(min(remaining, random.uniform(0, delay)))
        delay = min(delay * 2, MAX_DELAY)


def _connect_timeout(patience: Patience, remaining: float) -> int:
    """An attempt's connect timeout: within what is left of the patience where libpq allows."""
    if patience.seconds <= 0:
        return patience.connect_timeout
    return max(MIN_CONNECT_TIMEOUT, min(patience.connect_timeout, math.ceil(remaining)))


# -- connecting with the server's SQLSTATE -------------------------------------------------

# PQsetErrorVerbosity's values.
_PQERRORS_DEFAULT = 1
_PQERRORS_VERBOSE = 2
# In a verbose message the SQLSTATE follows the severity: `FATAL:  53300: sorry, ...`.
_VERBOSE_SQLSTATE = re.compile(r":  ([0-9A-Z]{5}): ")


def connect(conninfo: str, *, autocommit: bool = False, **params: Any) -> "psycopg.Connection":
    """psycopg.connect, except that a failure the server reported has its SQLSTATE.

    `connect_timeout` bounds the whole attempt (every host of a multi-host URL together).
    """
    import psycopg
    from psycopg import pq
    from psycopg.conninfo import make_conninfo

    libpq = _libpq()
    if libpq is None:
        return psycopg.connect(conninfo, autocommit=autocommit, **params)
    conninfo = make_conninfo(conninfo, **params)
    timeout = int(psycopg.conninfo.conninfo_to_dict(conninfo).get("connect_timeout") or 0)
    deadline = time.monotonic() + max(timeout, MIN_CONNECT_TIMEOUT) if timeout else math.inf
    pgconn = pq.PGconn.connect_start(conninfo.encode())
    libpq.PQsetErrorVerbosity(pgconn.pgconn_ptr, _PQERRORS_VERBOSE)
    try:
        _wait_connected(pgconn, deadline)
    except BaseException:
        pgconn.finish()
        raise
    # Later errors come as psycopg always words them.
    libpq.PQsetErrorVerbosity(pgconn.pgconn_ptr, _PQERRORS_DEFAULT)
    pgconn.nonblocking = 1
    conn = psycopg.Connection(pgconn)
    conn.autocommit = autocommit
    return conn


def _wait_connected(pgconn: Any, deadline: float) -> None:
    import select

    import psycopg
    from psycopg import pq

    while pgconn.status != pq.ConnStatus.BAD:
        status = pgconn.connect_poll()
        if status == pq.PollingStatus.OK:
            return
        if status == pq.PollingStatus.FAILED:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise psycopg.errors.ConnectionTimeout("connection timeout expired")
        sockets = [pgconn.socket]
        if status == pq.PollingStatus.READING:
            select.select(sockets, [], [], min(remaining, 3600))
        else:
            select.select([], sockets, [], min(remaining, 3600))
    message = pgconn.get_error_message()
    error_class = psycopg.OperationalError
    if pgconn.needs_password:
        # The server asked for a password and libpq had none: no SQLSTATE (libpq's
        # own refusal), but waiting cannot mend it any more than a wrong one.
        error_class = psycopg.errors.InvalidPassword
    for state in _VERBOSE_SQLSTATE.findall(message)[-1:]:
        try:
            error_class = psycopg.errors.lookup(state)
        except KeyError:
            pass  # a SQLSTATE this psycopg does not know: no class, so no SQLSTATE either
    raise error_class(f"connection failed: {message}")


@cache
def _libpq() -> "ctypes.CDLL | None":
    """The libpq psycopg uses (the same library, so the same PGconn layout), or None."""
    import ctypes

    import psycopg  # noqa: F401  (loads libpq)

    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libpq" in line}
    except OSError:
        return None
    if len(paths) != 1:
        return None
    library = ctypes.CDLL(paths.pop())
    library.PQsetErrorVerbosity.argtypes = [ctypes.c_void_p, ctypes.c_int]
    library.PQsetErrorVerbosity.restype = ctypes.c_int
    return library
