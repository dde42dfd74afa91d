"""bench/run.py keeps working: its quick mode runs every measure on tiny sizes.

Never a timing assertion: CI is a busy shared machine. bench/README.md has a full run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MEASURES = ("`jobs-cli last-success NAME`", "`jobs-cli --help`", "`jobs-cli run --name N -- true`",
            "stdout throughput", "stderr throughput", "wrapper peak RSS",
            "first call on a fresh `JOBS_HOME`", "`status` database time",
            "`metrics` database time", "`last-success` database time", "`list` database time")


def test_quick_mode_prints_every_row_of_the_table():
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("JOBS_", "PG"))}
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick"],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert table[0] == "| measure | baseline | ours | ratio | goal | holds |"
    for measure in MEASURES:
        assert any(line.startswith(f"| {measure}") for line in table), measure
