"""The database side of `jobs-cli run`: claim, heartbeat, result, and the spool behind them.

Liveness and overlap: a lease, renewed by heartbeats
    A supervised run carries `lease_until`. The wrapper sets it to now() + 3
    heartbeat intervals when it inserts the run and moves it forward at every
    heartbeat (JOBS_HEARTBEAT_SECONDS, default 30) while the command runs. An
    in_progress run whose lease is in the future is live; one whose lease has
    run out has lost its wrapper (kill -9, a lost machine) and is dead within
    3 intervals of the last heartbeat, with no clean-up by hand. An in_progress
    run without a lease was started by `jobs-cli start`: nobody vouches for it,
    so it never blocks `run`, and only `reap --older-than` ends it.

    Claiming a run is one transaction: take pg_advisory_xact_lock on the job's
    name, mark the name's dead runs error "abandoned: …", insert the new run
    unless another is live, read the last-success watermark. The lock makes
    two simultaneous claims of a name take turns, so exactly one wins.

    Why not a session-level advisory lock held while the command runs, which
    the server would release by itself when the wrapper's connection dies? It
    does not survive PgBouncer in transaction-pooling mode: the session under a
    client connection changes between transactions, so the lock would be taken
    and released on server connections nobody controls. Transaction-scoped
    locks, plain rows and SET LOCAL work through any pooler. A lease also
    needs no connection held open: a database restart or an idle-session
    timeout during a long run costs a heartbeat (the next one reconnects), not
    the run's protection; and it tells readers (`list`, `status`) when a
    wrapper was last heard from. The price is a bounded delay: a dead run
    blocks the name for up to 3 intervals.

    On the wrapper's own host its liveness is known better than by a lease:
    see `fencing` (a live wrapper is never reaped, a dead one at once) and
    `watchdog` (its command dies with it).

    A heartbeat that finds its run ended by someone else (reaped from another
    host while this one could not reach the database, failed by hand) raises
    supervise.Fence: the wrapper stops its command and records nothing over
    that decision (errors.Fenced). A command that ended before any heartbeat
    could tell has its result recorded even so: it overrules an "abandoned"
    verdict (see runs.RECORD_RESULT), so the record ends true — the real
    status, exit code and end, and a message such as "exit code 0; recorded
    after being marked abandoned: no heartbeat since …".

    A heartbeat is bounded by its interval, so it ends before the lease it
    renews (3 intervals) runs out: statement and lock timeouts of half an
    interval (at least MIN_HEARTBEAT_STATEMENT_TIMEOUT; SET LOCAL, inside its
    transaction, as PgBouncer needs), and a reconnect's connect_timeout of the
    interval in whole seconds, at least libpq's 2 and at most 10: a statement on
    the old connection, a reconnect and the statement again take at most 2
    intervals, so an attempt started one interval after the last renewal has
    ended by the time the lease would, even against a server that hangs.
    Below 2 seconds only libpq's 2-second floor can stretch a reconnect to a
    hanging server past that; a server that is down fails it at once.

One connection
    The claim, the heartbeats and the result share one connection, opened at
    the claim; supervise() never lets a heartbeat overlap another call. Each
    step is one round trip (pipeline mode), and the connection is reopened
    when it broke. Statements are never prepared server-side: through
    PgBouncer a prepared statement may not exist on the next server connection.

When the database fails after the command ran
    The result is retried with backoff for JOBS_RETRY_SECONDS (default 60),
    then written to the spool (JOBS_HOME/spool, see `spool`), with a warning;
    `jobs-cli flush`, and any later `run` with the same database, replays it.
    Replaying is idempotent: the run is found by its run_key, inserted if it
    never was (a --fail-open run), and its result recorded only while it is
    still in progress. An entry names its database and schema (never the
    password), so a JOBS_HOME shared by several databases replays each result
    into its own. A result that neither the database nor the spool takes is
    an error (exit 74), never silence.
"""

from __future__ import annotations

import hashlib
import logging
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from . import retry, runs, spool
from .db import (Database, conninfo_params, ensure_schema, open_connection, patiently, redacted,
                 translated_errors, where)
from .durations import format_duration
from .errors import DatabaseError, DatabaseUnavailable, JobsError, SpoolError
from .supervise import FORWARDED_SIGNALS, Fence
from .text import error_line

if TYPE_CHECKING:
    import psycopg

