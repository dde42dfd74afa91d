"""supervise() against real processes.

Tests that need the wrapper's own stdout, stderr or signals run supervise() in a
harness: a Python subprocess whose pipes and pid the test controls.
"""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import living_group_members, wait_until

from jobs_cli import watchdog as watchdog_module
from jobs_cli.errors import EXIT_FENCED
from jobs_cli.supervise import Fence, supervise

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

# Runs supervise(json argv, **json kwargs) and exits with the outcome's exit code,
# after printing the outcome as JSON on the line after whatever the child printed.
HARNESS = """
import json, sys
from jobs_cli.supervise import supervise
outcome = supervise(json.loads(sys.argv[1]), **json.loads(sys.argv[2]))
print(json.dumps({"exit_code": outcome.exit_code, "description": outcome.description,
                  "tail": outcome.tail.decode("latin-1")}),
      file=sys.stderr if sys.argv[3] == "stderr" else sys.stdout, flush=True)
sys.exit(outcome.exit_code)
"""

# Makes fd `sys.argv[4]` a pipe nobody reads, then runs HARNESS.
BROKEN_FD_HARNESS = """
import os, sys
read_end, write_end = os.pipe()
os.dup2(write_end, int(sys.argv[4]))
os.close(read_end)
os.close(write_end)
""" + HARNESS


def harness_command(argv, report_to="stdout", code=HARNESS, extra=(), **kwargs):
    return [PY, "-c", code, json.dumps(argv), json.dumps(kwargs), report_to, *extra]


def harness_env():
    return {**os.environ, "PYTHONPATH": str(REPO)}


def run_harness(argv, report_to="stdout", code=HARNESS, extra=(), stdin=None, **kwargs):
    return subprocess.run(harness_command(argv, report_to, code, extra, **kwargs),
                          env=harness_env(), input=stdin, capture_output=True, timeout=120)


def last_json_line(output: bytes) -> dict:
    return json.loads(output.splitlines()[-1])


def py(code: str, *args: str) -> list[str]:
    return [PY, "-c", code, *args]


@pytest.fixture(params=["process_group", "preexec_fn"])
def either_way_to_a_new_group(request, monkeypatch):
    """Popen's process_group argument (Python 3.11+), and the Python 3.10 fallback."""
    if request.param == "preexec_fn":
        monkeypatch.setattr(watchdog_module, "_HAS_PROCESS_GROUP", False)


# Exit codes and descriptions

def test_success():
    outcome = supervise(["true"])
    assert (outcome.exit_code, outcome.description) == (0, "exit code 0")
    assert outcome.succeeded


def test_exit_code_passes_through():
    outcome = supervise(["sh", "-c", "exit 3"])
    assert (outcome.exit_code, outcome.description) == (3, "exit code 3")
    assert not outcome.succeeded


def test_killed_by_signal():
    outcome = supervise(["sh", "-c", "kill -KILL $$"])
    assert (outcome.exit_code, outcome.description) == (137, "killed by SIGKILL")


def test_command_not_found():
    outcome = supervise(["jobs-cli-no-such-command"])
    assert (outcome.exit_code, outcome.description) == (127, "command not found: jobs-cli-no-such-command")
    assert outcome.tail == b""


def test_command_is_looked_up_in_the_childs_path():
    outcome = supervise(["sh", "-c", "true"], env={"PATH": "/nonexistent"})
    assert (outcome.exit_code, outcome.description) == (127, "command not found: sh")


def test_command_not_found_behind_a_directory_it_may_not_search(tmp_path):
    # Root searches it anyway; anyone else gets EACCES from it, which a shell ignores.
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o000)
    try:
        outcome = supervise(["jobs-cli-no-such-command"], env={"PATH": f"{closed}:/usr/bin"})
    finally:
        closed.chmod(0o700)
    assert (outcome.exit_code, outcome.description) == (
        127, "command not found: jobs-cli-no-such-command")


def test_not_executable(tmp_path):
    script = tmp_path / "x"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    outcome = supervise([str(script)])
    assert (outcome.exit_code, outcome.description) == (126, f"not executable: {script}")


def test_directory_is_not_executable(tmp_path):
    assert supervise([str(tmp_path)]).description == f"not executable: {tmp_path}"


