"""list, show, status, check, metrics and watch as real subprocesses."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from seeding import add_run

from jobs_cli.monitor import RUN_VIEW_FIELDS
from jobs_cli.render import NAME_WIDTH

UNREACHABLE = {"JOBS_DATABASE_URL": "host=/nonexistent/socket/dir port=1 dbname=jobs"}


def one_line_error(result, code: int) -> None:
    assert result.returncode == code, result
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def history(conn):
    add_run(conn, "orders_sync", ago=7200, took=60, records=10)
    # Ended 59m30s ago: the text says "59m" for the half minute a loaded machine may take.
    add_run(conn, "orders_sync", "error", ago=3600, took=30, message="source down\nretry later")
    add_run(conn, "invoices", ago=600, took=30, records=3, output="tail\n", command="inv.sh",
            host="etl1", pid=42)
    add_run(conn, "invoices", "in_progress", ago=60, lease=60)


def test_list_table_is_plain_when_piped(cli, history):
    # Wide enough for every column's header on one line, whatever the time of day.
    result = cli("list", env={"COLUMNS": "200"})
    assert result.returncode == 0 and "\x1b" not in result.stdout
    rows = [line.split()[:3] for line in result.stdout.splitlines()[2:]]
    assert rows == [["4", "invoices", "▶"], ["3", "invoices", "✓"], ["2", "orders_sync", "✗"],
                    ["1", "orders_sync", "✓"]]
    assert "source down" in result.stdout and "retry later" not in result.stdout


def test_list_json_and_csv_have_every_field(cli, history):
    rows = json.loads(cli("list", "--json").stdout)
    assert [(row["id"], row["state"]) for row in rows] == [
        (4, "live"), (3, "success"), (2, "error"), (1, "success")]
    assert all(tuple(row) == RUN_VIEW_FIELDS for row in rows)
    assert rows[0]["start_date"].endswith("Z") and rows[2]["message"] == "source down\nretry later"
    table = list(csv.DictReader(io.StringIO(cli("list", "--csv").stdout, newline="")))
    assert [row["name"] for row in table] == [row["name"] for row in rows]
    assert table[2]["message"] == "source down\nretry later" and table[0]["end_date"] == ""


def test_list_filters(cli, history):
    def ids(*options: str) -> list[int]:
        result = cli("list", "--json", *options)
        assert result.returncode == 0, result.stderr
        return [row["id"] for row in json.loads(result.stdout)]

    assert ids("--name", "orders_sync") == [2, 1]
    assert ids("--name", "inv*") == [4, 3]
    assert ids("--status", "error") == [2]
    assert ids("--status", "in_progress") == [4]
    assert ids("--since", "90m") == [4, 3, 2]
    assert ids("--limit", "1") == [4]
    assert ids("--name", "*s*", "--status", "success", "--limit", "1") == [3]


@pytest.mark.parametrize("options", [("--since", "lately"), ("--name", "")])
def test_list_bad_input_is_one_line(cli, options):
    one_line_error(cli("list", *options), 2)


def test_list_times_are_local_or_utc(cli, history, conn):
    started = conn.execute("SELECT start_date FROM jobs WHERE id = 1").fetchone()[0]
    kathmandu = {"TZ": "Asia/Kathmandu", "COLUMNS": "200"}  # UTC+05:45
    local = cli("list", "--name", "orders_sync", "--status", "success", env=kathmandu).stdout
    in_utc = cli("list", "--name", "orders_sync", "--status", "success", "--utc",
                 env=kathmandu).stdout
    assert started.astimezone(timezone(timedelta(hours=5, minutes=45))).strftime("%H:%M") in local
    assert started.astimezone(timezone.utc).strftime("%H:%M") in in_utc and "Z (2h ago)" in in_utc


def test_show_times_are_local_or_utc(cli, history, conn):
    started = conn.execute("SELECT start_date FROM jobs WHERE id = 3").fetchone()[0]
    kathmandu = {"TZ": "Asia/Kathmandu"}  # UTC+05:45
    local = cli("show", "3", env=kathmandu).stdout
    in_utc = cli("show", "3", "--utc", env=kathmandu).stdout
    shape = "%Y-%m-%d %H:%M:%S"
    local_start = started.astimezone(timezone(timedelta(hours=5, minutes=45))).strftime(shape)
    utc_start = started.astimezone(timezone.utc).strftime(shape)
    assert f"started      {local_start} (" in local and utc_start not in local
    assert f"started      {utc_start}Z (" in in_utc and local_start not in in_utc


def test_show(cli, history):
    result = cli("show", "3")
    assert result.returncode == 0
    for text in ("invoices", "inv.sh", "etl1", "42", "30s", "output (tail):\ntail"):
        assert text in result.stdout
    assert json.loads(cli("show", "3", "--json").stdout)["output"] == "tail\n"
    one_line_error(cli("show", "99"), 1)


def test_status(cli, history):
    result = cli("status", env={"COLUMNS": "160"})
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["job", "last", "run"]
    assert lines[2].startswith("orders_sync") and "last run failed 59m" in lines[2]
    assert lines[3].startswith("invoices")
    # Started 60 s ago when seeded, a few seconds more by now.
    assert re.search(r"▶ live 1m(\d+s)? ago", lines[3]) and "1 live" in lines[3]
    assert "✓✗" in lines[2]
    summaries = json.loads(cli("status", "--json").stdout)
    assert [s["name"] for s in summaries] == ["orders_sync", "invoices"]
    assert summaries[0]["problems"][0].startswith("last run failed 59m")
    assert summaries[1]["recent_states"] == ["live", "success"]


def test_status_falls_back_to_ascii(cli, history):
    result = cli("status", env={"PYTHONIOENCODING": "ascii", "COLUMNS": "160"})
    assert result.returncode == 0 and "+x" in result.stdout


# -- tables: one line per row, whole names when piped ------------------------------

LONG_NAME = "nightly_orders_sync_from_the_erp_into_the_warehouse_full_run"  # 60 characters


def shell(cli_env, script: str, columns: int | None = None) -> subprocess.CompletedProcess:
    """`script` in sh, stdout a pipe; COLUMNS unset, as in a shell that does not export it."""
    env = {k: v for k, v in cli_env.items() if k != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True,
                          timeout=60)


def rows_of(table: str) -> list[str]:
    """A table's rows, after checking that it is one header line, a rule, then rows."""
    header, rule, *rows = table.splitlines()
    assert header.split()[0] in ("id", "job", "i…", "j…", "…") and set(rule) == {"─"}
    return rows


