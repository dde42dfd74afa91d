"""The core commands as a shell script runs them: real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import unicodedata

import psycopg
import pytest
from click.testing import CliRunner
from conftest import ROOT, wait_until
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from jobs_cli.cli import cli as jobs_cli


def test_done_when_sentence(sh, conn):
    result = sh('id=$(jobs-cli start a --source s --destination d) && '
                'jobs-cli finish "$id" --records 3 && jobs-cli last-success a')
    assert result.returncode == 0, result.stderr
    started, records = conn.execute(
        "SELECT floor(extract(epoch FROM start_date))::bigint, records_processed FROM jobs"
    ).fetchone()
    assert result.stdout.splitlines() == ["1", str(started)]
    assert records == 3


def test_start_prints_only_the_id(cli, conn):
    result = cli("start", "orders", "--source", "erp", "--destination", "dwh", "--message", "hi")
    assert (result.returncode, result.stdout, result.stderr) == (0, "1\n", "")
    assert conn.execute("SELECT name, source, destination, message, status FROM jobs").fetchone() \
        == ("orders", "erp", "dwh", "hi", "in_progress")


def test_start_json(cli):
    result = cli("start", "orders", "--json")
    row = json.loads(result.stdout)
    assert row["id"] == 1 and row["status"] == "in_progress" and row["end_date"] is None
    assert row["start_date"].endswith("Z")


def test_source_and_destination_default_from_env_else_empty(cli, conn):
    cli("start", "a", env={"JOBS_SOURCE": "erp", "JOBS_DESTINATION": "dwh"})
    cli("start", "b")
    assert conn.execute("SELECT source, destination FROM jobs ORDER BY id").fetchall() == [
        ("erp", "dwh"), ("", "")]


@pytest.mark.parametrize("command, status", [("finish", "success"), ("fail", "error")])
def test_finish_and_fail(cli, conn, command, status):
    cli("start", "a")
    result = cli(command, "1", "--records", "7", "--message", "done", "--json")
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert (row["status"], row["records_processed"], row["message"]) == (status, 7, "done")
    assert row["end_date"] >= row["start_date"]


@pytest.mark.parametrize("run_id, message, code", [
    ("99", "no run with id 99", 1), ("abc", "run id must be a whole number", 2),
    ("1.5", "whole number", 2)])
def test_ending_a_bad_id_is_refused(cli, run_id, message, code):
    # An unknown id is refused (1); one that is no id is malformed input (2).
    cli("start", "a")
    result = cli("finish", run_id)
    assert result.returncode == code
    assert message in result.stderr and result.stdout == ""
    assert "Traceback" not in result.stderr


def test_ending_twice_is_refused_and_changes_nothing(cli, conn):
    cli("start", "a")
    cli("finish", "1", "--records", "5")
    result = cli("fail", "1", "--message", "late")
    assert result.returncode == 1 and "already ended: success" in result.stderr
    assert conn.execute("SELECT status, records_processed, message FROM jobs").fetchone() \
        == ("success", 5, None)


@pytest.mark.parametrize("records", ["-1", "x", str(2**31)])
def test_bad_records_are_usage_errors(cli, conn, records):
    cli("start", "a")
    result = cli("finish", "1", "--records", records)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert conn.execute("SELECT status FROM jobs").fetchone() == ("in_progress",)


@pytest.mark.parametrize("name", ["", "  ", "a\tb", "a\nb", "\x1b[31mred"])
def test_bad_names_exit_2(cli, conn, name):
    for args in (["start", name], ["last-success", name]):
        result = cli(*args)
        assert result.returncode == 2, args
        assert result.stderr.count("\n") == 1 and "job name" in result.stderr
    assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (0,)


def test_last_success_exit_codes(cli, conn):
    never = cli("last-success", "a")
    assert (never.returncode, never.stdout, never.stderr) == (3, "", "")
    default = cli("last-success", "a", "--default", "0")
    assert (default.returncode, default.stdout) == (0, "0\n")
    conn.execute("INSERT INTO jobs (name, status, start_date, end_date, source, destination)"
                 " VALUES ('a', 'success', '2024-03-10T01:59:59.9-08:00', '2024-03-10T03:30:00-07:00', '', '')")
    assert cli("last-success", "a", "--default", "0").stdout == "1710064799\n"
    assert cli("last-success", "a", "--iso").stdout == "2024-03-10T09:59:59Z\n"


def test_finish_cursor_and_last_success_cursor(cli, conn):
    never = cli("last-success", "a", "--cursor")
    assert (never.returncode, never.stdout, never.stderr) == (3, "", "")
    assert cli("last-success", "a", "--cursor", "--default", "0").stdout == "0\n"
    run_id = cli("start", "a").stdout.strip()
    assert cli("finish", run_id, "--cursor", "id 17 ü").returncode == 0
    assert cli("last-success", "a", "--cursor", "--default", "0").stdout == "id 17 ü\n"
    assert cli("last-success", "a").stdout.strip().isdigit()
    for bad in (["--cursor", "--iso"], ["--cursor", "--lookback", "1m"], ["--default", "x"]):
        refused = cli("last-success", "a", *bad)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, bad
    failed = cli("start", "a").stdout.strip()
    refused = cli("fail", failed, "--cursor", "99")
    assert refused.returncode == 2 and "--cursor" in refused.stderr
    empty = cli("finish", failed, "--cursor", "")
    assert empty.returncode == 2 and empty.stderr.startswith("jobs-cli: ")


def test_last_success_with_a_look_back(cli, conn):
    assert cli("last-success", "a", "--default", "5", "--lookback", "1h").stdout == "5\n"
    conn.execute("INSERT INTO jobs (name, status, start_date, end_date, source, destination)"
                 " VALUES ('a', 'success', '2024-03-10T10:00:00.5Z', '2024-03-10T11:00:00Z', '', '')")
    assert cli("last-success", "a", "--lookback", "1h30m").stdout == f"{1710064800 - 5400}\n"
    assert cli("last-success", "a", "--lookback", "0s").stdout == "1710064800\n"
    assert cli("last-success", "a", "--lookback", "1m", "--iso").stdout == "2024-03-10T09:59:00Z\n"
    bad = cli("last-success", "a", "--lookback", "-5m")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "duration" in bad.stderr


@pytest.mark.parametrize("tz", ["UTC", "America/New_York", "Asia/Kathmandu", "Etc/GMT-14"])
def test_last_success_same_whatever_the_client_or_server_tz(cli, conn, tz):
    conn.execute("INSERT INTO jobs (name, status, start_date, end_date, source, destination)"
                 " VALUES ('a', 'success', '2024-11-03T05:30:00Z', '2024-11-03T06:30:00Z', '', '')")
    conn.execute(f"ALTER DATABASE {conn.info.dbname} SET TimeZone = '{tz}'")
    env = {"TZ": tz, "PGTZ": tz}
    assert cli("last-success", "a", env=env).stdout == "1730611800\n"
    assert cli("last-success", "a", "--iso", env=env).stdout == "2024-11-03T05:30:00Z\n"


def test_unreachable_database_one_line_without_password(cli):
    url = "postgresql://etl:s3cret@127.0.0.1:1/warehouse?connect_timeout=2"
    result = cli("last-success", "a", env={"JOBS_DATABASE_URL": url})
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert 'database "warehouse" on host "127.0.0.1"' in result.stderr
    assert "s3cret" not in result.stderr and "Traceback" not in result.stderr


def test_missing_table_says_run_init(cli, conn):
    conn.execute("DROP TABLE jobs CASCADE")
    result = cli("start", "a")
    assert result.returncode == 1
    assert "run `jobs-cli init`" in result.stderr
    assert cli("init").returncode == 0
    assert cli("start", "a").stdout == "1\n"


def test_database_url_option_beats_env(cli, db_url):
    result = cli("--database-url", db_url, "start", "a",
                 env={"JOBS_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x"})
    assert result.returncode == 0, result.stderr


# PG* point at the source database in ETL jobs: never picked up implicitly.

def test_pghost_and_pgport_do_not_complete_the_database_url(cli, conn, pg_server):
    # This URL names the test database but not where it is; PGHOST and PGPORT do.
    url = f"dbname={conn.info.dbname} user=postgres connect_timeout=5"
    result = cli("--database-url", url, "start", "a",
                 env={"PGHOST": pg_server["host"], "PGPORT": str(pg_server["port"])})
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("jobs-cli: cannot reach ")
    assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (0,)


def test_pgoptions_do_not_reach_our_connections(cli, conn):
    env = {"PGOPTIONS": "-c statement_timeout=1 -c default_transaction_read_only=on"}
    started = cli("start", "a", env=env)
    assert (started.returncode, started.stdout, started.stderr) == (0, "1\n", "")
    assert cli("finish", "1", "--records", "2", env=env).returncode == 0
    assert cli("last-success", "a", env=env).returncode == 0
    assert conn.execute("SELECT status, records_processed FROM jobs").fetchall() == [
        ("success", 2)]


def test_run_hands_the_pg_variables_to_its_command(cli, conn):
    env = {"PGHOST": "source.internal", "PGDATABASE": "erp", "PGPASSWORD": "src-secret",
           "PGOPTIONS": "-c default_transaction_read_only=on"}
    script = ('printf "%s\\n" "$PGHOST" "$PGDATABASE" "$PGPASSWORD" "$PGOPTIONS";'
              ' jobs-cli report --records 1')
    result = cli("run", "--name", "etl", "--", "sh", "-c", script, env=env)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == [
        "source.internal", "erp", "src-secret", "-c default_transaction_read_only=on"]
    # Neither the wrapper nor the command's own jobs-cli call used them.
    assert conn.execute("SELECT status, records_processed FROM jobs").fetchall() == [
        ("success", 1)]


MALFORMED_URL = "postgresql://u:s3cret@[::1/db"


@pytest.mark.parametrize("args, code", [
    (["start", "a"], 1),
    (["run", "--name", "a", "--", "touch", "{tmp}/ran"], 69),
    (["check", "a", "--max-age", "1h"], 3),
])
def test_a_malformed_url_is_one_line_without_its_password(cli, tmp_path, args, code):
    result = cli(*(arg.format(tmp=tmp_path) for arg in args),
                 env={"JOBS_DATABASE_URL": MALFORMED_URL})
    assert result.returncode == code
    said = result.stdout if args[0] == "check" else result.stderr
    assert said.count("\n") == 1 and "cannot be parsed" in said
    assert said.startswith("UNKNOWN - " if args[0] == "check" else "jobs-cli: ")
    assert "s3cret" not in result.stdout + result.stderr
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("args", [["finish"], ["no-such-command"], ["start"],
                                  ["list", "--limit", "0"], ["start", "a", "--bogus"]])
def test_usage_errors_are_one_line_exit_2(cli, args):
    result = cli(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("jobs-cli: ")
    assert "--help" in result.stderr


@pytest.mark.parametrize("args", [["lst"], ["list", "--limt", "3"]])
def test_a_misspelling_gets_one_hint(cli, args):
    result = cli(*args)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "Did you mean" in result.stderr and "--help" not in result.stderr


def all_commands(group=None, prefix=()):
    from jobs_cli.cli import cli as root

    group = group or root
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from all_commands(command, prefix + (name,))
        else:
            yield " ".join(prefix + (name,))


@pytest.mark.parametrize("command", sorted(all_commands()))
def test_every_command_help_has_an_example(cli, command):
    result = cli(*command.split(), "--help")
    assert result.returncode == 0 and "Example:" in result.stdout
    assert "jobs-cli" in result.stdout.split("Example:")[1]


# What click itself loads to show a group's and a command's help.
CLICK_HELP = """
import sys, click

