"""What wrapping a command in `jobs-cli run` costs: start-up time and stdout throughput.

Overhead: the wall time of `jobs-cli run --name x -- true` against `true` alone, and
against what a script does without `run`: `jobs-cli start` then `jobs-cli finish`.
Throughput: `jobs-cli run -- head -c 1G /dev/zero | cat` against the same pipe
without the wrapper. The command's stdout is inherited, so once the wrapper's
start-up is taken off the two should move bytes equally fast.

Each figure is the median of repeated timed runs after one warm-up (hyperfine is not
needed).

    python bench/bench_run.py                      # a private server in a temp dir
    python bench/bench_run.py --database-url URL   # a schema of its own, dropped after
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psycopg
from psycopg import sql

from jobs_cli.schema import apply_schema
from jobs_cli.server import EmbeddedServer

JOBS_CLI = str(Path(sys.executable).parent / "jobs-cli")
GIB = 1024**3


@contextmanager
def private_home() -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="jobs-cli-bench-run-"))
    home.chmod(0o755)  # as root the server runs as another user, who must enter it
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def database(url: str | None, home: Path) -> Iterator[str]:
    if url:
        yield url
        return
    server = EmbeddedServer(home)
    try:
        yield server.ensure_running()
    finally:
        server.stop()


def median_seconds(command: list[str], env: dict[str, str], repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):
        began = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - began)
    return statistics.median(times[1:])


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="use this database (default: a private server)")
    parser.add_argument("--schema", default="jobs_bench_run", help="schema to create and drop")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per start-up figure")
    parser.add_argument("--throughput-repeats", type=int, default=5,
                        help="timed runs per throughput figure (1 GiB each)")
    args = parser.parse_args()

    with private_home() as home, database(args.database_url, home) as url, \
            psycopg.connect(url, autocommit=True) as conn:
        apply_schema(conn, args.schema)
        env = {key: value for key, value in os.environ.items() if not key.startswith("JOBS_")}
        env.update(JOBS_DATABASE_URL=url, JOBS_SCHEMA=args.schema, JOBS_HOME=str(home))
        try:
            overhead = {
                "true": median_seconds(["true"], env, args.repeats),
                "jobs-cli run -- true": median_seconds(
                    [JOBS_CLI, "run", "--name", "x", "--", "true"], env, args.repeats),
                "jobs-cli start + finish": median_seconds(
                    sh(f'id=$({JOBS_CLI} start x) && {JOBS_CLI} finish "$id"'), env,
                    args.repeats),
            }
            pipe = "head -c 1G /dev/zero | cat > /dev/null"
            throughput = {
                "head | cat": median_seconds(sh(pipe), env, args.throughput_repeats),
                "jobs-cli run -- head | cat": median_seconds(
                    sh(f"{JOBS_CLI} run --name x -- {pipe}"), env, args.throughput_repeats),
            }
        finally:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(args.schema)))

    baseline, wrapped, by_hand = overhead.values()
    print(f"start-up, median of {args.repeats} (ms)")
    for label, seconds in overhead.items():
        print(f"  {label:30} {seconds * 1000:8.1f}")
    print(f"  run costs {(wrapped - baseline) * 1000:.0f} ms over `true`, "
          f"{wrapped / by_hand:.2f}x start + finish")

    plain, through_run = throughput.values()
    start_up = wrapped - baseline
    print(f"\nstdout, 1 GiB through `| cat`, median of {args.throughput_repeats} (GB/s)")
    print(f"  {'head | cat':30} {GIB / plain / 1e9:8.2f}")
    print(f"  {'jobs-cli run -- head | cat':30} {GIB / through_run / 1e9:8.2f}"
          f"   {plain / through_run:.2f}x")
    print(f"  {'  less its start-up':30} {GIB / (through_run - start_up) / 1e9:8.2f}"
          f"   {plain / (through_run - start_up):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
