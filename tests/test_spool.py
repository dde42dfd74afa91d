"""The spool: durable, private, whole-or-nothing files of results."""

from __future__ import annotations

import os
import stat

import pytest

from jobs_cli import spool
from jobs_cli.errors import EXIT_IOERR, SpoolError


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_an_entry_round_trips_and_is_private(tmp_path):
    home = tmp_path / "home"
    path = spool.save(home, "k1", {"result": {"message": "naïve \ufffd"}})
    assert path.parent == spool.spool_dir(home) and path.name.endswith("-k1.json")
    assert spool.load(path) == {"result": {"message": "naïve \ufffd"}}
    assert (mode(path), mode(path.parent)) == (0o600, 0o700)
    # JOBS_HOME may be the embedded server's too, whose user must enter it:
    # only the spool itself is closed.
    umask = os.umask(0)
    os.umask(umask)
    assert mode(home) == 0o777 & ~umask
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


def test_pending_lists_entries_oldest_first_and_ignores_the_rest(tmp_path):
    first = spool.save(tmp_path, "a", {})
    second = spool.save(tmp_path, "b", {})
    (spool.spool_dir(tmp_path) / f".{first.name}.partial").write_text("{")
    (spool.spool_dir(tmp_path) / "notes.txt").write_text("")
    assert spool.pending(tmp_path) == [first, second]


def test_no_spool_is_nothing_pending(tmp_path):
    assert spool.pending(tmp_path / "nowhere") == []


def test_discarding_twice_is_fine(tmp_path):
    path = spool.save(tmp_path, "a", {})
    spool.discard(path)
    spool.discard(path)
    assert spool.pending(tmp_path) == []


def test_a_spool_that_cannot_be_written_is_a_loud_error(tmp_path):
    # A file where the directory should be stops root as well as anyone.
    home = tmp_path / "home"
    home.write_text("")
    with pytest.raises(SpoolError) as raised:
        spool.save(home, "k", {})
    assert raised.value.exit_code == EXIT_IOERR
    message = str(raised.value)
    assert message.startswith(f"cannot write the spool {home}/spool") and "\n" not in message


def test_a_damaged_entry_is_an_error_naming_it(tmp_path):
    path = spool.save(tmp_path, "a", {})
    path.write_text("{not json")
    with pytest.raises(SpoolError, match=f"cannot read spooled result {path}"):
        spool.load(path)
