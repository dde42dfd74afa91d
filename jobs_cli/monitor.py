"""Queries behind the views: list, show, status, check, metrics and watch.

Like `runs`, every function takes an open connection and the schema name and
returns dataclasses; rendering lives in `render`.

Liveness
    A run's `state` is its status once it has ended. An in_progress run is
    `live` while its lease (moved forward by the `jobs-cli run` wrapper's
    heartbeats) is in the future, `dead` once the lease has run out, and
    `running` when it has no lease at all: started by `jobs-cli start`, which
    has no wrapper, so nobody can tell whether it is still alive. States and
    ages are computed by the server's clock, never the client's.

Scale
    Per-name questions ("the newest run of every job") are answered without
    reading the whole table: the job names are enumerated with a recursive
    CTE that jumps from one name to the next in the (name, ...) indexes (a
    loose index scan, one index descent per name), and each name then reads
    only its newest rows through a LATERAL subquery with a LIMIT. DISTINCT ON
    over the table would read every row. bench/run.py measures both.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

from . import runs
from .config import DEFAULT_LIMIT
from .states import DEAD, ENDED, ERROR, IN_PROGRESS, LIVE, RUNNING, STATUS_FILTERS, SUCCESS
from .durations import format_duration, parse_duration
from .errors import InvalidInput, NotFound
from .text import jsonable

if TYPE_CHECKING:
    import psycopg

Row = TypeVar("Row")

# How many of a job's newest runs the success rate, median and outcome strip cover:
# the ones jobs_summary keeps (schema.sql).
RECENT_RUNS = 20
# A job is overdue when its last start is this many usual intervals ago.
OVERDUE_INTERVALS = 2
# Fewer runs than this (a job tried by hand a few times) show no habit to judge by.
MIN_RUNS_FOR_INTERVAL = 5

# Monitoring-plugin states, also the exit codes of `check`.
OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
SEVERITY_NAMES = ("OK", "WARNING", "CRITICAL", "UNKNOWN")

# The channel the schema's trigger notifies; the payload is the table's schema.
NOTIFY_CHANNEL = "jobs_cli"

# -- SQL ----------------------------------------------------------------------
# Templates go through `runs.statement` ({table}, {columns}, and the liveness
# rule as {live}, {dead} and {running}); the fragments spliced into them below
# are constants, never input.

# An ended run's state is its status (NULL in adopted rows that have none).
# A dead run's duration stops where its lease ran out rather than growing forever.
RUN_VIEW_COLUMNS = """
    CASE WHEN {live} THEN 'live' WHEN {dead} THEN 'dead' WHEN {running} THEN 'running'
         ELSE status END AS state,
    extract(epoch FROM coalesce(end_date, greatest(start_date, least(now(), lease_until)))
                       - start_date)::float8 AS duration_seconds,
    extract(epoch FROM now() - start_date)::float8 AS age_seconds"""


GIVEN_NAMES = """
names(name, position) AS (
    SELECT * FROM unnest(%(names)s::text[]) WITH ORDINALITY
)"""

# What `list --status` and `watch` filter by; ENDED_RUNS is for `watch` only.
ENDED_RUNS = "ended"
STATE_CONDITIONS = {
    SUCCESS: "status = 'success'",
    ERROR: "status = 'error'",
    IN_PROGRESS: "status = 'in_progress'",
    LIVE: "{live}",
    DEAD: "{dead}",
    RUNNING: "{running}",
    ENDED_RUNS: "status IS DISTINCT FROM 'in_progress'",
}
NAME_CONDITION = "name = %(name)s"
SINCE_MOMENT_CONDITION = "start_date >= %(since)s"
SINCE_AGO_CONDITION = "start_date >= now() - %(since)s"

# {where} is replaced by `list_query` with the filters' conditions.
NEWEST_RUNS = """
SELECT {columns},""" + RUN_VIEW_COLUMNS + """
FROM {table}
WHERE {where}
ORDER BY start_date DESC, id DESC
LIMIT %(limit)s
"""

# The newest runs of each matching name, merged. LIKE cannot use a btree index
# under most collations, so it filters the enumerated names, not the rows. The
# merge needs only (start_date, id), which the indexes hold: only the runs
# that make the cut are read from the table.
NEWEST_RUNS_PER_NAME = "WITH RECURSIVE " + runs.ALL_NAMES + """,
newest AS (
    SELECT newest.id
    FROM names
    CROSS JOIN LATERAL (
        SELECT id, start_date
        FROM {table}
        WHERE name = names.name AND {where}
        ORDER BY start_date DESC, id DESC
        LIMIT %(limit)s
    ) newest
    WHERE names.name IS NOT NULL AND names.name LIKE %(pattern)s
    ORDER BY newest.start_date DESC, newest.id DESC
    LIMIT %(limit)s
)
SELECT {columns},""" + RUN_VIEW_COLUMNS + """
FROM {table}
WHERE id IN (SELECT id FROM newest)
ORDER BY start_date DESC, id DESC
"""

SELECT_RUN_VIEW = "SELECT {columns}," + RUN_VIEW_COLUMNS + " FROM {table} WHERE id = %(id)s"

# One row per name, from the summary the triggers keep (see schema.sql): its
# newest runs, its last success and its run counts are read there, so the cost
# grows with the names, not the history. The states and durations of ended runs
# are the summary's; only a name whose newest runs include an unfinished one (its
# state and duration move with now() and with the lease heartbeats renew) has
# them worked out here, with the lease read by id. Unfinished runs are counted
# from the partial index. What is derived from the arrays (rates, medians,
# intervals) is left to JobSummary.
# A summary's newest runs as the views show them: state and duration by now().
_NEWEST_VIEWED = """
    SELECT position,""" + RUN_VIEW_COLUMNS + """
    FROM (
        SELECT run.position, run.status, run.start_date, run.end_date,
               CASE WHEN run.status = 'in_progress' OR run.end_date IS NULL
                    THEN (SELECT lease_until FROM {table} WHERE id = run.id)
               END AS lease_until
        FROM unnest(summary.recent_ids, summary.recent_statuses, summary.recent_starts,
                    summary.recent_ends)
             WITH ORDINALITY AS run(id, status, start_date, end_date, position)
        OFFSET 0  -- kept apart, so each lease is read once, not once per use
    ) run"""
JOB_SUMMARIES = """
SELECT names.name,
       now() AS checked_at,
       summary.recent_ids[1] AS last_run_id,
       coalesce(CASE WHEN summary.recent_unsettled THEN viewed.states
                     ELSE summary.recent_statuses END, '{{}}') AS recent_states,
       coalesce(summary.recent_starts, '{{}}') AS recent_starts,
       coalesce(summary.recent_ends, '{{}}') AS recent_ends,
       coalesce(CASE WHEN summary.recent_unsettled THEN viewed.durations
                     ELSE summary.recent_durations END, '{{}}') AS recent_durations,
       summary.last_success_start,
       summary.last_success_end,
       summary.last_success_records,
       coalesce(unfinished.live, 0) AS live,
       coalesce(unfinished.dead, 0) AS dead,
       coalesce(unfinished.running, 0) AS running
