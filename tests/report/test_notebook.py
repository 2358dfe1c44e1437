"""Crews, results and run handles in a notebook: their HTML views (every text escaped, parsed
back), their short text views, and the live progress of a running crew in an IPython kernel
(drawn in place, throttled, off with ``progress=False``, nothing at all outside a kernel)."""

from __future__ import annotations

import subprocess
import sys
import threading
import types
from typing import Any

import anyio
import pytest

from crewflow import Agent, Crew, Task, tool
from crewflow import events as ev
from crewflow.report._notebook import INTERVAL, KernelProgress, RunLine, in_kernel, status_html
from crewflow.testing import ScriptedLLM
from tests.report.crews import HOSTILE
from tests.report.page import Page, parse

DANGEROUS = {"script", "img", "iframe", "object", "embed", "textarea", "link", "base", "form"}


@tool
def lookup(query: str) -> str:
    """Look QUERY up."""
    return f"found {query}"


def small_crew(process: str = "parallel") -> Crew:
    researcher = Agent(role="Researcher", goal="Find facts", llm="offline", tools=[lookup])
    writer = Agent(role="Writer", goal="Write", llm=ScriptedLLM(["the post"] * 8))
    facts = Task("facts", agent=researcher, name="facts")
    post = Task("post", agent=writer, context=[facts], name="post")
    return Crew(tasks=[facts, post], process=process, name="small", store=None)


def hostile_crew() -> Crew:
    agent = Agent(role=HOSTILE[1], goal=HOSTILE[0], llm=ScriptedLLM(["\n".join(HOSTILE)] * 4))
    first = Task(HOSTILE[0], agent=agent, name=HOSTILE[2])
    second = Task(HOSTILE[1], agent=agent, name=HOSTILE[3], context=[first])
    return Crew(tasks=[first, second], name=HOSTILE[4], store=None)


def framed_page(html: str) -> Page:
    """The page inside a rich view's sandboxed frame, which must be all there is."""
    outer = parse(html)
    assert [e.tag for e in outer.elements] == ["iframe"]
    [frame] = outer.elements
    assert frame.attrs["sandbox"] == "allow-scripts"
    return parse(frame.attrs["srcdoc"])


def assert_nothing_injected(page: Page, *, scripts: int) -> None:
    assert len(page.tags("script")) == scripts
    assert not {e.tag for e in page.elements} & (DANGEROUS - {"script"})
    assert not [(e.tag, k) for e in page.elements for k in e.attrs if k.startswith("on")]
    assert not [e for e in page.elements for k in ("src", "href") if k in e.attrs]


class Printer:
    def __init__(self) -> None:
        self.texts: list[str] = []

    def text(self, text: str) -> None:
        self.texts.append(text)


# -- rich views ---------------------------------------------------------------------------------


def test_a_crew_shows_its_graph_tasks_agents_and_process() -> None:
    page = framed_page(small_crew()._repr_html_())

    assert [e.attrs["data-node"] for e in page.having("data-node")] == ["facts", "post"]
    assert len([e for e in page.tags("path") if e.attrs.get("class") == "edge"]) == 1
    assert [e.attrs["data-agent"] for e in page.having("data-agent")] == ["Researcher", "Writer"]
    texts = [text for text in page.texts if text.strip()]
    agents = texts[texts.index("tools") + 1 :][:8]  # the agents table, after its headings
    assert agents[:4] == ["Researcher", "Find facts", "offline", "lookup"]
    assert agents[4:] == ["Writer", "Write", "scripted", "–"]
    assert "parallel" in page.text


def test_markup_in_a_crew_its_result_and_its_handle_is_shown_as_text() -> None:
    crew = hostile_crew()

    async def views() -> tuple[str, str, str]:
        result = await crew.kickoff(progress=False)
        async with crew.start(progress=False) as handle:
            await handle.result()
            return crew._repr_html_(), result._repr_html_(), handle._repr_html_()

    crew_view, result_view, handle_view = anyio.run(views)

    crew_page = framed_page(crew_view)
    assert_nothing_injected(crew_page, scripts=1)
    assert all(text in crew_page.text for text in HOSTILE)
    result_page = framed_page(result_view)
    assert_nothing_injected(result_page, scripts=1)
    assert all(text in result_page.text for text in HOSTILE)
    handle_page = parse(handle_view)
    assert_nothing_injected(handle_page, scripts=0)
    assert HOSTILE[4] in handle_page.text  # the crew's name, as text


