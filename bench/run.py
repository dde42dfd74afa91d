"""Issue 10's table in one run: every measure against a baseline measured in the same run.

    python bench/run.py              # 10M rows, 4 GiB streams, 10 timed runs per figure
    python bench/run.py --quick      # CI: tiny sizes, 1 run: proves it works, times mean nothing
    python bench/run.py --home DIR   # keep the server and its generated tables in DIR for reuse

The runner starts its own embedded server (in a temporary JOBS_HOME unless --home) for
the one-shot commands, and builds two tables of runs over the same names with
generate_series, each in a private schema: a large one (10M rows) and a small one
(10k rows) whose times are the database rows' baselines.

Command times are medians of hyperfine runs (`-N`, no shell) when hyperfine is on the
PATH (Debian: apt-get install hyperfine), else of the runner's own loop. Each command
and its baseline are timed in alternating batches, so a load that comes and goes on a
shared machine hits both alike: the ratio is what counts, not the milliseconds.
Database times are the server's own (EXPLAIN ANALYZE: planning + execution), never
the client's wall clock. Throughputs are net of the fixed start-up: each pipeline is
also timed moving 0 bytes, and the difference moves the bytes.

The exit status is 0 whatever the timings: CI runs --quick to keep this working, and
a busy CI machine must not fail a build. bench/README.md records a full run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import psycopg
from psycopg import sql

from jobs_cli import monitor, runs, server as embedded
from jobs_cli.migrations import migrate

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
JOBS_CLI = str(Path(sys.executable).parent / "jobs-cli")
NAME = "bench"  # the job the one-shot commands ask about
MIB = 1024**2


@dataclass(frozen=True)
class Sizes:
    runs: int = 10  # timed runs per command figure
    # Per throughput figure: as the scheduler places them, one run differs from the
    # next by up to a third (see throughput_rows), which 10 runs leave at ±5% in a ratio.
    stream_runs: int = 20
    db_runs: int = 31  # EXPLAIN ANALYZE runs per statement
    fresh_runs: int = 10  # fresh clusters created, per side
    large_rows: int = 10_000_000
    small_rows: int = 10_000
    names: int = 1_000
    stream_bytes: int = 4096 * MIB
    rss_bytes: int = 1024 * MIB


QUICK = Sizes(runs=1, stream_runs=1, db_runs=1, fresh_runs=1, large_rows=4_000, small_rows=400,
              names=40, stream_bytes=8 * MIB, rss_bytes=8 * MIB)


@dataclass
class Row:
    measure: str
    baseline: str
    ours: str
    ratio: float | None
    goal: str
    holds: bool | None  # None: for information


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *args) -> None:
        row = Row(*args)
        self.rows.append(row)
        print(f"  {row.measure}: {row.ours} vs {row.baseline}"
              + (f" = {row.ratio:.2f}x" if row.ratio is not None else ""), file=sys.stderr)

    def table(self) -> str:
        lines = ["| measure | baseline | ours | ratio | goal | holds |",
                 "|---|---|---|---|---|---|"]
        for row in self.rows:
            ratio = "" if row.ratio is None else f"{row.ratio:.2f}x"
            holds = {True: "yes", False: "**no**", None: "(info)"}[row.holds]
            lines.append(f"| {row.measure} | {row.baseline} | {row.ours} | {ratio} | "
                         f"{row.goal} | {holds} |")
        return "\n".join(lines)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


# -- timing commands -------------------------------------------------------------

class Timer:
    """Median wall times of commands, hyperfine's when it is installed."""

    def __init__(self, env: dict[str, str], runs: int) -> None:
        self.env = env
        self.runs = runs
        self.hyperfine = shutil.which("hyperfine")

    def medians(self, commands: dict[str, list[str]]) -> dict[str, float]:
        """label -> median seconds; the commands take turns in up to 5 batches."""
        times: dict[str, list[float]] = {label: [] for label in commands}
        batches = min(self.runs, 5)
        for batch in range(batches):
            per_batch = self.runs // batches + (batch < self.runs % batches)
            for label, argv in commands.items():
                times[label] += self._time(argv, per_batch, warmup=batch == 0 and self.runs > 1)
        return {label: statistics.median(found) for label, found in times.items()}

    def _time(self, argv: list[str], runs: int, warmup: bool) -> list[float]:
        if self.hyperfine:
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                subprocess.run([self.hyperfine, "-N", "--style", "none", "--runs", str(runs),
                                "--warmup", str(int(warmup)), "--export-json", out.name,
                                shlex.join(argv)],
                               env=self.env, check=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
                return json.load(open(out.name))["results"][0]["times"]
        if warmup:
            self.once(argv)
        return [self.once(argv) for _ in range(runs)]

    def once(self, argv: list[str]) -> float:
        began = time.perf_counter()
        subprocess.run(argv, env=self.env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        return time.perf_counter() - began


# -- the server and its data ------------------------------------------------------

@contextmanager
def bench_home(path: str | None) -> Iterator[Path]:
    if path:
        home = Path(path).absolute()
        home.mkdir(parents=True, exist_ok=True)
        home.chmod(0o755)
        yield home
        return
    home = Path(tempfile.mkdtemp(prefix="jobs-cli-bench-"))
    home.chmod(0o755)  # as root the server runs as another user, who must enter it
    try:
        yield home
    finally:
        if (home / "data" / "postmaster.pid").exists():
            embedded.EmbeddedServer(home).stop()
        shutil.rmtree(home, ignore_errors=True)


# An original-style table (see docs: adopting an existing table) with the lease
# column, so that the rows can be inserted before any index exists and `init`
# then adopts them: faster than maintaining every index row by row, and it
# measures how long adopting 10M rows takes.
BARE_TABLE = """
CREATE TABLE {table} (
    id serial PRIMARY KEY, name text NOT NULL, start_date timestamptz NOT NULL,
    end_date timestamptz, message text, status text, records_processed integer,
    source text NOT NULL, destination text NOT NULL, lease_until timestamptz)
"""

# Each name runs once every `names` rows, 36 s apart overall; 95% succeed. The newest
# run of one name in twenty is unfinished: live, dead, or unsupervised (no lease).
GENERATE = """
INSERT INTO {table} (name, status, start_date, end_date, records_processed, source,
                     destination, message, lease_until)
SELECT 'job_' || lpad((i %% %(names)s)::text, 4, '0'),
       status,
       start_date,
       CASE WHEN status <> 'in_progress' THEN start_date + (i %% 600) * interval '1 second' END,
       i %% 5000, 'erp', 'dwh',
       CASE WHEN status = 'error' THEN 'source unreachable' END,
       CASE WHEN status = 'in_progress' AND i %% 3 = 0 THEN now() + interval '1 minute'
            WHEN status = 'in_progress' AND i %% 3 = 1 THEN now() - interval '1 hour' END
FROM generate_series(1, %(rows)s) AS i,
     LATERAL (SELECT now() - (%(rows)s - i) * interval '36 seconds' AS start_date) s,
     LATERAL (SELECT CASE
         WHEN i > %(rows)s - %(names)s AND i %% 20 = 0 THEN 'in_progress'
         WHEN i %% 20 = 7 THEN 'error'
         ELSE 'success' END AS status) t
"""


def fill(conn: psycopg.Connection, schema: str, rows: int, names: int) -> None:
    """Insert generated runs into an existing jobs table (tests use it too)."""
    conn.execute(runs.statement(GENERATE, schema), {"rows": rows, "names": names})
    # As autovacuum would: statistics for the planner, a visibility map for index-only scans.
    conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(schema, "jobs")))


