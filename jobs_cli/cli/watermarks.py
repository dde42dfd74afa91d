"""A job's watermark over time: history and reset."""

from __future__ import annotations

import sys

import click

from .. import config
from ..errors import InvalidInput
from .common import LIMIT, complete_job_names, connection, tell, utc_option


@click.command()
@click.argument("name", shell_complete=complete_job_names)
@click.option("--to", "to_run", metavar="RUN_ID",
              help="Make the watermark and cursor of this earlier successful run current.")
@click.option("--to-start", is_flag=True, help="Hand the next run no watermark: a full load.")
@click.option("--yes", is_flag=True, help="Do not ask (needed when stdin is not a terminal).")
@click.pass_context
def reset(ctx: click.Context, name: str, to_run: str | None, to_start: bool, yes: bool) -> None:
    """Make an earlier success's watermark current again.

    The next runs are handed what that run left (its start, its cursor) until
    a run that starts after the reset succeeds. Nothing is deleted: the reset
    is recorded in a table of its own and shown by `history`.

    \b
    Example:
      jobs-cli history orders_sync
      jobs-cli reset orders_sync --to 1234
      jobs-cli reset orders_sync --to-start --yes    # the next run loads everything
    """
    import socket

    from ..runs import iso_seconds
    from ..watermarks import reset as make_reset, reset_target
    from ..wrapper import current_username

    if (to_run is None) == (not to_start):
        raise InvalidInput("give either --to RUN_ID or --to-start")
    if not yes and not sys.stdin.isatty():
        raise InvalidInput("reset asks for confirmation: give --yes when stdin is not a terminal")
    with connection(ctx) as conn:
        target = reset_target(conn, ctx.obj.schema, name, to_run)
        if target is None:
            change = f"the next run of {name!r} is handed no watermark and no cursor: a full load"
        else:
            change = (f"the next run of {name!r} is handed the start of run {target.id}, "
                      f"{iso_seconds(int(target.start_date.timestamp() // 1))}, and the cursor "
                      "it left")
        if not yes and not click.confirm(f"jobs-cli: {change}. Reset?", err=True):
            raise InvalidInput("not reset")
        done = make_reset(conn, ctx.obj.schema, name, target, username=current_username(),
                          host=socket.gethostname())
    if target is not None:
        change = change.removesuffix("the cursor it left") + (
            "no cursor" if done.cursor is None else f"cursor {done.cursor!r}")
    tell(f"reset {done.id}: {change}")


@click.command()
@click.argument("name", shell_complete=complete_job_names)
@click.option("--limit", type=LIMIT, default=config.DEFAULT_LIMIT,
              show_default=True, metavar="N", help="At most N entries.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON array (times ISO-8601 UTC).")
@utc_option
@click.pass_context
def history(ctx: click.Context, name: str, limit: int, as_json: bool, utc: bool) -> None:
    """List NAME's successes and resets, newest first.

    Each run shows the window it loaded, from the watermark it was handed to
    its own start, and its cursor as handed and as it left it.

    \b
    Example:
      jobs-cli history orders_sync --limit 5
    """
    from ..render import emit_json, print_history
    from ..watermarks import history as job_history

    with connection(ctx) as conn:
        entries = job_history(conn, ctx.obj.schema, name, limit=limit)
    if as_json:
        emit_json([entry.as_dict() for entry in entries])
    else:
        print_history(entries, utc, f"{name!r} has no successful run yet")
