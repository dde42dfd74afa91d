"""The Python API, used as the original tdutils.jobutil.Job was."""

from __future__ import annotations

import math
from datetime import datetime

import pytest

from jobs_cli import Job
from jobs_cli.errors import DatabaseUnavailable, InvalidInput, Refused


@pytest.fixture
def job(db_url):
    return Job(name="orders", source="erp", destination="dwh", database_url=db_url)


def test_original_launcher_flow(job, conn):
    assert job.most_recent() is None
    row = job.start()
    assert row["status"] == "in_progress" and row["source"] == "erp" and row["id"] == job.id
    done = job.result("success", records_processed=12)
    assert (done["status"], done["records_processed"]) == ("success", 12)
    started = conn.execute("SELECT floor(extract(epoch FROM start_date))::bigint FROM jobs").fetchone()[0]
    assert job.most_recent() == started
    assert job.most_recent(lookback=90) == started - 90
    assert job.most_recent(status="error") is None


def test_result_only_success_or_error(job):
    job.start()
    with pytest.raises(InvalidInput):
        job.result("in_progress")
    assert job.result("error", message="boom")["message"] == "boom"


def test_result_twice_is_refused(job):
    job.start()
    job.result("success")
    with pytest.raises(Refused):
        job.result("error")


def test_run_context_manager_success(job, conn):
    with job.run() as running:
        running.records_processed = 5
    assert conn.execute("SELECT status, records_processed FROM jobs").fetchone() == ("success", 5)


def test_run_context_manager_error_reraises(job, conn):
    with pytest.raises(ZeroDivisionError):
        with job.run():
            1 / 0
    assert conn.execute("SELECT status, message FROM jobs").fetchone() == ("error", "division by zero")


def test_run_context_manager_reraises_even_when_the_error_cannot_be_recorded(job, conn):
    with pytest.warns(RuntimeWarning, match="could not record the error of 'orders': "
                                            ".*run `jobs-cli init`"):
        with pytest.raises(ZeroDivisionError):
            with job.run():
                conn.execute("ALTER TABLE jobs RENAME TO jobs_elsewhere")
                1 / 0
    assert conn.execute("SELECT status FROM jobs_elsewhere").fetchall() == [("in_progress",)]


def test_invalid_name_rejected_at_construction(db_url):
    with pytest.raises(InvalidInput):
        Job(name=" ", database_url=db_url)


def test_unreachable_database_is_a_jobs_error():
    job = Job(name="x", database_url="postgresql://u:pw@127.0.0.1:1/db?connect_timeout=2")
    with pytest.raises(DatabaseUnavailable) as raised:
        job.most_recent()
    assert "pw" not in str(raised.value)


def test_database_and_schema_from_environment(db_url, conn, monkeypatch):
    from jobs_cli.migrations import migrate

    migrate(conn, "etl")
    monkeypatch.setenv("JOBS_DATABASE_URL", db_url)
    monkeypatch.setenv("JOBS_SCHEMA", "etl")
    Job(name="env").start()
    assert conn.execute("SELECT name FROM etl.jobs").fetchall() == [("env",)]


def test_embedded_default(home, monkeypatch):
    monkeypatch.delenv("JOBS_DATABASE_URL", raising=False)
    monkeypatch.setenv("JOBS_HOME", str(home))
    job = Job(name="local")
    with job.run():
        pass
    started = datetime.fromisoformat(job.data["start_date"].replace("Z", "+00:00"))
    assert job.data["status"] == "success"
    assert job.most_recent() == math.floor(started.timestamp())


def test_cursors_through_the_api(job, conn):
    assert job.most_recent_cursor() is None
    job.start()
    job.result("success", cursor="2024-05-01T00:00:00Z")
    assert job.most_recent_cursor() == "2024-05-01T00:00:00Z"
    with job.run() as running:
        running.cursor = "next"
    assert job.most_recent_cursor() == "next"