@pytest.fixture
def long_names(conn):
    add_run(conn, LONG_NAME, ago=7200, took=60, message="first line\nsecond line")
    add_run(conn, LONG_NAME, "error", ago=3600, took=5, message="boom " * 100,
            source="s" * 50)
    add_run(conn, "short", ago=600, took=30, records=3, message="\n\nafter blank lines\n")


def test_piped_list_keeps_names_whole_for_grep(cli_env, long_names):
    assert shell(cli_env, f"jobs-cli list --name {LONG_NAME} | grep -c {LONG_NAME}"
                 ).stdout == "2\n"
    result = shell(cli_env, "jobs-cli list")
    assert result.returncode == 0 and "\x1b" not in result.stdout
    rows = rows_of(result.stdout)
    assert [row.split()[:2] for row in rows] == [["3", "short"], ["2", LONG_NAME],
                                                 ["1", LONG_NAME]]
    assert rows[0].rstrip().endswith(" after blank lines")
    assert rows[2].rstrip().endswith(" first line") and "second line" not in result.stdout
    assert "s" * 50 + " → dwh" in rows[1] and "boom boom" in rows[1]
    awk = shell(cli_env, "jobs-cli list --status error | awk 'NR > 2 { print $2 }'")
    assert awk.stdout == f"{LONG_NAME}\n"


def test_piped_status_has_one_line_per_job(cli_env, long_names):
    rows = rows_of(shell(cli_env, "jobs-cli status").stdout)
    assert [row.split()[0] for row in rows] == [LONG_NAME, "short"]
    assert "last run failed" in rows[0]


