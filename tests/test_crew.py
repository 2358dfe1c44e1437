"""`Crew`: construction errors, kickoff inputs, the result, and runs that share nothing."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from crewflow import Agent, Crew, CrewResult, Task, TaskStatus
from crewflow.exceptions import ConfigurationError, CrewPartialFailure
from crewflow.llm.offline import OfflineLLM
from crewflow.processes.sequential import Sequential
from crewflow.store import MemoryStore, SQLiteStore
from crewflow.testing import FunctionLLM, ScriptedLLM
from tests.imports import imported_on_main_thread

if TYPE_CHECKING:
    from pathlib import Path

    from crewflow.llm._types import LLMRequest


def prompt_of(request: LLMRequest) -> str:
    """The user message of a request (the task prompt)."""
    content = request.messages[1].content
    assert content is not None
    return content


def echo_llm() -> FunctionLLM:
    """Answers with the first line of the task prompt."""
    return FunctionLLM(lambda request: "did: " + prompt_of(request).splitlines()[0])


@pytest.fixture
def agent() -> Agent:
    return Agent(role="Researcher", goal="Find facts", llm=echo_llm())


# -- construction ------------------------------------------------------------------------------


def test_configuration_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match="at least one task"):
        Crew(tasks=[])


def test_a_cycle_through_context_names_lists_the_tasks_on_it(agent: Agent) -> None:
    tasks = [
        Task("a", agent=agent, name="outline", context=["review"]),
        Task("b", agent=agent, name="draft", context=["outline"]),
        Task("c", agent=agent, name="review", context=["draft"]),
    ]

    with pytest.raises(ConfigurationError) as caught:
        Crew(tasks=tasks)

    message = str(caught.value)
    assert message.startswith("the tasks' context forms a cycle: ")
    for name in ("outline", "draft", "review"):
        assert name in message


def test_a_task_in_its_own_context_fails_at_construction(agent: Agent) -> None:
    with pytest.raises(ConfigurationError, match=r"^task 'solo' lists itself in its context"):
        Crew(tasks=[Task("a", agent=agent, name="solo", context=["solo"])])


def test_a_context_task_missing_from_the_crew_says_to_add_it(agent: Agent) -> None:
    facts = Task("facts", agent=agent, name="facts")
    draft = Task("draft", agent=agent, name="draft", context=[facts])

    with pytest.raises(ConfigurationError, match=r"^task 'draft' has context Task\('facts'\)"):
        Crew(tasks=[draft])


def test_an_unknown_context_name_lists_the_crew_task_names(agent: Agent) -> None:
    tasks = [Task("a", agent=agent, name="facts"), Task("b", agent=agent, context=["fact"])]

    with pytest.raises(ConfigurationError) as caught:
        Crew(tasks=tasks)

    assert str(caught.value) == (
        "task 'task_2' has context 'fact', but no task in this crew has that name; "
        "task names: facts, task_2"
    )


@pytest.mark.parametrize(
    ("first", "second", "duplicate"),
    [("same", "same", "same"), ("task_2", None, "task_2")],
    ids=["explicit", "explicit-vs-default"],
)
def test_duplicate_task_names_fail_at_construction(
    agent: Agent, first: str, second: str | None, duplicate: str
) -> None:
    tasks = [Task("a", agent=agent, name=first), Task("b", agent=agent, name=second)]

    with pytest.raises(ConfigurationError, match=f"^two tasks are named '{duplicate}'"):
        Crew(tasks=tasks)


def test_the_same_task_object_twice_fails_at_construction(agent: Agent) -> None:
    task = Task("a", agent=agent, name="once")

    with pytest.raises(ConfigurationError, match=r"appears twice.*list each task once"):
        Crew(tasks=[task, task])


def test_a_task_without_agent_in_a_crew_without_agents_fails(agent: Agent) -> None:
    with pytest.raises(ConfigurationError, match=r"'task_1' has no agent.*0 agents"):
        Crew(tasks=[Task("a")])


def test_a_task_without_agent_among_two_crew_agents_fails(agent: Agent) -> None:
    other = Agent(role="Writer", goal="Write")
    tasks = [Task("a", agent=agent), Task("b", agent=other), Task("c", name="who")]

    with pytest.raises(ConfigurationError, match=r"'who' has no agent.*2 agents"):
        Crew(tasks=tasks)


def test_a_task_without_agent_gets_the_single_explicit_crew_agent(agent: Agent) -> None:
    task = Task("a")

    crew = Crew(tasks=[task], agents=[agent])

    assert crew.graph.agent_of(task) is agent


def test_a_task_without_agent_gets_the_only_agent_of_the_other_tasks(agent: Agent) -> None:
    lonely = Task("b")

    crew = Crew(tasks=[Task("a", agent=agent), lonely, Task("c", agent=agent)])

    assert crew.graph.agent_of(lonely) is agent


def test_an_unknown_process_name_lists_the_available_ones(agent: Agent) -> None:
    with pytest.raises(ConfigurationError, match=r"unknown process 'paralel'.*sequential"):
        Crew(tasks=[Task("a", agent=agent)], process="paralel")


def test_a_sequential_crew_rejects_context_from_a_later_task(agent: Agent) -> None:
    tasks = [
        Task("a", agent=agent, name="draft", context=["facts"]),
        Task("b", agent=agent, name="facts"),
    ]

    with pytest.raises(ConfigurationError) as caught:
        Crew(tasks=tasks, process="sequential")

    assert str(caught.value) == (
        "task 'draft' needs the output of 'facts', which is listed after it; a sequential crew "
        "runs tasks in list order, so move 'facts' before 'draft'"
    )


def test_no_tasks_fails_at_construction() -> None:
    with pytest.raises(ConfigurationError, match=r"^a crew needs at least one task"):
        Crew(tasks=[])


def test_max_concurrency_below_one_fails_at_construction(agent: Agent) -> None:
    with pytest.raises(ConfigurationError, match="max_concurrency"):
        Crew(tasks=[Task("a", agent=agent)], max_concurrency=0)


def test_a_single_task_instead_of_a_list_says_to_pass_a_list(agent: Agent) -> None:
    with pytest.raises(ConfigurationError, match=r"tasks must be a list.*Crew\(tasks=\["):
        Crew(tasks=Task("a", agent=agent))  # type: ignore[arg-type]


def test_a_process_class_or_object_can_be_passed(agent: Agent) -> None:
    by_class = Crew(tasks=[Task("a", agent=agent)], process=Sequential)
    by_object = Crew(tasks=[Task("a", agent=agent)], process=Sequential())

    assert by_class.process_name == "sequential"
    assert by_object.process_name == "sequential"


def test_a_process_that_is_neither_a_name_nor_a_process_is_rejected(agent: Agent) -> None:
    with pytest.raises(ConfigurationError, match="process"):
        Crew(tasks=[Task("a", agent=agent)], process=42)  # type: ignore[arg-type]


# -- kickoff inputs ----------------------------------------------------------------------------


async def test_inputs_fill_the_description_and_expected_output() -> None:
    llm = ScriptedLLM(["ok"])
    agent = Agent(role="R", goal="G", llm=llm)
    task = Task("Collect facts about {topic}", expected_output="{count} bullets", agent=agent)

    await Crew(tasks=[task]).kickoff(inputs={"topic": "sodium batteries", "count": 5})

    prompt = prompt_of(llm.requests[0])
    assert "Collect facts about sodium batteries" in prompt
    assert "5 bullets" in prompt
    assert "{topic}" not in prompt


async def test_missing_inputs_are_all_listed_with_the_tasks_that_use_them(agent: Agent) -> None:
    crew = Crew(
        tasks=[
            Task("About {topic} for {audience}", agent=agent, name="facts"),
            Task("Post on {topic}", agent=agent, name="post", expected_output="{length} words"),
            Task("Literal {{braces}} only", agent=agent, name="plain"),
        ]
    )

    with pytest.raises(ConfigurationError) as caught:
        await crew.kickoff(inputs={"audience": "kids"})

    message = str(caught.value)
    assert "'topic' (used by facts, post)" in message
    assert "'length' (used by post)" in message
    assert "audience" not in message
    assert "braces" not in message
    assert "kickoff(inputs=" in message


async def test_an_input_that_is_not_json_serialisable_is_named(agent: Agent) -> None:
    crew = Crew(tasks=[Task("About {topic}", agent=agent)])

    with pytest.raises(ConfigurationError, match=r"input 'topic' is not JSON-serialisable \(set\)"):
        await crew.kickoff(inputs={"topic": {"a", "b"}})


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), -float("inf"), {"deep": [1.0, float("nan")]}]
)
async def test_nan_and_infinity_inputs_are_refused_before_anything_runs(value: Any) -> None:
    calls: list[object] = []
    agent = Agent(role="Writer", goal="Write", llm=FunctionLLM(lambda r: calls.append(r) or "x"))
    crew = Crew(tasks=[Task("About {topic}", agent=agent)], store=MemoryStore())

    with pytest.raises(ConfigurationError, match="input 'topic' holds NaN or Infinity"):
        await crew.kickoff(inputs={"topic": value})
    with pytest.raises(ConfigurationError, match=r"inputs\[0\]: input 'topic' holds NaN"):
        await crew.kickoff_for_each([{"topic": value}])

    assert calls == []
    assert await crew.resolved_store().list_runs() == []  # type: ignore[union-attr]


@pytest.mark.parametrize("inputs", [{"topic": "caf\udce9"}, {"topic": ["a", {"b": "\ud800"}]}])
async def test_text_that_is_not_unicode_is_refused_before_anything_runs(inputs: Any) -> None:
    # A lone surrogate is what Python makes of argv bytes that are not UTF-8; no record can hold it.
    calls: list[object] = []
    agent = Agent(role="Writer", goal="Write", llm=FunctionLLM(lambda r: calls.append(r) or "x"))
    crew = Crew(tasks=[Task("About {topic}", agent=agent)], store=MemoryStore())

    with pytest.raises(ConfigurationError, match="input 'topic' holds text that is not valid Unic"):
        await crew.kickoff(inputs=inputs)
    with pytest.raises(ConfigurationError, match="default input 'topic' holds text that is not"):
        Crew(tasks=[Task("About {topic}", agent=agent)], default_inputs=inputs)

    assert calls == []
    assert await crew.resolved_store().list_runs() == []  # type: ignore[union-attr]


@pytest.mark.parametrize("inputs", [["topic"], "topic=x", 42])
async def test_inputs_that_are_not_a_mapping_are_rejected(agent: Agent, inputs: Any) -> None:
    crew = Crew(tasks=[Task("a", agent=agent)])

    with pytest.raises(ConfigurationError, match="inputs must be a mapping"):
        await crew.kickoff(inputs=inputs)


async def test_input_names_must_be_strings(agent: Agent) -> None:
    crew = Crew(tasks=[Task("a", agent=agent)])

    with pytest.raises(ConfigurationError, match="input names must be strings"):
        await crew.kickoff(inputs={1: "x"})  # type: ignore[dict-item]


async def test_the_run_uses_a_copy_of_the_inputs_taken_at_kickoff() -> None:
    inputs: dict[str, Any] = {"topic": "rivers", "tags": ["water"]}

    def answer(request: LLMRequest) -> str:
        # The caller changes its objects while the run is under way.
        inputs["topic"] = "deserts"
        inputs["tags"].append("sand")
        return "ok"

    llm = FunctionLLM(answer)
    agent = Agent(role="R", goal="G", llm=llm)
    crew = Crew(
        tasks=[Task("One on {topic}", agent=agent), Task("Two on {topic} {tags}", agent=agent)]
    )

    await crew.kickoff(inputs=inputs)

    second = prompt_of(llm.requests[1])
    assert "Two on rivers" in second
    assert '["water"]' in second
    assert "deserts" not in second
    assert "sand" not in second


async def test_a_crew_without_placeholders_runs_without_inputs(agent: Agent) -> None:
    result = await Crew(tasks=[Task("Say hi", agent=agent)]).kickoff()

    assert result.output.text == "did: Say hi"


# -- the result --------------------------------------------------------------------------------


@pytest.fixture
def three_task_crew() -> tuple[Crew, ScriptedLLM]:
    llm = ScriptedLLM(["facts text", "outline text", "draft text"])
    agent = Agent(role="Writer", goal="Write", llm=llm)
    crew = Crew(
        name="blog",
        tasks=[
            Task("Facts", agent=agent, name="facts"),
            Task("Outline", agent=agent),
            Task("Draft", agent=agent, name="draft"),
        ],
    )
    return crew, llm


async def test_result_gives_outputs_in_declaration_order_and_by_name(
    three_task_crew: tuple[Crew, ScriptedLLM],
) -> None:
    crew, _ = three_task_crew

    result = await crew.kickoff()

    assert isinstance(result, CrewResult)
    assert [o.task for o in result.outputs] == ["facts", "task_2", "draft"]
    assert [o.text for o in result] == ["facts text", "outline text", "draft text"]
    assert result.output.text == "draft text"
    assert result.text == "draft text"
    assert str(result) == "draft text"
    assert result["task_2"].text == "outline text"
    assert "facts" in result
    assert "nope" not in result
    assert len(result) == 3
    assert result.output.agent == "Writer"
    assert result.output.model == "scripted"


async def test_result_lookup_of_an_unknown_name_lists_the_task_names(
    three_task_crew: tuple[Crew, ScriptedLLM],
) -> None:
    crew, _ = three_task_crew
    result = await crew.kickoff()

    with pytest.raises(KeyError, match=r"no task named 'final'.*'facts', 'task_2', 'draft'"):
        result["final"]


async def test_result_names_the_run_crew_and_process(
    three_task_crew: tuple[Crew, ScriptedLLM],
) -> None:
    crew, _ = three_task_crew

    result = await crew.kickoff()

    assert result.crew == "blog"
    assert result.process == "sequential"
    assert len(result.run_id) == 32
    assert result.start <= result.end
    assert result.duration >= 0


async def test_result_usage_is_the_sum_of_the_tasks_usage(
    three_task_crew: tuple[Crew, ScriptedLLM],
) -> None:
    crew, _ = three_task_crew

    result = await crew.kickoff()

    assert result.usage.requests == 3
    assert result.usage.prompt_tokens == sum(o.usage.prompt_tokens for o in result.outputs)
    assert result.usage.completion_tokens == sum(o.usage.completion_tokens for o in result.outputs)
    assert all(o.usage.requests == 1 and o.usage.total_tokens > 0 for o in result.outputs)


async def test_result_timeline_has_one_record_per_task_with_its_attempts(
    three_task_crew: tuple[Crew, ScriptedLLM],
) -> None:
    crew, _ = three_task_crew

    result = await crew.kickoff()

    assert [r.task for r in result.timeline] == ["facts", "task_2", "draft"]
    for record in result.timeline:
        assert record.status is TaskStatus.COMPLETED
        assert record.agent == "Writer"
        assert record.start is not None
        assert record.end is not None
        assert record.start <= record.end
        assert [a.number for a in record.attempts] == [1]
        assert record.attempts[0].status is TaskStatus.COMPLETED
        assert record.attempts[0].usage.requests == 1
    # Sequential: each task starts after the one before it ended.
    ends = [r.end for r in result.timeline[:-1]]
    starts = [r.start for r in result.timeline[1:]]
    assert all(
        s is not None and e is not None and e <= s for e, s in zip(ends, starts, strict=True)
    )


# -- context -----------------------------------------------------------------------------------


async def test_sequential_gives_a_task_without_declared_context_the_previous_output() -> None:
    llm = ScriptedLLM(["FIRST-OUTPUT", "SECOND-OUTPUT", "THIRD-OUTPUT"])
    agent = Agent(role="R", goal="G", llm=llm)
    crew = Crew(
        tasks=[
            Task("one", agent=agent, name="one"),
            Task("two", agent=agent, name="two"),
            Task("three", agent=agent, name="three"),
        ]
    )

    await crew.kickoff()

    second, third = prompt_of(llm.requests[1]), prompt_of(llm.requests[2])
    assert '<context task="one">\nFIRST-OUTPUT\n</context>' in second
    assert '<context task="two">\nSECOND-OUTPUT\n</context>' in third
    # Only the previous task, not everything before it.
    assert "FIRST-OUTPUT" not in third


async def test_a_task_with_empty_context_gets_no_earlier_output() -> None:
    llm = ScriptedLLM(["FIRST-OUTPUT", "SECOND-OUTPUT"])
    agent = Agent(role="R", goal="G", llm=llm)
    crew = Crew(tasks=[Task("one", agent=agent), Task("two", agent=agent, context=[])])

    await crew.kickoff()

    second = prompt_of(llm.requests[1])
    assert "FIRST-OUTPUT" not in second
    assert "<context" not in second


async def test_declared_context_is_given_in_the_crew_order_of_the_tasks() -> None:
    llm = ScriptedLLM(["A-OUT", "B-OUT", "C-OUT"])
    agent = Agent(role="R", goal="G", llm=llm)
    crew = Crew(
        tasks=[
            Task("a", agent=agent, name="a"),
            Task("b", agent=agent, name="b", context=[]),
            Task("c", agent=agent, name="c", context=["b", "a"]),
        ]
    )

    await crew.kickoff()

    prompt = prompt_of(llm.requests[2])
    assert prompt.index('<context task="a">') < prompt.index('<context task="b">')
    assert "A-OUT" in prompt
    assert "B-OUT" in prompt


# -- sync entry point --------------------------------------------------------------------------


def test_kickoff_sync_runs_the_crew_from_sync_code(agent: Agent) -> None:
    crew = Crew(tasks=[Task("Write about {topic}", agent=agent)])

    result = crew.kickoff_sync(inputs={"topic": "owls"})

    assert result.output.text == "did: Write about owls"


async def test_kickoff_sync_inside_a_running_loop_says_to_await_kickoff(agent: Agent) -> None:
    crew = Crew(tasks=[Task("a", agent=agent)])

    with pytest.raises(ConfigurationError, match=r"await crew\.kickoff"):
        crew.kickoff_sync()


# -- runs share nothing ------------------------------------------------------------------------


async def test_two_kickoffs_of_one_crew_have_separate_ids_outputs_and_usage(agent: Agent) -> None:
    crew = Crew(tasks=[Task("Write about {topic}", agent=agent)])

    first = await crew.kickoff(inputs={"topic": "owls"})
    second = await crew.kickoff(inputs={"topic": "bats"})

    assert first.run_id != second.run_id
    assert first.output.text == "did: Write about owls"
    assert second.output.text == "did: Write about bats"
    assert first.usage.requests == second.usage.requests == 1
    assert first.usage is not second.usage


async def test_concurrent_kickoffs_of_one_crew_share_nothing() -> None:
    arrived = 0
    both_running = anyio.Event()

    async def answer(request: LLMRequest) -> str:
        nonlocal arrived
        arrived += 1
        if arrived == 2:
            both_running.set()
        # Neither run can finish until both are in flight.
        await both_running.wait()
        return "did: " + prompt_of(request).splitlines()[0]

    agent = Agent(role="R", goal="G", llm=FunctionLLM(answer))
    crew = Crew(tasks=[Task("Write about {topic}", agent=agent)])
    results: dict[str, CrewResult] = {}

    async def run(topic: str) -> None:
        results[topic] = await crew.kickoff(inputs={"topic": topic})

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(run, "owls")
            group.start_soon(run, "bats")

    assert results["owls"].run_id != results["bats"].run_id
    assert results["owls"].output.text == "did: Write about owls"
    assert results["bats"].output.text == "did: Write about bats"
    assert results["owls"].usage.requests == results["bats"].usage.requests == 1
    assert [r.task for r in results["owls"].timeline] == ["task_1"]


async def test_kickoff_llm_override_answers_for_every_agent() -> None:
    unused = ScriptedLLM([])  # would raise if asked anything
    researcher = Agent(role="Researcher", goal="G", llm=unused)
    writer = Agent(role="Writer", goal="G", llm=ScriptedLLM([]))
    crew = Crew(tasks=[Task("a", agent=researcher), Task("b", agent=writer)])
    override = FunctionLLM(lambda request: "overridden", model="override")

    result = await crew.kickoff(llm=override)

    assert [o.text for o in result] == ["overridden", "overridden"]
    assert [o.model for o in result] == ["override", "override"]
    assert len(override.requests) == 2
    assert unused.requests == []


async def test_kickoff_llm_override_accepts_a_model_string() -> None:
    agent = Agent(role="R", goal="G", llm=ScriptedLLM([]))
    crew = Crew(tasks=[Task("a", agent=agent)])

    result = await crew.kickoff(llm="offline")

    assert result.output.model == OfflineLLM.model


async def test_kickoff_llm_override_rejects_a_bad_model_string(agent: Agent) -> None:
    crew = Crew(tasks=[Task("a", agent=agent)])

    with pytest.raises(ConfigurationError, match="provider"):
        await crew.kickoff(llm="gpt-4o")


async def test_default_inputs_fill_what_a_kickoff_does_not_give() -> None:
    agent = Agent(role="Writer", goal="Write", llm=FunctionLLM(lambda r: r.messages[1].content))
    crew = Crew(
        tasks=[Task("About {topic} for {audience}", agent=agent)],
        default_inputs={"topic": "tides", "audience": "children"},
        store=MemoryStore(),
    )

    plain = await crew.kickoff()
    given = await crew.kickoff({"topic": "waves"})
    [each] = await crew.kickoff_for_each([{"audience": "sailors"}])

    assert plain.text.startswith("About tides for children")
    assert given.text.startswith("About waves for children")  # the kickoff's own wins
    assert each.text.startswith("About tides for sailors")
    runs = await crew.resolved_store().list_runs()  # type: ignore[union-attr]
    assert {tuple(sorted(r.inputs.items())) for r in runs} == {
        (("audience", "children"), ("topic", "tides")),
        (("audience", "children"), ("topic", "waves")),
        (("audience", "sailors"), ("topic", "tides")),
    }


def test_default_inputs_must_be_json() -> None:
    with pytest.raises(ConfigurationError, match="default input 'n' holds NaN or Infinity"):
        Crew(tasks=[Task("a", agent=Agent(role="W", goal="g"))], default_inputs={"n": float("nan")})
    with pytest.raises(ConfigurationError, match="default input 'n' is not JSON-serialisable"):
        Crew(tasks=[Task("a", agent=Agent(role="W", goal="g"))], default_inputs={"n": {1, 2}})


async def test_a_structured_answer_holding_nan_fails_its_task_not_the_run(tmp_path: Path) -> None:
    # It once validated, then failed the whole run inside the store (JSON has no NaN).
    from pydantic import BaseModel

    from crewflow.store import SQLiteStore

    class Reading(BaseModel):
        value: float

    agent = Agent(role="Meter", goal="Measure", llm=FunctionLLM(lambda r: '{"value": NaN}'))
    other = Agent(role="Writer", goal="Write", llm=FunctionLLM(lambda r: "fine"))
    store = SQLiteStore(tmp_path / "runs.db")
    crew = Crew(
        tasks=[
            Task("Measure", agent=agent, output_model=Reading, name="measure", context=[]),
            Task("Write", agent=other, name="write", context=[]),
        ],
        process="parallel",
        on_failure="continue",
        store=store,
    )

    with pytest.raises(CrewPartialFailure) as caught:
        await crew.kickoff()

    assert caught.value.outputs["write"].text == "fine"
    assert list(caught.value.failures) == ["measure"]
    assert "NaN is not a JSON number" in str(caught.value.failures["measure"])
    [run] = await store.list_runs()
    assert run.status == "failed"
    assert list(await store.outputs(run.run_id)) == ["write"]


async def test_a_kickoff_never_freezes_the_heap(tmp_path: Path) -> None:
    # gc.freeze() would act on the whole heap of the application that runs the crew: only the
    # console script, whose process is crewflow's own, may (`crewflow run`).
    agent = Agent(role="Writer", goal="G", llm=OfflineLLM())
    crew = Crew(
        tasks=[Task("One", agent=agent), Task("Two", agent=agent)],
        store=SQLiteStore(tmp_path / "runs.db"),
    )

    await crew.kickoff()

    assert gc.get_freeze_count() == 0


FIRST_KICKOFF = """
from crewflow import Agent, Crew, Task
from crewflow.llm.offline import OfflineLLM