def test_markup_in_the_progress_is_shown_as_text() -> None:
    line = RunLine("r1", crew=HOSTILE[4], status="running", total=3, running=HOSTILE[:3])
    page = parse(status_html([line]))

    assert_nothing_injected(page, scripts=0)
    assert [e.attrs["data-running"] for e in page.having("data-running")] == HOSTILE[:3]


def test_a_result_shows_its_report() -> None:
    result = small_crew().kickoff_sync()

    page = framed_page(result._repr_html_())

    assert sorted(e.attrs["data-attempt"] for e in page.having("data-attempt")) == [
        "facts#1",
        "post#1",
    ]
    assert "the post" in page.text


def test_short_text_views() -> None:
    crew = small_crew()
    printer = Printer()
    crew._repr_pretty_(printer, False)
    result = crew.kickoff_sync()
    result._repr_pretty_(printer, False)

    assert printer.texts == [
        "Crew(name='small', process='parallel', tasks=2, agents=2)",
        repr(result),
    ]


async def test_a_handle_shows_its_status_when_displayed() -> None:
    gate = anyio.Event()

    @tool
    async def wait() -> str:
        """Wait for the test."""
        await gate.wait()
        return "done"

    agent = Agent(role="Waiter", goal="g", llm="offline", tools=[wait])
    crew = Crew(
        tasks=[Task("a", agent=agent, name="a"), Task("b", agent=agent, name="b", context=[])],
        process="parallel",
        name="waiting",
        store=None,
    )
    started: list[str] = []
    async with crew.start(progress=False) as handle:
        async for event in handle.events():
            if isinstance(event, ev.TaskStarted):
                started.append(event.task)
            if len(started) == 2:
                break
        running = parse(handle._repr_html_())
        printer = Printer()
        handle._repr_pretty_(printer, False)
        gate.set()
        await handle.result()
        done = parse(handle._repr_html_())

    [line] = running.having("data-run")
    assert line.attrs["data-status"] == "running"
    assert [e.attrs["data-running"] for e in running.having("data-running")] == ["a", "b"]
    assert "0/2 tasks done" in running.text
    assert printer.texts == [
        f"RunHandle(run_id={handle.run_id!r}, status='running', done=0/2, running: a, b)"
    ]
    assert done.having("data-run")[0].attrs["data-status"] == "completed"
    assert "2/2 tasks done" in done.text
    assert not done.having("data-running")


