"""Run events: typed, frozen, one stable ``kind`` each, delivered to whoever listens."""

from __future__ import annotations

import re

import pydantic
import pytest

from crewflow import Agent, Crew, Task, events
from crewflow.testing import ScriptedLLM, capture_events

EVENT_CLASSES = [
    getattr(events, name) for name in events.__all__ if name not in ("Event", "EventSink")
]


def test_every_exported_event_is_an_event_with_its_own_kind() -> None:
    kinds = [cls.model_fields["kind"].default for cls in EVENT_CLASSES]

    assert all(issubclass(cls, events.Event) for cls in EVENT_CLASSES)
    assert len(set(kinds)) == len(kinds)
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", kind) for kind in kinds)


def test_every_event_class_of_the_module_is_exported() -> None:
    defined = {
        name
        for name, value in vars(events).items()
        if isinstance(value, type) and issubclass(value, events.Event)
    }

    assert defined == set(events.__all__) - {"EventSink"}


def test_events_are_frozen() -> None:
    event = events.TaskStarted(run_id="r", time=1.0, task="t", agent="a", attempt=1)

    with pytest.raises(pydantic.ValidationError):
        event.task = "other"  # type: ignore[misc]


def test_an_event_round_trips_through_json() -> None:
    event = events.LLMCallRetrying(
        run_id="r", time=2.5, task="t", model="m", call_attempt=1, status_code=429, delay=7.0
    )

    again = events.LLMCallRetrying.model_validate_json(event.model_dump_json())

    assert again == event
    assert again.kind == "llm_call_retrying"


def test_a_kind_cannot_be_mislabelled() -> None:
    with pytest.raises(pydantic.ValidationError):
        events.RunStarted(kind="run_finished", run_id="r", time=0.0, crew="c", process="p", tasks=1)


def test_run_finished_status_is_one_of_three() -> None:
    with pytest.raises(pydantic.ValidationError):
        events.RunFinished(run_id="r", time=0.0, status="exploded", duration=1.0)  # type: ignore[arg-type]


async def test_on_event_receives_every_run_of_the_crew() -> None:
    received: list[events.Event] = []
    agent = Agent(role="W", goal="G", llm=ScriptedLLM(["one", "two"]))
    crew = Crew(tasks=[Task("a", agent=agent)], on_event=received.append)

    first = await crew.kickoff()
    second = await crew.kickoff()

    starts = [e for e in received if isinstance(e, events.RunStarted)]
    assert [e.run_id for e in starts] == [first.run_id, second.run_id]


async def test_capture_events_sees_only_runs_started_inside_it() -> None:
    agent = Agent(role="W", goal="G", llm=ScriptedLLM(["one", "two"]))
    crew = Crew(tasks=[Task("a", agent=agent)])

    await crew.kickoff()
    with capture_events() as captured:
        inside = await crew.kickoff()

    assert {e.run_id for e in captured} == {inside.run_id}


async def test_a_calls_event_carries_its_cost_when_the_model_prices_it() -> None:
    from crewflow.llm import LLM, LLMRequest, LLMResponse
    from crewflow.llm._types import Usage

    class Priced(LLM):
        model = "priced/model"

        async def complete(self, request: LLMRequest) -> LLMResponse:
            usage = Usage(requests=1, prompt_tokens=3, completion_tokens=2, cost=0.25)
            return LLMResponse("ok", (), usage=usage, model=self.model, finish_reason="stop")

    agent = Agent(role="R", goal="g", llm=Priced())
    crew = Crew(tasks=[Task("a", agent=agent, name="a"), Task("b", agent=agent, name="b")])
    with capture_events() as captured:
        result = await crew.kickoff()

    costs = [e.cost for e in captured.events if isinstance(e, events.LLMCallFinished)]
    assert costs == [0.25, 0.25]
    assert result.usage.cost == sum(costs)


async def test_a_resumed_run_says_which_tasks_it_restored() -> None:
    from crewflow.exceptions import TaskFailed
    from crewflow.store import MemoryStore
    from crewflow.testing import Error, FunctionLLM

    broken = {"on": True}

    def answer(request: object) -> object:
        last = request.messages[-1].content  # type: ignore[attr-defined]
        return Error(400, "no") if "second" in last and broken["on"] else "done"

    agent = Agent(role="R", goal="g", llm=FunctionLLM(answer))
    tasks = [Task("first", agent=agent, name="first"), Task("second", agent=agent, name="second")]
    crew = Crew(tasks=tasks, store=MemoryStore())
    with pytest.raises(TaskFailed) as failed:
        await crew.kickoff()
    broken["on"] = False
    assert failed.value.run_id is not None

    with capture_events() as captured:
        result = await crew.resume(failed.value.run_id)

    restored = [e.task for e in captured.events if isinstance(e, events.TaskRestored)]
    assert restored == result.restored == ["first"]
    started = [e.task for e in captured.events if isinstance(e, events.TaskStarted)]
    assert started == ["second"]