@pytest.mark.parametrize("content, reason", [
    (b"#!/bin/sh\r\necho hi\r\n", "interpreter not found"),  # a stray CR after the #! line
    (b"\x00\x01\x02 not a program", "Exec format error"),
])
def test_executable_files_that_cannot_run_are_126(tmp_path, content, reason):
    program = tmp_path / "program"
    program.write_bytes(content)
    program.chmod(0o755)
    outcome = supervise([str(program)])
    assert (outcome.exit_code, outcome.description) == (126, f"cannot execute {program}: {reason}")


def test_empty_command_is_refused():
    with pytest.raises(ValueError):
        supervise([])


def test_refuses_to_run_outside_the_main_thread():
    errors = []

    def attempt():
        try:
            supervise(["true"])
        except RuntimeError as error:
            errors.append(error)

    thread = threading.Thread(target=attempt)
    thread.start()
    thread.join()
    assert len(errors) == 1


# Output

def test_stderr_passes_through_and_its_tail_is_kept(capfdbinary):
    data = b"head\n" + bytes(range(256)) * 100 + b"\x00tail\xff"
    outcome = supervise(py("import sys; sys.stderr.buffer.write(bytes.fromhex(sys.argv[1]))", data.hex()),
                        tail_bytes=64)
    assert outcome.tail == data[-64:]
    assert capfdbinary.readouterr().err == data


def test_stdout_is_inherited_and_not_in_the_tail(capfdbinary):
    outcome = supervise(["sh", "-c", "echo out; echo err >&2"])
    assert outcome.tail == b"err\n"
    assert capfdbinary.readouterr() == (b"out\n", b"err\n")


def test_captured_stdout_passes_through_and_joins_the_tail(capfdbinary):
    outcome = supervise(["sh", "-c", "echo out; echo err >&2"], capture_stdout=True)
    assert sorted(outcome.tail.splitlines()) == [b"err", b"out"]
    assert capfdbinary.readouterr() == (b"out\n", b"err\n")


def test_the_wrapper_runs_as_batch_while_the_child_runs_and_only_then(capfdbinary):
    """The main loop's thread is SCHED_BATCH while the child runs (see Main loop):
    that must not leak into the command, nor outlast the call."""
    outcome = supervise([PY, "-c", "import os; print(os.sched_getscheduler(0),"
                                   " os.sched_getscheduler(os.getppid()))"])
    assert outcome.exit_code == 0
    assert capfdbinary.readouterr().out == f"{os.SCHED_OTHER} {os.SCHED_BATCH}\n".encode()
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_inherited_stdout_is_byte_exact():
    child = py("import hashlib, os, sys\n"
               "data = os.urandom(50 << 20)\n"
               "sys.stdout.buffer.write(data)\n"
               "sys.stdout.flush()\n"
               "print(hashlib.sha256(data).hexdigest(), file=sys.stderr)\n")
    result = run_harness(child, report_to="stderr")
    assert result.returncode == 0
    assert len(result.stdout) == 50 << 20
    assert hashlib.sha256(result.stdout).hexdigest() == result.stderr.splitlines()[0].decode()


def test_stdin_is_inherited():
    result = run_harness(["cat"], report_to="stderr", stdin=b"rows\n")
    assert result.stdout == b"rows\n"


def test_memory_stays_bounded_with_200_mb_of_stderr():
    child = py("import sys\n"
               "chunk = bytes(range(256)) * 256\n"
               "for _ in range(3200): sys.stderr.buffer.write(chunk)\n"
               "sys.stderr.buffer.write(b'THE END')\n")
    # The peak RSS of the harness's own memory: VmHWM starts afresh at exec, whereas
    # getrusage's ru_maxrss carries over the peak of the process that forked it (pytest).
    code = ("import re, sys\n"
            "from jobs_cli.supervise import supervise\n"
            "def peak_kib():\n"
            "    with open('/proc/self/status') as status:\n"
            "        return re.search(r'VmHWM:\\s+(\\d+) kB', status.read())[1]\n"
            "before = peak_kib()\n"
            "outcome = supervise(sys.argv[1:])\n"
            "print(before, peak_kib(), len(outcome.tail), outcome.tail.endswith(b'THE END'))\n")
    result = subprocess.run([PY, "-c", code, *child], env=harness_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, timeout=120)
    before_kib, after_kib, tail_length, tail_complete = result.stdout.split()
    assert int(after_kib) < 60 * 1024
    assert int(after_kib) - int(before_kib) < 16 * 1024
    assert (int(tail_length), tail_complete) == (10240, b"True")


