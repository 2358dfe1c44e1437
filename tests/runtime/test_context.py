"""`ProcessContext`: the one object a process sees, and what each of its members does."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, ClassVar

import pytest
from pydantic import BaseModel

from crewflow import Agent, Crew, Task
from crewflow import events as ev
from crewflow._records import TaskKind
from crewflow._runtime.run import Run
from crewflow.exceptions import CrewRunError, InvalidPlan, TaskFailed
from crewflow.processes import ProblemKind, Process, ProcessContext
from crewflow.store import MemoryStore, RunStatus
from crewflow.testing import Error, FunctionLLM, ScriptedLLM, capture_events

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from crewflow.llm._types import LLMRequest
    from crewflow.store import History
    from crewflow.task import TaskOutput


class Verdict(BaseModel):
    accept: bool
    note: str


def custom(body: Callable[[ProcessContext], Awaitable[None]], **config: Any) -> Process:
    class Custom(Process):
        name: ClassVar[str] = "custom"

        async def run(self, ctx: ProcessContext) -> None:
            await body(ctx)

        def config(self) -> dict[str, Any]:
            return dict(config)

    return Custom()


def one_task_crew(llm: Any, body: Callable[[ProcessContext], Awaitable[None]], **kw: Any) -> Crew:
    agent = Agent(role="Worker", goal="Work", llm=llm)
    return Crew(
        tasks=[Task("Write {topic}", agent=agent, name="write")], process=custom(body), **kw
    )


def test_the_context_has_the_documented_members_only() -> None:
    public = {name for name in dir(ProcessContext) if not name.startswith("_")}

    assert public == {
        "graph",
        "outputs",
        "inputs",
        "max_concurrency",
        "chosen",
        "ready",
        "delegate",
        "execute",
        "check_plan",
        "add_tasks",
        "ask",
        "run_ready",
        "history",
        "choose",
    }
    for name in ("execute", "add_tasks", "ask", "run_ready", "history", "choose"):
        assert inspect.iscoroutinefunction(getattr(ProcessContext, name)), name


async def test_a_process_sees_the_context_and_not_the_run_its_store_or_its_clients() -> None:
    seen: list[object] = []

    async def body(ctx: ProcessContext) -> None:
        seen.append(ctx)
        await ctx.run_ready()

    await one_task_crew(ScriptedLLM(["done"]), body).kickoff(inputs={"topic": "tides"})

    (ctx,) = seen
    assert isinstance(ctx, ProcessContext)
    assert not isinstance(ctx, Run)
    for hidden in ("llm_for", "recorder", "slots", "store", "pause", "publish"):
        assert not hasattr(ctx, hidden), hidden
    assert ctx.inputs == {"topic": "tides"}
    with pytest.raises(TypeError):
        ctx.inputs["topic"] = "other"  # type: ignore[index]


async def test_ask_is_a_recorded_checkpointed_internal_step() -> None:
    store = MemoryStore()
    sent: list[str] = []
    manager_llm = FunctionLLM(
        lambda r: (sent.append(r.messages[1].content or ""), Verdict(accept=True, note="ok"))[1]
    )
    manager = Agent(role="Manager", goal="Review", llm=manager_llm)
    got: list[TaskOutput] = []

    async def body(ctx: ProcessContext) -> None:
        await ctx.run_ready()
        # Sent as it is: braces a model wrote are no template.
        prompt = "Review: " + ctx.outputs["write"].text + ' {"json": {topic}}'
        got.append(await ctx.ask("review.1", manager, prompt, output_model=Verdict))

    crew = one_task_crew(ScriptedLLM(["a draft"]), body, store=store)
    with capture_events() as events:
        result = await crew.kickoff(inputs={"topic": "tides"})

    assert sent == ['Review: a draft {"json": {topic}}']
    assert got[0].data == Verdict(accept=True, note="ok")
    assert result["review.1"] is result.internal[0]
    assert [o.task for o in result.outputs] == ["write"]
    assert result.output.task == "write"  # the final output is still the crew's task
    review = next(r for r in result.timeline if r.task == "review.1")
    assert (review.kind, review.agent, review.status) == (TaskKind.INTERNAL, "Manager", "completed")
    assert result.usage.requests == 2  # the ask is billed with the run
    # Recorded as asked, and checkpointed like any task.
    (added,) = await store.added_tasks(result.run_id)
    assert (added.name, added.step, added.agent, added.depends_on) == (
        "review.1",
        "ask",
        "Manager",
        [],
    )
    assert (await store.outputs(result.run_id))["review.1"].data == {"accept": True, "note": "ok"}
    kinds = [(e.kind, getattr(e, "task", None)) for e in events.events]
    assert ("task_added", "review.1") in kinds
    assert kinds.index(("task_added", "review.1")) < kinds.index(("task_started", "review.1"))


async def test_ask_refuses_a_key_the_run_already_has() -> None:
    async def body(ctx: ProcessContext) -> None:
        await ctx.ask("write", Agent(role="M", goal="g"), "again?")

    with pytest.raises(InvalidPlan) as caught:
        await one_task_crew(ScriptedLLM([]), body).kickoff(inputs={"topic": "x"})

    assert [p.kind for p in caught.value.problems] == [ProblemKind.DUPLICATE]


async def test_a_failed_ask_fails_the_run_even_when_the_crew_continues_on_failure() -> None:
    async def body(ctx: ProcessContext) -> None:
        await ctx.ask("plan", Agent(role="M", goal="g", llm=ScriptedLLM([Error(400)])), "plan")
        raise AssertionError("not reached")  # pragma: no cover

    crew = one_task_crew(ScriptedLLM([]), body, on_failure="continue")
    with pytest.raises(TaskFailed) as caught:
        await crew.kickoff(inputs={"topic": "x"})

    assert caught.value.task == "plan"


async def test_added_tasks_are_templated_from_the_inputs_and_checked_for_them() -> None:
    prompts: list[str] = []

    def answer(request: LLMRequest) -> str:
        prompts.append((request.messages[1].content or "").splitlines()[0])
        return "ok"

    async def body(ctx: ProcessContext) -> None:
        step = Task("Check {topic}", name="check.1", context=["write"])
        missing = Task("Check {audience}", name="check.2")
        assert [p.kind for p in ctx.check_plan([step, missing])] == [ProblemKind.MISSING_INPUT]
        await ctx.add_tasks([step])
        await ctx.run_ready()

    result = await one_task_crew(FunctionLLM(answer), body).kickoff(inputs={"topic": "tides"})

    assert prompts == ["Write tides", "Check tides"]
    assert result["check.1"].agent == "Worker"  # the crew's only agent


async def test_choose_is_recorded_when_made_and_sent_as_an_event() -> None:
    store = MemoryStore()
    during: list[tuple[str | None, str]] = []

    async def body(ctx: ProcessContext) -> None:
        await ctx.choose("parallel", "one task; nothing to run side by side")
        (record,) = await store.list_runs()
        during.append((record.chosen, record.process_reason))
        await ctx.run_ready()

    with capture_events() as events:
        result = await one_task_crew(ScriptedLLM(["x"]), body, store=store).kickoff(
            inputs={"topic": "x"}
        )

    assert during == [("parallel", "one task; nothing to run side by side")]
    chosen = [e for e in events.events if isinstance(e, ev.ProcessChosen)]
    assert [(e.process, e.reason) for e in chosen] == [
        ("parallel", "one task; nothing to run side by side")
    ]
    record = await store.get_run(result.run_id)
    assert record is not None
    assert (record.process, record.chosen, record.ran) == ("custom", "parallel", "parallel")


async def test_history_holds_the_clean_runs_of_the_crew_key_and_is_read_once() -> None:
    class Counting(MemoryStore):
        reads = 0

        async def runs_of_key(self, crew_key: str, limit: int | None = 50) -> list[Any]:
            self.reads += 1
            return await super().runs_of_key(crew_key, limit)

    store = Counting()
    seen: list[History] = []

    async def body(ctx: ProcessContext) -> None:
        seen.append(await ctx.history())
        seen.append(await ctx.history())
        await ctx.run_ready()

    crew = one_task_crew(ScriptedLLM(["one", "two", "three"]), body, store=store)
    for _ in range(3):
        await crew.kickoff(inputs={"topic": "x"})

    first, again, second, _, third, _ = seen
    assert first.runs == 0
    assert first.processes == {}
    assert again is first  # cached for the run
    assert second.runs == 1
    assert third.runs == 2
    measured = third.processes["custom"]
    assert (measured.runs, measured.settled, measured.success_rate) == (2, 2, 1.0)
    assert measured.p50_seconds is not None
    assert list(third.task_seconds) == ["write"]
    assert third.crew_key == crew.fingerprint().crew_key
    assert store.reads == 3  # once per run


async def test_history_leaves_out_paused_resumed_and_failed_runs_durations() -> None:
    store = MemoryStore()
    seen: list[History] = []

    async def body(ctx: ProcessContext) -> None:
        seen.append(await ctx.history())
        await ctx.run_ready()

    script = ["one", Error(400), Error(400), "resumed", "paused", "last"]
    crew = one_task_crew(ScriptedLLM(script), body, store=store)
    await crew.kickoff(inputs={"topic": "x"})  # clean
    with pytest.raises(TaskFailed):
        await crew.kickoff(inputs={"topic": "x"})  # failed, settled
    with pytest.raises(TaskFailed) as caught:
        await crew.kickoff(inputs={"topic": "x"})
    await crew.resume(caught.value.run_id or "")  # completed, but resumed: not settled
    handle = crew.start(inputs={"topic": "x"})
    handle.pause()
    handle.resume()
    await handle.result()  # completed, but paused: not settled
    await crew.kickoff(inputs={"topic": "x"})

    statuses = [(r.status, r.resumed, r.paused) for r in await store.list_runs()]
    assert statuses[1:] == [
        (RunStatus.COMPLETED, 0, True),
        (RunStatus.COMPLETED, 1, False),
        (RunStatus.FAILED, 0, False),
        (RunStatus.COMPLETED, 0, False),
    ]
    history = seen[-1]
    assert history.runs == 2  # the clean run and the failed one
    measured = history.processes["custom"]
    assert (measured.runs, measured.settled, measured.success_rate) == (1, 2, 0.5)


async def test_the_process_says_which_output_is_final() -> None:
    manager = Agent(role="Manager", goal="Answer", llm=ScriptedLLM(["the answer"]))

    class Answering(Process):
        name: ClassVar[str] = "answering"

        async def run(self, ctx: ProcessContext) -> None:
            await ctx.run_ready()
            await ctx.ask("final_answer", manager, "Answer now")

        def final_output(self, ctx: ProcessContext) -> TaskOutput | None:
            return ctx.outputs["final_answer"]

    agent = Agent(role="Worker", goal="Work", llm=ScriptedLLM(["work"]))
    crew = Crew(tasks=[Task("Work", agent=agent)], process=Answering())

    result = await crew.kickoff()

    assert result.output.text == "the answer"
    assert result.text == "the answer"
    assert [o.task for o in result.outputs] == ["task_1"]


def test_a_process_configuration_is_in_the_fingerprint_but_not_the_crew_key() -> None:
    async def body(ctx: ProcessContext) -> None:
        await ctx.run_ready()

    def crew(**config: Any) -> Crew:
        agent = Agent(role="Worker", goal="Work")
        return Crew(tasks=[Task("Work", agent=agent, name="w")], process=custom(body, **config))

    one, other = crew(manager="openai/gpt-4o").fingerprint(), crew(manager="x/y").fingerprint()

    assert one.digest != other.digest
    assert one.crew_key == other.crew_key
    assert one.tasks == other.tasks
    assert one.process_config == {"manager": "openai/gpt-4o"}


async def test_executing_a_task_that_was_never_added_says_how_to_add_it() -> None:
    async def body(ctx: ProcessContext) -> None:
        await ctx.execute(Task("stray", name="stray"))

    with pytest.raises(CrewRunError, match=r"not a task of this run: add it with ctx\.add_tasks"):
        await one_task_crew(ScriptedLLM([]), body).kickoff(inputs={"topic": "x"})


def two_task_crew(body: Callable[[ProcessContext], Awaitable[None]], **kw: Any) -> Crew:
    llm = FunctionLLM(lambda request: f"out {(request.messages[1].content or '').split()[0]}")
    agent = Agent(role="Worker", goal="Work", llm=llm)
    first = Task("first", agent=agent, name="first", context=[])
    second = Task("second", agent=agent, name="second", context=[first])
    return Crew(tasks=[first, second], process=custom(body), **kw)


async def test_a_delegated_task_ends_with_the_output_of_the_task_it_was_delegated_to() -> None:
    async def body(ctx: ProcessContext) -> None:
        await ctx.add_tasks([Task("draft", name="first.draft", context=[])])
        await ctx.delegate("first", "first.draft")
        assert "first" not in [ctx.graph.name_of(task) for task in ctx.ready()]
        await ctx.run_ready()

    store = MemoryStore()
    with capture_events() as captured:
        result = await two_task_crew(body, store=store).kickoff()

    assert result["first"].text == "out draft"  # taken over, never run itself
    assert result["second"].text == "out second"  # its dependant got that output
    assert [e.task for e in captured.of_type(ev.TaskStarted)] == ["first.draft", "second"]
    finished = {e.task: e.attempt for e in captured.of_type(ev.TaskFinished)}
    assert finished["first"] == 0
    assert (await store.outputs(result.run_id))["first"].text == "out draft"  # checkpointed
    assert result.timeline[0].attempts == ()


async def test_delegating_again_points_the_task_at_the_new_one() -> None:
    async def body(ctx: ProcessContext) -> None:
        await ctx.add_tasks([Task("one", name="v1", context=[])])
        await ctx.delegate("first", "v1")
        await ctx.run_ready()
        await ctx.add_tasks([Task("two", name="v2", context=[])])
        await ctx.delegate("first", "v2")
        await ctx.run_ready()

    store = MemoryStore()
    result = await two_task_crew(body, store=store).kickoff()

    assert result["first"].text == "out two"
    assert (await store.outputs(result.run_id))["first"].text == "out two"


async def test_a_task_delegated_to_one_that_fails_is_skipped() -> None:
    def answer(request: LLMRequest) -> str | Error:
        word = (request.messages[1].content or "").split()[0]
        return Error(400, "no") if word == "broken" else f"out {word}"

    agent = Agent(role="Worker", goal="Work", llm=FunctionLLM(answer))

    async def body(ctx: ProcessContext) -> None:
        await ctx.add_tasks([Task("broken", name="step", agent=agent, context=[])])
        await ctx.delegate("first", "step")
        await ctx.run_ready()

    first = Task("first", agent=agent, name="first", context=[])
    second = Task("second", agent=agent, name="second", context=[first])
    crew = Crew(tasks=[first, second], process=custom(body), on_failure="continue", store=None)
    with pytest.raises(CrewRunError) as raised:
        await crew.kickoff()

    statuses = {record.task: record.status for record in raised.value.timeline}
    assert statuses == {"first": "skipped", "second": "skipped", "step": "failed"}


@pytest.mark.parametrize(
    ("delegation", "message"),
    [
        (("first", "nowhere"), "'nowhere' is not a task of this run"),
        (("first", "second"), "which depends on 'first'"),
        (("first", "first"), "which depends on 'first'"),
    ],
)
async def test_a_delegation_that_cannot_end_is_refused(
    delegation: tuple[str, str], message: str
) -> None:
    async def body(ctx: ProcessContext) -> None:
        await ctx.delegate(*delegation)

    with pytest.raises(CrewRunError, match=message):
        await two_task_crew(body, store=None).kickoff()


async def test_a_task_that_already_ran_cannot_be_delegated() -> None:
    async def body(ctx: ProcessContext) -> None:
        await ctx.execute(ctx.graph.task("first"))
        await ctx.add_tasks([Task("late", name="late", context=[])])
        await ctx.delegate("first", "late")

    with pytest.raises(CrewRunError, match="delegated 'first', which has already started"):
        await two_task_crew(body, store=None).kickoff()
