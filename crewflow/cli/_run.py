"""``crewflow run`` and ``crewflow resume``: load the crew, run it on its own event loop with
live progress, then show its result (or why it failed) and return the exit code.

Imported only by those two commands: it loads the crew machinery.
"""

from __future__ import annotations

import gc
import shlex
from contextlib import nullcontext
from functools import partial
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from rich import box
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from crewflow import events
from crewflow._records import RunStatus
from crewflow._runtime.recording import run_source
from crewflow.cli._common import (
    EXIT_OK,
    Database,
    Interrupted,
    UsageProblem,
    database_exists,
    database_path,
    exit_code,
    find_run,
    format_seconds,
    print_json,
    read_store,
    shown_database,
)
from crewflow.cli._load import check_inputs, crew_from_file, parse_inputs
from crewflow.cli._progress import ProgressView
from crewflow.exceptions import ConfigurationError, CrewRunError, UnknownRunError
from crewflow.health import HealthPolicy
from crewflow.llm._models import check_model
from crewflow.store import SQLiteStore, default_store_path
from crewflow.store._base import POSTGRES_SCHEMES

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from crewflow.crew import Crew, CrewResult
    from crewflow.events import EventSink
    from crewflow.store import RunRecord, Store


def show_result(console: Console, result: CrewResult) -> None:
    """The final output in a panel titled with its task, then a small usage table."""
    final = result.output
    console.print(Panel(Text(final.text), title=Text(final.task, style="bold"), expand=False))
    usage = result.usage
    table = Table(box=box.SIMPLE, show_header=False, pad_edge=False)
    table.add_column(style="dim")
    table.add_column()
    table.add_row("crew", f"{result.crew} ({result.process})")
    table.add_row("requests", f"{usage.requests:,}")
    table.add_row("prompt tokens", f"{usage.prompt_tokens:,}")
    table.add_row("completion tokens", f"{usage.completion_tokens:,}")
    if usage.cost is not None:
        table.add_row("cost", f"${usage.cost:.4f}")
    table.add_row("duration", format_seconds(result.duration))
    if result.restored:
        table.add_row("restored", Text(", ".join(result.restored)))
    table.add_row("run id", result.run_id)
    console.print(table)


def run_file(
    file: Path,
    *,
    model: str | None = None,
    inputs: Sequence[str] = (),
    as_json: bool = False,
    quiet: bool = False,
    db: Database | None = None,
    stdout: Console | None = None,
    stderr: Console | None = None,
    freeze_heap: bool = False,
    run_id: str | None = None,
) -> int:
    """What ``crewflow run`` does; returns the exit code instead of raising.

    With ``run_id``, the run has that id; when the crew's store already holds a run of that
    id, it is finished instead (resumed from its checkpoints, as ``crewflow resume`` does; a
    completed one is read back, and nothing runs): the same command, run again after its process
    died, carries the run on. That is how ``crewflow run --restart`` restarts its child.

    With ``freeze_heap`` (the console script's own process only), everything loaded until the
    crew file is, imports included, moves to the garbage collector's permanent generation
    (`gc.freeze`) before the run: those objects live as long as the process, and a full
    collection during the first kickoff would walk them all (a 40-70 ms pause). The library
    never does this: in an application it would act on the application's whole heap.

    ``quiet`` shows no progress, only the result (and errors); ``as_json`` implies it.
    """
    out = stdout or Console(highlight=False)
    err = stderr or Console(stderr=True, highlight=False)
    view: ProgressView | None = None
    crew: Crew | None = None
    try:
        values = parse_inputs(inputs)
        llm = check_model(model) if model is not None else None
        with crew_from_file(file) as loaded:
            if freeze_heap:
                gc.freeze()
            check_inputs(loaded.crew, values)
            view = None if as_json or quiet else ProgressView(err)
            crew = _recording_in(loaded.crew, db)
            # The absolute path: `crewflow resume` finds the file again from any directory.
            with run_source(str(loaded.path), loaded.attribute):
                if run_id is None:
                    result = kickoff(crew, values, llm, view)
                else:
                    result = carry_out(crew, run_id, values, llm, view)
    except (Exception, KeyboardInterrupt) as exc:
        code = exit_code(err, exc)
        recorded = crew is not None and crew.store is not None
        _resume_hint(err, exc, recorded=recorded, model=model, db=db)
        if view is not None and crew is not None:
            _report_hint(err, crew, _failed_run(exc))
        return code
    _print_result(out, result, as_json=as_json)
    if view is not None:
        _report_hint(err, crew, result.run_id)
    return EXIT_OK