@click.group()
@click.option("--url", envvar="URL", show_default=True, default="x", metavar="URL")
@click.version_option(package_name="click")
def group(url): pass

@group.command()
@click.argument("name")
@click.option("--n", type=click.IntRange(0, 5))
@click.option("--c", type=click.Choice(["a", "b"]))
@click.option("--flag", is_flag=True)
def command(name, n, c, flag): pass

for args in (["--help"], ["command", "--help"]):
    try:
        group.main(args, prog_name="x", standalone_mode=False)
    except SystemExit:
        pass
print(" ".join(sorted(sys.modules)), file=sys.stderr)
"""


@pytest.fixture
def click_help_modules() -> set[str]:
    result = subprocess.run([sys.executable, "-c", CLICK_HELP], capture_output=True, text=True,
                            check=True)
    return set(result.stderr.split())


def help_modules(env: dict[str, str], command: str) -> set[str]:
    """The modules `jobs-cli COMMAND --help` loads, through the real entry point."""
    code = ("import sys; from jobs_cli.entry import main\n"
            f"sys.argv = ['jobs-cli', *{command.split()!r}, '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(' '.join(sorted(sys.modules)), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True)
    assert "Usage: jobs-cli" in result.stdout
    return set(result.stderr.split())


@pytest.mark.parametrize("command", sorted(all_commands()))
def test_help_does_not_import_psycopg_or_rich(cli_env, command):
    assert help_modules(cli_env, command) & {"psycopg", "rich"} == set()


def test_help_imports_only_what_click_needs(cli_env, click_help_modules):
    """`jobs-cli --help`: beyond click's own modules, only jobs_cli's few (no psycopg,
    rich, pathlib, dataclasses...). bench/run.py times it against `import click`."""
    extra = help_modules(cli_env, "") - click_help_modules
    assert {module for module in extra if not module.startswith("jobs_cli")} == set()


def test_python_m_and_jobs_alias(cli_env):
    module = subprocess.run([sys.executable, "-m", "jobs_cli", "start", "a"], env=cli_env,
                            capture_output=True, text=True)
    assert module.stdout == "1\n"
    alias = os.path.join(os.path.dirname(sys.executable), "jobs")
    assert subprocess.run([alias, "start", "b"], env=cli_env, capture_output=True,
                          text=True).stdout == "2\n"


def test_no_command_shows_the_help_on_stderr_exit_2(cli):
    result = cli()
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("Usage: jobs-cli") and "Commands:" in result.stderr


def test_watch_refuses_without_a_terminal(cli):
    result = cli("watch")
    assert result.returncode == 2 and "use `jobs-cli list`" in result.stderr


def test_a_name_that_is_not_utf8_is_a_usage_error(sh, conn):
    result = sh("jobs-cli start \"$(printf 'caf\\351')\"")
    assert result.returncode == 2 and "not valid UTF-8" in result.stderr
    assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (0,)


def test_every_summary_fits_the_command_list(cli):
    listing = cli("--help", env={"COLUMNS": "80"}).stdout.split("Commands:")[1]
    assert "..." not in listing and len(listing.strip().splitlines()) == len(
        {command.split()[0] for command in all_commands()})
    assert "run --name" in cli("--help").stdout.split("Example")[1]


@pytest.mark.parametrize("command", ["", *sorted(all_commands())])
def test_help_has_no_range_noise(cli, command):
    assert "<=" not in cli(*command.split(), "--help").stdout


def test_reset_and_history(cli, conn):
    ids = []
    for cursor in ("10", "20"):
        run_id = cli("start", "a").stdout.strip()
        assert cli("finish", run_id, "--cursor", cursor).returncode == 0
        ids.append(int(run_id))
    first_start = conn.execute("SELECT floor(extract(epoch FROM start_date))::bigint FROM jobs"
                               " WHERE id = %s", (ids[0],)).fetchone()[0]
    unconfirmed = cli("reset", "a", "--to", str(ids[0]))
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    for bad in ([], ["--to", "1", "--to-start"]):
        refused = cli("reset", "a", "--yes", *bad)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, bad
    other = cli("reset", "b", "--to", str(ids[0]), "--yes")
    assert other.returncode == 1 and "of 'a', not of 'b'" in other.stderr
    done = cli("reset", "a", "--to", str(ids[0]), "--yes")
    assert (done.returncode, done.stdout) == (0, "")
    assert done.stderr.startswith("jobs-cli: reset 1: ") and done.stderr.endswith("cursor '10'\n")
    assert cli("last-success", "a").stdout == f"{first_start}\n"
    assert cli("last-success", "a", "--cursor").stdout == "10\n"
    history = json.loads(cli("history", "a", "--json").stdout)
    assert [(entry["kind"], entry["id"]) for entry in history] == [
        ("reset", 1), ("run", ids[1]), ("run", ids[0])]
    table = cli("history", "a", "--utc").stdout
    assert "reset 1 -> run 1" in table or "reset 1 → run 1" in table
    assert "10 → 20" in table or "10 -> 20" in table or "— → 20" in table
    assert cli("reset", "a", "--to-start", "--yes").returncode == 0
    assert cli("last-success", "a").returncode == 3
    assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 2


def test_reset_asks_on_a_terminal(cli_env, conn):
    run_id = subprocess.run(["jobs-cli", "start", "a"], env=cli_env, capture_output=True,
                            text=True).stdout.strip()
    subprocess.run(["jobs-cli", "finish", run_id], env=cli_env, check=True, capture_output=True)
    for answer, code, resets in (("n\n", 2, 0), ("y\n", 0, 1)):
        primary, secondary = os.openpty()
        try:
            asked = subprocess.Popen(["jobs-cli", "reset", "a", "--to", run_id], env=cli_env,
                                     stdin=secondary, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
            os.write(primary, answer.encode())
            _, stderr = asked.communicate(timeout=60)
        finally:
            os.close(secondary)
            os.close(primary)
        assert asked.returncode == code, stderr
        assert "Reset? [y/N]" in stderr
        assert conn.execute("SELECT count(*) FROM jobs_resets").fetchone()[0] == resets


def test_history_of_a_job_without_successes(cli):
    empty = cli("history", "never")
    # A bare header line in a pipe, as the other tables.
    assert (empty.returncode, empty.stdout.count("\n")) == (0, 1) and "loaded" in empty.stdout
    assert cli("history", "never", "--json").stdout == "[]\n"


@pytest.mark.parametrize("script", [
    "jobs-cli start a --message \"$(printf 'a\\377b')\"",
    "jobs-cli start a --source \"$(printf '\\377')\"",
    "JOBS_DESTINATION=\"$(printf '\\377')\" jobs-cli start a",
])
def test_text_that_is_not_utf8_is_a_usage_error(sh, conn, script):
    result = sh(script)
    assert result.returncode == 2 and "not valid UTF-8" in result.stderr
    assert result.stderr.count("\n") == 1
    assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (0,)


def test_a_cursor_too_long_to_hand_on_is_refused(cli, conn):
    run_id = cli("start", "a").stdout.strip()
    result = cli("finish", run_id, "--cursor", "c" * (64 * 1024 + 1))
    assert result.returncode == 2 and "longer than 65536 bytes" in result.stderr
    assert conn.execute("SELECT status FROM jobs").fetchone() == ("in_progress",)


def test_a_relative_jobs_home_is_refused(cli):
    result = cli("list", env={"JOBS_DATABASE_URL": "", "JOBS_HOME": "relative/home"})
    assert result.returncode == 2
    assert result.stderr == "jobs-cli: JOBS_HOME must be an absolute path, not 'relative/home'\n"



# -- exit --------------------------------------------------------------------------------

def test_exit_after_a_database_command_still_joins_threads_and_runs_atexit(cli_env, tmp_path):
    """Such a command ends without the interpreter's teardown: what the interpreter
    does at exit and the program's output must still all happen."""
    said = tmp_path / "said"
    code = ("import atexit, sys, threading, time\n"
            "from jobs_cli.entry import main\n"
            f"said = open({str(said)!r}, 'a')\n"
            "def late():\n"
            "    time.sleep(1)  # outlives the command but on the slowest machine\n"
            "    print('thread', file=said, flush=True)\n"
            "threading.Thread(target=late).start()\n"
            "atexit.register(lambda: print('atexit', file=said, flush=True) or print('bye'))\n"
            "sys.argv = ['jobs-cli', 'last-success', 'nothing-yet', '--default', '7']\n"
            "print('x' * 1000, end='')  # still in the buffer\n"
            "main()")
    env = {name: value for name, value in cli_env.items() if name != "PYTHONUNBUFFERED"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, "x" * 1000 + "7\nbye\n")
    assert said.read_text().split() == ["thread", "atexit"]  # the interpreter's order


