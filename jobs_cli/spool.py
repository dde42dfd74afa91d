"""Results the database would not take, kept on disk until `jobs-cli flush`.

When a command has run but its result cannot be recorded (the database is
down or restarting), `jobs-cli run` writes the result here, one JSON file per
result in JOBS_HOME/spool, and a later `flush` (or `run`) replays it.

A file appears whole or not at all: it is written under a temporary name,
fsynced, renamed into place and the directory fsynced, so neither a crash nor
a full disk leaves half a result to replay. Readers only look at `*.json`.
Files are private (0600 in a 0700 directory): output tails may hold secrets.

This module only stores and lists entries; what they mean is the recorder's.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from .errors import SpoolError

SUFFIX = ".json"


def spool_dir(home: Path) -> Path:
    return home / "spool"


def save(home: Path, key: str, entry: dict[str, Any]) -> Path:
    """Store `entry` durably under a name made of the time and `key`; return its path."""
    directory = spool_dir(home)
    # Names start with the time so entries replay oldest first.
    path = directory / f"{time.time_ns()}-{key}{SUFFIX}"
    partial = directory / f".{path.name}.partial"
    data = json.dumps(entry, ensure_ascii=False).encode()
    try:
        # parents get the default mode: JOBS_HOME may also be the embedded
        # server's, whose user needs to enter it.
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(partial, path)
        _fsync_directory(directory)
    except OSError as error:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise SpoolError(f"cannot write the spool {directory}: "
                         f"{error.strerror or error}") from None
    return path


def pending(home: Path) -> list[Path]:
    """Entries waiting to be replayed, oldest first (cheap when there are none)."""
    try:
        names = os.listdir(spool_dir(home))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as error:
        raise SpoolError(f"cannot read the spool {spool_dir(home)}: {error.strerror}") from None
    return [spool_dir(home) / name for name in sorted(names)
            if name.endswith(SUFFIX) and not name.startswith(".")]


def load(path: Path) -> dict[str, Any]:
    try:
        entry = json.loads(path.read_bytes())
    except (OSError, ValueError) as error:
        raise SpoolError(f"cannot read spooled result {path}: "
                         f"{getattr(error, 'strerror', None) or error}") from None
    if not isinstance(entry, dict):
        raise SpoolError(f"cannot read spooled result {path}: not a JSON object")
    return entry


def reject(path: Path) -> Path:
    """Move an entry the database refuses for good out of the way; return where it went.

    It is kept (it is the only record of that run's outcome) but no longer replayed.
    """
    directory = path.parent / "rejected"
    target = directory / path.name
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        os.rename(path, target)
        _fsync_directory(directory)
        _fsync_directory(path.parent)
    except OSError as error:
        raise SpoolError(f"cannot move rejected result {path} to {directory}: "
                         f"{error.strerror or error}") from None
    return target


def discard(path: Path) -> None:
    """Remove a replayed entry; one that another replayer removed first is fine."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as error:
        raise SpoolError(f"cannot remove replayed result {path}: {error.strerror}") from None


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
