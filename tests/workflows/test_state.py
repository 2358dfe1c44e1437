"""Shared state: templates read it, structured outputs update it through per-field reducers, in
completion order, and a resumed run rebuilds it exactly."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from crewflow import Agent, Crew, Task, append, merge, replace
from crewflow._runtime.recording import Resumption
from crewflow._runtime.state import ORDER_KEY, RunState
from crewflow.events import TaskFinished
from crewflow.exceptions import (
    ConfigurationError,
    CrewChanged,
    CrewPartialFailure,
    StateUpdateError,
    TaskFailed,
)
from crewflow.llm._types import Usage
from crewflow.store import MemoryStore
from crewflow.task import fill_template, literal_template
from crewflow.testing import Error, FunctionLLM, ScriptedLLM

if TYPE_CHECKING:
    from crewflow.events import Event
    from crewflow.llm._types import LLMRequest

PROCESSES = ["sequential", "parallel", "adaptive"]


class Notes(BaseModel):
    topic: str = "batteries"
    facts: Annotated[list[str], append] = Field(default_factory=list)
    scores: Annotated[dict[str, int], merge] = Field(default_factory=dict)
    count: int = 0


class Fact(BaseModel):
    facts: list[str]


class Topic(BaseModel):
    topic: str


class Score(BaseModel):
    scores: dict[str, int]


def worker(llm: Any) -> Agent:
    return Agent(role="Worker", goal="Work", llm=llm)


def task_name(request: LLMRequest) -> str:
    return request.messages[-1].content.split("do ", 1)[1].split()[0].rstrip(":.")


# -- the crew's state option ------------------------------------------------------------------


def test_a_state_model_with_fields_without_defaults_is_refused_naming_them() -> None:
    class Bad(BaseModel):
        topic: str
        level: int
        facts: list[str] = []

    agent = worker(ScriptedLLM([]))
    with pytest.raises(ConfigurationError, match=r"Bad\(\); these have none: topic, level"):
        Crew(tasks=[Task("do a", agent=agent)], state=Bad, store=None)


def test_an_async_reducer_is_refused_at_construction() -> None:
    async def later(current: Any, update: Any) -> Any:
        return update

    class Slow(BaseModel):
        facts: Annotated[list[str], later] = []

    agent = worker(ScriptedLLM([]))
    refused = r"reducer .*later of state field 'facts' is async"
    with pytest.raises(ConfigurationError, match=refused):
        Crew(tasks=[Task("do a", agent=agent)], state=Slow, store=None)


def test_the_hierarchical_process_refuses_shared_state() -> None:
    agent = worker(ScriptedLLM([]))
    with pytest.raises(ConfigurationError, match=r"hierarchical process cannot run .*shared state"):
        Crew(tasks=[Task("do a", agent=agent)], state=Notes, process="hierarchical", store=None)


def test_state_must_be_a_pydantic_model() -> None:
    agent = worker(ScriptedLLM([]))
    with pytest.raises(ConfigurationError, match="pydantic model class"):
        Crew(tasks=[Task("do a", agent=agent)], state=dict, store=None)


def test_an_instance_gives_the_initial_state_even_when_fields_have_no_default() -> None:
    class Given(BaseModel):
        topic: str

    agent = worker(ScriptedLLM(["x"]))
    crew = Crew(tasks=[Task("do a on {state.topic}", agent=agent)], state=Given(topic="t"))
    assert crew.state_model is Given


def test_a_state_reference_without_state_is_refused_at_construction() -> None:
    agent = worker(ScriptedLLM([]))
    refused = r"reads \{state.topic\} but the crew has no state"
    with pytest.raises(ConfigurationError, match=refused):
        Crew(tasks=[Task("do a on {state.topic}", agent=agent, name="a")], store=None)


def test_a_state_reference_to_no_field_is_refused_naming_the_fields() -> None:
    agent = worker(ScriptedLLM([]))
    with pytest.raises(ConfigurationError, match=r"\{state.nope\}.*fields: topic, facts"):
        Crew(
            tasks=[Task("do a", expected_output="{state.nope}", agent=agent, name="a")],
            state=Notes,
            store=None,
        )


def test_a_literal_state_brace_is_no_reference() -> None:
    task = Task("keep {{state.topic}} and {topic}")
    assert task.placeholders == {"topic"}
    assert task.state_fields == frozenset()
    assert task.render({"topic": "t"}) == ("keep {state.topic} and t", "")
    # A model's text put into a description (a manager's instructions) stays as written.
    written = "use {state.topic} and {{state.facts}}"
    assert fill_template(literal_template(written), {}, Notes()) == written


# -- templates --------------------------------------------------------------------------------


@pytest.mark.parametrize("process", PROCESSES)
async def test_templates_read_the_state_as_it_is_when_the_task_starts(process: str) -> None:
    seen: dict[str, str] = {}

    def respond(request: LLMRequest) -> Any:
        name = task_name(request)
        seen[name] = request.messages[-1].content
        if name == "first":
            return {"topic": "sodium", "facts": ["cheap", "safe"]}
        return "done"

    agent = worker(FunctionLLM(respond))

    class Both(BaseModel):
        topic: str
        facts: list[str]

    first = Task("do first", agent=agent, name="first", output_model=Both)
    second = Task(
        "do second about {state.topic} for {who}",
        expected_output="more than {state.facts}",
        agent=agent,
        name="second",
        context=[first],
    )
    crew = Crew(tasks=[first, second], state=Notes, process=process, store=None)
    # The input check asks for `who`, never for an input called `state`.
    with pytest.raises(ConfigurationError, match="'who'") as refused:
        await crew.kickoff()
    assert "state" not in str(refused.value).split("'who'")[0]

    result = await crew.kickoff(inputs={"who": "you"})

    assert "do second about sodium for you" in seen["second"]
    assert 'more than ["cheap", "safe"]' in seen["second"]  # not a string: JSON
    assert result.state == Notes(topic="sodium", facts=["cheap", "safe"])


# -- reducers ---------------------------------------------------------------------------------


def test_the_reducers() -> None:
    assert replace([1], [2]) == [2]
    current = ["a"]
    assert append(current, ["b", "c"]) == ["a", "b", "c"]
    assert append(current, ("b",)) == ["a", "b"]
    assert append(current, "b") == ["a", "b"]
    assert current == ["a"]  # a new list, the state's is never changed in place
    assert append(None, 1) == [1]
    scores = {"a": 1, "b": 2}
    assert merge(scores, {"b": 3, "c": 4}) == {"a": 1, "b": 3, "c": 4}
    assert scores == {"a": 1, "b": 2}
    with pytest.raises(TypeError, match="mapping"):
        merge({}, ["x"])


@pytest.mark.parametrize("process", PROCESSES)
async def test_outputs_update_the_state_fields_of_their_names_through_each_reducer(
    process: str,
) -> None:
    def most(current: int, update: int) -> int:
        return max(current, update)

    class Tally(BaseModel):
        topic: str = "start"  # replace: the default
        facts: Annotated[list[str], Field(max_length=10), append] = []
        scores: Annotated[dict[str, int], merge] = {}
        count: Annotated[int, most] = 0
        untouched: str = "as it was"

    class Out(BaseModel):
        topic: str
        facts: list[str]
        scores: dict[str, int]
        count: int
        other: str = "not a state field"

    replies = {
        "a": Out(topic="one", facts=["x"], scores={"a": 1, "b": 1}, count=5),
        "b": Out(topic="two", facts=["y", "z"], scores={"b": 2}, count=3),
    }
    agent = worker(FunctionLLM(lambda request: replies[task_name(request)]))
    a = Task("do a", agent=agent, name="a", output_model=Out)
    b = Task("do b", agent=agent, name="b", output_model=Out, context=[a])
    crew = Crew(tasks=[a, b], state=Tally, process=process, store=None)

    result = await crew.kickoff()

    assert result.state == Tally(
        topic="two",
        facts=["x", "y", "z"],
        scores={"a": 1, "b": 2},
        count=5,
        untouched="as it was",
    )
    # Each update's place in the order is on the attempt that finished the task.
    orders = {r.task: r.attempts[-1].details[ORDER_KEY] for r in result.timeline}
    assert orders == {"a": 1, "b": 2}


async def test_text_outputs_and_models_sharing_no_field_leave_the_state_alone() -> None:
    class Other(BaseModel):
        unrelated: str

    agent = worker(ScriptedLLM(["plain text", {"unrelated": "x"}]))
    crew = Crew(
        tasks=[
            Task("do a", agent=agent),
            Task("do b", agent=agent, output_model=Other),
        ],
        state=Notes,
        store=None,
    )
    result = await crew.kickoff()
    assert result.state == Notes()


async def test_each_kickoff_starts_from_a_fresh_initial_state() -> None:
    agent = worker(FunctionLLM(lambda request: {"facts": ["one"]}))
    initial = Notes(facts=["given"])
    crew = Crew(tasks=[Task("do a", agent=agent, output_model=Fact)], state=initial, store=None)

    first = await crew.kickoff()
    first.state.facts.append("changed by the caller")  # type: ignore[union-attr]
    second = await crew.kickoff()

    assert second.state == Notes(facts=["given", "one"])
    assert initial == Notes(facts=["given"])
    assert (await Crew(tasks=crew.tasks, state=Notes, store=None).kickoff()).state == Notes(
        facts=["one"]
    )


async def test_concurrent_kickoffs_and_a_started_run_each_keep_their_own_state() -> None:
    def respond(request: LLMRequest) -> Any:
        return {"facts": [request.messages[-1].content.split("for ", 1)[1].split()[0]]}

    agent = worker(FunctionLLM(respond))
    crew = Crew(
        tasks=[Task("do a for {who}", agent=agent, output_model=Fact)], state=Notes, store=None
    )

    results = await crew.kickoff_for_each([{"who": "x"}, {"who": "y"}, {"who": "z"}])
    async with crew.start({"who": "w"}) as handle:
        started = await handle.result()

    assert [r.state.facts for r in results] == [["x"], ["y"], ["z"]]
    assert started.state == Notes(facts=["w"])


async def test_a_crew_without_state_has_none_on_its_result() -> None:
    agent = worker(ScriptedLLM([{"facts": ["x"]}]))
    result = await Crew(tasks=[Task("do a", agent=agent, output_model=Fact)], store=None).kickoff()
    assert result.state is None


# -- failed updates ---------------------------------------------------------------------------


def explode(current: Any, update: Any) -> Any:
    raise ValueError("no more facts")


class Fragile(BaseModel):
    facts: Annotated[list[str], explode] = []
    topic: str = "before"


class Both(BaseModel):
    facts: list[str]
    topic: str


@pytest.mark.parametrize("process", PROCESSES)
async def test_a_reducer_that_raises_fails_the_task_naming_the_field_and_the_reducer(
    process: str,
) -> None:
    agent = worker(FunctionLLM(lambda request: {"facts": ["x"], "topic": "after"}))
    crew = Crew(
        tasks=[Task("do a", agent=agent, name="a", output_model=Both)],
        state=Fragile,
        process=process,
        store=None,
    )

    with pytest.raises(TaskFailed) as failed:
        await crew.kickoff()

    cause = failed.value.cause
    assert isinstance(cause, StateUpdateError)
    assert (cause.field, cause.reducer) == ("facts", f"{__name__}.explode")
    assert "state field 'facts'" in str(failed.value)
    assert f"reducer '{__name__}.explode' raised ValueError: no more facts" in str(failed.value)
    assert failed.value.task == "a"


async def test_with_on_failure_continue_a_failed_update_fails_only_its_task() -> None:
    replies = {"a": {"facts": ["x"], "topic": "after a"}, "b": {"topic": "after b"}}
    agent = worker(FunctionLLM(lambda request: replies[task_name(request)]))
    a = Task("do a", agent=agent, name="a", output_model=Both, context=[])
    b = Task("do b", agent=agent, name="b", output_model=Topic, context=[])
    after = Task("do after", agent=agent, name="after", context=[a])
    crew = Crew(tasks=[a, b, after], state=Fragile, on_failure="continue", store=MemoryStore())

    with pytest.raises(CrewPartialFailure) as failed:
        await crew.kickoff()

    assert list(failed.value.failures) == ["a"]
    assert failed.value.skipped == ["after"]
    assert list(failed.value.outputs) == ["b"]  # a's output did not count: its update failed
    assert failed.value.state == Fragile(topic="after b")  # the state when the run failed
    record = next(r for r in failed.value.timeline if r.task == "a")
    assert record.status == "failed"


async def test_a_result_the_state_model_rejects_fails_the_task() -> None:
    class Bounded(BaseModel):
        facts: Annotated[list[str], Field(max_length=2), append] = []

    agent = worker(FunctionLLM(lambda request: {"facts": ["x", "y", "z"]}))
    crew = Crew(
        tasks=[Task("do a", agent=agent, name="a", output_model=Fact)],
        state=Bounded,
        store=None,
    )
    with pytest.raises(TaskFailed) as failed:
        await crew.kickoff()
    cause = failed.value.cause
    assert isinstance(cause, StateUpdateError)
    assert (cause.field, cause.reducer) == ("facts", "crewflow.state.append")
    assert "state model Bounded rejects" in str(cause)


# -- concurrent updates -----------------------------------------------------------------------


async def run_in_order(order: list[int], *, process: str = "parallel") -> Notes:
    """Run one task per item of ``order`` concurrently, each appending its number to
    ``facts``, and let them finish in ``order``; returns the final state."""
    names = [f"t{index}" for index in range(len(order))]
    asked = {name: anyio.Event() for name in names}
    release = {name: anyio.Event() for name in names}
    finished = {name: anyio.Event() for name in names}

    async def respond(request: LLMRequest) -> Any:
        name = task_name(request)
        asked[name].set()
        await release[name].wait()
        return {"facts": [name]}

    def on_event(event: Event) -> None:
        if isinstance(event, TaskFinished):
            finished[event.task].set()

    agent = worker(FunctionLLM(respond))
    tasks = [
        Task(f"do {name}", agent=agent, name=name, output_model=Fact, context=[]) for name in names
    ]
    crew = Crew(tasks=tasks, state=Notes, process=process, store=None, on_event=on_event)
    result: list[Notes] = []

    async def kickoff() -> None:
        outcome = await crew.kickoff()
        assert isinstance(outcome.state, Notes)
        result.append(outcome.state)

    async with anyio.create_task_group() as group:
        group.start_soon(kickoff)
        for index in order:
            name = names[index]
            await asked[name].wait()
            release[name].set()
            # The update is applied when the task finishes, with no await in between.
            await finished[name].wait()
    return result[0]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, 5), min_size=1, max_size=6, unique=True).flatmap(st.permutations))
def test_parallel_appends_never_lose_items_whatever_the_completion_order(
    order: list[int],
) -> None:
    # Every task is in flight at once, and they finish in `order`.
    ranks = {value: rank for rank, value in enumerate(sorted(order))}
    order = [ranks[value] for value in order]

    state = anyio.run(run_in_order, order)

    assert state.facts == [f"t{index}" for index in order]


async def test_sequential_appends_come_in_task_order() -> None:
    state = await run_in_order([0, 1, 2], process="sequential")
    assert state.facts == ["t0", "t1", "t2"]


# -- the fingerprint --------------------------------------------------------------------------


def test_the_state_model_is_part_of_the_fingerprint() -> None:
    class Changed(BaseModel):
        topic: str = "batteries"
        facts: list[int] = []

    def reduced_by(reducer: Any) -> type[BaseModel]:
        class Same(BaseModel):  # one schema, one name, whatever the reducer
            facts: Annotated[list[str], reducer] = []

        return Same

    agent = worker(ScriptedLLM([]))
    tasks = [Task("do a", agent=agent, name="a")]
    without = Crew(tasks=tasks, store=None, name="c").fingerprint()
    notes = Crew(tasks=tasks, state=Notes, store=None, name="c").fingerprint()
    changed = Crew(tasks=tasks, state=Changed, store=None, name="c").fingerprint()
    other_start = Crew(tasks=tasks, state=Notes(topic="x"), store=None, name="c").fingerprint()

    assert len({without.digest, notes.digest, changed.digest, other_start.digest}) == 4
    appended, replaced = (
        Crew(tasks=tasks, state=reduced_by(r), store=None, name="c").fingerprint().digest
        for r in (append, replace)
    )
    assert appended != replaced  # a reducer changes the state a resume rebuilds
    assert notes.digest == Crew(tasks=tasks, state=Notes, store=None, name="c").fingerprint().digest
    # The crew's key (its tasks, for history) stays the same.
    assert without.crew_key == notes.crew_key == changed.crew_key


# -- resume -----------------------------------------------------------------------------------


async def test_a_run_is_not_resumed_with_another_state_model() -> None:
    class Replaced(BaseModel):  # Notes's fields, with replace on facts
        topic: str = "batteries"
        facts: list[str] = Field(default_factory=list)

    store = MemoryStore()
    agent = worker(ScriptedLLM([Error(400, "refused")]))
    tasks = [Task("do a", agent=agent, name="a")]
    with pytest.raises(TaskFailed) as failed:
        await Crew(tasks=tasks, state=Notes, store=store, name="c").kickoff()

    with pytest.raises(CrewChanged, match="the shared state"):
        await Crew(tasks=tasks, state=Replaced, store=store, name="c").resume(failed.value.run_id)


def test_a_resumed_state_follows_the_recorded_order_not_the_order_outputs_are_read_in() -> None:
    from datetime import UTC, datetime

    from crewflow._records import AttemptRecord, RunStatus, TaskStatus
    from crewflow.store import OutputRow, RunRecord
    from crewflow.task import TaskOutput

    at = datetime(2026, 1, 1, tzinfo=UTC)  # one finish time for all: a tie
    names = ["c", "a", "b"]  # as a store might give them back
    recorded = {"a": 2, "b": 3, "c": 1}
    outputs = {
        name: OutputRow(
            run_id="r", task=name, text="", data={"facts": [name]}, agent="W", finished_at=at
        )
        for name in names
    }
    attempts = {
        name: [
            AttemptRecord(
                task=name,
                number=1,
                start=at,
                end=at,
                duration=0,
                status=TaskStatus.COMPLETED,
                details={ORDER_KEY: recorded[name]},
            )
        ]
        for name in names
    }
    record = RunRecord(run_id="r", crew="c", status=RunStatus.FAILED, started=at)
    resumption = Resumption(record, outputs, attempts, {}, Usage())
    state = RunState(Notes(), resumption)
    for name in ["b", "a", "c"]:  # restored in yet another order (graph order)
        state.restored(name, TaskOutput(task=name, agent="W", text="", data=Fact(facts=[name])))

    assert state.settle().facts == ["c", "a", "b"]  # type: ignore[attr-defined]
    assert state.apply(TaskOutput(task="d", agent="W", text="", data=Fact(facts=["d"]))) == 4
    assert state.current.facts == ["c", "a", "b", "d"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("process", PROCESSES)
async def test_a_resumed_run_rebuilds_the_state_from_its_checkpoints(process: str) -> None:
    """A run fails after some updates; its resume restores them and ends with the state an
    uninterrupted run has."""
    store = MemoryStore()
    failing = {"on": True}

    def respond(request: LLMRequest) -> Any:
        name = task_name(request)
        if name == "last" and failing["on"]:
            return Error(400, "refused")
        return {"facts": [name], "scores": {name: len(name)}}

    class Update(BaseModel):
        facts: list[str]
        scores: dict[str, int]

    agent = worker(FunctionLLM(respond))
    first = [
        Task(f"do {n}", agent=agent, name=n, output_model=Update, context=[])
        for n in ("alpha", "bravo", "charlie")
    ]
    last = Task(
        "do last after {state.facts}",
        agent=agent,
        name="last",
        output_model=Update,
        context=first,
    )
    crew = Crew(tasks=[*first, last], state=Notes, process=process, store=store)

    with pytest.raises(TaskFailed) as failed:
        await crew.kickoff()
    failing["on"] = False
    resumed = await crew.resume(failed.value.run_id)
    again = await crew.kickoff()

    assert sorted(resumed.restored) == ["alpha", "bravo", "charlie"]
    assert resumed.state == again.state
    assert resumed.state is not None
    assert sorted(resumed.state.facts) == ["alpha", "bravo", "charlie", "last"]  # type: ignore[attr-defined]
    assert resumed.state.facts[-1] == "last"  # type: ignore[attr-defined]
    # `last` read the rebuilt state in its template.
    asked = [r for r in agent.llm.requests if "do last" in r.messages[-1].content]  # type: ignore[union-attr]
    assert json.dumps(resumed.state.facts[:3]) in asked[-2].messages[-1].content  # type: ignore[attr-defined]


KILLED_CREW = """
from typing import Annotated

