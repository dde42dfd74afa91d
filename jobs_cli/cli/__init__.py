"""The Click layer: parse, call the library, render. Nothing else.

Commands live in modules by concern: `recording` (start, finish, fail,
last-success, report), `run` (run, reap, flush), `views` (list, show,
status, check, metrics, watch), `watermarks` (history, reset) and `admin`
(init, server). `common` holds the error boundary (`JobsGroup.invoke`) where
every library error becomes one line on stderr and an exit code, and what the
commands share. `main` handles click's own errors the same way.
"""

from __future__ import annotations

import os
import sys

import click

from .. import config
from ..errors import EXIT_INTERRUPTED, Interrupted
from . import admin, recording, run, views, watermarks
from .common import JobsGroup, tell


def help_width() -> int:
    """The width click's help formatter would choose, worked out without the shutil
    import it costs (~2 ms, 6% of `import click`) on every `--help`."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return max(min(columns or 80, 80) - 2, 50)


@click.group(cls=JobsGroup, context_settings={"help_option_names": ["-h", "--help"],
                                              "terminal_width": help_width()})
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
    Example (sync.sh reads its watermark from $JOBS_LAST_SUCCESS):
      jobs-cli run --name orders_sync --source erp --destination dwh -- ./sync.sh
      jobs-cli list
    """
    from ..db import Database
    from ..retry import Patience

    if not schema.strip():
        raise click.BadParameter("must not be empty", param_hint="--schema")
    # Waiting is said only to a person: under cron the outcome says enough.
    patience = Patience(seconds=config.start_retry_seconds(),
                        on_wait=tell if sys.stderr.isatty() else None)
    ctx.obj = Database(url=database_url or None, schema=schema, patience=patience,
                      tell=tell)



for command in (admin.init, admin.completion, recording.start, recording.finish, recording.fail,
                recording.last_success, recording.report, run.run, run.reap, run.flush,
                views.list_command, views.show, views.status_command, views.check,
                views.metrics, views.watch, watermarks.history, watermarks.reset, admin.server):
    cli.add_command(command)


def main() -> None:
    """Every failure, click's own included, is one line on stderr (the program's
    entry point, `entry.main`, runs this inside its guard against Ctrl-C)."""
    try:
        exit_code = cli.main(prog_name="jobs-cli", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.format_message(), err=True)  # the help itself: no prefix
        exit_code = exc.exit_code
    except click.UsageError as exc:
        # One hint: click's own ("Did you mean ...?") or ours.
        hinted = exc.ctx is None or "Did you mean" in exc.format_message() \
            or "Possible options" in exc.format_message()
        where = "" if hinted else f" (see '{exc.ctx.command_path} --help')"
        click.echo(f"jobs-cli: {exc.format_message()}{where}", err=True)
        exit_code = exc.exit_code
    except click.ClickException as exc:
        click.echo(f"jobs-cli: {exc.format_message()}", err=True)
        exit_code = exc.exit_code
    except click.Abort:
        click.echo("jobs-cli: interrupted", err=True)
        exit_code = EXIT_INTERRUPTED
    except Interrupted as exc:
        click.echo(f"jobs-cli: {exc}", err=True)
        exit_code = exc.exit_code
    sys.exit(exit_code if isinstance(exit_code, int) else 0)
