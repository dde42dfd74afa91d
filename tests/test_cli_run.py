"""`run`, `report`, `reap` and `flush` as cron and shell scripts use them: real processes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import asdict
from datetime import datetime, timezone

import psycopg
import pytest
from conftest import living_group_members, private_dir, wait_until
from psycopg import sql

from jobs_cli import runs, spool
from jobs_cli.recorder import SPOOL_FORMAT, Recorder
from jobs_cli.migrations import migrate
from jobs_cli.server import EmbeddedServer

# Waits until the test creates the file `go` in the working directory.
WAIT_FOR_GO = "while [ ! -e go ]; do sleep 0.02; done"


def rows(conn, columns: str = "status, exit_code, message") -> list[tuple]:
    return conn.execute(f"SELECT {columns} FROM jobs ORDER BY id").fetchall()


@pytest.fixture
def spawn(cli_env, tmp_path):
    """Start `jobs-cli ARGS...` in the background in tmp_path; killed at teardown if running."""
    started = []

    def start(*args: str, env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
        options = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen}
        started.append(subprocess.Popen(["jobs-cli", *args], env={**cli_env, **(env or {})},
                                        cwd=tmp_path, **options))
        return started[-1]

    yield start
    (tmp_path / "go").touch()
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=60)


def one_line(stderr: str) -> str:
    assert stderr.count("\n") == 1 and stderr.startswith("jobs-cli: "), stderr
    return stderr


# -- outcome -----------------------------------------------------------------------

def test_success_and_failure_with_the_commands_exit_code(cli, conn):
    ok = cli("run", "--name", "a", "--", "sh", "-c", "echo progress >&2")
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "progress\n")
    failed = cli("run", "--name", "a", "--", "sh", "-c", "echo bad row >&2; exit 3")
    assert failed.returncode == 3
    assert failed.stderr == "bad row\njobs-cli: run 2 of 'a' failed: exit code 3\n"
    assert rows(conn) == [("success", 0, None), ("error", 3, "exit code 3\nbad row")]
    host, pid, username, command = rows(conn, "host, pid, username, command")[0]
    assert host and pid > 0 and username
    assert command == "sh -c 'echo progress >&2'"


@pytest.mark.parametrize("command, code, message", [
    (["/nonexistent/etl.sh"], 127, "command not found: /nonexistent/etl.sh"),
    (["{tmp}/etl.sh"], 126, "not executable: {tmp}/etl.sh"),
    (["sh", "-c", "kill -KILL $$"], 137, "killed by SIGKILL"),
])
def test_commands_that_cannot_start_or_are_killed(cli, conn, tmp_path, command, code, message):
    (tmp_path / "etl.sh").write_text("#!/bin/sh\n")  # not executable, even for root
    message = message.format(tmp=tmp_path)
    result = cli("run", "--name", "a", "--", *(part.format(tmp=tmp_path) for part in command))
    assert result.returncode == code
    assert result.stderr == f"jobs-cli: run 1 of 'a' failed: {message}\n"
    assert rows(conn) == [("error", code, message)]


def test_source_and_destination_from_options_else_the_environment(cli, conn):
    env = {"JOBS_SOURCE": "crm", "JOBS_DESTINATION": "lake"}
    for name, options, extra in (("a", ["--source", "erp", "--destination", "dwh"], env),
                                 ("b", [], env), ("c", [], None)):
        assert cli("run", "--name", name, *options, "--", "true", env=extra).returncode == 0
    assert rows(conn, "name, source, destination") == [
        ("a", "erp", "dwh"), ("b", "crm", "lake"), ("c", "", "")]


# -- what the command is told ----------------------------------------------------------

PRINT_ENV = ('printf "%s\\n" "$JOBS_ID" "$JOBS_NAME" "$JOBS_LAST_SUCCESS" "$JOBS_LAST_SUCCESS_ISO"'
             ' "$JOBS_DATABASE_URL" "$JOBS_SCHEMA" "$JOBS_HOME"; jobs-cli last-success e;'
             ' jobs-cli last-success e --iso; jobs-cli report --records 4')


def test_the_command_gets_its_run_its_watermark_and_the_database(cli, conn, db_url, home):
    assert cli("run", "--name", "e", "--", "true").returncode == 0
    result = cli("run", "--name", "e", "--", "sh", "-c", PRINT_ENV)
    assert result.returncode == 0, result.stderr
    watermark, iso = conn.execute(
        "SELECT floor(extract(epoch FROM start_date))::bigint,"
        " to_char(start_date AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
        " FROM jobs WHERE id = 1").fetchone()
    assert result.stdout.splitlines() == [
        "2", "e", str(watermark), iso, db_url, "public", str(home), str(watermark), iso]
    assert rows(conn, "records_processed") == [(None,), (4,)]


def test_a_look_back_is_taken_off_the_watermark_told_and_kept(cli, conn):
    show = 'printf "%s\n" "$JOBS_LAST_SUCCESS" "$JOBS_LAST_SUCCESS_ISO" "$JOBS_LOOKBACK_SECONDS"'
    first = cli("run", "--name", "e", "--lookback", "10m", "--", "sh", "-c", show)
    assert first.stdout.splitlines() == ["", "", "600"]
    second = cli("run", "--name", "e", "--lookback", "10m", "--", "sh", "-c", show)
    started, iso = conn.execute(
        "SELECT floor(extract(epoch FROM start_date))::bigint - 600,"
        " to_char((start_date - interval '10m') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
        " FROM jobs WHERE id = 1").fetchone()
    assert second.stdout.splitlines() == [str(started), iso, "600"]
    assert rows(conn, "extract(epoch FROM since_handed)::bigint") == [(None,), (started,)]


def test_a_cursor_reported_by_a_successful_run_is_handed_to_the_next(cli, conn):
    report = 'printf "[%s]\n" "$JOBS_LAST_CURSOR"; jobs-cli report --cursor "$1"; exit "$2"'
    outputs = [cli("run", "--name", "c", "--", "sh", "-c", report, "sh", cursor, code).stdout
               for cursor, code in (("10", "0"), ("20", "1"), ("30", "0"), ("40", "0"))]
    assert outputs == ["[]\n", "[10]\n", "[10]\n", "[30]\n"]
    assert rows(conn, "status, cursor_handed, cursor") == [
        ("success", None, "10"), ("error", "10", "20"), ("success", "10", "30"),
        ("success", "30", "40")]
    assert cli("last-success", "c", "--cursor").stdout == "40\n"


def test_after_skips_silently_until_the_upstream_job_succeeded_since(cli, cli_env, conn):
    load = ("run", "--name", "load", "--after", "extract", "--", "sh", "-c",
            'printf "%s\n" "$JOBS_UPSTREAM_RUNS"')
    skipped = cli(*load)
    assert (skipped.returncode, skipped.stdout, skipped.stderr) == (75, "", "")
    # On a terminal the skip is said, in one line.
    primary, secondary = os.openpty()
    try:
        told = subprocess.run(["jobs-cli", *load], env=cli_env, stdout=subprocess.PIPE,
                              stderr=secondary, text=True, timeout=60)
        os.close(secondary)
        said = os.read(primary, 4096).decode()
    finally:
        os.close(primary)
    assert told.returncode == 75
    assert said.startswith("jobs-cli: 'load' skipped: 'extract' has not succeeded") and \
        said.count("\n") == 1, said
    assert cli("run", "--name", "extract", "--", "false").returncode == 1
    assert cli(*load).returncode == 75
    assert cli("run", "--name", "extract", "--", "true").returncode == 0
    consumed = cli(*load)
    assert (consumed.returncode, consumed.stdout) == (0, "2\n")
    assert cli(*load).returncode == 75
    assert rows(conn, "name, status, upstream_handed") == [
        ("extract", "error", None), ("extract", "success", None), ("load", "success", [2])]
    itself = cli("run", "--name", "load", "--after", "load", "--", "true")
    assert itself.returncode == 2 and "itself" in one_line(itself.stderr)


def test_a_database_given_as_an_option_reaches_the_command(cli_env, conn, db_url):
    env = {key: value for key, value in cli_env.items() if key != "JOBS_DATABASE_URL"}
    result = subprocess.run(
        ["jobs-cli", "--database-url", db_url, "run", "--name", "e", "--",
         "jobs-cli", "report", "--records", "1"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert rows(conn, "records_processed") == [(1,)]


def test_under_crons_minimal_path_the_command_finds_jobs_cli_in_jobs_cli(cli_env, conn):
    """cron's PATH has no virtualenv in it: JOBS_CLI names the wrapper's own jobs-cli."""
    jobs_cli = shutil.which("jobs-cli", path=cli_env["PATH"])
    env = {"PATH": "/usr/bin:/bin", "JOBS_DATABASE_URL": cli_env["JOBS_DATABASE_URL"],
           "JOBS_HOME": cli_env["JOBS_HOME"]}
    result = subprocess.run(
        ["sh", "-c", f'{jobs_cli} run --name cron -- sh -c \'"$JOBS_CLI" report --records 7\''],
        env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert rows(conn, "records_processed") == [(7,)]


def test_nested_calls_reach_the_embedded_default_too(cli_env, home):
    env = {key: value for key, value in cli_env.items() if key != "JOBS_DATABASE_URL"}
    script = 'jobs-cli report --message "from inside"; jobs-cli last-success emb --default -1'
    outputs = [subprocess.run(["jobs-cli", "run", "--name", "emb", "--", "sh", "-c", script],
                              env=env, capture_output=True, text=True) for _ in range(2)]
    assert [result.stderr for result in outputs] == ["", ""]
    with psycopg.connect(EmbeddedServer(home).conninfo()) as conn:
        (first_start,), messages = conn.execute(
            "SELECT floor(extract(epoch FROM start_date))::bigint FROM jobs WHERE id = 1"
        ).fetchone(), rows(conn, "message")
    assert [result.stdout for result in outputs] == ["-1\n", f"{first_start}\n"]
    assert messages == [("from inside",), ("from inside",)]


def test_the_final_update_keeps_what_was_reported(cli, conn):
    cli("run", "--name", "r", "--", "jobs-cli", "report", "--records", "5", "--message", "5 files")
    cli("run", "--name", "r", "--", "sh", "-c",
        "jobs-cli report --records 2 --message 'half done'; echo gave up >&2; exit 3")
    assert rows(conn, "status, records_processed, message") == [
        ("success", 5, "5 files"), ("error", 2, "exit code 3; half done\ngave up")]


def test_report_outside_a_run_or_after_it_ended_is_refused(cli, conn):
    outside = cli("report", "--records", "1")
    assert outside.returncode == 2
    assert one_line(outside.stderr).startswith("jobs-cli: JOBS_ID is not set")
    assert cli("run", "--name", "r", "--", "true").returncode == 0
    late = cli("report", "--records", "1", env={"JOBS_ID": "1"})
    assert late.returncode == 1
    assert one_line(late.stderr) == "jobs-cli: run 1 (r) has already ended: success\n"
    empty = cli("report", env={"JOBS_ID": "1"})
    assert empty.returncode == 2 and "nothing to report" in one_line(empty.stderr)
    assert rows(conn, "records_processed") == [(None,)]


# -- output ------------------------------------------------------------------------------

@pytest.mark.parametrize("capture", [[], ["--capture-stdout"]])
def test_stdout_is_byte_exact_through_a_pipe(sh, tmp_path, capture):
    data = tmp_path / "data"
    data.write_bytes(os.urandom(8 * 1024 * 1024) + b"\0\xff no newline")
    result = sh(f"jobs-cli run --name p {' '.join(capture)} -- cat {data} | sha256sum")
    assert result.stdout.split()[0] == hashlib.sha256(data.read_bytes()).hexdigest()


def test_an_argument_that_is_not_utf8_runs_as_given(cli_env, conn):
    # A Latin-1 file name: run byte for byte, recorded with U+FFFD as the output tail is.
    result = subprocess.run(["sh", "-c", "jobs-cli run --name l1 -- printf %s \"$(printf 'caf\\351')\""],
                            env=cli_env, capture_output=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"caf\xe9", b"")
    assert rows(conn, "command") == [("printf %s 'caf\ufffd'",)]


@pytest.mark.parametrize("closed", [0, 1, 2])
def test_a_closed_standard_fd_neither_stops_the_run_nor_lends_its_number(cli_env, conn, tmp_path,
                                                                       closed):
    """Started with stdin, stdout or stderr closed (`2>&-`, some daemons' children): the
    command runs and is recorded, and no file the wrapper opens (its connection to the
    database) takes that fd, which the command's output or the tool's would reach."""
    ran = tmp_path / "ran"
    script = f"echo out; echo err >&2; touch {ran}; exit 3"
    result = subprocess.run(["sh", "-c", f'jobs-cli run --name a -- sh -c "$0" {closed}>&-',
                             script], env=cli_env, capture_output=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert ran.exists()
    assert rows(conn) == [("error", 3, "exit code 3\nerr")]


def test_the_stderr_tail_survives_binary_and_nul_bytes(cli_env, conn):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["jobs-cli", "run", "--name", "t", *args], env=cli_env,
                              capture_output=True)

    binary = run("--", "sh", "-c", r"printf 'a\000b\377c\n' >&2; exit 1")
    assert binary.returncode == 1 and binary.stderr.startswith(b"a\0b\xffc\n")
    run("--tail-bytes", "4", "--", "sh", "-c", "printf abcdefgh >&2")
    assert rows(conn, "output") == [("a\ufffdb\ufffdc\n",), ("efgh",)]
    assert rows(conn, "message")[0] == ("exit code 1\na\ufffdb\ufffdc",)


def test_a_flood_of_stderr_leaves_the_wrapper_small(cli_env, conn, tmp_path):
    def peak_kib(stderr_bytes: int) -> int:
        peak = tmp_path / "peak"
        subprocess.run(
            ["jobs-cli", "run", "--name", "flood", "--", "sh", "-c",
             f"head -c {stderr_bytes} /dev/zero >&2; grep VmHWM /proc/$PPID/status > {peak}"],
            env=cli_env, stderr=subprocess.DEVNULL, check=True, timeout=60)
        return int(peak.read_text().split()[1])

    baseline = peak_kib(1000)
    flooded = peak_kib(300 * 1024 * 1024)
    assert flooded - baseline < 8 * 1024, (baseline, flooded)
    assert rows(conn, "length(output)")[-1] == (10 * 1024,)


# -- signals and time ------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_reach_the_command_and_are_recorded(spawn, conn, tmp_path, signum):
    wrapper = spawn("run", "--name", "s", "--", "sh", "-c",
                    "trap 'echo caught >&2; exit 9' INT TERM; touch ready;"
                    " while :; do sleep 0.02; done")
    wait_until(lambda: (tmp_path / "ready").exists(), what="the command to start")
    wrapper.send_signal(signum)
    _, stderr = wrapper.communicate(timeout=60)
    name = signal.Signals(signum).name
    assert wrapper.returncode == 128 + signum
    assert "caught" in stderr.decode().splitlines()
    status, exit_code, message = rows(conn)[0]
    assert (status, exit_code) == ("error", 128 + signum)
    assert message.startswith(f"interrupted by {name}\n") and message.endswith("\ncaught")


def test_a_timeout_ends_the_command_with_124(cli, conn):
    began = time.monotonic()
    result = cli("run", "--name", "slow", "--timeout", "0.5s", "--kill-after", "1s",
                 "--", "sleep", "300")
    assert result.returncode == 124 and time.monotonic() - began < 60
    assert rows(conn) == [("error", 124, "timed out after 0.5s")]


@pytest.mark.parametrize("option, value, error", [
    ("--timeout", "0", "jobs-cli: Invalid value for '--timeout': duration '0' needs a unit"),
    ("--timeout", "0s", "jobs-cli: Invalid value for '--timeout': duration must be more than 0, not '0s'"),
    ("--timeout", "-1m", "jobs-cli: Invalid value for '--timeout': invalid duration '-1m'"),
    ("--timeout", "soon", "jobs-cli: Invalid value for '--timeout': invalid duration 'soon'"),
    ("--kill-after", "1x", "jobs-cli: Invalid value for '--kill-after': invalid duration '1x'"),
])
def test_bad_durations_are_usage_errors_and_nothing_runs(cli, conn, tmp_path, option, value,
                                                         error):
    result = cli("run", "--name", "a", option, value, "--", "touch", str(tmp_path / "ran"))
    assert result.returncode == 2
    assert one_line(result.stderr).startswith(error)
    assert not (tmp_path / "ran").exists() and rows(conn) == []


def test_a_bad_heartbeat_interval_is_a_usage_error(cli, conn):
    result = cli("run", "--name", "a", "--", "true", env={"JOBS_HEARTBEAT_SECONDS": "often"})
    assert result.returncode == 2
    assert one_line(result.stderr).startswith(
        "jobs-cli: JOBS_HEARTBEAT_SECONDS: 'often' is not a number of seconds (e.g. 30 or 0.5)")
    assert rows(conn) == []


# -- overlap ---------------------------------------------------------------------------------

def test_of_runs_started_at_once_one_runs_and_the_others_skip(spawn, conn, tmp_path):
    racers = [spawn("run", "--name", "o", "--", "sh", "-c", f"touch ran$$; {WAIT_FOR_GO}")
              for _ in range(4)]
    def finished() -> list[subprocess.Popen]:
        return [racer for racer in racers if racer.poll() is not None]

    skipped = wait_until(lambda: len(finished()) == 3 and finished(), what="three to skip")
    (tmp_path / "go").touch()
    for racer in racers:
        racer.communicate(timeout=60)
    assert sorted(racer.returncode for racer in racers) == [0, 75, 75, 75]
    for racer in skipped:
        assert racer.returncode == 75
    assert len(list(tmp_path.glob("ran*"))) == 1
    assert rows(conn, "status") == [("success",)]


def test_one_of_two_runs_starts_when_the_database_defaults_to_repeatable_read(
        spawn, conn, tmp_path):
    conn.execute(sql.SQL("ALTER DATABASE {} SET default_transaction_isolation = "
                         "'repeatable read'").format(sql.Identifier(conn.info.dbname)))
    # Holding the table makes both claims start (and, under REPEATABLE READ, take
    # their snapshot) before either has inserted its run.
    with psycopg.connect(conn.info.dsn) as holder:
        holder.execute("LOCK TABLE jobs IN EXCLUSIVE MODE")
        racers = [spawn("run", "--name", "o", "--", "sh", "-c", f"touch ran$$; {WAIT_FOR_GO}")
                  for _ in range(2)]
        wait_until(lambda: conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted"
                                        " AND database = (SELECT oid FROM pg_database"
                                        "                 WHERE datname = current_database())"
                                        ).fetchone()[0] == 2,
                   what="both claims to wait")
    skipped = wait_until(lambda: [racer for racer in racers if racer.poll() is not None],
                         what="one to skip")
    (tmp_path / "go").touch()
    for racer in racers:
        racer.communicate(timeout=60)
    assert [racer.returncode for racer in skipped] == [75]
    assert sorted(racer.returncode for racer in racers) == [0, 75]
    assert len(list(tmp_path.glob("ran*"))) == 1
    assert rows(conn, "status") == [("success",)]


def test_a_skip_is_one_line_and_no_row(spawn, cli, conn, tmp_path):
    spawn("run", "--name", "o", "--", "sh", "-c", f"touch started; {WAIT_FOR_GO}")
    wait_until(lambda: (tmp_path / "started").exists(), what="the first run")
    second = cli("run", "--name", "o", "--", "touch", str(tmp_path / "second"))
    assert second.returncode == 75
    assert one_line(second.stderr).startswith("jobs-cli: 'o' is already running (run 1, pid ")
    assert second.stderr.endswith("); skipped\n")
    assert not (tmp_path / "second").exists()
    assert rows(conn, "status") == [("in_progress",)]


def test_wait_runs_after_the_live_run_and_allow_runs_alongside(spawn, cli, conn, tmp_path):
    first = spawn("run", "--name", "o", "--", "sh", "-c", f"touch started; {WAIT_FOR_GO}")
    wait_until(lambda: (tmp_path / "started").exists(), what="the first run")
    assert cli("run", "--name", "o", "--on-overlap", "allow", "--", "true").returncode == 0
    waiter_log = tmp_path / "waiter.err"
    with waiter_log.open("wb") as log:
        waiter = spawn("run", "--name", "o", "--on-overlap", "wait", "--", "true", stderr=log)
    wait_until(lambda: b"waiting for it to end" in waiter_log.read_bytes(), what="the waiter")
    (tmp_path / "go").touch()
    first.communicate(timeout=60)
    waiter.communicate(timeout=60)
    assert (first.returncode, waiter.returncode) == (0, 0)
    (_, first_end), _, (waited_start, _) = rows(conn, "start_date, end_date")
    assert waited_start >= first_end


def test_waiting_gives_up_when_the_timeout_runs_out(spawn, cli, conn, tmp_path):
    spawn("run", "--name", "o", "--", "sh", "-c", f"touch started; {WAIT_FOR_GO}")
    wait_until(lambda: (tmp_path / "started").exists(), what="the first run")
    waited = cli("run", "--name", "o", "--on-overlap", "wait", "--timeout", "1s", "--", "true")
    assert waited.returncode == 75
    assert waited.stderr.endswith(", and --timeout ran out while waiting; skipped\n")
    assert len(rows(conn)) == 1


# -- dead runs -----------------------------------------------------------------------------

# Writes the command's process group to `group`, then runs a pipeline in it.
PIPELINE = "ps -o pgid= $$ > group; sleep 60 | sleep 60"


def started_group(tmp_path) -> int:
    group = tmp_path / "group"
    return int(wait_until(lambda: group.exists() and group.read_text().strip(),
                          what="the command"))


@pytest.mark.parametrize("reaper", ["reap", "run"])
def test_a_killed_wrapper_takes_its_command_along_and_is_reaped_at_once(spawn, cli, conn,
                                                                        tmp_path, reaper):
    # The default interval: the lease would outlive the test by far.
    wrapper = spawn("run", "--name", "k", "--", "sh", "-c", PIPELINE)
    pgid = started_group(tmp_path)
    wrapper.kill()
    _, stderr = wrapper.communicate(timeout=30)
    assert stderr.decode().endswith("died; killing its command\n")
    wait_until(lambda: not living_group_members(pgid), what="the command to die")
    assert rows(conn, "status, lease_until > now()") == [("in_progress", True)]
    if reaper == "reap":
        reaped = cli("reap")
        assert (reaped.returncode, reaped.stdout, reaped.stderr) == (0, "1\n", "")
    else:
        rerun = cli("run", "--name", "k", "--", "true")
        assert rerun.returncode == 0
        assert rerun.stderr == "jobs-cli: run 1 of 'k' had lost its wrapper; marked abandoned\n"
    status, message, abandoned = rows(conn, "status, message, abandoned")[0]
    assert status == "error" and message.startswith("abandoned: no heartbeat since ")
    assert abandoned and "(abandoned: its wrapper stopped heartbeating)" in cli(
        "show", "1").stdout


def test_a_live_wrapper_is_never_reaped_whatever_its_lease(spawn, cli, conn, tmp_path):
    wrapper = spawn("run", "--name", "k", "--", "sh", "-c", f"touch started; {WAIT_FOR_GO}")
    wait_until(lambda: (tmp_path / "started").exists(), what="the command")
    # As if its heartbeats had not reached the database for a long time.
    conn.execute("UPDATE jobs SET lease_until = now() - interval '1 hour'")
    assert (cli("reap").stdout, cli("run", "--name", "k", "--", "true").returncode) == ("", 75)
    (tmp_path / "go").touch()
    wrapper.communicate(timeout=30)
    assert wrapper.returncode == 0 and rows(conn, "status") == [("success",)]


def test_a_run_ended_by_someone_else_stops_its_command_and_records_nothing(spawn, cli, conn,
                                                                          tmp_path):
    wrapper = spawn("run", "--name", "k", "--", "sh", "-c",
                    "trap 'echo stopping >&2; exit 3' TERM; touch started; sleep 60 & wait",
                    env={"JOBS_HEARTBEAT_SECONDS": "1"})
    wait_until(lambda: (tmp_path / "started").exists(), what="the command")
    assert cli("fail", "1", "--message", "stuck, failed by hand").returncode == 0
    _, stderr = wrapper.communicate(timeout=30)
    assert wrapper.returncode == 77
    assert stderr.decode().splitlines() == [
        "stopping", "jobs-cli: run 1 of 'k' was ended by someone else while its command ran "
        "(error: stuck, failed by hand); the command was stopped and nothing recorded"]
    assert rows(conn) == [("error", None, "stuck, failed by hand")]


def test_the_next_run_reaps_a_dead_run_by_itself(cli, conn):
    cli("run", "--name", "k", "--", "true")
    conn.execute("UPDATE jobs SET status = 'in_progress', end_date = NULL, exit_code = NULL,"
                 " lease_until = now() - interval '1 second'")
    result = cli("run", "--name", "k", "--", "true")
    assert result.returncode == 0
    assert result.stderr == "jobs-cli: run 1 of 'k' had lost its wrapper; marked abandoned\n"
    assert [status for status, *_ in rows(conn)] == ["error", "success"]


def test_a_failure_by_hand_that_says_abandoned_is_an_ordinary_failure(spawn, cli, conn,
                                                                     tmp_path):
    wrapper = spawn("run", "--name", "h", "--", "sh", "-c", f"touch started; {WAIT_FOR_GO}")
    wait_until(lambda: (tmp_path / "started").exists(), what="the run")
    assert cli("fail", "1", "--message", "abandoned: stopped by hand").returncode == 0
    (tmp_path / "go").touch()
    wrapper.communicate(timeout=60)
    # The command's own result does not overrule it, as it would the reaper's verdict.
    assert rows(conn, "status, exit_code, message, abandoned") == [
        ("error", None, "abandoned: stopped by hand", False)]
    shown = json.loads(cli("show", "1", "--json").stdout)
    assert (shown["abandoned"], shown["state"]) == (False, "error")


def test_reap_older_than_ends_old_unsupervised_runs_only(cli, conn):
    cli("start", "manual")
    cli("start", "recent")
    assert cli("run", "--name", "k", "--", "true").returncode == 0
    conn.execute("UPDATE jobs SET start_date = now() - interval '3 hours' WHERE name <> 'recent'")
    assert cli("reap").stdout == ""
    reaped = cli("reap", "--older-than", "2h")
    assert (reaped.returncode, reaped.stdout) == (0, "1\n")
    assert rows(conn, "name, status, message") == [
        ("manual", "error", "abandoned: started without a wrapper (jobs-cli start) and still "
                            "in progress after more than 2h"),
        ("recent", "in_progress", None), ("k", "success", None)]


# -- when the database fails -----------------------------------------------------------------

@pytest.fixture(scope="module")
def own_server():
    """A server of this module's own, to stop and start."""
    home = private_dir("jobs-cli-test-own-server-")
    server = EmbeddedServer(home)
    with psycopg.connect(server.ensure_running(), autocommit=True) as conn:
        migrate(conn, "public")
    yield server
    server.stop()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def stoppable(own_server, cli_env):
    """cli_env pointed at own_server, running and with an empty table."""
    conninfo = own_server.ensure_running()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("TRUNCATE jobs RESTART IDENTITY")
    cli_env.update(JOBS_DATABASE_URL=conninfo, JOBS_RETRY_SECONDS="1",
                   JOBS_HEARTBEAT_SECONDS="1")
    return own_server


def own_rows(server: EmbeddedServer, columns: str = "status, exit_code, message"):
    with psycopg.connect(server.conninfo()) as conn:
        return rows(conn, columns)


# Seconds between a run's end and its flush, and how far this host's clock may read
# the server's (the same clock, read at another moment) differently.
FLUSH_GAP = 3.0
CLOCK_SLACK = 0.5


def test_a_database_down_at_the_end_spools_and_flush_records_once(spawn, cli, stoppable,
                                                                  tmp_path, home):
    wrapper = spawn("run", "--name", "d", "--", "sh", "-c", f"{WAIT_FOR_GO}; echo bye >&2; exit 4")
    wait_until(lambda: own_rows(stoppable), what="the run")
    stoppable.stop()
    go_at = time.time()
    (tmp_path / "go").touch()
    _, stderr = wrapper.communicate(timeout=60)
    ended_by = time.time()
    assert wrapper.returncode == 4
    # Failed heartbeats of the stopped server may come before the command's own line.
    lines = stderr.decode().splitlines()
    # The wrapper's heartbeat may fail before or after the command says bye.
    assert "bye" in lines and "jobs-cli: run 1 of 'd' failed: exit code 4" in lines
    assert any(line.startswith("jobs-cli: cannot record run 1 ('d') yet") and
               line.endswith("retrying for 1s") for line in lines)
    assert lines[-1].startswith("jobs-cli: run 1 ('d') not recorded (cannot reach database")
    assert lines[-1].endswith("`jobs-cli flush` records it")
    assert len(spool.pending(home)) == 1

    stoppable.ensure_running()
    # Leave a gap that tells "when it ended" from "when it was flushed" apart however
    # slowly the server restarted.
    wait_until(lambda: time.time() > ended_by + FLUSH_GAP, what="the gap to pass")
    flushed_from = time.time()
    flushed = cli("flush")
    assert (flushed.returncode, flushed.stdout, flushed.stderr) == (0, "1\n", "")
    assert (cli("flush").stdout, spool.pending(home)) == ("", [])
    assert own_rows(stoppable) == [("error", 4, "exit code 4\nbye")]
    # Recorded when it ended, not when it was flushed. The end is the server's start
    # plus the wrapper's elapsed time, counted from just before its claim connected:
    # late by at most that connection's time, whatever the load.
    end = float(own_rows(stoppable, "extract(epoch FROM end_date)")[0][0])
    assert go_at - CLOCK_SLACK <= end < flushed_from


def test_a_result_neither_recorded_nor_spooled_is_exit_74(spawn, stoppable, tmp_path, home):
    # A file where the spool directory should be stops root as well as anyone.
    (home / "spool").write_text("")
    wrapper = spawn("run", "--name", "d", "--", "sh", "-c", WAIT_FOR_GO)
    wait_until(lambda: own_rows(stoppable) or wrapper.poll() is not None, what="the run")
    assert wrapper.poll() is None, wrapper.communicate()
    stoppable.stop()
    (tmp_path / "go").touch()
    _, stderr = wrapper.communicate(timeout=60)
    assert wrapper.returncode == 74
    lines = stderr.decode().splitlines()
    assert [line for line in lines if "recorded nowhere" in line] == lines[-1:]
    assert lines[-1].startswith(f"jobs-cli: cannot write the spool {home}/spool: ")
    assert "; the result of run 1 ('d') (exit code 0) is recorded nowhere: cannot reach " \
        in lines[-1]
    assert (home / "spool").read_text() == ""
    stoppable.ensure_running()
    assert own_rows(stoppable, "status") == [("in_progress",)]


def test_heartbeats_reconnect_after_a_database_restart(spawn, stoppable, tmp_path, home):
    wrapper = spawn("run", "--name", "d", "--", "sh", "-c", WAIT_FOR_GO)
    wait_until(lambda: own_rows(stoppable), what="the run")
    stoppable.stop()
    with psycopg.connect(stoppable.ensure_running()) as conn:
        restarted = conn.execute("SELECT now()").fetchone()[0]
    wait_until(lambda: own_rows(stoppable, "heartbeat_at")[0][0] > restarted,
               what="a heartbeat after the restart")
    (tmp_path / "go").touch()
    wrapper.communicate(timeout=60)
    assert wrapper.returncode == 0
    assert own_rows(stoppable, "status") == [("success",)] and spool.pending(home) == []


def test_stop_on_lost_lease_stops_the_command_before_its_lease_runs_out(spawn, cli, stoppable,
                                                                       tmp_path, home):
    wrapper = spawn("run", "--name", "d", "--stop-on-lost-lease", "--", "sh", "-c",
                    f"touch started; {WAIT_FOR_GO}", env={"JOBS_HEARTBEAT_SECONDS": "1"})
    wait_until(lambda: (tmp_path / "started").exists(), what="the command")
    stoppable.stop()
    _, stderr = wrapper.communicate(timeout=30)
    assert wrapper.returncode == 77, stderr
    assert "jobs-cli: run 1 of 'd' failed: stopped: no heartbeat got through for " in \
        stderr.decode()
    stoppable.ensure_running()
    assert cli("flush").stdout == "1\n", stderr
    status, exit_code, message = own_rows(stoppable)[0]
    assert (status, exit_code) == ("error", 77)
    assert message.startswith("stopped: no heartbeat got through for ")


def test_a_database_down_at_the_start_means_69_and_the_command_not_run(cli, stoppable,
                                                                       tmp_path, home):
    stoppable.stop()
    result = cli("run", "--name", "d", "--", "touch", str(tmp_path / "ran"))
    assert result.returncode == 69
    assert one_line(result.stderr).startswith("jobs-cli: cannot reach database ")
    assert result.stderr.endswith("; 'd' not run (--fail-open would run it anyway)\n")
    assert not (tmp_path / "ran").exists() and spool.pending(home) == []


def test_fail_open_runs_the_command_and_flush_records_it(cli, stoppable, tmp_path, home):
    stoppable.stop()
    result = cli("run", "--name", "d", "--fail-open", "--", "touch", str(tmp_path / "ran"))
    assert result.returncode == 0 and (tmp_path / "ran").exists()
    assert "running 'd' anyway (--fail-open)" in result.stderr
    stoppable.ensure_running()
    assert cli("flush").stdout == "1\n"
    status, message = own_rows(stoppable, "status, message")[0]
    assert status == "success"
    assert message.startswith("times from the clock of ") and message.endswith(
        ": the database could not be reached when the run started")


def spooled(target: str, name: str, *, elapsed: float = 1.0) -> dict:
    """A spool entry as `run` writes it: the result of a --fail-open run of `name`."""
    invocation = runs.Invocation(run_key=uuid.uuid4().hex, name=name, source="", destination="",
                                 command="etl.sh", host="etl1", pid=1, username="etl")
    result = asdict(runs.RunResult(
        invocation=invocation, run_id=None, start_date=datetime.now(timezone.utc),
        elapsed=elapsed, status="success", exit_code=0, headline="exit code 0", output=""))
    result["start_date"] = result["start_date"].isoformat()
    return {"format": SPOOL_FORMAT, "target": target, "result": result}


def test_flush_records_the_good_entries_and_keeps_the_bad(cli, conn, database, home):
    target = Recorder(database, retry_seconds=0, tell=print).spool_target()
    spool.spool_dir(home).mkdir(parents=True)
    not_an_object = spool.spool_dir(home) / "1-not-an-object.json"
    not_an_object.write_text(json.dumps([target]))
    # Ends before it starts: the table's CHECK refuses it.
    refused = spool.save(home, "refused", spooled(target, "refused", elapsed=-60))
    good = [spool.save(home, f"good{n}", spooled(target, f"good{n}")) for n in range(2)]
    assert spool.pending(home) == [not_an_object, refused, *good]

    flushed = cli("flush")
    assert flushed.returncode == 1
    recorded = rows(conn, "id, name, status")
    assert [(name, status) for _, name, status in recorded] == [
        ("good0", "success"), ("good1", "success")]
    assert flushed.stdout.split() == [str(run_id) for run_id, _, _ in recorded]
    moved = spool.spool_dir(home) / "rejected" / refused.name
    assert flushed.stderr.splitlines() == [
        f"jobs-cli: cannot read spooled result {not_an_object}: not a JSON object",
        "jobs-cli: the database refused the spooled result of the --fail-open run of 'refused' "
        "for good (new row for relation \"jobs\" violates check constraint "
        f"\"jobs_end_after_start\"); moved to {moved}"]
    assert spool.pending(home) == [not_an_object] and moved.exists()


# -- no secrets in the record ------------------------------------------------------------

def test_passwords_in_the_command_line_are_masked_before_recording(cli, conn):
    result = cli("run", "--name", "a", "--", "sh", "-c", "exit 0", "sh",
                 "postgresql://etl:s3cret@db/x", "host=db password=s3cret", "--password", "s3cret")
    assert result.returncode == 0, result.stderr
    (command,) = rows(conn, "command")[0]
    assert "s3cret" not in command
    assert command == ("sh -c 'exit 0' sh 'postgresql://etl:***@db/x' 'host=db password=***' "
                       "--password '***'")
    shown = cli("show", "1", "--json")
    assert "s3cret" not in shown.stdout and "etl:***@db" in shown.stdout


def test_no_record_command_records_none(cli, conn):
    result = cli("run", "--name", "a", "--no-record-command", "--", "true", "s3cret")
    assert result.returncode == 0, result.stderr
    assert rows(conn, "status, command") == [("success", None)]


def test_a_run_that_waited_behind_a_reset_ends_the_reset_when_it_succeeds(spawn, cli, conn,
                                                                          db_url):
    """The run is handed the reset's watermark, so its success is the newer one."""
    cli("run", "--name", "r", "--", "true")
    cli("run", "--name", "r", "--", "true")

    def waiting() -> int:
        return conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                            " AND NOT granted").fetchone()[0]

    with psycopg.connect(db_url) as holder:  # a transaction holding the job's claim lock
        holder.execute("SELECT pg_advisory_xact_lock(hashtextextended('public.jobs:r', 0))")
        resetting = spawn("reset", "r", "--to", "1", "--yes")
        wait_until(lambda: waiting() == 1, what="the reset to wait for the lock")
        running = spawn("run", "--name", "r", "--", "sh", "-c", 'echo "$JOBS_LAST_SUCCESS"')
        wait_until(lambda: waiting() == 2, what="the run to wait for the lock")
    assert resetting.wait(timeout=60) == 0
    handed, _ = running.communicate(timeout=60)
    started = conn.execute("SELECT floor(extract(epoch FROM start_date))::bigint FROM jobs"
                           " ORDER BY id").fetchall()
    assert running.returncode == 0 and handed.decode().strip() == str(started[0][0])
    assert cli("last-success", "r").stdout.strip() == str(started[2][0])


def test_an_argument_that_is_not_utf8_still_runs_and_is_recorded_readably(cli_env, conn):
    result = subprocess.run(["sh", "-c", "jobs-cli run --name a -- echo \"$(printf 'caf\\351')\""],
                            env=cli_env, capture_output=True, timeout=60)
    assert result.returncode == 0 and result.stdout == b"caf\xe9\n"
    assert rows(conn, "command") == [("echo 'caf\ufffd'",)]


def test_a_heartbeat_below_a_second_is_refused(cli, conn):
    result = cli("run", "--name", "a", "--", "true", env={"JOBS_HEARTBEAT_SECONDS": "0.001"})
    assert result.returncode == 2 and "must be at least 1" in result.stderr
    assert rows(conn) == []
