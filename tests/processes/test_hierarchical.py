"""The hierarchical process: plan, steps on the shared dispatcher, review with redo rounds,
answer; its schema, its configuration errors, failures and resume."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from pydantic import BaseModel

from crewflow import Agent, Crew, Task
from crewflow import events as ev
from crewflow.exceptions import ConfigurationError, CrewPartialFailure, InvalidPlan, TaskFailed
from crewflow.processes import ProblemKind
from crewflow.processes.hierarchical import Hierarchical, Plan
from crewflow.store import MemoryStore
from crewflow.testing import (
    VALID_PLAN,
    Error,
    FunctionLLM,
    ScriptedManager,
    capture_events,
    redo,
)

if TYPE_CHECKING:
    from crewflow.llm._types import LLMRequest


def prompt_of(request: LLMRequest) -> str:
    return request.messages[1].content or ""


class Worker:
    """The workers' LLM: answers ``done <first line of the prompt>`` and counts calls by the
    step's first word."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.calls: dict[str, int] = {}
        self.prompts: dict[str, str] = {}
        self.fail = fail or set()

    def __call__(self, request: LLMRequest) -> str | Error:
        prompt = prompt_of(request)
        step = prompt.split()[0]
        self.calls[step] = self.calls.get(step, 0) + 1
        self.prompts[step] = prompt
        if step in self.fail:
            return Error(400, f"{step} cannot be done")
        return f"done {step}"


PLAN = {
    "research": [
        {"worker": "Researcher", "instructions": "research.1 find sources"},
        {"worker": "Researcher", "instructions": "research.2 read them"},
    ],
    "analysis": [{"worker": "Analyst", "instructions": "analysis.1 weigh them", "after": []}],
    "report": [{"worker": "Writer", "instructions": "report.1 write it up", "after": []}],
}


def make_crew(
    manager_llm: Any, worker: Worker | None = None, **options: Any
) -> tuple[Crew, Worker]:
    worker = worker or Worker()
    llm = FunctionLLM(worker)
    researcher = Agent(role="Researcher", goal="Find facts", llm=llm)
    analyst = Agent(role="Analyst", goal="Weigh facts", llm=llm)
    writer = Agent(role="Writer", goal="Write", llm=llm)
    research = Task("Research {topic}", name="research", expected_output="facts", context=[])
    analysis = Task("Analyse the facts", name="analysis", context=[research])
    report = Task("Report on {topic}", name="report", context=[analysis])
    manager = Agent(role="Manager", goal="Lead the team", llm=manager_llm)
    options.setdefault("store", None)
    crew = Crew(
        tasks=[research, analysis, report],
        agents=[researcher, analyst, writer],
        process="hierarchical",
        manager=manager,
        **options,
    )
    return crew, worker


async def test_a_plan_runs_as_steps_and_each_crew_task_is_its_last_step() -> None:
    manager = ScriptedManager(plans=[PLAN])
    crew, worker = make_crew(manager)

    with capture_events() as events:
        result = await crew.kickoff({"topic": "tides"})

    assert [output.task for output in result.outputs] == ["research", "analysis", "report"]
    assert [output.task for output in result.internal] == [
        "plan",
        "research.1",
        "research.2",
        "analysis.1",
        "report.1",
        "review.1",
        "final_answer",
    ]
    assert result["research"].text == "done research.2"  # its last step's output
    assert result["report"].text == "done report.1"
    assert result.output.text == "The final answer, from the manager."
    assert result.final_task == "final_answer"
    assert isinstance(result.plan, Plan)
    assert result.plan.tasks == ["research", "analysis", "report"]
    assert worker.calls == {"research.1": 1, "research.2": 1, "analysis.1": 1, "report.1": 1}
    delegated = {(e.task, e.to) for e in events.of_type(ev.TaskDelegated)}
    assert delegated == {
        ("research", "research.2"),
        ("analysis", "analysis.1"),
        ("report", "report.1"),
    }
    # A crew task's steps run in order, and a task's first step gets what the task needs.
    assert '<context task="research.1">' in worker.prompts["research.2"]
    assert '<context task="research.2">' in worker.prompts["analysis.1"]
    assert "tides" in worker.prompts["research.1"]  # the crew task's template is rendered


