"""Crews and runs the report tests look at: a varied one (a retried failure, a fallback, a
skipped task, a cache hit, a tool call), a hostile one (markup in every text), and stored runs."""

from __future__ import annotations

from typing import Any

from crewflow import Agent, Crew, RetryPolicy, Task, tool
from crewflow.exceptions import CrewRunError
from crewflow.report import Report
from crewflow.store import MemoryStore, Store
from crewflow.testing import ScriptedLLM, ToolCall, ToolCalls

NO_WAIT = RetryPolicy(max_attempts=2, initial=0.0, jitter=False, retry_on=(ValueError,))

HOSTILE = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "</style><script>alert(2)</script>",
    '"><svg onload=alert(3)>',
    "</textarea></pre></title><iframe src=javascript:alert(4)>",
]
"""Markup that would run if a page showed it as markup."""


@tool
def lookup(query: str) -> str:
    """Look QUERY up."""
    return f"found {query}"


@tool
def broken(query: str) -> str:
    """Fail on QUERY."""
    raise ValueError(" ".join(HOSTILE))


def varied_crew(store: Store | None) -> Crew:
    """facts (a tool call), flaky (fails once, then completes), saved (its agent fails, the
    fallback answers), doomed (fails twice), after_doomed (skipped), draft (after the others)."""
    researcher = Agent(
        role="Researcher",
        goal="g",
        llm=ScriptedLLM(
            [
                ToolCalls([ToolCall("lookup", {"query": "x"})]),
                "facts done",
            ]
        ),
        tools=[lookup],
    )
    flaky = Agent(
        role="Flaky", goal="g", llm=ScriptedLLM([ValueError("first try fails"), "flaky done"])
    )
    failing = Agent(role="Failing", goal="g", llm=ScriptedLLM([ValueError("no"), ValueError("no")]))
    rescuer = Agent(role="Rescuer", goal="g", llm=ScriptedLLM(["rescued"]))
    doomed = Agent(
        role="Doomed", goal="g", llm=ScriptedLLM([ValueError("bad 1"), ValueError("bad 2")])
    )
    writer = Agent(role="Writer", goal="g", llm=ScriptedLLM(["the draft"]))
    facts = Task("Find facts", agent=researcher, name="facts")
    flaky_task = Task("Try", agent=flaky, name="flaky", retry=NO_WAIT)
    saved = Task("Save", agent=failing, name="saved", retry=NO_WAIT, fallback_agent=rescuer)
    doomed_task = Task("Doom", agent=doomed, name="doomed", retry=NO_WAIT)
    skipped = Task("Never", agent=writer, name="after_doomed", context=[doomed_task])
    draft = Task("Write", agent=writer, name="draft", context=[facts, flaky_task, saved])
    return Crew(
        tasks=[facts, flaky_task, saved, doomed_task, skipped, draft],
        process="parallel",
        on_failure="continue",
        store=store,
        name="varied",
    )


async def stored_run(crew_of: Any, store: Store | None = None) -> tuple[Store, str]:
    """Run the crew ``crew_of(store)`` makes into ``store`` (default: a fresh `MemoryStore`);
    the store and the run's id (failed or not)."""
    store = store if store is not None else MemoryStore()
    crew = crew_of(store)
    try:
        result = await crew.kickoff()
    except CrewRunError:
        runs = await store.list_runs(limit=1)
        return store, runs[0].run_id
    return store, result.run_id


async def varied_report() -> Report:
    store, run_id = await stored_run(varied_crew)
    return await Report.from_store(store, run_id)


def hostile_crew(store: Store | None) -> Crew:
    """Markup in the crew's task names, outputs, tool errors and error messages."""
    text = "\n".join(HOSTILE)
    agent = Agent(
        role=HOSTILE[1],
        goal="g",
        llm=ScriptedLLM(
            [
                ToolCalls([ToolCall("broken", {"query": HOSTILE[0]})]),
                text,
                ValueError(text),
                ValueError(text),
                text + "\x00 \ud800 ünïcødé 🚀 " + "x" * 1_000_000,
            ]
        ),
        tools=[broken],
    )
    first = Task(HOSTILE[0], agent=agent, name=HOSTILE[0])
    failing = Task(HOSTILE[2], agent=agent, name=HOSTILE[2], retry=NO_WAIT, context=[first])
    big = Task("big", agent=agent, name=HOSTILE[3], context=[first])
    return Crew(
        tasks=[first, failing, big],
        process="sequential",
        on_failure="continue",
        store=store,
        name=HOSTILE[4],
    )


def versioned_crew(store: Store | None, version: int = 1) -> Crew:
    """One crew in two versions, for comparisons (in virtual time: every duration exact).

    Version 1: plan (1 s), draft (2 s), check (0.5 s), in sequence. Version 2: plan the same;
    draft takes 5 s, more tokens, and changes its second line; check the same; a task
    ``extra`` is added.
    """
    from crewflow.testing import Slow, Text

    draft_text = (
        "intro\nline two\nline three\nconclusion"
        if version == 1
        else "intro\nline 2, rewritten\nline three\nconclusion"
    )
    plan = Agent(role="Planner", goal="g", llm=ScriptedLLM([Slow(1.0, Text("the plan", (10, 5)))]))
    writer = Agent(
        role="Writer",
        goal="g",
        llm=ScriptedLLM(
            [Slow(2.0, Text(draft_text, (100, 20)))]
            if version == 1
            else [Slow(5.0, Text(draft_text, (150, 30)))]
        ),
    )
    checker = Agent(role="Checker", goal="g", llm=ScriptedLLM([Slow(0.5, Text("ok", (7, 1)))]))
    tasks = [
        Task("Plan", agent=plan, name="plan"),
        Task("Draft", agent=writer, name="draft"),
        Task("Check", agent=checker, name="check"),
    ]
    if version == 2:
        extra = Agent(role="Extra", goal="g", llm=ScriptedLLM([Slow(0.25, Text("more", (3, 2)))]))
        tasks.append(Task("Extra", agent=extra, name="extra"))
    return Crew(tasks=tasks, process="sequential", store=store, name="versioned")
