"""The ``crewflow`` command line.

```
crewflow run examples/research.py --input topic=batteries --model openai/gpt-4o-mini
crewflow run crew.py --json | jq .outputs
crewflow runs --crew research --limit 5          # recorded runs, newest first
crewflow show RUN_ID                              # tasks, attempts, timing, usage, outputs
crewflow resume RUN_ID                            # finish a failed or killed run
crewflow optimize --crew research                 # the optimizer's report
crewflow cache clear
crewflow --version
```

Exit codes: 0 success, 1 the run failed (`CrewRunError`), 2 a usage or configuration problem
(bad arguments, a file that cannot be imported or holds no crew, a bad model, missing inputs,
an unknown run id, a changed crew refused by resume, an unreadable database), 130 cancelled
with Ctrl-C. Errors are one line on stderr, never a traceback.

The commands that read the run database (``runs``, ``show``, ``optimize``, ``cache clear``)
never create it, and import nothing beyond the store (``crewflow runs`` must stay fast).

This module is imported only by the console script (and ``python -m crewflow``), never by
``import crewflow``, so it may import typer and rich at the top.
"""

import importlib.util
import json
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Literal, TypeVar

import anyio
import typer
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from crewflow import events
from crewflow._logging import LEVEL_ENV
from crewflow._runtime.recording import run_source
from crewflow._version import __version__
from crewflow.crew import Crew, CrewResult
from crewflow.events import EventSink
from crewflow.exceptions import (
    ConfigurationError,
    CrewChanged,
    CrewflowError,
    CrewPartialFailure,
    CrewRunError,
    StoreError,
    TaskFailed,
    UnknownRunError,
)
from crewflow.llm._models import check_model
from crewflow.store import (
    AttemptRow,
    MemoryStore,
    OutputRow,
    RunRecord,
    RunStatus,
    SQLiteStore,
    Store,
    default_store_path,
)

__all__ = ["app", "main"]

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_USAGE = 2
EXIT_CANCELLED = 130

DEFAULT_CREW_NAME = "crew"
"""``Crew.name``'s default: a crew still named this is named after its file by ``crewflow run``."""

app = typer.Typer(
    name="crewflow",
    help="Run crews of LLM agents.",
    no_args_is_help=True,
    add_completion=False,
    # Typer's pretty exceptions print tracebacks with local variables (API keys, prompts):
    # every error is caught and reported as one line instead.
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
)


class UsageProblem(Exception):
    """A problem with the command line or the crew file (exit code 2)."""


# -- finding the crew ---------------------------------------------------------------------------


def parse_inputs(pairs: Sequence[str]) -> dict[str, Any]:
    """Turn ``KEY=VALUE`` strings into inputs; a VALUE that parses as JSON is used as JSON.

    ``n=3`` gives ``3``, ``tags=["a","b"]`` a list, ``topic=batteries`` the string. A key given
    twice keeps its last value.

    Raises:
        UsageProblem: A pair without ``=`` or with an empty key.
    """
    inputs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageProblem(
                f"--input {pair!r} is not KEY=VALUE; write e.g. --input topic=batteries"
            )
        try:
            inputs[key] = json.loads(raw)
        except ValueError:
            inputs[key] = raw
    return inputs


@dataclass(frozen=True)
class CrewFile:
    """A crew loaded from a file by `crew_from_file`.

    Attributes:
        crew: The crew, named after the file when it kept the default name.
        path: The file, absolute and resolved (what a run records, so that ``crewflow resume``
            finds it from any directory).
        attribute: The module attribute that holds the crew.
    """

    crew: Crew
    path: Path
    attribute: str


@contextmanager
def crew_from_file(path: Path, attribute: str | None = None) -> Iterator[CrewFile]:
    """Import ``path`` as a module and yield its crew, named after the file by default.

    The crew is the module's ``attribute`` when given and it holds a Crew, else the one
    `find_crew` picks. The file's directory goes first on ``sys.path`` (so its sibling imports
    work) and the module is registered in ``sys.modules`` for as long as the context lasts
    (pydantic resolves models through it); both are undone afterwards. The module is not
    ``__main__``, so an ``if __name__ == "__main__":`` block in the file does not run.

    Raises:
        UsageProblem: The file is missing, cannot be imported, or holds no crew or several.
        ConfigurationError: The file's own specs are invalid (raised while importing it).
    """
    path = path.expanduser()
    if not path.is_file():
        what = "is a directory, not" if path.is_dir() else "does not exist; expected"
        raise UsageProblem(f"{path} {what} a Python file defining a Crew")
    path = path.resolve()
    directory = str(path.parent)
    module_name = path.stem if path.stem not in sys.modules else f"_crewflow_run_{path.stem}"
    added_path = directory not in sys.path
    if added_path:
        sys.path.insert(0, directory)
    try:
        module = _import(path, module_name)
        found = getattr(module, attribute, None) if attribute else None
        if isinstance(found, Crew) and attribute:
            name, crew = attribute, found
        else:
            name, crew = find_crew(module, path)
        yield CrewFile(_named(crew, path.stem), path, name)
    finally:
        sys.modules.pop(module_name, None)
        if added_path:
            with suppress(ValueError):  # the crew's code removed it itself
                sys.path.remove(directory)


