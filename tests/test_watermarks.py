"""History and resets of a job's watermark, against a real database."""

from __future__ import annotations

import pytest

from jobs_cli import runs, watermarks
from jobs_cli.errors import NotFound, Refused
from jobs_cli.text import iso_utc

SCHEMA = "public"


def success(conn, name: str, cursor: str | None = None, status: str = "success") -> runs.Run:
    run = runs.start_run(conn, SCHEMA, name)
    return runs.end_run(conn, SCHEMA, run.id, status, cursor=cursor)


def epoch(run: runs.Run) -> int:
    return int(run.start_date.timestamp() // 1)


def reset(conn, name: str, to: int | None) -> watermarks.Reset:
    target = watermarks.reset_target(conn, SCHEMA, name, to)
    return watermarks.reset(conn, SCHEMA, name, target, username="etl", host="etl1")


def test_a_reset_makes_an_earlier_runs_watermark_and_cursor_current_until_a_later_run_succeeds(conn):
    first = success(conn, "j", cursor="10")
    second = success(conn, "j")  # no cursor of its own: as of it, the cursor was "10"
    success(conn, "j", cursor="30")
    going = runs.start_run(conn, SCHEMA, "j")  # started before the reset
    made = reset(conn, "j", second.id)
    assert (made.to_run, made.cursor) == (second.id, "10")
    assert made.watermark == second.start_date
    assert runs.next_watermark(conn, SCHEMA, "j") == runs.Watermark(epoch(second), "10")
    runs.end_run(conn, SCHEMA, going.id, "success", cursor="99")
    # Its success does not end the reset: it loaded from the old watermark.
    assert runs.next_watermark(conn, SCHEMA, "j") == runs.Watermark(epoch(second), "10")
    assert runs.next_watermark(conn, SCHEMA, "j", lookback=60).since == epoch(second) - 60
    failed = success(conn, "j", cursor="50", status="error")
    assert runs.next_watermark(conn, SCHEMA, "j").cursor == "10" and failed
    after = success(conn, "j")  # started after the reset, reported no cursor
    assert runs.next_watermark(conn, SCHEMA, "j") == runs.Watermark(epoch(after), "10")
    latest = success(conn, "j", cursor="60")
    assert runs.next_watermark(conn, SCHEMA, "j") == runs.Watermark(epoch(latest), "60")
    assert first and conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 7


def test_a_reset_to_the_start_hands_nothing(conn):
    success(conn, "j", cursor="10")
    assert reset(conn, "j", None).to_run is None
    assert runs.next_watermark(conn, SCHEMA, "j") == runs.Watermark(None, None)
    assert runs.last_start(conn, SCHEMA, "j") is None


def test_a_claim_is_handed_the_reset_and_upstream_gating_follows_it(conn):
    old = success(conn, "load", cursor="5")
    upstream = success(conn, "extract")
    success(conn, "load", cursor="6")
    reset(conn, "load", old.id)
    called = runs.Invocation(run_key="k", name="load", source="", destination="", command="c",
                             host="h", pid=1, username="u")
    claim = runs.claim_run(conn, SCHEMA, called, lease_seconds=60, allow_overlap=False,
                           after=["extract"])
    # extract's success ended after the reset-to run started: consumed again.
    assert (claim.last_success, claim.cursor, claim.upstream_runs) == (
        epoch(old), "5", [upstream.id])


@pytest.mark.parametrize("target, error", [
    ("other", Refused), ("failed", Refused), ("missing", NotFound)])
def test_a_reset_refuses_a_run_of_another_job_or_one_that_did_not_succeed(conn, target, error):
    ids = {"other": success(conn, "other").id, "failed": success(conn, "j", status="error").id,
           "missing": 999}
    with pytest.raises(error):
        watermarks.reset_target(conn, SCHEMA, "j", ids[target])
    assert conn.execute("SELECT count(*) FROM jobs_resets").fetchone()[0] == 0


def test_history_lists_successes_and_resets_newest_first(conn):
    first = success(conn, "j", cursor="10")
    success(conn, "j", status="error")
    second = success(conn, "j", cursor="20")
    made = reset(conn, "j", first.id)
    success(conn, "other")
    entries = watermarks.history(conn, SCHEMA, "j", limit=10)
    assert [(entry.kind, entry.id) for entry in entries] == [
        ("reset", made.id), ("run", second.id), ("run", first.id)]
    assert entries[0].as_dict() == {
        "kind": "reset", "id": made.id, "at": iso_utc(made.reset_at),
        "since": iso_utc(first.start_date), "cursor": "10", "to_run": first.id,
        "made_by": "etl@etl1"}
    assert set(entries[1].as_dict()) == watermarks.RUN_FIELDS
    assert [entry.id for entry in watermarks.history(conn, SCHEMA, "j", limit=1)] == [made.id]