def test_the_views_import_nothing_until_shown() -> None:
    code = (
        "import sys\n"
        "from crewflow import Agent, Crew, Task\n"
        "crew = Crew(tasks=[Task('x', agent=Agent(role='r', goal='g'))], store=None)\n"
        "assert hasattr(crew, '_repr_html_')\n"
        "loaded = [m for m in ('jinja2', 'crewflow.report', 'IPython') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "crew._repr_html_()\n"
        "assert 'jinja2' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- progress in a kernel -----------------------------------------------------------------------


class Screen:
    """What a notebook cell shows: each publish, and a fake clock and timer for the throttle."""

    def __init__(self) -> None:
        self.now = 0.0
        self.shown: list[tuple[str, bool]] = []
        self.timers: list[tuple[float, Any]] = []

    def publish(self, html: str, update: bool) -> None:
        self.shown.append((html, update))

    def later(self, delay: float, function: Any) -> Any:
        timer = types.SimpleNamespace(delay=delay, function=function, cancelled=False)
        timer.cancel = lambda: setattr(timer, "cancelled", True)
        self.timers.append((delay, timer))
        return timer

    def progress(self) -> KernelProgress:
        return KernelProgress(publish=self.publish, clock=lambda: self.now, later=self.later)

    def statuses(self, index: int = -1) -> list[str]:
        return [e.attrs["data-status"] for e in parse(self.shown[index][0]).having("data-run")]


def started(run: str = "r1") -> ev.RunStarted:
    return ev.RunStarted(run_id=run, time=0, crew="c", process="parallel", tasks=2)


def task_started(name: str, run: str = "r1") -> ev.TaskStarted:
    return ev.TaskStarted(run_id=run, time=0, task=name, agent="a", attempt=1)


def task_finished(name: str, run: str = "r1") -> ev.TaskFinished:
    return ev.TaskFinished(
        run_id=run, time=0, task=name, attempt=1, duration=1, prompt_tokens=3, completion_tokens=4
    )


def finished(run: str = "r1") -> ev.RunFinished:
    return ev.RunFinished(run_id=run, time=0, status="completed", duration=2.0)


async def test_progress_is_drawn_at_once_then_at_most_once_an_interval() -> None:
    screen = Screen()
    progress = screen.progress()

    progress(started())  # the first change: drawn at once, as a new display
    screen.now = INTERVAL / 5
    progress(task_started("a"))  # too soon: one redraw when the interval ends
    screen.now = INTERVAL / 2
    progress(task_started("b"))  # the same pending redraw

    assert [update for _, update in screen.shown] == [False]
    [(delay, timer)] = screen.timers
    assert delay == pytest.approx(INTERVAL * 4 / 5)
    screen.now = INTERVAL
    timer.function()
    assert [update for _, update in screen.shown] == [False, True]
    running = parse(screen.shown[-1][0]).having("data-running")
    assert [e.attrs["data-running"] for e in running] == ["a", "b"]

    screen.now = INTERVAL * 1.5
    progress(task_finished("a"))  # too soon again: a timer...
    progress(task_finished("b"))
    progress(finished())  # ...that the run's end makes moot: drawn at once
    assert len(screen.shown) == 3
    assert screen.timers[-1][1].cancelled
    assert screen.statuses() == ["completed"]
    assert "2/2 tasks done" in parse(screen.shown[-1][0]).text
    assert "14 tokens" not in parse(screen.shown[-1][0]).text  # tokens come from LLM calls

    progress.close()  # nothing new: nothing drawn
    assert len(screen.shown) == 3


async def test_progress_close_draws_what_the_throttle_held_back() -> None:
    screen = Screen()
    progress = screen.progress()
    progress(started())
    progress(task_started("a"))

    progress.close()

    assert [update for _, update in screen.shown] == [False, True]
    assert screen.timers[0][1].cancelled
    assert "a" in [
        e.attrs["data-running"] for e in parse(screen.shown[-1][0]).having("data-running")
    ]


async def test_progress_from_a_worker_thread_is_drawn_on_the_loop() -> None:
    screen = Screen()
    drawn = anyio.Event()
    drawn_on: list[int] = []

    def publish(html: str, update: bool) -> None:
        drawn_on.append(threading.get_ident())
        screen.publish(html, update)
        drawn.set()

    progress = KernelProgress(publish=publish, clock=lambda: screen.now, later=screen.later)

    await anyio.to_thread.run_sync(progress, started())  # as a sync tool's thread calls sinks
    await drawn.wait()

    assert drawn_on == [threading.get_ident()]  # on the loop's thread, not the worker's
    assert screen.statuses(0) == ["running"]


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str | None]]:
    """A fake IPython kernel in this process: what it displays (html, display id), updates
    included."""
    shown: list[tuple[str, str | None]] = []

    class Handle:
        def __init__(self, display_id: str) -> None:
            self.display_id = display_id

        def update(self, html: str) -> None:
            shown.append((html, self.display_id))

    def display(html: str, *, display_id: bool = False) -> Handle:
        shown.append((html, None))
        return Handle(f"d{len(shown)}")

    ipython = types.ModuleType("IPython")
    shell = types.SimpleNamespace(kernel=object())
    ipython.get_ipython = lambda: shell  # type: ignore[attr-defined]
    display_module = types.ModuleType("IPython.display")
    display_module.HTML = str  # type: ignore[attr-defined]
    display_module.display = display  # type: ignore[attr-defined]
    ipython.display = display_module  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", display_module)
    return shown