def resume_run(
    run_id: str,
    *,
    file: Path | None = None,
    force: bool = False,
    rerun: bool = False,
    model: str | None = None,
    as_json: bool = False,
    quiet: bool = False,
    db: Database | None = None,
    stdout: Console | None = None,
    stderr: Console | None = None,
) -> int:
    """What ``crewflow resume`` does; returns the exit code instead of raising.

    A completed run is left as it is ("nothing to resume"); ``rerun`` starts a new run of its
    crew with the inputs it was recorded with. ``quiet`` shows no progress, only the result
    (and errors); ``as_json`` implies it.
    """
    out = stdout or Console(highlight=False)
    err = stderr or Console(stderr=True, highlight=False)
    view: ProgressView | None = None
    crew: Crew | None = None
    try:
        llm = check_model(model) if model is not None else None
        record = _recorded(run_id, db)
        run_id = record.run_id if record is not None else run_id  # a short id, made whole
        if record is not None and record.status == RunStatus.COMPLETED and not rerun:
            out.print(
                Text(
                    f"run {run_id} is complete; nothing to resume (crewflow resume {run_id} "
                    "--rerun runs its crew again with the same inputs)"
                ),
                soft_wrap=True,
            )
            return EXIT_OK
        path, attribute = _resume_source(run_id, record, file)
        with crew_from_file(path, attribute) as loaded:
            view = None if as_json or quiet else ProgressView(err)
            crew = _recording_in(loaded.crew, db)
            with run_source(str(loaded.path), loaded.attribute):
                if rerun:
                    assert record is not None  # _resume_source raised otherwise
                    result = kickoff(crew, dict(record.inputs), llm, view)
                else:
                    result = resume(crew, run_id, force, llm, view)
    except (Exception, KeyboardInterrupt) as exc:
        code = exit_code(err, exc)
        _resume_hint(err, exc, recorded=True, model=model, db=db)
        if view is not None and crew is not None:
            _report_hint(err, crew, _failed_run(exc))
        return code
    _print_result(out, result, as_json=as_json)
    if view is not None:
        _report_hint(err, crew, result.run_id)
    return EXIT_OK


def _resume_hint(
    err: Console, exc: BaseException, *, recorded: bool, model: str | None, db: Database | None
) -> None:
    """After a failed or interrupted run that was recorded: the command that finishes it (not
    after a configuration problem, such as a refused API key, which resuming would not fix)."""
    run_id = exc.run_id if isinstance(exc, CrewRunError | Interrupted) else None
    if not recorded or not run_id or isinstance(exc, ConfigurationError):
        return
    if isinstance(exc, Interrupted):
        err.print(Text(f"run {run_id} was cancelled"), soft_wrap=True)
    command = f"crewflow resume {run_id}"
    if model is not None:
        command += f" --model {model}"
    if db is not None:
        command += f" --db {shown_database(db)}"
    err.print(Text(f"finish it later with: {command}"), soft_wrap=True)


def _failed_run(exc: BaseException) -> str | None:
    return exc.run_id if isinstance(exc, CrewRunError | Interrupted) else None


def _report_hint(err: Console, crew: Crew, run_id: str | None) -> None:
    """After a run recorded in a database another process can read: the command that shows it
    (`crewflow report`), with ``--db`` when it is not the default database."""
    path = _database_of(crew.store)
    if path is None or run_id is None:
        return
    command = f"crewflow report {run_id}"
    if path != default_store_path().expanduser():
        command += f" --db {shlex.quote(shown_database(path))}"
    err.print(Text(f"see the run: {command}"), soft_wrap=True)