def test_closed_stderr_of_the_wrapper_does_not_stop_the_run():
    child = ["sh", "-c", "head -c 1000000 /dev/zero >&2; echo last >&2; exit 5"]
    result = run_harness(child, code=BROKEN_FD_HARNESS, extra=["2"])
    assert result.returncode == 5
    assert last_json_line(result.stdout)["tail"].endswith("\0last\n")


def test_broken_stdout_reaches_a_child_whose_stdout_is_captured():
    result = run_harness(["yes"], report_to="stderr", code=BROKEN_FD_HARNESS, extra=["1"],
                         capture_stdout=True, timeout=10)
    assert last_json_line(result.stderr)["description"] == "killed by SIGPIPE"
    assert result.returncode == 128 + signal.SIGPIPE


# Timeouts

def test_timeout_kills_the_whole_tree(either_way_to_a_new_group, tmp_path):
    group = tmp_path / "group"
    started = time.monotonic()
    outcome = supervise(["sh", "-c", f"ps -o pgid= $$ > {group}; sleep 300 | cat"], timeout=0.3)
    assert time.monotonic() - started < 60
    assert (outcome.exit_code, outcome.description) == (124, "timed out after 0.3s")
    wait_until(lambda: not living_group_members(int(group.read_text())))


def test_child_ignoring_sigterm_is_killed_after_kill_after():
    started = time.monotonic()
    outcome = supervise(["sh", "-c", "trap '' TERM; sleep 300"], timeout=0.2, kill_after=0.3)
    # Ended by the SIGKILL at timeout + kill_after, long before its sleep would end.
    assert 0.45 < time.monotonic() - started < 60
    assert (outcome.exit_code, outcome.description) == (124, "timed out after 0.2s")


@pytest.mark.parametrize("wrapper_stderr", ["pipe", "socket"])  # splice; read and write
def test_timeout_applies_to_a_child_whose_stderr_never_stops(wrapper_stderr):
    """Output waiting at every look must not hold off the timeout's steps. The
    wrapper's stderr is read slowly, so `yes` refills its pipe while the wrapper
    waits to pass a chunk on: the pipe is never found empty."""
    if wrapper_stderr == "pipe":
        read_end, write_end = os.pipe()
    else:
        read_end, write_end = (end.detach() for end in socket.socketpair())

    def read_slowly():
        while os.read(read_end, 1 << 16):
            time.sleep(0.01)  # a throttle, not a synchronisation

    reader = threading.Thread(target=read_slowly)
    reader.start()
    try:
        with subprocess.Popen(harness_command(["sh", "-c", "yes >&2"], timeout=0.3),
                              env=harness_env(), stdout=subprocess.PIPE,
                              stderr=write_end) as harness:
            os.close(write_end)
            try:
                harness.wait(timeout=60)
            except subprocess.TimeoutExpired:
                harness.kill()  # its watchdog ends `yes`
                harness.wait()
                pytest.fail("the timeout was never taken")
            report = last_json_line(harness.stdout.read())
    finally:
        reader.join()
        os.close(read_end)
    assert (harness.returncode, report["description"]) == (124, "timed out after 0.3s")


def test_timeout_applies_after_the_child_closed_its_stderr():
    outcome = supervise(["sh", "-c", "exec 2>&-; sleep 300"], timeout=0.2)
    assert outcome.exit_code == 124


def test_child_that_closed_stderr_is_still_waited_for():
    started = time.monotonic()
    outcome = supervise(["sh", "-c", "exec 2>&-; sleep 0.3; exit 5"])
    assert time.monotonic() - started >= 0.3
    assert outcome.exit_code == 5


def test_background_grandchild_holding_stderr_does_not_keep_the_run_open(tmp_path):
    group = tmp_path / "group"
    started = time.monotonic()
    try:
        outcome = supervise(["sh", "-c", f"ps -o pgid= $$ > {group}; sleep 300 & echo done >&2"])
        assert time.monotonic() - started < 60
        assert (outcome.exit_code, outcome.tail) == (0, b"done\n")
    finally:
        os.killpg(int(group.read_text()), signal.SIGKILL)


# Signals

SIGNAL_RECORDER = """
import signal, sys, time
marker, exit_after = sys.argv[1], int(sys.argv[2])
received = []
def record(signum, frame):
    received.append(signum)
    with open(marker, "a") as f:
        f.write(f"{signum}\\n")
for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(signum, record)
print("ready", flush=True)
deadline = time.monotonic() + 10
while len(received) < exit_after and time.monotonic() < deadline:
    time.sleep(0.01)
time.sleep(0.2)  # time for a duplicate signal to show up
sys.exit(7)
"""


