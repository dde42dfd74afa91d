"""The Click commands: parse, call the library, render. Nothing else.

Library modules never import click. psycopg and rich are imported inside the
commands that need them, so `jobs-cli --help` loads neither. Every error
becomes one line on stderr and an exit code in `JobsGroup.invoke`.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import replace
from typing import Iterator

import click

from . import config
from .durations import parse_positive_duration, parse_seconds
from .errors import (EXIT_ERROR, EXIT_INTERRUPTED, EXIT_NO_SUCCESS, EXIT_NOT_RUNNING, InvalidInput,
                     JobsError)
from .states import STATUS_FILTERS


class JobsGroup(click.Group):
    """The single place where library errors become messages and exit codes."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except JobsError as exc:
            click.echo(f"jobs-cli: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:
            # The reader went away (`jobs-cli list | head`); keep the interpreter's
            # final flush from complaining about it too.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(EXIT_ERROR)
        except Exception as exc:
            if os.environ.get(config.ENV_DEBUG):
                raise
            click.echo(f"jobs-cli: unexpected error: {type(exc).__name__}: {exc} "
                       f"(set {config.ENV_DEBUG}=1 for a traceback)", err=True)
            ctx.exit(EXIT_ERROR)


class Duration(click.ParamType):
    """90s, 15m, 2h, 1d, 1h30m: seconds as a float, more than zero."""

    name = "duration"

    def convert(self, value, param, ctx) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_positive_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = Duration()
# records_processed is an integer column (runs.MAX_RECORDS).
RECORDS = click.IntRange(0, 2**31 - 1)
LIMIT = click.IntRange(1, 2**31 - 1)

source_option = click.option("--source", envvar=config.ENV_SOURCE, default="",
                             help="Where the job reads from [env JOBS_SOURCE; default empty].")
destination_option = click.option(
    "--destination", envvar=config.ENV_DESTINATION, default="",
    help="Where the job writes to [env JOBS_DESTINATION; default empty].")


@click.group(cls=JobsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--database-url", envvar=config.ENV_DATABASE_URL, metavar="URL",
              help="libpq URI or key=value string [env JOBS_DATABASE_URL]. "
                   "Default: the embedded server under JOBS_HOME.")
@click.option("--schema", envvar=config.ENV_SCHEMA, default=config.DEFAULT_SCHEMA,
              show_default=True, metavar="NAME",
              help="Schema holding the jobs table [env JOBS_SCHEMA].")
@click.version_option(package_name="jobs-cli", prog_name="jobs-cli")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None, schema: str) -> None:
    """Record ETL job runs in PostgreSQL so shell-scripted ETL can load incrementally.

    \b
    Example:
      since=$(jobs-cli last-success orders_sync --default 0)
      id=$(jobs-cli start orders_sync --source erp --destination dwh)
      ./sync.sh --since "$since" && jobs-cli finish "$id" --records 42 || jobs-cli fail "$id"
    """
    from .db import Database

    if not schema.strip():
        raise click.BadParameter("must not be empty", param_hint="--schema")
    ctx.obj = Database(url=database_url or None, schema=schema)


@contextmanager
def connection(ctx: click.Context) -> Iterator:
    from .db import connect

    with connect(ctx.obj) as conn:
        yield conn


def emit_run(run, as_json: bool) -> None:
    from .render import emit_json

    if as_json:
        emit_json(run.as_dict())
    else:
        click.echo(run.id)


@cli.command()
@click.pass_context
def init(ctx: click.Context) -> None:
    """Create or upgrade the jobs table (idempotent).

    Adopts an existing original-style table in place: no row is changed;
    constraints that old rows break are added NOT VALID and reported here.

    \b
    Example:
      JOBS_DATABASE_URL=postgresql://etl@db/warehouse jobs-cli --schema api init
    """
    from .schema import apply_schema

    with connection(ctx) as conn:
        warnings = apply_schema(conn, ctx.obj.schema)
    for warning in warnings:
        click.echo(f"jobs-cli: warning: {warning}", err=True)
    click.echo(f"jobs-cli: the jobs table in schema {ctx.obj.schema!r} is ready", err=True)


