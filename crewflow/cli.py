"""The ``crewflow`` command line.

```
crewflow run examples/research.py --input topic=batteries --model openai/gpt-4o-mini
crewflow run crew.py --json | jq .outputs
crewflow --version
```

Exit codes: 0 success, 1 the run failed (`CrewRunError`), 2 a usage or configuration problem
(bad arguments, a file that cannot be imported or holds no crew, a bad model, missing inputs),
130 cancelled with Ctrl-C. Errors are one line on stderr, never a traceback.

This module is imported only by the console script (and ``python -m crewflow``), never by
``import crewflow``, so it may import typer and rich at the top.
"""

import importlib.util
import json
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Literal

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
from crewflow._version import __version__
from crewflow.crew import Crew, CrewResult
from crewflow.events import EventSink
from crewflow.exceptions import (
    ConfigurationError,
    CrewflowError,
    CrewPartialFailure,
    CrewRunError,
    TaskFailed,
)
from crewflow.llm._models import check_model

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


@contextmanager
def crew_from_file(path: Path) -> Iterator[Crew]:
    """Import ``path`` as a module and yield its crew, named after the file by default.

    The file's directory goes first on ``sys.path`` (so its sibling imports work) and the module
    is registered in ``sys.modules`` for as long as the context lasts (pydantic resolves models
    through it); both are undone afterwards. The module is not ``__main__``, so an
    ``if __name__ == "__main__":`` block in the file does not run.

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
        yield _named(find_crew(module, path), path.stem)
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


def find_crew(module: ModuleType, path: Path) -> Crew:
    """The module's crew: its attribute ``crew``, else its only `Crew` attribute.

    Raises:
        UsageProblem: ``crew`` is not a Crew, or there is no Crew or several.
    """
    named = getattr(module, "crew", None)
    if named is not None:
        if isinstance(named, Crew):
            return named
        raise UsageProblem(
            f"`crew` in {path.name} is a {type(named).__name__}, not a Crew; name the Crew to "
            "run `crew`"
        )
    found: dict[str, Crew] = {}
    for attribute, value in vars(module).items():
        if isinstance(value, Crew) and all(value is not crew for crew in found.values()):
            found[attribute] = value
    if len(found) == 1:
        return next(iter(found.values()))
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
) -> None:
    """Run the crew defined in FILE and show its progress and final output."""
    code = run_file(file, model=model, inputs=inputs or [], as_json=as_json)
    if code != EXIT_OK:
        raise typer.Exit(code)


def run_file(
    file: Path,
    *,
    model: str | None = None,
    inputs: Sequence[str] = (),
    as_json: bool = False,
    stdout: Console | None = None,
    stderr: Console | None = None,
) -> int:
    """What ``crewflow run`` does; returns the exit code instead of raising."""
    out = stdout or Console(highlight=False)
    err = stderr or Console(stderr=True, highlight=False)
    try:
        values = parse_inputs(inputs)
        llm = check_model(model) if model is not None else None
        with crew_from_file(file) as crew:
            check_inputs(crew, values)
            view = None if as_json else ProgressView(err)
            result = kickoff(crew, values, llm, view)
    except KeyboardInterrupt:
        _error(err, "cancelled")
        return EXIT_CANCELLED
    except (UsageProblem, ConfigurationError) as exc:
        _error(err, str(exc))
        return EXIT_USAGE
    except CrewRunError as exc:
        show_failure(err, exc)
        return EXIT_RUN_FAILED
    except CrewflowError as exc:
        _error(err, str(exc))
        return EXIT_RUN_FAILED
    except Exception as exc:
        _error(err, f"unexpected {type(exc).__name__}: {exc}")
        return EXIT_RUN_FAILED
    if as_json:
        out.file.write(result.model_dump_json(indent=2) + "\n")
        out.file.flush()
    else:
        show_result(out, result)
    return EXIT_OK


def kickoff(
    crew: Crew, inputs: dict[str, Any], llm: str | None, view: ProgressView | None
) -> CrewResult:
    """Run ``crew`` on its own event loop (``anyio.run``), showing progress on ``view``."""
    watched = crew
    showing: AbstractContextManager[None] = nullcontext()
    if view is not None:
        # The crew's public event hook, on a copy: the user's Crew (frozen) is left as it was
        # and its own on_event still gets every event.
        watched = crew.model_copy(update={"on_event": _chain(view, crew.on_event)})
        showing = view.showing()
    with showing:
        return anyio.run(partial(watched.kickoff, inputs, llm=llm))


def _chain(first: EventSink, then: EventSink | None) -> EventSink:
    if then is None:
        return first

    def sink(event: events.Event, /) -> None:
        first(event)
        then(event)

    return sink


def main() -> None:
    """The console script: ``crewflow ...``.

    The CLI shows progress and errors itself, so the library's own log lines are off unless
    ``CREWFLOW_LOG_LEVEL`` asks for them (e.g. ``CREWFLOW_LOG_LEVEL=INFO crewflow run ...``).
    """
    os.environ.setdefault(LEVEL_ENV, "CRITICAL")
    app(prog_name="crewflow")