def _import(path: Path, module_name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UsageProblem(f"{path} is not a Python file (expected a .py file defining a Crew)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except ConfigurationError:
        raise
    except SyntaxError as exc:
        where = f"line {exc.lineno}" if exc.lineno else "unknown line"
        raise UsageProblem(f"{path.name} has a syntax error at {where}: {exc.msg}") from None
    except (Exception, SystemExit) as exc:
        raise UsageProblem(
            f"importing {path.name} raised {type(exc).__name__}: {exc}".rstrip(": ")
        ) from None
    return module


def find_crew(module: ModuleType, path: Path) -> tuple[str, Crew]:
    """The module's crew and its attribute name: ``crew``, else its only `Crew` attribute.

    Raises:
        UsageProblem: ``crew`` is not a Crew, or there is no Crew or several.
    """
    named = getattr(module, "crew", None)
    if named is not None:
        if isinstance(named, Crew):
            return "crew", named
        raise UsageProblem(
            f"`crew` in {path.name} is a {type(named).__name__}, not a Crew; name the Crew to "
            "run `crew`"
        )
    found: dict[str, Crew] = {}
    for attribute, value in vars(module).items():
        if isinstance(value, Crew) and all(value is not crew for crew in found.values()):
            found[attribute] = value
    if len(found) == 1:
        return next(iter(found.items()))
    if not found:
        raise UsageProblem(
            f"{path.name} defines no Crew at module level; add one named `crew`, "
            "e.g. crew = Crew(tasks=[...])"
        )
    names = ", ".join(sorted(found))
    raise UsageProblem(
        f"{path.name} defines {len(found)} crews ({names}); name the one to run `crew`"
    )


def check_inputs(crew: Crew, inputs: dict[str, Any]) -> None:
    """Name every template input the crew needs and the command line did not give.

    `Crew.kickoff` checks this too; this message says how to pass them with ``--input``.

    Raises:
        UsageProblem: Some ``{placeholders}`` have no ``--input``.
    """
    needed = crew.graph.placeholders
    missing = sorted(set(needed) - set(inputs))
    if missing:
        detail = "; ".join(f"{name!r} (used by {', '.join(needed[name])})" for name in missing)
        example = " ".join(f"--input {name}=..." for name in missing)
        raise UsageProblem(f"missing inputs for the task templates: {detail}; pass {example}")


def _named(crew: Crew, stem: str) -> Crew:
    # Crew is frozen: a copy, not a change to the user's object. model_copy keeps the private
    # state built at construction (graph, process), so the copy runs exactly like the original.
    if crew.name == DEFAULT_CREW_NAME and stem:
        return crew.model_copy(update={"name": stem})
    return crew


# -- progress -----------------------------------------------------------------------------------

_Status = Literal["running", "finished", "retrying", "waiting", "failed", "skipped"]
_SYMBOLS: dict[_Status, tuple[str, str]] = {
    "running": ("▶", "cyan"),
    "finished": ("✓", "green"),
    "retrying": ("↻", "yellow"),
    "waiting": ("…", "yellow"),
    "failed": ("✗", "red"),
    "skipped": ("-", "dim"),
}


@dataclass
class _TaskLine:
    name: str
    status: _Status
    detail: str
    spinner: Spinner


class ProgressView:
    """Turns run events into one status line per task on ``console``.

    On a terminal the lines live in place (a spinner for running tasks); elsewhere (a pipe, a
    CI log) each change is printed as its own line. The view is an `crewflow.events.EventSink`.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self._lines: dict[str, _TaskLine] = {}
        self._lock = threading.Lock()  # sinks may be called from a sync tool's worker thread
        self._live: Live | None = None

    @contextmanager
    def showing(self) -> Iterator[None]:
        """Keep the live display up (on a terminal) while the run goes."""
        if not self.console.is_terminal:
            yield
            return
        with Live(self.render(), console=self.console, refresh_per_second=10) as live:
            self._live = live
            try:
                yield
            finally:
                live.update(self.render())
                self._live = None

    def __call__(self, event: events.Event, /) -> None:
        update = self._describe(event)
        if update is None:
            return
        name, status, detail = update
        with self._lock:
            line = self._lines.get(name)
            if line is None:
                line = self._lines[name] = _TaskLine(name, status, detail, Spinner("dots"))
            line.status, line.detail = status, detail
            if self._live is not None:
                self._live.update(self.render())
            else:
                self.console.print(self._line(line, spinner=False), soft_wrap=True)

    def render(self) -> RenderableType:
        """The current state: one line per task that has started."""
        return Group(*(self._line(line, spinner=True) for line in self._lines.values()))

    @staticmethod
    def _line(line: _TaskLine, *, spinner: bool) -> RenderableType:
        symbol, style = _SYMBOLS[line.status]
        text = Text.assemble((line.name, "bold"), " ", (line.status, style), f"  {line.detail}")
        if spinner and line.status == "running":
            line.spinner.update(text=text)
            return line.spinner
        return Text.assemble((symbol, style), " ", text)

    @staticmethod
    def _describe(event: events.Event) -> tuple[str, _Status, str] | None:
        if isinstance(event, events.TaskStarted):
            again = f", attempt {event.attempt}" if event.attempt > 1 else ""
            return event.task, "running", f"{event.agent}{again}"
        if isinstance(event, events.TaskFinished):
            tokens = event.prompt_tokens + event.completion_tokens
            return event.task, "finished", f"in {_seconds(event.duration)}, {tokens:,} tokens"
        if isinstance(event, events.TaskRetrying):
            return (
                event.task,
                "retrying",
                f"attempt {event.attempt} failed ({event.error}); next in {_seconds(event.delay)}",
            )
        if isinstance(event, events.LLMCallRetrying):
            status = f"provider error {event.status_code}" if event.status_code else "call failed"
            return event.task, "retrying", f"{status}; calling again in {_seconds(event.delay)}"
        if isinstance(event, events.TaskFallback):
            return event.task, "retrying", f"{event.agent} gave up; {event.fallback} takes over"
        if isinstance(event, events.LimiterWait):
            return event.task, "waiting", f"waited {_seconds(event.waited)} for limits"
        if isinstance(event, events.TaskSkipped):
            return event.task, "skipped", f"because {', '.join(event.because)} failed"
        if isinstance(event, events.TaskFailed):
            plural = "s" if event.attempts != 1 else ""
            return (
                event.task,
                "failed",
                f"after {event.attempts} attempt{plural}: {event.error_type}: {event.error}",
            )
        return None


def _seconds(value: float) -> str:
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


# -- results and failures -----------------------------------------------------------------------


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
    table.add_row("duration", _seconds(result.duration))
    if result.restored:
        table.add_row("restored", Text(", ".join(result.restored)))
    table.add_row("run id", result.run_id)
    console.print(table)


def show_failure(console: Console, error: CrewRunError) -> None:
    """Why the run failed, and which tasks had finished (their outputs are not lost)."""
    _error(console, f"run failed: {error}")
    if isinstance(error, TaskFailed):
        console.print(Text(f"failed task: {error.task}"), soft_wrap=True)
    if isinstance(error, CrewPartialFailure) and error.skipped:
        console.print(Text(f"skipped: {', '.join(error.skipped)}"), soft_wrap=True)
    finished = ", ".join(error.outputs) if error.outputs else "none"
    console.print(Text(f"finished before the failure: {finished}"), soft_wrap=True)


def _error(console: Console, message: str) -> None:
    # Text, not markup: messages hold brackets ("tasks: ['a']") that rich would swallow.
    console.print(Text(f"error: {message}", style="bold red"), soft_wrap=True)


# -- commands -----------------------------------------------------------------------------------


def _version(value: bool) -> None:
    if value:
        typer.echo(f"crewflow {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Run crews of LLM agents."""


_JSON_HELP = "Print only JSON (for scripts)."
Database = Annotated[
    Path | None,
    typer.Option(
        "--db",
        metavar="PATH",
        help="The run database (default: runs.db in CREWFLOW_HOME or the user data directory).",
    ),
]


@app.command()
def run(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE.py", help="A Python file defining a Crew (named `crew` if several)."
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help='Use this model for every agent, e.g. "offline" or "openai/gpt-4o-mini".',
        ),
    ] = None,
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            "-i",
            metavar="KEY=VALUE",
            help="A template input (repeatable); VALUE is parsed as JSON when it is JSON.",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print only the result as JSON (for scripts).")
    ] = False,
    db: Database = None,
) -> None:
    """Run the crew defined in FILE and show its progress and final output."""
    _exit(run_file(file, model=model, inputs=inputs or [], as_json=as_json, db=db))


