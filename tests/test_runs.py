"""The core run operations against a real database."""

from __future__ import annotations

from datetime import timedelta

import pytest

from jobs_cli import runs
from jobs_cli.errors import InvalidInput, NotFound, Refused

SCHEMA = "public"


def test_start_records_an_in_progress_run_at_server_time(conn):
    run = runs.start_run(conn, SCHEMA, "orders", source="erp", destination="dwh")
    server_now = conn.execute("SELECT now()").fetchone()[0]
    assert run.status == "in_progress"
    assert (run.name, run.source, run.destination) == ("orders", "erp", "dwh")
    assert run.end_date is None
    assert abs(run.start_date - server_now) < timedelta(seconds=5)


def test_finish_sets_success_end_date_and_records(conn):
    run = runs.start_run(conn, SCHEMA, "orders")
    done = runs.end_run(conn, SCHEMA, run.id, "success", records=42, message="ok")
    assert (done.status, done.records_processed, done.message) == ("success", 42, "ok")
    assert done.end_date >= done.start_date


def test_fail_keeps_records_when_none_given(conn):
    run = runs.start_run(conn, SCHEMA, "orders")
    failed = runs.end_run(conn, SCHEMA, run.id, "error", message="boom")
    assert (failed.status, failed.records_processed, failed.message) == ("error", 0, "boom")


@pytest.mark.parametrize("status", ["success", "error"])
def test_an_ended_run_cannot_end_again(conn, status):
    run = runs.start_run(conn, SCHEMA, "orders")
    runs.end_run(conn, SCHEMA, run.id, status, records=1)
    with pytest.raises(Refused, match="already ended"):
        runs.end_run(conn, SCHEMA, run.id, "success", records=9)
    assert runs.get_run(conn, SCHEMA, run.id).records_processed == 1


@pytest.mark.parametrize("bad_id, error", [("12x", InvalidInput), ("", InvalidInput), (999, NotFound),
                                            (0, NotFound), (-3, NotFound), (2**40, NotFound)])
def test_bad_run_ids_are_refused(conn, bad_id, error):
    with pytest.raises(error):
        runs.end_run(conn, SCHEMA, bad_id, "success")


def test_negative_records_refused_and_nothing_changed(conn):
    run = runs.start_run(conn, SCHEMA, "orders")
    with pytest.raises(InvalidInput):
        runs.end_run(conn, SCHEMA, run.id, "success", records=-1)
    assert runs.get_run(conn, SCHEMA, run.id).status == "in_progress"


def test_end_status_must_be_success_or_error(conn):
    run = runs.start_run(conn, SCHEMA, "orders")
    with pytest.raises(InvalidInput):
        runs.end_run(conn, SCHEMA, run.id, "in_progress")


@pytest.mark.parametrize("name", ["", "   ", "\t", "a\nb", "tab\there", "nul\x00", "bell\x07",
                                  "bad\udcff"])
def test_invalid_names_rejected(conn, name):
    with pytest.raises(InvalidInput):
        runs.start_run(conn, SCHEMA, name)


@pytest.mark.parametrize("name", [" padded ", "ünïcode ✓", "with space", "a'b\"c", "x" * 255,
                                  "名" * 255])
def test_other_names_stored_exactly(conn, name):
    run = runs.start_run(conn, SCHEMA, name)
    assert runs.get_run(conn, SCHEMA, run.id).name == name


def insert(conn, name, status, start, end, **extra):
    """A run with explicit times, as history from earlier days would be."""
    return conn.execute(
        "INSERT INTO jobs (name, status, start_date, end_date, source, destination) "
        "VALUES (%s, %s, %s::timestamptz, %s::timestamptz, '', '') RETURNING id",
        (name, status, start, end)).fetchone()[0]


def test_last_success_is_start_of_run_that_ended_last(conn):
    # Started earlier but ended later: the original's "most recent" is by end_date.
    insert(conn, "j", "success", "2024-01-01T10:00:00Z", "2024-01-01T12:00:00Z")
    insert(conn, "j", "success", "2024-01-01T11:00:00Z", "2024-01-01T11:30:00Z")
    insert(conn, "j", "error", "2024-01-02T00:00:00Z", "2024-01-02T01:00:00Z")
    insert(conn, "other", "success", "2025-01-01T00:00:00Z", "2025-01-01T00:00:01Z")
    assert runs.next_watermark(conn, SCHEMA, "j").since == 1704103200  # 2024-01-01T10:00:00Z


def test_last_success_floors_fractional_seconds(conn):
    insert(conn, "j", "success", "2024-01-01T10:00:00.999Z", "2024-01-01T12:00:00Z")
    assert runs.next_watermark(conn, SCHEMA, "j").since == 1704103200


def test_last_success_before_1970_floors_toward_minus_infinity(conn):
    insert(conn, "j", "success", "1969-12-31T23:59:59.5Z", "1970-01-01T00:00:00Z")
    assert runs.next_watermark(conn, SCHEMA, "j").since == -1