async def test_the_plan_schema_is_built_per_crew_so_every_schema_valid_plan_runs() -> None:
    manager = ScriptedManager()  # VALID_PLAN: built from the schema the manager was sent
    crew, _ = make_crew(manager)

    result = await crew.kickoff({"topic": "tides"})

    schema = manager.asked["plan"][0].output.schema  # type: ignore[union-attr]
    assert schema["required"] == ["research", "analysis", "report"]
    assert schema["additionalProperties"] is False
    research = schema["properties"]["research"]
    assert research["minItems"] == 1
    assert research["items"]["properties"]["worker"]["enum"] == ["Researcher", "Analyst", "Writer"]
    assert "after" not in research["items"]["properties"]  # nothing is declared before it
    report = schema["properties"]["report"]["items"]["properties"]["after"]
    assert report["items"]["enum"] == ["research", "analysis"]  # only tasks declared earlier
    assert result.plan is not None
    assert len(manager.asked["plan"]) == 1


async def test_independent_crew_tasks_run_their_steps_side_by_side() -> None:
    both = anyio.Event()
    arrived: set[str] = set()

    async def worker(request: LLMRequest) -> str:
        step = prompt_of(request).split()[0]
        arrived.add(step)
        if arrived >= {"a.1", "b.1"}:
            both.set()
        with anyio.fail_after(5):
            await both.wait()  # each waits for the other: only side by side do both finish
        return f"done {step}"

    llm = FunctionLLM(worker)
    crew = Crew(
        tasks=[Task("A", name="a", context=[]), Task("B", name="b", context=[])],
        agents=[Agent(role="One", goal="g", llm=llm), Agent(role="Two", goal="g", llm=llm)],
        process=Hierarchical(
            Agent(role="Manager", goal="Lead", llm=ScriptedManager()),
            plan={
                "a": [{"worker": "One", "instructions": "a.1 go"}],
                "b": [{"worker": "Two", "instructions": "b.1 go"}],
            },
        ),
        max_concurrency=2,
        store=None,
    )

    result = await crew.kickoff()

    assert [result["a"].text, result["b"].text] == ["done a.1", "done b.1"]


class Report(BaseModel):
    title: str
    score: int


async def test_a_crew_tasks_output_model_applies_to_its_last_step() -> None:
    def worker(request: LLMRequest) -> Any:
        if request.output is not None:
            return {"title": "Tides", "score": 7}
        return "notes"

    llm = FunctionLLM(worker)
    crew = Crew(
        tasks=[Task("Write the report", name="report", output_model=Report, context=[])],
        agents=[Agent(role="Writer", goal="g", llm=llm)],
        process=Hierarchical(
            Agent(role="Manager", goal="Lead", llm=ScriptedManager()),
            plan={
                "report": [
                    {"worker": "Writer", "instructions": "draft"},
                    {"worker": "Writer", "instructions": "finish"},
                ]
            },
        ),
        store=None,
    )

    result = await crew.kickoff()

    assert result["report.1"].data is None
    assert result["report"].data == Report(title="Tides", score=7)
    assert result["report.2"].data == result["report"].data


async def test_a_plan_that_does_not_fit_is_asked_for_again_with_its_problems() -> None:
    bad = {
        "research": [{"worker": "Nobody", "instructions": "x"}],
        "analysis": [{"worker": "Analyst", "instructions": "y", "after": ["report"]}],
        "extra": [{"worker": "Writer", "instructions": "z"}],
    }
    manager = ScriptedManager(plans=[bad, PLAN])
    crew, _ = make_crew(manager)

    result = await crew.kickoff({"topic": "tides"})

    assert len(manager.asked["plan"]) == 2
    again = prompt_of(manager.asked["plan"][1])
    assert "no team member has the role 'Nobody'" in again
    assert "'after' names 'report'" in again
    assert "- report: has no step" in again
    assert "the crew has no task 'extra'" in again
    assert "plan.2" in result
    assert result.plan is not None
    assert result.plan.tasks == list(PLAN)


async def test_a_plan_that_never_fits_fails_the_run_with_invalid_plan() -> None:
    bad = {"research": [{"worker": "Nobody", "instructions": "x"}]}
    manager = ScriptedManager(plans=[bad])
    crew, worker = make_crew(manager)

    with pytest.raises(InvalidPlan) as raised:
        await crew.kickoff({"topic": "tides"})

    assert len(manager.asked["plan"]) == 3  # max_plan_retries=2: asked again twice
    assert {problem.kind for problem in raised.value.problems} == {
        ProblemKind.NO_AGENT,
        ProblemKind.UNCOVERED,
    }
    assert isinstance(raised.value.plan, Plan)
    assert raised.value.plan["research"][0].worker == "Nobody"
    assert set(raised.value.outputs) == {"plan", "plan.2", "plan.3"}
    assert worker.calls == {}