@pytest.mark.parametrize("columns", [60, 20, 5])
def test_narrow_tables_cut_cells_instead_of_wrapping(cli_env, long_names, columns):
    runs = rows_of(shell(cli_env, "jobs-cli list", columns).stdout)
    assert [row.split()[0] for row in runs] == ["3", "2", "1"]
    jobs = rows_of(shell(cli_env, "jobs-cli status", columns).stdout)
    assert len(jobs) == 2 and jobs[1].startswith("short"[:columns - 1])
    assert all(len(row) <= columns for row in runs + jobs)
    assert all(LONG_NAME not in row and "…" in row for row in runs[1:] + jobs[:1])
    if columns == 60:  # names cut last: state and age stay, the problem is readable
        assert "✗ error" in runs[1] and "1h ago" in runs[1] and "second" not in "".join(runs)
        assert LONG_NAME[:NAME_WIDTH - 1] in runs[1] and "last run failed" in jobs[0]


@pytest.fixture
def lots(conn):
    """Enough of everything that each view's output overflows a pipe's buffer."""
    for number in range(400):
        add_run(conn, f"{number:03}_{'x' * 196}", ago=7200 - number, took=5, records=number,
                message="m" * 300, output="o" * 300)
    add_run(conn, "verbose", output="a line of output\n" * 10000)


@pytest.mark.parametrize("unbuffered", ["", "1"])
@pytest.mark.parametrize("command", ["list --limit 500", "list --limit 500 --json",
                                     "list --limit 500 --csv", "status", "show 401"])
def test_every_view_exits_1_when_the_reader_goes_away(cli_env, lots, command, unbuffered):
    """Like `jobs-cli list | head -1`, the same for tables and the others, with or without
    PYTHONUNBUFFERED (unbuffered, rich's one big write came back short, unnoticed)."""
    process = subprocess.Popen(["jobs-cli", *command.split()], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE,
                               env={**cli_env, "PYTHONUNBUFFERED": unbuffered})
    assert len(process.stdout.read(1000)) == 1000
    process.stdout.close()
    assert process.wait(timeout=60) == 1
    assert process.stderr.read() == b""


@pytest.mark.parametrize("names, options, code, line", [
    (["invoices"], ["--max-age", "1h"], 0, "OK - invoices: last success 9m"),
    (["invoices"], ["--max-age", "1h", "--warn-age", "5m"], 1,
     "WARNING - invoices: last success 9m"),
    (["orders_sync"], ["--max-age", "1d"], 2, "CRITICAL - orders_sync: last run failed 59m"),
    (["never"], ["--max-age", "1d"], 2, "CRITICAL - never: no runs recorded (is the name right?)"),
    (["invoices"], ["--max-age", "5m"], 2, "CRITICAL - invoices: last success 9m"),
    (["invoices", "orders_sync", "never"], ["--max-age", "1h"], 2,
     "CRITICAL - orders_sync: last run failed 59m"),
    (["invoices"], ["--max-age", "soon"], 3, "UNKNOWN - Invalid value for '--max-age': invalid duration 'soon'"),
    (["invoices"], ["--max-age", "1h", "--warn-age", "2h"], 3, "UNKNOWN - --warn-age (2h)"),
    (["invoices"], [], 3, "UNKNOWN - Missing option '--max-age'"),
    ([], ["--max-age", "1h"], 3, "UNKNOWN - Missing argument 'NAME...'"),
])
def test_check_outcomes(cli, history, names, options, code, line):
    result = cli("check", *names, *options)
    assert result.returncode == code, result
    assert len(result.stdout.splitlines()) == 1 and result.stdout.startswith(line), result.stdout


def test_check_several_names_mentions_each_problem(cli, history):
    result = cli("check", "invoices", "orders_sync", "never", "--max-age", "1h")
    assert result.stdout.count(": ") == 2 and "never: no runs recorded" in result.stdout
    assert "invoices" not in result.stdout


def test_check_unknown_when_the_database_is_unreachable(cli):
    result = cli("check", "a", "--max-age", "1h", env=UNREACHABLE)
    assert result.returncode == 3 and result.stdout.startswith("UNKNOWN - cannot reach")
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("command", ["list", "show 1", "status", "metrics"])
def test_views_unreachable_database_one_line(cli, command):
    one_line_error(cli(*command.split(), env=UNREACHABLE), 1)