@cli.command()
@click.argument("name")
@source_option
@destination_option
@click.option("--message", help="A note stored with the run.")
@click.option("--json", "as_json", is_flag=True, help="Print the run as a JSON object.")
@click.pass_context
def start(ctx: click.Context, name: str, source: str, destination: str,
          message: str | None, as_json: bool) -> None:
    """Record that job NAME started now; print the run's id.

    \b
    Example:
      id=$(jobs-cli start orders_sync --source erp --destination dwh)
    """
    from .runs import start_run

    with connection(ctx) as conn:
        run = start_run(conn, ctx.obj.schema, name, source=source,
                        destination=destination, message=message)
    emit_run(run, as_json)


def end_command(status: str, example: str):
    records = click.option("--records", type=RECORDS, metavar="N",
                           help="Number of records processed.")
    message = click.option("--message", help="A note stored with the run.")
    as_json = click.option("--json", "as_json", is_flag=True,
                           help="Print the run as a JSON object.")

    @click.argument("run_id", metavar="ID")
    @records
    @message
    @as_json
    @click.pass_context
    def command(ctx: click.Context, run_id: str, records: int | None,
                message: str | None, as_json: bool) -> None:
        from .runs import end_run

        with connection(ctx) as conn:
            run = end_run(conn, ctx.obj.schema, run_id, status, records=records, message=message)
        emit_run(run, as_json)

    command.__doc__ = (
        f"Record that run ID ended with {status}; print its id.\n\n"
        "Refused (exit 1) for an unknown id or a run that has already ended.\n\n"
        f"\b\nExample:\n  {example}"
    )
    return command


cli.command("finish")(end_command("success", 'jobs-cli finish "$id" --records 42'))
cli.command("fail")(end_command("error", 'jobs-cli fail "$id" --message "source unreachable"'))


@cli.command("last-success")
@click.argument("name")
@click.option("--default", "default", type=int, metavar="N",
              help="When the job never succeeded, answer N (unix seconds) and exit 0 "
                   "(else exit 3, no output).")
@click.option("--iso", is_flag=True, help="Print ISO-8601 UTC instead of unix seconds.")
@click.pass_context
def last_success(ctx: click.Context, name: str, default: str | None, iso: bool) -> None:
    """Print when the last successful run of NAME *started*, as unix seconds.

    "Last" is by end time, as in the original; the start is printed so rows
    changed while that run was extracting are picked up by the next run.

    \b
    Example:
      since=$(jobs-cli last-success orders_sync --default 0)
      psql -c "select * from orders where modified_at >= to_timestamp($since)"
    """
    from .runs import iso_seconds, last_start, validate_name

    validate_name(name)
    with connection(ctx) as conn:
        started = last_start(conn, ctx.obj.schema, name)
    if started is None:
        if default is None:
            if sys.stderr.isatty():  # a script reads the exit code; a person needs words
                tell(f"{name!r} has never succeeded")
            ctx.exit(EXIT_NO_SUCCESS)
        started = default
    click.echo(iso_seconds(started) if iso else started)


# -- views --------------------------------------------------------------------

utc_option = click.option("--utc", is_flag=True, help="Show times in UTC, not local time.")
view_json_option = click.option("--json", "as_json", is_flag=True,
                                help="Print JSON with every field (times ISO-8601 UTC).")


@cli.command("list")
@click.option("--name", "pattern", metavar="PATTERN",
              help="Only this job; * and ? match any text and any one character.")
@click.option("--status", type=click.Choice(STATUS_FILTERS),
              help="Only runs in this state (in_progress: live, dead and running).")
@click.option("--since", metavar="WHEN",
              help="Only runs started since WHEN: a duration ago (2h, 1d) or an ISO date/time.")
