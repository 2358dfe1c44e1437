"""Processes: strategies that decide which task runs next.

A process never retries, limits, times out, records or emits events by itself: it calls
``run.execute(task)`` and the runtime does the rest, the same way for every process. Built-in
processes are named by string (``Crew(process="sequential")``); plug-ins register a `Process`
subclass under the ``crewflow.processes`` entry-point group, or are passed as objects.

Example:
    ```python
    class Reversed(Process):
        name = "reversed"

        async def run(self, run: Run) -> None:
            for task in reversed(run.graph.tasks):
                await run.execute(task)
    ```
"""

from __future__ import annotations

import importlib
import inspect
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from crewflow.exceptions import ConfigurationError

if TYPE_CHECKING:
    from crewflow._runtime.run import Run
    from crewflow.graph import TaskGraph

__all__ = ["ENTRY_POINT_GROUP", "Process", "Run", "available_processes", "get_process"]

ENTRY_POINT_GROUP = "crewflow.processes"

_BUILTIN = {
    "sequential": ("crewflow.processes.sequential", "Sequential"),
    "parallel": ("crewflow.processes.parallel", "Parallel"),
}


class Process(ABC):
    """How a crew's tasks are scheduled. Subclass it and implement `run`."""

    name: ClassVar[str]
    """The name users pass as ``Crew(process=...)``."""

    chains_undeclared_context: ClassVar[bool] = False
    """Whether a task with undeclared context depends on the task before it (sequential)."""

    uses_durations: ClassVar[bool] = False
    """Whether the process orders tasks by `Run.durations`; the runtime then reads the
    durations earlier runs measured from the store before the run starts (when slots are
    scarce, i.e. ``max_concurrency`` is set)."""

    @abstractmethod
    async def run(self, run: Run) -> None:
        """Run the crew's tasks through ``run.execute`` until every task has finished.

        Raise (or let propagate) the runtime's errors; the crew turns them into its result.
        """

    def validate(self, graph: TaskGraph) -> None:  # noqa: B027 - an optional hook with a default
        """Check at crew construction that this process can run ``graph``.

        Raises:
            ConfigurationError: It cannot; the message says why and how to fix it.
        """

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


def __getattr__(name: str) -> Any:
    # `Run` is what plug-ins are written against; loaded on first use, not at import.
    if name == "Run":
        from crewflow._runtime.run import Run

        return Run
    raise AttributeError(f"module 'crewflow.processes' has no attribute {name!r}")
