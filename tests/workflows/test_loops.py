"""Loops: rounds of tasks until a predicate holds, bounded, recorded and replayed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from crewflow import Agent, Crew, Loop, Task
from crewflow.exceptions import ConfigurationError, LoopLimitReached, TaskFailed
from crewflow.store import MemoryStore
from crewflow.testing import Error, FunctionLLM

if TYPE_CHECKING:
    from collections.abc import Mapping

    from crewflow.llm._types import LLMRequest
    from crewflow.task import TaskOutput

PROCESSES = ["sequential", "parallel"]


class Desk:
    """Drafts "draft N" (N: how many drafts so far); the critic approves from draft
    ``approve_at`` on; fails the requests whose first word is in ``fail``."""

    def __init__(self, approve_at: int = 99, fail: frozenset[str] = frozenset()) -> None:
        self.approve_at = approve_at
        self.fail = fail
        self.drafts = 0
        self.prompts: list[str] = []

    def answer(self, request: LLMRequest) -> object:
        prompt = request.messages[1].content or ""
        self.prompts.append(prompt)
        word = prompt.split()[0]
        if word in self.fail:
            self.fail = self.fail - {word}  # fails once
            return Error(400, f"{word} is out")
        if word == "write":
            self.drafts += 1
            return f"draft {self.drafts}"
        if word == "critique":
            return "APPROVED" if self.drafts >= self.approve_at else f"redo draft {self.drafts}"
        return "published"


def approved(outputs: Mapping[str, TaskOutput]) -> bool:
    return outputs["critique"].text == "APPROVED"


def review_crew(
    desk: Desk,
    process: str,
    *,
    store: MemoryStore | None = None,
    until: object = approved,
    **loop: object,
) -> Crew:
    agent = Agent(role="Writer", goal="Write", llm=FunctionLLM(desk.answer))
    brief = Task("brief the writer", name="brief", context=[])
    write = Task("write the post", name="write", context=[brief])
    critique = Task("critique the post", name="critique", context=[write])
    publish = Task("publish the post", name="publish", context=[write, critique])
    return Crew(
        tasks=[brief, Loop([write, critique], until=until, **loop), publish],  # type: ignore[arg-type]
        agents=[agent],
        process=process,
        store=store,
    )


@pytest.mark.parametrize("process", PROCESSES)
async def test_a_loop_runs_rounds_until_its_predicate_holds(process: str) -> None:
    desk = Desk(approve_at=2)

    result = await review_crew(desk, process, max_rounds=3).kickoff()

    assert [o.task for o in result.internal] == ["write#1", "critique#1", "write#2", "critique#2"]
    # The loop's tasks end with the last round's outputs; what comes after sees those.
    assert (result["write"].text, result["critique"].text) == ("draft 2", "APPROVED")
    publish = next(p for p in desk.prompts if p.startswith("publish"))
    assert "draft 2" in publish
    assert "draft 1" not in publish
    # Round 2's first task gets round 1's outputs; its critique gets round 2's draft.
    second_write = [p for p in desk.prompts if p.startswith("write")][1]
    assert "draft 1" in second_write
    assert "redo draft 1" in second_write
    second_critique = [p for p in desk.prompts if p.startswith("critique")][1]
    assert "draft 2" in second_critique
    assert "redo draft 1" not in second_critique


@pytest.mark.parametrize("process", PROCESSES)
async def test_a_loop_that_hits_its_bound_raises_with_the_last_round(process: str) -> None:
    desk = Desk()

    with pytest.raises(LoopLimitReached) as stopped:
        await review_crew(desk, process, max_rounds=2).kickoff()

    error = stopped.value
    assert (error.loop, error.rounds) == ("write", 2)
    assert error.last["write"].text == "draft 2"
    assert "max_rounds=2" in str(error)
    assert {"brief", "write#1", "critique#1", "write#2", "critique#2"} <= set(error.outputs)
    assert not any(p.startswith("publish") for p in desk.prompts)


@pytest.mark.parametrize("process", PROCESSES)
async def test_a_loop_that_accepts_its_limit_goes_on_with_the_last_round(process: str) -> None:
    desk = Desk()

    result = await review_crew(desk, process, max_rounds=2, on_limit="accept").kickoff()

    assert result["write"].text == "draft 2"
    assert result.output.text == "published"


async def test_a_token_budget_ends_the_loop() -> None:
    desk = Desk()
    crew = review_crew(desk, "parallel", max_rounds=10, max_tokens=1, on_limit="accept")
    done = await crew.kickoff()
    assert [o.task for o in done.internal] == ["write#1", "critique#1"]


async def test_a_single_task_loops_on_its_own_output_under_sequential() -> None:
    count = {"n": 0}

    def answer(request: LLMRequest) -> str:
        count["n"] += 1
        return "x" * count["n"]

    agent = Agent(role="Writer", goal="Write", llm=FunctionLLM(answer))
    grow = Task("grow it", name="grow")  # undeclared context: sequential
    crew = Crew(
        tasks=[Loop(grow, until=lambda outputs: len(outputs["grow"].text) >= 3, max_rounds=5)],
        agents=[agent],
    )

    result = await crew.kickoff()

    assert result["grow"].text == "xxx"
    assert [o.task for o in result.internal] == ["grow#1", "grow#2", "grow#3"]


@pytest.mark.parametrize("process", PROCESSES)
async def test_a_loop_stopped_in_its_second_round_resumes_from_its_checkpoints(
    process: str,
) -> None:
    store = MemoryStore()
    calls = {"until": 0}

    def counted(outputs: Mapping[str, TaskOutput]) -> bool:
        calls["until"] += 1
        return approved(outputs)

    desk = Desk(approve_at=3)
    # The second critique fails once: the run stops in round 2.
    first = {"critique": 0}
    original = desk.answer

    def failing_second_critique(request: LLMRequest) -> object:
        prompt = request.messages[1].content or ""
        if prompt.startswith("critique"):
            first["critique"] += 1
            if first["critique"] == 2:
                return Error(400, "critic is out")
        return original(request)

    desk.answer = failing_second_critique  # type: ignore[method-assign]
    crew = review_crew(desk, process, store=store, until=counted, max_rounds=5)
    with pytest.raises(TaskFailed):
        await crew.kickoff()
    [run] = await store.list_runs()
    assert calls["until"] == 1
    asked = len(desk.prompts)

    result = await review_crew(desk, process, store=store, until=counted, max_rounds=5).resume(
        run.run_id
    )

    assert result["critique"].text == "APPROVED"
    assert {"brief", "write#1", "critique#1", "write#2"} <= set(result.restored)
    # Round 1's decision was replayed, not asked again; rounds 2 and 3 were decided now.
    assert calls["until"] == 3
    redone = [p.split()[0] for p in desk.prompts[asked:]]
    assert redone == ["critique", "write", "critique", "publish"]
    decisions = [d.key for d in await store.decisions(run.run_id) if d.kind == "loop"]
    assert decisions == ["loop:write#1", "loop:write#2", "loop:write#3"]


def test_loops_are_checked_when_the_crew_is_made() -> None:
    agent = Agent(role="Writer", goal="Write", llm="offline")
    write = Task("write", name="write", context=[])
    critique = Task("critique", name="critique", context=[write])
    with pytest.raises(ConfigurationError, match="needs 'write', which comes after it"):
        Crew(tasks=[Loop([critique, write], until=approved)], agents=[agent])
    with pytest.raises(ConfigurationError, match="is in two loops"):
        Crew(
            tasks=[write, critique],
            loops=[Loop(write, until=approved), Loop(write, until=approved, name="again")],
            agents=[agent],
        )
    with pytest.raises(ConfigurationError, match="has a condition"):
        Loop(Task("x", condition=lambda outputs: True), until=approved)
    with pytest.raises(ConfigurationError, match="appears twice in one Loop"):
        Loop([write, write], until=approved)
    with pytest.raises(ConfigurationError, match="max_rounds"):
        Loop(write, until=approved, max_rounds=0)
    manager = Agent(role="Manager", goal="Manage", llm="offline")
    with pytest.raises(ConfigurationError, match="tasks use loop"):
        Crew(
            tasks=[Loop([write, critique], until=approved)],
            agents=[agent],
            process="hierarchical",
            manager=manager,
        )


def test_a_loop_is_part_of_the_fingerprint() -> None:
    agent = Agent(role="Writer", goal="Write", llm="offline")
    write = Task("write", name="write", context=[])
    plain = Crew(tasks=[write], agents=[agent], store=None)
    looped = Crew(tasks=[Loop(write, until=approved)], agents=[agent], store=None)
    longer = Crew(tasks=[Loop(write, until=approved, max_rounds=5)], agents=[agent], store=None)

    digests = {crew.fingerprint().digest for crew in (plain, looped, longer)}

    assert len(digests) == 3
