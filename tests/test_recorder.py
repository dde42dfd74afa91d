"""The recorder against a real database: claims, leases, results, retries, spool, replay."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from conftest import wait_until

from jobs_cli import runs, spool
from jobs_cli.db import Database
from jobs_cli.errors import SpoolError
from jobs_cli.recorder import Recorder, Replayed
from jobs_cli.retry import Patience
from jobs_cli.supervise import Fence
from jobs_cli.states import ERROR, SUCCESS

SCHEMA = "public"
UNREACHABLE = "host=/nonexistent/jobs-cli-test port=5432 dbname=x user=x"


def invocation(name: str = "orders") -> runs.Invocation:
    return runs.Invocation(run_key=uuid.uuid4().hex, name=name, source="erp", destination="dwh",
                           command="./sync.sh --full", host="etl1", pid=4242, username="etl")


def result(claim: runs.Claim | None, called: runs.Invocation, *, exit_code: int = 0,
           headline: str = "exit code 0", output: str = "", elapsed: float = 1.5,
           **changes) -> runs.RunResult:
    fields = dict(
        invocation=called, run_id=claim.run.id if claim else None,
        start_date=claim.run.start_date if claim else datetime.now(timezone.utc),
        elapsed=elapsed, status=SUCCESS if exit_code == 0 else ERROR,
        exit_code=exit_code, headline=headline, output=output)
    return runs.RunResult(**{**fields, **changes})


@pytest.fixture
def recorder(make_recorder) -> Recorder:
    return make_recorder()


def claim(recorder: Recorder, called: runs.Invocation | None = None, *, lease: float = 90,
          allow: bool = False) -> runs.Claim:
    return recorder.claim(called or invocation(), lease_seconds=lease, allow_overlap=allow)


def row(conn, run_id: int, columns: str):
    return conn.execute(f"SELECT {columns} FROM jobs WHERE id = %s", (run_id,)).fetchone()


class Outage:
    """The test database refusing connections and dropping the ones it has, as a
    stopped server does (from the maintenance database: a database cannot refuse
    connections to itself)."""

    def __init__(self, pg_server: dict, dbname: str) -> None:
        self._admin = psycopg.connect(**pg_server, dbname="postgres", autocommit=True)
        self._dbname = dbname

    def begin(self) -> None:
        self._admin.execute(f'ALTER DATABASE "{self._dbname}" ALLOW_CONNECTIONS false')
        self._admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = %s", (self._dbname,))

    def end(self) -> None:
        self._admin.execute(f'ALTER DATABASE "{self._dbname}" ALLOW_CONNECTIONS true')

    def close(self) -> None:
        self._admin.close()


@pytest.fixture
def outage(pg_server, conn):
    down = Outage(pg_server, conn.info.dbname)
    yield down
    down.end()
    down.close()


def test_a_claim_records_who_runs_what_with_a_lease_and_reads_the_watermark(recorder, conn):
    earlier = runs.start_run(conn, SCHEMA, "orders")
    runs.end_run(conn, SCHEMA, earlier.id, SUCCESS)
    claimed = claim(recorder, lease=90)
    run = claimed.run
    assert (run.status, run.host, run.pid, run.username, run.command) == (
        "in_progress", "etl1", 4242, "etl", "./sync.sh --full")
    assert run.heartbeat_at == run.start_date
    assert run.lease_until - run.heartbeat_at == timedelta(seconds=90)
    assert claimed.last_success == int(earlier.start_date.timestamp())
    assert claimed.abandoned == [] and claimed.blocking is None


def test_a_connection_ended_before_the_claim_is_waited_out_not_a_skipped_run(
        make_recorder, database, conn, monkeypatch):
    # As a server stopping (fast) just after letting the wrapper in ends its
    # connection: here before the schema check, which the soak found exiting 69.
    from jobs_cli import recorder as recorder_module

    real, ended = recorder_module.ensure_schema, []

    def ended_once(connection, target):
        if not ended:
            ended.append(connection.info.backend_pid)
            connection.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        return real(connection, target)

    monkeypatch.setattr(recorder_module, "ensure_schema", ended_once)
    claimed = claim(make_recorder(replace(database, patience=Patience(seconds=30))))
    assert ended and row(conn, claimed.run.id, "status, pid") == ("in_progress", 4242)


def test_a_live_run_blocks_a_claim_of_its_name_unless_overlap_is_allowed(make_recorder, conn):
    first = claim(make_recorder())
    blocked = claim(make_recorder())
    assert blocked.run is None and blocked.blocking.id == first.run.id
    assert claim(make_recorder(), invocation("other")).run is not None
    assert claim(make_recorder(), allow=True).run is not None
    assert conn.execute("SELECT count(*) FROM jobs WHERE name = 'orders'").fetchone()[0] == 2


def test_an_unsupervised_run_does_not_block(recorder, conn):
    runs.start_run(conn, SCHEMA, "orders")
    assert claim(recorder).run is not None


def test_a_claim_reaps_the_dead_run_of_its_name(make_recorder, conn, told):
    dead = claim(make_recorder()).run
    other = claim(make_recorder(), invocation("other")).run
    conn.execute("UPDATE jobs SET lease_until = now() - interval '1 second'")
    claimed = claim(make_recorder())
    assert claimed.run is not None and [run.id for run in claimed.abandoned] == [dead.id]
    status, message = row(conn, dead.id, "status, message")
    assert (status, row(conn, dead.id, "abandoned")[0]) == ("error", True)
    assert message.startswith("abandoned: no heartbeat since ")
    assert "from pid 4242 on etl1" in message
    assert row(conn, other.id, "status")[0] == "in_progress"
    assert told == [f"run {dead.id} of 'orders' had lost its wrapper; marked abandoned"]


def test_heartbeats_move_the_lease_and_reconnect_after_a_lost_connection(recorder, conn):
    run = claim(recorder, lease=3).run
    leases = [row(conn, run.id, "lease_until")[0]]
    recorder.heartbeat()
    leases.append(row(conn, run.id, "lease_until")[0])
    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                 "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    recorder.heartbeat()
    leases.append(row(conn, run.id, "lease_until")[0])
    assert leases == sorted(set(leases))
    heartbeat_at, lease_until = row(conn, run.id, "heartbeat_at, lease_until")
    assert lease_until - heartbeat_at == timedelta(seconds=3)


def test_a_heartbeat_for_a_run_someone_ended_fails(recorder, conn):
    run = claim(recorder).run
    runs.end_run(conn, SCHEMA, run.id, ERROR)
    with pytest.raises(Fence, match=f"run {run.id} is no longer in progress"):
        recorder.heartbeat()
    assert recorder.ended_by_other.status == ERROR


def test_a_success_keeps_what_the_command_reported(recorder, conn):
    called = invocation()
    claimed = claim(recorder, called)
    runs.report_run(conn, SCHEMA, claimed.run.id, records=5, message="loaded 5 files")
    # As if recorded an hour late (an end in the future would be cut to now()).
    conn.execute("UPDATE jobs SET start_date = start_date - interval '1 hour'")
    run = recorder.record(result(claimed, called, output="log line\n", elapsed=2.25))
    assert (run.status, run.records_processed, run.message, run.exit_code, run.output) == (
        "success", 5, "loaded 5 files", 0, "log line\n")
    # The end is the claim's server time plus the elapsed time, however late it is recorded.
    assert run.end_date - run.start_date == timedelta(seconds=2.25)


@pytest.mark.parametrize("reported, message", [
    (None, "exit code 3\nboom\nbang"),
    ("half done", "exit code 3; half done\nboom\nbang"),
])
def test_an_error_says_what_happened_then_the_report_then_the_tail(recorder, conn, reported,
                                                                    message):
    called = invocation()
    claimed = claim(recorder, called)
    if reported:
        runs.report_run(conn, SCHEMA, claimed.run.id, records=None, message=reported)
    run = recorder.record(result(claimed, called, exit_code=3, headline="exit code 3",
                                 output="boom\nbang\n"))
    assert (run.status, run.message, run.output) == ("error", message, "boom\nbang\n")


def test_a_result_is_recorded_once_however_often_it_is_replayed(recorder, conn):
    called = invocation()
    claimed = claim(recorder, called)
    first = recorder.record(result(claimed, called, exit_code=3, headline="exit code 3"))
    again = recorder.record(result(claimed, called, headline="exit code 0", output="other"))
    assert again == first
    assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1


@pytest.mark.parametrize("exit_code, tail", [(0, ""), (3, "\nboom")])
def test_the_real_result_overrules_an_abandoned_verdict(recorder, conn, exit_code, tail):
    called = invocation()
    claimed = claim(recorder, called)
    runs.report_run(conn, SCHEMA, claimed.run.id, records=None, message="half done")
    conn.execute("UPDATE jobs SET lease_until = now() - interval '1 second'")
    assert [run.id for run in runs.reap_runs(conn, SCHEMA)] == [claimed.run.id]
    run = recorder.record(result(claimed, called, exit_code=exit_code,
                                 headline=f"exit code {exit_code}", output="boom\n"))
    assert (run.status, run.exit_code) == (SUCCESS if exit_code == 0 else ERROR, exit_code)
    assert run.message.startswith(f"exit code {exit_code}; recorded after being marked "
                                  "abandoned: no heartbeat since ")
    assert run.message.endswith(f"; half done{tail}")
    assert run.output == "boom\n" and not run.abandoned


def test_a_failure_by_hand_that_says_abandoned_is_not_overruled(recorder, conn, told):
    """Only the reaper's flag lets the real result overrule, not a message anyone can write."""
    called = invocation()
    claimed = claim(recorder, called)
    runs.end_run(conn, SCHEMA, claimed.run.id, ERROR, message="abandoned: by hand")
    run = recorder.record(result(claimed, called))
    assert (run.status, run.message, run.exit_code, run.abandoned) == (
        "error", "abandoned: by hand", None, False)
    assert told[-1].endswith("by someone else; its outcome (exit code 0) is not recorded")