def generate(conn: psycopg.Connection, schema: str, rows: int, names: int) -> None:
    """A schema holding `rows` runs over `names` names; reused when a kept one matches."""
    label = f"jobs-cli bench: {rows} rows, {names} names, {zlib.crc32(GENERATE.encode()):x}"
    found = conn.execute("SELECT obj_description(to_regnamespace(%s), 'pg_namespace')",
                         (schema,)).fetchone()[0]
    if found == label:
        migrate(conn, schema)  # kept from an earlier run: brought up to date
        return
    began = time.monotonic()
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    conn.execute(runs.statement(BARE_TABLE, schema))
    conn.execute(runs.statement(GENERATE, schema), {"rows": rows, "names": names})
    generated = time.monotonic()
    migrate(conn, schema)
    adopted = time.monotonic()
    conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(schema, "jobs")))
    conn.execute(sql.SQL("COMMENT ON SCHEMA {} IS {}").format(sql.Identifier(schema),
                                                              sql.Literal(label)))
    print(f"  {schema}: {rows:,} runs over {names:,} names generated in "
          f"{generated - began:.1f} s, adopted by init in {adopted - generated:.1f} s",
          file=sys.stderr)


# -- database time ---------------------------------------------------------------

def explain_ms(conn: psycopg.Connection, statements: dict[str, sql.Composable],
               params: dict | list[dict], repeats: int) -> dict[str, float]:
    """Median planning + execution time in ms (the server's) of each statement, key ->
    ms, after one warm-up run. The statements take turns, so a passing load weighs
    on them alike; a list of parameters is taken in turn (different names, pages)."""
    choices = params if isinstance(params, list) else [params]
    times: dict[str, list[float]] = {key: [] for key in statements}
    for number in range(repeats + 1):
        for key, statement in statements.items():
            explain = sql.SQL("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) ") + statement
            (plan,) = conn.execute(explain, choices[number % len(choices)]).fetchone()
            times[key].append(plan[0]["Planning Time"] + plan[0]["Execution Time"])
    return {key: statistics.median(found[1:]) for key, found in times.items()}


