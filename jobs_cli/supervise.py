"""Run a command on behalf of `jobs-cli run` and tell how it ended.

`jobs-cli run --name NAME -- COMMAND [ARGS...]` wraps a command the way runitor or
timeout(1) do. This module is the wrapper's process handling; it knows nothing of the
database, which it reaches only through the `heartbeat` callback.

Output
    The child's stdout is inherited: the wrapper never touches it, so it stays byte
    exact and full speed (12.8 GB/s straight to the inherited fd against 2.3 GB/s
    through a copying loop), and `jobs-cli run ... -- extract | load` behaves as
    `extract | load` does, SIGPIPE included. stdin is inherited too.

    stderr goes through a pipe. The wrapper passes each chunk on to its own fd 2 as
    soon as it arrives (no buffering, so logs appear live) and keeps the last
    `tail_bytes` for the run's record, as runitor does: memory stays bounded however
    much the child writes. The pipe is enlarged to 1 MiB once that much has passed,
    and on Linux the bytes are passed on by the kernel without being copied through
    the wrapper (see `pipecopy`; bench/run.py measures it against `2>&1 | cat`). If
    the wrapper's stderr goes away (closed, broken pipe) it keeps reading, so the
    tail is still recorded and the child is neither blocked nor killed by the
    wrapper's problem.

    With `capture_stdout`, stdout takes the same path into the same tail, for commands
    that explain their failures on stdout; that costs a pipe and a copy. If the
    wrapper's stdout breaks, the wrapper closes the child's stdout pipe so the child
    sees the broken pipe it would have seen without the wrapper.

    A reader of the wrapper's stderr that stops reading blocks the copy and the loop
    with it: signals and the timeout wait until it reads again, as a child writing
    there directly would wait too.

Process group
    The child runs in a process group of its own, and signals go to the whole group.
    The group is led by a watchdog (see `watchdog`) that kills it should the
    wrapper die without ending it: not even kill -9 of the wrapper leaves the
    command running unsupervised.
    A timeout has to end the whole tree: in `sh -c 'a | b'`, killing sh alone would
    leave a and b running and holding the pipes. And Ctrl-C in a terminal signals the
    terminal's foreground group: were the child in the wrapper's group it would get
    SIGINT twice, once from the terminal and once forwarded; in its own group it gets
    it once, from the wrapper. The price, as with timeout(1) without --foreground: a
    child that reads from the terminal is stopped (SIGTTIN), and Ctrl-Z stops only
    the wrapper. Jobs are meant to run unattended.

Signals
    SIGINT, SIGTERM and SIGHUP received while the child runs are forwarded to its
    group, every time: the child decides how long its cleanup takes (the timeout, if
    any, still applies). The outcome is then "interrupted by SIGxxx" with exit code
    128+N, whatever the child exited with, so the record says why the run ended. A
    signal the wrapper was started with ignored (nohup, `cmd &` in a script) gets no
    handler and stays ignored, so the child inherits the ignore as it would have.

Timeout
    After `timeout` seconds the group gets SIGTERM, and SIGKILL `kill_after` seconds
    later if the child is still alive; the exit code is 124, as with timeout(1).
    Whichever comes first, interruption or timeout, names the outcome.

Main loop
    One thread selects on the child's pipes and on a wake-up pipe that
    signal.set_wakeup_fd fills when a forwarded signal or SIGCHLD arrives, with the
    time to the next timeout step as the limit. It sleeps until there is output, a
    signal, a child exit or a deadline: no polling, and a child that closed its
    stderr early is still waited for. Once the child has exited, what is left in the
    pipes is copied and the pipes are closed: a background grandchild holding stderr
    open does not keep the run open.
    While the child runs, the main loop's thread is scheduled as SCHED_BATCH (Linux;
    the child and the heartbeat's thread, started before, keep the caller's policy,
    and so does what they start): woken for output, it then no longer preempts the
    child, which goes on filling the pipe, so each wake-up copies much more. Its
    reaction to signals and deadlines is late by a scheduler tick at most, and only
    while the CPU is busy. On one core, 4 GiB of stderr: 1.01x the speed of
    `2>&1 | cat` without, 1.17x with.

Heartbeat
    `heartbeat` runs in a thread of its own. In the main loop, a slow database call
    would stop the stderr copy (the child then blocks on a full pipe) and delay
    forwarded signals and the timeout. The thread only calls `heartbeat`, and the
    wrapper waits for a call in progress before returning: the callback and the
    caller never use a connection at the same time.
    So `heartbeat` should bound its own time (connect_timeout, statement_timeout). A
    failing heartbeat does not stop the run by itself: it prints one line on stderr
    per streak of failures. Calls start every `heartbeat_interval` seconds (a slow
    one is followed at once by the next).

Fencing
    A heartbeat that raises `Fence` (the run is no longer this wrapper's: someone
    ended it) stops the command: SIGTERM to the group, SIGKILL `kill_after` later;
    the outcome is `fenced`, exit code EXIT_FENCED. With `renew_within`, the command
    must also be gone within that many seconds of the start of the last heartbeat
    that succeeded (or of `renewed_at`): SIGTERM comes `kill_after` before that
    moment, but at most a quarter of `renew_within` (so that a healthy run, renewed
    every interval, is never stopped), SIGKILL at it. The caller derives it from its
    lease, so that the command is gone before the lease runs out.

Starting
    subprocess.Popen reports a failed exec in the child as an OSError in the parent,
    synchronously, so the outcome follows shell conventions: 127 for a command not
    found, 126 for one that cannot be executed (a script whose #! interpreter is
    missing included, although exec calls that "not found" too).

supervise() handles signals, so it must be called from the main thread.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO, Callable, Iterator, Mapping, Sequence

from . import config
from .durations import format_duration
from .errors import EXIT_FENCED
from .pipecopy import Copier, write_all
from .text import error_line
from .watchdog import Watchdog, join_group

EXIT_TIMED_OUT = 124
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# Bounds the copy of what is left in the pipes once the child has exited; only a
# background grandchild that keeps writing can use it all.
_DRAIN_LIMIT = 1.0

# Written to the wake-up pipe by the heartbeat thread: news for the main loop.
_HEARTBEAT_NEWS = b"\0"


class Fence(Exception):
    """Raised by a heartbeat: the run is no longer the wrapper's, stop the command."""


