"""The process registry: built-in names, classes and objects, and entry-point plug-ins."""

from __future__ import annotations

import importlib.metadata
from typing import Any, ClassVar

import pytest

from crewflow import Agent, Crew, Task
from crewflow.exceptions import ConfigurationError
from crewflow.processes import (
    ENTRY_POINT_GROUP,
    Process,
    ProcessContext,
    available_processes,
    get_process,
)
from crewflow.processes.sequential import Sequential
from crewflow.testing import FunctionLLM


class Backwards(Process):
    """A plug-in: runs the tasks last to first."""

    name: ClassVar[str] = "backwards"

    async def run(self, run: ProcessContext) -> None:
        for task in reversed(run.graph.tasks):
            await run.execute(task)


class Nameless(Process):
    async def run(self, run: ProcessContext) -> None:  # pragma: no cover - never run
        pass


class Abstract(Process):
    name: ClassVar[str] = "abstract"


NOT_A_PROCESS = object()


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed plug-ins, as importlib.metadata would report them."""
    module = __name__
    installed = [
        importlib.metadata.EntryPoint("backwards", f"{module}:Backwards", ENTRY_POINT_GROUP),
        importlib.metadata.EntryPoint("nameless", f"{module}:Nameless", ENTRY_POINT_GROUP),
        importlib.metadata.EntryPoint("abstract", f"{module}:Abstract", ENTRY_POINT_GROUP),
        importlib.metadata.EntryPoint("bogus", f"{module}:NOT_A_PROCESS", ENTRY_POINT_GROUP),
        importlib.metadata.EntryPoint("broken", "no_such_module_xyz:Thing", ENTRY_POINT_GROUP),
        importlib.metadata.EntryPoint("other", f"{module}:Backwards", "some.other.group"),
    ]

    def entry_points(*, group: str) -> list[importlib.metadata.EntryPoint]:
        return [ep for ep in installed if ep.group == group]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def test_a_builtin_name_gives_a_fresh_process() -> None:
    first, second = get_process("sequential"), get_process("sequential")

    assert isinstance(first, Sequential)
    assert first is not second


def test_a_process_class_is_instantiated_and_an_object_is_kept() -> None:
    process = Backwards()

    assert isinstance(get_process(Backwards), Backwards)
    assert get_process(process) is process


def test_something_that_is_not_a_process_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="not int"):
        get_process(3)  # type: ignore[arg-type]


def test_without_plugins_the_builtins_are_available() -> None:
    assert "sequential" in available_processes()


@pytest.mark.usefixtures("plugins")
def test_plugins_of_the_entry_point_group_are_listed() -> None:
    available = available_processes()

    assert available == sorted(available)
    assert {"sequential", "backwards", "bogus"} <= set(available)
    assert "other" not in available


@pytest.mark.usefixtures("plugins")
def test_an_unknown_name_lists_builtins_and_plugins() -> None:
    with pytest.raises(ConfigurationError) as caught:
        get_process("sideways")

    message = str(caught.value)
    assert "unknown process 'sideways'" in message
    assert "backwards" in message
    assert "sequential" in message
    assert ENTRY_POINT_GROUP in message


@pytest.mark.usefixtures("plugins")
def test_a_plugin_is_loaded_by_name() -> None:
    assert isinstance(get_process("backwards"), Backwards)


@pytest.mark.usefixtures("plugins")
async def test_a_crew_runs_under_a_plugin_process() -> None:
    llm = FunctionLLM(lambda request: "ok")
    agent = Agent(role="W", goal="G", llm=llm)
    crew = Crew(
        tasks=[Task("first", agent=agent), Task("second", agent=agent)], process="backwards"
    )

    result = await crew.kickoff()

    assert result.process == "backwards"
    assert [r.messages[1].content for r in llm.requests] == ["second", "first"]


@pytest.mark.usefixtures("plugins")
def test_a_plugin_that_is_not_a_process_class_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match=r"'bogus'.*is not a Process subclass"):
        get_process("bogus")


@pytest.mark.usefixtures("plugins")
def test_a_plugin_that_fails_to_import_names_the_plugin() -> None:
    with pytest.raises(
        ConfigurationError, match=r"plug-in process 'broken'.*failed to load"
    ) as caught:
        get_process("broken")

    assert isinstance(caught.value.__cause__, ImportError)


@pytest.mark.usefixtures("plugins")
def test_a_plugin_without_a_name_says_to_set_one() -> None:
    with pytest.raises(ConfigurationError, match=r'Nameless has no name.*name = "nameless"'):
        get_process("nameless")


@pytest.mark.usefixtures("plugins")
def test_an_abstract_plugin_says_what_to_implement() -> None:
    with pytest.raises(ConfigurationError, match="Abstract is abstract: implement run"):
        get_process("abstract")


def test_a_process_object_without_a_name_fails_at_crew_construction() -> None:
    agent = Agent(role="W", goal="G")

    with pytest.raises(ConfigurationError, match="has no name"):
        Crew(tasks=[Task("a", agent=agent)], process=Nameless())


def test_the_process_repr_names_its_class() -> None:
    assert repr(Backwards()) == "Backwards()"


def test_the_default_validate_accepts_any_graph() -> None:
    agent = Agent(role="W", goal="G")
    first = Task("a", agent=agent)
    later: Any = Task("b", agent=agent)
    # Context on a later task is fine for a process that does not run in list order.
    crew = Crew(tasks=[Task("c", agent=agent, context=[later]), first, later], process=Backwards())

    assert crew.process_name == "backwards"
