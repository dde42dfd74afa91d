"""`jobs-cli run`: wrap a command, hand it its watermark, record its outcome, lose nothing.

`wrap` is the whole flow, as in runitor: claim the run, start the command with
the run's environment, supervise it, record how it ended. This module holds
the policy (overlap, --fail-open, the time budget, what the command is told);
the database work is the recorder's, the process handling supervise's.

Before the command starts, a database failure means the command does not run:
an incremental load without its watermark is unsafe (exit 69). --fail-open
runs it anyway, unclaimed: no overlap check, no watermark, no heartbeats, and
its result recorded afterwards (or spooled) with times from this host's clock,
which its message says.

Fencing: a watchdog is started first (see `watchdog`), so that the run's
row names the process group its command will join and the command dies
with the wrapper. While the command runs, a heartbeat that finds the run
ended by someone else stops it (errors.Fenced, exit 77, nothing recorded).
A heartbeat that cannot reach the database leaves the command running
(a database blip must not kill a long load) unless --stop-on-lost-lease
asks to stop it half an interval before the lease runs out, for jobs of
which two copies must never run at once, even on two hosts.
"""

from __future__ import annotations

import math
import os
import pwd
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Mapping, Protocol, Sequence

from . import config
from .db import Database
from .errors import DatabaseUnavailable, Fenced, NotStarted, Overlap, UpstreamNotReady
from .fencing import this_wrapper
from .recorder import LEASE_HEARTBEATS
from .redact import recorded_command
from .ringbuffer import tail_text
from .runs import (Claim, Invocation, Run, RunResult, iso_seconds, validate_lookback,
                   validate_new_name, validate_text, validate_upstream)
from .states import ERROR, SUCCESS
from .supervise import Outcome, supervise
from .watchdog import Watchdog

# --stop-on-lost-lease: the command is gone this many intervals before the lease
# would run out, counted from the start of the last heartbeat that got through.
STOP_BEFORE_LEASE_ENDS = 0.5
# How often `--on-overlap wait` looks whether the live run has ended.
WAIT_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class RunOptions:
    name: str
    source: str = ""
    destination: str = ""
    timeout: float | None = None  # less the time spent waiting for an overlapping run
    kill_after: float = config.DEFAULT_KILL_AFTER_SECONDS
    on_overlap: str = config.SKIP
    fail_open: bool = False
    tail_bytes: int = config.DEFAULT_TAIL_BYTES
    capture_stdout: bool = False
    record_command: bool = True  # with passwords masked; False: no command recorded at all
    heartbeat_seconds: float = config.DEFAULT_HEARTBEAT_SECONDS
    lookback: float = 0.0  # seconds taken off the watermark handed to the command
    after: tuple[str, ...] = ()  # upstream jobs that must have succeeded since (gating)
    stop_on_lost_lease: bool = False


class RunRecorder(Protocol):
    """What `wrap` needs to record a run. `recorder.Recorder` writes to the database;
    the unit tests of `wrap` use one kept in memory."""

    database: Database  # where nested `jobs-cli` calls of the command must go
    ended_by_other: Run | None  # set when a heartbeat found the run ended by someone else
    lease_renewed_at: float  # time.monotonic() of the last lease renewal that got through

    def tell(self, message: str) -> None: ...

    def claim(self, invocation: Invocation, *, lease_seconds: float, allow_overlap: bool,
              lookback: float = 0, after: Sequence[str] = ()) -> Claim: ...

    def heartbeat(self) -> None: ...

    def record(self, result: RunResult) -> Run | None: ...


def wrap(command: Sequence[str], options: RunOptions, recorder: RunRecorder) -> int:
    """Run `command` as a recorded run of `options.name`; return the wrapper's exit code.

    Raises NotStarted (the database failed before the start), Overlap (another
    run is live), Fenced (someone else ended the run while its command ran) or
    SpoolError (the result could be neither recorded nor spooled).
    """
    deadline = None if options.timeout is None else time.monotonic() + options.timeout
    name = validate_new_name(options.name)
    validate_upstream(name, options.after)  # before the database: --fail-open too
    with Watchdog() as watchdog:
        me = this_wrapper()
        invocation = Invocation(
            run_key=uuid.uuid4().hex, name=name, source=validate_text(options.source, "source"),
            destination=validate_text(options.destination, "destination"),
            command=recorded_command(command) if options.record_command else None,
            host=me.host, pid=me.pid, username=current_username(), boot_id=me.boot_id,
            wrapper_started=me.wrapper_started, pgid=watchdog.pgid)
        claim, claimed_at = _claim(invocation, options, recorder, deadline)
        # A claimed run started at the claim, by the server's clock; an unclaimed one
        # starts with the command, by this host's. Either way its length is counted
        # from here: the time to reach the database (a server starting, a retry)
        # came before the server's start_date and must not lengthen the run.
        started_at = time.monotonic()
        started_here = datetime.now(timezone.utc)
        outcome = _supervise(command, options, recorder, claim, claimed_at, deadline, watchdog)
    if outcome.fenced:
        raise Fenced(f"run {claim.run.id} of {name!r} was ended by someone else while its "
                     f"command ran ({_how_it_ended(recorder.ended_by_other)}); the command "
                     "was stopped and nothing recorded")
    if not outcome.succeeded:
        # A timeout, a signal or a missing command leaves no trace on stderr otherwise.
        run = f"run {claim.run.id} of {options.name!r}" if claim else repr(options.name)
        recorder.tell(f"{run} failed: {outcome.description}")
    recorder.record(RunResult(
        invocation=invocation,
        run_id=claim.run.id if claim else None,
        start_date=claim.run.start_date if claim else started_here,
        elapsed=time.monotonic() - started_at,
        status=SUCCESS if outcome.succeeded else ERROR,
        exit_code=outcome.exit_code,
        headline=outcome.description,
        output=tail_text(outcome.tail),
        note=None if claim else (f"times from the clock of {invocation.host}: the database "
                                 "could not be reached when the run started")))
    return outcome.exit_code


