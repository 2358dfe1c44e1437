"""The process registry: built-in names, classes and objects, and entry-point plug-ins."""

from __future__ import annotations

import importlib.metadata
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

from crewflow import Agent, Crew, Task
from crewflow.exceptions import ConfigurationError
from crewflow.processes import (
    ENTRY_POINT_GROUP,
    Process,
    ProcessContext,
    available_processes,
    describe_processes,
    get_process,
)
from crewflow.processes.sequential import Sequential
from crewflow.testing import FunctionLLM
from tests.entry_points import install_entry_points

if TYPE_CHECKING:
    from pathlib import Path


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
    install_entry_points(monkeypatch, installed)


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


# -- describing them: what `crewflow processes` lists ------------------------------------------


@pytest.mark.usefixtures("plugins")
def test_processes_are_described_by_their_docstrings_summary_builtins_first() -> None:
    described = describe_processes()

    origins = [info.origin for info in described]
    assert origins == sorted(origins, key=lambda origin: origin != "built in")
    plugins = [info.name for info in described if info.origin != "built in"]
    assert plugins == sorted(plugins)
    assert {info.name for info in described} == set(available_processes())
    by_name = {info.name: info for info in described}
    assert by_name["sequential"] == (
        "sequential",
        "Run tasks in list order, one at a time.",
        "built in",
    )
    assert by_name["backwards"] == (
        "backwards",
        "A plug-in: runs the tasks last to first.",
        "plug-in",
    )
    assert by_name["nameless"].description == ""  # not Process's docstring
    builtins = [info for info in described if info.origin == "built in"]
    assert all(info.description.endswith(".") for info in builtins), builtins  # whole summaries


@pytest.mark.usefixtures("plugins")
def test_a_plugin_that_cannot_be_used_is_described_by_why() -> None:
    by_name = {info.name: info.description for info in describe_processes()}

    assert by_name["broken"] == (
        "failed to load no_such_module_xyz:Thing: "
        "ModuleNotFoundError: No module named 'no_such_module_xyz'"
    )
    assert by_name["bogus"] == f"not a Process subclass: {__name__}:NOT_A_PROCESS"


def test_a_failed_plugins_error_is_described_on_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "crashing_plugin_xyz.py").write_text(
        'raise RuntimeError("the config is missing:\\n  ~/.crashing.toml")\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    installed = [
        importlib.metadata.EntryPoint("crashing", "crashing_plugin_xyz:Thing", ENTRY_POINT_GROUP)
    ]
    install_entry_points(monkeypatch, installed)

    (crashing,) = [info for info in describe_processes() if info.name == "crashing"]

    assert crashing.description == (
        "failed to load crashing_plugin_xyz:Thing: "
        "RuntimeError: the config is missing: ~/.crashing.toml"
    )


def test_a_plugin_whose_name_is_taken_is_listed_as_not_used_and_not_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The two shadowed ones cannot load: loading either would describe it as "failed to load".
    installed = [
        importlib.metadata.EntryPoint("sequential", "no_such_module_xyz:A", ENTRY_POINT_GROUP),
        importlib.metadata.EntryPoint("backwards", f"{__name__}:Backwards", ENTRY_POINT_GROUP),
        importlib.metadata.EntryPoint("backwards", "no_such_module_xyz:B", ENTRY_POINT_GROUP),
    ]
    install_entry_points(monkeypatch, installed)

    described = describe_processes()

    # Plug-ins by name; of two of one name, the one installed first is used.
    plugins = [(info.name, info.description) for info in described if info.origin != "built in"]
    assert plugins == [
        ("backwards", "A plug-in: runs the tasks last to first."),
        ("backwards", "not used: another plug-in has this name first (plug-in)"),
        ("sequential", "not used: a built-in process has this name"),
    ]
