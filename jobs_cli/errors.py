"""Errors that end a command, each carrying the exit code the CLI reports.

The library layer raises these; the Click layer turns them into one line on
stderr and an exit code at a single boundary (`cli.JobsGroup.invoke`; click's
own usage errors in `cli.main`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NO_SUCCESS = 3
EXIT_NOT_RUNNING = 3  # `server status`, as `pg_ctl status`
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports it
# `jobs-cli run`, after sysexits.h: the command was not run, or its result is nowhere.
EXIT_UNAVAILABLE = 69
EXIT_IOERR = 74
EXIT_TEMPFAIL = 75
# `run`: the run stopped being this wrapper's while its command ran (sysexits'
# EX_NOPERM: the wrapper lost the right to run it); see `supervise`, Fencing.
EXIT_FENCED = 77


class JobsError(Exception):
    """Something the user should be told in one line; exit 1."""

    exit_code = EXIT_ERROR


class InvalidInput(JobsError):
    """The command line or an API argument is malformed; exit 2 like click's usage errors."""

    exit_code = EXIT_USAGE


class NotFound(JobsError):
    """No run with that id."""


class Refused(JobsError):
    """The request is well formed but would change a run it must not change."""


class DatabaseError(JobsError):
    """The database refused a statement (schema missing, constraint broken...)."""


class PermissionDenied(DatabaseError):
    """The role lacks a privilege (a jobs_reader writing, a writer running `init`...)."""


class NoJobsTable(DatabaseError):
    """The schema has no jobs table: `jobs-cli init` creates it."""


class DatabaseUnavailable(DatabaseError):
    """Could not connect to the database, or lost the connection."""


class ServerError(DatabaseUnavailable):
    """The embedded PostgreSQL server could not be created, started or stopped.

    For a caller it is the database being unavailable: `run` does not start
    its command (or spools its result), as for an unreachable server.
    """


class NotStarted(JobsError):
    """`run` could not read the watermark or insert the run, so the command was not run."""

    exit_code = EXIT_UNAVAILABLE


class Overlap(JobsError):
    """`run` skipped the command because another run of the job is live; exit 75 (try later)."""

    exit_code = EXIT_TEMPFAIL


class UpstreamNotReady(JobsError):
    """`run --after`: an upstream job has no success since this job's last one; exit 75.

    Said only on a terminal: a chain run every few minutes skips most of the
    time, and cron mails any output.
    """

    exit_code = EXIT_TEMPFAIL
    quiet_off_terminal = True


class SpoolError(JobsError):
    """A result the database would not take could not be spooled either."""

    exit_code = EXIT_IOERR


class Fenced(JobsError):
    """`run`: the run was ended by someone else (reaped, failed by hand) while its
    command ran; the command was stopped and nothing recorded over that decision."""

    exit_code = EXIT_FENCED


class Interrupted(BaseException):
    """A signal ended the command: Ctrl-C anywhere (no signal number), SIGTERM or
    SIGHUP where a command asks for it (`signals_interrupt`). One line and exit
    128+N, as a shell reports it.

    A BaseException, as KeyboardInterrupt is, so that no `except Exception` on the
    way out swallows it; click does not catch it either.
    """

    def __init__(self, signum: int | None = None) -> None:
        super().__init__(signum)
        self.signum = signum
        self.exit_code = EXIT_INTERRUPTED if signum is None else 128 + signum

    def __str__(self) -> str:
        if self.signum is None:
            return "interrupted"
        import signal  # not at import: `jobs-cli --help` loads only what click needs

        return f"interrupted by {signal.Signals(self.signum).name}"


@contextmanager
def signals_interrupt(*signums: int) -> Iterator[None]:
    """Within the block, the given signals raise Interrupted, so that `with` blocks
    on the way out (a live display hiding the cursor) clean up before the exit."""
    import signal

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    previous = {signum: signal.signal(signum, interrupt) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
