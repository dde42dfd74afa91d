"""The embedded default: no database configured, the tool runs its own server."""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from jobs_cli.server import EmbeddedServer

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="checks what happens as root")


@pytest.fixture
def env(cli_env, home):
    return {k: v for k, v in cli_env.items() if k != "JOBS_DATABASE_URL"}


def run(env, *args, timeout=120):
    return subprocess.run(["jobs-cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def postmasters(home: Path) -> list[int]:
    """PIDs of postmasters serving this home's data directory."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"/postgres") and str(home / "data").encode() in argv:
            found.append(int(proc.name))
    return found


def test_concurrent_first_use_shares_one_server_and_later_calls_reuse_it(env, home):
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: run(env, "start", "job"), range(4)))
    assert [r.returncode for r in results] == [0] * 4, [r.stderr for r in results]
    assert sorted(int(r.stdout) for r in results) == [1, 2, 3, 4]
    first = postmasters(home)
    assert len(first) == 1
    assert run(env, "finish", "1").returncode == 0
    assert postmasters(home) == first


def test_command_substitution_does_not_wait_for_the_server(env):
    """The server must not inherit the caller's stdout, or $(...) would never end."""
    result = subprocess.run(["sh", "-c", 'id=$(jobs-cli start a) && echo "got $id"'], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.stdout == "got 1\n"


def test_server_status_start_stop(env, home):
    before = run(env, "server", "status")
    assert before.returncode == 3 and "running: no" in before.stdout
    started = run(env, "server", "start")
    assert started.returncode == 0, started.stderr
    url = started.stdout.strip()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (0,)
    status = run(env, "server", "status")
    assert status.returncode == 0
    assert f"data:    {home / 'data'}" in status.stdout and f"psql '{url}'" in status.stdout
    assert run(env, "server", "stop").returncode == 0
    assert postmasters(home) == []
    assert run(env, "start", "a").stdout == "1\n"  # started again on demand


def test_stale_pid_file_of_an_unrelated_live_process(env, home):
    assert run(env, "start", "a").returncode == 0
    EmbeddedServer(home).stop()
    # After a crash and reboot the recorded PID may belong to anything, e.g. us.
    (home / "data" / "postmaster.pid").write_text(
        f"{os.getpid()}\n{home / 'data'}\n0\n5432\n{home / 'run'}\n\n0 0\nready\n")
    result = run(env, "start", "b")
    assert (result.returncode, result.stdout) == (0, "2\n"), result.stderr


def test_long_home_path_uses_a_private_socket_directory(env, home):
    deep = home / ("x" * 60) / ("y" * 60)
    result = run({**env, "JOBS_HOME": str(deep)}, "start", "a")
    try:
        assert result.returncode == 0, result.stderr
        socket_dir, _ = EmbeddedServer(deep).address()
        assert not socket_dir.startswith(str(deep))
        assert os.stat(socket_dir).st_mode & 0o077 == 0
    finally:
        EmbeddedServer(deep).stop()


def test_schema_applied_to_named_schema_on_first_use(env):
    result = run({**env, "JOBS_SCHEMA": "etl"}, "start", "a")
    assert result.returncode == 0, result.stderr
    url = run(env, "server", "start").stdout.strip()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM etl.jobs").fetchone() == (1,)


@as_root
def test_as_root_the_server_runs_unprivileged_in_private_directories(env, home):
    assert run(env, "start", "a").returncode == 0
    (pid,) = postmasters(home)
    assert os.stat(f"/proc/{pid}").st_uid != 0
    data = os.stat(home / "data")
    assert data.st_uid != 0 and data.st_mode & 0o777 == 0o700
    assert os.stat(home).st_mode & 0o777 == 0o755  # as we made it, not loosened


@as_root
def test_as_root_an_unreachable_home_is_a_clear_error(env, home):
    locked = home / "locked"
    locked.mkdir(mode=0o700)
    result = run({**env, "JOBS_HOME": str(locked / "jobs")}, "start", "a")
    assert result.returncode == 1
    assert "jobs-cli: cannot create the embedded cluster" in result.stderr
    assert "search permission" in result.stderr
    assert os.stat(locked).st_mode & 0o777 == 0o700