@click.option("--limit", type=LIMIT, default=config.DEFAULT_LIMIT,
              show_default=True, metavar="N", help="At most N runs.")
@click.option("--json", "output", flag_value="json", help="Print a JSON array, every field.")
@click.option("--csv", "output", flag_value="csv", help="Print CSV with a header row.")
@utc_option
@click.pass_context
def list_command(ctx: click.Context, pattern: str | None, status: str | None,
                 since: str | None, limit: int, output: str | None, utc: bool) -> None:
    """List runs, newest first.

    An in_progress run shows as live (its wrapper heartbeats), dead (the
    heartbeats stopped) or running (started by `jobs-cli start`, unsupervised).

    \b
    Example:
      jobs-cli list --name 'orders_*' --status error --since 1d
      jobs-cli list --since 2024-05-01 --limit 1000 --csv > runs.csv
    """
    from .monitor import RUN_VIEW_FIELDS, as_dicts, list_runs, parse_since
    from .render import emit_csv, emit_json, print_runs
    from .runs import validate_name

    if pattern is not None:
        validate_name(pattern)
    with connection(ctx) as conn:
        found = list_runs(conn, ctx.obj.schema, name=pattern, status=status,
                          since=parse_since(since) if since else None, limit=limit)
    if output == "json":
        emit_json(as_dicts(found))
    elif output == "csv":
        emit_csv(as_dicts(found), RUN_VIEW_FIELDS)
    else:
        filtered = pattern is not None or status is not None or since is not None
        print_runs(found, utc, empty="no runs match" if filtered else "no runs recorded yet")


@cli.command()
@click.argument("run_id", metavar="ID")
@view_json_option
@utc_option
@click.pass_context
def show(ctx: click.Context, run_id: str, as_json: bool, utc: bool) -> None:
    """Show every field of run ID, with its output tail.

    \b
    Example:
      jobs-cli show 42
    """
    from .monitor import get_run_view
    from .render import emit_json, print_run

    with connection(ctx) as conn:
        run = get_run_view(conn, ctx.obj.schema, run_id)
    if as_json:
        emit_json(run.as_dict())
    else:
        print_run(run, utc)


@cli.command("status")
@view_json_option
@click.pass_context
def status_command(ctx: click.Context, as_json: bool) -> None:
    """Show one row per job, problems first.

    Each row: last run, last success, what runs now and recent trends.

    Problems: a failed last run, dead runs, no success yet, or a job that
    has not started for twice its usual interval.

    \b
    Example:
      jobs-cli status
    """
    from .monitor import as_dicts, job_summaries, problems_first
    from .render import emit_json, print_status

    with connection(ctx) as conn:
        summaries = problems_first(job_summaries(conn, ctx.obj.schema))
    if as_json:
        emit_json(as_dicts(summaries))
    else:
        print_status(summaries)


class MonitoringPluginCommand(click.Command):
    """Speaks the monitoring-plugin protocol even when it fails: a usage error,
    a database that cannot be reached or anything else is one UNKNOWN line on
    stdout and exit 3, never click's or JobsGroup's own messages and codes."""

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            self.unknown(exc.format_message())

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.exceptions.Exit:
            raise
        except Exception as exc:
            self.unknown(str(exc) or type(exc).__name__)

    @staticmethod
    def unknown(message: str):
        from .monitor import UNKNOWN
        from .render import unknown_line

        click.echo(unknown_line(message.strip().splitlines()[0]))
        raise click.exceptions.Exit(UNKNOWN)


@cli.command(cls=MonitoringPluginCommand)
@click.argument("names", metavar="NAME...", nargs=-1, required=True)
@click.option("--max-age", "critical_after", required=True, type=DURATION, metavar="DURATION",
              help="CRITICAL when the last success ended longer ago than this.")
@click.option("--warn-age", "warning_after", type=DURATION, metavar="DURATION",
              help="WARNING when the last success ended longer ago than this.")
