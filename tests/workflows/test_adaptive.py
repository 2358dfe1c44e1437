"""Under adaptive, each workflow feature works as under the process it chooses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import pytest
from pydantic import BaseModel

from crewflow import Agent, Crew, Loop, Task, optional
from crewflow.processes import Adaptive
from crewflow.store import MemoryStore
from crewflow.testing import FunctionLLM

if TYPE_CHECKING:
    from collections.abc import Mapping

    from crewflow.llm._types import LLMRequest
    from crewflow.task import TaskOutput


class Triage(BaseModel):
    lane: Literal["docs", "none"]


class Docs(BaseModel):
    items: list[str]


def answer(request: LLMRequest) -> object:
    prompt = request.messages[1].content or ""
    word = prompt.split()[0]
    if word == "triage":
        return Triage(lane="docs")
    if word == "list":
        return Docs(items=["a", "b", "c"])
    if word == "polish":
        return "POLISHED"
    return f"{word} done"


def polished(outputs: Mapping[str, TaskOutput]) -> bool:
    return outputs["polish"].text == "POLISHED"


@pytest.mark.parametrize("candidate", ["sequential", "parallel"])
async def test_a_crew_with_every_feature_runs_alike_under_each_choice(candidate: str) -> None:
    agent = Agent(role="Clerk", goal="Help", llm=FunctionLLM(answer))
    triage = Task(
        "triage it", name="triage", context=[], output_model=Triage, router={"docs": "list"}
    )
    listing = Task("list them", name="list", context=[triage], output_model=Docs)
    each = Task("read {item}", name="read", context=[listing], map_over="list.items")
    skipped = Task("never", name="never", context=[triage], condition=lambda outputs: False)
    polish = Task("polish it", name="polish", context=[each])
    final = Task("sum it up", name="final", context=[polish, optional(skipped)])
    crew = Crew(
        tasks=[triage, listing, each, skipped, Loop(polish, until=polished), final],
        agents=[agent],
        process=Adaptive(candidates=[candidate]),
        store=MemoryStore(),
    )

    result = await crew.kickoff()

    assert result.process_choice is not None
    assert result.process_choice.process == candidate
    assert result["read"].data == ["read done"] * 3
    assert result.skipped == {"never": "condition false"}
    assert result["polish"].text == "POLISHED"
    assert result.output.text == "sum done"
