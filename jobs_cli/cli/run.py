"""Wrapping a command: run, and the clean-up around it (reap, flush)."""

from __future__ import annotations

import click

from .. import config
from ..durations import format_duration
from ..errors import EXIT_ERROR
from .common import (DURATION, Count, complete_job_names, connection, destination_option,
                     lookback_option, recorder_for, seconds_from_env, source_option, tell)


@click.command(context_settings={"allow_interspersed_args": False})
@click.option("--name", required=True, metavar="NAME", shell_complete=complete_job_names,
              help="The job's name, as for `start`.")
@source_option
@destination_option
@click.option("--timeout", type=DURATION, metavar="DURATION",
              help="SIGTERM the command after DURATION (90s, 15m, 2h), SIGKILL it --kill-after "
                   "later; exit 124. Time spent in --on-overlap wait counts.")
@click.option("--kill-after", type=DURATION,
              default=format_duration(config.DEFAULT_KILL_AFTER_SECONDS), show_default=True,
              metavar="DURATION",
              help="How long a timed-out command may take to end after SIGTERM.")
@click.option("--on-overlap", type=click.Choice(config.OVERLAP_CHOICES), default=config.SKIP,
              show_default=True,
              help="When a run of NAME is live: skip (exit 75, nothing recorded), wait for it "
                   "to end, or allow both.")
@click.option("--fail-open", is_flag=True,
              help="Run the command even when the database cannot be reached (no watermark, "
                   "no overlap check); record it once the database is back.")
@lookback_option
@click.option("--after", "after", multiple=True, metavar="JOB", shell_complete=complete_job_names,
              help="Run only when job JOB has succeeded since this job's last success "
                   "started; else skip silently (exit 75). Repeatable.")
@click.option("--tail-bytes", type=Count(0, config.MAX_TAIL_BYTES),
              default=config.DEFAULT_TAIL_BYTES, show_default=True, metavar="N",
              help="Keep the last N bytes of stderr in the run's output and error message.")
@click.option("--capture-stdout", is_flag=True,
              help="Keep stdout in that tail too (it then goes through a pipe).")
@click.option("--no-record-command", "hide_command", is_flag=True,
              help="Record no command line (else it is recorded with passwords masked).")
@click.option("--stop-on-lost-lease", is_flag=True,
              help="Stop the command (exit 77) before its lease runs out when heartbeats "
                   "cannot reach the database: no other host can then run the job alongside.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def run(ctx: click.Context, name: str, source: str, destination: str, timeout: float | None,
        kill_after: float, on_overlap: str, fail_open: bool, lookback: float | None,
        after: tuple[str, ...], tail_bytes: int, capture_stdout: bool, hide_command: bool,
        stop_on_lost_lease: bool, command: tuple[str, ...]) -> None:
    """Run COMMAND as a recorded run of job NAME.

    Exits with the command's exit code.

    The command gets JOBS_ID, JOBS_NAME, JOBS_LAST_SUCCESS (unix seconds less
    --lookback, empty if never), JOBS_LAST_SUCCESS_ISO, JOBS_LOOKBACK_SECONDS and
    JOBS_LAST_CURSOR (empty if none), and can `jobs-cli report` its records and cursor.
    With --after, JOBS_UPSTREAM_RUNS lists the upstream runs it consumes.
    stdout passes untouched; stderr passes live and its tail is recorded.

    Exit: the command's code; 124 timed out, 126 not executable, 127 not
    found, 128+N signal N; 69 database unreachable (command not run), 75
    another run is live or an --after job has not succeeded since (skipped), 77
    command stopped (someone else ended the run, or --stop-on-lost-lease).

    \b
    Example:
      jobs-cli run --name orders_sync --timeout 15m -- ./sync.sh --full
      jobs-cli run --name load_dwh --after orders_sync -- ./load.sh
    """
    from ..wrapper import RunOptions, wrap

    options = RunOptions(
        name=name, source=source, destination=destination,
        timeout=timeout, kill_after=kill_after, on_overlap=on_overlap,
        fail_open=fail_open, lookback=lookback or 0, after=after, tail_bytes=tail_bytes,
        capture_stdout=capture_stdout, record_command=not hide_command,
        stop_on_lost_lease=stop_on_lost_lease,
        heartbeat_seconds=seconds_from_env(config.ENV_HEARTBEAT_SECONDS,
                                           config.DEFAULT_HEARTBEAT_SECONDS,
                                           least=config.MIN_HEARTBEAT_SECONDS))
    with recorder_for(ctx) as recorder:
        exit_code = wrap(command, options, recorder)
    ctx.exit(exit_code)



@click.command()
@click.option("--older-than", type=DURATION, metavar="DURATION",
              help="Also reap runs started by `jobs-cli start` (no wrapper, no heartbeat) "
                   "still in progress after DURATION.")
@click.pass_context
def reap(ctx: click.Context, older_than: float | None) -> None:
    """Mark runs whose wrapper died as abandoned.

    They end as error "abandoned: …"; their ids are printed.

    A run of `jobs-cli run` is dead when its heartbeats stopped for three
    intervals (JOBS_HEARTBEAT_SECONDS); on the wrapper's own host, as soon as
    the wrapper and its command are gone, and never while the wrapper lives.
    The next `run` of the same job reaps its dead run by itself; this is for
    the dashboards, and for unsupervised runs with --older-than.

    \b
    Example:
      */5 * * * * /opt/etl/.venv/bin/jobs-cli reap --older-than 1d
    """
    from ..runs import reap_runs

    with connection(ctx) as conn:
        reaped = reap_runs(conn, ctx.obj.schema, unsupervised_older_than=older_than)
    for abandoned in reaped:
        click.echo(abandoned.id)


@click.command()
@click.pass_context
def flush(ctx: click.Context) -> None:
    """Record results spooled while the database was away.

    `run` spools a result it cannot record.

    Prints the ids of the runs recorded. Replaying is idempotent: a result is
    recorded once however often it is flushed. Results spooled for another
    database or schema are left for a flush with that configuration.

    \b
    Example:
      jobs-cli flush
    """
    from ..spool import spool_dir

    with recorder_for(ctx) as recorder:
        replayed = recorder.replay()
    for recorded in replayed.recorded:
        click.echo(recorded.id)
    if replayed.other_database:
        tell(f"{replayed.other_database} spooled result(s) in {spool_dir(ctx.obj.home)} "
             "are for another database or schema; left in place")
    if replayed.failed or replayed.rejected:
        ctx.exit(EXIT_ERROR)