@click.pass_context
def check(ctx: click.Context, names: tuple[str, ...], critical_after: float,
          warning_after: float | None) -> None:
    """Check jobs for a monitoring system (Nagios, Icinga...).

    Is each job NAME healthy?

    Exit 0 OK, 1 WARNING, 2 CRITICAL (never succeeded, the last run failed or
    died, or the last success is older than --max-age), 3 UNKNOWN (bad usage,
    database unreachable). One status line on stdout; with several names the
    worst state wins and every problem is named.

    \b
    Example:
      jobs-cli check orders_sync invoices --max-age 2h --warn-age 90m
    """
    from .monitor import check_jobs
    from .render import check_line

    with connection(ctx) as conn:
        verdicts = check_jobs(conn, ctx.obj.schema, list(names), critical_after, warning_after)
    click.echo(check_line(verdicts))
    ctx.exit(max(verdict.severity for verdict in verdicts))


@cli.command()
@click.pass_context
def metrics(ctx: click.Context) -> None:
    """Print per-job metrics in the Prometheus text format.

    For node_exporter's textfile collector; write to a temporary file and
    rename it, so the collector never reads half a file.

    \b
    Example:
      cd /var/lib/node_exporter/textfile && jobs-cli metrics > jobs.tmp && mv jobs.tmp jobs.prom
    """
    from .monitor import ended_counts, job_summaries
    from .render import prometheus_text

    with connection(ctx) as conn:
        text = prometheus_text(job_summaries(conn, ctx.obj.schema),
                               ended_counts(conn, ctx.obj.schema))
    click.echo(text, nl=False)


@cli.command()
@click.option("--interval", type=DURATION, default="2s", show_default=True, metavar="DURATION",
              help="Redraw at least this often (changes redraw at once).")
@click.option("--limit", type=LIMIT, default=config.DEFAULT_LIMIT,
              show_default=True, metavar="N", help="At most N unfinished and N ended runs.")
@utc_option
@click.pass_context
def watch(ctx: click.Context, interval: float, limit: int, utc: bool) -> None:
    """Show unfinished and recent runs, redrawn as they change.

    Ctrl-C quits.

    \b
    Example:
      jobs-cli watch --interval 5s
    """
    from .monitor import snapshots
    from .render import watch as draw

    if not sys.stdout.isatty():
        raise InvalidInput("watch redraws a terminal; for output to a file or a pipe use "
                           "`jobs-cli list` (or `status`)")
    try:
        with connection(ctx) as conn:
            draw(snapshots(conn, ctx.obj.schema, limit, interval), utc)
    except KeyboardInterrupt:
        pass  # how a watch ends


# -- wrapping a command ---------------------------------------------------------

def tell(message: str) -> None:
    click.echo(f"jobs-cli: {message}", err=True)


def seconds_from_env(variable: str, default: float, *, positive: bool = False) -> float:
    """A JOBS_*_SECONDS variable: plain seconds, as its name says."""
    text = os.environ.get(variable)
    if not text:
        return default
    try:
        seconds = parse_seconds(text)
    except ValueError as exc:
        raise InvalidInput(f"{variable}: {exc}") from None
    if positive and seconds <= 0:
        raise InvalidInput(f"{variable}: must be more than 0, not {text!r}")
    return seconds


def recorder_for(ctx: click.Context):
    from .recorder import Recorder

    retry_seconds = seconds_from_env(config.ENV_RETRY_SECONDS, config.DEFAULT_RETRY_SECONDS)
    return Recorder(ctx.obj, retry_seconds=retry_seconds, tell=tell)


@cli.command(context_settings={"allow_interspersed_args": False})
@click.option("--name", required=True, metavar="NAME", help="The job's name, as for `start`.")
@source_option
@destination_option
@click.option("--timeout", type=DURATION, metavar="DURATION",
              help="SIGTERM the command after DURATION (90s, 15m, 2h), SIGKILL it --kill-after "
                   "later; exit 124. Time spent in --on-overlap wait counts.")