@dataclass(frozen=True)
class Outcome:
    """How a supervised command ended, ready to record and to exit with."""

    exit_code: int  # what the wrapper should exit with
    description: str  # "exit code 3", "killed by SIGKILL", "timed out after 1m30s", ...
    tail: bytes  # last bytes of stderr (and of stdout when captured)
    fenced: bool = False  # stopped because a heartbeat raised Fence

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0


def supervise(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    kill_after: float = config.DEFAULT_KILL_AFTER_SECONDS,
    tail_bytes: int = config.DEFAULT_TAIL_BYTES,
    capture_stdout: bool = False,
    heartbeat: Callable[[], None] | None = None,
    heartbeat_interval: float = config.DEFAULT_HEARTBEAT_SECONDS,
    renew_within: float | None = None,
    renewed_at: float | None = None,
    watchdog: Watchdog | None = None,
) -> Outcome:
    """Run `argv` (no shell) to its end and return how it ended. Main thread only.

    `heartbeat()` is called every `heartbeat_interval` seconds while the child runs;
    see Fencing above for `renew_within` and `renewed_at` (time.monotonic(), default
    now). The child joins `watchdog`'s group, or a watchdog's of its own. An
    exception in the wrapper itself (KeyboardInterrupt included) kills the child's
    group before propagating.
    """
    if not argv:
        raise ValueError("no command given")
    if heartbeat_interval <= 0:
        raise ValueError(f"heartbeat_interval must be positive, got {heartbeat_interval}")
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("supervise() must run in the main thread: it handles signals")
    if watchdog is None:
        with Watchdog() as own:
            return supervise(argv, env=env, timeout=timeout, kill_after=kill_after,
                             tail_bytes=tail_bytes, capture_stdout=capture_stdout,
                             heartbeat=heartbeat, heartbeat_interval=heartbeat_interval,
                             renew_within=renew_within, renewed_at=renewed_at, watchdog=own)
    renewed_at = time.monotonic() if renewed_at is None else renewed_at
    _flush_python_streams()
    with _SignalWakeup() as wakeup, Copier(tail_bytes) as copier:
        try:
            child = subprocess.Popen(
                list(argv), env=env, stderr=subprocess.PIPE,
                stdout=subprocess.PIPE if capture_stdout else None,
                **join_group(watchdog.pgid))
        except OSError as error:
            return _exec_failure(argv[0], error, env)
        with child:
            try:
                beating = _Heartbeat(heartbeat, heartbeat_interval, renewed_at, wakeup)
                run = _Run(child, watchdog.pgid, copier, wakeup, timeout, kill_after,
                           beating, renew_within)
                # The heartbeat's thread is started first, keeping the caller's policy:
                # it may start the embedded server, which would keep SCHED_BATCH for good.
                with beating if heartbeat is not None else contextlib.nullcontext(), \
                        _scheduled_as_batch():
                    return run.wait()
            except BaseException:
                # Nobody would record or stop the command after this: end it now.
                _signal_group(watchdog.pgid, signal.SIGKILL)
                raise