def _database_of(store: object) -> Database | None:
    """The file or URL of a crew's store setting, or ``None`` without one another process can
    open (no store, a store in memory)."""
    if store == "default":
        return database_path(None)  # CREWFLOW_STORE, else the default file
    if isinstance(store, str) and store.startswith(POSTGRES_SCHEMES):
        return store
    if isinstance(store, SQLiteStore):
        path: Path | None = store.path
    elif isinstance(store, str | PathLike):
        path = Path(store)
    elif type(store).__name__ == "PostgresStore":  # not imported unless in use
        return str(store.url)  # type: ignore[attr-defined]
    else:
        path = None
    return None if path is None or str(path) == ":memory:" else path.expanduser()


def _recorded(run_id: str, db: Database | None) -> RunRecord | None:
    """The run's record in the database, if it has one."""
    path = database_path(db)
    return read_store(path, partial(_get_run, run_id=run_id)) if database_exists(path) else None


def _resume_source(
    run_id: str, record: RunRecord | None, file: Path | None
) -> tuple[Path, str | None]:
    """The file to load the run's crew from, and the crew's recorded attribute in it."""
    source = record.source if record is not None else None
    if file is not None:
        return file, source.attribute if source is not None else None
    if record is None:
        raise UnknownRunError(run_id)
    if source is None:
        raise UsageProblem(
            f"run {run_id!r} was started from code, not by `crewflow run`; pass --file FILE.py "
            "to resume it with the crew in that file"
        )
    recorded = Path(source.file)
    if not recorded.is_file():
        raise UsageProblem(
            f"{recorded}, where run {run_id!r} was started, does not exist any more; pass "
            "--file FILE.py to resume it with the crew in another file"
        )
    return recorded, source.attribute


async def _get_run(store: Store, *, run_id: str) -> RunRecord | None:
    return await find_run(store, run_id)


def kickoff(
    crew: Crew, inputs: dict[str, Any], llm: str | None, view: ProgressView | None
) -> CrewResult:
    """Run ``crew`` on its own event loop (``anyio.run``), showing progress on ``view``."""
    return _watching(crew, view, lambda watched: watched.kickoff(inputs, llm=llm))


def carry_out(
    crew: Crew,
    run_id: str,
    inputs: dict[str, Any],
    llm: str | None,
    view: ProgressView | None,
) -> CrewResult:
    """Run ``crew`` as the run ``run_id``, or finish that run when its store already holds it
    (`Crew._carry_out`), on its own event loop, showing progress."""
    return _watching(crew, view, lambda watched: watched._carry_out(inputs, run_id, llm))


def resume(
    crew: Crew, run_id: str, force: bool, llm: str | None, view: ProgressView | None
) -> CrewResult:
    """Resume the run ``run_id`` of ``crew`` on its own event loop, showing progress."""
    return _watching(crew, view, lambda watched: watched.resume(run_id, force=force, llm=llm))


def _recording_in(crew: Crew, db: Database | None) -> Crew:
    """``crew`` recording its runs in the database ``db`` (a copy), or as it is without one."""
    return crew if db is None else crew.model_copy(update={"store": str(database_path(db))})


def _watching(
    crew: Crew, view: ProgressView | None, start: Callable[[Crew], Awaitable[CrewResult]]
) -> CrewResult:
    started: list[str] = []

    def note(event: events.Event) -> None:
        if isinstance(event, events.RunStarted):
            started.append(event.run_id)

    # The crew's public event hook, on a copy: the user's Crew (frozen) is left as it was and
    # its own on_event still gets every event.
    sink = _chain(note, crew.on_event if view is None else _chain(view, crew.on_event))
    update: dict[str, Any] = {"on_event": sink}
    if view is not None and crew.health is None:
        # The live view shows the run's health: judged under the default policy.
        update["health"] = HealthPolicy()
    watched = crew.model_copy(update=update)
    showing = view.showing() if view is not None else nullcontext()
    try:
        with showing:
            result = anyio.run(start, watched)
            if view is not None:
                view.settle(result)
            return result
    except KeyboardInterrupt as exc:
        raise Interrupted(started[-1] if started else None) from exc


def _chain(first: EventSink, then: EventSink | None) -> EventSink:
    if then is None:
        return first

    def sink(event: events.Event, /) -> None:
        first(event)
        then(event)

    return sink


def _print_result(out: Console, result: CrewResult, *, as_json: bool) -> None:
    if as_json:
        print_json(out, result.model_dump_json(indent=2))
    else:
        show_result(out, result)
