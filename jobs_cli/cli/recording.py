"""Recording runs by hand: start, finish, fail, last-success, and report from inside a run."""

from __future__ import annotations

import os
import sys

import click

from .. import config
from ..errors import EXIT_NO_SUCCESS, InvalidInput
from .common import (RECORDS, complete_job_names, connection, destination_option, emit_run,
                     lookback_option, source_option, tell)


@click.command()
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
    from ..runs import start_run

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
        from ..runs import end_run

        with connection(ctx) as conn:
            run = end_run(conn, ctx.obj.schema, run_id, status, records=records, message=message)
        emit_run(run, as_json)

    command.__doc__ = (
        f"Record that run ID ended with {status}; print its id.\n\n"
        "Refused (exit 1) for an unknown id or a run that has already ended.\n\n"
        f"\b\nExample:\n  {example}"
    )
    return command


finish = click.command("finish")(end_command("success", 'jobs-cli finish "$id" --records 42'))
fail = click.command("fail")(end_command("error", 'jobs-cli fail "$id" --message "source unreachable"'))


@click.command("last-success")
@click.argument("name", shell_complete=complete_job_names)
@click.option("--default", "default", type=int, metavar="N",
              help="When the job never succeeded, answer N (unix seconds) and exit 0 "
                   "(else exit 3, no output).")
@click.option("--iso", is_flag=True, help="Print ISO-8601 UTC instead of unix seconds.")
@lookback_option
@click.pass_context
def last_success(ctx: click.Context, name: str, default: str | None, iso: bool,
                 lookback: float | None) -> None:
    """Print when NAME's last success started (unix seconds).

    "Last" is by end time, as in the original; the start is printed so rows
    changed while that run was extracting are picked up by the next run.
    --lookback takes a margin off it; --default is printed as given.

    \b
    Example:
      since=$(jobs-cli last-success orders_sync --default 0 --lookback 10m)
      psql -c "select * from orders where modified_at >= to_timestamp($since)"
    """
    from ..runs import iso_seconds, validate_name, watermark

    validate_name(name)
    with connection(ctx) as conn:
        started = watermark(conn, ctx.obj.schema, name, lookback=lookback or 0)
    if started is None:
        if default is None:
            if sys.stderr.isatty():  # a script reads the exit code; a person needs words
                tell(f"{name!r} has never succeeded")
            ctx.exit(EXIT_NO_SUCCESS)
        started = default
    click.echo(iso_seconds(started) if iso else started)



@click.command()
@click.option("--records", type=RECORDS, metavar="N",
              help="Number of records processed so far.")
@click.option("--message", help="A note stored with the run (kept when it succeeds).")
@click.pass_context
def report(ctx: click.Context, records: int | None, message: str | None) -> None:
    """Record records and a message from inside `run`.

    The run is the one JOBS_ID names. Prints nothing: the command's stdout
    may be its data. The wrapper's final update keeps what was reported.

    \b
    Example:
      # in the script that `jobs-cli run` runs
      jobs-cli report --records "$(wc -l < batch.csv)"
    """
    from ..runs import report_run

    run_id = os.environ.get(config.ENV_ID)
    if not run_id:
        raise InvalidInput(f"{config.ENV_ID} is not set: report works inside a command "
                           "run by `jobs-cli run`")
    if records is None and message is None:
        raise InvalidInput("nothing to report: give --records, --message or both")
    with connection(ctx) as conn:
        report_run(conn, ctx.obj.schema, run_id, records=records, message=message)

