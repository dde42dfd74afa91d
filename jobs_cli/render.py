"""Rendering for stdout: JSON, CSV and rich tables.

Data goes to stdout, chatter to stderr. rich is imported only by the
functions that draw tables, so scripted commands never pay for it.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .durations import format_duration
from .monitor import (CRITICAL, OK, RECENT_RUNS, SEVERITY_NAMES, UNKNOWN, WARNING, EndedCount,
                      JobSummary, RunView, Snapshot, Verdict, ago)
from .states import DEAD, ENDED, ERROR, LIVE, RUNNING, STATES, SUCCESS

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text


def emit_json(value: Any) -> None:
    json.dump(value, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


def emit_csv(rows: Iterable[dict[str, Any]], columns: Iterable[str]) -> None:
    """RFC 4180: a header row, CRLF line ends, quoting where needed; None as empty."""
    writer = csv.DictWriter(sys.stdout, fieldnames=list(columns), lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)


# -- terminal -------------------------------------------------------------------

STATE_STYLES = {SUCCESS: "green", ERROR: "red", LIVE: "cyan", RUNNING: "yellow",
                DEAD: "bold magenta"}
SEVERITY_STYLES = {OK: "green", WARNING: "yellow", CRITICAL: "bold red"}
UNICODE_MARKS = {SUCCESS: "✓", ERROR: "✗", LIVE: "▶", RUNNING: "▷", DEAD: "☠"}
ASCII_MARKS = {SUCCESS: "+", ERROR: "x", LIVE: ">", RUNNING: ">", DEAD: "!"}


def make_console() -> "Console":
    from rich.console import Console

    # rich keeps bold and the like under NO_COLOR; no ANSI styling at all is wanted.
    # Stored names and messages are data: neither markup nor emoji codes apply.
    plain = os.environ.get("NO_COLOR", "") != ""
    return Console(highlight=False, markup=False, emoji=False,
                   color_system=None if plain else "auto")


def unicode_ok(console: "Console") -> bool:
    return console.encoding.lower().startswith("utf")


def printable(text: str, multiline: bool = False) -> str:
    """Control characters as escapes (\\x1b), so stored text cannot drive the terminal."""
    kept = "\n\t" if multiline else ""
    return "".join(ch if ch in kept or unicodedata.category(ch) != "Cc" else repr(ch)[1:-1]
                   for ch in text)


def cell(text: str | None, style: str = "", wrap: bool = False) -> "Text":
    """One line of data; wrapped, or cut with an ellipsis, when its column is narrowed."""
    from rich.text import Text

    return Text(printable((text or "").split("\n", 1)[0]), style=style, no_wrap=not wrap,
                overflow="fold" if wrap else "ellipsis")


def new_table(title: str | None = None) -> "Table":
    from rich import box
    from rich.table import Table

    # No padding: the box's blank column divider is the one space between columns.
    return Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=0,
                 title=title, title_justify="left")


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[Any], "Text | str"]
    right: bool = False
    # Wrapping columns share the width the others leave, down to FLEX_WIDTH each.
    wraps: bool = False
    # Columns with a rank are left out, lowest rank first, while the table is too wide.
    drop_rank: int | None = None


FLEX_WIDTH = 8


def fitted_table(console: "Console", columns: list[Column], groups: Iterable[list[Any]],
                 title: str | None = None) -> "Table":
    """One row per item, a line between non-empty groups, as many columns as fit.

    rich narrows only wrapping columns and crops the rest at the terminal's edge,
    so the columns that do not fit are left out instead.
    """
    from rich.cells import cell_len
    from rich.text import Text

    rows = [[[column.value(item) for column in columns] for item in group]
            for group in groups if group]

    def width(index: int) -> int:
        texts = [columns[index].header, *(row[index] for group in rows for row in group)]
        widest = max(cell_len(text.plain if isinstance(text, Text) else text) for text in texts)
        return min(widest, FLEX_WIDTH) if columns[index].wraps else widest

    widths = [width(index) for index in range(len(columns))]
    kept = list(range(len(columns)))
    droppable = sorted((index for index, column in enumerate(columns)
                        if column.drop_rank is not None),
                       key=lambda index: columns[index].drop_rank)
    for index in droppable:
        if sum(widths[i] for i in kept) + len(kept) - 1 <= console.width:
            break
        kept.remove(index)
    table = new_table(title)
    for index in kept:
        column = columns[index]
        table.add_column(column.header, justify="right" if column.right else "left",
                         no_wrap=not column.wraps, min_width=FLEX_WIDTH if column.wraps else None)
    for group in rows:
        if table.row_count:
            table.add_section()
        for row in group:
            table.add_row(*(row[index] for index in kept))
    return table


def state_cell(console: "Console", state: str | None, suffix: str = "") -> "Text":
    marks = UNICODE_MARKS if unicode_ok(console) else ASCII_MARKS
    return cell(f"{marks.get(state or '', '?')} {state or '?'}{suffix}",
                STATE_STYLES.get(state or "", ""))


def moment(value: datetime | None, utc: bool, short: bool = False) -> str:
    """Local time for people (UTC with --utc): the zone is the client's, the time the
    server's. Short: the time alone for today, else the date and the minute."""
    if value is None:
        return ""
    shown = value.astimezone(timezone.utc if utc else None)
    shape = "%Y-%m-%d %H:%M:%S"
    if short:
        today = shown.date() == datetime.now(shown.tzinfo).date()
        shape = "%H:%M:%S" if today else "%Y-%m-%d %H:%M"
    return shown.strftime(shape) + ("Z" if utc else "")


