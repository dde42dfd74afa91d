"""Watching runs: list, show, status, check, metrics, watch."""

from __future__ import annotations

import sys

import click

from .. import config
from ..errors import InvalidInput, signals_interrupt
from ..states import STATUS_FILTERS
from .common import DURATION, LIMIT, complete_job_names, connection, utc_option, view_json_option


@click.command("list")
@click.option("--name", "pattern", metavar="PATTERN", shell_complete=complete_job_names,
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
    from ..monitor import RUN_VIEW_FIELDS, as_dicts, list_runs, parse_since
    from ..render import emit_csv, emit_json, print_runs
    from ..runs import validate_name

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


@click.command()
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
    from ..monitor import get_run_view
    from ..render import emit_json, print_run

    with connection(ctx) as conn:
        run = get_run_view(conn, ctx.obj.schema, run_id)
    if as_json:
        emit_json(run.as_dict())
    else:
        print_run(run, utc)


@click.command("status")
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
    from ..monitor import as_dicts, job_summaries, problems_first
    from ..render import emit_json, print_status

    with connection(ctx) as conn:
        summaries = problems_first(job_summaries(conn, ctx.obj.schema))
    if as_json:
        emit_json(as_dicts(summaries))
    else:
        print_status(summaries)


# Waiting plus one last connection attempt stays within a monitoring system's 10 s.
CHECK_PATIENCE_SECONDS = 4.0
CHECK_CONNECT_TIMEOUT_SECONDS = 3


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
        from ..monitor import UNKNOWN
        from ..render import unknown_line
        from ..text import first_line

        click.echo(unknown_line(first_line(message)))
        raise click.exceptions.Exit(UNKNOWN)


@click.command(cls=MonitoringPluginCommand)
@click.argument("names", metavar="NAME...", nargs=-1, required=True,
                shell_complete=complete_job_names)
@click.option("--max-age", "critical_after", required=True, type=DURATION, metavar="DURATION",
              help="CRITICAL when the last success ended longer ago than this.")
@click.option("--warn-age", "warning_after", type=DURATION, metavar="DURATION",
              help="WARNING when the last success ended longer ago than this.")
@click.pass_context
def check(ctx: click.Context, names: tuple[str, ...], critical_after: float,
          warning_after: float | None) -> None:
    """Check jobs for Nagios, Icinga and the like.

    Is each job NAME healthy?

    Exit 0 OK, 1 WARNING, 2 CRITICAL (never succeeded, the last run failed or
    died, or the last success is older than --max-age), 3 UNKNOWN (bad usage,
    database unreachable). One status line on stdout; with several names the
    worst state wins and every problem is named.

    \b
    Example:
      jobs-cli check orders_sync invoices --max-age 2h --warn-age 90m
    """
    from dataclasses import replace

    from ..monitor import check_jobs
    from ..render import check_line

    # A monitoring system gives a check about 10 s, whatever the budget elsewhere.
    ctx.obj = replace(ctx.obj, patience=replace(
        ctx.obj.patience, seconds=min(ctx.obj.patience.seconds, CHECK_PATIENCE_SECONDS),
        connect_timeout=CHECK_CONNECT_TIMEOUT_SECONDS))
    with connection(ctx) as conn:
        verdicts = check_jobs(conn, ctx.obj.schema, list(names), critical_after, warning_after)
    click.echo(check_line(verdicts))
    ctx.exit(max(verdict.severity for verdict in verdicts))


@click.command()
@click.pass_context
def metrics(ctx: click.Context) -> None:
    """Print per-job metrics in the Prometheus text format.

    For node_exporter's textfile collector; write to a temporary file and
    rename it, so the collector never reads half a file.

    \b
    Example:
      cd /var/lib/node_exporter/textfile && jobs-cli metrics > jobs.tmp && mv jobs.tmp jobs.prom
    """
    from ..monitor import ended_counts, job_summaries
    from ..render import prometheus_text

    with connection(ctx) as conn:
        text = prometheus_text(job_summaries(conn, ctx.obj.schema),
                               ended_counts(conn, ctx.obj.schema))
    click.echo(text, nl=False)


@click.command()
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
    import signal

    from ..db import open_connection, patiently, translated_errors
    from ..monitor import snapshots
    from ..render import watch as draw

    if not sys.stdout.isatty():
        raise InvalidInput("watch redraws a terminal; for output to a file or a pipe use "
                           "`jobs-cli list` (or `status`)")
    try:
        # SIGTERM and SIGHUP leave through the live display, which shows the
        # cursor again, and end as interrupted (see main).
        with signals_interrupt(signal.SIGTERM, signal.SIGHUP), translated_errors(ctx.obj):
            draw(snapshots(lambda: patiently(ctx.obj, open_connection), ctx.obj.schema, limit,
                           interval), utc)
    except KeyboardInterrupt:
        pass  # how a watch ends

