"""Runs inserted with SQL at chosen times, for the views' tests.

Times are relative to the server's now(), as the views measure them.
"""

from __future__ import annotations

from datetime import timedelta

INSERT = """
INSERT INTO jobs (name, status, start_date, end_date, lease_until, records_processed,
                  message, source, destination, output, command, host, pid)
VALUES (%(name)s, %(status)s, now() - %(ago)s::interval,
        now() - %(ago)s::interval + %(took)s::interval, now() + %(lease)s::interval,
        %(records)s, %(message)s, %(source)s, %(destination)s, %(output)s, %(command)s,
        %(host)s, %(pid)s)
RETURNING id
"""


def seconds(value: float | None) -> timedelta | None:
    return None if value is None else timedelta(seconds=value)


def add_run(conn, name: str, status: str = "success", *, ago: float = 600,
            took: float | None = 10, lease: float | None = None, records: int | None = None,
            message: str | None = None, source: str = "erp", destination: str = "dwh",
            output: str | None = None, command: str | None = None, host: str | None = None,
            pid: int | None = None) -> int:
    """A run that started `ago` seconds ago and ended `took` seconds later (unfinished
    when in_progress). `lease`: seconds from now until its lease runs out, negative
    when it already has (dead), None when it has none (started without a wrapper)."""
    params = dict(name=name, status=status, ago=seconds(ago),
                  took=None if status == "in_progress" else seconds(took), lease=seconds(lease),
                  records=records, message=message, source=source, destination=destination,
                  output=output, command=command, host=host, pid=pid)
    return conn.execute(INSERT, params).fetchone()[0]