from pydantic import BaseModel

from crewflow import Agent, Crew, Task, append, merge


class Board(BaseModel):
    facts: Annotated[list[str], append] = []
    seen: Annotated[dict[str, int], merge] = {}


class Update(BaseModel):
    facts: list[str]
    seen: dict[str, int]


agent = Agent(role="Worker", goal="Work", llm="openai/loop-model")
alpha, bravo, charlie = (
    Task(f"do {n}", agent=agent, name=n, output_model=Update, context=[])
    for n in ("alpha", "bravo", "charlie")
)
delta = Task("do delta", agent=agent, name="delta", output_model=Update, context=[alpha, bravo])
join = Task(
    "do join with {state.facts}",
    agent=agent,
    name="join",
    output_model=Update,
    context=[charlie, delta],
)
crew = Crew(tasks=[alpha, bravo, charlie, delta, join], name="killed", process="parallel",
            state=Board)
"""


def board_reply(name: str) -> Any:
    from crewflow.testing import Text

    return Text(json.dumps({"facts": [name], "seen": {name: len(name)}}))


async def test_state_updated_by_tasks_in_flight_survives_sigkill_and_resume(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed while charlie and delta are in flight, after alpha and bravo updated the state:
    the resumed run ends with every update once, and its record rebuilds the same state."""
    import runpy

    from crewflow.store import SQLiteStore
    from crewflow.testing import OpenAIServer
    from tests import canary
    from tests.test_kill_and_resume import kill_and_resume

    crew_file = tmp_path / "killed.py"
    crew_file.write_text(KILLED_CREW)
    home = tmp_path / "home"
    killed = await kill_and_resume(crew_file, home, "delta", held=("charlie",), reply=board_reply)

    assert killed.finished_before == {"alpha", "bravo"}
    killed.assert_nothing_finished_was_sent_again(["alpha", "bravo", "charlie", "delta", "join"])
    async with SQLiteStore(home / "runs.db") as store:
        attempts = await store.attempts(killed.run_id)
    recorded = {a.task: a.details[ORDER_KEY] for a in attempts if ORDER_KEY in a.details}
    # Each update's place is checkpointed with its output: the killed run's two, then the rest.
    assert sorted(recorded.values()) == [1, 2, 3, 4, 5]
    assert {recorded["alpha"], recorded["bravo"]} == {1, 2}
    assert recorded["join"] == 5

    monkeypatch.setenv("CREWFLOW_HOME", str(home))
    monkeypatch.setenv("OPENAI_API_KEY", canary.KEY)
    async with OpenAIServer(responder=lambda request: board_reply(task_of(request))) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        crew = runpy.run_path(str(crew_file))["crew"]
        # The completed run's result, replayed from its records: its state is rebuilt.
        replayed = await crew.resume(killed.run_id)
        uninterrupted = await crew.kickoff()

    state, expected = replayed.state, uninterrupted.state
    everything = ["alpha", "bravo", "charlie", "delta", "join"]
    assert state.seen == expected.seen == {name: len(name) for name in everything}
    # Every item once: none lost, none applied twice by the resume.
    assert sorted(state.facts) == sorted(expected.facts) == sorted(everything)
    by_order = sorted(recorded, key=recorded.__getitem__)
    assert state.facts == by_order
    assert state.facts[-1] == expected.facts[-1] == "join"


def task_of(request: Any) -> str:
    return str(request.last_user_message.split("do ", 1)[1].split()[0].rstrip(":"))


@pytest.mark.parametrize("process", PROCESSES)
async def test_conditions_read_the_state_the_tasks_before_them_left(process: str) -> None:
    agent = worker(FunctionLLM(lambda request: {"facts": ["enough"]}))
    first = Task("do first", agent=agent, name="first", output_model=Fact, context=[])
    wanted = Task(
        "do wanted",
        agent=agent,
        name="wanted",
        context=[first],
        condition=lambda outputs, state: "enough" in state.facts,
    )
    unwanted = Task(
        "do unwanted",
        agent=agent,
        name="unwanted",
        context=[first],
        condition=lambda outputs, state: not state.facts,
    )
    crew = Crew(tasks=[first, wanted, unwanted], state=Notes, process=process, store=None)

    result = await crew.kickoff()

    assert "wanted" in result
    assert result.skipped == {"unwanted": "condition false"}
