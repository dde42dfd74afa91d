"""`Job`: the Python API, shaped like the original `tdutils.jobutil.Job`.

A script written for the original moves by changing its import and
constructor line::

    job = Job(name="orders_sync", source="erp", destination="dwh")
    since = job.most_recent() or 0
    job.start()
    ...
    job.result("success", records_processed=n)   # cursor="..." to hand on a data cursor

or, new here::

    with job.run() as run:      # success on normal exit, error (and re-raise) on exception
        ...

Each call opens a short connection (a couple of milliseconds on a local
server), so a long job holds no idle connection open.
"""

from __future__ import annotations

import os
import uuid
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

from . import config, runs
from .db import Database, call
from .errors import InvalidInput, JobsError
from .retry import Patience
from .states import ENDED, ERROR, SUCCESS

if TYPE_CHECKING:
    import psycopg


class Job:
    def __init__(self, name: str, source: str = "", destination: str = "",
                 database_url: str | None = None, schema: str | None = None):
        """database_url and schema default to JOBS_DATABASE_URL and JOBS_SCHEMA, as in the CLI."""
        self.name = runs.validate_new_name(name)
        self.source = source
        self.destination = destination
        self.database = Database(
            url=database_url or os.environ.get(config.ENV_DATABASE_URL) or None,
            schema=schema or os.environ.get(config.ENV_SCHEMA) or config.DEFAULT_SCHEMA,
            patience=Patience(seconds=config.start_retry_seconds()))
        self.data: dict[str, Any] | None = None

    @property
    def id(self) -> int | None:
        return self.data["id"] if self.data else None

    def most_recent(self, status: str = SUCCESS, *, lookback: float = 0) -> int | None:
        """Unix seconds of the start of the newest run with `status` (by end), or None.

        For success that is the watermark, as `jobs-cli last-success` prints it,
        less `lookback` seconds (rounded up).
        """
        def read(conn: "psycopg.Connection") -> int | None:
            if status == SUCCESS:
                return runs.next_watermark(conn, self.database.schema, self.name,
                                           lookback=lookback).since
            return runs.last_start(conn, self.database.schema, self.name, status)

        return call(self.database, read)

    def most_recent_cursor(self) -> str | None:
        """The cursor of the last successful run that has one, as
        `jobs-cli last-success --cursor` prints it; None when none has."""
        return call(self.database,
                    lambda conn: runs.next_watermark(conn, self.database.schema, self.name).cursor)

    def start(self, message: str | None = None) -> dict[str, Any]:
        key = uuid.uuid4().hex  # a start repeated after a lost connection inserts nothing more
        run = call(self.database, lambda conn: runs.start_run(
            conn, self.database.schema, self.name, source=self.source,
            destination=self.destination, message=message, run_key=key))
        self.data = run.as_dict()
        return self.data

    def result(self, _result: str, message: str | None = None,
               records_processed: int | None = 0, cursor: str | None = None) -> dict[str, Any]:
        """End the run; `cursor`, where it got to in the data, is handed on if it succeeded."""
        if _result not in ENDED:
            raise InvalidInput(f"result must be 'success' or 'error', not {_result!r}")
        if self.id is None:
            raise JobsError("start() the job before reporting its result")
        key = uuid.uuid4().hex  # a repeated end recognises its own ending
        run = call(self.database, lambda conn: runs.end_run(
            conn, self.database.schema, self.id, _result, records=records_processed,
            message=message, cursor=cursor, end_key=key))
        self.data = run.as_dict()
        return self.data

    @contextmanager
    def run(self, message: str | None = None) -> Iterator["Job"]:
        """Start; on normal exit record success, on an exception record error and re-raise.

        Set `records_processed` (and `cursor`) on the yielded job to have it recorded.
        """
        self.records_processed: int | None = None
        self.cursor: str | None = None
        self.start(message)
        try:
            yield self
        except BaseException as exc:
            try:
                self.result(ERROR, message=str(exc) or type(exc).__name__,
                            records_processed=self.records_processed)
            except JobsError as failure:
                # The caller's exception matters more than our bookkeeping.
                warnings.warn(f"jobs-cli: could not record the error of {self.name!r}: {failure}",
                              RuntimeWarning, stacklevel=3)
            raise
        self.result(SUCCESS, records_processed=self.records_processed, cursor=self.cursor)