async def test_a_review_that_asks_for_a_redo_runs_the_task_and_its_dependants_again() -> None:
    manager = ScriptedManager(plans=[PLAN], reviews=[redo({"analysis": "cite {sources}"})])
    crew, worker = make_crew(manager)

    result = await crew.kickoff({"topic": "tides"})

    redone = [o.task for o in result.internal if o.task.endswith(".r1")]
    assert redone == ["analysis.1.r1", "report.1.r1"]  # report depends on analysis
    assert worker.calls["research.1"] == 1  # not redone
    assert result["analysis"].text == "done analysis.1"  # the redo's output (same prompt head)
    assert result.timeline[1].task == "analysis"
    # The feedback reaches the redo, braces and all, with the result under review.
    prompt = worker.prompts["analysis.1"]
    assert "asks for a revision: cite {sources}" in prompt
    assert '<context task="analysis.1">' in prompt
    assert '<context task="analysis.1.r1">' in worker.prompts["report.1"]
    assert len(manager.asked["review"]) == 1  # max_review_rounds=1
    assert "final_answer" in result


async def test_review_rounds_are_bounded_by_max_review_rounds() -> None:
    manager = ScriptedManager(plans=[PLAN], reviews=[redo({"report": "shorter"})])
    worker = Worker()
    llm = FunctionLLM(worker)
    agents = [Agent(role=r, goal="g", llm=llm) for r in ("Researcher", "Analyst", "Writer")]
    tasks = [
        Task("Research", name="research", context=[]),
        Task("Analyse", name="analysis", context=["research"]),
        Task("Report", name="report", context=["analysis"]),
    ]
    crew = Crew(
        tasks=tasks,
        agents=agents,
        process=Hierarchical(Agent(role="Manager", goal="Lead", llm=manager), max_review_rounds=2),
        store=None,
    )

    result = await crew.kickoff()

    assert len(manager.asked["review"]) == 2
    assert [o.task for o in result.internal if o.task.startswith("report.1")] == [
        "report.1",
        "report.1.r1",
        "report.1.r2",
    ]
    assert worker.calls["report.1"] == 3


async def test_a_fixed_plan_is_not_asked_for() -> None:
    manager = ScriptedManager()
    llm = FunctionLLM(Worker())
    crew = Crew(
        tasks=[Task("Research", name="research", context=[])],
        agents=[Agent(role="Researcher", goal="g", llm=llm)],
        process=Hierarchical(
            Agent(role="Manager", goal="Lead", llm=manager),
            plan={"research": [{"worker": "Researcher", "instructions": "research.1 go"}]},
            max_review_rounds=0,
        ),
        store=None,
    )

    result = await crew.kickoff()

    assert manager.asked["plan"] == []
    assert manager.asked["review"] == []
    assert result.plan == Plan(
        {"research": [{"worker": "Researcher", "instructions": "research.1 go"}]}
    )
    assert [o.task for o in result.internal] == ["research.1", "final_answer"]


async def test_a_failed_step_under_continue_skips_its_task_and_dependants_without_review() -> None:
    manager = ScriptedManager(plans=[PLAN])
    crew, _worker = make_crew(manager, Worker(fail={"analysis.1"}), on_failure="continue")

    with pytest.raises(CrewPartialFailure) as raised:
        await crew.kickoff({"topic": "tides"})

    failure = raised.value
    assert set(failure.failures) == {"analysis.1"}
    assert set(failure.skipped) == {"analysis", "report.1", "report"}
    assert set(failure.outputs) == {"plan", "research.1", "research.2", "research"}
    assert manager.asked["review"] == []
    assert manager.asked["answer"] == []


async def test_a_failed_run_resumes_without_planning_again_or_redoing_finished_steps() -> None:
    store = MemoryStore()
    manager = ScriptedManager(plans=[PLAN], reviews=[redo({"analysis": "again"})])
    worker = Worker(fail={"report.1"})
    crew, _ = make_crew(manager, worker, store=store)

    with pytest.raises(TaskFailed) as raised:
        await crew.kickoff({"topic": "tides"})
    run_id = raised.value.run_id or ""
    worker.fail.clear()
    result = await crew.resume(run_id)

    assert len(manager.asked["plan"]) == 1
    assert worker.calls == {"research.1": 1, "research.2": 1, "analysis.1": 2, "report.1": 3}
    assert set(result.restored) >= {"plan", "research.1", "research.2", "analysis.1"}
    assert result["report"].text == "done report.1"
    assert [t.name for t in await store.added_tasks(run_id)][:5] == [
        "plan",
        "research.1",
        "research.2",
        "analysis.1",
        "report.1",
    ]