FROM {names}
LEFT JOIN LATERAL (
    SELECT array_agg(state ORDER BY position) AS states,
           array_agg(duration_seconds ORDER BY position) AS durations
    FROM (""" + _NEWEST_VIEWED + """) newest
    WHERE summary.recent_unsettled
) viewed ON true
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE {live}) AS live,
           count(*) FILTER (WHERE {dead}) AS dead,
           count(*) FILTER (WHERE {running}) AS running
    FROM {table}
    WHERE name = names.name AND status = 'in_progress'
) unfinished ON true
"""
ALL_JOB_SUMMARIES = (JOB_SUMMARIES.replace("{names}", "{summary} summary, LATERAL "
                                                       "(SELECT summary.name) names")
                     + "ORDER BY names.name")
GIVEN_JOB_SUMMARIES = ("WITH " + GIVEN_NAMES + JOB_SUMMARIES.replace(
    "{names}", "names LEFT JOIN {summary} summary ON summary.name = names.name")
                       + "ORDER BY names.position")

# Ended runs by name and status, for the metrics' counters: the summary's counts.
# A DBA who deletes history lowers them (a counter reset, to Prometheus).
ENDED_COUNTS = """
SELECT name, status, count FROM (
    SELECT name, 'error' AS status, errors AS count FROM {summary} WHERE errors > 0
    UNION ALL
    SELECT name, 'success', successes FROM {summary} WHERE successes > 0
) counts
ORDER BY name, status
"""


# -- results ------------------------------------------------------------------

@dataclass(frozen=True)
class RunView(runs.Run):
    """A run with what the server says about it now."""

    state: str | None = None
    # Ended runs: how long they took; in_progress ones: how long so far.
    duration_seconds: float | None = None
    age_seconds: float | None = None


RUN_VIEW_FIELDS = tuple(f.name for f in fields(RunView))


@dataclass(frozen=True)
class Problem:
    severity: int
    text: str


@dataclass(frozen=True)
class JobSummary:
    """One job name: its newest runs, its last success and what runs now.

    The recent_* lists describe the newest RECENT_RUNS runs, newest first; ages
    are measured from checked_at, the server's now().
    """

    name: str
    checked_at: datetime
    last_run_id: int | None = None
    recent_states: list[str | None] = field(default_factory=list)
    recent_starts: list[datetime] = field(default_factory=list)
    recent_ends: list[datetime | None] = field(default_factory=list)
    # How long each took (so far, for unfinished ones).
    recent_durations: list[float | None] = field(default_factory=list)
    last_success_start: datetime | None = None
    last_success_end: datetime | None = None
    last_success_records: int | None = None
    live: int = 0
    dead: int = 0
    running: int = 0

    def age(self, moment: datetime | None) -> float | None:
        return None if moment is None else (self.checked_at - moment).total_seconds()

    @property
    def last_state(self) -> str | None:
        return self.recent_states[0] if self.recent_states else None

    @property
    def last_start(self) -> datetime | None:
        return self.recent_starts[0] if self.recent_starts else None

    @property
    def last_age_seconds(self) -> float | None:
        return self.age(self.last_start)

    @property
    def ended_positions(self) -> list[int]:
        """Where the ended runs are in the recent lists."""
        return [i for i, state in enumerate(self.recent_states) if state in ENDED]

    def of_last_ended(self, values: list) -> Any:
        """The newest ended run's (by start, among the recent ones) entry in `values`."""
        positions = self.ended_positions
        return values[positions[0]] if positions else None

    @property
    def last_ended_status(self) -> str | None:
        return self.of_last_ended(self.recent_states)

    @property
    def last_ended_words(self) -> str:
        """"last run" always means the newest run (status's column says how it is now);
        the newest ended one is only the last run when nothing started after it."""
        return "last run" if self.last_state in ENDED else "last finished run"

    @property
    def last_ended_age_seconds(self) -> float | None:
        return self.age(self.of_last_ended(self.recent_ends))

    @property
    def last_ended_seconds(self) -> float | None:
        return self.of_last_ended(self.recent_durations)

    @property
    def last_success_age_seconds(self) -> float | None:
        """Since the last success *ended*: when the job last succeeded."""
        return self.age(self.last_success_end)

    @property
    def success_rate(self) -> float | None:
        """Share of the recent ended runs that succeeded."""
        ended = [self.recent_states[i] for i in self.ended_positions]
        return ended.count(SUCCESS) / len(ended) if ended else None

    @property
    def median_success_seconds(self) -> float | None:
        durations = [duration for state, duration in zip(self.recent_states, self.recent_durations)
                     if state == SUCCESS and duration is not None]
        return statistics.median(durations) if durations else None

    @property
    def usual_interval_seconds(self) -> float | None:
        """Median time between the recent starts; None below MIN_RUNS_FOR_INTERVAL runs."""
        if len(self.recent_starts) < MIN_RUNS_FOR_INTERVAL:
            return None
        return statistics.median((newer - older).total_seconds() for newer, older
                                 in zip(self.recent_starts, self.recent_starts[1:]))

    @property
    def overdue(self) -> bool:
        """Not started for much longer than it usually is, and not running now."""
        interval = self.usual_interval_seconds
        return (interval is not None and self.live + self.running == 0
                and self.last_age_seconds > OVERDUE_INTERVALS * interval)

    @property
    def problems(self) -> list[Problem]:
        """What a person should look at, worst first."""
        found = []
        if self.last_ended_status == ERROR:
            found.append(Problem(CRITICAL, f"{self.last_ended_words} failed "
                                           f"{ago(self.last_ended_age_seconds)}"))
        if self.dead:
            found.append(Problem(CRITICAL, f"{self.dead} dead run{'s' if self.dead > 1 else ''}"))
        if self.last_success_end is None and self.last_run_id is not None:
            found.append(Problem(WARNING, "never succeeded"))
        if self.overdue:
            found.append(Problem(WARNING, f"last start {ago(self.last_age_seconds)}, usually "
                                          f"every {format_duration(self.usual_interval_seconds)}"))
        return sorted(found, key=lambda problem: -problem.severity)

    @property
    def severity(self) -> int:
        return max((problem.severity for problem in self.problems), default=OK)

    def as_dict(self) -> dict[str, Any]:
        data = {key: jsonable(value) for key, value in asdict(self).items()}
        for derived in SUMMARY_DERIVED:
            data[derived] = jsonable(getattr(self, derived))
        data["problems"] = [problem.text for problem in self.problems]
        return data


