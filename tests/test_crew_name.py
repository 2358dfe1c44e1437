"""A crew's default name: the file of the module that built it, followed by the attribute that
holds it when that module holds several crews; ``crew`` where there is no file."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest

from crewflow import Agent, Crew, Task
from crewflow.exceptions import TaskFailed
from crewflow.optimizer import analyze
from crewflow.store import MemoryStore
from crewflow.testing import Error, ScriptedLLM

AGENT = Agent(role="Writer", goal="Write", llm="offline")


def module(path: str, source: str, **names: Any) -> dict[str, Any]:
    """Run ``source`` as the module of the file ``path`` (its namespace, as Python would make
    it, with ``names`` in it too), and return its namespace."""
    namespace: dict[str, Any] = {"__name__": "built", "Crew": Crew, "Task": Task, "agent": AGENT}
    namespace.update(names)
    if path:
        namespace["__file__"] = path
    exec(compile(source, path or "<string>", "exec"), namespace)
    return namespace


def test_a_crew_is_named_after_the_file_of_the_module_that_built_it() -> None:
    crew = Crew(tasks=[Task("Write", agent=AGENT)], store=None)

    assert crew.name == Path(__file__).stem
    assert crew.kickoff_sync().crew == Path(__file__).stem


def test_without_a_file_a_crew_is_named_crew() -> None:
    # A notebook, a REPL, `python -c`, exec: the module has no __file__.
    built = module("", "crew = Crew(tasks=[Task('Write', agent=agent)], store=None)")

    assert built["crew"].name == "crew"


@pytest.mark.parametrize("file", ["__main__.py", "__init__.py"])
def test_a_package_module_gives_the_package_name(tmp_path: Path, file: str) -> None:
    path = tmp_path / "reports" / file
    built = module(str(path), "crew = Crew(tasks=[Task('Write', agent=agent)], store=None)")

    assert built["crew"].name == "reports"


def test_a_crew_built_by_a_function_is_named_after_the_functions_module() -> None:
    factory = module(
        "/crews/research.py",
        "def make():\n    return Crew(tasks=[Task('Write', agent=agent)], store=None)\n",
    )

    assert factory["make"]().name == "research"  # called from this module, built by that one


async def test_several_crews_of_a_module_are_told_apart_by_attribute_when_they_run() -> None:
    built = module(
        "/crews/reports.py",
        "daily = Crew(tasks=[Task('Daily', agent=agent)], store=None)\n"
        "weekly = Crew(tasks=[Task('Weekly', agent=agent)], store=None)\n"
        "also_daily = daily\n",  # one crew under two names is still one crew
    )
    daily, weekly = built["daily"], built["weekly"]
    copy = weekly.model_copy(update={"verbose": True})
    assert (daily.name, weekly.name) == ("reports", "reports")  # the module may hold more yet

    assert (await daily.kickoff()).crew == "reports:daily"
    assert (await copy.kickoff()).crew == "reports:weekly"  # a copy settles as its original
    assert (daily.name, weekly.name) == ("reports:daily", "reports")
    assert (await weekly.kickoff()).crew == "reports:weekly"
    assert (await daily.kickoff()).crew == "reports:daily"  # settled once


def test_a_pickled_crew_takes_its_settled_name_along() -> None:
    built = module(
        "/crews/reports.py",
        "daily = Crew(tasks=[Task('Daily', agent=agent)], store=None)\n"
        "weekly = Crew(tasks=[Task('Weekly', agent=agent)], store=None)\n",
    )

    assert pickle.loads(pickle.dumps(built["daily"])).name == "reports:daily"


async def test_a_name_given_always_wins() -> None:
    built = module(
        "/crews/reports.py",
        "daily = Crew(tasks=[Task('Daily', agent=agent)], store=None, name='crew')\n"
        "weekly = Crew(tasks=[Task('Weekly', agent=agent)], store=None)\n",
    )
    renamed = built["weekly"].model_copy(update={"name": "weekly-report"})

    assert (await built["daily"].kickoff()).crew == "crew"
    assert (await renamed.kickoff()).crew == "weekly-report"
    assert (await built["weekly"].kickoff()).crew == "reports:weekly"


async def test_a_run_recorded_under_the_old_default_name_resumes_under_the_new_one() -> None:
    store = MemoryStore()
    agent = Agent(role="Writer", goal="Write", llm=ScriptedLLM([Error(400), "done"]))
    task = Task("Write", agent=agent, name="write")
    with pytest.raises(TaskFailed) as failed:
        await Crew(tasks=[task], store=store, name="crew").kickoff()

    result = await Crew(tasks=[task], store=store).resume(failed.value.run_id)

    assert result.text == "done"  # the name is no part of the fingerprint: not refused
    assert result.crew == Path(__file__).stem


async def test_the_optimizer_finds_the_runs_of_a_crew_under_its_settled_name() -> None:
    store = MemoryStore()
    source = (
        "daily = Crew(tasks=[Task('Daily', agent=agent)], store=store)\n"
        "weekly = Crew(tasks=[Task('Weekly', agent=agent)], store=store)\n"
    )
    await module("/crews/reports.py", source, store=store)["daily"].kickoff()

    # Later, in another process: the file is loaded again, and its crew analysed unrun.
    report = await analyze(store, module("/crews/reports.py", source, store=store)["daily"])

    assert (report.crew, report.runs) == ("reports:daily", 1)