async def test_a_completed_run_resumed_replays_everything_without_a_request() -> None:
    store = MemoryStore()
    manager = ScriptedManager(plans=[PLAN], reviews=[redo({"report": "again"})])
    crew, worker = make_crew(manager, store=store)
    first = await crew.kickoff({"topic": "tides"})
    asked = len(manager.requests)
    calls = dict(worker.calls)

    again = await crew.resume(first.run_id)

    assert len(manager.requests) == asked
    assert worker.calls == calls
    assert [o.text for o in again.outputs] == [o.text for o in first.outputs]
    assert again.output.text == first.output.text
    record = await store.get_run(first.run_id)
    assert record is not None
    assert record.status == "completed"


async def test_braces_the_manager_writes_are_never_template_placeholders() -> None:
    plan = {"research": [{"worker": "Researcher", "instructions": "research.1 use {missing} {x}"}]}
    worker = Worker()
    crew = Crew(
        tasks=[Task("Research {topic}", name="research", context=[])],
        agents=[Agent(role="Researcher", goal="g", llm=FunctionLLM(worker))],
        process=Hierarchical(
            Agent(role="Manager", goal="Lead", llm=ScriptedManager(plans=[plan])),
            max_review_rounds=0,
        ),
        store=None,
    )

    await crew.kickoff({"topic": "tides"})

    assert worker.prompts["research.1"].startswith("research.1 use {missing} {x}")


@pytest.mark.parametrize(
    ("agents", "manager", "message"),
    [
        ([], None, "needs workers"),
        (["Writer", "Writer"], None, "two workers have the role 'Writer'"),
        (["Writer", "Manager"], None, "is also one of the crew's workers"),
    ],
)
def test_workers_must_have_unique_roles_and_not_include_the_manager(
    agents: list[str], manager: Any, message: str
) -> None:
    boss = Agent(role="Manager", goal="Lead")
    tasks = [Task("Write", name="write", context=[])]
    with pytest.raises(ConfigurationError, match=message):
        Crew(
            tasks=tasks,
            agents=[Agent(role=role, goal="g") for role in agents],
            process="hierarchical",
            manager=boss,
            store=None,
        )


def test_configuration_errors_are_clear() -> None:
    writer = Agent(role="Writer", goal="g")
    tasks = [Task("Write", name="write", agent=writer)]
    with pytest.raises(ConfigurationError, match="takes no manager"):
        Crew(tasks=tasks, process="parallel", manager="offline")
    with pytest.raises(ConfigurationError, match="given twice"):
        Crew(tasks=tasks, process=Hierarchical("offline"), manager="offline")
    with pytest.raises(ConfigurationError, match="max_review_rounds must be"):
        Hierarchical(max_review_rounds=-1)
    with pytest.raises(ConfigurationError, match="plan= is not a plan"):
        Hierarchical(plan={"write": "not a list"})
    with pytest.raises(ConfigurationError, match="plan= does not fit the crew"):
        Crew(
            tasks=tasks,
            process=Hierarchical(plan={"write": [{"worker": "Nobody", "instructions": "x"}]}),
        )


def test_the_manager_defaults_to_the_catalogue_agent_and_its_config_is_fingerprinted() -> None:
    writer = Agent(role="Writer", goal="g")
    tasks = [Task("Write", name="write", context=[])]
    default = Crew(tasks=tasks, agents=[writer], process="hierarchical", store=None)
    other = Crew(tasks=tasks, agents=[writer], process="hierarchical", manager="openai/gpt-4o")
    bounded = Crew(tasks=tasks, agents=[writer], process=Hierarchical(max_review_rounds=3))

    process = default._process
    assert isinstance(process, Hierarchical)
    assert process.manager.role == "Manager"  # agents/manager.yaml
    config = default.fingerprint().process_config
    assert config["manager"] == "Manager"
    assert config["max_review_rounds"] == 1
    assert other.fingerprint().process_config["model"] == "openai/gpt-4o"
    digests = {c.fingerprint().digest for c in (default, other, bounded)}
    assert len(digests) == 3
    keys = {c.fingerprint().crew_key for c in (default, bounded)}
    assert len(keys) == 1  # the process's configuration is not part of the crew key


def test_tasks_of_a_hierarchical_crew_need_no_agent() -> None:
    crew = Crew(
        tasks=[Task("Research", name="research", context=[])],
        agents=[Agent(role="Researcher", goal="g"), Agent(role="Writer", goal="g")],
        process="hierarchical",
        store=None,
    )
    assert crew.graph.agent_of(crew.tasks[0]).role == "Manager"


