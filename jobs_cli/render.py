"""Rendering for stdout: JSON, CSV and rich tables.

Data goes to stdout, chatter to stderr. rich is imported only by the
functions that draw tables, so scripted commands never pay for it.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .durations import format_duration
from .monitor import (CRITICAL, OK, RECENT_RUNS, SEVERITY_NAMES, UNKNOWN, WARNING, EndedCount,
                      JobSummary, RunView, Snapshot, Verdict, ago)
from .states import DEAD, ENDED, ERROR, LIVE, RUNNING, STATES, SUCCESS
from .text import first_line

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from .watermarks import HistoryEntry


def emit_json(value: Any) -> None:
    json.dump(value, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
    sys.stdout.flush()  # a closed pipe raises here, for JobsGroup, not at interpreter exit


def emit_csv(rows: Iterable[dict[str, Any]], columns: Iterable[str]) -> None:
    """RFC 4180: a header row, CRLF line ends, quoting where needed; None as empty."""
    writer = csv.DictWriter(sys.stdout, fieldnames=list(columns), lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    sys.stdout.flush()  # a closed pipe raises here, for JobsGroup, not at interpreter exit


# -- terminal -------------------------------------------------------------------

STATE_STYLES = {SUCCESS: "green", ERROR: "red", LIVE: "cyan", RUNNING: "yellow",
                DEAD: "bold magenta"}
SEVERITY_STYLES = {OK: "green", WARNING: "yellow", CRITICAL: "bold red"}
UNICODE_MARKS = {SUCCESS: "✓", ERROR: "✗", LIVE: "▶", RUNNING: "▷", DEAD: "☠"}
ASCII_MARKS = {SUCCESS: "+", ERROR: "x", LIVE: ">", RUNNING: ">", DEAD: "!"}


# The width when stdout is not a terminal and COLUMNS is not set: tables take their
# natural width up to this, so `grep` and `awk` see whole names (at most 255 characters).
PIPE_WIDTH = 500


def make_console() -> "Console":
    from rich.console import Console

    # rich keeps bold and the like under NO_COLOR; no ANSI styling at all is wanted.
    # Stored names and messages are data: neither markup nor emoji codes apply.
    plain = os.environ.get("NO_COLOR", "") != ""
    console = Console(highlight=False, markup=False, emoji=False,
                      color_system=None if plain else "auto")
    columns = os.environ.get("COLUMNS", "")
    if not (columns.isdigit() and int(columns) > 0):
        # rich's own default off a terminal is 80 columns; COLUMNS=0 gives it 0.
        if not console.is_terminal:
            console.width = PIPE_WIDTH
        elif console.width < 1:
            console.width = 80
    return console


def write_out(console: "Console", *renderables: Any, **options: Any) -> None:
    """Print to stdout a line at a time, then flush, as emit_json and emit_csv do.

    rich writes everything in one call. With PYTHONUNBUFFERED set, a reader that goes
    away during that call went unnoticed (the write just comes back short), so
    `list | head -1` exited 0 where `list --json | head -c 10` exited 1; buffered,
    rich turned the error into its own exit. A BrokenPipeError now reaches
    JobsGroup from here as it does from them.
    """
    with console.capture() as captured:
        for renderable in renderables:
            console.print(renderable, **options)
    for line in captured.get().splitlines(keepends=True):
        sys.stdout.write(without_trailing_spaces(line))
    sys.stdout.flush()


# rich pads every cell to its column's width, the last one included.
_TRAILING_PADDING = re.compile(r"(?:[ \t]|\x1b\[[0-9;]*m)*$")
_STYLE_CODE = re.compile(r"\x1b\[[0-9;]*m")


def without_trailing_spaces(line: str) -> str:
    """The line without the blanks at its end; style codes among them are kept."""
    body = line.rstrip("\n")
    end = _TRAILING_PADDING.search(body).start()
    return body[:end] + "".join(_STYLE_CODE.findall(body[end:])) + line[len(body):]


def unicode_ok(console: "Console") -> bool:
    return console.encoding.lower().startswith("utf")


ESCAPED = ("Cc", "Zl", "Zp")  # control characters, line and paragraph separators


def printable(text: str, multiline: bool = False) -> str:
    """Control characters as escapes (\\x1b), so stored text cannot drive the terminal."""
    kept = "\n\t" if multiline else ""
    return "".join(ch if ch in kept or unicodedata.category(ch) not in ESCAPED
                   else repr(ch)[1:-1] for ch in text)


def last_line(text: str | None) -> str:
    return next((line for line in reversed((text or "").splitlines()) if line.strip()), "")


def summary_line(run: RunView) -> str:
    """A run's message in one line; for a failed wrapped run whose message says only how
    it ended ("exit code 1"), with the cause: the last line of its output."""
    headline = first_line(run.message)
    cause = last_line(run.output)
    # The wrapper joins what else it knows (a reported message, a reaper's verdict) to
    # how the run ended with "; " (runs.RECORD_RESULT): then the message says enough.
    if (run.status == ERROR and cause and run.exit_code is not None and "; " not in headline
            and message_without_output(run) == headline):
        return f"{headline}: {cause.strip()}"
    return headline


def message_without_output(run: RunView) -> str:
    """The message less the output tail the wrapper appends to a failed run's message,
    which `show` prints on its own."""
    message = (run.message or "").rstrip("\n")
    tail = (run.output or "").rstrip("\n")
    if tail and message.endswith("\n" + tail):
        return message[:-len(tail) - 1]
    return message


def cell(text: str | None, style: str = "") -> "Text":
    """One line of data, cut with an ellipsis when its column is narrowed; a line
    break in it shows as \\n (pass a message through first_line first)."""
    from rich.text import Text

    return Text(printable(text or ""), style=style, no_wrap=True, overflow="ellipsis")


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
    # Columns with a shrink rank give up width, down to `least` each (FLEX_WIDTH by
    # default) and the widest first among those of the lowest rank, before those of the
    # next rank. The others keep their natural width while they can.
    shrink_rank: int | None = None
    least: int | None = None
    # Columns with a drop rank are left out, lowest rank first, while the table is too wide.
    drop_rank: int | None = None
    # A shorter rendering ("5s ago" for "19:21:12 (5s ago)"), used when the table does not
    # fit at its natural width: before anything is left out or cut.
    compact: Callable[[Any], "Text | str"] | None = None


FLEX_WIDTH = 8
# The name is what an operator scans for: it is cut last, and columns are left out
# before it is cut to less than this.
NAME_WIDTH = 30
NAME_SHRINK_RANK = 9


def column_widths(columns: list[Column], natural: list[int], room: int
                  ) -> tuple[list[int], list[int]]:
    """The columns kept, by index, and their widths: with one space between columns,
    at most `room` wide (room >= 1).

    Columns are left out by drop rank while even the shrinking ones at FLEX_WIDTH do
    not fit; then those shrink. On a very narrow screen every column then shrinks,
    widest first, down to one cell, and the last ones go when even that does not fit.
    """
    def floor(index: int) -> int:
        column = columns[index]
        if column.shrink_rank is None:
            return natural[index]
        return min(natural[index], column.least or FLEX_WIDTH)

    def excess(widths: dict[int, int]) -> int:
        return sum(widths.values()) + len(widths) - 1 - room

    kept = list(range(len(columns)))
    for index in sorted((index for index, column in enumerate(columns)
                         if column.drop_rank is not None),
                        key=lambda index: columns[index].drop_rank):
        if len(kept) == 1 or excess({i: floor(i) for i in kept}) <= 0:
            break
        kept.remove(index)
    while len(kept) > 1 and 2 * len(kept) - 1 > room:
        kept.pop()
    # A column wider than the room is cut anyway; this bounds the loops below.
    widths = {index: min(natural[index], room) for index in kept}

    def narrow(indices: list[int], least: Callable[[int], int]) -> None:
        while excess(widths) > 0:
            wider = [index for index in indices if widths[index] > least(index)]
            if not wider:
                return
            widths[max(wider, key=lambda index: widths[index])] -= 1

    ranks = sorted({columns[index].shrink_rank for index in kept} - {None})
    for rank in ranks:
        narrow([index for index in kept if columns[index].shrink_rank == rank], floor)
    narrow(kept, lambda index: 1)
    return kept, [widths[index] for index in kept]


def fitted_table(console: "Console", columns: list[Column], groups: Iterable[list[Any]],
                 title: str | None = None) -> "Table":
    """One row per item and one line per row, a line between non-empty groups, as many
    columns as fit the console's width, every cell cut with an ellipsis when too long.

    The widths are worked out here: rich would otherwise wrap cells, or narrow every
    column alike, the id and the state included.
    """
    from rich.cells import cell_len
    from rich.text import Text

    groups = [group for group in groups if group]

    def render(forms: list[Callable[[Any], "Text | str"]]) -> tuple[list, list[int]]:
        rows = [[[form(item) for form in forms] for item in group] for group in groups]
        natural = [max(cell_len(text.plain if isinstance(text, Text) else text)
                       for text in (column.header, *(row[index] for group in rows
                                                      for row in group)))
                   for index, column in enumerate(columns)]
        return rows, natural

    rows, natural = render([column.value for column in columns])
    if sum(natural) + len(columns) - 1 > console.width:
        rows, natural = render([column.compact or column.value for column in columns])
    kept, widths = column_widths(columns, natural, console.width)
    table = new_table(title)
    for index, width in zip(kept, widths):
        table.add_column(columns[index].header, justify="right" if columns[index].right else "left",
                         width=width, no_wrap=True, overflow="ellipsis")
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
                    if run.source or run.destination else "")

    # The id and the name are always shown; the name is cut only when nothing else can go.
    columns = [
        Column("id", lambda run: str(run.id), right=True),
        Column("name", lambda run: cell(run.name), shrink_rank=NAME_SHRINK_RANK, least=NAME_WIDTH),
        Column("status", lambda run: state_cell(console, run.state), drop_rank=6),
        Column("started", lambda run: cell(f"{moment(run.start_date, utc, short=True)} "
                                           f"({ago(run.age_seconds)})"), drop_rank=5,
               compact=lambda run: cell(ago(run.age_seconds))),
        Column("duration", lambda run: seconds_text(run.duration_seconds), right=True,
               drop_rank=3),
        Column("records", lambda run: "" if run.records_processed is None
               else str(run.records_processed), right=True, drop_rank=2),
        Column(f"source {arrow} destination", route, shrink_rank=1, drop_rank=1),
        Column("message", lambda run: cell(summary_line(run)), shrink_rank=1, drop_rank=4),
    ]
    return fitted_table(console, columns, groups, title)


def print_runs(runs: list[RunView], utc: bool, empty: str = "no runs recorded yet") -> None:
    console = make_console()
    write_table(console, runs_table(console, runs, utc=utc), empty)


def write_table(console: "Console", table: "Table", empty: str) -> None:
    """write_out, but a table without rows says `empty` on a terminal (on stderr, where
    chatter goes) and is its bare header line in a pipe, so a script still sees it."""
    if table.row_count:
        write_out(console, table)
    elif console.is_terminal:
        sys.stderr.write(f"jobs-cli: {empty}\n")
    else:
        with console.capture() as captured:
            console.print(table)
        sys.stdout.write(without_trailing_spaces(captured.get().splitlines()[0]) + "\n")
        sys.stdout.flush()


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
    if run.abandoned:
        status = f"{status} (abandoned: its wrapper stopped heartbeating)"
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
        # What `run` handed the command (the watermark, the cursor, the upstream
        # runs), and the cursor it left.
        ("watermark", value(moment(run.since_handed, utc))),
        ("cursor in", value(run.cursor_handed)),
        ("upstream", value(" ".join(map(str, run.upstream_handed or [])))),
        ("cursor out", value(run.cursor)),
    ):
        grid.add_row(label, shown)
    write_out(console, grid)
    texts = []
    for label, text in (("message", message_without_output(run)), ("output (tail)", run.output)):
        if text:
            texts += [Text(f"\n{label}:", style="bold"),
                      Text(printable(text.rstrip("\n"), multiline=True))]
    write_out(console, *texts, soft_wrap=True)


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
        Column("job", lambda s: cell(s.name), shrink_rank=NAME_SHRINK_RANK, least=NAME_WIDTH),
        Column("last run", lambda s: state_cell(console, s.last_state,
                                                f" {ago(s.last_age_seconds)}"), drop_rank=7),
        Column("succeeded", lambda s: cell(ago(s.last_success_age_seconds),
                                           "" if s.last_success_end else STATE_STYLES[ERROR]),
               drop_rank=6),
        Column("ok", lambda s: "" if s.success_rate is None else f"{s.success_rate:.0%}",
               right=True, drop_rank=3),
        Column("median", lambda s: seconds_text(s.median_success_seconds), right=True,
               drop_rank=2),
        Column("took", lambda s: seconds_text(s.last_ended_seconds), right=True, drop_rank=1),
        Column(f"last {RECENT_RUNS}", lambda s: outcome_strip(console, s.recent_states[::-1]),
               drop_rank=5),
        # What an operator looks for, beside the name: other columns go before it is cut.
        Column("problems", lambda s: cell("; ".join(problem.text for problem in s.problems),
                                          SEVERITY_STYLES[s.severity]),
               shrink_rank=1, least=NAME_WIDTH, drop_rank=8),
    ]
    if any(s.live or s.dead or s.running for s in summaries):
        columns.insert(3, Column("now", lambda s: cell(unfinished_text(s),
                                                       STATE_STYLES[DEAD] if s.dead else ""),
                                 drop_rank=4))
    write_table(console, fitted_table(console, columns, [summaries]), "no runs recorded yet")


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


def print_history(entries: list["HistoryEntry"], utc: bool, empty: str) -> None:
    """A job's successful runs and resets, newest first: the window each run loaded."""
    console = make_console()
    arrow = "→" if unicode_ok(console) else "->"

    def what(entry: "HistoryEntry") -> str:
        if entry.kind == "run":
            return f"run {entry.id}"
        return f"reset {entry.id} {arrow} " + (
            "start" if entry.to_run is None else f"run {entry.to_run}")

    def window(entry: "HistoryEntry") -> Text:
        since = moment(entry.since, utc) or ("start" if entry.kind == "reset" else "—")
        return cell(since if entry.kind == "reset"
                    else f"{since} {arrow} {moment(entry.start_date, utc)}")

    def cursors(entry: "HistoryEntry") -> Text:
        if entry.kind == "reset":
            return cell(entry.cursor or "")
        if entry.cursor_handed is None and entry.cursor is None:
            return cell("")
        return cell(f"{entry.cursor_handed or '—'} {arrow} {entry.cursor or '—'}")

    columns = [
        Column("", what),
        Column("when", lambda entry: moment(entry.at, utc), drop_rank=3),
        Column("loaded (from the watermark handed to the start)", window, shrink_rank=1),
        Column("cursor", cursors, shrink_rank=1, drop_rank=2),
        Column("records", lambda entry: "" if entry.records_processed is None
               else str(entry.records_processed), right=True, drop_rank=1),
        Column("by", lambda entry: cell(entry.made_by), drop_rank=1),
    ]
    write_table(console, fitted_table(console, columns, [entries]), empty)
