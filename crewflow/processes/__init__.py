"""Processes: strategies that decide which task runs next.

A process sees one object, the run's `ProcessContext`, and nothing else: not the run, not the
store, not a bare LLM client. It never retries, limits, times out, records or emits events by
itself: it calls ``ctx.execute(task)``, ``ctx.run_ready()`` or ``ctx.ask(...)`` and the runtime
does the rest, the same way for every process. Built-in processes are named by string
(``Crew(process="sequential")``); plug-ins register a `Process` subclass under the
``crewflow.processes`` entry-point group, or are passed as objects.

Resume is replay: a resumed run runs its process again from the start, and every task that
finished returns its recorded output at once. A process must therefore be deterministic given
the outputs it gets (see `ProcessContext`).

Example:
    ```python
    class Reversed(Process):
        name = "reversed"

        async def run(self, ctx: ProcessContext) -> None:
            for task in reversed(ctx.graph.tasks):
                await ctx.execute(task, context=[])
    ```
"""

from __future__ import annotations

import importlib
import inspect
from abc import ABC, abstractmethod
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from crewflow._plan import PlanProblem, ProblemKind
from crewflow._records import Prediction, ProcessChoice
from crewflow._runtime.context import ProcessContext
from crewflow.exceptions import ConfigurationError, InvalidPlan

if TYPE_CHECKING:
    from collections.abc import Callable

    from pydantic import BaseModel, JsonValue

    from crewflow.agent import Agent
    from crewflow.graph import TaskGraph
    from crewflow.store import History, ProcessHistory
    from crewflow.task import TaskOutput

__all__ = [
    "ENTRY_POINT_GROUP",
    "Adaptive",
    "Hierarchical",
    "History",
    "InvalidPlan",
    "Parallel",
    "PlanProblem",
    "Prediction",
    "ProblemKind",
    "Process",
    "ProcessChoice",
    "ProcessContext",
    "ProcessHistory",
    "ProcessInfo",
    "Sequential",
    "available_processes",
    "describe_processes",
    "get_process",
]

ENTRY_POINT_GROUP = "crewflow.processes"

_BUILTIN = {
    "sequential": ("crewflow.processes.sequential", "Sequential"),
    "parallel": ("crewflow.processes.parallel", "Parallel"),
    "hierarchical": ("crewflow.processes.hierarchical", "Hierarchical"),
    "adaptive": ("crewflow.processes.adaptive", "Adaptive"),
}


class Process(ABC):
    """How a crew's tasks are scheduled. Subclass it and implement `run`.

    The runtime reads nothing off the class but ``name``: what a process needs of the graph
    it asks for in `prepare_graph`, what it is configured with it says in `config`.
    """

    name: ClassVar[str]
    """The name users pass as ``Crew(process=...)``."""

    @abstractmethod
    async def run(self, ctx: ProcessContext) -> None:
        """Run the crew's tasks through ``ctx`` until every task of the graph has ended.

        Raise (or let propagate) the runtime's errors; the crew turns them into its result.
        """

    def prepare_graph(self, graph: TaskGraph) -> None:  # noqa: B027 - an optional hook
        """Shape the crew's graph at construction, before `validate` (e.g. sequential calls
        ``graph.chain_undeclared()``), so that ``crew.graph``, the fingerprint and the recorded
        graph have every edge before any kickoff."""

    def validate(self, graph: TaskGraph) -> None:  # noqa: B027 - an optional hook with a default
        """Check at crew construction that this process can run ``graph``.

        Raises:
            ConfigurationError: It cannot; the message says why and how to fix it.
        """

    def config(self) -> dict[str, JsonValue]:
        """What this process is configured with (e.g. a manager's model), as JSON: part of
        the crew's fingerprint, so a run resumes only under the same configuration. Default:
        nothing."""
        return {}

    def final_output(self, ctx: ProcessContext) -> TaskOutput | None:
        """The run's final output, `CrewResult.output` (default: the last crew task's)."""
        deliverables = ctx.graph.deliverables
        return ctx.outputs.get(deliverables[-1]) if deliverables else None

    def result_plan(self, ctx: ProcessContext) -> BaseModel | None:
        """The plan the run followed, as data (`CrewResult.plan`; default: none)."""
        return None

    def with_manager(self, manager: Agent | str) -> Process:
        """This process with ``manager`` (``Crew(manager=...)``): a new object, this one is
        left as it is.

        Raises:
            ConfigurationError: The process takes no manager (the default).
        """
        raise ConfigurationError(
            f'the {self.name!r} process takes no manager: use process="hierarchical" (or '
            '"adaptive" with hierarchical among its candidates), or drop manager='
        )

    def default_agent(self) -> Agent | None:
        """The agent of crew tasks that name none (default: the crew's only agent, if it has
        one; a hierarchical crew's manager, who assigns their work)."""
        return None

    def candidate_for(self, graph: TaskGraph) -> bool:
        """Whether the adaptive process should consider this process for ``graph`` among its
        default candidates (installed plug-ins say so here; default: no)."""
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def available_processes() -> list[str]:
    """Names of the built-in processes and of installed plug-ins."""
    return sorted({*_BUILTIN, *(ep.name for ep in _entry_points())})