SUMMARY_DERIVED = ("last_state", "last_start", "last_age_seconds", "last_ended_status",
                   "last_ended_age_seconds", "last_ended_seconds", "last_success_age_seconds",
                   "success_rate", "median_success_seconds", "usual_interval_seconds")


@dataclass(frozen=True)
class Verdict:
    """The `check` outcome for one job."""

    name: str
    severity: int
    text: str


@dataclass(frozen=True)
class EndedCount:
    name: str
    status: str
    count: int


def ago(seconds: float | None) -> str:
    return "never" if seconds is None else f"{format_duration(max(seconds, 0))} ago"


# -- input --------------------------------------------------------------------

def parse_since(text: str) -> datetime | timedelta:
    """A duration ago ("2h") as a timedelta for the server to subtract from its now(),
    or a date: YYYYMMDD or ISO-8601 date/time (local time when it has no offset)."""
    stripped = text.strip()
    try:
        return timedelta(seconds=parse_duration(stripped))
    except ValueError:
        pass
    try:
        if re.fullmatch(r"\d{8}", stripped):
            moment = datetime.strptime(stripped, "%Y%m%d")
        else:
            # fromisoformat alone would take any 8 digits, or 20240501T0600, as a date too.
            if not re.fullmatch(r"\d{4}-\d{2}-\d{2}([T ].*)?", stripped):
                raise ValueError(stripped)
            moment = datetime.fromisoformat(re.sub(r"[zZ]$", "+00:00", stripped))
    except ValueError:
        raise InvalidInput(f"--since: {text!r} is neither a duration (2h, 1d) nor a date "
                           "(20240501, 2024-05-01, 2024-05-01T06:00Z)") from None
    return moment if moment.tzinfo else moment.astimezone()