@pytest.mark.parametrize("message, overruled", [
    ("abandoned: no heartbeat since 2024-05-01T06:00:00Z", True), ("stopped by hand", False)])
def test_rows_from_before_the_flag_are_judged_by_their_message(recorder, conn, message,
                                                                overruled):
    called = invocation()
    claimed = claim(recorder, called)
    # As a reaper or `fail` of the version before the abandoned column left it.
    conn.execute("UPDATE jobs SET status = 'error', end_date = now(), message = %s,"
                 " abandoned = NULL", (message,))
    assert runs.get_run(conn, SCHEMA, claimed.run.id).abandoned == overruled
    run = recorder.record(result(claimed, called))
    assert (run.status, run.abandoned) == (SUCCESS if overruled else ERROR, False)


def test_a_run_someone_else_ended_is_left_as_it_is(recorder, conn, told):
    called = invocation()
    claimed = claim(recorder, called)
    runs.end_run(conn, SCHEMA, claimed.run.id, ERROR, message="stopped by hand")
    run = recorder.record(result(claimed, called))
    assert (run.status, run.message, run.exit_code) == ("error", "stopped by hand", None)
    assert told == [f"run {run.id} of 'orders' was ended (error) by someone else; "
                        "its outcome (exit code 0) is not recorded"]


