"""The simulation of tests/test_simulation.py at scale, with real concurrency and random timings.

Writer threads insert rows into a source table in transactions that stay open
for a random time (up to --max-transaction), stamping modified_at with their
transaction's now() and a sequence id. Meanwhile every loader of
tests/loader.py is run again and again through `jobs-cli run`, a share of
them failing after they copied (--fail-share). When the writers stop, each
loader runs once more, and the rows of the source missing from its
destination are counted:

    by_time            time watermark, no look-back        misses rows committed late
    by_time_lookback   time watermark, --lookback longer than any transaction: 0
    by_id              id > cursor                         misses rows committed late
    by_xid             cursor bounded by pg_snapshot_xmin: 0

    python bench/bench_simulation.py                       # a private server, 60 s
    python bench/bench_simulation.py --seconds 300 --writers 8
    python bench/bench_simulation.py --database-url URL    # a schema of its own, dropped after

Exit 1 if a loader that must miss nothing missed a row.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psycopg
from psycopg import conninfo, sql

from jobs_cli.migrations import migrate
from jobs_cli.server import EmbeddedServer

JOBS_CLI = str(Path(sys.executable).parent / "jobs-cli")
LOADER = Path(__file__).resolve().parent.parent / "tests" / "loader.py"
sys.path.insert(0, str(LOADER.parent))
from loader import TABLE  # noqa: E402 -- the simulation's source table, shared with the test
MUST_MISS_NOTHING = ("by_time_lookback", "by_xid")


@contextmanager
def database(url: str | None) -> Iterator[tuple[str, Path]]:
    """The database to use and a JOBS_HOME: a private embedded server unless `url`."""
    home = Path(tempfile.mkdtemp(prefix="jobs-cli-bench-simulation-"))
    home.chmod(0o755)  # as root the server runs as another user, who must enter it
    server = None if url else EmbeddedServer(home)
    try:
        yield url or server.ensure_running(), home
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(home, ignore_errors=True)


def write(url: str, stop: threading.Event, max_transaction: float, seed: int,
          counts: list[int]) -> None:
    chance = random.Random(seed)
    with psycopg.connect(url) as conn:
        while not stop.is_set():
            rows = chance.randint(1, 20)
            conn.execute("INSERT INTO src (v) SELECT 'w' || i FROM generate_series(1, %s) i",
                         (rows,))
            # Held open: its rows carry this transaction's start, and ids taken now.
            time.sleep(chance.uniform(0, max_transaction))
            conn.commit()
            counts.append(rows)
            time.sleep(chance.uniform(0, 0.2))


def load(job: str, mode: str, options: list[str], env: dict[str, str], chance: random.Random,
         fail_share: float, runs: dict[str, list[int]]) -> None:
    fail = chance.random() < fail_share
    code = subprocess.run(
        [JOBS_CLI, "run", "--name", job, *options, "--", sys.executable, str(LOADER), mode,
         "src", job], env={**env, "SIM_FAIL": "1" if fail else "0"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    runs[job].append(code.returncode)
    if code.returncode not in (0, 1):
        raise SystemExit(f"{job}: exit {code.returncode}: {code.stderr}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="use this database instead of a private server")
    parser.add_argument("--schema", default="jobs_bench_simulation",
                        help="schema to create and drop")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the writers write")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--max-transaction", type=float, default=3.0,
                        help="longest time a writer holds its transaction open, in seconds")
    parser.add_argument("--fail-share", type=float, default=0.2,
                        help="share of loader runs that fail after copying")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    # Longer than any source transaction, and whole seconds.
    lookback = f"{int(args.max_transaction) + 2}s"
    loaders = {"by_time": ("time", []), "by_time_lookback": ("time", ["--lookback", lookback]),
               "by_id": ("id", []), "by_xid": ("xid", [])}

    with database(args.database_url) as (url, home), \
            psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(args.schema)))
        try:
            migrate(conn, args.schema)
            here = conninfo.make_conninfo(url, options=f"-c search_path={args.schema}")
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(args.schema)))
            conn.execute(TABLE.format(name="src"))
            for job in loaders:
                conn.execute(f"CREATE TABLE {job} (LIKE src INCLUDING DEFAULTS INCLUDING INDEXES)")
            env = {key: value for key, value in os.environ.items() if not key.startswith("JOBS_")}
            env.update(JOBS_DATABASE_URL=url, JOBS_SCHEMA=args.schema, JOBS_HOME=str(home),
                       SIM_DATABASE_URL=here)
            stop = threading.Event()
            counts: list[int] = []
            writers = [threading.Thread(target=write, args=(here, stop, args.max_transaction,
                                                             args.seed + n, counts))
                       for n in range(args.writers)]
            for writer in writers:
                writer.start()
            chance = random.Random(args.seed)
            runs: dict[str, list[int]] = {job: [] for job in loaders}
            deadline = time.monotonic() + args.seconds
            try:
                while time.monotonic() < deadline:
                    for job, (mode, options) in loaders.items():
                        load(job, mode, options, env, chance, args.fail_share, runs)
            finally:
                stop.set()
                for writer in writers:
                    writer.join()
            for job, (mode, options) in loaders.items():
                load(job, mode, options, env, chance, 0.0, runs)
            total = conn.execute("SELECT count(*) FROM src").fetchone()[0]
            print(f"{total} rows by {args.writers} writers in {args.seconds:g} s, transactions "
                  f"held open up to {args.max_transaction:g} s; look-back {lookback}")
            print(f"{'loader':<18} {'runs':>5} {'failed':>6} {'missed':>7}")
            worst = 0
            for job in loaders:
                missed = conn.execute(sql.SQL("SELECT count(*) FROM (SELECT id FROM src EXCEPT "
                                              "SELECT id FROM {}) AS m").format(
                    sql.Identifier(job))).fetchone()[0]
                print(f"{job:<18} {len(runs[job]):>5} {runs[job].count(1):>6} {missed:>7}")
                if job in MUST_MISS_NOTHING:
                    worst = max(worst, missed)
            return 1 if worst else 0
        finally:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(args.schema)))


if __name__ == "__main__":
    sys.exit(main())