def like_pattern(glob: str) -> str:
    """Shell wildcards (* and ?) as a LIKE pattern; every other character matches itself."""
    wildcards = {"*": "%", "?": "_"}
    return "".join(wildcards.get(ch) or (f"\\{ch}" if ch in "%_\\" else ch) for ch in glob)


def has_wildcards(glob: str) -> bool:
    return "*" in glob or "?" in glob


# -- queries ------------------------------------------------------------------

def fetch_all(conn: "psycopg.Connection", row_class: type[Row], template: str, schema: str,
              params: dict[str, Any] | None = None) -> list[Row]:
    from psycopg.rows import class_row

    with conn.cursor(row_factory=class_row(row_class)) as cur:
        cur.execute(runs.statement(template, schema), params)
        return cur.fetchall()


def list_query(*, name: str | None = None, status: str | None = None,
               since: datetime | timedelta | None = None,
               limit: int = DEFAULT_LIMIT) -> tuple[str, dict[str, Any]]:
    """The template and parameters of `list_runs` (the benchmark explains them)."""
    if status is not None and status not in STATE_CONDITIONS:
        raise InvalidInput(f"status must be one of {', '.join(STATUS_FILTERS)}, not {status!r}")
    if limit < 1:
        raise InvalidInput(f"limit must be at least 1, not {limit}")
    params: dict[str, Any] = {"limit": limit, "since": since}
    conditions = []
    if status is not None:
        conditions.append(STATE_CONDITIONS[status])
    if isinstance(since, timedelta):
        conditions.append(SINCE_AGO_CONDITION)
    elif since is not None:
        conditions.append(SINCE_MOMENT_CONDITION)
    # One name reads its own index range. A pattern, or a status across all
    # names, reads each name's newest rows: without a name the status filter
    # could scan the whole table for a status that is rare.
    if (name is not None and has_wildcards(name)) or (name is None and status is not None):
        params["pattern"] = like_pattern(name) if name is not None else "%"
        template = NEWEST_RUNS_PER_NAME
    else:
        if name is not None:
            params["name"] = name
            conditions.append(NAME_CONDITION)
        template = NEWEST_RUNS
    return template.replace("{where}", " AND ".join(conditions) or "true"), params