def _supervise(command: Sequence[str], options: RunOptions, recorder: RunRecorder,
               claim: Claim | None, claimed_at: float, deadline: float | None,
               watchdog: Watchdog) -> Outcome:
    lease = LEASE_HEARTBEATS * options.heartbeat_seconds
    return supervise(
        command, env=child_environment(os.environ, recorder.database, options.name, claim,
                                       lookback=options.lookback),
        # What waiting for an overlapping run took counts; connecting does not.
        timeout=None if deadline is None else max(0.0, deadline - claimed_at),
        kill_after=options.kill_after, tail_bytes=options.tail_bytes,
        capture_stdout=options.capture_stdout,
        heartbeat=recorder.heartbeat if claim else None,
        heartbeat_interval=options.heartbeat_seconds,
        renew_within=(lease - STOP_BEFORE_LEASE_ENDS * options.heartbeat_seconds
                      if claim and options.stop_on_lost_lease else None),
        renewed_at=recorder.lease_renewed_at, watchdog=watchdog)


def _how_it_ended(run: Run | None) -> str:
    if run is None:
        return "deleted"
    lines = (run.message or "").splitlines()
    return f"{run.status}: {lines[0]}" if lines else run.status


def _claim(invocation: Invocation, options: RunOptions, recorder: RunRecorder,
           deadline: float | None) -> tuple[Claim | None, float]:
    """The claimed run (None: an unclaimed --fail-open run) and the monotonic time of the claim."""
    waiting = False
    while True:
        claimed_at = time.monotonic()
        try:
            claim = recorder.claim(
                invocation, lease_seconds=LEASE_HEARTBEATS * options.heartbeat_seconds,
                allow_overlap=options.on_overlap == config.ALLOW, lookback=options.lookback,
                after=options.after)
        except DatabaseUnavailable as error:
            # Only a database that cannot be reached: one that refuses the run (no
            # table, no permission) would refuse its result too, so that error
            # stands (exit 1) and nothing runs, --fail-open or not.
            if not options.fail_open:
                raise NotStarted(f"{error}; {options.name!r} not run "
                                 "(--fail-open would run it anyway)") from None
            recorder.tell(f"{error}; running {options.name!r} anyway (--fail-open), "
                          "to be recorded when the database is back")
            return None, claimed_at
        if claim.run is not None:
            return claim, claimed_at
        blocking = claim.blocking
        if blocking is None:
            raise UpstreamNotReady(_not_ready(options.name, claim.waiting_for))
        busy = (f"{options.name!r} is already running (run {blocking.id}, pid {blocking.pid} "
                f"on {blocking.host}, since {iso_seconds(int(blocking.start_date.timestamp()))})")
        if options.on_overlap != config.WAIT:
            raise Overlap(f"{busy}; skipped")
        if not waiting:
            recorder.tell(f"{busy}; waiting for it to end")
            waiting = True
        remaining = math.inf if deadline is None else deadline - time.monotonic()
        if remaining <= 0:
            raise Overlap(f"{busy}, and --timeout ran out while waiting; skipped")
        time.sleep(min(WAIT_POLL_SECONDS, remaining))


def _not_ready(name: str, waiting_for: list[str]) -> str:
    upstream = ", ".join(repr(each) for each in waiting_for) or "an upstream job"
    return (f"{name!r} skipped: {upstream} has not succeeded since the last successful run of "
            f"{name!r} started")


def child_environment(base: Mapping[str, str], database: Database, name: str,
                      claim: Claim | None, *, lookback: float = 0.0) -> dict[str, str]:
    """The command's environment: the run, its watermark, and the way to the same database.

    Nested `jobs-cli` calls (report, last-success) must reach the database the
    wrapper used: its URL when one is configured; on the embedded default no
    URL, and JOBS_HOME so they find the same embedded server. Unclaimed, the
    run's variables are unset rather than empty, so a script under `set -u`
    stops instead of mistaking "unknown" for "never succeeded".
    """
    env = dict(base)
    env[config.ENV_NAME] = name
    own = _own_executable()
    if own:
        env[config.ENV_CLI] = own
    env[config.ENV_SCHEMA] = database.schema
    env[config.ENV_HOME] = str(database.home)
    if database.url:
        env[config.ENV_DATABASE_URL] = database.url
    else:
        env.pop(config.ENV_DATABASE_URL, None)
    run_variables = (config.ENV_ID, config.ENV_LAST_SUCCESS, config.ENV_LAST_SUCCESS_ISO,
                     config.ENV_LOOKBACK_SECONDS, config.ENV_LAST_CURSOR, config.ENV_UPSTREAM_RUNS)
    if claim is None:
        for variable in run_variables:
            env.pop(variable, None)
        return env
    last = claim.last_success
    env.update(zip(run_variables, (str(claim.run.id), "" if last is None else str(last),
                                   "" if last is None else iso_seconds(last),
                                   str(validate_lookback(lookback)), claim.cursor or "",
                                   " ".join(map(str, claim.upstream_runs)))))
    return env


def _own_executable() -> str | None:
    """The jobs-cli running this, for a command under cron's minimal PATH."""
    path = os.path.abspath(sys.argv[0])
    if os.path.basename(path) in ("jobs-cli", "jobs") and os.access(path, os.X_OK):
        return path
    return shutil.which("jobs-cli")


def current_username() -> str:
    # The effective user, from the password database: LOGNAME and USER can say anything.
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())
