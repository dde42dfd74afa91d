"""Soak: hundreds of `jobs-cli run`s while the server restarts and wrappers are SIGKILLed.

A few jobs, each run by a couple of lanes that start `jobs-cli run` back to back,
so runs of a job contend. A seeded schedule restarts the database server at
random (outages shorter than JOBS_START_RETRY_SECONDS) and SIGKILLs some
wrappers at a random moment of their life: while claiming, while the command
runs, while recording. Every command takes a non-blocking flock on a file of
its job first and writes a violation if it cannot: two commands of one job at
once. At the end the server is left up, the spool flushed and `reap` run once,
and the record is compared with what happened:

    lost        runs whose command ran to its end under a live wrapper, and whose
                record is missing or wrong (status, exit code)
    doubled     records beyond one per wrapper, records no wrapper made, and
                records of runs whose command never ran without their wrapper
                being killed
    stuck       runs still in progress after everything ended and `reap` ran
    overlapped  commands that found another command of their job running
    skipped     runs whose command did not run because the database was away
                (exit 69)

Runs whose wrapper was SIGKILLed count only for doubled, stuck and overlapped.
Skips because another run of the job was live (exit 75) are the overlap rule
working, and are shown apart. All five figures must be 0.

    python bench/soak.py                       # 400 runs, about 2-4 minutes
    python bench/soak.py --runs 60 --seed 3    # any other size and schedule

The suite runs a short version (tests/test_soak.py). Linux only (flock(1), /proc).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from jobs_cli.migrations import migrate
from jobs_cli.server import EmbeddedServer

JOBS_CLI = str(Path(sys.executable).parent / "jobs-cli")
EXIT_NOT_STARTED, EXIT_OVERLAP, EXIT_FENCED = 69, 75, 77
# When a wrapper is SIGKILLed: seconds after its start (claiming), or after its
# command started (the command running, or its result being recorded).
# The command's moment is the one fencing is about: twice as likely.
KILL_MOMENTS = ("start", "command", "command", "end")

# The command: hold the job's lock while it runs, or say that it could not.
COMMAND = """
flock -n -E 99 "$SOAK_DIR/$JOBS_NAME.lock" sh -c '
    echo "$SOAK_TOKEN $JOBS_ID" >> "$SOAK_DIR/ran"; sleep "$SOAK_SLEEP"; exit "$SOAK_EXIT"'