# psycopg logs a lost connection in pipeline mode as a warning, which Python
# would print unprefixed on stderr; the error raised says it already.
logging.getLogger("psycopg").addHandler(logging.NullHandler())

SPOOL_FORMAT = 1
# A lease outlives this many missed heartbeats: a run is dead within 3 intervals.
LEASE_HEARTBEATS = 3
# libpq's smallest connect_timeout (1 counts as 2), and what a heartbeat's reconnect
# may take at most however long the interval.
MIN_CONNECT_TIMEOUT = 2
MAX_HEARTBEAT_CONNECT_TIMEOUT = 10
# Below this a busy server would fail heartbeats of sub-second intervals for nothing.
MIN_HEARTBEAT_STATEMENT_TIMEOUT = 0.5
# Bounds a write the server never acknowledges (a vanished host, over TCP).
TCP_USER_TIMEOUT_MS = 15000


@dataclass
class Replayed:
    """What a replay of the spool did."""

    recorded: list[runs.Run] = field(default_factory=list)
    other_database: int = 0  # entries for another database or schema, left in place
    failed: int = 0  # entries that could not be read or recorded now, left in place
    rejected: int = 0  # entries the database refused for good, moved to spool/rejected/


class Recorder:
    """Database writes for one `jobs-cli run` (or `flush`), over one connection."""

    def __init__(self, database: Database, *, retry_seconds: float,
                 tell: Callable[[str], None]) -> None:
        self.database = database
        self.tell = tell
        self._retry_seconds = retry_seconds
        self._conn: psycopg.Connection | None = None
        self._identity: dict[str, str] | None = None  # see spool_identity
        self._run: runs.Run | None = None
        self._lease_seconds = 0.0
        self.ended_by_other: runs.Run | None = None  # what a heartbeat found instead
        self.lease_renewed_at = 0.0  # time.monotonic() when the claim was sent

    # -- before the command -----------------------------------------------------

    def claim(self, invocation: runs.Invocation, *, lease_seconds: float,
              allow_overlap: bool, lookback: float = 0,
              after: Sequence[str] = ()) -> runs.Claim:
        """Insert the run unless another of the name is live; raises DatabaseError.

        Results spooled for this database are replayed first, on the same connection.
        """
        # Connecting first: an unreachable database is not a spool problem.
        # Waiting for it and repeating the claim are as the database's patience
        # allows; the claim is keyed by the invocation's run_key, so a repeat
        # after a lost connection finds its own run.
        with translated_errors(self.database):
            def connect_once(_: Database, **options: object) -> None:
                # The schema check too: a server stopping just after it let us in
                # ends the connection there (57P01), and that is worth waiting for.
                ensure_schema(self._connection(**options), self.database)

            patiently(self.database, connect_once)
        self._replay_on_the_way()
        with translated_errors(self.database):
            def claim_once(_: Database, **options: object) -> runs.Claim:
                # Before the statements: the lease starts later, by the server's clock.
                self.lease_renewed_at = time.monotonic()
                return runs.claim_run(self._connection(**options), self.database.schema,
                                      invocation, lease_seconds=lease_seconds,
                                      allow_overlap=allow_overlap, lookback=lookback, after=after)

            claim = patiently(self.database, claim_once)
        for dead in claim.abandoned:
            self.tell(f"run {dead.id} of {dead.name!r} had lost its wrapper; marked abandoned")
        if claim.run is not None:
            self._run, self._lease_seconds = claim.run, lease_seconds
        return claim

    # -- while it runs ------------------------------------------------------------

    def heartbeat(self) -> None:
        """Renew the claimed run's lease; called from supervise()'s heartbeat thread.

        Bounded by the interval (see above), and reconnects when the connection broke
        (a restarted server). Raises supervise.Fence when someone else ended the run.
        """
        assert self._run is not None, "heartbeat before a claim"
        run_id, schema = self._run.id, self.database.schema
        interval = self._lease_seconds / LEASE_HEARTBEATS
        connect_timeout = max(MIN_CONNECT_TIMEOUT,
                              min(MAX_HEARTBEAT_CONNECT_TIMEOUT, int(interval)))
        with translated_errors(self.database):
            alive = self._on_connection(lambda conn: runs.heartbeat(
                conn, schema, run_id, lease_seconds=self._lease_seconds,
                timeout=max(MIN_HEARTBEAT_STATEMENT_TIMEOUT, interval / 2)),
                connect_timeout=connect_timeout)
            if alive:
                return
            self.ended_by_other = runs.fetch_run(self._connection(), runs.SELECT_RUN, schema,
                                                 {"id": run_id})
        raise Fence(f"run {run_id} is no longer in progress: someone else ended it")

    # -- after it ended -----------------------------------------------------------

    def record(self, result: runs.RunResult) -> runs.Run | None:
        """Record the result, retrying while the database is unreachable, else spool it.

        Returns the run as recorded, or None when spooled; raises SpoolError when
        neither the database nor the spool takes it.
        """
        try:
            return self._record_with_retries(result)
        except DatabaseError as error:
            failure = error
        try:
            entry = {"format": SPOOL_FORMAT, "target": self.spool_target(),
                     "result": _result_to_json(result)}
            if result.run_id is not None and self._identity is not None:
                entry["identity"] = self._identity
            path = spool.save(self.database.home, result.invocation.run_key, entry)
        except SpoolError as error:
            raise SpoolError(f"{error}; the result of {_which(result)} ({result.headline}) "
                             f"is recorded nowhere: {failure}") from None
        self.tell(f"{_which(result)} not recorded ({failure}); its result ({result.headline}) "
                  f"is spooled in {path}: `jobs-cli flush` records it")
        return None

    def replay(self) -> Replayed:
        """Record the spooled results meant for this database; raises DatabaseUnavailable.

        A result the database refuses for good (a constraint, a permission) is
        moved aside to spool/rejected/, so it cannot hold up the others.
        """
        import psycopg

        replayed = Replayed()
        for path in spool.pending(self.database.home):
            try:
                entry = spool.load(path)
                with translated_errors(self.database):
                    if not self._belongs_here(entry):
                        replayed.other_database += 1
                        continue
                result = _result_from_json(entry)
            except SpoolError as error:
                self.tell(str(error))
                replayed.failed += 1
                continue
            try:
                with translated_errors(self.database):
                    try:
                        run = self._record_once(result)
                    except psycopg.Error as error:
                        if not retry.refused_for_good(error):
                            raise
                        refusal = redacted(error_line(error), self.database)
                    else:
                        refusal = None
            except DatabaseUnavailable:
                raise  # the rest cannot be recorded either
            except DatabaseError as error:
                # Not this entry's fault (e.g. the table is missing): keep it, go on.
                self.tell(f"cannot record spooled result {path}: {error}")
                replayed.failed += 1
                continue
            if refusal is not None:
                moved = spool.reject(path)
                self.tell(f"the database refused the spooled result of {_which(result)} for good "
                          f"({refusal}); moved to {moved}")
                replayed.rejected += 1
                continue
            spool.discard(path)
            if run is not None:
                replayed.recorded.append(run)
        return replayed

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _belongs_here(self, entry: dict[str, Any]) -> bool:
        """Whether a spooled entry is for this database and schema.

        By the identity of the database it was claimed in, whatever the URL's
        spelling; results that never reached a database (--fail-open) by the
        spelling of the URL they were spooled under, as they have no identity.
        """
        if entry.get("identity"):
            self._connection()
            return entry["identity"] == self._identity
        return entry.get("target") == self.spool_target()

    def spool_target(self) -> str:
        """Which database and schema a spooled result belongs to; never the password."""
        if self.database.embedded:
            return f"{where(self.database)}, schema {self.database.schema}"
        try:
            params = conninfo_params(self.database.url)
        except Exception:
            # Unparsable (it can hold a password anywhere): its digest tells it apart.
            digest = hashlib.sha256(self.database.url.encode()).hexdigest()[:16]
            return f"url sha256 {digest}, schema {self.database.schema}"
        kept = ("service", "host", "hostaddr", "port", "dbname", "user")
        return " ".join(f"{key}={params[key]}" for key in kept if params.get(key)) \
            + f", schema {self.database.schema}"

    # -- internals ----------------------------------------------------------------

    def _connection(self, **options: object) -> "psycopg.Connection":
        """The connection, opened anew if it broke; `options` are libpq parameters."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.close()
            # Checked by `claim`: replaying needs no table to tell whose a result is.
            self._conn = open_connection(self.database, check_schema=False,
                                         tcp_user_timeout=TCP_USER_TIMEOUT_MS, **options)
            self._identity = _identity(self._conn, self.database.schema)
        return self._conn

    def _on_connection(self, operation: Callable[["psycopg.Connection"], Any],
                       **options: object) -> Any:
        """`operation(conn)`, again on a new connection if the old one turned out dead.

        An idle connection dies unnoticed (server restart, idle timeout) until it
        is used; both callers' operations may safely run twice.
        """
        import psycopg

        conn = self._connection(**options)
        try:
            return operation(conn)
        except psycopg.OperationalError:
            if not conn.broken:
                raise
        return operation(self._connection(**options))

    def _replay_on_the_way(self) -> None:
        """Replay before a claim: a failure here is worth a warning, not a skipped run."""
        try:
            replayed = self.replay()
        except JobsError as error:
            self.tell(f"cannot replay the spool: {error}")
            return
        for run in replayed.recorded:
            self.tell(f"recorded the spooled result of run {run.id} ({run.name!r})")

    def _record_with_retries(self, result: runs.RunResult) -> runs.Run | None:
        # Told whether or not stderr is a terminal: a late result is worth a line in cron's mail.
        patience = retry.Patience(seconds=self._retry_seconds, on_wait=self.tell)

        def waiting(error: BaseException) -> str:
            return (f"cannot record {_which(result)} yet (cannot reach {where(self.database)}: "
                    f"{redacted(error_line(error), self.database)}); "
                    f"retrying for {format_duration(self._retry_seconds)}")

        try:
            with _stop_retrying_on_signals(), translated_errors(self.database):
                return retry.call(lambda _: self._record_once(result), patience, waiting,
                                  retry.unavailable)
        except _StopRetrying as stop:
            raise DatabaseUnavailable(f"stopped retrying on {stop}") from None

    def _record_once(self, result: runs.RunResult) -> runs.Run | None:
        schema = self.database.schema
        run = self._on_connection(lambda conn: runs.record_result(conn, schema, result))
        if run is not None:
            return run
        current = runs.run_by_key(self._connection(), schema, result.invocation.run_key)
        if current is not None and current.exit_code is None:
            self.tell(f"run {current.id} of {current.name!r} was ended ({current.status}) "
                      f"by someone else; its outcome ({result.headline}) is not recorded")
        return current


# Names where a spooled result belongs (see Recorder._belongs_here): the
# cluster's system identifier and the database, whatever the URL says.
IDENTITY = "SELECT system_identifier::text, current_database() FROM pg_control_system()"


def _identity(conn: "psycopg.Connection", schema: str) -> dict[str, str] | None:
    import psycopg

    try:
        system_identifier, database = conn.execute(IDENTITY).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return None  # an administrator revoked it: results are matched by the URL's spelling
    return {"system_identifier": system_identifier, "database": database, "schema": schema}


def _which(result: runs.RunResult) -> str:
    if result.run_id is None:
        return f"the --fail-open run of {result.invocation.name!r}"
    return f"run {result.run_id} ({result.invocation.name!r})"


def _result_to_json(result: runs.RunResult) -> dict[str, Any]:
    data = asdict(result)
    data["start_date"] = result.start_date.isoformat()
    return data


def _result_from_json(entry: dict[str, Any]) -> runs.RunResult:
    try:
        if entry["format"] != SPOOL_FORMAT:
            raise ValueError(f"format {entry['format']!r}, expected {SPOOL_FORMAT}")
        data = dict(entry["result"])
        data["invocation"] = runs.Invocation(**data["invocation"])
        data["start_date"] = datetime.fromisoformat(data["start_date"])
        return runs.RunResult(**data)
    except (KeyError, TypeError, ValueError) as error:
        raise SpoolError(f"unusable spooled result: {error}") from None


class _StopRetrying(Exception):
    """A signal asked the wrapper to end while it was retrying: spool now."""


@contextmanager
def _stop_retrying_on_signals() -> Iterator[None]:
    """While retrying, SIGINT, SIGTERM or SIGHUP spool the result at once.

    Without this a second Ctrl-C or a service manager's SIGTERM would end the
    wrapper with the result neither recorded nor spooled.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may handle signals; the API may run elsewhere
        return

    def stop(signum: int, frame: object) -> None:
        raise _StopRetrying(signal.Signals(signum).name)

    previous = {signum: signal.signal(signum, stop) for signum in FORWARDED_SIGNALS
                if signal.getsignal(signum) != signal.SIG_IGN}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
