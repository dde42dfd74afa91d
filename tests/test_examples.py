"""examples/ keep working: run as a user would, with psql, against the embedded server."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

pytestmark = pytest.mark.skipif(
    shutil.which("psql") is None and not os.environ.get("CI"),
    reason="the examples need psql (in CI they must run)")


@pytest.fixture
def example_env(cli_env):
    """No JOBS_DATABASE_URL: the examples start the embedded server in this test's home."""
    return {key: value for key, value in cli_env.items() if key != "JOBS_DATABASE_URL"}


def run_example(name: str, env: dict[str, str]) -> list[str]:
    result = subprocess.run(["sh", str(EXAMPLES / name)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    return result.stdout.splitlines()


def test_the_incremental_load_and_the_chain(example_env):
    out = run_example("incremental_load.sh", example_env)
    # The second run reads the first one's rows again (the look-back) and upserts them.
    assert out[:4] == ["copied 3 row(s) from example_orders to example_orders_copy",
                       "copied 5 row(s) from example_orders to example_orders_copy",
                       "source:      5 orders", "destination: 5 orders"]
    assert [line.split()[:2] for line in out[-2:]] == [["run", "2"], ["run", "1"]]  # history
    chain = run_example("chain.sh", example_env)
    assert chain[0] == "example_load skipped: nothing new from example_extract"
    assert chain[1] == "copied 7 row(s) from example_orders to example_staging"
    assert chain[2].startswith("copied 7 row(s) from example_staging to example_warehouse, "
                               "after upstream run(s) ")
    assert chain[3:] == ["example_load skipped: nothing new from example_extract",
                         "warehouse: 7 orders"]