def statements() -> dict[str, list[tuple[str, dict | list[dict]]]]:
    """What each command asks the database: label -> [(template, params)].

    Also used by the tests, which check the plans' shapes on a small table.
    """
    summaries, summary_params = monitor.summaries_query()
    checked, check_params = monitor.summaries_query(["job_0001", "job_0005", "job_0009"])
    listing = [monitor.list_query(**filters) for filters in
               ({}, {"name": "job_0004"}, {"name": "job_000*"}, {"status": "error"},
                {"status": "dead"}, {"name": "job_0004", "status": "error"})]
    return {
        "status": [(summaries, summary_params)],
        "metrics": [(summaries, summary_params), (monitor.ENDED_COUNTS, {})],
        "last-success": [(runs.NEXT_WATERMARK, [{"name": f"job_{number:04d}", "lookback": 0}
                                                for number in range(0, 40, 3)])],
        "list": listing[:1],
        "list (filters)": listing[1:],
        "check": [(checked, check_params)],
        "show": [(monitor.SELECT_RUN_VIEW, {"id": 4})],
    }


def database_times(conn: psycopg.Connection, schemas: list[str],
                   repeats: int) -> dict[str, dict[str, float]]:
    """schema -> label -> ms, each label's statements summed."""
    found = {schema: {} for schema in schemas}
    for label, parts in statements().items():
        for template, params in parts:
            times = explain_ms(conn, {schema: runs.statement(template, schema)
                                      for schema in schemas}, params, repeats)
            for schema, ms in times.items():
                found[schema][label] = found[schema].get(label, 0.0) + ms
    return found


def database_rows(report: Report, conn: psycopg.Connection, sizes: Sizes) -> None:
    small, large = "bench_small", "bench_large"
    print("database:", file=sys.stderr)
    generate(conn, small, sizes.small_rows, sizes.names)
    generate(conn, large, sizes.large_rows, sizes.names)
    times = database_times(conn, [small, large], sizes.db_runs)
    before, after = times[small], times[large]
    at = f"{sizes.large_rows:,} rows"
    base = f"{sizes.small_rows:,} rows"

    def row(label: str, measure: str, goal: str, limit_ms: float | None,
            limit_ratio: float | None) -> None:
        ratio = after[label] / before[label]
        holds = ((limit_ms is None or after[label] <= limit_ms)
                 and (limit_ratio is None or ratio <= limit_ratio))
        if limit_ms is None and limit_ratio is None:
            holds = None
        report.add(f"{measure} database time, {sizes.names:,} names",
                   f"{before[label]:.2f} ms at {base}", f"{after[label]:.2f} ms at {at}",
                   ratio, goal, holds)

    row("status", "`status`", f"≤ 50 ms at {at} and ≤ 1.2x", 50, 1.2)
    row("metrics", "`metrics`", f"≤ 50 ms at {at}", 50, None)
    row("last-success", "`last-success`", "≤ 1.5x", None, 1.5)
    row("list", "`list`", "≤ 1.5x", None, 1.5)
    row("list (filters)", "`list` with --name/--status (6 kinds)", "(info)", None, None)
    row("check", "`check` (3 names)", "(info)", None, None)
    row("show", "`show`", "(info)", None, None)