@app.command("resume")
def resume_command(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run to resume.")],
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            metavar="FILE.py",
            help="Load the crew from this file instead of the one the run was started from.",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Resume even if the crew changed since the run.")
    ] = False,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="The --model the run was started with, if it was given one."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
    db: Database = None,
) -> None:
    """Finish a failed or interrupted run: only the tasks that had not finished run again.

    The crew is loaded from the file the run was started from (`crewflow run` recorded it).
    """
    _exit(resume_run(run_id, file=file, force=force, model=model, as_json=as_json, db=db))


@app.command("runs")
def runs_command(
    crew: Annotated[
        str | None, typer.Option("--crew", "-c", metavar="NAME", help="Only this crew's runs.")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, metavar="N", help="Show at most N runs.")
    ] = 20,
    as_json: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
    db: Database = None,
) -> None:
    """List the recorded runs, newest first."""
    _exit(list_runs(crew=crew, limit=limit, as_json=as_json, db=db))


@app.command("show")
def show_command(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run to show.")],
    full: Annotated[
        bool, typer.Option("--full", help="Print every output whole, however long.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
    db: Database = None,
) -> None:
    """Show one run: its tasks, attempts, timing, usage and outputs."""
    _exit(show_run(run_id, as_json=as_json, full=full, db=db))


@app.command("optimize")
def optimize_command(
    crew: Annotated[
        str | None, typer.Option("--crew", "-c", metavar="NAME", help="Only this crew's runs.")
    ] = None,
    runs: Annotated[
        int, typer.Option("--runs", "-n", min=1, metavar="N", help="Analyse the last N runs.")
    ] = 100,
    as_json: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
    db: Database = None,
) -> None:
    """Analyse the recorded runs: per-process and per-task statistics, bottlenecks, advice."""
    _exit(optimize_runs(crew=crew, runs=runs, as_json=as_json, db=db))


cache_app = typer.Typer(name="cache", help="The cache of LLM replies.", no_args_is_help=True)
app.add_typer(cache_app)


@cache_app.command("clear")
def cache_clear_command(db: Database = None) -> None:
    """Remove every cached LLM reply."""
    _exit(clear_cache(db=db))


def _exit(code: int) -> None:
    if code != EXIT_OK:
        raise typer.Exit(code)


def run_file(
    file: Path,
    *,
    model: str | None = None,
    inputs: Sequence[str] = (),
    as_json: bool = False,
    db: Path | None = None,
    stdout: Console | None = None,
    stderr: Console | None = None,
) -> int:
    """What ``crewflow run`` does; returns the exit code instead of raising."""
    out = stdout or Console(highlight=False)
    err = stderr or Console(stderr=True, highlight=False)
    try:
        values = parse_inputs(inputs)
        llm = check_model(model) if model is not None else None
        with crew_from_file(file) as loaded:
            check_inputs(loaded.crew, values)
            view = None if as_json else ProgressView(err)
            # The absolute path: `crewflow resume` finds the file again from any directory.
            with run_source(str(loaded.path), loaded.attribute):
                result = kickoff(_recording_in(loaded.crew, db), values, llm, view)
    except (Exception, KeyboardInterrupt) as exc:
        return _exit_code(err, exc)
    _print_result(out, result, as_json=as_json)
    return EXIT_OK


def resume_run(
    run_id: str,
    *,
    file: Path | None = None,
    force: bool = False,
    model: str | None = None,
    as_json: bool = False,
    db: Path | None = None,
    stdout: Console | None = None,
    stderr: Console | None = None,
) -> int:
    """What ``crewflow resume`` does; returns the exit code instead of raising."""
    out = stdout or Console(highlight=False)
    err = stderr or Console(stderr=True, highlight=False)
    try:
        llm = check_model(model) if model is not None else None
        path, attribute = _resume_source(run_id, file, db)
        with crew_from_file(path, attribute) as loaded:
            view = None if as_json else ProgressView(err)
            with run_source(str(loaded.path), loaded.attribute):
                result = resume(_recording_in(loaded.crew, db), run_id, force, llm, view)
    except (Exception, KeyboardInterrupt) as exc:
        return _exit_code(err, exc)
    _print_result(out, result, as_json=as_json)
    return EXIT_OK


def _resume_source(run_id: str, file: Path | None, db: Path | None) -> tuple[Path, str | None]:
    """The file to load the run's crew from, and the crew's recorded attribute in it."""
    path = _database(db)
    record = _read(path, partial(_get_run, run_id=run_id)) if path.exists() else None
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


def kickoff(
    crew: Crew, inputs: dict[str, Any], llm: str | None, view: ProgressView | None
) -> CrewResult:
    """Run ``crew`` on its own event loop (``anyio.run``), showing progress on ``view``."""
    return _watching(crew, view, lambda watched: watched.kickoff(inputs, llm=llm))


def resume(
    crew: Crew, run_id: str, force: bool, llm: str | None, view: ProgressView | None
) -> CrewResult:
    """Resume the run ``run_id`` of ``crew`` on its own event loop, showing progress."""
    return _watching(crew, view, lambda watched: watched.resume(run_id, force=force, llm=llm))


def _recording_in(crew: Crew, db: Path | None) -> Crew:
    """``crew`` recording its runs in the database ``db`` (a copy), or as it is without one."""
    return crew if db is None else crew.model_copy(update={"store": str(db.expanduser())})


def _watching(
    crew: Crew, view: ProgressView | None, start: Callable[[Crew], Awaitable[CrewResult]]
) -> CrewResult:
    watched = crew
    showing: AbstractContextManager[None] = nullcontext()
    if view is not None:
        # The crew's public event hook, on a copy: the user's Crew (frozen) is left as it was
        # and its own on_event still gets every event.
        watched = crew.model_copy(update={"on_event": _chain(view, crew.on_event)})
        showing = view.showing()
    with showing:
        return anyio.run(start, watched)


def _chain(first: EventSink, then: EventSink | None) -> EventSink:
    if then is None:
        return first

    def sink(event: events.Event, /) -> None:
        first(event)
        then(event)

    return sink


def _print_result(out: Console, result: CrewResult, *, as_json: bool) -> None:
    if as_json:
        _print_json(out, result.model_dump_json(indent=2))
    else:
        show_result(out, result)


def _print_json(out: Console, text: str) -> None:
    # Straight to the file: rich would wrap long lines and colour the JSON.
    out.file.write(text + "\n")
    out.file.flush()


def _exit_code(err: Console, exc: BaseException) -> int:
    """Report ``exc`` on ``err`` in one line (a run failure with its finished tasks); its code."""
    if isinstance(exc, KeyboardInterrupt):
        _error(err, "cancelled")
        return EXIT_CANCELLED
    if isinstance(exc, CrewChanged) and "--force" not in str(exc):
        _error(err, f"{exc}; pass --force to resume it anyway")
        return EXIT_USAGE
    if isinstance(exc, UsageProblem | ConfigurationError | StoreError):
        _error(err, str(exc))
        return EXIT_USAGE
    if isinstance(exc, CrewRunError):
        show_failure(err, exc)
        return EXIT_RUN_FAILED
    if isinstance(exc, CrewflowError):
        _error(err, str(exc))
        return EXIT_RUN_FAILED
    _error(err, f"unexpected {type(exc).__name__}: {exc}")
    return EXIT_RUN_FAILED


# -- reading the run database -------------------------------------------------------------------

_T = TypeVar("_T")


def _database(db: Path | None) -> Path:
    return (db if db is not None else default_store_path()).expanduser()


def _read(path: Path, read: Callable[[Store], Awaitable[_T]]) -> _T:
    """Open the database at ``path`` (which exists), ``read`` it, close it."""

    async def session() -> _T:
        async with SQLiteStore(path) as store:
            return await read(store)

    return anyio.run(session)


async def _get_run(store: Store, *, run_id: str) -> RunRecord | None:
    return await store.get_run(run_id)


@dataclass(frozen=True)
class RunDetails:
    """What ``crewflow show`` shows: the run's record, its attempts and its outputs."""

    run: RunRecord
    attempts: list[AttemptRow]
    outputs: dict[str, OutputRow]

    def to_json(self) -> str:
        """``{"run": ..., "attempts": [...], "outputs": {task: ...}}``, indented."""
        return json.dumps(
            {
                "run": self.run.model_dump(mode="json"),
                "attempts": [row.model_dump(mode="json") for row in self.attempts],
                "outputs": {
                    name: row.model_dump(mode="json") for name, row in self.outputs.items()
                },
            },
            indent=2,
            ensure_ascii=False,
        )


async def _details(store: Store, *, run_id: str) -> RunDetails:
    run = await store.get_run(run_id)
    if run is None:
        raise UnknownRunError(run_id)
    return RunDetails(run, await store.attempts(run_id), await store.outputs(run_id))


_RUN_STYLES: dict[str, str] = {
    RunStatus.RUNNING: "cyan",
    RunStatus.COMPLETED: "green",
    RunStatus.FAILED: "red",
    RunStatus.CANCELLED: "yellow",
    "pending": "dim",
    "not run": "dim",
}


def _when(moment: datetime, *, seconds: bool = True) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def _span(start: datetime, end: datetime | None) -> str:
    return "" if end is None else _duration((end - start).total_seconds())


def _duration(seconds: float) -> str:
    if seconds < 60:
        return _seconds(seconds)
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {rest:02d}s"
    return f"{minutes // 60}h {minutes % 60:02d}m"


def _cost(cost: float | None) -> str:
    return "" if cost is None else f"${cost:.4f}"


def _status(status: str) -> Text:
    return Text(status, style=_RUN_STYLES.get(status, ""))


_Cell = Text | str
_GAP = 2
"""Columns are this far apart (one space of padding, one of rule)."""


def print_table(
    console: Console,
    columns: Sequence[str],
    rows: Sequence[Sequence[_Cell]],
    optional: Sequence[str] = (),
) -> None:
    """Print a borderless table: a header ending in ``>`` is right-aligned, one ending in ``~``
    is narrowed first when the terminal is too narrow.

    On a terminal, the ``optional`` columns are left out, in that order, until the table fits.
    Elsewhere (a pipe, a file) every row is printed whole, however wide.
    """
    # Text, not str: no markup or emoji parsing of the user's names (and it is faster).
    cells = [[cell if isinstance(cell, Text) else Text(cell) for cell in row] for row in rows]
    keep = list(range(len(columns)))
    widths = [
        max([len(columns[index].rstrip(">~")), *(row[index].cell_len for row in cells)])
        for index in keep
    ]

    def needed() -> int:
        return sum(widths[index] for index in keep) + _GAP * (len(keep) - 1)

    if not console.is_terminal:
        width = console.width
        console.width = max(needed(), width)  # print(width=...) would not go past the console's
        try:
            console.print(_table(columns, cells, keep))
        finally:
            console.width = width
        return
    for name in optional:
        if needed() <= console.width:
            break
        keep.remove(columns.index(name))
    console.print(_table(columns, cells, keep))


def _table(columns: Sequence[str], rows: Sequence[Sequence[Text]], keep: Sequence[int]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    for index in keep:
        header = columns[index]
        table.add_column(
            Text(header.rstrip(">~")),
            justify="right" if header.endswith(">") else "left",
            # Rich narrows the columns that may wrap first; those are cut, never wrapped.
            no_wrap=not header.endswith("~"),
            overflow="ellipsis",
            header_style="bold",
        )
    for row in rows:
        table.add_row(*(row[index] for index in keep))
    return table


def show_runs(console: Console, records: Sequence[RunRecord]) -> None:
    """One row per run: id, crew, process, status, start (local time), duration, size, usage.

    The cost column is there when some run's cost is known.
    """
    costs = any(run.usage.cost is not None for run in records)
    columns = ["run id", "crew~", "process~", "status", "started", "duration>", "tasks>"]
    columns += ["tokens>", *(["cost>"] if costs else [])]
    rows: list[list[_Cell]] = []
    for run in records:
        usage = run.usage
        cells: list[_Cell] = [
            Text(run.run_id),
            Text(run.crew),
            Text(run.process),
            _status(run.status),
            _when(run.started, seconds=False),
            _span(run.started, run.ended) if run.ended else _status("running"),
            f"{len(run.graph)}" if run.graph else "",
            f"{usage.prompt_tokens + usage.completion_tokens:,}",
        ]
        rows.append([*cells, *([_cost(usage.cost)] if costs else [])])
    print_table(console, columns, rows, optional=["process~", "tasks>", "cost>", "duration>"])


@dataclass
class _TaskSummary:
    name: str
    status: str
    attempts: list[AttemptRow]
    output: OutputRow | None


def _task_summaries(details: RunDetails) -> list[_TaskSummary]:
    """Every task of the run in graph order (then tasks added while it ran, in order seen)."""
    names = dict.fromkeys(details.run.graph)
    names.update(dict.fromkeys(row.task for row in details.attempts))
    names.update(dict.fromkeys(details.outputs))
    summaries = []
    for name in names:
        attempts = [row for row in details.attempts if row.task == name]
        output = details.outputs.get(name)
        if output is not None:
            status = "completed"
        elif attempts:
            status = attempts[-1].status
        else:
            status = "pending" if details.run.status == RunStatus.RUNNING else "not run"
        summaries.append(_TaskSummary(name, status, attempts, output))
    return summaries


def show_details(console: Console, details: RunDetails, *, full: bool = False) -> None:
    """The run's header, a table of its tasks, their errors, then each output."""
    console.print(_header(details.run))
    tasks = _task_summaries(details)
    _show_tasks(console, details.run, tasks)
    for task in tasks:
        for row in task.attempts:
            if row.error_type or row.error:
                problem = ": ".join(part for part in (row.error_type, row.error) if part)
                line = f"{task.name}: attempt {row.attempt} {row.status}: {problem}"
                console.print(Text(line, style="red"), soft_wrap=True)
    for task in tasks:
        if task.output is not None:
            console.print(_output_panel(task.output, full=full, width=console.width))


def _header(run: RunRecord) -> Table:
    table = Table(box=box.SIMPLE, show_header=False, pad_edge=False)
    table.add_column(style="dim")
    table.add_column()
    usage = run.usage
    reason = f" ({run.process_reason})" if run.process_reason else ""
    rows: list[tuple[str, RenderableType]] = [
        ("run id", Text(run.run_id)),
        ("crew", Text(run.crew)),
        ("process", Text(f"{run.process}{reason}")),
        ("status", _status(run.status)),
        ("started", _when(run.started)),
        ("ended", _when(run.ended) if run.ended else ""),
        ("duration", _span(run.started, run.ended)),
    ]
    if run.resumed:
        rows.append(("resumed", f"{run.resumed} time{'s' if run.resumed != 1 else ''}"))
    if run.source is not None:
        attribute = f" ({run.source.attribute})" if run.source.attribute else ""
        rows.append(("source", Text(f"{run.source.file}{attribute}")))
    if run.inputs:
        rows.append(("inputs", Text(json.dumps(run.inputs, ensure_ascii=False))))
    rows += [
        ("requests", f"{usage.requests:,}"),
        ("prompt tokens", f"{usage.prompt_tokens:,}"),
        ("completion tokens", f"{usage.completion_tokens:,}"),
    ]
    if usage.cost is not None:
        rows.append(("cost", _cost(usage.cost)))
    for name, value in rows:
        table.add_row(name, value)
    return table


def _show_tasks(console: Console, run: RunRecord, tasks: Sequence[_TaskSummary]) -> None:
    costs = any(row.cost is not None for task in tasks for row in task.attempts)
    columns = ["task~", "status", "attempts>", "start>", "duration>", "model~", "tokens>"]
    columns += [*(["cost>"] if costs else []), "cache hits>", "limit wait>"]
    rows: list[list[_Cell]] = []
    for task in tasks:
        attempts = task.attempts
        if not attempts:
            rows.append([Text(task.name), _status(task.status), *[""] * (len(columns) - 2)])
            continue
        # From the first attempt's start to the last one's end; in a resumed run only the last
        # attempt is timed (the earlier ones may predate the restart), as the optimizer does.
        timed = attempts[-1:] if run.resumed else attempts
        first = timed[0]
        end = timed[-1].end if all(row.end for row in timed) else None
        model = task.output.model if task.output else attempts[-1].model
        known = [row.cost for row in attempts if row.cost is not None]
        cached = sum(row.cache_hit for row in attempts)
        waited = sum(row.limit_wait for row in attempts)
        cells: list[_Cell] = [
            Text(task.name),
            _status(task.status),
            f"{len(attempts)}",
            f"+{_duration((first.start - run.started).total_seconds())}",
            _span(first.start, end),
            Text(model),
            f"{sum(row.prompt_tokens + row.completion_tokens for row in attempts):,}",
        ]
        if costs:
            cells.append(_cost(sum(known)) if known else "")
        rows.append([*cells, f"{cached}" if cached else "", _seconds(waited) if waited else ""])
    optional = ["cache hits>", "limit wait>", "start>", "cost>"]
    print_table(console, columns, rows, optional=optional)


OUTPUT_LINES = 20
"""Lines of each output ``crewflow show`` prints unless ``--full``."""


def _output_panel(output: OutputRow, *, full: bool, width: int) -> Panel:
    lines = output.text.splitlines()
    text = Text(output.text)
    if not full and len(lines) > OUTPUT_LINES:
        hidden = len(lines) - OUTPUT_LINES
        text = Text("\n".join(lines[:OUTPUT_LINES]))
        text.append(f"\n… {hidden} more line{'s' if hidden != 1 else ''}; --full shows all", "dim")
    by = Text(" · ".join(part for part in (output.agent, output.model) if part), style="dim")
    # As wide as the text needs, but never so narrow that the subtitle is cut.
    widest = max((line.cell_len for line in text.split()), default=0)
    needed = max(widest, by.cell_len + 4) + 4  # 4: the borders and their padding
    return Panel(
        text,
        title=Text(output.task, style="bold"),
        subtitle=by if by.plain else None,
        width=min(needed, width),
    )


def list_runs(
    *, crew: str | None = None, limit: int = 20, as_json: bool = False, db: Path | None = None
) -> int:
    """What ``crewflow runs`` does; returns the exit code."""
    out, err = Console(highlight=False), Console(stderr=True, highlight=False)
    path = _database(db)
    try:
        found = _read(path, partial(_list, crew=crew, limit=limit)) if path.exists() else []
    except (Exception, KeyboardInterrupt) as exc:
        return _exit_code(err, exc)
    if as_json:
        _print_json(out, json.dumps([run.model_dump(mode="json") for run in found], indent=2))
    elif not found:
        of = f" of crew {crew!r}" if crew is not None else ""
        out.print(Text(f"no runs{of} recorded yet (database: {path})"), soft_wrap=True)
    else:
        show_runs(out, found)
    return EXIT_OK


async def _list(store: Store, *, crew: str | None, limit: int) -> list[RunRecord]:
    return await store.list_runs(crew=crew, limit=limit)


def show_run(
    run_id: str, *, as_json: bool = False, full: bool = False, db: Path | None = None
) -> int:
    """What ``crewflow show`` does; returns the exit code."""
    out, err = Console(highlight=False), Console(stderr=True, highlight=False)
    path = _database(db)
    try:
        if not path.exists():
            raise UnknownRunError(run_id)
        details = _read(path, partial(_details, run_id=run_id))
    except (Exception, KeyboardInterrupt) as exc:
        return _exit_code(err, exc)
    if as_json:
        _print_json(out, details.to_json())
    else:
        show_details(out, details, full=full)
    return EXIT_OK


def clear_cache(*, db: Path | None = None) -> int:
    """What ``crewflow cache clear`` does; returns the exit code."""
    out, err = Console(highlight=False), Console(stderr=True, highlight=False)
    path = _database(db)
    try:
        removed = _read(path, _clear) if path.exists() else 0
    except (Exception, KeyboardInterrupt) as exc:
        return _exit_code(err, exc)
    plural = "y" if removed == 1 else "ies"
    out.print(Text(f"removed {removed:,} cached repl{plural} (database: {path})"), soft_wrap=True)
    return EXIT_OK


async def _clear(store: Store) -> int:
    return await store.cache_clear()


def optimize_runs(
    *, crew: str | None = None, runs: int = 100, as_json: bool = False, db: Path | None = None
) -> int:
    """What ``crewflow optimize`` does; returns the exit code."""
    from crewflow.optimizer import Report, analyze, render  # only this command needs it

    out, err = Console(highlight=False), Console(stderr=True, highlight=False)
    path = _database(db)

    async def report(store: Store) -> Report:
        return await analyze(store, crew, runs=runs)

    try:
        # Without a database the report is the empty one: "no runs recorded".
        found = _read(path, report) if path.exists() else anyio.run(report, MemoryStore())
    except (Exception, KeyboardInterrupt) as exc:
        return _exit_code(err, exc)
    if as_json:
        _print_json(out, found.model_dump_json(indent=2))
    else:
        render(found, out)
    return EXIT_OK


def main() -> None:
    """The console script: ``crewflow ...``.

    The CLI shows progress and errors itself, so the library's own log lines are off unless
    ``CREWFLOW_LOG_LEVEL`` asks for them (e.g. ``CREWFLOW_LOG_LEVEL=INFO crewflow run ...``).
    """
    os.environ.setdefault(LEVEL_ENV, "CRITICAL")
    app(prog_name="crewflow")
