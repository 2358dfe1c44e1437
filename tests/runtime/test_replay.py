"""Resume is replay: the process runs again, and what finished comes back from the store."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import pytest
from pydantic import BaseModel

from crewflow import Agent, Crew, Task
from crewflow.exceptions import CrewChanged, TaskFailed
from crewflow.processes import Process, ProcessContext
from crewflow.store import MemoryStore
from crewflow.testing import Error, FunctionLLM

if TYPE_CHECKING:
    from crewflow.llm._types import LLMRequest


class Plan(BaseModel):
    steps: list[str]


class Scripted:
    """Answers the plan with ``steps``, each step with text; fails the steps in ``fail``;
    counts calls by the first word of the prompt."""

    def __init__(self, steps: list[str], fail: set[str]) -> None:
        self.steps = steps
        self.fail = fail
        self.calls: dict[str, int] = {}

    def answer(self, request: LLMRequest) -> object:
        name = (request.messages[1].content or "").split()[0]
        self.calls[name] = self.calls.get(name, 0) + 1
        if name == "plan":
            return Plan(steps=self.steps)
        if name in self.fail:
            return Error(400, f"{name} is out")
        return f"{name} done"


class Planning(Process):
    """Asks for a plan, adds one step per entry (each after the one before), runs them."""

    name: ClassVar[str] = "planning"

    def __init__(self, llm: FunctionLLM, *, suffix: str = "") -> None:
        self.planner = Agent(role="Planner", goal="Plan", llm=llm)
        self.worker = Agent(role="Worker", goal="Work", llm=llm)
        self.suffix = suffix

    async def run(self, ctx: ProcessContext) -> None:
        plan = await ctx.ask("plan", self.planner, "plan the work", output_model=Plan)
        steps: list[Task] = []
        for index, text in enumerate(plan.data.steps, start=1):
            context = [f"step.{index - 1}"] if index > 1 else ["brief"]
            steps.append(
                Task(
                    f"{text}{self.suffix}",
                    name=f"step.{index}",
                    agent=self.worker,
                    context=context,
                )
            )
        await ctx.add_tasks(steps)
        await ctx.run_ready()


def planned_crew(script: Scripted, store: MemoryStore, *, suffix: str = "") -> Crew:
    llm = FunctionLLM(script.answer)
    agent = Agent(role="Worker", goal="Work", llm=llm)
    process = Planning(llm, suffix=suffix)
    return Crew(tasks=[Task("brief me", agent=agent, name="brief")], process=process, store=store)


async def failed_halfway(store: MemoryStore, script: Scripted) -> str:
    with pytest.raises(TaskFailed) as caught:
        await planned_crew(script, store).kickoff()
    assert caught.value.run_id is not None
    return caught.value.run_id


async def test_a_resumed_run_reads_its_plan_back_and_redoes_no_finished_step() -> None:
    store = MemoryStore()
    script = Scripted(["one", "two", "three"], fail={"two"})
    run_id = await failed_halfway(store, script)
    assert script.calls == {"brief": 1, "plan": 1, "one": 1, "two": 1}
    script.fail.clear()

    result = await planned_crew(script, store).resume(run_id)

    # The plan was not asked for again; only the step that failed and the one after it ran.
    assert script.calls == {"brief": 1, "plan": 1, "one": 1, "two": 2, "three": 1}
    assert result.restored == ["brief", "plan", "step.1"]
    assert result["plan"].data == Plan(steps=["one", "two", "three"])  # its model again
    assert [o.task for o in result.internal] == ["plan", "step.1", "step.2", "step.3"]
    assert result.run_id == run_id
    step_2 = next(r for r in result.timeline if r.task == "step.2")
    assert [a.number for a in step_2.attempts] == [2]  # numbered on from the failed one


async def test_a_replayed_process_that_adds_a_different_task_is_refused() -> None:
    store = MemoryStore()
    script = Scripted(["one", "two"], fail={"two"})
    run_id = await failed_halfway(store, script)
    script.fail.clear()

    with pytest.raises(CrewChanged, match=r"'step\.1'") as caught:
        await planned_crew(script, store, suffix=" (reworded)").resume(run_id)

    assert [str(change) for change in caught.value.changes] == ["task 'step.1' changed"]
    assert script.calls["one"] == 1  # nothing was sent for the changed task


async def test_force_runs_a_changed_added_task_again() -> None:
    store = MemoryStore()
    script = Scripted(["one", "two"], fail={"two"})
    run_id = await failed_halfway(store, script)
    script.fail.clear()

    result = await planned_crew(script, store, suffix=" (reworded)").resume(run_id, force=True)

    assert script.calls == {"brief": 1, "plan": 1, "one": 2, "two": 2}
    assert result.restored == ["brief", "plan"]
    assert result["step.1"].text == "one done"


async def test_resuming_a_completed_run_returns_its_result_and_changes_nothing() -> None:
    from crewflow import Agent, Crew, Task
    from crewflow.store import MemoryStore
    from crewflow.testing import FunctionLLM

    calls: list[str] = []

    def answer(request: object) -> str:
        calls.append("call")
        return f"answer {len(calls)}"

    agent = Agent(role="Writer", goal="Write", llm=FunctionLLM(answer))
    store = MemoryStore()
    crew = Crew(
        tasks=[Task("a", name="a", agent=agent), Task("b", name="b", agent=agent)], store=store
    )
    first = await crew.kickoff()
    before = await store.get_run(first.run_id)

    again = await crew.resume(first.run_id)

    assert len(calls) == 2  # no request
    assert [o.text for o in again.outputs] == [o.text for o in first.outputs]
    assert sorted(again.restored) == ["a", "b"]
    assert await store.get_run(first.run_id) == before  # not reopened, its end not rewritten
