"""Masking secrets in a command line before `run` records it.

An ETL command often carries its credentials: `psql postgresql://etl:s3cret@db/x`,
`pg_dump "host=db password=s3cret"`, `--password=s3cret`. The recorded
command is readable by everyone who may read runs, so each argument is masked
before it is stored: the password of any `scheme://user:password@` URL, and the
value of any `…password=` setting (libpq key=value strings, query strings,
`--db-password=`, `PGPASSWORD=` in a `sh -c` script). When in doubt it masks
more, never less; `run --no-record-command` stores no command at all.
"""

from __future__ import annotations

import re
import shlex
from typing import Sequence

MASK = "***"

# userinfo "user:password@" after "scheme://"; the password runs to the last "@"
# before a "/" or a blank (an unencoded "@" in it still ends up masked).
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/:@]*:)[^\s/]*@")
# A value may be quoted (libpq and shells escape with a backslash); else it runs
# to a blank, an "&" (query strings) or a ";" (shell scripts).
_SETTING_PASSWORD = re.compile(
    r"(?P<head>(?<![A-Za-z0-9])[\w.\-]*passw(?:or)?d\s*=\s*)"
    r"""(?:'(?:[^'\\]|\\.)*'?|"(?:[^"\\]|\\.)*"?|[^\s&;'"]+)""",
    re.IGNORECASE)
# An option whose next argument is a password: --password s3cret, -password s3cret.
_PASSWORD_OPTION = re.compile(r"-{1,2}[\w.\-]*passw(?:or)?d", re.IGNORECASE)


def redact(argument: str) -> str:
    """The argument with every password it recognisably holds masked."""
    masked = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", argument)
    return _SETTING_PASSWORD.sub(lambda m: f"{m['head']}{MASK}", masked)


def recorded_command(command: Sequence[str]) -> str:
    """The command line as `run` records it: shell-quoted, passwords masked, and bytes
    that are not UTF-8 (a latin-1 file name) shown as U+FFFD, as in the output tail:
    the command itself still gets its arguments byte for byte."""
    masked = [MASK if _PASSWORD_OPTION.fullmatch(previous) else redact(argument)
              for previous, argument in zip(["", *command], command)]
    return shlex.join(masked).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
