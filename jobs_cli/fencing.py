"""Whether a run's wrapper is still alive, as far as this host can tell.

A supervised run records who keeps it: the host, the kernel's boot id
(/proc/sys/kernel/random/boot_id), the wrapper's pid and its start time (clock
ticks since boot, field 22 of /proc/PID/stat), and the process group of its
command, led by the watchdog (see `watchdog`). A pid alone would not do: pids
are reused (pid_max is often 32768), a start time within one boot is not.

The database cannot see /proc, so `claim_run` and `reap_runs` read the
candidate runs of this host and ask `verdict` about each:

- ALIVE: same host and boot, and the wrapper process is there with the same
  start time. Never reaped, whatever its lease says: a wrapper that cannot
  renew its lease (a stopped process, a database it cannot reach) still
  supervises a command that runs.
- DEAD: same host, another boot (everything of the old one is gone); or same
  boot, the wrapper is gone (or a zombie, or its pid now names another
  process) and its command's group has no living member left. Reaped at once.
- UNKNOWN: another host, a row without identity (`jobs-cli start`, older
  versions), or a wrapper that is gone while its group still lives (the
  watchdog is still killing it, or a member escaped it). The lease decides.

Limits. Host names must tell the machines sharing a database apart. In a
pid namespace of its own (a container) a process sees only its namespace's
pids, so the namespace is part of the boot identity recorded (see `_boot`):
a run from another namespace of the same kernel is UNKNOWN, not DEAD. Where
/proc hides other users' processes (hidepid), a process that kill(pid, 0)
finds but /proc does not show counts as alive.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ALIVE, DEAD, UNKNOWN = "alive", "dead", "unknown"

# The inode of the initial pid namespace (PROC_PID_INIT_INO), the same on every kernel.
_INITIAL_PID_NAMESPACE = "pid:[4026531836]"


@dataclass(frozen=True)
class Holder:
    """Who claimed a run, as recorded: see the module docstring."""

    host: str | None
    boot_id: str | None
    pid: int | None
    wrapper_started: int | None
    pgid: int | None


@cache
def boot_id() -> str | None:
    """This kernel's boot id, with the pid namespace when it is not the initial one.

    None where Linux's /proc is not there: runs then carry no identity and the
    lease alone decides.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = _INITIAL_PID_NAMESPACE
    return boot if namespace == _INITIAL_PID_NAMESPACE else f"{boot} {namespace}"


def _boot(boot: str) -> str:
    """The kernel's part of a recorded boot id, without the namespace."""
    return boot.split(" ", 1)[0]


def start_time(pid: int | str = "self") -> int | None:
    """The process's start time in clock ticks since boot; None if it is gone or a zombie."""
    stat = _stat(pid)
    if stat is None or stat[0] in "ZX":
        return None
    return int(stat[19])


def _stat(pid: int | str) -> list[str] | None:
    """Fields 3 onwards of /proc/PID/stat (state first), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    return text[text.rindex(")") + 2:].split()


def this_wrapper() -> Holder:
    """The identity of this process, to be recorded with the run it claims."""
    return Holder(host=socket.gethostname(), boot_id=boot_id(), pid=os.getpid(),
                  wrapper_started=start_time(), pgid=None)


def verdict(holder: Holder, host: str) -> str:
    """ALIVE, DEAD or UNKNOWN for the run `holder` keeps, judged on `host` (this one)."""
    here = boot_id()
    if (holder.host != host or here is None or holder.boot_id is None or holder.pid is None
            or holder.wrapper_started is None):
        return UNKNOWN
    if _boot(holder.boot_id) != _boot(here):
        return DEAD
    if holder.boot_id != here:
        return UNKNOWN  # another pid namespace: its pids mean nothing here
    if _process_alive(holder.pid, holder.wrapper_started):
        return ALIVE
    if holder.pgid is not None and _group_alive(holder.pgid):
        return UNKNOWN
    return DEAD


def _process_alive(pid: int, started: int) -> bool:
    if not _exists(lambda: os.kill(pid, 0)):
        return False
    stat = _stat(pid)
    if stat is None:
        return True  # there, but /proc will not show it (hidepid): cannot tell, so alive
    return stat[0] not in "ZX" and int(stat[19]) == started


def _group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still lives (zombies hold no locks, no files)."""
    if not _exists(lambda: os.killpg(pgid, 0)):
        return False
    states = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(entry.name)
            if stat is not None and int(stat[2]) == pgid:
                states.append(stat[0])
    # None seen at all although the group exists: /proc hides them from us.
    return not states or any(state not in "ZX" for state in states)


def _exists(probe) -> bool:
    try:
        probe()
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, as another user's
    return True
