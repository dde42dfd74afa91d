"""What the views print: JSON, CSV, tables (plain or coloured), metrics, check lines."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import datetime, timedelta, timezone

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.cells import cell_len

from jobs_cli import render
from jobs_cli.monitor import (CRITICAL, OK, RUN_VIEW_FIELDS, WARNING, EndedCount, JobSummary,
                              RunView, Verdict)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def run_view(**changes) -> RunView:
    fields = dict(id=7, name="orders_sync", status="success",
                  start_date=NOW - timedelta(minutes=10), end_date=NOW - timedelta(minutes=9),
                  message="loaded", records_processed=42, source="erp", destination="dwh",
                  state="success", duration_seconds=60.0, age_seconds=600.0)
    return RunView(**{**fields, **changes})


def summary(name: str = "orders_sync", states=("success", "error", "success"),
            **changes) -> JobSummary:
    """Runs an hour apart, newest first, each took a minute."""
    starts = [NOW - timedelta(hours=i + 1) for i in range(len(states))]
    fields = dict(name=name, checked_at=NOW, last_run_id=len(states) or None,
                  recent_states=list(states), recent_starts=starts,
                  recent_ends=[start + timedelta(minutes=1) for start in starts],
                  recent_durations=[60.0] * len(states))
    if "success" in states:
        last = states.index("success")
        fields.update(last_success_start=starts[last], last_success_records=5,
                      last_success_end=starts[last] + timedelta(minutes=1))
    return JobSummary(**{**fields, **changes})


@pytest.fixture
def terminal(monkeypatch):
    """Make rich see a 100-column colour terminal behind pytest's captured stdout."""
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.delenv("NO_COLOR", raising=False)


@pytest.fixture(autouse=True)
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")


def test_json_of_a_run_has_every_field_in_utc(capsys):
    render.emit_json([run_view(start_date=NOW.astimezone(timezone(timedelta(hours=2)))).as_dict()])
    (row,) = json.loads(capsys.readouterr().out)
    assert tuple(row) == RUN_VIEW_FIELDS
    assert row["start_date"] == "2024-05-01T12:00:00Z" and row["state"] == "success"


def test_csv_is_rfc_4180(capsys):
    tricky = 'comma, "quote"\nand a second line'
    render.emit_csv([run_view(message=tricky).as_dict(), run_view(id=8, end_date=None).as_dict()],
                    RUN_VIEW_FIELDS)
    out = capsys.readouterr().out
    assert out.startswith(",".join(RUN_VIEW_FIELDS) + "\r\n")
    header, first, second = csv.reader(io.StringIO(out, newline=""))
    assert tuple(header) == RUN_VIEW_FIELDS
    row = dict(zip(header, first))
    assert row["message"] == tricky and row["start_date"] == "2024-05-01T11:50:00Z"
    assert dict(zip(header, second))["end_date"] == ""


def test_table_is_plain_when_piped(capsys):
    render.print_runs([run_view(), run_view(id=8, state="dead", status="in_progress")], utc=True)
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "orders_sync" in out and "✓ success" in out and "☠ dead" in out
    assert "2024-05-01 11:50Z (10m ago)" in out and "erp → dwh" in out


def test_table_is_coloured_in_a_terminal(capsys, terminal):
    render.print_runs([run_view(state="error", status="error")], utc=False)
    assert "\x1b[31m" in capsys.readouterr().out  # red


