"""Supervisors: ``crewflow run --restart N`` and ``crewflow resume --interrupted``.

Both run crews in child processes (``python -m crewflow ...``) and carry a run on from its
checkpoints when the process executing it died. The supervisor itself imports neither the crew
file nor the crew machinery: whatever kills a child (its memory, a native crash) leaves the
supervisor standing to restart it, and starting one costs little.

Neither ever runs a run twice at once: a child resumes a run only by taking its lease in the
store (`crewflow.store.Lease`), which a live process holding the run refuses. A child killed by
a signal leaves its lease to lapse at once on this machine (its pid is gone), so a restart does
not wait for the lease to expire.

What counts as a death, to restart: an end by a signal other than SIGINT (SIGKILL, an OOM
kill, a segfault), or an exit code that is none of crewflow's own (0 done, 1 the run failed,
2 a usage problem, 130 cancelled): a run that failed on its own terms is not restarted, nor one
stopped with Ctrl-C, nor a command that cannot work (a bad file, a changed crew).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Literal

from rich.console import Console
from rich.text import Text

from crewflow.cli._common import (
    EXIT_CANCELLED,
    EXIT_OK,
    EXIT_RUN_FAILED,
    EXIT_USAGE,
    Database,
    database_exists,
    database_path,
    print_error,
    print_json,
    read_store,
    shown_database,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from crewflow.store import RunRecord, Store

__all__ = ["STOP_GRACE_SECONDS", "parse_delay", "resume_interrupted", "supervise_run"]

STOP_GRACE_SECONDS = 5.0
"""After Ctrl-C at a terminal, how long the supervisor leaves its child (which the terminal
interrupted too) to stop by itself before interrupting it again."""

_OWN_CODES = frozenset({EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, EXIT_CANCELLED})
_DELAY = re.compile(r"(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m|h)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_delay(text: str) -> float:
    """A delay as ``--restart-delay`` takes it, in seconds: ``10s``, ``500ms``, ``2m``, ``1h``,
    or a plain number of seconds (``0``, ``2.5``).

    Raises:
        ValueError: ``text`` is no such delay (negative, another unit, not a number).
    """
    found = _DELAY.fullmatch(text.strip())
    if found is None:
        raise ValueError(
            f"{text!r} is not a delay: give a number of seconds with an optional unit, "
            "e.g. 10s, 500ms, 2m or 0"
        )
    return float(found["value"]) * _UNIT_SECONDS[found["unit"] or "s"]


def _crewflow(*args: str) -> list[str]:
    """The command line of a child ``crewflow ARGS``, on this Python."""
    return [sys.executable, "-m", "crewflow", *args]


def death(code: int) -> str | None:
    """How a child that ended with ``code`` (`subprocess.Popen.returncode`) died, or ``None``
    when it ended on crewflow's own terms (done, failed, a usage problem, cancelled)."""
    if code < 0:
        number = -code
        if number == signal.SIGINT:
            return None  # Ctrl-C: the user stopped it
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"killed by {name}"
    if code in _OWN_CODES:
        return None
    return f"exit code {code}"


# -- crewflow run --restart N ---------------------------------------------------------------------


EXIT_TERMINATED = 128 + signal.SIGTERM
"""The supervisor's exit code when it was sent SIGTERM (as a shell reports a process it ended)."""


class _Terminated(Exception):
    """The supervisor was sent SIGTERM (a service manager stopping it, ``kill PID``)."""


