"""Administration: init, and the embedded server."""

from __future__ import annotations

import click

from ..errors import EXIT_NOT_RUNNING
from .common import tell

# What the script sets to ask jobs-cli for completions; click's name for it.
COMPLETE_VARIABLE = "_JOBS_CLI_COMPLETE"


@click.command()
@click.option("--roles", "with_roles", is_flag=True,
              help="Also create the NOLOGIN roles jobs_writer and jobs_reader (needs CREATEROLE).")
@click.pass_context
def init(ctx: click.Context, with_roles: bool) -> None:
    """Create or upgrade the jobs table (idempotent).

    Adopts an existing original-style table in place: no row is changed;
    constraints that old rows break are added NOT VALID and reported here.
    Roles jobs_writer (record runs) and jobs_reader (read them) get their
    privileges whenever they exist; --roles creates them.

    \b
    Example:
      JOBS_DATABASE_URL=postgresql://etl@db/warehouse jobs-cli --schema api init
    """
    from ..db import connect
    from ..migrations import migrate
    from ..roles import create_roles

    with connect(ctx.obj, check_schema=False) as conn:
        if with_roles:
            for role in create_roles(conn):
                tell(f"created role {role}")
        outcome = migrate(conn, ctx.obj.schema)
    for warning in outcome.warnings:
        tell(f"warning: {warning}")
    if outcome.applied:
        tell(f"applied: {', '.join(outcome.applied)}")
    tell(f"the jobs table in schema {ctx.obj.schema!r} is "
         + ("ready" if not outcome.pending else
            f"ready; still pending: {', '.join(outcome.pending)}"))


@click.command()
@click.argument("shell", type=click.Choice(("bash", "zsh", "fish")))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the shell completion script for SHELL.

    Commands, options and job names complete; names come from the database
    when it answers at once (the embedded server only when it runs).

    \b
    Example:
      eval "$(jobs-cli completion bash)"     # in ~/.bashrc
      jobs-cli completion fish > ~/.config/fish/completions/jobs-cli.fish
    """
    from click.shell_completion import get_completion_class

    root = ctx.find_root().command
    script = get_completion_class(shell)(root, {}, "jobs-cli", COMPLETE_VARIABLE).source()
    click.echo(script, nl=False)


@click.group()
def server() -> None:
    """Manage the embedded PostgreSQL server.

    It keeps the runs when no database is configured.

    \b
    Example:
      jobs-cli server status
    """


@server.command("status")
@click.pass_context
def server_status(ctx: click.Context) -> None:
    """Say where the server keeps its data and whether it runs.

    Exit 3 when it does not run.

    \b
    Example:
      jobs-cli server status
    """
    from ..server import EmbeddedServer

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
    from dataclasses import replace

    from ..db import connect
    from ..server import EmbeddedServer

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
    from ..server import EmbeddedServer

    stopped = EmbeddedServer(ctx.obj.home).stop()
    click.echo("jobs-cli: stopped" if stopped else "jobs-cli: not running", err=True)