def test_a_fail_open_result_inserts_its_run_once(recorder, conn):
    called = invocation()
    began = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=5)
    unclaimed = result(None, called, exit_code=2, headline="exit code 2", elapsed=60,
                       start_date=began, note="times from the clock of etl1")
    for _ in range(2):
        run = recorder.record(unclaimed)
    assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1
    assert (run.name, run.status, run.exit_code, run.host, run.command) == (
        "orders", "error", 2, "etl1", "./sync.sh --full")
    assert (run.start_date, run.end_date) == (began, began + timedelta(minutes=1))
    assert run.message == "exit code 2; times from the clock of etl1"


def test_an_unreachable_database_is_retried_then_spooled_and_replayed_once(
        make_recorder, told, outage, database):
    recorder = make_recorder(retry_seconds=0.6)
    called = invocation()
    claimed = claim(recorder, called)
    outage.begin()
    began = time.monotonic()
    assert recorder.record(result(claimed, called, exit_code=4, headline="exit code 4")) is None
    assert 0.5 < time.monotonic() - began < 20
    assert told[0].startswith(f"cannot record run {claimed.run.id} ('orders') yet (cannot "
                                  "reach database")
    assert "retrying for 0.6s" in told[0]
    assert f"its result (exit code 4) is spooled in {spool.spool_dir(database.home)}/" \
        in told[-1] and told[-1].endswith("`jobs-cli flush` records it")
    assert len(spool.pending(database.home)) == 1

    outage.end()
    replayed = make_recorder().replay()
    assert [(run.id, run.status, run.exit_code) for run in replayed.recorded] == [
        (claimed.run.id, "error", 4)]
    assert spool.pending(database.home) == []
    assert make_recorder().replay().recorded == []


def test_replay_leaves_results_meant_for_another_database(make_recorder, database):
    other = make_recorder(replace(database, schema="elsewhere"))
    spool.save(database.home, "k", {"format": 1, "target": other.spool_target(), "result": {}})
    replayed = make_recorder().replay()
    assert (replayed.recorded, replayed.other_database, replayed.failed) == ([], 1, 0)
    assert len(spool.pending(database.home)) == 1


def test_an_unusable_entry_is_reported_and_kept(recorder, database, told):
    spool.save(database.home, "k", {"format": 1, "target": recorder.spool_target(), "result": {}})
    replayed = recorder.replay()
    assert (replayed.recorded, replayed.failed) == ([], 1)
    assert told == ["unusable spooled result: 'invocation'"]
    assert len(spool.pending(database.home)) == 1