@contextlib.contextmanager
def _scheduled_as_batch() -> Iterator[None]:
    """The calling thread as SCHED_BATCH, and what it starts meanwhile (see Main loop);
    left alone when it runs under another policy than the default."""
    batch = getattr(os, "SCHED_BATCH", None)
    try:
        switched = batch is not None and os.sched_getscheduler(0) == os.SCHED_OTHER
        if switched:
            os.sched_setscheduler(0, batch, os.sched_param(0))
    except OSError:
        switched = False  # not allowed (a seccomp filter): the copy is only slower
    try:
        yield
    finally:
        if switched:
            with contextlib.suppress(OSError):
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def _flush_python_streams() -> None:
    """What the caller printed must come out before the child's output."""
    for stream in (sys.stdout, sys.stderr):
        # None when Python started with the fd closed; a broken one must not stop the run.
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.flush()


class _Run:
    """The main loop over one started child: copy output, forward signals, time out."""

    def __init__(self, child: subprocess.Popen, pgid: int, copier: Copier,
                 wakeup: _SignalWakeup, timeout: float | None, kill_after: float,
                 heartbeat: _Heartbeat, renew_within: float | None) -> None:
        self._child = child
        self._pgid = pgid
        self._heartbeat = heartbeat
        self._renew_within = renew_within
        self._copier = copier
        self._wakeup = wakeup
        self._timeout = timeout
        self._kill_after = kill_after
        self._pipes = {child.stderr: copier.stream(child.stderr.fileno(), 2,
                                                   read_past_broken_target=True)}
        if child.stdout is not None:
            self._pipes[child.stdout] = copier.stream(child.stdout.fileno(), 1,
                                                      read_past_broken_target=False)
        self._terminate_at = None if timeout is None else time.monotonic() + timeout
        self._kill_at: float | None = None
        self._interrupted_by: int | None = None
        self._timed_out_after: float | None = None
        self._fenced = False
        self._lease_lost_after: float | None = None
        self._stopping = False  # SIGTERM sent for a fence or a lost lease

    def wait(self) -> Outcome:
        with selectors.DefaultSelector() as selector:
            selector.register(self._wakeup.fd, selectors.EVENT_READ)
            for pipe in self._pipes:
                selector.register(pipe, selectors.EVENT_READ, pipe)
            while self._child.poll() is None:
                self._copy_until_news(selector)
                self._take_timeout_steps()
                self._take_fencing_steps()
            self._drain(selector)
        return self._outcome()

    def _copy_until_news(self, selector: selectors.BaseSelector) -> None:
        """Copy output until a signal (SIGCHLD included), a heartbeat's news or the
        time of the next step: the child's state and the steps change only then, so a
        chatty child costs no more than the copy per chunk."""
        wait = self._seconds_to_next_step()
        until = None if wait is None else time.monotonic() + wait
        while True:
            left = None if until is None else max(0.0, until - time.monotonic())
            events = selector.select(left)
            if not events:
                return
            news = False
            for key, _ in events:
                if key.data is None:
                    self._forward(self._wakeup.received())
                    news = True
                else:
                    self._copy(selector, key.data)
            # A child whose output never stops (the pipe is ready at every select)
            # must not hold off its timeout, SIGKILL or lost lease.
            if news or (until is not None and time.monotonic() >= until):
                return

    def _copy(self, selector: selectors.BaseSelector, pipe: IO[bytes]) -> None:
        if not self._copier.copy(self._pipes[pipe]):
            selector.unregister(pipe)
            pipe.close()
            del self._pipes[pipe]

    def _drain(self, selector: selectors.BaseSelector) -> None:
        give_up_at = time.monotonic() + _DRAIN_LIMIT
        while self._pipes and time.monotonic() < give_up_at:
            ready = [key.data for key, _ in selector.select(0) if key.data is not None]
            if not ready:
                return
            for pipe in ready:
                self._copy(selector, pipe)

    def _forward(self, signals: bytes) -> None:
        for signum in signals:
            if signum not in FORWARDED_SIGNALS:
                continue  # SIGCHLD: the loop's poll() looks at the child; 0: heartbeat news
            if not self._ending_for_a_reason():
                self._interrupted_by = signum
            _signal_group(self._pgid, signum)

    def _ending_for_a_reason(self) -> bool:
        """Whichever comes first names the outcome."""
        return (self._interrupted_by is not None or self._timed_out_after is not None
                or self._fenced or self._lease_lost_after is not None)

    def _lease_deadline(self) -> float | None:
        """When the command must be gone, given the last heartbeat that got through."""
        if self._renew_within is None:
            return None
        return self._heartbeat.renewed_at + self._renew_within

    def _lease_grace(self) -> float:
        assert self._renew_within is not None
        return min(self._kill_after, self._renew_within / 4)

    def _seconds_to_next_step(self) -> float | None:
        steps = [at for at in (self._terminate_at, self._kill_at) if at is not None]
        deadline = self._lease_deadline()
        if deadline is not None and not self._stopping:
            steps += [deadline - self._lease_grace(), deadline]
        if not steps:
            return None
        return max(0.0, min(steps) - time.monotonic())

    def _take_fencing_steps(self) -> None:
        now = time.monotonic()
        deadline = self._lease_deadline()
        lease_lost = deadline is not None and now >= deadline - self._lease_grace()
        if not (self._heartbeat.fenced or lease_lost):
            return
        if not self._ending_for_a_reason():
            self._fenced = self._heartbeat.fenced
            if not self._fenced:
                self._lease_lost_after = now - self._heartbeat.renewed_at
        if not self._stopping:
            self._stopping = True
            _signal_group(self._pgid, signal.SIGTERM)
            kill_at = now + self._kill_after
            if deadline is not None and lease_lost:
                kill_at = min(kill_at, deadline)
            self._kill_at = kill_at if self._kill_at is None else min(self._kill_at, kill_at)

    def _take_timeout_steps(self) -> None:
        now = time.monotonic()
        if self._terminate_at is not None and now >= self._terminate_at:
            self._terminate_at = None
            self._kill_at = now + self._kill_after
            if not self._ending_for_a_reason():
                self._timed_out_after = self._timeout
            _signal_group(self._pgid, signal.SIGTERM)
        if self._kill_at is not None and now >= self._kill_at:
            self._kill_at = None
            _signal_group(self._pgid, signal.SIGKILL)

    def _outcome(self) -> Outcome:
        returncode = self._child.returncode
        tail = self._copier.tail()
        killed_by = -returncode if returncode < 0 else None
        if self._interrupted_by is not None:
            signum = self._interrupted_by
            return Outcome(128 + signum, f"interrupted by {_signal_name(signum)}", tail)
        if self._timed_out_after is not None:
            return Outcome(EXIT_TIMED_OUT,
                           f"timed out after {format_duration(self._timed_out_after)}", tail)
        if self._fenced:
            return Outcome(EXIT_FENCED, "stopped: the run was ended by someone else", tail,
                           fenced=True)
        if self._lease_lost_after is not None:
            return Outcome(EXIT_FENCED, "stopped: no heartbeat got through for "
                           f"{format_duration(self._lease_lost_after)}", tail)
        if killed_by is not None:
            return Outcome(128 + killed_by, f"killed by {_signal_name(killed_by)}", tail)
        return Outcome(returncode, f"exit code {returncode}", tail)


