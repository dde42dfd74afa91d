"""Lengths of time on the command line: `90s`, `15m`, `2h`, `1d`, `1h30m`, `1.5h`, `500ms`.

One syntax for every option that takes a duration (`--timeout`, `--kill-after`,
`check --max-age`, `reap --older-than`, `list --since`), and a compact inverse for
showing one, so what the CLI prints can be pasted back into it.

A duration needs its unit: `--timeout 15` would be 15 seconds to one reader and
15 minutes to another, so it is refused. The JOBS_*_SECONDS environment
variables are the exception their names announce: plain seconds
(`parse_seconds`).
"""

from __future__ import annotations

import math
import re

_SECONDS_PER_UNIT = {"d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
_SHOWN_UNITS = ("d", "h", "m", "s")
# A century: beyond it the database's timestamps and intervals overflow.
MAX_SECONDS = 36500 * 86400

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
# `ms` before `m`, or `500ms` would read as 500 minutes followed by garbage.
_UNIT = "ms|s|m|h|d"
_PART = re.compile(rf"({_NUMBER})({_UNIT})")
_DURATION = re.compile(rf"(?:{_NUMBER}(?:{_UNIT}))+")
_BARE_NUMBER = re.compile(_NUMBER)


def parse_duration(text: str) -> float:
    """Seconds in `text`, which needs a unit. Raises ValueError with a one-line message."""
    stripped = text.strip()
    if _BARE_NUMBER.fullmatch(stripped):
        raise ValueError(f"duration {text!r} needs a unit: add one, e.g. {stripped}s, {stripped}m")
    if not _DURATION.fullmatch(stripped):
        raise _invalid(text)
    return _bounded(sum(float(number) * _SECONDS_PER_UNIT[unit]
                        for number, unit in _PART.findall(stripped)), text)


def parse_seconds(text: str) -> float:
    """A plain number of seconds, at least 0 (the JOBS_*_SECONDS variables)."""
    stripped = text.strip()
    if not _BARE_NUMBER.fullmatch(stripped):
        raise ValueError(f"{text!r} is not a number of seconds (e.g. 30 or 0.5)")
    return _bounded(float(stripped), text)


def _bounded(seconds: float, text: str) -> float:
    if not math.isfinite(seconds):
        raise _invalid(text)
    if seconds > MAX_SECONDS:
        raise ValueError(f"duration {text!r} is too long: at most 36500d")
    return seconds


def parse_positive_duration(text: str) -> float:
    """parse_duration for lengths that must be more than zero (timeouts, ages, intervals)."""
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError(f"duration must be more than 0, not {text!r}")
    return seconds


def _invalid(text: str) -> ValueError:
    return ValueError(
        f"invalid duration {text!r}: use a number with ms, s, m, h or d, e.g. 90s, 15m, 2h")


def format_duration(seconds: float) -> str:
    """Compact form with at most two units: `0.4s`, `45s`, `1m30s`, `2h5m`, `3d4h`.

    Below a second it shows tenths; from a second on it rounds to whole seconds and
    drops what is smaller than the second unit shown.
    """
    if seconds < 0:
        return "-" + format_duration(-seconds)
    tenths = round(seconds * 10)
    if tenths < 10:
        return f"{tenths / 10:g}s"
    amounts = []
    rest = round(seconds)
    for unit in _SHOWN_UNITS:
        amount, rest = divmod(rest, _SECONDS_PER_UNIT[unit])
        amounts.append((amount, unit))
    largest = next(index for index, (amount, _) in enumerate(amounts) if amount)
    return "".join(f"{amount}{unit}" for amount, unit in amounts[largest:largest + 2] if amount)