async def test_the_offline_model_plans_reviews_and_answers_a_valid_run() -> None:
    crew = Crew(
        tasks=[
            Task("Research {topic}", name="research", context=[]),
            Task("Report on {topic}", name="report", context=["research"]),
        ],
        agents=[Agent(role="Researcher", goal="g"), Agent(role="Writer", goal="g")],
        process="hierarchical",
        store=None,
    )

    result = await crew.kickoff({"topic": "tides"})

    assert result.final_task == "final_answer"
    assert "[offline model] Manager" in result.text
    assert result.plan is not None
    assert result.plan.tasks == ["research", "report"]
    assert json.loads(result["plan"].text).keys() == {"research", "report"}


def test_valid_plan_is_the_default_of_the_scripted_manager() -> None:
    assert ScriptedManager()._plans == [VALID_PLAN]


async def test_a_plan_with_too_many_steps_for_a_task_is_asked_for_again() -> None:
    many = [{"worker": "Researcher", "instructions": f"step {n}"} for n in range(11)]
    manager = ScriptedManager(plans=[{**PLAN, "research": many}, PLAN])
    crew, _ = make_crew(manager)

    await crew.kickoff({"topic": "tides"})

    schema = manager.asked["plan"][0].output.schema  # type: ignore[union-attr]
    assert schema["properties"]["research"]["maxItems"] == 10
    assert "- research: has 11 steps; give it at most 10" in prompt_of(manager.asked["plan"][1])


class SlowCheckpoints(MemoryStore):
    """A store whose checkpoints yield to the event loop before they are written, as a real
    database's do."""

    async def save_task(self, output: Any, attempts: Any = (), *, lease: Any = None) -> None:
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
        await super().save_task(output, attempts, lease=lease)


async def test_a_redo_round_ends_while_the_redone_output_is_still_being_handed_over() -> None:
    # The last redo step ends the round; its crew task takes the new output over with a store
    # write, after the dispatcher found every task ended. The round must still return.
    def answer(request: LLMRequest) -> Any:
        if prompt_of(request).startswith("Review your team's results"):
            return redo({"a": "again"})
        return f"answer {len(llm.requests)}"  # each differs: each redo is checkpointed

    llm = FunctionLLM(answer)
    a = Task("Do a", name="a", context=[])
    b = Task("Do b", name="b", context=[a])
    crew = Crew(
        tasks=[a, b],
        agents=[Agent(role="Worker", goal="Work", llm=llm)],
        process=Hierarchical(
            Agent(role="Manager", goal="Lead", llm=llm),
            plan={
                "a": [{"worker": "Worker", "instructions": "do a"}],
                "b": [{"worker": "Worker", "instructions": "do b"}],
            },
        ),
        store=SlowCheckpoints(),
    )

    with anyio.fail_after(10):
        result = await crew.kickoff()

    assert result["b"].text == "answer 5"
    assert result.output.text == "answer 6"


@pytest.mark.parametrize("name", ["plan", "plan.2", "review.1", "final_answer", "research.1"])
def test_a_crew_task_may_not_take_a_name_the_process_gives_its_own_steps(name: str) -> None:
    tasks = [Task("Research", name="research", context=[]), Task("Other", name=name, context=[])]
    with pytest.raises(ConfigurationError, match=f"task '{name}' has a name the hierarchical"):
        Crew(tasks=tasks, agents=[Agent(role="Worker", goal="g")], process="hierarchical")


def test_tasks_are_listed_after_the_tasks_they_need_so_no_plan_can_close_a_cycle() -> None:
    first = Task("Sum up", name="b", context=["a"])
    second = Task("Research", name="a", context=[])
    with pytest.raises(ConfigurationError, match="task 'b' needs 'a', which is listed after it"):
        Crew(tasks=[first, second], agents=[Agent(role="W", goal="g")], process="hierarchical")


async def test_a_task_named_with_braces_is_named_in_its_steps_not_read_as_a_template() -> None:
    # Found by tests/test_fuzz.py: a step's description quoted the crew task's name as it was,
    # so a task named "{A}" made every plan invalid ("needs inputs the run was not given: A").
    worker = Worker()
    agent = Agent(role="Researcher", goal="Find facts", llm=FunctionLLM(worker))
    crew = Crew(
        tasks=[Task("Research {topic}", name="{A}", agent=agent)],
        process="hierarchical",
        manager=Agent(role="Manager", goal="Lead", llm=ScriptedManager()),
        store=None,
    )

    result = await crew.kickoff({"topic": "tides"})

    assert result["{A}"].text.startswith("done")
    assert "of the task '{A}': Research tides" in next(iter(worker.prompts.values()))