def test_no_color_means_no_ansi_even_in_a_terminal(capsys, terminal, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    render.print_runs([run_view(state="dead", status="in_progress")], utc=False)
    out = capsys.readouterr().out
    assert "dead" in out and "\x1b" not in out


def test_stored_control_characters_cannot_drive_the_terminal(capsys, terminal):
    render.print_run(run_view(message="\x1b[2Jgone", output="ok\n\x1b]0;title\x07\n"), utc=True)
    out = capsys.readouterr().out
    assert "\\x1b[2Jgone" in out and "\\x1b]0;title\\x07" in out
    assert "\x1b[2J" not in out and "\x1b]" not in out


def test_show_prints_every_field(capsys):
    render.print_run(run_view(command="sync.sh --full", host="etl1", pid=99, exit_code=0,
                              output="tail line 1\ntail line 2\n", cursor="c42",
                              cursor_handed="c41", upstream_handed=[7, 9]), utc=True)
    out = capsys.readouterr().out
    for text in ("orders_sync", "sync.sh --full", "etl1", "99", "1m", "2024-05-01 11:51:00Z",
                 "output (tail):\ntail line 1\ntail line 2", "c42", "c41", "7 9"):
        assert text in out


@pytest.mark.parametrize("columns, kept, dropped", [
    (60, ["id", "name", "status", "started", "message"], ["records", "source"]),
    (160, ["records", "source → destination", "message"], []),
])
def test_tables_fit_the_width_by_leaving_columns_out(capsys, monkeypatch, columns, kept, dropped):
    monkeypatch.setenv("COLUMNS", str(columns))
    render.print_runs([run_view(name="a_rather_long_job_name_that_wraps", message="x" * 200)], True)
    lines = capsys.readouterr().out.splitlines()
    assert all(cell_len(line) <= columns for line in lines)
    assert all(word in lines[0] for word in kept)
    assert not any(word in lines[0] for word in dropped)
    # The name is what an operator scans for: times shorten and columns go first.
    assert "a_rather_long_job_name_that_wraps"[:render.NAME_WIDTH - 1] in lines[2]


def test_narrow_tables_show_ages_before_cutting_names(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    render.print_runs([run_view(name="orders_sync_nightly")], utc=True)
    row = capsys.readouterr().out.splitlines()[2]
    assert "orders_sync_nightly" in row and "10m ago" in row and "11:50" not in row


def test_no_line_ends_in_blanks(capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS")
    render.print_runs([run_view(message="a long message"), run_view(id=8, message=None)], True)
    render.print_run(run_view(), utc=True)
    out = capsys.readouterr().out
    assert all(line == line.rstrip() for line in out.splitlines())


def test_trailing_blanks_go_but_style_codes_stay():
    assert render.without_trailing_spaces("a \x1b[32mok  \x1b[0m  \n") == "a \x1b[32mok\x1b[0m\n"


def test_a_failed_runs_message_names_its_cause(capsys):
    render.print_runs([run_view(status="error", state="error", exit_code=1,
                                message="exit code 1\nTraceback\nUniqueViolation: duplicate key",
                                output="Traceback\nUniqueViolation: duplicate key\n"),
                       run_view(id=8, status="error", state="error", exit_code=1,
                                message="exit code 1; stopped early\nsome output",
                                output="some output")], utc=True)
    first, second = table_rows(capsys.readouterr().out)
    assert first.endswith("exit code 1: UniqueViolation: duplicate key")
    assert second.endswith("exit code 1; stopped early")


def test_show_prints_the_output_tail_once(capsys):
    render.print_run(run_view(status="error", state="error", exit_code=3,
                              message="exit code 3\nbad row 17", output="bad row 17\n"), True)
    out = capsys.readouterr().out
    assert out.count("bad row 17") == 1 and "message:\nexit code 3\n" in out


LONG_NAME = "orders_sync_from_the_erp_into_the_warehouse_nightly_full_run"  # 60 characters


def table_rows(out: str) -> list[str]:
    """The rows of a table printed alone, colours left out, after checking that its
    other lines are one header and one rule: every other line is a whole row."""
    header, rule, *rows = re.sub(r"\x1b\[[0-9;]*m", "", out).splitlines()
    assert set(rule) == {"─"} and len(rule) >= cell_len(header)
    return rows


def test_piped_table_is_as_wide_as_its_content(capsys, monkeypatch):
    """Not rich's 80 columns: grep and awk on piped output see whole names."""
    monkeypatch.delenv("COLUMNS")
    render.print_runs([run_view(name=LONG_NAME, message="x" * 2000, source="s" * 30),
                       run_view(id=8, message="first line\nsecond line")], utc=True)
    first, second = table_rows(capsys.readouterr().out)
    assert first.split()[:3] == ["7", LONG_NAME, "✓"] and "s" * 30 + " → dwh" in first
    assert 80 < cell_len(first) <= render.PIPE_WIDTH and first.rstrip().endswith("x…")
    assert second.split()[:2] == ["8", "orders_sync"] and second.rstrip().endswith("first line")


@pytest.mark.parametrize("columns, in_a_terminal", [
    (None, False), (160, False), (60, False), (20, False), (5, False), (1, False),
    (160, True), (60, True), (5, True),
])
def test_every_run_is_one_line_at_any_width(capsys, monkeypatch, request, columns,
                                            in_a_terminal):
    if in_a_terminal:
        request.getfixturevalue("terminal")
    if columns is None:
        monkeypatch.delenv("COLUMNS")
    else:
        monkeypatch.setenv("COLUMNS", str(columns))
    runs = [run_view(id=7, name=LONG_NAME, message="x" * 300, source="s" * 40),
            run_view(id=8, message="source down\nretry later\n"),
            run_view(id=9, name="n\nm", message="\n\nafter blank lines")]
    render.print_runs(runs, utc=True)
    out = capsys.readouterr().out
    assert ("\x1b[" in out) == in_a_terminal
    rows = table_rows(out)
    assert [row.split()[0] for row in rows] == ["7", "8", "9"]
    assert all(cell_len(row) <= (columns or render.PIPE_WIDTH) for row in rows)
    assert "retry later" not in out
    if columns == 5:
        assert [row.split() for row in rows] == [["7", "o…"], ["8", "o…"], ["9", "n…"]]
    if columns in (None, 160):
        assert LONG_NAME in rows[0] and "source down" in rows[1]
        assert "after blank lines" in rows[2] and "n\\nm" in rows[2]


def test_status_table(capsys):
    render.print_status([summary("failing", ("error", "success")), summary("fine")])
    out = capsys.readouterr().out
    failing = next(line for line in out.splitlines() if line.startswith("failing"))
    assert "✗ error 1h ago" in failing and "last run failed 59m ago" in failing
    assert "✓✗" in failing  # oldest first
    assert "50%" in failing and "1m" in failing


def test_metrics_parse_and_escape_labels():
    weird = 'we"ird\\job\nname'
    text = render.prometheus_text(
        [summary(weird), summary("never", ("error",)), summary("busy", ("live",), live=1, dead=2)],
        [EndedCount(weird, "success", 2), EndedCount(weird, "error", 1)])
    families = {f.name: f for f in text_string_to_metric_families(text)}

    def value(family: str, **labels) -> float | None:
        return next((s.value for s in families[family].samples if s.labels == labels), None)

    assert value("jobs_last_success_timestamp_seconds", job=weird) == (NOW - timedelta(
        minutes=59)).timestamp()
    assert value("jobs_last_success_timestamp_seconds", job="never") is None  # absent
    assert value("jobs_last_success_records", job=weird) == 5
    assert value("jobs_last_run_status", job=weird, status="success") == 1
    assert value("jobs_last_run_status", job=weird, status="error") == 0
    assert value("jobs_last_duration_seconds", job=weird) == 60
    assert (value("jobs_running", job="busy"), value("jobs_dead_runs", job="busy")) == (1, 2)
    assert families["jobs_runs"].type == "counter"
    assert value("jobs_runs", job=weird, status="success") == 2
    assert value("jobs_runs", job="never", status="success") == 0
    assert all(line.startswith(("# HELP", "# TYPE", "jobs_")) for line in text.splitlines())


def test_check_line_names_the_worst_problems_first():
    verdicts = [Verdict("a", OK, "last success 1m ago"), Verdict("b", WARNING, "slow"),
                Verdict("c", CRITICAL, "never succeeded")]
    assert render.check_line(verdicts) == "CRITICAL - c: never succeeded; b: slow"
    assert render.check_line(verdicts[:1]) == "OK - a: last success 1m ago"
    assert render.unknown_line("cannot reach it\x1b") == "UNKNOWN - cannot reach it\\x1b"
