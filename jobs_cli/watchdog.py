"""The watchdog: the command's process group dies with its wrapper, kill -9 included.

A wrapper killed with SIGKILL (the OOM killer, an operator's kill -9) runs no
clean-up, and PR_SET_PDEATHSIG would reach only its direct child, not
`sh -c 'extract | load'`'s pipeline. So before anything else the wrapper starts
a watchdog: a tiny /bin/sh that leads a new process group (the command joins
it later) and reads a pipe whose write end only the wrapper holds.

- The wrapper ends normally: it writes a line and closes the pipe; the watchdog
  reads the line and exits, leaving the group alone.
- The wrapper dies: the kernel closes its end, the watchdog reads EOF, says so
  on stderr and sends SIGKILL to its own group, itself included.

Why SIGKILL straight away and not SIGTERM first: whoever killed the wrapper
with SIGKILL wanted it gone at once, nobody is left to record a graceful end,
and the job's next run may start as soon as the group is gone (see `fencing`);
a grace period would only be a window in which the old command still runs
with nobody to answer for it.

Why a shell and not Python: it starts in ~2 ms against ~15 ms, and
`jobs-cli run` start-up is what a cron job pays every time. It is spawned
without preexec_fn, so Popen keeps vfork. SIGINT, SIGTERM and SIGHUP are
blocked in the wrapper while it spawns, and the watchdog inherits the mask
before its `trap` ignores them: what the wrapper forwards to the group (Ctrl-C,
a timeout's SIGTERM) never ends the watchdog, not even in its first
microseconds. SIGPIPE is ignored too, so a closed stderr cannot stop it before
the kill. Its stdout is /dev/null and it never holds the command's pipes: it
is started before they exist, and Popen closes every other descriptor.

Caveats: a process that leaves the group (setsid, setpgid: daemons) escapes;
so does anything started after the watchdog was itself killed by hand.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

# $PPID is the wrapper's pid, fixed when the shell started.
SCRIPT = ("trap '' INT TERM HUP PIPE; read -r _ && exit 0;"
          " echo \"jobs-cli: the wrapper (pid $PPID) died; killing its command\" >&2;"
          " kill -s KILL 0")

_BLOCKED_WHILE_SPAWNING = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
# Watchdogs told to exit and not yet reaped.
_standing_down: list[subprocess.Popen] = []


# Popen learnt process_group in 3.11; preexec_fn does the same on 3.10, at the
# cost of a plain fork instead of vfork.
_HAS_PROCESS_GROUP = sys.version_info >= (3, 11)


def join_group(pgid: int) -> dict:
    """Popen arguments that start a process in group `pgid` (0: a new group of its own)."""
    if _HAS_PROCESS_GROUP:
        return {"process_group": pgid}
    return {"preexec_fn": lambda: os.setpgid(0, pgid)}


class Watchdog:
    """Leads the process group the command joins, and kills it if the wrapper dies.

    Use as a context manager: leaving the block (normally or by an exception)
    stands the watchdog down. Only a wrapper that dies without leaving it sets it off.
    """

    def __init__(self) -> None:
        _standing_down[:] = [process for process in _standing_down if process.poll() is None]
        read_end, self._write_end = os.pipe()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED_WHILE_SPAWNING)
        try:
            process = subprocess.Popen(["/bin/sh", "-c", SCRIPT], stdin=read_end,
                                       stdout=subprocess.DEVNULL, **join_group(0))
        except BaseException:
            os.close(self._write_end)
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
            os.close(read_end)
        self._process = process
        self.pgid = process.pid

    def stand_down(self) -> None:
        """The wrapper is done: let the watchdog exit without killing anything."""
        if self._write_end < 0:
            return
        try:
            os.write(self._write_end, b"\n")
        except OSError:
            pass  # it is gone already (a timeout's SIGKILL ended the whole group)
        finally:
            os.close(self._write_end)
            self._write_end = -1
        # Not waited for, which would only add to the wrapper's time: reaped by a
        # later Watchdog in this process, or by init once the wrapper has exited.
        _standing_down.append(self._process)

    def __enter__(self) -> Watchdog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stand_down()
