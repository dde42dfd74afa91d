"""The views' queries against a real database: liveness, filters, summaries, verdicts, plans."""

from __future__ import annotations

import importlib.util
import select
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from seeding import add_run

from jobs_cli import monitor, runs
from jobs_cli.errors import InvalidInput, NotFound
from jobs_cli.monitor import (CRITICAL, OK, WARNING, check_jobs, ended_counts, get_run_view,
                              job_summaries, list_runs, problems_first)

SCHEMA = "public"


def listed(conn, **filters) -> list[str]:
    return [run.name for run in list_runs(conn, SCHEMA, **filters)]


def test_liveness_is_decided_by_the_servers_clock(conn):
    # One transaction, one now(): the ages are exact however long the statements take.
    with conn.transaction():
        live = add_run(conn, "a", "in_progress", ago=300, lease=60)
        dead = add_run(conn, "b", "in_progress", ago=600, lease=-60)
        unsupervised = add_run(conn, "c", "in_progress", ago=900)
        done = add_run(conn, "d", "success", ago=1200, took=30)
        failed = add_run(conn, "e", "error", ago=1500, took=5)
        by_id = {run.id: run for run in list_runs(conn, SCHEMA)}
    assert {run_id: by_id[run_id].state for run_id in (live, dead, unsupervised, done, failed)} \
        == {live: "live", dead: "dead", unsupervised: "running", done: "success", failed: "error"}
    assert by_id[done].duration_seconds == pytest.approx(30)
    assert by_id[live].duration_seconds == pytest.approx(300)
    # A dead run's duration stops where its lease ran out.
    assert by_id[dead].duration_seconds == pytest.approx(540)
    assert by_id[unsupervised].age_seconds == pytest.approx(900)


def test_newest_first_with_a_limit(conn):
    for ago, name in ((300, "older"), (100, "newest"), (200, "middle")):
        add_run(conn, name, ago=ago)
    assert listed(conn) == ["newest", "middle", "older"]
    assert listed(conn, limit=2) == ["newest", "middle"]


@pytest.mark.parametrize("status, expected", [
    ("success", ["ok"]), ("error", ["failed"]), ("live", ["live"]), ("dead", ["dead"]),
    ("running", ["unsupervised"]), ("in_progress", ["live", "dead", "unsupervised"]),
])
def test_status_filter(conn, status, expected):
    add_run(conn, "ok", ago=500)
    add_run(conn, "failed", "error", ago=400)
    add_run(conn, "live", "in_progress", ago=300, lease=60)
    add_run(conn, "dead", "in_progress", ago=200, lease=-60)
    add_run(conn, "unsupervised", "in_progress", ago=100)
    assert sorted(listed(conn, status=status)) == sorted(expected)


NAMES = ["orders_sync", "ordersXsync", "orders%", "orders\\x", "invoices"]


@pytest.mark.parametrize("pattern, expected", [
    ("orders_sync", ["orders_sync"]),  # no wildcard: the name itself, _ included
    ("orders_*", ["orders_sync"]),  # _ is literal in a pattern too
    ("orders%", ["orders%"]),
    ("*\\*", ["orders\\x"]),
    ("order?_sync", ["orders_sync"]),
    ("orders*", ["orders_sync", "ordersXsync", "orders%", "orders\\x"]),
    ("*", NAMES),
    ("nothing*", []),
])
def test_name_patterns_are_shell_wildcards(conn, pattern, expected):
    for name in NAMES:
        add_run(conn, name)
    assert sorted(listed(conn, name=pattern)) == sorted(expected)


def test_pattern_combines_with_status_since_and_limit(conn):
    add_run(conn, "orders_a", "error", ago=7200)
    add_run(conn, "orders_b", "error", ago=60)
    add_run(conn, "orders_b", "error", ago=30)
    add_run(conn, "orders_c", "success", ago=60)
    add_run(conn, "invoices", "error", ago=60)
    assert listed(conn, name="orders_*", status="error", since=timedelta(hours=1)) \
        == ["orders_b", "orders_b"]
    assert listed(conn, name="orders_*", status="error", limit=1) == ["orders_b"]


def test_since_a_duration_ago_or_a_moment(conn):
    add_run(conn, "old", ago=3 * 86400)
    add_run(conn, "new", ago=3600)
    assert listed(conn, since=timedelta(days=1)) == ["new"]
    assert listed(conn, since=datetime.now(timezone.utc) - timedelta(days=4)) == ["new", "old"]


def test_bad_filters_are_refused():
    with pytest.raises(InvalidInput):
        monitor.list_query(status="finished")
    with pytest.raises(InvalidInput):
        monitor.list_query(limit=0)


def test_get_run_view(conn):
    run_id = add_run(conn, "a", output="line 1\nline 2\n", command="sync.sh", host="etl1", pid=7)
    run = get_run_view(conn, SCHEMA, str(run_id))
    assert (run.name, run.state, run.output, run.command, run.host, run.pid) == \
        ("a", "success", "line 1\nline 2\n", "sync.sh", "etl1", 7)
    with pytest.raises(NotFound):
        get_run_view(conn, SCHEMA, run_id + 1)