def test_a_result_neither_database_nor_spool_takes_is_an_error(make_recorder, tmp_path):
    home = tmp_path / "a-file"
    home.write_text("")
    recorder = make_recorder(Database(url=UNREACHABLE, home=home), retry_seconds=0.1)
    with pytest.raises(SpoolError) as raised:
        recorder.record(result(None, invocation(), exit_code=3, headline="exit code 3"))
    message = str(raised.value)
    assert message.startswith(f"cannot write the spool {home}/spool")
    assert "the result of the --fail-open run of 'orders' (exit code 3) is recorded nowhere: " \
           "cannot reach database" in message


def test_a_signal_while_retrying_spools_at_once(make_recorder, home, told):
    recorder = make_recorder(Database(url=UNREACHABLE, home=home), retry_seconds=60)
    handler = signal.getsignal(signal.SIGTERM)
    # Once it says it is retrying, its handler is in place.
    threading.Thread(target=lambda: (wait_until(lambda: told), os.kill(os.getpid(), signal.SIGTERM)),
                     daemon=True).start()
    began = time.monotonic()
    assert recorder.record(result(None, invocation())) is None
    assert time.monotonic() - began < 30
    assert "not recorded (stopped retrying on SIGTERM)" in told[-1]
    assert len(spool.pending(home)) == 1
    assert signal.getsignal(signal.SIGTERM) == handler


# -- where a spooled result belongs, and results the database refuses for good --------------

def respelled(database: Database) -> Database:
    """The same database under another spelling of its URL (libpq's default port left out)."""
    url = database.url.replace(" port=5432", "")
    assert url != database.url
    return replace(database, url=url)


def spool_while_down(recorder: Recorder, outage, result_of) -> None:
    outage.begin()
    try:
        assert recorder.record(result_of) is None
    finally:
        outage.end()


def test_a_spooled_result_is_replayed_by_its_database_whatever_the_urls_spelling(
        make_recorder, outage, database):
    recorder = make_recorder(retry_seconds=0)
    called = invocation()
    claimed = claim(recorder, called)
    spool_while_down(recorder, outage, result(claimed, called))
    elsewhere = make_recorder(replace(database, schema="elsewhere")).replay()
    assert (elsewhere.recorded, elsewhere.other_database) == ([], 1)
    replayed = make_recorder(respelled(database)).replay()
    assert [(run.id, run.status) for run in replayed.recorded] == [(claimed.run.id, "success")]


def test_a_result_for_another_database_of_the_same_server_is_left(make_recorder, outage,
                                                                  database, db_url, conn):
    recorder = make_recorder(retry_seconds=0)
    called = invocation()
    spool_while_down(recorder, outage, result(claim(recorder, called), called))
    other = replace(database, url=db_url.replace(f"dbname={conn.info.dbname}", "dbname=postgres"))
    assert make_recorder(other).replay().other_database == 1
    assert len(spool.pending(database.home)) == 1


def test_a_fail_open_result_is_replayed_only_under_the_urls_spelling(make_recorder, database,
                                                                     conn):
    # Never claimed, it has no database identity: where it belongs is what the URL said.
    unclaimed = make_recorder(Database(url=UNREACHABLE, home=database.home), retry_seconds=0)
    assert unclaimed.record(result(None, invocation())) is None
    path, = spool.pending(database.home)
    entry = spool.load(path)
    entry["target"] = make_recorder().spool_target()
    path.write_text(json.dumps(entry))
    assert make_recorder(respelled(database)).replay().other_database == 1
    assert len(make_recorder().replay().recorded) == 1
    assert spool.pending(database.home) == []


def test_a_result_refused_for_good_is_moved_aside_and_the_rest_recorded(
        make_recorder, outage, database, conn, told):
    recorder = make_recorder(retry_seconds=0)
    refused, good = invocation("refused"), invocation("good")
    claimed = [claim(recorder, called) for called in (refused, good)]
    outage.begin()
    try:
        # Ends before it starts: the table's CHECK refuses it, today and always.
        assert recorder.record(result(claimed[0], refused, elapsed=-60)) is None
        assert recorder.record(result(claimed[1], good)) is None
    finally:
        outage.end()
    refused_path = spool.pending(database.home)[0]
    told.clear()
    replayed = make_recorder().replay()
    assert ([run.name for run in replayed.recorded], replayed.rejected, replayed.failed) == (
        ["good"], 1, 0)
    moved = spool.spool_dir(database.home) / "rejected" / refused_path.name
    assert told == [f"the database refused the spooled result of run {claimed[0].run.id} "
                    f"('refused') for good (new row for relation \"jobs\" violates check "
                    f"constraint \"jobs_end_after_start\"); moved to {moved}"]
    assert spool.pending(database.home) == [] and moved.exists()
    assert make_recorder().replay() == Replayed()
