"""Environment variable names and defaults, in one place.

The tool reads only JOBS_* variables: DATABASE_URL and PG* usually point at
the *source* database in an ETL environment, so they are never read implicitly
(db.libpq_params keeps libpq itself from reading PG* for the jobs connection).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pathlib is imported when a path is needed: `--help` needs none
    from pathlib import Path

ENV_DATABASE_URL = "JOBS_DATABASE_URL"
ENV_SCHEMA = "JOBS_SCHEMA"
ENV_HOME = "JOBS_HOME"
ENV_SOURCE = "JOBS_SOURCE"
ENV_DESTINATION = "JOBS_DESTINATION"
ENV_PG_BINDIR = "JOBS_PG_BINDIR"
ENV_SERVER_USER = "JOBS_SERVER_USER"
ENV_DEBUG = "JOBS_DEBUG"
ENV_COMPLETION_SECONDS = "JOBS_COMPLETION_SECONDS"

# Handed by `jobs-cli run` to the command it runs.
ENV_ID = "JOBS_ID"
ENV_NAME = "JOBS_NAME"
ENV_LAST_SUCCESS = "JOBS_LAST_SUCCESS"
ENV_LAST_SUCCESS_ISO = "JOBS_LAST_SUCCESS_ISO"
ENV_LOOKBACK_SECONDS = "JOBS_LOOKBACK_SECONDS"
ENV_LAST_CURSOR = "JOBS_LAST_CURSOR"
ENV_UPSTREAM_RUNS = "JOBS_UPSTREAM_RUNS"
ENV_CLI = "JOBS_CLI"
ENV_HEARTBEAT_SECONDS = "JOBS_HEARTBEAT_SECONDS"
ENV_RETRY_SECONDS = "JOBS_RETRY_SECONDS"
# How long a command waits for a database that is down, restarting or full
# before it gives up (0: not at all).
ENV_START_RETRY_SECONDS = "JOBS_START_RETRY_SECONDS"

DEFAULT_SCHEMA = "public"
DEFAULT_LIMIT = 20  # runs shown by `list` and `watch`
DEFAULT_SERVER_USER = "jobs-cli"
DEFAULT_HEARTBEAT_SECONDS = 30.0
# Below this, libpq's whole-second connect timeout no longer fits in a lease of
# three intervals, and the wrapper would do little but heartbeat.
MIN_HEARTBEAT_SECONDS = 1.0
DEFAULT_RETRY_SECONDS = 60.0
DEFAULT_COMPLETION_SECONDS = 0.8
DEFAULT_START_RETRY_SECONDS = 30.0
ROOT_HOME = "/var/lib/jobs-cli"
# The largest value of an integer column (records_processed, ids).
INT4_MAX = 2**31 - 1

# `jobs-cli run`: what the wrapper keeps, how it ends a command, what it does on overlap.
DEFAULT_TAIL_BYTES = 10 * 1024
MAX_TAIL_BYTES = 64 * 1024 * 1024
DEFAULT_KILL_AFTER_SECONDS = 5.0
SKIP, WAIT, ALLOW = "skip", "wait", "allow"
OVERLAP_CHOICES = (SKIP, WAIT, ALLOW)


def default_home() -> "Path":
    """Where the embedded server and the spool live when JOBS_HOME is unset."""
    from pathlib import Path

    if os.geteuid() == 0:
        return Path(ROOT_HOME)
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "jobs-cli"


def home() -> "Path":
    from pathlib import Path

    from .errors import InvalidInput

    chosen = os.environ.get(ENV_HOME)
    if not chosen:
        return default_home()
    # Relative, it would name another server in each working directory: cron's
    # ($HOME) and a shell's would record into different databases.
    if not os.path.isabs(chosen):
        raise InvalidInput(f"{ENV_HOME} must be an absolute path, not {chosen!r}")
    return Path(chosen)


def seconds_from_env(variable: str, default: float, *, least: float = 0) -> float:
    """A JOBS_*_SECONDS variable: plain seconds, as its name says, at least `least`."""
    from .durations import parse_seconds
    from .errors import InvalidInput

    text = os.environ.get(variable)
    if not text:
        return default
    try:
        seconds = parse_seconds(text)
    except ValueError as exc:
        raise InvalidInput(f"{variable}: {exc}") from None
    if seconds < least:
        raise InvalidInput(f"{variable}: must be at least {least:g}, not {text!r}")
    return seconds


def start_retry_seconds() -> float:
    return seconds_from_env(ENV_START_RETRY_SECONDS, DEFAULT_START_RETRY_SECONDS)