def supervise_run(
    run_args: Sequence[str],
    *,
    restarts: int,
    delay: float,
    run_id: str | None = None,
    resume_options: str = "",
    stderr: Console | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """What ``crewflow run FILE ... --restart N`` does: run ``crewflow run RUN_ARGS --run-id
    RUN_ID`` in a child, and each time the child dies (see `death`), wait ``delay`` seconds
    and run the same command again, which resumes the run from its checkpoints; at most
    ``restarts`` times. Returns the exit code.

    The child inherits the terminal (stdin, stdout and stderr): its live view, its result and
    its errors show as they would without a supervisor. The supervisor prints only between
    children, on stderr: one line per restart, and why it gave up. Ctrl-C stops the child and
    never restarts it; SIGTERM sent to the supervisor is passed on to the child, which stops
    at once (its run is left interrupted, for ``crewflow resume``), and is not restarted either.

    Args:
        run_args: ``crewflow run``'s arguments (the file and options), without ``--restart``.
        restarts: The most restarts (0: run once, report a death, never restart).
        delay: Seconds to wait before each restart.
        run_id: The run's id (default: a fresh one), given to every child.
        resume_options: What the ``crewflow resume`` command shown after giving up needs
            besides the run id (``--db``, ``--model``), with a leading space.
        stderr: Where to report restarts.
        sleep: Waits ``delay`` (tests pass a fake).
    """
    from crewflow._spec import new_id

    err = stderr or Console(stderr=True, highlight=False)
    run_id = run_id or new_id()
    command = _crewflow("run", *run_args, "--run-id", run_id)
    died = 0
    while True:
        try:
            code = _run_child(command)
        except KeyboardInterrupt:
            print_error(err, f"cancelled; run {run_id} was not restarted")
            return EXIT_CANCELLED
        except _Terminated:
            print_error(
                err,
                f"terminated: run {run_id}'s process was sent SIGTERM and not restarted. "
                f"Finish it with: crewflow resume {run_id}{resume_options}",
            )
            return EXIT_TERMINATED
        why = death(code)
        if why is None:
            return code
        if died == restarts:
            print_error(
                err,
                f"run {run_id} was not finished: its process died ({why}), "
                f"{died + 1} time(s) in all, and --restart {restarts} allows no more restarts. "
                f"Finish it with: crewflow resume {run_id}{resume_options}",
            )
            return EXIT_RUN_FAILED
        died += 1
        wait = f" in {delay:g} s" if delay > 0 else ""
        err.print(
            Text(
                f"restart {died} of {restarts}: run {run_id}'s process died ({why}); "
                f"resuming it from its checkpoints{wait}",
                style="yellow",
            ),
            soft_wrap=not err.is_terminal,
        )
        if delay > 0:
            sleep(delay)


def _run_child(command: list[str]) -> int:
    """Run ``command`` in a child on this terminal; its exit code (negative: its signal).

    Raises:
        KeyboardInterrupt: Ctrl-C, once the child stopped.
        _Terminated: SIGTERM, passed on to the child, once it stopped.
    """
    child = subprocess.Popen(command)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return child.wait()
    except KeyboardInterrupt:
        _stop(child)
        raise
    except _Terminated:
        child.terminate()
        child.wait()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


def _stop(child: subprocess.Popen[bytes]) -> None:
    """Stop ``child`` after Ctrl-C: at a terminal, the terminal interrupted it as well, so it
    gets `STOP_GRACE_SECONDS` to stop by itself (a second interrupt would cut its cleanup
    short); otherwise (the supervisor alone was signalled) it is interrupted at once. Another
    Ctrl-C meanwhile kills it."""
    try:
        if _shares_terminal():
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(STOP_GRACE_SECONDS)
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
        child.wait()
    except KeyboardInterrupt:
        child.kill()
        child.wait()


def _shares_terminal() -> bool:
    """Whether this process is in its terminal's foreground process group (so Ctrl-C there
    interrupted the child too)."""
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError, AttributeError):  # no terminal, or not POSIX
        return False


# -- crewflow resume --interrupted ----------------------------------------------------------------

Outcome = Literal["completed", "failed", "skipped"]


@dataclass(frozen=True)
class Resumed:
    """What became of one interrupted run.

    Attributes:
        run_id: The run.
        crew: Its crew's name.
        outcome: ``completed``, ``failed``, or ``skipped`` (another process holds or finished
            it).
        detail: Why it failed or was skipped (empty when it completed).
    """

    run_id: str
    crew: str
    outcome: Outcome
    detail: str = ""


def resume_interrupted(
    *,
    crew: str | None = None,
    parallel: int = 1,
    model: str | None = None,
    force: bool = False,
    as_json: bool = False,
    db: Database | None = None,
    stdout: Console | None = None,
    stderr: Console | None = None,
) -> int:
    """What ``crewflow resume --interrupted`` does: resume every interrupted run (its lease
    lapsed: its process died, or it expired), oldest first, ``parallel`` at once, each by
    ``crewflow resume RUN_ID`` in a child; report each one's outcome. Returns 1 when one
    failed, else 0.

    A run another live process holds (it took the run over since the list was read) is
    skipped: the child's resume is refused by the run's lease, so nothing of it runs twice.
    """
    import anyio

    out = stdout or Console(highlight=False)
    err = stderr or Console(stderr=True, highlight=False)
    path = database_path(db)
    runs = read_store(path, partial(_interrupted, crew=crew)) if database_exists(path) else []
    if not runs:
        if not as_json:
            of = f" of crew {crew!r}" if crew else ""
            out.print(Text(f"no interrupted runs{of} in {shown_database(path)}"), soft_wrap=True)
        return EXIT_OK
    if not as_json:
        err.print(Text(f"resuming {len(runs)} interrupted run(s), {parallel} at once"))
    extra = [*(["--model", model] if model else []), *(["--force"] if force else [])]
    # The database as given (credentials included): the child must open the same one.
    extra += ["--db", str(path)] if db is not None else []
    reporter = partial(_report, out, as_json=as_json)
    try:
        outcomes = anyio.run(_resume_all, runs, parallel, extra, path, reporter)
    except KeyboardInterrupt:
        print_error(err, "cancelled")
        return EXIT_CANCELLED
    failed = [one for one in outcomes if one.outcome == "failed"]
    if not as_json:
        done = sum(one.outcome == "completed" for one in outcomes)
        skipped = len(outcomes) - done - len(failed)
        err.print(Text(f"{done} completed, {len(failed)} failed, {skipped} skipped"))
    return EXIT_RUN_FAILED if failed else EXIT_OK