class _SignalWakeup:
    """Turns forwarded signals and SIGCHLD into bytes (signal numbers) on a pipe.

    The main loop selects on `fd`; the handlers themselves do nothing, the byte
    signal.set_wakeup_fd writes is the whole message. Installed before the child
    starts, so a signal arriving meanwhile waits in the pipe to be forwarded.
    """

    def __enter__(self) -> _SignalWakeup:
        self.fd, self._write_fd = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._write_fd, False)  # set_wakeup_fd requires it
        self._previous_handlers = {}
        for signum in (*FORWARDED_SIGNALS, signal.SIGCHLD):
            if signum != signal.SIGCHLD and signal.getsignal(signum) == signal.SIG_IGN:
                continue
            self._previous_handlers[signum] = signal.signal(signum, _wake_only)
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        return self

    def received(self) -> bytes:
        try:
            return os.read(self.fd, 4096)
        except BlockingIOError:
            return b""

    def wake(self) -> None:
        """Wake the main loop from another thread."""
        try:
            os.write(self._write_fd, _HEARTBEAT_NEWS)
        except BlockingIOError:
            pass  # full: the loop has plenty to wake up for already

    def __exit__(self, *exc_info: object) -> None:
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        os.close(self.fd)
        os.close(self._write_fd)


def _wake_only(signum: int, frame: object) -> None:
    """Handler for the signals _SignalWakeup watches: the wake-up byte says it all."""