def test_never_succeeded(conn):
    insert(conn, "j", "error", "2024-01-01T10:00:00Z", "2024-01-01T12:00:00Z")
    runs.start_run(conn, SCHEMA, "j")
    assert runs.next_watermark(conn, SCHEMA, "j").since is None
    assert runs.last_start(conn, SCHEMA, "j", "error") == 1704103200


def test_answers_do_not_depend_on_session_time_zone(conn):
    insert(conn, "j", "success", "2024-07-01T00:30:00+02:00", "2024-07-01T01:00:00+02:00")
    answers = set()
    for zone in ("UTC", "America/Los_Angeles", "Asia/Kolkata", "Pacific/Chatham"):
        conn.execute(f"SET TIME ZONE '{zone}'")
        run = runs.get_run(conn, SCHEMA, 1)
        answers.add((runs.next_watermark(conn, SCHEMA, "j").since, run.as_dict()["start_date"]))
    assert answers == {(1719786600, "2024-06-30T22:30:00Z")}


def test_other_schema(conn):
    from jobs_cli.migrations import migrate

    migrate(conn, "api")
    run = runs.start_run(conn, "api", "j")
    runs.end_run(conn, "api", run.id, "success")
    assert conn.execute("SELECT count(*) FROM api.jobs").fetchone()[0] == 1
    assert runs.last_start(conn, SCHEMA, "j") is None
    assert runs.last_start(conn, "api", "j") is not None


def test_run_as_dict_is_json_ready(conn):
    import json

    run = runs.start_run(conn, SCHEMA, "j", source="s", destination="d")
    data = json.loads(json.dumps(run.as_dict()))
    assert data["id"] == run.id and data["status"] == "in_progress"
    assert data["start_date"].endswith("Z") and data["end_date"] is None
    assert set(runs.RUN_COLUMNS) <= set(data)


def test_last_success_uses_the_partial_index(conn):
    conn.execute("""
        INSERT INTO jobs (name, status, start_date, end_date, source, destination)
        SELECT 'job' || (i % 200), CASE WHEN i % 3 = 0 THEN 'error' ELSE 'success' END,
               now() - i * interval '1 minute', now() - i * interval '1 minute' + interval '10 s', '', ''
        FROM generate_series(1, 20000) i""")
    conn.execute("ANALYZE jobs")
    plan = "\n".join(row[0] for row in conn.execute(
        "EXPLAIN " + runs.statement(runs.LAST_START_BY_STATUS, SCHEMA).as_string(conn),
        {"name": "job7", "status": "success"}))
    assert "jobs_success_by_name" in plan


def test_a_reaped_run_ends_at_its_last_heartbeat(conn):
    conn.execute("""
        INSERT INTO jobs (name, status, start_date, heartbeat_at, lease_until, source, destination)
        VALUES ('j', 'in_progress', now() - interval '1 hour', now() - interval '50 minutes',
                now() - interval '40 minutes', '', '')""")
    (reaped,) = runs.reap_runs(conn, SCHEMA)
    heartbeat = conn.execute("SELECT heartbeat_at FROM jobs").fetchone()[0]
    assert reaped.status == "error" and reaped.end_date == heartbeat
    assert reaped.message.startswith("abandoned: no heartbeat since ")


def test_new_names_are_capped_but_longer_adopted_names_can_be_read(conn):
    with pytest.raises(InvalidInput, match="longer than 255"):
        runs.start_run(conn, SCHEMA, "x" * 256)
    insert(conn, "y" * 300, "success", "2024-01-01T10:00:00Z", "2024-01-01T12:00:00Z")
    assert runs.next_watermark(conn, SCHEMA, "y" * 300).since == 1704103200


def test_a_look_back_is_taken_off_the_floored_watermark_in_whole_seconds(conn):
    insert(conn, "j", "success", "2024-01-01T10:00:00.999Z", "2024-01-01T12:00:00Z")
    assert runs.next_watermark(conn, SCHEMA, "j", lookback=600).since == 1704103200 - 600
    # Rounded up: a shorter look-back than asked could miss rows.
    assert runs.next_watermark(conn, SCHEMA, "j", lookback=0.2).since == 1704103200 - 1
    assert runs.next_watermark(conn, SCHEMA, "never", lookback=600).since is None
    with pytest.raises(InvalidInput):
        runs.next_watermark(conn, SCHEMA, "j", lookback=-1)


def test_a_claim_keeps_the_watermark_it_hands(conn):
    insert(conn, "j", "success", "2024-01-01T10:00:00Z", "2024-01-01T12:00:00Z")
    called = runs.Invocation(run_key="k", name="j", source="", destination="", command="c",
                             host="h", pid=1, username="u")
    claim = runs.claim_run(conn, SCHEMA, called, lease_seconds=60, allow_overlap=False,
                           lookback=3600)
    assert claim.last_success == 1704103200 - 3600
    assert claim.run.since_handed.timestamp() == 1704103200 - 3600
    first = runs.claim_run(conn, SCHEMA, runs.Invocation(**{**vars(called), "name": "new",
                                                               "run_key": "n"}),
                           lease_seconds=60, allow_overlap=False, lookback=3600)
    assert (first.last_success, first.run.since_handed) == (None, None)