def seconds_text(seconds: float | None) -> str:
    return "" if seconds is None else format_duration(max(seconds, 0))


def runs_table(console: "Console", *groups: list[RunView], utc: bool = False,
               title: str | None = None) -> "Table":
    arrow = "→" if unicode_ok(console) else "->"

    def route(run: RunView) -> Text:
        return cell(f"{run.source} {arrow} {run.destination}"
                    if run.source or run.destination else "", wrap=True)

    columns = [
        Column("id", lambda run: str(run.id), right=True),
        Column("name", lambda run: cell(run.name, wrap=True), wraps=True),
        Column("status", lambda run: state_cell(console, run.state)),
        Column("started", lambda run: cell(f"{moment(run.start_date, utc, short=True)} "
                                           f"({ago(run.age_seconds)})")),
        Column("duration", lambda run: seconds_text(run.duration_seconds), right=True,
               drop_rank=3),
        Column("records", lambda run: "" if run.records_processed is None
               else str(run.records_processed), right=True, drop_rank=2),
        Column(f"source {arrow} destination", route, wraps=True, drop_rank=1),
        Column("message", lambda run: cell(run.message, wrap=True), wraps=True, drop_rank=4),
    ]
    return fitted_table(console, columns, groups, title)


def print_runs(runs: list[RunView], utc: bool) -> None:
    console = make_console()
    console.print(runs_table(console, runs, utc=utc))


def print_run(run: RunView, utc: bool) -> None:
    """Every field of one run; the message and the output tail in full at the end."""
    from rich.table import Table
    from rich.text import Text

    console = make_console()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()

    def value(text: Any) -> Text:
        return Text(printable("-" if text is None or text == "" else str(text)))

    status = run.status if run.state == run.status else f"{run.status} ({run.state})"
    for label, shown in (
        ("id", value(run.id)), ("name", value(run.name)),
        ("status", Text(printable(status or "-"), style=STATE_STYLES.get(run.state or "", ""))),
        ("started", value(f"{moment(run.start_date, utc)} ({ago(run.age_seconds)})")),
        ("ended", value(moment(run.end_date, utc))),
        ("duration", value(seconds_text(run.duration_seconds))),
        ("records", value(run.records_processed)),
        ("source", value(run.source)), ("destination", value(run.destination)),
        ("command", value(run.command)), ("exit code", value(run.exit_code)),
        ("host", value(run.host)), ("pid", value(run.pid)), ("user", value(run.username)),
        ("heartbeat", value(moment(run.heartbeat_at, utc))),
        ("lease until", value(moment(run.lease_until, utc))),
    ):
        grid.add_row(label, shown)
    console.print(grid)
    for label, text in (("message", run.message), ("output (tail)", run.output)):
        if text:
            console.print(Text(f"\n{label}:", style="bold"))
            console.print(Text(printable(text.rstrip("\n"), multiline=True)), soft_wrap=True)


def outcome_strip(console: "Console", states: list[str | None]) -> "Text":
    from rich.text import Text

    marks = UNICODE_MARKS if unicode_ok(console) else ASCII_MARKS
    strip = Text(no_wrap=True)
    for state in states:
        strip.append(marks.get(state or "", "?"), style=STATE_STYLES.get(state or "", ""))
    return strip


def unfinished_text(summary: JobSummary) -> str:
    counts = ((summary.live, LIVE), (summary.dead, DEAD), (summary.running, RUNNING))
    return ", ".join(f"{count} {state}" for count, state in counts if count)