def test_summary_of_a_job(conn):
    # Oldest first: success 100 s, error, success 200 s, success 300 s, then one running.
    add_run(conn, "a", "success", ago=5000, took=100, records=1)
    add_run(conn, "a", "error", ago=4000, took=7)
    add_run(conn, "a", "success", ago=3000, took=200, records=2)
    add_run(conn, "a", "success", ago=2000, took=300, records=3)
    newest = add_run(conn, "a", "in_progress", ago=60, lease=30)
    (summary,) = job_summaries(conn, SCHEMA)
    assert summary.last_run_id == newest and summary.last_state == "live"
    assert summary.recent_states[::-1] == ["success", "error", "success", "success", "live"]
    assert summary.success_rate == 0.75
    assert summary.median_success_seconds == pytest.approx(200)
    assert summary.last_ended_status == "success"
    assert summary.last_ended_seconds == pytest.approx(300)
    assert summary.last_success_records == 3
    assert summary.last_success_age_seconds == pytest.approx(1700, abs=5)
    assert (summary.live, summary.dead, summary.running) == (1, 0, 0)
    assert summary.problems == []


def test_last_success_is_the_last_to_end_as_in_last_success(conn):
    long = add_run(conn, "a", "success", ago=1000, took=900)
    add_run(conn, "a", "success", ago=500, took=10)
    (summary,) = job_summaries(conn, SCHEMA)
    assert summary.last_success_age_seconds == pytest.approx(100, abs=5)
    started = conn.execute("SELECT floor(extract(epoch FROM start_date)) FROM jobs WHERE id = %s",
                           (long,)).fetchone()[0]
    assert summary.last_success_start.timestamp() // 1 == started
    assert runs.last_start(conn, SCHEMA, "a") == started


def test_summaries_of_given_names_keep_their_order(conn):
    add_run(conn, "b")
    add_run(conn, "a")
    summaries = job_summaries(conn, SCHEMA, ["b", "never-ran", "a"])
    assert [s.name for s in summaries] == ["b", "never-ran", "a"]
    assert summaries[1].last_run_id is None and summaries[1].recent_states == []


def test_problems_come_first(conn):
    add_run(conn, "healthy")
    add_run(conn, "failing", ago=900)
    add_run(conn, "failing", "error")
    add_run(conn, "orphaned", ago=900)
    add_run(conn, "orphaned", "in_progress", ago=100, lease=-10)
    add_run(conn, "new", "in_progress", ago=5)
    for hours_ago in (11, 10, 9, 8, 7):  # hourly until seven hours ago
        add_run(conn, "overdue", ago=hours_ago * 3600)
    ordered = problems_first(job_summaries(conn, SCHEMA))
    assert [(s.name, [p.text.split(" ")[0] for p in s.problems]) for s in ordered] == [
        ("failing", ["last"]), ("orphaned", ["1"]), ("new", ["never"]),
        ("overdue", ["last"]), ("healthy", [])]
    assert ordered[-2].problems[0].text == "last start 7h ago, usually every 1h"
    assert [s.severity for s in ordered] == [CRITICAL, CRITICAL, WARNING, WARNING, OK]


@pytest.mark.parametrize("runs_, severity, text", [
    ([("success", 600)], OK, "last success 9m50s ago"),
    ([("success", 5400)], WARNING, "last success 1h29m ago (warn 1h)"),
    ([("success", 9000)], CRITICAL, "last success 2h29m ago (max 2h)"),
    ([], CRITICAL, "no runs recorded (is the name right?)"),
    ([("error", 600)], CRITICAL, "never succeeded"),
    ([("success", 900), ("error", 600)], CRITICAL, "last run failed 9m50s ago, last success"),
    ([("success", 900), ("in_progress", 600)], OK, "last success 14m50s ago"),
])
def test_check_verdicts(conn, runs_, severity, text):
    # One transaction, one now(): the ages are exact however long the statements take.
    with conn.transaction():
        for status, ago in runs_:
            add_run(conn, "job", status, ago=ago, lease=60 if status == "in_progress" else None)
        (verdict,) = check_jobs(conn, SCHEMA, ["job"], max_age=7200, warn_age=3600)
    assert verdict.severity == severity
    assert verdict.text.startswith(text)


def test_check_says_a_dead_newest_run_is_critical(conn):
    add_run(conn, "job", ago=900)
    dead = add_run(conn, "job", "in_progress", ago=600, lease=-60)
    (verdict,) = check_jobs(conn, SCHEMA, ["job"], max_age=7200)
    assert (verdict.severity, verdict.text.split(" (")[0]) == (CRITICAL, f"run {dead} is dead")


def test_check_names_once_each_in_order(conn):
    add_run(conn, "a")
    assert [v.name for v in check_jobs(conn, SCHEMA, ["b", "a", "b"], max_age=60)] == ["b", "a"]