# -- one-shot commands -------------------------------------------------------------

# The baselines: the least a Python program does for the same answer.
BASELINE_LAST_SUCCESS = """
import sys
import click
import psycopg

with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    row = conn.execute(sys.argv[2], {"name": sys.argv[3], "lookback": 0}).fetchone()
print(row[0] if row else 0)
"""

# The statements `jobs-cli run` sends (recorded from runs.claim_run and
# runs.record_result: the claim, then the result, each one pipelined transaction,
# synced where the claim awaits an answer) around the same subprocess, with a run
# key of its own each time.
BASELINE_RUN = """
import json
import subprocess
import sys
import time
import uuid

import click
import psycopg

conninfo, sent = sys.argv[1], json.loads(open(sys.argv[2]).read())
key = uuid.uuid4().hex
with psycopg.connect(conninfo, autocommit=True) as conn:
    conn.prepare_threshold = None
    with conn.pipeline() as pipeline, conn.transaction():
        for item in sent["claim"]:
            if item is None:
                pipeline.sync()  # where the claim waits for an answer: a round trip
            else:
                conn.execute(item[0], {**item[1], "run_key": key})
    began = time.monotonic()
    child = subprocess.run(sys.argv[3:], stderr=subprocess.PIPE)
    elapsed = time.monotonic() - began
    output = child.stderr[-10240:].decode(errors="replace")
    with conn.pipeline(), conn.transaction():
        for text, params in filter(None, sent["result"]):
            conn.execute(text, {**params, "run_key": key, "elapsed": elapsed, "output": output})
sys.exit(child.returncode)
"""


def run_statements(conninfo: str, schema: str) -> dict[str, list]:
    """The SQL and parameters of a claim and of a result, as `run` sends them, with
    None where a pipeline is synced (an answer awaited mid-transaction)."""
    import socket
    import uuid

    sent: list = []
    sync = psycopg.Pipeline.sync

    def recorded_sync(pipeline: psycopg.Pipeline) -> None:
        sent.append(None)
        sync(pipeline)

    class Recording(psycopg.Cursor):
        def execute(self, query, params=None, **options):
            text = query if isinstance(query, str) else query.as_string(self)
            sent.append((text, params))
            return super().execute(query, params, **options)

    with psycopg.connect(conninfo, autocommit=True, cursor_factory=Recording) as conn:
        invocation = runs.Invocation(
            run_key=uuid.uuid4().hex, name="bench-run-baseline", source="", destination="",
            command="true", host=socket.gethostname(), pid=os.getpid(), username="bench")
        psycopg.Pipeline.sync = recorded_sync
        try:
            claim = runs.claim_run(conn, schema, invocation, lease_seconds=90.0,
                                   allow_overlap=False)
        finally:
            psycopg.Pipeline.sync = sync
        claimed = sent[:]
        sent.clear()
        runs.record_result(conn, schema, runs.RunResult(
            invocation=invocation, run_id=claim.run.id, start_date=claim.run.start_date,
            elapsed=0.0, status="success", exit_code=0, headline="exit code 0", output=""))
    return {"claim": claimed, "result": sent}


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def command_rows(report: Report, timer: Timer, conninfo: str, conn: psycopg.Connection,
                 scripts: Path, sizes: Sizes) -> None:
    (scripts / "last_success.py").write_text(BASELINE_LAST_SUCCESS)
    (scripts / "run.py").write_text(BASELINE_RUN)
    last_sql = runs.statement(runs.NEXT_WATERMARK, "public").as_string(conn)
    cli = [JOBS_CLI, "last-success", NAME]

    print("one-shot commands:", file=sys.stderr)
    found = timer.medians({
        "cli": cli,
        "baseline": [PYTHON, str(scripts / "last_success.py"), conninfo, last_sql, NAME],
    })
    report.add("`jobs-cli last-success NAME`", f"Python: click + psycopg, connect, query "
               f"({ms(found['baseline'])})", ms(found["cli"]),
               found["cli"] / found["baseline"], "≤ 1.05x", found["cli"] / found["baseline"] <= 1.05)

    found = timer.medians({"cli": [JOBS_CLI, "--help"], "baseline": [PYTHON, "-c", "import click"]})
    ratio = found["cli"] / found["baseline"]
    report.add("`jobs-cli --help`", f"`python -c 'import click'` ({ms(found['baseline'])})",
               ms(found["cli"]), ratio, "≤ 1.25x", ratio <= 1.25)

    (scripts / "run.json").write_text(json.dumps(run_statements(conninfo, "public"),
                                                 default=str))
    found = timer.medians({
        "cli": [JOBS_CLI, "run", "--name", "bench-run", "--", "true"],
        "baseline": [PYTHON, str(scripts / "run.py"), conninfo, str(scripts / "run.json"),
                     "true"],
    })
    ratio = found["cli"] / found["baseline"]
    report.add("`jobs-cli run --name N -- true`", "Python: the same statements and "
               f"subprocess ({ms(found['baseline'])})", ms(found["cli"]), ratio, "≤ 1.10x",
               ratio <= 1.10)

    psql = shutil.which("psql")
    if psql:
        found = timer.medians({"cli": cli, "psql": [psql, conninfo, "-tAc", last_sql.replace(
            "%(name)s", f"'{NAME}'").replace("%(lookback)s", "0")]})
        report.add("for information: `jobs-cli last-success`", f"`psql -tAc` ({ms(found['psql'])})",
                   ms(found["cli"]), found["cli"] / found["psql"], "report", None)