# -- the embedded server's head start ---------------------------------------------------

def test_the_database_commands_are_every_command_but_server_and_completion():
    from jobs_cli.entry import DATABASE_COMMANDS

    assert DATABASE_COMMANDS == set(jobs_cli.commands) - {"server", "completion"}


HEAD_START = """
import json, sys
from jobs_cli import db, entry
from jobs_cli.server import EmbeddedServer
entry._head_start_embedded_server(sys.argv[1:])
click_loaded = "click" in sys.modules
for thread in list(db._starting.values()):
    thread.join()
print(json.dumps([click_loaded, EmbeddedServer(db.Database().home).address() is not None]))
"""


@pytest.mark.parametrize("args, url, starts", [
    (["last-success", "a"], False, True),
    (["run", "--name", "a", "--", "sh", "--help"], False, True),  # the command's --help
    (["last-success", "a"], True, False),
    (["last-success", "a", "--help"], False, False),
    (["--help"], False, False),
    (["--schema", "public", "list"], False, False),  # left to the command's connection
    (["server", "status"], False, False),
    (["completion", "bash"], False, False),
    (["lsit"], False, False),
    ([], False, False)])
def test_a_database_command_starts_the_embedded_server_before_click_is_loaded(
        cli_env, home, args, url, starts):
    env = {name: value for name, value in cli_env.items() if url or name != "JOBS_DATABASE_URL"}
    result = subprocess.run([sys.executable, "-c", HEAD_START, *args], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [False, starts]
    assert (home / "data").exists() == starts


# -- Ctrl-C ------------------------------------------------------------------------------

def interrupted_once(process: subprocess.Popen) -> None:
    _, stderr = process.communicate(timeout=60)
    assert (process.returncode, stderr) == (130, b"jobs-cli: interrupted\n")


def test_the_programs_are_the_guarded_entry_point():
    project = (ROOT / "pyproject.toml").read_text()
    for script in ("jobs-cli", "jobs"):
        assert f'\n{script} = "jobs_cli.entry:main"\n' in project
    assert (ROOT / "jobs_cli" / "__main__.py").read_text().startswith("from .entry import main")


def test_ctrl_c_while_the_tool_is_still_importing_is_one_line(cli_env, tmp_path):
    # A stand-in for click holds the import until the test has sent Ctrl-C.
    shim, importing = tmp_path / "shim", tmp_path / "importing"
    (shim / "click").mkdir(parents=True)
    (shim / "click" / "__init__.py").write_text(
        f"import pathlib, time\npathlib.Path({str(importing)!r}).touch()\n"
        "while True:\n    time.sleep(0.01)\n")
    process = subprocess.Popen([sys.executable, "-m", "jobs_cli", "start", "a"],
                               env={**cli_env, "PYTHONPATH": str(shim)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_until(importing.exists, what="the import")
    process.send_signal(signal.SIGINT)
    interrupted_once(process)


def test_ctrl_c_while_waiting_for_the_database_is_one_line(cli_env, conn):
    with psycopg.connect(conn.info.dsn) as holder:
        holder.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        process = subprocess.Popen(["jobs-cli", "start", "a"], env=cli_env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_until(lambda: conn.execute(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'jobs'::regclass"
        ).fetchone()[0], what="start to wait for the table")
        process.send_signal(signal.SIGINT)
        interrupted_once(process)
    assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (0,)


# -- names and messages of any Unicode, round trip ----------------------------------------

# Repeatable in CI and free of timing failures; one database serves every example.
PROPERTIES = settings(deadline=None, derandomize=True, database=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture])
# Any code point, lone surrogates included (bytes on a command line that were not UTF-8).
ANY_CHARACTER = st.characters(exclude_categories=())
ANY_TEXT = st.text(ANY_CHARACTER, max_size=30)


def refused_name(name: str) -> bool:
    """What the tool refuses in a name by design: nothing to see, a control character
    (NUL included), not UTF-8, or too long for a new run."""
    return (not name.strip() or len(name) > 255 or not encodable(name)
            or any(unicodedata.category(ch) == "Cc" for ch in name))


def refused_text(text: str) -> bool:
    """What the tool refuses in a message: what PostgreSQL cannot store."""
    return "\0" in text or not encodable(text)


def encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def refused_in_one_line(stdout: str, stderr: str, what: str) -> None:
    assert stdout == "" and stderr.count("\n") == 1, stderr
    assert stderr.startswith(f"jobs-cli: {what}") and "Traceback" not in stderr


@settings(PROPERTIES, max_examples=60)
@given(name=st.text(ANY_CHARACTER, max_size=12), message=ANY_TEXT, final=ANY_TEXT)
@example(name="x" * 256, message="", final="")
@example(name="orders", message="a\0b", final="")
@example(name="orders", message="caf\udce9", final="")
@example(name="-orders", message="--json", final="'; DROP TABLE jobs; --\u202e\r\n")
def test_names_and_messages_round_trip_through_start_finish_and_show(db_url, home, name,
                                                                     message, final):
    """In process (Click's runner), for many examples; the shell's part is below."""
    env = {"JOBS_DATABASE_URL": db_url, "JOBS_HOME": str(home)}

    def invoke(*args: str):
        return CliRunner().invoke(jobs_cli, list(args), env=env)

    started = invoke("start", "--message", message, "--json", "--", name)
    if refused_name(name) or refused_text(message):
        assert started.exit_code == 2
        refused_in_one_line(started.stdout, started.stderr,
                            "job name" if refused_name(name) else "message")
        return
    assert started.exit_code == 0, started.stderr
    run = json.loads(started.stdout)
    assert (run["name"], run["message"]) == (name, message)
    finished = invoke("finish", str(run["id"]), "--message", final, "--json")
    if refused_text(final):
        assert finished.exit_code == 2
        refused_in_one_line(finished.stdout, finished.stderr, "message")
        return
    assert finished.exit_code == 0, finished.stderr
    shown = json.loads(invoke("show", str(run["id"]), "--json").stdout)
    assert (shown["name"], shown["message"], shown["status"]) == (name, final, "success")


# What a command line can carry: no NUL; bytes that are not UTF-8 arrive as surrogates.
ARGUMENT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\0"),
                   min_size=1, max_size=20)
SHELL_ROUND_TRIP = ('id=$(jobs-cli start --message "$MESSAGE" -- "$NAME") && '
                    'jobs-cli finish "$id" --message "$FINAL" >/dev/null && '
                    'jobs-cli show "$id" --json')


@settings(PROPERTIES, max_examples=4)
@given(name=ARGUMENT, message=ARGUMENT, final=ARGUMENT)
@example(name="caf\udce9", message="x", final="x")  # a Latin-1 name, as the shell passes it
def test_names_and_messages_round_trip_through_the_shell(cli_env, name, message, final):
    env = {**cli_env, "NAME": name, "MESSAGE": message, "FINAL": final}
    result = subprocess.run(["sh", "-c", SHELL_ROUND_TRIP], env=env, capture_output=True,
                            text=True, timeout=120)
    if refused_name(name):
        assert result.returncode == 2
        refused_in_one_line(result.stdout, result.stderr, "job name")
        return
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert (shown["name"], shown["message"], shown["status"]) == (name, final, "success")