code=$?
[ $code = 99 ] && echo "$SOAK_TOKEN $JOBS_NAME" >> "$SOAK_DIR/violations"
exit $code
"""


@dataclass
class Settings:
    runs: int = 400
    jobs: int = 3
    lanes: int = 2  # per job
    seed: int = 1
    kill_share: float = 0.1  # of the wrappers, SIGKILLed at a random moment
    longest_command: float = 2.0  # seconds a command sleeps, at most
    restart_every: tuple[float, float] = (2.0, 6.0)  # seconds between restarts
    outage: tuple[float, float] = (0.5, 3.0)  # seconds the server stays down
    start_retry_seconds: float = 10.0  # JOBS_START_RETRY_SECONDS, longer than any outage
    heartbeat_seconds: float = 1.0
    max_seconds: float = 600.0  # no new run starts after this


@dataclass
class Planned:
    token: str
    job: str
    sleep: float
    exit_code: int
    kill: tuple[str, float] | None  # (when, seconds after that): see KILL_MOMENTS


@dataclass
class Wrapper:
    planned: Planned
    pid: int
    started: int | None  # start time in clock ticks, as the run records it
    killed: bool = False
    exit_code: int | None = None


@dataclass
class Figures:
    lost: int = 0
    doubled: int = 0
    stuck: int = 0
    overlapped: int = 0
    skipped: int = 0
    # What is not a failure, shown for context.
    runs: int = 0
    killed: int = 0
    killed_running: int = 0  # of those, killed after their command had started
    restarts: int = 0
    overlap_skips: int = 0
    fenced: int = 0
    spooled: int = 0
    seconds: float = 0.0
    details: list[str] = field(default_factory=list)

    @property
    def failures(self) -> int:
        return self.lost + self.doubled + self.stuck + self.overlapped + self.skipped

    def report(self, settings: Settings) -> str:
        return (f"soak: seed {settings.seed}, {self.runs} runs of {settings.jobs} jobs "
                f"({settings.lanes} lanes each), {self.restarts} server restarts (down "
                f"{settings.outage[0]}-{settings.outage[1]} s), {self.killed} wrappers "
                f"SIGKILLed ({self.killed_running} while their command ran), {self.seconds:.0f} s\n"
                f"lost {self.lost}, doubled {self.doubled}, stuck {self.stuck}, "
                f"overlapped {self.overlapped}, skipped {self.skipped}\n"
                f"(not failures: {self.overlap_skips} skipped because a run of the job was "
                f"live (exit 75), {self.fenced} fenced (exit 77), {self.spooled} results "
                "spooled and flushed)"
                + "".join(f"\n  {line}" for line in self.details[:20]))


def plan(settings: Settings) -> tuple[list[list[Planned]], list[tuple[float, float]]]:
    """The seeded schedule: each lane's runs, and the server's (pause before, outage)."""
    rng = random.Random(settings.seed)
    lanes = [[] for _ in range(settings.jobs * settings.lanes)]
    for number in range(settings.runs):
        lane = number % len(lanes)
        sleep = round(rng.uniform(0.0, settings.longest_command), 2)
        killed = rng.random() < settings.kill_share
        moment = rng.choice(KILL_MOMENTS)
        delay = {"start": rng.uniform(0.0, 0.5), "command": rng.uniform(0.0, sleep),
                 "end": sleep + rng.uniform(0.0, 0.2)}[moment]
        lanes[lane].append(Planned(
            token=f"t{number}", job=f"job{lane % settings.jobs}", sleep=sleep,
            exit_code=rng.choice((0, 0, 0, 3)),
            kill=(moment, round(delay, 2)) if killed else None))
    restarts = [(round(rng.uniform(*settings.restart_every), 2),
                 round(rng.uniform(*settings.outage), 2)) for _ in range(10_000)]
    return lanes, restarts


def soak(settings: Settings) -> Figures:
    lanes, restarts = plan(settings)
    work = Path(tempfile.mkdtemp(prefix="jobs-cli-soak-"))
    work.chmod(0o755)  # as root the server runs as another user, who must enter it
    server = EmbeddedServer(work / "server")
    try:
        conninfo = server.ensure_running()
        with psycopg.connect(conninfo, autocommit=True) as conn:
            migrate(conn, "public")
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("JOBS_", "PG"))}
        env.update(JOBS_DATABASE_URL=conninfo, JOBS_HOME=str(work / "home"),
                   JOBS_HEARTBEAT_SECONDS=str(settings.heartbeat_seconds),
                   JOBS_START_RETRY_SECONDS=str(settings.start_retry_seconds),
                   JOBS_RETRY_SECONDS=str(settings.start_retry_seconds), SOAK_DIR=str(work))
        (work / "logs").mkdir()
        began = time.monotonic()
        done = threading.Event()
        restarted = []
        chaos = threading.Thread(target=_restart, args=(server, restarts, done, restarted))
        chaos.start()
        wrappers: list[Wrapper] = []
        try:
            threads = [threading.Thread(target=_lane, args=(runs, env, work, wrappers,
                                                            began + settings.max_seconds))
                       for runs in lanes]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            done.set()
            chaos.join()
        figures = _settle_and_count(server, env, work, wrappers)
        figures.restarts = len(restarted)
        figures.seconds = time.monotonic() - began
        return figures
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def _restart(server: EmbeddedServer, schedule: list[tuple[float, float]],
             done: threading.Event, restarted: list[float]) -> None:
    for pause, outage in schedule:
        if done.wait(pause):
            return
        server.stop()
        done.wait(outage)  # cut short at the end, the server comes back either way
        server.ensure_running()
        restarted.append(outage)


def _lane(runs: list[Planned], env: dict[str, str], work: Path, wrappers: list[Wrapper],
          stop_at: float) -> None:
    for planned in runs:
        if time.monotonic() > stop_at:
            return
        with (work / "logs" / f"{planned.token}.err").open("wb") as log:
            process = subprocess.Popen(
                [JOBS_CLI, "run", "--name", planned.job, "--", "sh", "-c", COMMAND],
                env={**env, "SOAK_TOKEN": planned.token, "SOAK_SLEEP": str(planned.sleep),
                     "SOAK_EXIT": str(planned.exit_code)},
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        wrapper = Wrapper(planned, process.pid, _start_ticks(process.pid))
        wrappers.append(wrapper)
        if planned.kill is not None:
            moment, delay = planned.kill
            if moment != "start":
                # Until its command has started, or the wrapper has ended without it.
                while process.poll() is None and planned.token not in _ran(work):
                    time.sleep(0.01)
            try:
                process.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                wrapper.killed = True
                process.send_signal(signal.SIGKILL)
        wrapper.exit_code = process.wait()


def _settle_and_count(server: EmbeddedServer, env: dict[str, str], work: Path,
                      wrappers: list[Wrapper]) -> Figures:
    figures = Figures(runs=len(wrappers), killed=sum(w.killed for w in wrappers))
    conninfo = server.ensure_running()
    spool = Path(env["JOBS_HOME"]) / "spool"
    figures.spooled = len(list(spool.glob("*.json"))) if spool.is_dir() else 0
    for command in (["flush"], ["reap"]):
        subprocess.run([JOBS_CLI, *command], env=env, stdout=subprocess.DEVNULL, check=False)
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute("SELECT id, status, exit_code, pid, wrapper_started FROM jobs"
                            ).fetchall()
    ran = _ran(work)
    by_wrapper = defaultdict(list)
    for row in rows:
        by_wrapper[(row[3], row[4])].append(row)
    figures.stuck = sum(1 for row in rows if row[1] == "in_progress")
    figures.overlapped = len(_lines(work / "violations"))
    mapped = 0
    for wrapper in wrappers:
        planned, code = wrapper.planned, wrapper.exit_code
        records = by_wrapper.get((wrapper.pid, wrapper.started), [])
        mapped += len(records)
        figures.doubled += max(0, len(records) - 1)
        if wrapper.killed:
            figures.killed_running += planned.token in ran
            continue
        if code == EXIT_OVERLAP:
            figures.overlap_skips += 1
        elif code == EXIT_FENCED:
            figures.fenced += 1
        elif code == EXIT_NOT_STARTED:
            figures.skipped += 1
        if planned.token not in ran:
            if records:
                figures.doubled += 1
                figures.details.append(f"{planned.token}: recorded, but its command never ran "
                                       f"(exit {code}: {_last_line(work, planned.token)})")
            elif code not in (EXIT_OVERLAP, EXIT_NOT_STARTED):
                figures.details.append(f"{planned.token}: exit {code}, command never ran")
            continue
        recorded = [row for row in records if row[0] in ran[planned.token]]
        if code != planned.exit_code or not recorded or recorded[0][2] != planned.exit_code \
                or recorded[0][1] != ("success" if planned.exit_code == 0 else "error"):
            figures.lost += 1
            figures.details.append(f"{planned.token}: exit {code}, recorded {recorded}")
    figures.doubled += len(rows) - mapped
    return figures


def _start_ticks(pid: int) -> int:
    """Field 22 of /proc/PID/stat, zombie or not: not waited for yet, it is still there."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rindex(")") + 2:].split()[19])


def _ran(work: Path) -> dict[str, list[int]]:
    """The runs whose command started: token -> the JOBS_IDs it was given."""
    ran = defaultdict(list)
    for line in _lines(work / "ran"):
        token, run_id = line.split()
        ran[token].append(int(run_id))
    return ran


def _last_line(work: Path, token: str) -> str:
    """The last line the wrapper of `token` wrote on stderr."""
    lines = _lines(work / "logs" / f"{token}.err")
    return lines[-1] if lines else ""


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def main() -> int:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=defaults.runs)
    parser.add_argument("--jobs", type=int, default=defaults.jobs)
    parser.add_argument("--lanes", type=int, default=defaults.lanes, help="per job")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--kill-share", type=float, default=defaults.kill_share)
    parser.add_argument("--max-seconds", type=float, default=defaults.max_seconds)
    args = parser.parse_args()
    settings = Settings(runs=args.runs, jobs=args.jobs, lanes=args.lanes, seed=args.seed,
                        kill_share=args.kill_share, max_seconds=args.max_seconds)
    figures = soak(settings)
    print(figures.report(settings))
    return 1 if figures.failures else 0


if __name__ == "__main__":
    sys.exit(main())
