"""wrap(): the run's policy (overlap, fail-open, time budget, environment), in process."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import wait_until

from jobs_cli import runs, spool
from jobs_cli.config import ALLOW, WAIT
from jobs_cli.db import Database
from jobs_cli.errors import (
    EXIT_TEMPFAIL,
    EXIT_UNAVAILABLE,
    DatabaseError,
    DatabaseUnavailable,
    NotStarted,
    Overlap,
)
from jobs_cli.recorder import Recorder
from jobs_cli.states import ERROR, SUCCESS
from jobs_cli.wrapper import RunOptions, child_environment, wrap

UNREACHABLE = "host=/nonexistent/jobs-cli-test port=5432 dbname=x user=x"
NOW = datetime(2024, 5, 1, 6, 0, 0, tzinfo=timezone.utc)


def fake_claim(run_id: int = 7, last_success: int | None = 1714543200) -> runs.Claim:
    run = runs.Run(id=run_id, name="w", status="in_progress", start_date=NOW, end_date=None,
                   message=None, records_processed=None, source="", destination="")
    return runs.Claim(run=run, blocking=None, last_success=last_success, abandoned=[])


INHERITED = {"PATH": "/bin", "JOBS_ID": "99", "JOBS_LAST_SUCCESS": "1",
             "JOBS_DATABASE_URL": "postgresql://elsewhere/db"}


def test_the_command_learns_its_run_watermark_and_database():
    database = Database(url="postgresql://etl@db/dwh", schema="etl", home=Path("/srv/jobs"))
    env = child_environment(INHERITED, database, "w", fake_claim(), lookback=0.5)
    # Where jobs-cli is depends on how the tests were started (PATH, a virtualenv).
    env.pop("JOBS_CLI", None)
    assert {key: value for key, value in env.items() if key.startswith("JOBS_")} == {
        "JOBS_ID": "7", "JOBS_NAME": "w", "JOBS_LAST_SUCCESS": "1714543200",
        "JOBS_LAST_SUCCESS_ISO": "2024-05-01T06:00:00Z", "JOBS_LOOKBACK_SECONDS": "1",
        "JOBS_LAST_CURSOR": "", "JOBS_UPSTREAM_RUNS": "",
        "JOBS_SCHEMA": "etl",
        "JOBS_HOME": "/srv/jobs", "JOBS_DATABASE_URL": "postgresql://etl@db/dwh"}
    assert env["PATH"] == "/bin"


def test_never_succeeded_is_empty_and_the_embedded_default_is_found_through_its_home():
    env = child_environment(INHERITED, Database(home=Path("/srv/jobs")), "w",
                            fake_claim(last_success=None))
    assert (env["JOBS_LAST_SUCCESS"], env["JOBS_LAST_SUCCESS_ISO"]) == ("", "")
    assert "JOBS_DATABASE_URL" not in env and env["JOBS_HOME"] == "/srv/jobs"


def test_an_unclaimed_run_has_no_run_variables_at_all():
    inherited = {**INHERITED, "JOBS_LOOKBACK_SECONDS": "5", "JOBS_LAST_CURSOR": "9"}
    env = child_environment(inherited, Database(home=Path("/srv/jobs")), "w", None, lookback=9)
    assert not {"JOBS_ID", "JOBS_LAST_SUCCESS", "JOBS_LAST_SUCCESS_ISO",
                "JOBS_LOOKBACK_SECONDS", "JOBS_LAST_CURSOR", "JOBS_UPSTREAM_RUNS"} & set(env)
    assert env["JOBS_NAME"] == "w"


# Another wrapper, holding a live run of "w".
BLOCKER = runs.Invocation(run_key="blocker", name="w", source="", destination="",
                          command="other", host="etl2", pid=99, username="etl")


def block(recorder: Recorder) -> runs.Claim:
    return recorder.claim(BLOCKER, lease_seconds=60, allow_overlap=False)


def test_the_command_runs_and_its_outcome_is_recorded(make_recorder, conn):
    code = wrap(["sh", "-c", "echo oops >&2; exit 3"], RunOptions(name="w"), make_recorder())
    assert code == 3
    assert conn.execute("SELECT status, exit_code, message FROM jobs").fetchone() == (
        "error", 3, "exit code 3\noops")


def test_heartbeats_keep_the_lease_while_the_command_runs(make_recorder, conn, tmp_path):
    go = tmp_path / "go"

    def renewed_twice() -> bool:
        return conn.execute("SELECT coalesce(heartbeat_at - start_date >= interval '0.2s',"
                            " false) FROM jobs").fetchone() or (False,)

    # The command ends once the lease was renewed at least 0.2 s after the start.
    threading.Thread(target=lambda: (wait_until(lambda: renewed_twice()[0]), go.touch()),
                     daemon=True).start()
    options = RunOptions(name="w", heartbeat_seconds=0.1)
    assert wrap(["sh", "-c", f"while [ ! -e {go} ]; do sleep 0.01; done"], options,
                make_recorder()) == 0
    start, heartbeat, lease = conn.execute(
        "SELECT start_date, heartbeat_at, lease_until FROM jobs").fetchone()
    assert (heartbeat - start).total_seconds() >= 0.2
    assert (lease - heartbeat).total_seconds() == pytest.approx(0.3)


def test_a_live_run_means_skip(make_recorder, conn, tmp_path):
    blocker = block(make_recorder())
    marker = tmp_path / "ran"
    with pytest.raises(Overlap) as raised:
        wrap(["touch", str(marker)], RunOptions(name="w"), make_recorder())
    assert raised.value.exit_code == EXIT_TEMPFAIL
    assert str(raised.value).startswith(
        f"'w' is already running (run {blocker.run.id}, pid 99 on etl2, since ")
    assert str(raised.value).endswith("); skipped")
    assert not marker.exists()
    assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1


def test_allow_runs_alongside(make_recorder, conn):
    block(make_recorder())
    assert wrap(["true"], RunOptions(name="w", on_overlap=ALLOW), make_recorder()) == 0
    assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 2


def test_wait_starts_when_the_live_run_ends(make_recorder, conn, told):
    holder = make_recorder()
    blocker = block(holder)
    ended = runs.RunResult(invocation=BLOCKER, run_id=blocker.run.id,
                           start_date=blocker.run.start_date, elapsed=0.5, status=SUCCESS,
                           exit_code=0, headline="exit code 0", output="")
    # The live run ends once the waiter has seen it.
    threading.Thread(target=lambda: (wait_until(lambda: told), holder.record(ended)),
                     daemon=True).start()
    assert wrap(["true"], RunOptions(name="w", on_overlap=WAIT), make_recorder()) == 0
    assert told[0].endswith("; waiting for it to end")
    first, second = conn.execute("SELECT start_date, end_date FROM jobs ORDER BY id").fetchall()
    assert second[0] >= first[1]


def test_waiting_is_bounded_by_the_timeout(make_recorder, conn):
    block(make_recorder())
    began = time.monotonic()
    with pytest.raises(Overlap, match=r"and --timeout ran out while waiting; skipped$"):
        wrap(["true"], RunOptions(name="w", on_overlap=WAIT, timeout=0.6), make_recorder())
    assert 0.6 <= time.monotonic() - began < 60
    assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1


def test_without_the_database_the_command_does_not_run(make_recorder, home, tmp_path):
    marker = tmp_path / "ran"
    recorder = make_recorder(Database(url=UNREACHABLE, home=home))
    with pytest.raises(NotStarted) as raised:
        wrap(["touch", str(marker)], RunOptions(name="w"), recorder)
    assert raised.value.exit_code == EXIT_UNAVAILABLE
    assert str(raised.value).startswith('cannot reach database "x" on host "/nonexistent/')
    assert str(raised.value).endswith("; 'w' not run (--fail-open would run it anyway)")
    assert not marker.exists() and spool.pending(home) == []


def test_fail_open_runs_it_unclaimed_and_spools_its_result(make_recorder, home, tmp_path,
                                                            told):
    seen = tmp_path / "env"
    recorder = make_recorder(Database(url=UNREACHABLE, home=home))
    # Not gated by --after either: the job log cannot be read.
    show = ('echo "${JOBS_ID-unset} ${JOBS_LAST_CURSOR-unset} ${JOBS_UPSTREAM_RUNS-unset}'
            f' ${{JOBS_LOOKBACK_SECONDS-unset}}" > {seen}; exit 5')
    code = wrap(["sh", "-c", show],
                RunOptions(name="w", fail_open=True, after=("upstream",), lookback=60), recorder)
    assert code == 5 and seen.read_text() == "unset unset unset unset\n"
    assert "running 'w' anyway (--fail-open)" in told[0]
    assert "the --fail-open run of 'w' not recorded" in told[-1]
    assert len(spool.pending(home)) == 1


# -- the same policy with an in-memory recorder -----------------------------------
# No database: a recorder that keeps everything in lists shows what wrap() decides
# on its own (what runs, what is recorded, what the user is told).

def a_run(run_id: int, host: str = "etl1", pid: int = 4242) -> runs.Run:
    return runs.Run(id=run_id, name="w", status="in_progress", start_date=NOW, end_date=None,
                    message=None, records_processed=None, source="", destination="",
                    host=host, pid=pid)


@dataclass
class MemoryRecorder:
    """Answers claims as told and keeps what wrap() records and says."""

    claims: list = field(default_factory=list)  # what each claim returns or raises, in turn
    database: Database = field(default_factory=lambda: Database(home=Path("/srv/jobs")))
    ended_by_other: runs.Run | None = None
    lease_renewed_at: float = 0.0
    told: list[str] = field(default_factory=list)
    recorded: list[runs.RunResult] = field(default_factory=list)
    heartbeats: int = 0

    def tell(self, message: str) -> None:
        self.told.append(message)

    def claim(self, invocation, *, lease_seconds, allow_overlap, lookback=0, after=()):
        answer = self.claims.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def heartbeat(self) -> None:
        self.heartbeats += 1

    def record(self, result: runs.RunResult) -> runs.Run | None:
        self.recorded.append(result)
        return None


def claimed(run_id: int = 7) -> runs.Claim:
    return runs.Claim(run=a_run(run_id), blocking=None, last_success=None, abandoned=[])


def test_a_success_is_recorded_as_the_claimed_run():
    recorder = MemoryRecorder(claims=[claimed(7)])
    assert wrap(["true"], RunOptions(name="w"), recorder) == 0
    (result,) = recorder.recorded
    assert (result.run_id, result.status, result.exit_code, result.headline) == (
        7, SUCCESS, 0, "exit code 0")
    assert result.start_date == NOW and result.elapsed >= 0 and recorder.told == []


def test_a_failure_keeps_its_stderr_tail_and_says_so():
    recorder = MemoryRecorder(claims=[claimed(7)])
    assert wrap(["sh", "-c", "echo boom >&2; exit 3"], RunOptions(name="w"), recorder) == 3
    (result,) = recorder.recorded
    assert (result.status, result.exit_code, result.output) == (ERROR, 3, "boom\n")
    assert recorder.told == ["run 7 of 'w' failed: exit code 3"]


def test_a_live_run_skips_without_running_or_recording(tmp_path):
    busy = runs.Claim(run=None, blocking=a_run(3, host="etl2", pid=99), last_success=None,
                      abandoned=[])
    recorder = MemoryRecorder(claims=[busy])
    with pytest.raises(Overlap, match=r"^'w' is already running \(run 3, pid 99 on etl2"):
        wrap(["touch", str(tmp_path / "ran")], RunOptions(name="w"), recorder)
    assert not (tmp_path / "ran").exists() and recorder.recorded == []


def test_an_unreachable_database_runs_nothing_unless_fail_open(tmp_path):
    down = DatabaseUnavailable("cannot reach the database")
    recorder = MemoryRecorder(claims=[down])
    with pytest.raises(NotStarted):
        wrap(["touch", str(tmp_path / "ran")], RunOptions(name="w"), recorder)
    assert not (tmp_path / "ran").exists() and recorder.recorded == []

    recorder = MemoryRecorder(claims=[down])
    assert wrap(["touch", str(tmp_path / "ran")], RunOptions(name="w", fail_open=True),
                recorder) == 0
    (result,) = recorder.recorded
    assert (tmp_path / "ran").exists() and result.run_id is None and "clock of" in result.note
    assert recorder.told[0].endswith("running 'w' anyway (--fail-open), "
                                     "to be recorded when the database is back")


def test_a_database_that_refuses_the_run_runs_nothing_even_failing_open(tmp_path):
    recorder = MemoryRecorder(claims=[DatabaseError("permission denied for table jobs")])
    with pytest.raises(DatabaseError, match="permission denied"):
        wrap(["touch", str(tmp_path / "ran")], RunOptions(name="w", fail_open=True), recorder)
    assert not (tmp_path / "ran").exists() and recorder.recorded == []


def test_a_missing_command_is_recorded_as_127():
    recorder = MemoryRecorder(claims=[claimed(7)])
    assert wrap(["/nonexistent/etl.sh"], RunOptions(name="w"), recorder) == 127
    assert recorder.recorded[0].headline == "command not found: /nonexistent/etl.sh"