def throughput_rows(report: Report, timer: Timer, sizes: Sizes) -> None:
    """stdout and stderr of `run` through a pipe, net of each pipeline's fixed cost.

    Each is measured twice. As the scheduler places the processes, which is what a
    user gets but swings both sides between 1 and 3 GB/s from one run to the next on
    2 cores: a pipe between two processes on one core is 2.5x as fast as across two,
    and where they land is chance. And with the whole pipeline on one core (taskset),
    steady to a few percent: there every process's CPU time adds up, so it shows
    what the wrapper costs.
    """
    size = sizes.stream_bytes
    taskset = shutil.which("taskset")
    for placement, prefix in (("", ""), (" (on one core)", f"{taskset} -c 0 ")):
        if prefix and not taskset:
            continue
        stream_rows(report, timer, size, placement, prefix)


def stream_rows(report: Report, timer: Timer, size: int, placement: str, prefix: str) -> None:
    run = f"{shlex.quote(JOBS_CLI)} run --name bench-stream --"
    # stdout also with a shell between that only waits for the command (dash does not
    # exec a lone command), as the wrapper waits: what a parent process alone costs.
    shapes = {
        "stdout": ("head -c {n} /dev/zero | cat >/dev/null",
                   run + " head -c {n} /dev/zero | cat >/dev/null",
                   "the command run directly", "≥ 0.98x", 0.98,
                   "sh -c 'head -c {n} /dev/zero' | cat >/dev/null"),
        "stderr": ("sh -c 'exec head -c {n} /dev/zero >&2' 2>&1 | cat >/dev/null",
                   run + " sh -c 'exec head -c {n} /dev/zero >&2' 2>&1 | cat >/dev/null",
                   "`command 2>&1 \\| cat >/dev/null`", "≥ 1.0x", 1.0, None),
    }
    print(f"throughput{placement}:", file=sys.stderr)
    for stream, (plain, wrapped, baseline, goal, limit, nested) in shapes.items():
        def argv(script: str) -> list[str]:
            return shlex.split(prefix) + sh(script)

        # The wrapper's fixed cost is larger after a wait (see bench/README.md), so it
        # is also measured over a command that waits as long as the plain pipeline runs.
        wait = f"sleep {timer.once(argv(plain.format(n=size))):.2f}"
        found = timer.medians({
            "plain": argv(plain.format(n=size)), "wrapped": argv(wrapped.format(n=size)),
            "plain0": argv(plain.format(n=0)), "wrapped0": argv(wrapped.format(n=0)),
            "plain_wait": argv(f"{wait} | cat >/dev/null"),
            "wrapped_wait": argv(f"{run} {wait} | cat >/dev/null"),
            **({"nested": argv(nested.format(n=size))} if nested else {})})
        at_once = found["wrapped0"] - found["plain0"]
        after_wait = found["wrapped_wait"] - found["plain_wait"]
        measure = (f"{stream} throughput of `run`{placement}, {size // MIB:,} MiB through a "
                   f"pipe to `cat`, net of the wrapper's fixed cost ({ms(at_once)} at once, "
                   f"{ms(after_wait)} after a wait as long)")
        plain_net = found["plain"] - found["plain0"]
        wrapped_net = found["wrapped"] - found["plain0"] - after_wait
        if min(plain_net, wrapped_net) <= 0:  # too few bytes to tell from the noise
            report.add(measure, baseline, "(too small to measure)", None, goal, None)
            continue
        ratio = plain_net / wrapped_net
        print(f"  {stream}: {ratio:.2f}x; {plain_net / (wrapped_net + after_wait - at_once):.2f}x "
              "net of the fixed cost at once", file=sys.stderr)
        report.add(measure, f"{baseline} ({size / plain_net / 1e9:.2f} GB/s)",
                   f"{size / wrapped_net / 1e9:.2f} GB/s", ratio, goal, ratio >= limit)
        if nested and (nested_net := found["nested"] - found["plain0"]) > 0:
            report.add(f"for information: {stream}{placement} with a waiting parent between "
                       f"(`{nested.format(n='N')}`, as with the wrapper)".replace("|", "\\|"),
                       f"{baseline} ({size / plain_net / 1e9:.2f} GB/s)",
                       f"{size / nested_net / 1e9:.2f} GB/s", plain_net / nested_net, "report",
                       None)


