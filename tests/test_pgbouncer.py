"""Every command through PgBouncer in transaction-pooling mode, as real subprocesses.

A pooler in transaction mode hands each transaction whatever server connection
is free. Session state (a plain SET, a session advisory lock, LISTEN, a
prepared statement) then lands on a connection another client gets next, and
a server message that arrives after a transaction ended (a notice, a
notification) reaches a connection no client owns: PgBouncer logs "got packet
… from server when not linked". So each test reads PgBouncer's log once
PgBouncer has stopped, and fails on any such line. (A server that stops in
immediate mode or crashes, or a database dropped under PgBouncer, logs such
lines too: here neither happens before PgBouncer has stopped.)

PgBouncer (Debian's package; .ci/run installs it) refuses to run as root: it
runs as the account that owns the test server's socket directory, which is
the server's own account, so it can reach the server through that socket.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from conftest import private_dir, wait_until
from psycopg import sql
from seeding import add_run
from test_cli_views import on_a_terminal

from jobs_cli.server import PORT, SUPERUSER

# Two server connections for every client: consecutive transactions of one
# client do not always meet the same session, as in production.
POOL_SIZE = 2
# Settings a database may default to that jobs-cli cannot work with (DateStyle
# psycopg cannot parse, an encoding without "✓"): its connection setup must
# hold through the pooler on every server connection.
AWKWARD_DEFAULTS = {"DateStyle": "German, DMY", "client_encoding": "LATIN1"}
# Lines PgBouncer writes when the server spoke out of turn or hung up.
TROUBLE = ("not linked", "server conn crashed")
WAIT_FOR_GO = "while [ ! -e go ]; do sleep 0.02; done"

# log_disconnections stays on (the default): "server conn crashed?" is logged as one.
CONFIG = """\
[databases]
* = host={socket_dir} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir =
pool_mode = transaction
default_pool_size = {pool_size}
auth_type = trust
auth_file = {dir}/users.txt
logfile = {dir}/pgbouncer.log
log_connections = 0
"""


def pgbouncer_binary() -> str:
    """PgBouncer's path; fails under CI (which must test it), skips elsewhere."""
    found = shutil.which("pgbouncer", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/usr/local/sbin")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("pgbouncer is not installed, and CI must run these tests (.ci/run installs it)")
    pytest.skip("pgbouncer is not installed (Debian: apt-get install pgbouncer)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Bouncer:
    process: subprocess.Popen
    dir: Path
    url: str

    def stop(self) -> str:
        """Stop PgBouncer and return its log."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        return (self.dir / "pgbouncer.log").read_text(errors="replace")

    def assert_clean_log(self) -> None:
        log = self.stop()
        trouble = [line for line in log.splitlines() if any(text in line for text in TROUBLE)]
        assert not trouble, "\n".join(trouble)


@pytest.fixture
def bouncer(pg_server, db_url, conn):
    """PgBouncer in transaction mode in front of this test's database, whose session
    defaults are AWKWARD_DEFAULTS; stopped before the database is dropped."""
    binary = pgbouncer_binary()
    dbname = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
    for name, value in AWKWARD_DEFAULTS.items():
        conn.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(
            sql.Identifier(dbname), sql.Identifier(name), sql.Literal(value)))
    # The server's account when we are root (PgBouncer refuses root), else ourselves.
    account = pwd.getpwuid(os.stat(pg_server["host"]).st_uid)
    as_account = {"user": account.pw_uid, "group": account.pw_gid,
                  "extra_groups": []} if os.geteuid() == 0 else {}
    workdir = private_dir("jobs-cli-test-pgbouncer-")
    (workdir / "users.txt").write_text(f'"{SUPERUSER}" ""\n')
    port = free_port()
    (workdir / "pgbouncer.ini").write_text(CONFIG.format(
        socket_dir=pg_server["host"], port=PORT, listen_port=port, pool_size=POOL_SIZE,
        dir=workdir))
    if os.geteuid() == 0:
        for path in (workdir, *workdir.iterdir()):
            os.chown(path, account.pw_uid, account.pw_gid)
    process = subprocess.Popen([binary, str(workdir / "pgbouncer.ini")], cwd=workdir,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **as_account)
    bouncer = Bouncer(process, workdir,
                      f"host=127.0.0.1 port={port} user={SUPERUSER} dbname={dbname}")

    def ready() -> bool:
        assert process.poll() is None, (workdir / "pgbouncer.log").read_text()
        try:
            with psycopg.connect(bouncer.url, connect_timeout=2) as probe:
                return probe.execute("SELECT 1").fetchone() == (1,)
        except psycopg.OperationalError:
            return False

    try:
        wait_until(ready, timeout=30, what="pgbouncer to accept connections")
        yield bouncer
    finally:
        bouncer.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def pooled(cli, bouncer):
    """Run jobs-cli through PgBouncer: pooled("start", "a") -> CompletedProcess."""
    def run(*args: str, env: dict[str, str] | None = None):
        return cli(*args, env={"JOBS_DATABASE_URL": bouncer.url, **(env or {})})
    return run


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result
    return result.stdout


def test_the_recording_commands_and_the_views_through_pgbouncer(pooled, bouncer, conn):
    ok(pooled("init"))  # its notices come inside its transaction
    name = "ünï ✓ job"  # not in LATIN1: client_encoding must be UTF8 on every server connection
    good = ok(pooled("start", name, "--source", "erp")).strip()
    assert ok(pooled("finish", good, "--records", "5")).strip() == good
    bad = ok(pooled("start", "other")).strip()
    assert ok(pooled("fail", bad, "--message", "source down")).strip() == bad
    assert pooled("fail", bad).returncode == 1  # already ended: refused, one line

    started = conn.execute("SELECT floor(extract(epoch FROM start_date))::bigint FROM jobs "
                           "WHERE id = %s", (int(good),)).fetchone()[0]
    assert ok(pooled("last-success", name)).strip() == str(started)
    assert name in ok(pooled("list"))
    assert "source down" in ok(pooled("list", "--status", "error"))
    assert name in ok(pooled("status"))
    assert ok(pooled("show", good, "--json")).count(name) == 1
    assert ok(pooled("check", name, "--max-age", "1h")).startswith("OK")
    assert pooled("check", "other", "--max-age", "1h").returncode == 2
    assert 'jobs_runs_total{job="other",status="error"} 1' in ok(pooled("metrics"))
    bouncer.assert_clean_log()


def test_run_with_heartbeats_overlap_and_report_through_pgbouncer(pooled, bouncer, conn,
                                                                   cli_env, tmp_path):
    script = f"jobs-cli report --records 7 --message halfway && {WAIT_FOR_GO}"
    wrapper = subprocess.Popen(
        ["jobs-cli", "run", "--name", "load", "--", "sh", "-c", script],
        env={**cli_env, "JOBS_DATABASE_URL": bouncer.url, "JOBS_HEARTBEAT_SECONDS": "1"},
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def heartbeats() -> set:
            seen.update(conn.execute("SELECT heartbeat_at FROM jobs WHERE name = 'load' "
                                     "AND records_processed = 7").fetchall())
            return len(seen) >= 3  # the claim's and two heartbeats'
        seen: set = set()
        wait_until(heartbeats, timeout=30, what="two heartbeats through pgbouncer")

        overlap = pooled("run", "--name", "load", "--", "true")
        assert overlap.returncode == 75 and "already running" in overlap.stderr, overlap
        (tmp_path / "go").touch()
        _, stderr = wrapper.communicate(timeout=60)
    finally:
        (tmp_path / "go").touch()
        if wrapper.poll() is None:
            wrapper.kill()
            wrapper.communicate()
    assert wrapper.returncode == 0, stderr
    assert conn.execute("SELECT status, exit_code, records_processed, message FROM jobs "
                        "WHERE name = 'load'").fetchall() == [("success", 0, 7, "halfway")]
    bouncer.assert_clean_log()


def test_watch_polls_through_pgbouncer_instead_of_listening(bouncer, conn, cli_env):
    add_run(conn, "before_watch")
    env = {**cli_env, "JOBS_DATABASE_URL": bouncer.url}
    with on_a_terminal(env, "watch", "--interval", "1s") as terminal:
        terminal.read_until(b"before_watch")
        # Written past the pooler: a LISTEN left on a pooled server connection
        # would be notified while no client owns that connection.
        add_run(conn, "after_watch", "in_progress", ago=1, lease=60)
        terminal.read_until(b"after_watch")
        assert terminal.ctrl_c() == 0
    bouncer.assert_clean_log()