def start_recorder_harness(marker, exit_after=1):
    harness = subprocess.Popen(
        harness_command(py(SIGNAL_RECORDER, str(marker), str(exit_after))), env=harness_env(),
        stdout=subprocess.PIPE, start_new_session=True)
    assert harness.stdout.readline() == b"ready\n"
    return harness


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_is_forwarded_and_named_in_the_outcome(tmp_path, signum):
    marker = tmp_path / "received"
    harness = start_recorder_harness(marker)
    harness.send_signal(signum)
    stdout, _ = harness.communicate(timeout=60)
    assert harness.returncode == 128 + signum
    assert last_json_line(stdout)["description"] == f"interrupted by {signal.Signals(signum).name}"
    assert marker.read_text() == f"{signum}\n"


def test_ctrl_c_reaches_the_child_once(tmp_path):
    marker = tmp_path / "received"
    harness = start_recorder_harness(marker)
    os.killpg(harness.pid, signal.SIGINT)  # what a terminal does: the whole foreground group
    harness.communicate(timeout=60)
    assert harness.returncode == 130
    assert marker.read_text() == f"{signal.SIGINT}\n"


def test_second_signal_is_forwarded_again(tmp_path):
    marker = tmp_path / "received"
    harness = start_recorder_harness(marker, exit_after=2)
    harness.send_signal(signal.SIGTERM)
    wait_until(lambda: marker.exists() and marker.read_text())
    harness.send_signal(signal.SIGTERM)
    harness.communicate(timeout=60)
    assert harness.returncode == 143
    assert marker.read_text() == f"{signal.SIGTERM}\n" * 2


def test_signal_handlers_are_restored():
    watched = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD)
    before = [signal.getsignal(signum) for signum in watched]
    supervise(["true"])
    assert [signal.getsignal(signum) for signum in watched] == before
    assert signal.set_wakeup_fd(-1) == -1


def test_ignored_signal_stays_ignored_for_the_child():
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        outcome = supervise(py("import signal; print(signal.getsignal(signal.SIGHUP) == signal.SIG_IGN)"),
                            capture_stdout=True)
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert outcome.tail == b"True\n"


# Process group and heartbeat

def test_the_child_runs_in_a_process_group_led_by_its_watchdog(either_way_to_a_new_group):
    outcome = supervise(py("import os; print(os.getpid(), os.getpgid(0))"), capture_stdout=True)
    pid, pgid = map(int, outcome.tail.split())
    assert pgid not in (pid, os.getpgid(0))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped
    # Stood down: the watchdog exits without killing anything.
    wait_until(lambda: not living_group_members(pgid))


# Fencing: the watchdog, a fenced heartbeat, a lost lease

# Writes the id of the command's group to `group`, then runs `sleep 60 | sleep 60` in it.
PIPELINE = "ps -o pgid= $$ > group; sleep 60 | sleep 60"


@pytest.mark.parametrize("ignoring", ["", "trap '' INT TERM HUP; "])
def test_a_sigkilled_wrapper_takes_the_whole_group_with_it(tmp_path, ignoring):
    harness = subprocess.Popen(harness_command(["sh", "-c", ignoring + PIPELINE]),
                               env=harness_env(), cwd=tmp_path, stderr=subprocess.PIPE,
                               start_new_session=True)
    group = tmp_path / "group"
    wait_until(lambda: group.exists() and group.read_text().strip())
    pgid = int(group.read_text())
    wait_until(lambda: len(living_group_members(pgid)) == 4)  # watchdog, sh, two sleeps
    if ignoring:
        # What the wrapper forwards to the group (Ctrl-C, a timeout) spares the watchdog.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            os.killpg(pgid, signum)
        time.sleep(0.2)  # no event to wait for: a watchdog that died would be gone by now
        assert len(living_group_members(pgid)) == 4 and harness.poll() is None
    harness.kill()
    _, stderr = harness.communicate(timeout=10)
    wait_until(lambda: not living_group_members(pgid))
    assert stderr.decode().endswith(f"jobs-cli: the wrapper (pid {harness.pid}) died; "
                                    "killing its command\n")