def test_metrics_are_valid_exposition(cli, history):
    result = cli("metrics")
    families = {f.name: f for f in text_string_to_metric_families(result.stdout)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in families.values() for s in family.samples}
    assert samples[("jobs_running", (("job", "invoices"),))] == 1
    assert samples[("jobs_last_run_status", (("job", "orders_sync"), ("status", "error")))] == 1
    assert samples[("jobs_runs_total", (("job", "orders_sync"), ("status", "error")))] == 1
    assert samples[("jobs_last_success_records", (("job", "invoices"),))] == 3
    assert ("jobs_last_success_timestamp_seconds", (("job", "orders_sync"),)) in samples


def test_empty_results_piped_are_a_bare_header(cli):
    assert cli("list").stdout.split() == ["id", "name", "status", "started", "duration", "records",
                                          "source", "→", "destination", "message"]
    assert cli("status").stdout.split()[:3] == ["job", "last", "run"]
    assert cli("list", "--csv").stdout.splitlines() == [",".join(RUN_VIEW_FIELDS)]
    assert cli("list", "--json").stdout == "[]\n"
    assert cli("last-success", "never_ran").stdout == ""


def test_view_helps_do_not_import_psycopg_or_rich(cli_env):
    code = ("import sys; from jobs_cli.cli import cli\n"
            "for command in ('list', 'show', 'status', 'check', 'metrics', 'watch'):\n"
            "    try:\n        cli([command, '--help'])\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('psycopg', 'rich') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], env=cli_env, capture_output=True,
                            text=True)
    assert result.stdout.strip().endswith("[]")


# -- watch under a pseudo-terminal ------------------------------------------------