def statuses(html: str) -> list[str]:
    return [e.attrs["data-status"] for e in parse(html).having("data-run")]


async def test_a_kickoff_in_a_kernel_shows_its_progress_in_place(
    kernel: list[tuple[str, str | None]],
) -> None:
    result = await small_crew().kickoff()

    assert kernel[0][1] is None  # one display...
    assert {display for _, display in kernel[1:]} == {"d1"}  # ...updated in place
    [line] = parse(kernel[-1][0]).having("data-run")
    assert line.attrs == {"data-run": result.run_id, "data-status": "completed"}
    assert "2/2 tasks done" in parse(kernel[-1][0]).text


async def test_progress_false_shows_nothing(kernel: list[tuple[str, str | None]]) -> None:
    crew = small_crew()
    await crew.kickoff(progress=False)
    await crew.kickoff_for_each([{}, {}], progress=False)
    async with crew.start(progress=False) as handle:
        await handle.result()

    assert kernel == []


async def test_kickoff_for_each_shows_one_display_a_line_per_run(
    kernel: list[tuple[str, str | None]],
) -> None:
    results = await small_crew().kickoff_for_each([{}, {}, {}], concurrency=2)

    assert [display for _, display in kernel].count(None) == 1
    lines = parse(kernel[-1][0]).having("data-run")
    assert sorted(e.attrs["data-run"] for e in lines) == sorted(r.run_id for r in results)
    assert statuses(kernel[-1][0]) == ["completed"] * 3


async def test_a_started_run_shows_pending_at_once_then_its_end(
    kernel: list[tuple[str, str | None]],
) -> None:
    async with small_crew().start() as handle:
        assert statuses(kernel[0][0]) == ["pending"]  # drawn in the cell that started it
        await handle.result()

    assert statuses(kernel[-1][0]) == ["completed"]
    assert {display for _, display in kernel[1:]} == {"d1"}


def test_a_terminal_ipython_or_a_plain_interpreter_is_no_kernel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert not in_kernel()
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: types.SimpleNamespace()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    assert not in_kernel()  # a terminal IPython: a shell without a kernel
    ipython.get_ipython = lambda: None  # type: ignore[attr-defined]
    assert not in_kernel()  # IPython imported, but not running


def test_a_run_line_counts_restored_tasks_as_done() -> None:
    from crewflow import events
    from crewflow.report._notebook import RunLine

    line = RunLine("r1")
    line.apply(events.RunStarted(run_id="r1", time=0.0, crew="c", process="sequential", tasks=3))
    line.apply(events.TaskRestored(run_id="r1", time=0.0, task="first"))
    line.apply(events.TaskStarted(run_id="r1", time=0.0, task="second", agent="W", attempt=1))

    assert (line.done, line.total, line.running) == (1, 3, ["second"])


def test_a_crew_says_what_steers_each_task_and_nothing_when_nothing_does() -> None:
    from crewflow import Loop

    agent = Agent(role="Writer", goal="Write", llm="offline")
    draft = Task("draft", name="draft", context=[])
    check = Task("check <b>it</b>", name="check", context=[draft])
    gated = Task("gate", name="gate", context=[draft], condition=lambda outputs: True)
    crew = Crew(
        tasks=[Loop([draft, check], until=lambda outputs: True), gated],
        agents=[agent],
        store=None,
    )

    page = framed_page(crew._repr_html_())
    plain = framed_page(small_crew()._repr_html_())

    texts = [text.strip() for text in page.texts if text.strip()]
    assert "workflow" in texts
    assert texts.count("loop draft (up to 3 rounds)") == 2
    assert "if <lambda>" in texts
    assert "workflow" not in [text.strip() for text in plain.texts]