def print_status(summaries: list[JobSummary]) -> None:
    console = make_console()
    columns = [
        Column("job", lambda s: cell(s.name, wrap=True), wraps=True),
        Column("last run", lambda s: state_cell(console, s.last_state,
                                                f" {ago(s.last_age_seconds)}")),
        Column("succeeded", lambda s: cell(ago(s.last_success_age_seconds),
                                           "" if s.last_success_end else STATE_STYLES[ERROR])),
        Column("ok", lambda s: "" if s.success_rate is None else f"{s.success_rate:.0%}",
               right=True, drop_rank=3),
        Column("median", lambda s: seconds_text(s.median_success_seconds), right=True,
               drop_rank=2),
        Column("took", lambda s: seconds_text(s.last_ended_seconds), right=True, drop_rank=1),
        Column(f"last {RECENT_RUNS}", lambda s: outcome_strip(console, s.recent_states[::-1]),
               drop_rank=5),
        Column("problems", lambda s: cell("; ".join(problem.text for problem in s.problems),
                                          SEVERITY_STYLES[s.severity], wrap=True), wraps=True),
    ]
    if any(s.live or s.dead or s.running for s in summaries):
        columns.insert(3, Column("now", lambda s: cell(unfinished_text(s),
                                                       STATE_STYLES[DEAD] if s.dead else ""),
                                 drop_rank=4))
    console.print(fitted_table(console, columns, [summaries]))


# -- monitoring -----------------------------------------------------------------

def check_line(verdicts: list[Verdict]) -> str:
    """The plugin's status line: the worst state, then every job in that state or a
    problem one (every job when all are OK)."""
    worst = max(verdict.severity for verdict in verdicts)
    shown = [verdict for verdict in verdicts if worst == OK or verdict.severity != OK]
    shown.sort(key=lambda verdict: -verdict.severity)
    details = "; ".join(f"{printable(verdict.name)}: {verdict.text}" for verdict in shown)
    return f"{SEVERITY_NAMES[worst]} - {details}"


def unknown_line(message: str) -> str:
    return f"{SEVERITY_NAMES[UNKNOWN]} - {printable(message)}"


def label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(summaries: list[JobSummary], counts: list[EndedCount]) -> str:
    """Text exposition format 0.0.4, one family per metric, label `job`."""
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str,
               samples: Iterable[tuple[dict[str, str], float | None]]) -> None:
        """A sample whose value is None is left out."""
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, number in samples:
            if number is not None:
                rendered = ",".join(f'{key}="{label_value(text)}"' for key, text in labels.items())
                lines.append(f"{name}{{{rendered}}} {number!r}")

    def per_job(name: str, kind: str, help_text: str,
                value: Callable[[JobSummary], float | None]) -> None:
        family(name, kind, help_text, (({"job": s.name}, value(s)) for s in summaries))

    def timestamp(moment: datetime | None) -> float | None:
        return None if moment is None else moment.timestamp()

    per_job("jobs_last_success_timestamp_seconds", "gauge",
            "When the last successful run ended (absent: never succeeded).",
            lambda s: timestamp(s.last_success_end))
    per_job("jobs_last_success_records", "gauge",
            "Records processed by the last successful run.",
            lambda s: s.last_success_records)
    per_job("jobs_last_run_timestamp_seconds", "gauge", "When the newest run started.",
            lambda s: timestamp(s.last_start))
    family("jobs_last_run_status", "gauge",
           "State of the newest run: 1 for its state, 0 for the others.",
           (({"job": s.name, "status": state}, 1 if s.last_state == state else 0)
            for s in summaries for state in STATES))
    per_job("jobs_last_duration_seconds", "gauge", "How long the newest ended run took.",
            lambda s: s.last_ended_seconds)
    per_job("jobs_running", "gauge",
            "Runs in progress that are live or unsupervised (started without a wrapper).",
            lambda s: s.live + s.running)
    per_job("jobs_dead_runs", "gauge",
            "Runs in progress whose wrapper stopped heartbeating.", lambda s: s.dead)
    ended = {(count.name, count.status): count.count for count in counts}
    family("jobs_runs_total", "counter", "Runs ended, by status.",
           (({"job": s.name, "status": status}, ended.get((s.name, status), 0))
            for s in summaries for status in ENDED))
    return "\n".join(lines) + "\n"


# -- watch ----------------------------------------------------------------------

def watch(snapshots: Iterable[Snapshot], utc: bool) -> None:
    """Redraw the runs table in place for every snapshot, until the caller is interrupted."""
    from rich.live import Live

    console = make_console()
    with Live(console=console, auto_refresh=False, vertical_overflow="crop") as live:
        for snapshot in snapshots:
            title = (f"{len(snapshot.unfinished)} unfinished, updated "
                     f"{moment(snapshot.taken_at, utc, short=True)}; Ctrl-C quits")
            live.update(runs_table(console, snapshot.unfinished, snapshot.ended, utc=utc,
                                   title=title), refresh=True)