class Terminal:
    """What a command under a pseudo-terminal has shown so far."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid, self.fd, self.seen = pid, fd, bytearray()

    def read_until(self, wanted: bytes, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while wanted not in self.seen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{wanted!r} not shown; so far: {bytes(self.seen)[-2000:]!r}"
            if select.select([self.fd], [], [], remaining)[0]:
                self.seen += os.read(self.fd, 65536)

    def ctrl_c(self) -> int:
        """Ctrl-C, through the terminal as a person sends it; the exit status."""
        os.write(self.fd, b"\x03")
        return self.exit_status()

    def exit_status(self) -> int:
        """Everything the command still shows, then its exit status."""
        while select.select([self.fd], [], [], 60)[0]:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: the child has gone and the terminal with it
                break
            if not chunk:
                break
            self.seen += chunk
        _, status = os.waitpid(self.pid, 0)
        assert os.WIFEXITED(status), status
        return os.WEXITSTATUS(status)


@contextmanager
def on_a_terminal(env: dict[str, str], *args: str) -> Iterator[Terminal]:
    """`jobs-cli ARGS...` on a 120-column pseudo-terminal; killed if still running at the end."""
    env = {**env, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    pid, fd = pty.fork()
    if pid == 0:  # the child: jobs-cli on the pseudo-terminal
        os.execvpe("jobs-cli", ["jobs-cli", *args], env)
    try:
        yield Terminal(pid, fd)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)


# SGR sequences that set a foreground colour (30-37, 90-97, 38;5;N or 38;2;R;G;B),
# as opposed to the cursor movements any redraw emits.
FOREGROUND_COLOUR = re.compile(rb"\x1b\[(?:[0-9;]*;)?(?:3[0-7]|9[0-7]|38;[25];[0-9;]+)m")


def test_watch_redraws_on_change_and_quits_on_ctrl_c(cli_env, conn):
    add_run(conn, "before_watch")
    with on_a_terminal(cli_env, "watch", "--interval", "10m") as terminal:
        terminal.read_until(b"before_watch")
        assert FOREGROUND_COLOUR.search(terminal.seen), bytes(terminal.seen)
        add_run(conn, "after_watch", "in_progress", ago=1, lease=600)
        terminal.read_until(b"after_watch")  # the notification: the next poll is 10 min away
        assert terminal.ctrl_c() == 0
        assert b"Traceback" not in terminal.seen and b"Aborted" not in terminal.seen


def test_empty_results_say_so_on_a_terminal(cli_env):
    with on_a_terminal(cli_env, "list") as terminal:
        assert terminal.exit_status() == 0
    assert b"jobs-cli: no runs recorded yet" in terminal.seen and b"id" not in terminal.seen
    with on_a_terminal(cli_env, "list", "--name", "x*") as terminal:
        assert terminal.exit_status() == 0
    assert b"jobs-cli: no runs match" in terminal.seen


def test_a_job_that_never_succeeded_says_so_on_a_terminal(cli_env):
    with on_a_terminal(cli_env, "last-success", "never_ran") as terminal:
        assert terminal.exit_status() == 3
    assert b"jobs-cli: 'never_ran' has never succeeded" in terminal.seen


def test_watch_carries_on_when_the_server_restarts(cli_env, home):
    embedded = {key: value for key, value in cli_env.items() if key != "JOBS_DATABASE_URL"}

    def jobs_cli(*args: str) -> None:
        subprocess.run(["jobs-cli", *args], env=embedded, check=True, capture_output=True,
                       timeout=120)

    jobs_cli("start", "before_restart")
    with on_a_terminal(embedded, "watch", "--interval", "1s") as terminal:
        terminal.read_until(b"before_restart")
        jobs_cli("server", "stop")
        jobs_cli("server", "start")
        jobs_cli("start", "after_restart")
        terminal.read_until(b"after_restart", timeout=60)
        assert terminal.ctrl_c() == 0
    assert b"Traceback" not in terminal.seen


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_watch_ended_by_a_signal_shows_the_cursor_again_and_says_so(cli_env, conn, signum):
    add_run(conn, "before_watch")
    with on_a_terminal(cli_env, "watch", "--interval", "10m") as terminal:
        terminal.read_until(b"before_watch")
        os.kill(terminal.pid, signum)
        assert terminal.exit_status() == 128 + signum
    screen = bytes(terminal.seen)
    hide_cursor, show_cursor = b"\x1b[?25l", b"\x1b[?25h"
    assert screen.rindex(show_cursor) > screen.rindex(hide_cursor)
    said = f"jobs-cli: interrupted by {signal.Signals(signum).name}".encode()
    assert screen.count(said) == 1 and screen.rstrip().endswith(said)
    assert b"Traceback" not in screen


def test_watch_is_plain_under_no_color(cli_env, conn):
    add_run(conn, "before_watch")
    with on_a_terminal({**cli_env, "NO_COLOR": "1"}, "watch", "--interval", "1m") as terminal:
        terminal.read_until(b"before_watch")
        assert terminal.ctrl_c() == 0
    assert not FOREGROUND_COLOUR.search(terminal.seen)


def test_watch_shows_limit_unfinished_and_limit_ended_runs_in_utc(cli_env, conn):
    for ago, name in ((400, "ended_old"), (300, "ended_mid"), (200, "ended_new")):
        add_run(conn, name, ago=ago, took=5)
    for ago, name in ((30, "live_old"), (20, "live_mid"), (10, "live_new")):
        add_run(conn, name, "in_progress", ago=ago, lease=600)
    started = conn.execute("SELECT start_date FROM jobs WHERE name = 'ended_new'").fetchone()[0]
    in_utc = started.astimezone(timezone.utc)
    today = in_utc.date() == datetime.now(timezone.utc).date()
    shown = in_utc.strftime("%H:%M:%SZ" if today else "%Y-%m-%d %H:%MZ")
    kathmandu = {**cli_env, "TZ": "Asia/Kathmandu"}
    with on_a_terminal(kathmandu, "watch", "--limit", "2", "--utc") as terminal:
        terminal.read_until(b"ended_mid")  # the last row
        assert terminal.ctrl_c() == 0
    screen = bytes(terminal.seen)
    for name in (b"live_new", b"live_mid", b"ended_new", b"ended_mid"):
        assert name in screen
    assert b"live_old" not in screen and b"ended_old" not in screen
    assert shown.encode() in screen


def test_watch_bad_interval_is_one_line(cli):
    one_line_error(cli("watch", "--interval", "often"), 2)
