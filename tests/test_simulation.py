"""Incremental loads that never miss a row, and the ones that do: a scripted simulation.

Writers on explicit connections stamp rows with their transaction's now()
and a sequence id, some holding their transaction open across a load; a
loader (tests/loader.py) is run again and again through `jobs-cli run`, with
a failure injected. Every interleaving is scripted, so the outcome does not
depend on the machine's speed:

- a time watermark without a look-back misses the rows committed late;
  with a look-back longer than the longest source transaction it misses none;
- a sequence cursor (`id > cursor`) misses them too; a cursor bounded by the
  oldest open transaction (pg_snapshot_xmin) misses none;
- a two-job chain gated with `--after` runs its second job only on new data.

bench/bench_simulation.py is the same with many writers and random timings.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from conftest import wait_until
from loader import TABLE

LOADER = Path(__file__).with_name("loader.py")
ROWS = 3  # per writer transaction


# job name -> (loader mode, `run` options); each loads into a table of its name.
LOADERS = {
    "by_time": ("time", []),
    "by_time_lookback": ("time", ["--lookback", "1h"]),
    "by_id": ("id", []),
    "by_xid": ("xid", []),
}


class Writer:
    """A source writer on its own connection: its transactions are explicit."""

    def __init__(self, db_url: str, name: str) -> None:
        self.conn = psycopg.connect(db_url)
        self.name = name
        self.batches = 0

    def insert(self) -> tuple[list[int], object]:
        """Insert ROWS rows in the open (or a new) transaction; their ids and its now()."""
        self.batches += 1
        ids = [row[0] for row in self.conn.execute(
            "INSERT INTO src (v) SELECT %s || '-' || i FROM generate_series(1, %s) i RETURNING id",
            (f"{self.name}{self.batches}", ROWS)).fetchall()]
        return ids, self.conn.execute("SELECT now()").fetchone()[0]

    def commit(self) -> None:
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def source(conn, db_url):
    conn.execute(TABLE.format(name="src"))
    for table in [*LOADERS, "staging", "dwh"]:
        conn.execute(f"CREATE TABLE {table} (LIKE src INCLUDING DEFAULTS INCLUDING INDEXES)")
    writers = [Writer(db_url, name) for name in ("w1", "w2", "w3")]
    yield writers
    for writer in writers:
        writer.close()


def loader(job: str, mode: str, source: str, target: str, options: list[str]) -> list[str]:
    return ["jobs-cli", "run", "--name", job, *options, "--", sys.executable, str(LOADER),
            mode, source, target]


def load_all(cli_env: dict, db_url: str, *, fail: bool = False) -> None:
    """One run of every loader, side by side: each job reads only the source, which no
    writer touches meanwhile, so running them together changes no outcome."""
    env = {**cli_env, "SIM_DATABASE_URL": db_url, "SIM_FAIL": "1" if fail else "0"}
    started = [subprocess.Popen(loader(job, mode, "src", job, options), env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for job, (mode, options) in LOADERS.items()]
    for process in started:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == (1 if fail else 0), stderr


def past_the_second_of(conn, moment) -> None:
    """Wait until the server's clock is in a later whole second than `moment`.

    Watermarks are whole seconds (floor): a run starting in the same second as
    a late row's stamp would pick the row up by luck. This makes the scripted
    order of stamp and run start hold in whole seconds too.
    """
    wait_until(lambda: conn.execute("SELECT floor(extract(epoch FROM clock_timestamp()))"
                                    " > floor(extract(epoch FROM %s::timestamptz))",
                                    (moment,)).fetchone()[0],
               what="the next second on the server's clock")


def missed(conn, table: str) -> list[int]:
    return [row[0] for row in conn.execute(
        f"SELECT id FROM src EXCEPT SELECT id FROM {table} ORDER BY 1").fetchall()]


def test_late_commits_are_missed_without_a_look_back_or_a_snapshot_bound_cursor(
        conn, db_url, cli_env, source):
    w1, w2, w3 = source
    w1.insert()
    w1.commit()
    late_b, stamped_b = w2.insert()  # held open across the first load
    w3.insert()
    w3.commit()
    past_the_second_of(conn, stamped_b)
    load_all(cli_env, db_url)
    w2.commit()  # stamped before that load started, and ids below what it loaded
    late_d, stamped_d = w1.insert()  # held open across two loads
    past_the_second_of(conn, stamped_d)
    load_all(cli_env, db_url, fail=True)  # copied, then died: the watermarks stay
    w3.insert()
    w3.commit()
    load_all(cli_env, db_url)
    w1.commit()
    load_all(cli_env, db_url)

    assert missed(conn, "by_time") == late_b + late_d
    assert missed(conn, "by_id") == late_b + late_d
    assert missed(conn, "by_time_lookback") == []
    assert missed(conn, "by_xid") == []
    # The failed run's cursor was kept in its row and not handed on.
    (_, first, _), (_, failed, _), (_, _, third), _ = conn.execute(
        "SELECT status, cursor, cursor_handed FROM jobs WHERE name = 'by_xid' ORDER BY id"
    ).fetchall()
    assert third == first != failed


def test_a_two_job_chain_gated_with_after_loads_everything_once_upstream_succeeded(
        conn, db_url, cli, cli_env, source):
    w1, _, _ = source
    env = {"SIM_DATABASE_URL": db_url}
    extract = ("run", "--name", "extract", "--lookback", "1h", "--", sys.executable,
               str(LOADER), "time", "src", "staging")
    load = ("run", "--name", "load", "--after", "extract", "--lookback", "1h", "--", "sh", "-c",
            'echo "$JOBS_UPSTREAM_RUNS" && exec "$0" "$@"', sys.executable, str(LOADER),
            "time", "staging", "dwh")

    def staged() -> int:
        return conn.execute("SELECT count(*) FROM dwh").fetchone()[0]

    w1.insert()
    w1.commit()
    assert cli(*load, env=env).returncode == 75  # extract never succeeded
    assert cli(*extract, env=env).returncode == 0
    first = cli(*load, env=env)
    assert (first.returncode, first.stdout) == (0, "1\n")  # the extract run it consumed
    assert staged() == ROWS
    assert cli(*load, env=env).returncode == 75  # nothing new upstream
    w1.insert()
    w1.commit()
    assert cli(*extract, env={**env, "SIM_FAIL": "1"}).returncode == 1
    skipped = cli(*load, env=env)
    assert (skipped.returncode, skipped.stdout, skipped.stderr) == (75, "", "")
    assert cli(*extract, env=env).returncode == 0
    assert cli(*load, env=env).stdout == "4\n"
    assert missed(conn, "dwh") == []
    # Skips are not runs.
    assert conn.execute("SELECT name, status FROM jobs ORDER BY id").fetchall() == [
        ("extract", "success"), ("load", "success"), ("extract", "error"),
        ("extract", "success"), ("load", "success")]