def test_a_fenced_heartbeat_stops_the_command(tmp_path):
    def beat():
        raise Fence("ended elsewhere")

    outcome = supervise(["sh", "-c", "trap 'echo stopping >&2; exit 3' TERM; sleep 60 & wait"],
                        heartbeat=beat, heartbeat_interval=0.05)
    assert (outcome.exit_code, outcome.description, outcome.fenced) == (
        EXIT_FENCED, "stopped: the run was ended by someone else", True)
    assert outcome.tail == b"stopping\n"


def test_a_fenced_command_that_ignores_sigterm_is_killed_after_kill_after():
    def beat():
        raise Fence("ended elsewhere")

    outcome = supervise(["sh", "-c", "trap '' TERM; sleep 60"], heartbeat=beat,
                        heartbeat_interval=0.05, kill_after=0.2)
    assert (outcome.exit_code, outcome.fenced) == (EXIT_FENCED, True)


def test_heartbeats_that_keep_failing_stop_the_command_before_the_lease_runs_out():
    def beat():
        raise RuntimeError("database unreachable")

    started = time.monotonic()
    outcome = supervise(["sleep", "60"], heartbeat=beat, heartbeat_interval=0.1,
                        renew_within=0.8, renewed_at=started, kill_after=5)
    # SIGTERM a quarter of renew_within before it ran out; sleep obeys at once.
    assert 0.6 <= time.monotonic() - started < 20
    assert outcome.exit_code == EXIT_FENCED and not outcome.fenced
    assert outcome.description.startswith("stopped: no heartbeat got through for ")


def test_heartbeats_that_get_through_keep_the_command_running():
    outcome = supervise(["sleep", "1"], heartbeat=lambda: None, heartbeat_interval=0.05,
                        renew_within=0.4)
    assert outcome.exit_code == 0


def until_exists(path: Path) -> list[str]:
    """A command that runs until `path` exists."""
    return ["sh", "-c", f"while [ ! -e {path} ]; do sleep 0.01; done"]


def test_what_a_heartbeat_starts_keeps_the_callers_scheduling_policy(tmp_path):
    """A heartbeat may start the embedded server (it reconnects), which must not
    inherit the main loop's SCHED_BATCH for the rest of its life."""
    policies = []
    enough = tmp_path / "enough"

    def beat():
        started = subprocess.run([PY, "-c", "import os; print(os.sched_getscheduler(0))"],
                                 capture_output=True, text=True, check=True)
        policies.append(int(started.stdout))
        enough.touch()

    supervise(until_exists(enough), heartbeat=beat, heartbeat_interval=0.05)
    assert policies and set(policies) == {os.SCHED_OTHER}


def test_heartbeat_is_called_every_interval_while_the_child_runs(tmp_path):
    beats = []
    enough = tmp_path / "enough"

    def beat():
        beats.append(time.monotonic())
        if len(beats) == 3:
            enough.touch()

    started = time.monotonic()
    supervise(until_exists(enough), heartbeat=beat, heartbeat_interval=0.1)
    took = time.monotonic() - started
    count = len(beats)
    # About one per interval: a loaded machine may fit fewer in, never more.
    assert 3 <= count <= took / 0.1 + 1, (count, took)
    time.sleep(0.25)
    assert len(beats) == count


def test_failing_heartbeat_reports_once_per_streak(capfdbinary, tmp_path):
    calls = []
    enough = tmp_path / "enough"

    def beat():
        calls.append(None)
        if len(calls) == 5:
            enough.touch()
        if len(calls) != 3:
            raise RuntimeError("database unreachable\nsecond line")

    outcome = supervise(until_exists(enough), heartbeat=beat, heartbeat_interval=0.05)
    assert outcome.exit_code == 0
    assert len(calls) >= 5
    assert capfdbinary.readouterr().err == (
        b"jobs-cli: heartbeat failed: database unreachable\n" * 2)


def test_heartbeat_interval_must_be_positive():
    with pytest.raises(ValueError):
        supervise(["true"], heartbeat=lambda: None, heartbeat_interval=0)


def test_no_file_descriptors_are_left_open(tmp_path):
    before = sorted(os.listdir("/proc/self/fd"))
    supervise(["sh", "-c", "echo out; echo err >&2"], capture_stdout=True)
    supervise(["sh", "-c", "sleep 10"], timeout=0.1)
    supervise(["jobs-cli-no-such-command"])
    supervise([str(tmp_path)])
    assert sorted(os.listdir("/proc/self/fd")) == before
