"""What the commands share: the error boundary, parameter types, options, connections.

The commands live in modules by concern (recording, run, views, admin) and are
put together in `jobs_cli.cli`. Library modules never import click; psycopg and
rich are imported inside the commands that need them, so `jobs-cli --help`
loads neither.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator

import click

from .. import config
from ..config import seconds_from_env
from ..durations import parse_duration, parse_positive_duration
from ..errors import EXIT_ERROR, Interrupted, JobsError


class JobsGroup(click.Group):
    """The single place where library errors become messages and exit codes."""

    def make_context(self, *args, **kwargs) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except KeyboardInterrupt:
            raise Interrupted() from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            # Past click, whose own handling would add a blank line (see main).
            raise Interrupted() from None
        except JobsError as exc:
            if sys.stderr.isatty() or not getattr(exc, "quiet_off_terminal", False):
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
    """90s, 15m, 2h, 1d, 1h30m: seconds as a float, more than zero unless `zero_ok`."""

    name = "duration"

    def __init__(self, zero_ok: bool = False) -> None:
        self.parse = parse_duration if zero_ok else parse_positive_duration

    def convert(self, value, param, ctx) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return self.parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Count(click.ParamType):
    """A whole number from `least` to `most`. Unlike click.IntRange, help shows no
    `[0<=x<=2147483647]`: the bounds are said when a value breaks them."""

    name = "integer"

    def __init__(self, least: int, most: int = config.INT4_MAX) -> None:
        self.least, self.most = least, most

    def convert(self, value, param, ctx) -> int:
        try:
            number = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a whole number", param, ctx)
        if not self.least <= number <= self.most:
            self.fail(f"{number} is not between {self.least} and {self.most}", param, ctx)
        return number


DURATION = Duration()
lookback_option = click.option(
    "--lookback", type=Duration(zero_ok=True), metavar="DURATION",
    help="Take DURATION (rounded up to whole seconds) off the watermark, for sources whose "
         "rows become visible after the time they carry (see README) [default 0].")
# records_processed is an integer column.
RECORDS = Count(0)
LIMIT = Count(1)

source_option = click.option("--source", envvar=config.ENV_SOURCE, default="",
                             help="Where the job reads from [env JOBS_SOURCE; default empty].")
destination_option = click.option(
    "--destination", envvar=config.ENV_DESTINATION, default="",
    help="Where the job writes to [env JOBS_DESTINATION; default empty].")

def complete_job_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
    """shell_complete for job names: the database's, offered only when it answers at once."""
    from ..completion import job_names
    from ..db import Database

    root = ctx.find_root().params
    database = Database(url=root.get("database_url") or None,
                        schema=root.get("schema") or config.DEFAULT_SCHEMA)
    return job_names(database, incomplete)


@contextmanager
def connection(ctx: click.Context) -> Iterator:
    from ..db import connect

    with connect(ctx.obj) as conn:
        yield conn


def emit_run(run, as_json: bool) -> None:
    from ..render import emit_json

    if as_json:
        emit_json(run.as_dict())
    else:
        click.echo(run.id)

utc_option = click.option("--utc", is_flag=True, help="Show times in UTC, not local time.")
view_json_option = click.option("--json", "as_json", is_flag=True,
                                help="Print JSON with every field (times ISO-8601 UTC).")


def tell(message: str) -> None:
    click.echo(f"jobs-cli: {message}", err=True)


def recorder_for(ctx: click.Context):
    from ..recorder import Recorder

    retry_seconds = seconds_from_env(config.ENV_RETRY_SECONDS, config.DEFAULT_RETRY_SECONDS)
    return Recorder(ctx.obj, retry_seconds=retry_seconds, tell=tell)

