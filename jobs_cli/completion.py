"""Job names for shell completion: best effort, quick, and without side effects.

A TAB must never wait on a database or change anything. So the names come
from one query over a connection that gets JOBS_COMPLETION_SECONDS (default
0.8) in all (libpq's connect_timeout counts whole seconds, so the attempt runs
in a daemon thread that is abandoned when it is late), with no retry; on the embedded default
only a server that already runs is asked (its address is read from
postmaster.pid): completion never creates or starts it, nor applies the
schema. Any failure offers nothing.
"""

from __future__ import annotations

import os
import threading

from . import config
from .db import Database, open_direct
from .runs import statement

MAX_NAMES = 200

# The names from `prefix` on, one index descent each (as runs.ALL_NAMES),
# stopping at the first that does not start with it.
NAMES_STARTING_WITH = """
WITH RECURSIVE names(name, n) AS (
    (SELECT name, 1 FROM {table} WHERE name >= %(prefix)s ORDER BY name LIMIT 1)
    UNION ALL
    SELECT (SELECT j.name FROM {table} j WHERE j.name > names.name ORDER BY j.name LIMIT 1),
           n + 1
    FROM names
    WHERE starts_with(names.name, %(prefix)s) AND n < %(most)s
)
SELECT name FROM names WHERE starts_with(name, %(prefix)s)
"""


def job_names(database: Database, prefix: str) -> list[str]:
    """Names of jobs that start with `prefix`, or [] when they cannot be had at once."""
    import psycopg  # noqa: F401 -- imported here, so its import does not eat the time allowed

    found: list[str] = []

    def ask() -> None:
        conninfo = _running_server(database)
        if conninfo is None:
            return
        with open_direct(conninfo, connect_timeout=1) as conn:
            rows = conn.execute(statement(NAMES_STARTING_WITH, database.schema),
                                {"prefix": prefix, "most": MAX_NAMES}).fetchall()
        found.extend(name for (name,) in rows)

    def quietly() -> None:
        try:
            ask()
        except Exception:
            pass  # a TAB offers nothing rather than an error

    worker = threading.Thread(target=quietly, daemon=True)
    worker.start()
    worker.join(_seconds_allowed())
    return [] if worker.is_alive() else found


def _running_server(database: Database) -> str | None:
    if not database.embedded:
        return database.url
    from .server import EmbeddedServer

    return EmbeddedServer(database.home).conninfo()


def _seconds_allowed() -> float:
    try:
        return float(os.environ.get(config.ENV_COMPLETION_SECONDS) or "")
    except ValueError:
        return config.DEFAULT_COMPLETION_SECONDS
