"""Text helpers shared by the library and the CLI: one spelling each."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any


def first_line(text: str | None) -> str:
    """The first line that is not blank, for a one-line summary ("" when there is none)."""
    return next((line for line in (text or "").splitlines() if line.strip()), "")


def error_line(error: BaseException) -> str:
    """An exception in one line: its message's first line, else its type's name."""
    return first_line(str(error)).strip() or type(error).__name__


def iso_utc(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def jsonable(value: Any) -> Any:
    """A value as JSON shows it: timestamps as ISO-8601 in UTC, lists item by item."""
    if isinstance(value, list):
        return [jsonable(item) for item in value]
    return iso_utc(value) if isinstance(value, datetime) else value
