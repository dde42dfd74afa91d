"""Rendering for stdout: JSON, CSV and rich tables.

Data goes to stdout, chatter to stderr. rich is imported only by the
functions that draw tables, so scripted commands never pay for it.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def emit_json(value: Any) -> None:
    json.dump(value, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