def get_process(spec: str | Process | type[Process]) -> Process:
    """A process object from a name, a `Process` subclass or an instance.

    Raises:
        ConfigurationError: Unknown name, or not a `Process`.
    """
    if isinstance(spec, Process):
        return _named(spec)
    if isinstance(spec, type) and issubclass(spec, Process):
        return _named(_instantiate(spec))
    if not isinstance(spec, str):
        raise ConfigurationError(
            f"process must be a name such as 'sequential' or a crewflow.processes.Process, "
            f"not {type(spec).__name__}"
        )
    if spec in _BUILTIN:
        module, attribute = _BUILTIN[spec]
        cls: type[Process] = getattr(importlib.import_module(module), attribute)
        return cls()
    for entry_point in _entry_points():
        if entry_point.name == spec:
            try:
                loaded = entry_point.load()
            except Exception as exc:
                raise ConfigurationError(
                    f"the plug-in process {spec!r} ({entry_point.value}) failed to load: "
                    f"{type(exc).__name__}: {exc}; fix or uninstall the package that provides it"
                ) from exc
            if not (isinstance(loaded, type) and issubclass(loaded, Process)):
                raise ConfigurationError(
                    f"entry point {spec!r} in group {ENTRY_POINT_GROUP!r} is not a Process "
                    f"subclass ({entry_point.value})"
                )
            return _named(_instantiate(loaded))
    raise ConfigurationError(
        f"unknown process {spec!r}; available: {', '.join(available_processes())}. "
        f"Plug-ins register under the {ENTRY_POINT_GROUP!r} entry-point group."
    )


def _instantiate(cls: type[Process]) -> Process:
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise ConfigurationError(f"process class {cls.__name__} is abstract: implement {missing}")
    return cls()


def _named(process: Process) -> Process:
    name = getattr(process, "name", None)
    if not isinstance(name, str) or not name:
        raise ConfigurationError(
            f"process {type(process).__name__} has no name: set the class attribute "
            f'name = "{type(process).__name__.lower()}" (it names the process in results, '
            "logs and records)"
        )
    return process


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    import importlib.metadata

    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


class ProcessInfo(NamedTuple):
    """One process a crew can name, as ``crewflow processes`` lists it."""

    name: str
    """The name users pass as ``Crew(process=...)``."""
    description: str
    """The summary of the class's docstring (up to its first blank line), or why it cannot be
    used; on one line."""
    origin: str
    """``"built in"``, or the name of the distribution whose entry point provides it
    (``"plug-in"`` for an entry point of no known distribution)."""


_BUILT_IN = "built in"


def describe_processes() -> list[ProcessInfo]:
    """Every process a crew can name, with its docstring's summary and its origin: the built-in
    ones first, then the plug-ins of the ``crewflow.processes`` entry-point group by name.

    Each class is loaded to read its docstring, and nothing else is. A plug-in that fails to
    load, or is not a `Process` subclass, is listed with the error as its description; one
    whose name is already taken (by a built-in process or another plug-in) is listed as not
    used, without being loaded, since ``Crew(process=name)`` never gets it.

    Example:
        ```python
        for name, description, origin in describe_processes():
            print(f"{name}: {description} ({origin})")
        ```
    """
    described = [
        ProcessInfo(name, _summary(partial(_builtin_class, name), ":".join(target)), _BUILT_IN)
        for name, target in _BUILTIN.items()
    ]
    taken = {info.name: info.origin for info in described}
    # Stable, so that of two plug-ins of one name the one `get_process` finds first is used.
    for entry_point in sorted(_entry_points(), key=lambda found: found.name):
        origin = entry_point.dist.name if entry_point.dist is not None else "plug-in"
        if entry_point.name in taken:
            first = taken[entry_point.name]
            description = (
                "not used: a built-in process has this name"
                if first == _BUILT_IN
                else f"not used: another plug-in has this name first ({first})"
            )
        else:
            taken[entry_point.name] = origin
            description = _summary(entry_point.load, entry_point.value)
        described.append(ProcessInfo(entry_point.name, description, origin))
    return described


def _builtin_class(name: str) -> object:
    module, attribute = _BUILTIN[name]
    return getattr(importlib.import_module(module), attribute)


def _summary(load: Callable[[], object], target: str) -> str:
    """The summary of the docstring of the class ``load`` returns, or why it cannot be used."""
    try:
        loaded = load()
    except Exception as exc:  # a broken plug-in is listed, not fatal
        return " ".join(f"failed to load {target}: {type(exc).__name__}: {exc}".split())
    if not (isinstance(loaded, type) and issubclass(loaded, Process)):
        return f"not a Process subclass: {target}"
    # The class's own docstring (inspect.getdoc would fall back on Process's); a summary may
    # wrap over several lines.
    summary = inspect.cleandoc(loaded.__doc__ or "").split("\n\n", 1)[0]
    return " ".join(summary.split())


def __getattr__(name: str) -> Any:
    # What `ProcessContext.history()` returns, loaded with the store on first use: crews are
    # built without loading the store's modules.
    if name in ("History", "ProcessHistory"):
        import crewflow.store

        return getattr(crewflow.store, name)
    # The built-in processes, by class, loaded when first named.
    for module, attribute in _BUILTIN.values():
        if name == attribute:
            return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'crewflow.processes' has no attribute {name!r}")
