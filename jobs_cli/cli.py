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
from datetime import datetime, timezone
from typing import Iterator

import click

from . import config
from .errors import EXIT_ERROR, EXIT_NO_SUCCESS, EXIT_NOT_RUNNING, JobsError


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
    click.echo(f"jobs-cli: schema {ctx.obj.schema!r} is up to date", err=True)


@cli.command()
@click.argument("name")
@click.option("--source", envvar=config.ENV_SOURCE, default="", show_default=False,
              help="Where the job reads from [env JOBS_SOURCE; default empty].")
@click.option("--destination", envvar=config.ENV_DESTINATION, default="",
              help="Where the job writes to [env JOBS_DESTINATION; default empty].")
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
    records = click.option("--records", type=click.IntRange(0, 2**31 - 1), metavar="N",
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
@click.option("--default", "default", metavar="N",
              help="Print N and exit 0 when the job never succeeded (else exit 3, no output).")
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
    from .runs import last_start, validate_name

    validate_name(name)
    with connection(ctx) as conn:
        started = last_start(conn, ctx.obj.schema, name)
    if started is None:
        if default is None:
            ctx.exit(EXIT_NO_SUCCESS)
        click.echo(default)
    elif iso:
        click.echo(datetime.fromtimestamp(started, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    else:
        click.echo(started)


@cli.group()
def server() -> None:
    """The embedded PostgreSQL server used when no database is configured."""


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
    cli(prog_name="jobs-cli")