agent = Agent(role="Writer", goal="G", llm=OfflineLLM())
for _ in range(2):
    Crew(tasks=[Task("One", agent=agent), Task("Two", agent=agent)]).kickoff_sync()
"""


def test_the_first_kickoff_imports_the_runtime_off_the_event_loop(tmp_path: Path) -> None:
    watched = ("crewflow._runtime.run", "crewflow.store.sqlite", "sqlite3")

    found = imported_on_main_thread(FIRST_KICKOFF, watched, tmp_path)

    assert found == dict.fromkeys(watched, False)


SCHEMAS_OF_A_FIRST_KICKOFF = """
import asyncio
import json
from pydantic import BaseModel
from crewflow import Agent, Crew, Task
from crewflow.crew import _load_runtime
from crewflow.llm.offline import OfflineLLM


def deferred():
    found, stack = set(), list(BaseModel.__subclasses__())
    while stack:
        model = stack.pop()
        stack.extend(model.__subclasses__())
        if model.__module__.startswith("crewflow") and not model.__pydantic_complete__:
            found.add(f"{model.__module__}.{model.__qualname__}")
    return found


agent = Agent(role="Writer", goal="G", llm=OfflineLLM())
crew = Crew(tasks=[Task("One", agent=agent), Task("Two", agent=agent)])
before = deferred()
asyncio.run(_load_runtime())
loaded = deferred()
crew.kickoff_sync()
print(json.dumps([sorted(before - loaded), sorted(loaded - deferred())]))
"""


def test_the_first_kickoff_builds_its_models_schemas_off_the_event_loop(tmp_path: Path) -> None:
    # The schemas pydantic defers (to keep `import crewflow` light) are built in the worker
    # thread that imports the runtime, not by the kickoff on the loop: ~15-20 ms.
    env = {**os.environ, "CREWFLOW_HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", SCHEMAS_OF_A_FIRST_KICKOFF],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )

    assert out.returncode == 0, out.stderr
    built_off_the_loop, built_on_the_loop = json.loads(out.stdout)
    assert "crewflow.crew.CrewResult" in built_off_the_loop
    assert built_on_the_loop == []


async def test_a_kickoff_given_its_run_id_records_under_it_and_the_id_is_never_reused() -> None:
    from crewflow.exceptions import DuplicateRunError

    replies: list[str] = []
    writer = Agent(
        role="Writer", goal="Write", llm=FunctionLLM(lambda r: replies.append("x") or "x")
    )
    store = MemoryStore()
    crew = Crew(tasks=[Task("Write", agent=writer, name="line")], store=store)

    result = await crew.kickoff(run_id="given-1", progress=False)

    assert result.run_id == "given-1"
    assert (await store.get_run("given-1")) is not None
    with pytest.raises(DuplicateRunError):
        await crew.kickoff(run_id="given-1", progress=False)
    assert replies == ["x"]  # the refused kickoff sent nothing