class _Heartbeat:
    """Calls `beat` every `interval` seconds in a thread until the block ends.

    `renewed_at` is when the last call that succeeded started; `fenced` turns
    true when a call raised Fence, which ends the calls. Both are news for the
    main loop, which the thread wakes through the wake-up pipe.
    """

    def __init__(self, beat: Callable[[], None] | None, interval: float, renewed_at: float,
                 wakeup: _SignalWakeup) -> None:
        self._beat = beat
        self._interval = interval
        self._wakeup = wakeup
        self.renewed_at = renewed_at
        self.fenced = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="jobs-cli heartbeat")

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        failing = False
        next_at = time.monotonic() + self._interval
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            began = time.monotonic()
            next_at = began + self._interval
            try:
                self._beat()
            except Fence:
                self.fenced = True
                self._wakeup.wake()
                return
            except Exception as error:
                if not failing:
                    write_all(2, f"jobs-cli: heartbeat failed: {error_line(error)}\n"
                               .encode(errors="replace"))
                failing = True
            else:
                failing = False
                self.renewed_at = began
                self._wakeup.wake()


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone, or what is left of it runs as another user


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _exec_failure(command: str, error: OSError, env: Mapping[str, str] | None) -> Outcome:
    if isinstance(error, FileNotFoundError):
        if _find_file(command, env) is None:
            return _not_started(EXIT_NOT_FOUND, f"command not found: {command}")
        # The file is there, so what is missing is the interpreter its #! line names
        # (a stray \r at the end of that line is the classic) or an ELF loader.
        return _not_started(EXIT_CANNOT_EXECUTE, f"cannot execute {command}: interpreter not found")
    if isinstance(error, PermissionError):
        if os.sep not in command and _find_file(command, env) is None:
            # EACCES from a PATH directory we may not search, and the command is in
            # none of the others: not found, as a shell says.
            return _not_started(EXIT_NOT_FOUND, f"command not found: {command}")
        return _not_started(EXIT_CANNOT_EXECUTE, f"not executable: {command}")
    return _not_started(EXIT_CANNOT_EXECUTE, f"cannot execute {command}: {error.strerror or error}")


def _find_file(command: str, env: Mapping[str, str] | None) -> str | None:
    # The PATH Popen searched: the child's environment's, not necessarily ours.
    search_path = os.pathsep.join(os.get_exec_path(env))
    return shutil.which(command, mode=os.F_OK, path=search_path)


def _not_started(exit_code: int, description: str) -> Outcome:
    return Outcome(exit_code, description, b"")
