"""fencing: what this host can tell about a run's wrapper, against real processes."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest
from conftest import wait_until

from jobs_cli.fencing import ALIVE, DEAD, UNKNOWN, Holder, boot_id, start_time, this_wrapper, verdict

HOST = socket.gethostname()


def holder_of(pid: int, started: int | None, pgid: int | None = None, **changes) -> Holder:
    values = dict(host=HOST, boot_id=boot_id(), pid=pid, wrapper_started=started, pgid=pgid)
    return Holder(**{**values, **changes})


def test_this_process_is_alive_and_identified():
    me = this_wrapper()
    assert (me.host, me.pid) == (HOST, os.getpid()) and me.boot_id and me.wrapper_started > 0
    assert verdict(me, HOST) == ALIVE


def exited() -> tuple[int, int]:
    """The pid and start time of a process that has exited and been reaped."""
    child = subprocess.Popen(["sleep", "60"])
    started = start_time(child.pid)
    child.kill()
    child.wait()
    return child.pid, started


def test_a_process_that_exited_is_dead():
    assert verdict(holder_of(*exited()), HOST) == DEAD


def test_a_zombie_is_dead():
    child = subprocess.Popen(["sleep", "60"])
    try:
        started = start_time(child.pid)
        child.kill()
        # Not waited for: a zombie until then.
        wait_until(lambda: open(f"/proc/{child.pid}/stat").read().split(") ")[1][0] == "Z",
                   what="a zombie")
        assert verdict(holder_of(child.pid, started), HOST) == DEAD
    finally:
        child.wait()


def test_a_reused_pid_is_not_the_wrapper():
    me = this_wrapper()
    assert verdict(holder_of(me.pid, me.wrapper_started - 1), HOST) == DEAD


def test_a_dead_wrapper_whose_group_still_lives_is_left_to_the_lease():
    group = subprocess.Popen(["sleep", "60"], process_group=0)
    try:
        pid, started = exited()
        assert verdict(holder_of(pid, started, pgid=group.pid), HOST) == UNKNOWN
        group.kill()
        group.wait()
        assert verdict(holder_of(pid, started, pgid=group.pid), HOST) == DEAD
    finally:
        group.kill()
        group.wait()


def test_a_group_of_zombies_is_dead():
    group = subprocess.Popen(["sleep", "60"], process_group=0)
    try:
        group.kill()
        wait_until(lambda: open(f"/proc/{group.pid}/stat").read().split(") ")[1][0] == "Z",
                   what="a zombie")
        assert verdict(holder_of(os.getpid(), 1, pgid=group.pid), HOST) == DEAD
    finally:
        group.wait()


@pytest.mark.parametrize("changes, expected", [
    ({"host": "elsewhere"}, UNKNOWN),  # another host: only the lease can tell
    ({"boot_id": None}, UNKNOWN),  # no identity recorded (older versions)
    ({"wrapper_started": None}, UNKNOWN),
    ({"boot_id": "00000000-0000-0000-0000-000000000000"}, DEAD),  # this host rebooted since
    ({"boot_id": f"{boot_id()} pid:[1]"}, UNKNOWN),  # another pid namespace of this kernel
])
def test_what_cannot_be_told_from_here(changes, expected):
    me = this_wrapper()
    assert verdict(holder_of(me.pid, me.wrapper_started, **changes), HOST) == expected


def test_start_time_of_a_process_that_is_gone_is_none():
    assert start_time(exited()[0]) is None
    assert start_time() == this_wrapper().wrapper_started