def test_the_cursor_is_the_last_successful_runs_that_has_one(conn):
    assert runs.next_watermark(conn, SCHEMA, "j") == runs.Watermark(since=None, cursor=None)
    first = runs.start_run(conn, SCHEMA, "j")
    runs.end_run(conn, SCHEMA, first.id, "success", cursor="100")
    failed = runs.start_run(conn, SCHEMA, "j")
    runs.end_run(conn, SCHEMA, failed.id, "error", cursor="150")  # kept, never handed on
    without = runs.start_run(conn, SCHEMA, "j")
    runs.end_run(conn, SCHEMA, without.id, "success")
    handed = runs.next_watermark(conn, SCHEMA, "j")
    assert handed.cursor == "100"
    assert handed.since == int(runs.get_run(conn, SCHEMA, without.id).start_date.timestamp())
    reported = runs.start_run(conn, SCHEMA, "j")
    runs.report_run(conn, SCHEMA, reported.id, records=None, message=None, cursor="2024-05-01 x")
    runs.end_run(conn, SCHEMA, reported.id, "success")
    assert runs.next_watermark(conn, SCHEMA, "j").cursor == "2024-05-01 x"


@pytest.mark.parametrize("cursor", ["", "a\nb", "tab\there", "nul\x00", "\udcff"])
def test_a_cursor_is_one_line_of_text(conn, cursor):
    run = runs.start_run(conn, SCHEMA, "j")
    with pytest.raises(InvalidInput):
        runs.end_run(conn, SCHEMA, run.id, "success", cursor=cursor)
    assert runs.get_run(conn, SCHEMA, run.id).status == "in_progress"


def test_a_claim_hands_the_cursor_and_keeps_it(conn):
    run = runs.start_run(conn, SCHEMA, "j")
    runs.end_run(conn, SCHEMA, run.id, "success", cursor="42")
    called = runs.Invocation(run_key="k", name="j", source="", destination="", command="c",
                             host="h", pid=1, username="u")
    claim = runs.claim_run(conn, SCHEMA, called, lease_seconds=60, allow_overlap=False)
    assert claim.cursor == claim.run.cursor_handed == "42" and claim.run.cursor is None


def test_the_cursor_uses_its_partial_index(conn):
    conn.execute("""
        INSERT INTO jobs (name, status, start_date, end_date, source, destination)
        SELECT 'job' || (i % 200), 'success', now() - i * interval '1 minute',
               now() - i * interval '1 minute' + interval '10 s', '', ''
        FROM generate_series(1, 20000) i""")
    conn.execute("ANALYZE jobs")
    plan = "\n".join(row[0] for row in conn.execute(
        "EXPLAIN " + runs.statement(runs.NEXT_WATERMARK, SCHEMA).as_string(conn),
        {"name": "job7", "lookback": 0}))
    assert "jobs_cursor_by_name" in plan and "jobs_success_by_name" in plan


def claim_after(conn, name: str, *after: str, key: str | None = None) -> runs.Claim:
    called = runs.Invocation(run_key=key or f"{name}-{conn.execute('SELECT random()').fetchone()[0]}",
                             name=name, source="", destination="", command="c", host="h",
                             pid=1, username="u")
    return runs.claim_run(conn, SCHEMA, called, lease_seconds=60, allow_overlap=True,
                          after=after)


def succeed(conn, name: str) -> int:
    run = runs.start_run(conn, SCHEMA, name)
    return runs.end_run(conn, SCHEMA, run.id, "success").id


def test_after_gates_on_a_success_of_every_upstream_job_since_the_last_success_started(conn):
    gated = claim_after(conn, "load", "extract", "enrich")
    assert (gated.run, gated.blocking, gated.waiting_for) == (None, None, ["extract", "enrich"])
    runs.start_run(conn, SCHEMA, "extract")  # in progress: only successes count
    extract = succeed(conn, "extract")
    assert claim_after(conn, "load", "extract", "enrich").waiting_for == ["enrich"]
    enrich = succeed(conn, "enrich")
    claim = claim_after(conn, "load", "extract", "enrich", "extract")
    assert claim.run.upstream_handed == claim.upstream_runs == [extract, enrich]
    runs.end_run(conn, SCHEMA, claim.run.id, "success")
    # Nothing new upstream since that success started.
    assert claim_after(conn, "load", "extract", "enrich").waiting_for == ["extract", "enrich"]
    newer = succeed(conn, "enrich")
    succeed(conn, "extract")
    newest = succeed(conn, "extract")
    assert claim_after(conn, "load", "enrich", "extract").upstream_runs == [newer, newest]
    ungated = claim_after(conn, "load")
    assert ungated.run.upstream_handed is None and ungated.upstream_runs == []


def test_a_job_cannot_wait_for_itself(conn):
    with pytest.raises(InvalidInput):
        claim_after(conn, "load", "load")