async def _interrupted(store: Store, *, crew: str | None) -> list[RunRecord]:
    """The store's interrupted runs (of ``crew``), oldest first."""
    from crewflow._records import RunStatus

    runs = await store.list_runs(crew=crew, limit=None)
    return [run for run in reversed(runs) if run.status == RunStatus.INTERRUPTED]


async def _resume_all(
    runs: list[RunRecord],
    parallel: int,
    extra: list[str],
    path: Database,
    report: Callable[[Resumed], None],
) -> list[Resumed]:
    import anyio

    limiter = anyio.CapacityLimiter(parallel)
    outcomes: list[Resumed] = []

    async def one(run: RunRecord) -> None:
        async with limiter:
            outcome = await _resume_one(run, extra, path)
        outcomes.append(outcome)
        report(outcome)

    async with anyio.create_task_group() as group:
        for run in runs:
            group.start_soon(one, run)
    return outcomes


async def _resume_one(run: RunRecord, extra: list[str], path: Database) -> Resumed:
    """Resume ``run`` in a child, unless it is no longer interrupted."""
    import anyio

    skipped = await anyio.to_thread.run_sync(_taken, run.run_id, path)
    if skipped:
        return Resumed(run.run_id, run.crew, "skipped", skipped)
    done = await anyio.run_process(_crewflow("resume", run.run_id, "--quiet", *extra), check=False)
    if done.returncode == EXIT_OK:
        return Resumed(run.run_id, run.crew, "completed")
    # Refused (another process took the run over first) or failed: the run's record tells.
    skipped = await anyio.to_thread.run_sync(_taken, run.run_id, path, True)
    if skipped:
        return Resumed(run.run_id, run.crew, "skipped", skipped)
    why = death(done.returncode)
    return Resumed(run.run_id, run.crew, "failed", why or _error_line(done.stderr))


def _taken(run_id: str, path: Database, after: bool = False) -> str:
    """Why another process holds or finished run ``run_id`` (a reader thread: `read_store`
    runs its own event loop), or ``""`` when it is still to be resumed (``after`` a failed
    resume: when it is not this process's to finish)."""
    from crewflow._records import RunStatus

    record = read_store(path, partial(_get, run_id=run_id))
    if record is None or record.status == RunStatus.INTERRUPTED:
        return ""
    if record.status == RunStatus.RUNNING:
        owner = record.lease.owner if record.lease is not None else "another process"
        return f"another process ({owner}) is running it"
    if record.status == RunStatus.COMPLETED:
        return "another process finished it"
    return "" if after else f"another process ended it ({record.status})"


async def _get(store: Store, *, run_id: str) -> RunRecord | None:
    return await store.get_run(run_id)


def _error_line(stderr: bytes) -> str:
    """The child's ``error: ...`` line (its last), else its last line."""
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    return (errors or lines or ["it ended with no message"])[-1]


def _report(out: Console, outcome: Resumed, *, as_json: bool) -> None:
    if as_json:
        print_json(
            out,
            json.dumps(
                {
                    "run_id": outcome.run_id,
                    "crew": outcome.crew,
                    "outcome": outcome.outcome,
                    "detail": outcome.detail,
                }
            ),
        )
        return
    style = {"completed": "green", "failed": "bold red", "skipped": "yellow"}[outcome.outcome]
    line = Text(f"{outcome.run_id} ({outcome.crew}): ")
    line.append(outcome.outcome, style=style)
    if outcome.detail:
        line.append(f": {outcome.detail}")
    out.print(line, soft_wrap=not out.is_terminal)
