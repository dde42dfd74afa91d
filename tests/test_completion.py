"""Shell completion: the scripts, and job names from the database without side effects."""

from __future__ import annotations

import socket
import subprocess

import pytest
from seeding import add_run


def complete(cli_env, *words: str, env: dict[str, str] | None = None) -> list[str]:
    """What bash completion offers for the last of `words`, as the script asks for it."""
    line = ["jobs-cli", *words]
    # Ample time on a busy machine; the silent server shows the wait is bounded.
    result = subprocess.run(["jobs-cli"], env={**cli_env, "JOBS_COMPLETION_SECONDS": "20",
                                               **(env or {}),
                                                "COMP_WORDS": " ".join(line),
                                                "COMP_CWORD": str(len(line) - 1),
                                                "_JOBS_CLI_COMPLETE": "bash_complete"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == ""
    return [entry.split(",", 1)[1] for entry in result.stdout.splitlines() if entry]


@pytest.mark.parametrize("shell, marker", [("bash", "complete -o nosort -F"),
                                           ("zsh", "#compdef jobs-cli"),
                                           ("fish", "complete --no-files --command jobs-cli")])
def test_the_script_for_each_shell(cli, shell, marker):
    result = cli("completion", shell)
    assert result.returncode == 0 and marker in result.stdout
    assert "_JOBS_CLI_COMPLETE" in result.stdout


def test_an_unknown_shell_is_a_usage_error(cli):
    result = cli("completion", "tcsh")
    assert result.returncode == 2 and result.stderr.count("\n") == 1


def test_job_names_complete_from_the_database(cli_env, conn):
    for name in ("orders_sync", "orders_full", "invoices"):
        add_run(conn, name)
    assert sorted(complete(cli_env, "last-success", "ord")) == ["orders_full", "orders_sync"]
    assert complete(cli_env, "run", "--name", "inv") == ["invoices"]
    assert complete(cli_env, "check", "orders_sync", "inv") == ["invoices"]
    assert sorted(complete(cli_env, "list", "--name", "")) == ["invoices", "orders_full",
                                                                "orders_sync"]
    assert complete(cli_env, "last-success", "zzz") == []
    assert "last-success" in complete(cli_env, "last")


def test_an_unreachable_database_offers_nothing(cli_env):
    unreachable = {"JOBS_DATABASE_URL": "host=/nonexistent/socket/dir port=1 dbname=jobs"}
    assert complete(cli_env, "last-success", "o", env=unreachable) == []


def test_a_silent_server_offers_nothing(cli_env):
    """A host that accepts the connection and never answers: the TAB does not wait for it."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        url = {"JOBS_DATABASE_URL": f"host=127.0.0.1 port={port} dbname=jobs connect_timeout=60",
               "JOBS_COMPLETION_SECONDS": "0.5"}
        assert complete(cli_env, "last-success", "o", env=url) == []


def test_completion_never_creates_or_starts_the_embedded_server(cli_env, home):
    embedded = {k: v for k, v in cli_env.items() if k != "JOBS_DATABASE_URL"}
    result = subprocess.run(["jobs-cli"], env={**embedded, "COMP_WORDS": "jobs-cli last-success o",
                                               "COMP_CWORD": "2",
                                               "_JOBS_CLI_COMPLETE": "bash_complete"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == ""
    assert not (home / "data").exists()
