"""The `jobs-cli` program's entry point: a Ctrl-C at any moment is one line.

The console script imports this module, which imports nothing of the tool's,
and `main` runs everything else inside its guard: importing click, psycopg
and rich takes most of the first tenth of a second, and a Ctrl-C then must
not print a traceback. Within a command the Click layer turns Ctrl-C into
`errors.Interrupted` (see `cli.main`); this guard catches what comes before
and after that. Once the command has finished the process only exits, and a
Ctrl-C in that last moment ends it at once, with the same line.

A command that will use the embedded server has it started, in a thread,
before click is imported (see `_head_start_embedded_server`); one that used
the database exits without the interpreter's teardown (see
`_exit_without_teardown`).
"""

from __future__ import annotations

import os
import sys

# The interpreter's own, loaded before any code runs: the `signal` module would
# add to what `jobs-cli --help` loads.
import _signal

_INTERRUPTED_LINE = b"jobs-cli: interrupted\n"
_EXIT_INTERRUPTED = 130  # errors.EXIT_INTERRUPTED, without importing anything here
_said = False

# The commands that use the database, and with none configured the embedded server:
# all but `server`, which manages that server itself, and `completion`
# (tests/test_cli.py checks this against the commands).
DATABASE_COMMANDS = frozenset({
    "init", "start", "finish", "fail", "last-success", "report", "run", "reap", "flush",
    "list", "show", "status", "check", "metrics", "watch", "history", "reset"})


def main() -> None:
    _fill_closed_standard_fds()
    try:
        try:
            _head_start_embedded_server(sys.argv[1:])
            from .cli import main as run_command

            run_command()  # ends with SystemExit
        finally:
            _exit_at_once_on_ctrl_c()
    except KeyboardInterrupt:
        _say_interrupted()
        raise SystemExit(_EXIT_INTERRUPTED) from None
    except SystemExit as ending:
        if "psycopg" in sys.modules and isinstance(ending.code, int):
            _exit_without_teardown(ending)
        raise


def _fill_closed_standard_fds() -> None:
    """Put /dev/null where stdin, stdout or stderr is closed (`2>&-`, some daemons'
    children), as a closed one was meant: output to nowhere. Else the next file
    opened takes its number, and what is written there (a command's stderr, passed
    on by `run`) goes into that file, the database connection included; and the
    streams Python left as None would fail the command before it runs."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
        except OSError:
            os.set_inheritable(os.open(os.devnull, os.O_RDWR), True)  # takes fd: the lowest free
            if getattr(sys, name) is None:
                setattr(sys, name, open(fd, mode, closefd=False))


def _head_start_embedded_server(args: list[str]) -> None:
    """Begin `db.head_start` before click and the commands' modules are imported:
    30-50 ms sooner than the command's own connection would, which on a fresh
    JOBS_HOME is that much of the first call's wait for its cluster.

    Only for a command line whose first word is a database command, with no
    database configured and no help asked: anything before the command (such as
    `--database-url`) leaves the head start to the command's connection. Its
    other arguments are not read yet, so one that click then refuses still
    finds the cluster made, as the corrected command would have (the process
    waits for the thread: a creation cut short would be made again, but by a
    next command racing the initdb left running).
    """
    from . import config

    if not args or args[0] not in DATABASE_COMMANDS or os.environ.get(config.ENV_DATABASE_URL):
        return
    own = args[1:args.index("--")] if "--" in args else args[1:]  # not the wrapped command's
    if "--help" in own or "-h" in own:
        return
    try:
        from .db import Database, head_start

        head_start(Database(schema=os.environ.get(config.ENV_SCHEMA) or config.DEFAULT_SCHEMA))
    except Exception:
        pass  # the command's own connection meets it again, and says why


def _exit_without_teardown(ending: SystemExit) -> None:
    """Do what the interpreter does at exit, less the teardown, and exit.

    The teardown frees every object psycopg, click and the command made, which
    touches every page of the heap: ~10 ms of a short command, and ~40 ms after
    `run` has waited seconds for its child, when those pages have gone cold (the
    stdout throughput in bench/README.md). Nothing in it is needed: files and
    connections are closed where they are used, and the kernel frees the rest.
    What is needed comes first, in the interpreter's order: non-daemon threads are
    joined (`threading._shutdown`), atexit handlers run, and the streams are
    flushed. A flush that fails leaves the exit to the interpreter, which reports
    it as it always has.
    """
    import atexit

    threading = sys.modules.get("threading")
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        raise ending from None
    os._exit(ending.code)


def _say_interrupted() -> None:
    global _said
    if not _said:
        _said = True
        try:
            os.write(2, _INTERRUPTED_LINE)
        except OSError:
            pass  # no stderr to say it on


def _exit_now(signum: int, frame: object) -> None:
    _say_interrupted()
    os._exit(_EXIT_INTERRUPTED)


def _exit_at_once_on_ctrl_c() -> None:
    # Only in place of Python's own handler: an ignored SIGINT stays ignored.
    if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
        _signal.signal(_signal.SIGINT, _exit_now)