def peak_rss_row(report: Report, env: dict[str, str], sizes: Sizes) -> None:
    """Peak RSS of the wrapper (wait4 reports the largest of it and its children)."""
    size = sizes.rss_bytes
    argv = [JOBS_CLI, "run", "--name", "bench-rss", "--", "sh", "-c",
            f"exec head -c {size} /dev/zero >&2"]
    peaks = []
    for _ in range(2):
        child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        _, _, usage = os.wait4(child.pid, 0)
        peaks.append(usage.ru_maxrss / 1024)
    peak = max(peaks)
    report.add(f"wrapper peak RSS with {size // MIB:,} MiB of stderr", "—", f"{peak:.1f} MB",
               None, "≤ 40 MB", peak <= 40)


# -- the first call on a fresh JOBS_HOME --------------------------------------------

def fresh_row(report: Report, env: dict[str, str], home: Path, sizes: Sizes) -> None:
    """`jobs-cli` creating its cluster, against initdb --no-sync + pg_ctl start -w."""
    server = embedded.EmbeddedServer(home)
    user = server._server_user()
    bindir = server._bindir(user)
    as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}

    def ours() -> float:
        fresh = Path(tempfile.mkdtemp(prefix="fresh-", dir=home))
        fresh.chmod(0o755)
        try:
            began = time.perf_counter()
            subprocess.run([JOBS_CLI, "last-success", NAME, "--default", "0"],
                           env={**env, "JOBS_HOME": str(fresh)}, check=True,
                           stdout=subprocess.DEVNULL)
            return time.perf_counter() - began
        finally:
            embedded.EmbeddedServer(fresh).stop()
            shutil.rmtree(fresh, ignore_errors=True)

    def baseline() -> float:
        fresh = Path(tempfile.mkdtemp(prefix="fresh-", dir=home))
        fresh.chmod(0o755)
        data = fresh / "data"
        data.mkdir(mode=0o700)
        if user:
            os.chown(data, user.pw_uid, user.pw_gid)
            os.chown(fresh, user.pw_uid, user.pw_gid)

        def pg(*argv: str) -> None:
            subprocess.run([str(bindir / argv[0]), *argv[1:]], check=True, cwd=fresh,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True, **as_user)
        try:
            began = time.perf_counter()
            pg("initdb", "--no-sync", "-D", str(data), "-U", "postgres", "-A", "trust")
            pg("pg_ctl", "-D", str(data), "-l", str(fresh / "log"), "-o",
               f"-k {fresh} -c listen_addresses=''", "-w", "-s", "start")
            took = time.perf_counter() - began
            pg("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "-s", "stop")
            return took
        finally:
            shutil.rmtree(fresh, ignore_errors=True)

    print("fresh JOBS_HOME:", file=sys.stderr)
    times: dict[str, list[float]] = {"ours": [], "baseline": []}
    for _ in range(sizes.fresh_runs):
        times["baseline"].append(baseline())
        times["ours"].append(ours())
    found = {label: statistics.median(values) for label, values in times.items()}
    ratio = found["ours"] / found["baseline"]
    report.add("first call on a fresh `JOBS_HOME` (creates the embedded cluster)",
               f"`initdb --no-sync` + `pg_ctl start -w` ({ms(found['baseline'])})",
               ms(found["ours"]), ratio, "≤ 1.25x", ratio <= 1.25)


# -- main ------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and 1 run, for CI: checks the runner, not the speed")
    parser.add_argument("--home", help="JOBS_HOME to use and keep (default: a temporary one)")
    parser.add_argument("--runs", type=int, help="timed runs per command figure")
    parser.add_argument("--stream-runs", type=int, help="timed runs per throughput figure")
    parser.add_argument("--large-rows", type=int, help="rows of the large table")
    parser.add_argument("--stream-mib", type=int, help="MiB moved per throughput run")
    parser.add_argument("--only", choices=("commands", "throughput", "rss", "fresh", "database"),
                        action="append", help="measure only these parts (repeatable)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args()

    sizes = QUICK if args.quick else Sizes()
    overrides = {"runs": args.runs, "stream_runs": args.stream_runs,
                 "large_rows": args.large_rows,
                 "stream_bytes": args.stream_mib and args.stream_mib * MIB}
    sizes = Sizes(**{**vars(sizes), **{k: v for k, v in overrides.items() if v}})
    parts = set(args.only or ("commands", "throughput", "rss", "fresh", "database"))
    report = Report()
    began = time.monotonic()
    with bench_home(args.home) as home:
        conninfo = embedded.EmbeddedServer(home).ensure_running()
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("JOBS_", "PG"))}
        # Installed packages come with bytecode; a source checkout must not be
        # compiled at every start (PYTHONDONTWRITEBYTECODE would force that).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        subprocess.run([PYTHON, "-m", "compileall", "-q", str(HERE.parent / "jobs_cli")],
                       check=True)
        env.update(JOBS_HOME=str(home), JOBS_HEARTBEAT_SECONDS="30")
        timer = Timer(env, sizes.runs)
        # The first call applies the schema; a success gives last-success an answer.
        subprocess.run([JOBS_CLI, "run", "--name", NAME, "--", "true"], env=env, check=True)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            if "commands" in parts:
                scripts = home / "bench-scripts"
                scripts.mkdir(exist_ok=True)
                command_rows(report, timer, conninfo, conn, scripts, sizes)
            if "throughput" in parts:
                throughput_rows(report, Timer(env, sizes.stream_runs), sizes)
            if "rss" in parts:
                peak_rss_row(report, env, sizes)
            if "fresh" in parts:
                fresh_row(report, env, home, sizes)
            if "database" in parts:
                database_rows(report, conn, sizes)

    print(f"\n{report.table()}\n")
    print(f"{'quick mode: sizes too small for the timings to mean anything; ' if args.quick else ''}"
          f"hyperfine: {'yes' if timer.hyperfine else 'no (own timing loop)'}; "
          f"{sizes.runs} runs per command figure, {sizes.stream_runs} per throughput figure; "
          f"{time.monotonic() - began:.0f} s in all")
    if args.json:
        Path(args.json).write_text(json.dumps([vars(row) for row in report.rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
