"""Conditions, routers and optional context: on sequential and parallel, recorded and replayed."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Literal

import pytest
from pydantic import BaseModel

from crewflow import Agent, Crew, Task, optional
from crewflow.events import TaskSkipped
from crewflow.exceptions import (
    ConfigurationError,
    CrewPartialFailure,
    TaskFailed,
    WorkflowError,
)
from crewflow.store import MemoryStore
from crewflow.testing import Error, FunctionLLM, capture_events

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path
    from typing import Any

    from crewflow.llm._types import LLMRequest
    from crewflow.task import TaskOutput

PROCESSES = ["sequential", "parallel"]


class Triage(BaseModel):
    category: Literal["billing", "tech", "sales"]


def first_word(request: LLMRequest) -> str:
    return (request.messages[1].content or "").split()[0]


class Desk:
    """Answers triage with ``category``, every other task with "<first word> done"; fails the
    tasks in ``fail``; keeps every prompt by first word."""

    def __init__(self, category: str = "tech", fail: frozenset[str] = frozenset()) -> None:
        self.category = category
        self.fail = fail
        self.prompts: dict[str, str] = {}

    def answer(self, request: LLMRequest) -> object:
        word = first_word(request)
        self.prompts[word] = request.messages[1].content or ""
        if word in self.fail:
            return Error(400, f"{word} is out")
        if word == "triage":
            return Triage(category=self.category)  # type: ignore[arg-type]
        return f"{word} done"


def routed_desk(
    desk: Desk, process: str, *, store: MemoryStore | None = None, strict: bool = False
) -> Crew:
    agent = Agent(role="Clerk", goal="Help", llm=FunctionLLM(desk.answer))
    names = ["billing", "tech", "sales"]
    triage = Task(
        "triage the request",
        name="triage",
        output_model=Triage,
        context=[],
        router={name: name for name in names},
    )
    branches = [Task(f"{name} answer", name=name, context=[triage]) for name in names]
    join = branches if strict else [optional(branch) for branch in branches]
    answer = Task("answer the customer", name="answer", context=join)
    return Crew(tasks=[triage, *branches, answer], agents=[agent], process=process, store=store)


@pytest.mark.parametrize("process", PROCESSES)
@pytest.mark.parametrize("category", ["billing", "tech", "sales"])
async def test_a_router_runs_the_branch_it_chooses_and_the_join_gets_only_that(
    process: str, category: str
) -> None:
    desk = Desk(category)
    with capture_events() as captured:
        result = await routed_desk(desk, process).kickoff()

    others = {"billing", "tech", "sales"} - {category}
    assert result[category].text == f"{category} done"
    assert result.skipped == {
        other: "not chosen by the router of 'triage'"
        for other in ["billing", "tech", "sales"]
        if other in others
    }
    assert set(desk.prompts) == {"triage", category, "answer"}
    assert f"{category} done" in desk.prompts["answer"]
    assert not any(f"{other} done" in desk.prompts["answer"] for other in others)
    assert result.output.task == "answer"
    skipped = {event.task: event.reason for event in captured.of_type(TaskSkipped)}
    assert skipped == result.skipped
    for other in others:
        with pytest.raises(KeyError, match=f"'{other}' was skipped .not chosen by the router"):
            result[other]


@pytest.mark.parametrize("process", PROCESSES)
async def test_a_join_that_needs_every_branch_is_skipped_with_the_branches_not_chosen(
    process: str,
) -> None:
    desk = Desk("sales")
    result = await routed_desk(desk, process, strict=True).kickoff()

    assert result.skipped["answer"] == "needs 'billing', 'tech', which was skipped"
    assert "answer" not in desk.prompts
    # The last declared task was skipped: the output is the last declared task that ran.
    assert result.output.task == "sales"


@pytest.mark.parametrize("process", PROCESSES)
async def test_a_false_condition_skips_its_task_and_the_subtree_that_needs_it(
    process: str,
) -> None:
    seen: list[tuple[list[str], object, bool]] = []

    def long_enough(outputs: Mapping[str, TaskOutput], state: object) -> bool:
        seen.append((sorted(outputs), state, threading.current_thread() is threading.main_thread()))
        return len(outputs["draft"].text) > 100

    desk = Desk()
    agent = Agent(role="Clerk", goal="Help", llm=FunctionLLM(desk.answer))
    draft = Task("draft it", name="draft", context=[])
    review = Task("review it", name="review", context=[draft], condition=long_enough)
    polish = Task("polish it", name="polish", context=[review])
    ship = Task("ship it", name="ship", context=[draft, optional(review)])
    aside = Task("aside it", name="aside", context=[])
    crew = Crew(tasks=[draft, review, polish, ship, aside], agents=[agent], process=process)

    result = await crew.kickoff()

    assert result.skipped == {
        "review": "condition false",
        "polish": "needs 'review', which was skipped",
    }
    assert [output.task for output in result.outputs] == ["draft", "ship", "aside"]
    # The condition saw the outputs so far and no state; being sync, it ran in a thread.
    assert seen == [(seen[0][0], None, False)]
    assert "draft" in seen[0][0]
    assert "draft done" in desk.prompts["ship"]


@pytest.mark.parametrize("process", PROCESSES)
async def test_an_async_condition_that_holds_runs_the_task(process: str) -> None:
    async def always(outputs: Mapping[str, TaskOutput]) -> bool:
        return "draft" in outputs

    desk = Desk()
    agent = Agent(role="Clerk", goal="Help", llm=FunctionLLM(desk.answer))
    draft = Task("draft it", name="draft", context=[])
    review = Task("review it", name="review", context=[draft], condition=always)
    result = await Crew(tasks=[draft, review], agents=[agent], process=process).kickoff()

    assert result.output.text == "review done"
    assert result.skipped == {}


def broken(outputs: Mapping[str, TaskOutput]) -> bool:
    raise ValueError("no idea")


def not_a_bool(outputs: Mapping[str, TaskOutput]) -> bool:
    return "yes"  # type: ignore[return-value]


@pytest.mark.parametrize("process", PROCESSES)
@pytest.mark.parametrize(
    ("condition", "says"),
    [(broken, "raised ValueError: no idea"), (not_a_bool, "returned str 'yes'")],
)
async def test_a_condition_that_fails_fails_its_task_naming_the_condition(
    process: str, condition: object, says: str
) -> None:
    desk = Desk()
    agent = Agent(role="Clerk", goal="Help", llm=FunctionLLM(desk.answer))
    draft = Task("draft it", name="draft", context=[])
    review = Task("review it", name="review", context=[draft], condition=condition)
    polish = Task("polish it", name="polish", context=[review])
    aside = Task("aside it", name="aside", context=[draft])
    tasks = [draft, review, polish, aside]

    with pytest.raises(TaskFailed) as stopped:
        await Crew(tasks=tasks, agents=[agent], process=process).kickoff()
    cause = stopped.value.cause
    assert isinstance(cause, WorkflowError)
    assert (cause.task, cause.step) == ("review", "condition")
    assert condition.__qualname__ in str(stopped.value)  # type: ignore[attr-defined]
    assert says in str(stopped.value)
    assert "draft" in stopped.value.outputs

    with pytest.raises(CrewPartialFailure) as partial:
        await Crew(tasks=tasks, agents=[agent], process=process, on_failure="continue").kickoff()
    assert list(partial.value.failures) == ["review"]
    assert partial.value.skipped == ["polish"]
    assert set(partial.value.outputs) == {"draft", "aside"}


@pytest.mark.parametrize("process", PROCESSES)
async def test_a_function_router_may_choose_several_branches_or_none(process: str) -> None:
    picks: list[object] = []

    def pick(output: TaskOutput) -> object:
        return picks.pop(0)

    desk = Desk()
    agent = Agent(role="Clerk", goal="Help", llm=FunctionLLM(desk.answer))
    triage = Task("triage it", name="triage", context=[], router=pick)
    left = Task("left it", name="left", context=[triage])
    right = Task("right it", name="right", context=[triage])
    crew = Crew(tasks=[triage, left, right], agents=[agent], process=process)

    picks.append([left, "right"])
    assert crew.graph.names == ["triage", "left", "right"]
    both = await crew.kickoff()
    assert both.skipped == {}
    picks.append(None)
    neither = await crew.kickoff()
    assert set(neither.skipped) == {"left", "right"}
    assert neither.output.task == "triage"
    picks.append("elsewhere")
    with pytest.raises(WorkflowError, match="chose 'elsewhere', which is not a task that"):
        await crew.kickoff()


async def test_a_mapping_router_without_a_branch_for_the_value_is_a_clear_run_error() -> None:
    class Loose(BaseModel):
        category: str

    desk = Desk()
    agent = Agent(role="Clerk", goal="Help", llm=FunctionLLM(lambda r: Loose(category="other")))
    triage = Task("triage", name="triage", context=[], output_model=Loose, router={"a": "a"})
    branch = Task(
        "a it",
        name="a",
        context=[triage],
        agent=Agent(role="A", goal="g", llm=FunctionLLM(desk.answer)),
    )
    store = MemoryStore()
    crew = Crew(tasks=[triage, branch], agents=[agent], process="parallel", store=store)

    with pytest.raises(WorkflowError, match="read category='other', for which it has no branch"):
        await crew.kickoff()
    # The router's task finished: its output is checkpointed all the same.
    [run] = await store.list_runs()
    assert "triage" in await store.outputs(run.run_id)


def test_routers_and_conditions_are_checked_when_the_crew_is_made() -> None:
    agent = Agent(role="Clerk", goal="Help", llm="offline")
    triage = Task("triage", name="triage", output_model=Triage, router={"tech": "tech"})
    tech = Task("tech", name="tech")  # does not list triage in its context
    with pytest.raises(ConfigurationError, match="names 'tech', which does not list 'triage'"):
        Crew(tasks=[triage, tech], agents=[agent])
    with pytest.raises(ConfigurationError, match=r"maps .hardware., which Triage\.category never"):
        Task("triage", output_model=Triage, router={"hardware": "x"})
    with pytest.raises(ConfigurationError, match="router_field='kind' is not a field"):
        Task("triage", output_model=Triage, router={"tech": "x"}, router_field="kind")
    with pytest.raises(ConfigurationError, match="set output_model="):
        Task("triage", router={"tech": "x"})
    with pytest.raises(ConfigurationError, match=r"condition .* must take"):
        Task("x", condition=lambda a, b, c: True)
    with pytest.raises(ConfigurationError, match="condition: Input should be callable"):
        Task("x", condition="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("feature", ["condition", "router", "optional context", "guardrail"])
def test_hierarchical_refuses_a_crew_with_workflow_features_naming_them(feature: str) -> None:
    worker = Agent(role="Worker", goal="Work", llm="offline")
    manager = Agent(role="Manager", goal="Manage", llm="offline")
    first = Task("first", name="first", agent=worker)
    extra: dict[str, object] = {
        "condition": {"condition": lambda outputs: True},
        "router": {"router": lambda output: None},
        "optional context": {"context": [optional(first)]},
        "guardrail": {"guardrail": lambda output: True},
    }[feature]
    second = Task("second", name="second", agent=worker, **extra)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=f"tasks use {feature}: a manager plans"):
        Crew(tasks=[first, second], process="hierarchical", manager=manager)


@pytest.mark.parametrize("process", PROCESSES)
async def test_a_resumed_run_replays_the_router_and_the_condition(process: str) -> None:
    store = MemoryStore()
    calls = {"condition": 0}

    def once(outputs: Mapping[str, TaskOutput]) -> bool:
        calls["condition"] += 1
        return calls["condition"] == 1  # true the first time only

    desk = Desk("billing", fail=frozenset({"billing"}))
    agent = Agent(role="Clerk", goal="Help", llm=FunctionLLM(desk.answer))

    def crew_of() -> Crew:
        names = ["billing", "tech", "sales"]
        triage = Task(
            "triage it",
            name="triage",
            output_model=Triage,
            context=[],
            router={name: name for name in names},
        )
        branches = [Task(f"{name} answer", name=name, context=[triage]) for name in names]
        note = Task("note it", name="note", context=[triage], condition=once)
        answer = Task("answer it", name="answer", context=[optional(b) for b in branches])
        return Crew(
            tasks=[triage, *branches, note, answer], agents=[agent], process=process, store=store
        )

    with pytest.raises(TaskFailed):
        await crew_of().kickoff()
    [run] = await store.list_runs()
    decisions = {d.key: d.value for d in await store.decisions(run.run_id)}
    assert decisions["router:triage"] == ["billing"]

    desk.category, desk.fail = "tech", frozenset()  # would route elsewhere if asked again
    result = await crew_of().resume(run.run_id)

    assert result["billing"].text == "billing done"  # the recorded route, replayed
    assert set(result.skipped) >= {"tech", "sales"}
    if decisions.get("condition:note") is True:  # the condition had run: replayed, not rerun
        assert calls["condition"] == 1
        assert "note" not in result.skipped
    assert "triage" in result.restored


async def test_skips_are_recorded_with_their_reasons() -> None:
    store = MemoryStore()
    desk = Desk("sales")
    result = await routed_desk(desk, "parallel", store=store, strict=True).kickoff()

    skips = {d.task: d.reason for d in await store.decisions(result.run_id) if d.kind == "skip"}
    assert skips == result.skipped
    assert skips["tech"] == "not chosen by the router of 'triage'"


# -- what the views of a stored run say -----------------------------------------------------


@pytest.mark.parametrize("width", [60, 80, 120])
def test_show_the_report_and_the_dashboard_say_why_each_task_was_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    import anyio

    from crewflow import Report
    from crewflow.report._dashboard import run_state
    from crewflow.store import SQLiteStore
    from tests.test_cli_store import invoke_json, on_terminal

    monkeypatch.setenv("CREWFLOW_HOME", str(tmp_path / "home"))
    path = tmp_path / "home" / "runs.db"
    desk = Desk("tech")

    async def run_and_read() -> tuple[str, Report, dict[str, Any] | None]:
        async with SQLiteStore(path) as store:
            crew = routed_desk(desk, "parallel", strict=True)
            crew = crew.model_copy(update={"store": store})
            result = await crew.kickoff()
            return (
                result.run_id,
                await Report.from_store(store, result.run_id),
                await run_state(store, result.run_id),
            )

    run_id, report, state = anyio.run(run_and_read)

    code, lines = on_terminal(width, "show", run_id)
    assert code == 0
    text = " ".join(" ".join(lines).split())
    assert "triage: its router chose tech" in text
    assert "billing: skipped: not chosen by the router of 'triage'" in text
    assert "answer: skipped: needs 'billing', 'sales', which was skipped" in text
    assert max(len(line) for line in lines) <= width
    shown = invoke_json("show", run_id)
    assert [d["kind"] for d in shown["decisions"]].count("skip") == 3

    reasons = {task.name: task.reason for task in report.tasks if task.status == "skipped"}
    assert reasons == {
        "billing": "not chosen by the router of 'triage'",
        "sales": "not chosen by the router of 'triage'",
        "answer": "needs 'billing', 'sales', which was skipped",
    }
    assert report.status == "completed"  # skipping is not failing
    assert "not chosen by the router of &#39;triage&#39;" in report.html()
    assert state is not None
    assert {t["name"]: t["reason"] for t in state["tasks"] if t["status"] == "skipped"} == reasons


class Forgetful(MemoryStore):
    """A store written before decisions existed: it keeps none."""

    async def record_decisions(self, run_id: str, decisions: object, **_: object) -> None:
        return None

    async def decisions(self, run_id: str) -> list[Any]:
        return []


async def test_a_store_that_keeps_no_decisions_routes_a_restored_router_again() -> None:
    store = Forgetful()
    desk = Desk("billing", fail=frozenset({"answer"}))

    with pytest.raises(TaskFailed):
        await routed_desk(desk, "parallel", store=store).kickoff()
    [run] = await store.list_runs()
    desk.category, desk.fail = "tech", frozenset()
    desk.prompts.clear()

    result = await routed_desk(desk, "parallel", store=store).resume(run.run_id)

    # Nothing recorded the first choice: the restored router reads its restored output again.
    assert "triage" in result.restored
    assert "triage" not in desk.prompts
    assert result["billing"].text == "billing done"
    assert set(result.skipped) == {"tech", "sales"}