def list_runs(conn: "psycopg.Connection", schema: str, **filters: Any) -> list[RunView]:
    """The newest runs, newest first, filtered by name (shell wildcards), status or start;
    `filters` are those of `list_query`."""
    template, params = list_query(**filters)
    return fetch_all(conn, RunView, template, schema, params)


def get_run_view(conn: "psycopg.Connection", schema: str, run_id: str | int) -> RunView:
    params = {"id": runs.parse_run_id(run_id)}
    found = fetch_all(conn, RunView, SELECT_RUN_VIEW, schema, params)
    if not found:
        raise NotFound(f"no run with id {params['id']}")
    return found[0]


def summaries_query(names: list[str] | None = None) -> tuple[str, dict[str, Any]]:
    """The template and parameters of `job_summaries`."""
    if names is None:
        return ALL_JOB_SUMMARIES, {}
    return GIVEN_JOB_SUMMARIES, {"names": [runs.validate_name(name) for name in names]}


def job_summaries(conn: "psycopg.Connection", schema: str,
                  names: list[str] | None = None) -> list[JobSummary]:
    """One summary per job name (all of them, or the given ones in the given order)."""
    template, params = summaries_query(names)
    return fetch_all(conn, JobSummary, template, schema, params)


def problems_first(summaries: list[JobSummary]) -> list[JobSummary]:
    return sorted(summaries, key=lambda summary: (-summary.severity, summary.name))


def ended_counts(conn: "psycopg.Connection", schema: str) -> list[EndedCount]:
    return fetch_all(conn, EndedCount, ENDED_COUNTS, schema)