@click.option("--kill-after", type=DURATION, default="5s", show_default=True, metavar="DURATION",
              help="How long a timed-out command may take to end after SIGTERM.")
@click.option("--on-overlap", type=click.Choice(("skip", "wait", "allow")), default="skip",
              show_default=True,
              help="When a run of NAME is live: skip (exit 75, nothing recorded), wait for it "
                   "to end, or allow both.")
@click.option("--fail-open", is_flag=True,
              help="Run the command even when the database cannot be reached (no watermark, "
                   "no overlap check); record it once the database is back.")
@click.option("--tail-bytes", type=click.IntRange(0, 64 * 1024 * 1024), default=10 * 1024,
              show_default=True, metavar="N",
              help="Keep the last N bytes of stderr in the run's output and error message.")
@click.option("--capture-stdout", is_flag=True,
              help="Keep stdout in that tail too (it then goes through a pipe).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def run(ctx: click.Context, name: str, source: str, destination: str, timeout: float | None,
        kill_after: float, on_overlap: str, fail_open: bool, tail_bytes: int,
        capture_stdout: bool, command: tuple[str, ...]) -> None:
    """Run COMMAND as a recorded run of job NAME; exit with its exit code.

    The command gets JOBS_ID, JOBS_NAME, JOBS_LAST_SUCCESS (unix seconds, empty
    if never) and JOBS_LAST_SUCCESS_ISO, and can `jobs-cli report` its records.
    stdout passes untouched; stderr passes live and its tail is recorded.

    Exit: the command's code; 124 timed out, 126 not executable, 127 not
    found, 128+N signal N; 69 database unreachable (command not run), 75
    another run is live (skipped).

    \b
    Example:
      jobs-cli run --name orders_sync --timeout 15m -- ./sync.sh --full
    """
    from .wrapper import RunOptions, wrap

    options = RunOptions(
        name=name, source=source, destination=destination,
        timeout=timeout, kill_after=kill_after, on_overlap=on_overlap,
        fail_open=fail_open, tail_bytes=tail_bytes, capture_stdout=capture_stdout,
        heartbeat_seconds=seconds_from_env(config.ENV_HEARTBEAT_SECONDS,
                                           config.DEFAULT_HEARTBEAT_SECONDS, positive=True))
    with recorder_for(ctx) as recorder:
        exit_code = wrap(command, options, recorder)
    ctx.exit(exit_code)


@cli.command()
@click.option("--records", type=RECORDS, metavar="N",
              help="Number of records processed so far.")
@click.option("--message", help="A note stored with the run (kept when it succeeds).")
@click.pass_context
def report(ctx: click.Context, records: int | None, message: str | None) -> None:
    """From inside `jobs-cli run`: record the run's records and a message.

    The run is the one JOBS_ID names. Prints nothing: the command's stdout
    may be its data. The wrapper's final update keeps what was reported.

    \b
    Example:
      # in the script that `jobs-cli run` runs
      jobs-cli report --records "$(wc -l < batch.csv)"
    """
    from .runs import report_run

    run_id = os.environ.get(config.ENV_ID)
    if not run_id:
        raise InvalidInput(f"{config.ENV_ID} is not set: report works inside a command "
                           "run by `jobs-cli run`")
    if records is None and message is None:
        raise InvalidInput("nothing to report: give --records, --message or both")
    with connection(ctx) as conn:
        report_run(conn, ctx.obj.schema, run_id, records=records, message=message)


@cli.command()
@click.option("--older-than", type=DURATION, metavar="DURATION",
              help="Also reap runs started by `jobs-cli start` (no wrapper, no heartbeat) "
                   "still in progress after DURATION.")