def test_warn_age_must_be_below_max_age(conn):
    with pytest.raises(InvalidInput, match="--warn-age"):
        check_jobs(conn, SCHEMA, ["a"], max_age=60, warn_age=60)


def test_ended_counts(conn):
    for status in ("success", "success", "error"):
        add_run(conn, "a", status)
    add_run(conn, "a", "in_progress")
    add_run(conn, "b", "error")
    assert [(c.name, c.status, c.count) for c in ended_counts(conn, SCHEMA)] == [
        ("a", "error", 1), ("a", "success", 2), ("b", "error", 1)]


def test_jobs_latest_view_is_the_newest_run_of_each_name(conn):
    for name, ago in (("a", 30), ("a", 10), ("b", 50), ("a", 20), ("c", 5)):
        add_run(conn, name, ago=ago)
    latest = conn.execute("SELECT * FROM jobs_latest ORDER BY name").fetchall()
    distinct_on = conn.execute("SELECT DISTINCT ON (name) * FROM jobs "
                               "ORDER BY name, start_date DESC, id DESC").fetchall()
    assert latest == distinct_on and len(latest) == 3


def test_a_watch_snapshot_has_limit_unfinished_and_limit_ended_runs(conn):
    # The unfinished runs are the newest: they must not crowd out the ended ones.
    for ago in (400, 300, 200):
        add_run(conn, f"ended{ago}", ago=ago)
    for ago in (30, 20, 10):
        add_run(conn, f"live{ago}", "in_progress", ago=ago, lease=600)
    shot = monitor.snapshot(conn, SCHEMA, 2)
    assert [run.name for run in shot.unfinished] == ["live10", "live20"]
    assert [run.name for run in shot.ended] == ["ended200", "ended300"]


def test_changes_notify_watchers_but_heartbeats_do_not(conn, db_url):
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(monitor.NOTIFY_CHANNEL)))

        def notified() -> list[str]:
            select.select([listener.fileno()], [], [], 0.5)
            return [n.payload for n in listener.notifies(timeout=0)]

        run_id = add_run(conn, "a", "in_progress", lease=60)
        assert notified() == [SCHEMA]
        conn.execute("UPDATE jobs SET heartbeat_at = now(), lease_until = now() + interval '1m' "
                     "WHERE id = %s", (run_id,))
        assert notified() == []
        runs.end_run(conn, SCHEMA, run_id, "success")
        assert notified() == [SCHEMA]


# -- the parsers ----------------------------------------------------------------

def test_since_parses_durations_and_iso_moments():
    assert monitor.parse_since("2h") == timedelta(hours=2)
    assert monitor.parse_since("2024-05-01T06:00Z") == datetime(2024, 5, 1, 6, tzinfo=timezone.utc)
    assert monitor.parse_since("2024-05-01").tzinfo is not None  # local midnight


def test_since_reads_eight_digits_as_a_date():
    assert monitor.parse_since("20240501") == monitor.parse_since("2024-05-01")


@pytest.mark.parametrize("text", ["yesterday", "2", "86400", "2024050", "202405011", "20241301",
                                  "2024-5-1", "2h ago"])
def test_since_refuses_the_rest(text):
    with pytest.raises(InvalidInput, match="--since"):
        monitor.parse_since(text)


# -- scale ----------------------------------------------------------------------

def load_bench():
    path = Path(__file__).resolve().parent.parent / "bench" / "run.py"
    spec = importlib.util.spec_from_file_location("bench_run", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def plan_nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


def test_views_read_indexes_not_the_table(conn):
    """The benchmark's statements on 50,000 runs over 500 names: every one reads
    through indexes, none scans the table (the shapes that stay fast at 10,000,000)."""
    bench = load_bench()
    bench.fill(conn, SCHEMA, rows=50_000, names=500)
    scans = {}
    for label, parts in bench.statements().items():
        for number, (template, params) in enumerate(parts):
            if template == monitor.ENDED_COUNTS:
                continue  # counts every run: reading it all is the point
            explain = sql.SQL("EXPLAIN (FORMAT JSON) ") + runs.statement(template, SCHEMA)
            (plan,) = conn.execute(explain, params[0] if isinstance(params, list)
                                   else params).fetchone()
            nodes = list(plan_nodes(plan[0]["Plan"]))
            scans[label, number] = {node["Node Type"] for node in nodes
                                    if node.get("Relation Name") == "jobs"}
    # A bitmap heap scan reads the rows a bitmap index scan found.
    index_reads = {"Index Scan", "Index Only Scan", "Bitmap Heap Scan"}
    assert all(found and found <= index_reads for found in scans.values()), scans


def test_a_few_runs_by_hand_are_not_a_habit_to_be_overdue_from(conn):
    for hours_ago in (10, 9, 8, 7):
        add_run(conn, "tried", ago=hours_ago * 3600)
    (summary,) = job_summaries(conn, SCHEMA)
    assert summary.usual_interval_seconds is None and summary.problems == []