def judge(summary: JobSummary, max_age: float, warn_age: float | None = None) -> Verdict:
    """The monitoring verdict: CRITICAL when the job never succeeded, its newest
    ended run failed, its newest run died, or its last success is older than
    max_age; WARNING when older than warn_age."""
    name = summary.name
    age = summary.last_success_age_seconds
    if summary.last_run_id is None:
        return Verdict(name, CRITICAL, "no runs recorded (is the name right?)")
    if age is None:
        return Verdict(name, CRITICAL, "never succeeded")
    if summary.last_state == DEAD:
        return Verdict(name, CRITICAL, f"run {summary.last_run_id} is dead "
                                       f"(started {ago(summary.last_age_seconds)}), "
                                       f"last success {ago(age)}")
    if summary.last_ended_status == ERROR:
        return Verdict(name, CRITICAL, f"{summary.last_ended_words} failed "
                                       f"{ago(summary.last_ended_age_seconds)}, "
                                       f"last success {ago(age)}")
    if age > max_age:
        return Verdict(name, CRITICAL, f"last success {ago(age)} (max {format_duration(max_age)})")
    if warn_age is not None and age > warn_age:
        return Verdict(name, WARNING, f"last success {ago(age)} (warn {format_duration(warn_age)})")
    return Verdict(name, OK, f"last success {ago(age)}")


def check_jobs(conn: "psycopg.Connection", schema: str, names: list[str], max_age: float,
               warn_age: float | None = None) -> list[Verdict]:
    if warn_age is not None and warn_age >= max_age:
        raise InvalidInput(f"--warn-age ({format_duration(warn_age)}) must be less than "
                           f"--max-age ({format_duration(max_age)})")
    return [judge(summary, max_age, warn_age)
            for summary in job_summaries(conn, schema, list(dict.fromkeys(names)))]


# -- watch --------------------------------------------------------------------

@dataclass(frozen=True)
class Snapshot:
    """What `watch` shows: the newest unfinished runs, then the newest ended ones."""

    unfinished: list[RunView]
    ended: list[RunView]
    taken_at: datetime


def snapshot(conn: "psycopg.Connection", schema: str, limit: int) -> Snapshot:
    unfinished = list_runs(conn, schema, status=IN_PROGRESS, limit=limit)
    ended = list_runs(conn, schema, status=ENDED_RUNS, limit=limit)
    return Snapshot(unfinished, ended, datetime.now(timezone.utc))


def snapshots(connect: Callable[[], "psycopg.Connection"], schema: str, limit: int,
              interval: float) -> Iterator[Snapshot]:
    """A snapshot now, then another whenever the table changes, and at least every
    `interval` seconds (ages move, and a lease runs out without any write).

    Through a pooler only every `interval`: see `behind_a_pooler`. A connection
    lost on the way (the server restarted) is opened again with `connect`, which
    waits for the database as it sees fit and raises when it gives up.
    """
    import psycopg
    from psycopg import sql

    conn = None
    try:
        while True:
            try:
                if conn is None:
                    conn = connect()
                    if not behind_a_pooler(conn):
                        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
                yield snapshot(conn, schema, limit)
                for _ in conn.notifies(timeout=interval, stop_after=1):
                    pass
                # A burst of changes (a wrapper's start, its records, its end) is one redraw.
                for _ in conn.notifies(timeout=0):
                    pass
            except psycopg.OperationalError:
                if conn is None or not conn.broken:
                    raise
                conn.close()
                conn = None
    finally:
        if conn is not None:
            conn.close()


def behind_a_pooler(conn: "psycopg.Connection") -> bool:
    """Whether a pooler such as PgBouncer stands between us and the server.

    In transaction pooling a LISTEN stays on a server connection that goes back
    to the pool: we would never hear a notification, and every change would
    reach a connection no client owns (PgBouncer logs "got packet 'A' from
    server when not linked"), for as long as that connection lives. A pooler
    hands its clients a backend key of its own, so the pid it announced is not
    the server's.
    """
    return conn.execute("SELECT pg_backend_pid()").fetchone()[0] != conn.info.backend_pid


def as_dicts(items: list) -> list[dict[str, Any]]:
    return [item.as_dict() for item in items]