@click.pass_context
def reap(ctx: click.Context, older_than: float | None) -> None:
    """Mark runs whose wrapper died as error "abandoned: …"; print their ids.

    A run of `jobs-cli run` is dead when its heartbeats stopped for three
    intervals (JOBS_HEARTBEAT_SECONDS). The next `run` of the same job reaps
    its dead run by itself; this is for the dashboards, and for unsupervised
    runs with --older-than.

    \b
    Example:
      */5 * * * * /opt/etl/.venv/bin/jobs-cli reap --older-than 1d
    """
    from .runs import reap_runs

    with connection(ctx) as conn:
        reaped = reap_runs(conn, ctx.obj.schema, unsupervised_older_than=older_than)
    for abandoned in reaped:
        click.echo(abandoned.id)


@cli.command()
@click.pass_context
def flush(ctx: click.Context) -> None:
    """Record the results `run` spooled while the database was unreachable.

    Prints the ids of the runs recorded. Replaying is idempotent: a result is
    recorded once however often it is flushed. Results spooled for another
    database or schema are left for a flush with that configuration.

    \b
    Example:
      jobs-cli flush
    """
    from .spool import spool_dir

    with recorder_for(ctx) as recorder:
        replayed = recorder.replay()
    for recorded in replayed.recorded:
        click.echo(recorded.id)
    if replayed.other_database:
        tell(f"{replayed.other_database} spooled result(s) in {spool_dir(ctx.obj.home)} "
             "are for another database or schema; left in place")
    if replayed.failed:
        ctx.exit(EXIT_ERROR)


@cli.group()
def server() -> None:
    """The embedded PostgreSQL server used when no database is configured.

    \b
    Example:
      jobs-cli server status
    """


@server.command("status")
@click.pass_context
def server_status(ctx: click.Context) -> None:
    """Say where the embedded server keeps its data and whether it runs (exit 3 if not).

    \b
    Example:
      jobs-cli server status
    """
    from .server import EmbeddedServer

    status = EmbeddedServer(ctx.obj.home).status()
    click.echo(f"home:    {status.home}")
    click.echo(f"data:    {status.data_dir}{'' if status.initialized else ' (not created yet)'}")
    click.echo(f"running: {f'yes, pid {status.pid}' if status.running else 'no'}")
    if status.url:
        click.echo(f"url:     {status.url}")
        click.echo(f"psql:    psql '{status.url}'")
    if not status.running:
        ctx.exit(EXIT_NOT_RUNNING)


@server.command("start")
@click.pass_context
def server_start(ctx: click.Context) -> None:
    """Create and start the embedded server if needed; print its URL.

    \b
    Example:
      psql "$(jobs-cli server start)"
    """
    from .db import connect
    from .server import EmbeddedServer

    # Connecting starts the server and gives it the schema.
    with connect(replace(ctx.obj, url=None)):
        pass
    click.echo(EmbeddedServer(ctx.obj.home).status().url)


@server.command("stop")
@click.pass_context
def server_stop(ctx: click.Context) -> None:
    """Stop the embedded server (the next command starts it again).

    \b
    Example:
      jobs-cli server stop
    """
    from .server import EmbeddedServer

    stopped = EmbeddedServer(ctx.obj.home).stop()
    click.echo("jobs-cli: stopped" if stopped else "jobs-cli: not running", err=True)


def main() -> None:
    """Entry point: every failure, click's own included, is one line on stderr."""
    config.set_aside_libpq_environment()
    try:
        exit_code = cli.main(prog_name="jobs-cli", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.format_message(), err=True)  # the help itself: no prefix
        exit_code = exc.exit_code
    except click.UsageError as exc:
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        click.echo(f"jobs-cli: {exc.format_message()}{where}", err=True)
        exit_code = exc.exit_code
    except click.ClickException as exc:
        click.echo(f"jobs-cli: {exc.format_message()}", err=True)
        exit_code = exc.exit_code
    except click.Abort:
        click.echo("jobs-cli: interrupted", err=True)
        exit_code = EXIT_INTERRUPTED
    sys.exit(exit_code if isinstance(exit_code, int) else 0)
