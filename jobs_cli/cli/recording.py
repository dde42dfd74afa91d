"""Recording runs by hand: start, finish, fail, last-success, and report from inside a run."""

from __future__ import annotations

import os
import sys

import click

from .. import config
from ..errors import EXIT_NO_SUCCESS, InvalidInput
from .common import (RECORDS, complete_job_names, destination_option, emit_run,
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
    import uuid

    from ..db import call
    from ..runs import start_run

    # The key makes a start repeated after a lost connection find its run, not insert another.
    key = uuid.uuid4().hex
    run = call(ctx.obj, lambda conn: start_run(
        conn, ctx.obj.schema, name, source=source, destination=destination, message=message,
        run_key=key))
    emit_run(run, as_json)


CURSOR_HELP = ("Where this run got to in the data (the highest id or timestamp loaded, a "
               "token): handed to the next run as JOBS_LAST_CURSOR if this one succeeds.")


def end_command(status: str, example: str, with_cursor: bool = False):
    records = click.option("--records", type=RECORDS, metavar="N",
                           help="Number of records processed.")
    message = click.option("--message", help="A note stored with the run.")
    as_json = click.option("--json", "as_json", is_flag=True,
                           help="Print the run as a JSON object.")
    # Only a success's cursor is ever handed on, so `fail` takes none.
    cursor = click.option("--cursor", metavar="VALUE", help=CURSOR_HELP) if with_cursor \
        else (lambda function: function)

    @click.argument("run_id", metavar="ID")
    @records
    @message
    @cursor
    @as_json
    @click.pass_context
    def command(ctx: click.Context, run_id: str, records: int | None,
                message: str | None, as_json: bool, cursor: str | None = None) -> None:
        import uuid

        from ..db import call
        from ..runs import end_run

        # An end repeated after a lost connection knows its own ending by the key.
        key = uuid.uuid4().hex
        run = call(ctx.obj, lambda conn: end_run(
            conn, ctx.obj.schema, run_id, status, records=records, message=message,
            cursor=cursor, end_key=key))
        emit_run(run, as_json)

    command.__doc__ = (
        f"Record that run ID ended with {status}; print its id.\n\n"
        "Refused (exit 1) for an unknown id or a run that has already ended.\n\n"
        f"\b\nExample:\n  {example}"
    )
    return command


finish = click.command("finish")(end_command(
    "success", 'jobs-cli finish "$id" --records 42 --cursor 1042', with_cursor=True))
fail = click.command("fail")(end_command("error", 'jobs-cli fail "$id" --message "source unreachable"'))


@click.command("last-success")
@click.argument("name", shell_complete=complete_job_names)
@click.option("--default", "default", metavar="N",
              help="When there is nothing to answer, answer N (unix seconds; with --cursor "
                   "any text) and exit 0 (else exit 3, no output).")
@click.option("--iso", is_flag=True, help="Print ISO-8601 UTC instead of unix seconds.")
@lookback_option
@click.option("--cursor", "want_cursor", is_flag=True,
              help="Print the cursor of the last successful run that has one instead.")
@click.pass_context
def last_success(ctx: click.Context, name: str, default: str | None, iso: bool,
                 lookback: float | None, want_cursor: bool) -> None:
    """Print when NAME's last success started, or its cursor.

    "Last" is by end time, as in the original; the start is printed so rows
    changed while that run was extracting are picked up by the next run.
    --lookback takes a margin off it; --default is printed as given.

    \b
    Example:
      since=$(jobs-cli last-success orders_sync --default 0 --lookback 10m)
      psql -c "select * from orders where modified_at >= to_timestamp($since)"
      after=$(jobs-cli last-success orders_sync --cursor --default 0)
    """
    from ..db import call
    from ..runs import iso_seconds, next_watermark, validate_cursor, validate_name

    validate_name(name)
    if want_cursor and (iso or lookback is not None):
        raise InvalidInput("--cursor prints the cursor as it was given: it takes neither "
                           "--iso nor --lookback")
    if default is not None:
        if want_cursor:
            validate_cursor(default)
        else:
            default = whole_seconds(default, "--default")
    handed = call(ctx.obj, lambda conn: next_watermark(conn, ctx.obj.schema, name,
                                                        lookback=lookback or 0))
    answer = handed.cursor if want_cursor else handed.since
    if answer is None:
        if default is None:
            if sys.stderr.isatty():  # a script reads the exit code; a person needs words
                tell(f"{name!r} has no successful run with a cursor" if want_cursor
                     else f"{name!r} has never succeeded")
            ctx.exit(EXIT_NO_SUCCESS)
        answer = default
    click.echo(iso_seconds(answer) if iso else answer)


def whole_seconds(text: str, option: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise InvalidInput(f"{option} must be whole unix seconds, not {text!r}") from None



@click.command()
@click.option("--records", type=RECORDS, metavar="N",
              help="Number of records processed so far.")
@click.option("--message", help="A note stored with the run (kept when it succeeds).")
@click.option("--cursor", metavar="VALUE", help=CURSOR_HELP)
@click.pass_context
def report(ctx: click.Context, records: int | None, message: str | None,
           cursor: str | None) -> None:
    """Record records, a message and a cursor from inside `run`.

    The run is the one JOBS_ID names. Prints nothing: the command's stdout
    may be its data. The wrapper's final update keeps what was reported.

    \b
    Example:
      # in the script that `jobs-cli run` runs
      jobs-cli report --records "$(wc -l < batch.csv)" --cursor "$max_id"
    """
    from ..db import call
    from ..runs import report_run

    run_id = os.environ.get(config.ENV_ID)
    if not run_id:
        raise InvalidInput(f"{config.ENV_ID} is not set: report works inside a command "
                           "run by `jobs-cli run`")
    if records is None and message is None and cursor is None:
        raise InvalidInput("nothing to report: give --records, --message or --cursor")
    # Setting the same values twice is harmless, so a lost connection is simply retried.
    call(ctx.obj, lambda conn: report_run(conn, ctx.obj.schema, run_id, records=records,
                                          message=message, cursor=cursor))

