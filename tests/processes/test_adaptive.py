"""The adaptive process: features, predictions, the binding exploration rule, learning from
recorded runs, and reuse of the choice on resume; in virtual time, on an in-memory store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from crewflow import Agent, Crew, Task
from crewflow import events as ev
from crewflow.crew import CrewResult
from crewflow.exceptions import ConfigurationError, TaskFailed
from crewflow.processes import Process, ProcessContext
from crewflow.processes.adaptive import Adaptive
from crewflow.processes.hierarchical import Hierarchical
from crewflow.store import MemoryStore
from crewflow.testing import Error, FunctionLLM, capture_events, run_virtual

if TYPE_CHECKING:
    from collections.abc import Callable

    from crewflow.graph import TaskGraph
    from crewflow.llm._types import LLMRequest


class Contended:
    """An LLM that takes ``fast`` seconds (virtual) per call, or ``slow`` while another call is
    in flight: a provider that punishes concurrency, which only measuring shows."""

    def __init__(self, fast: float = 0.1, slow: float | None = None) -> None:
        self.fast = fast
        self.slow = slow if slow is not None else fast
        self.in_flight = 0
        self.fail: set[str] = set()

    async def __call__(self, request: LLMRequest) -> str | Error:
        name = (request.messages[1].content or "").split()[0]
        self.in_flight += 1
        try:
            await anyio.sleep(self.slow if self.in_flight > 1 else self.fast)
        finally:
            self.in_flight -= 1
        if name in self.fail:
            self.fail.discard(name)
            return Error(400, f"{name} failed")
        return f"done {name}"


def chain_and_side(llm: Contended, **options: Any) -> Crew:
    """a -> b -> c, and an independent side task: 4 units of work, 3 on the critical path, so
    both candidates are plausible by the graph (4 <= 1.5 x 3)."""
    agent = Agent(role="Worker", goal="g", llm=FunctionLLM(llm))
    a = Task("a", name="a", context=[])
    b = Task("b", name="b", context=[a])
    c = Task("c", name="c", context=[b])
    side = Task("side", name="side", context=[])
    options.setdefault("store", MemoryStore())
    options.setdefault("process", Adaptive())
    return Crew(tasks=[a, b, c, side], agents=[agent], name="shape", **options)


def fan_out(llm: Contended, width: int = 6, **options: Any) -> Crew:
    agent = Agent(role="Worker", goal="g", llm=FunctionLLM(llm))
    leaves = [Task(f"leaf{i}", name=f"leaf{i}", context=[]) for i in range(width)]
    join = Task("join", name="join", context=leaves)
    options.setdefault("store", MemoryStore())
    options.setdefault("process", Adaptive())
    return Crew(tasks=[*leaves, join], agents=[agent], name="fan", **options)


def kickoffs(crew: Crew, times: int) -> list[CrewResult]:
    async def main() -> list[CrewResult]:
        return [await crew.kickoff() for _ in range(times)]

    return run_virtual(main)


def choices(results: list[CrewResult]) -> list[tuple[str, bool]]:
    picked = []
    for result in results:
        assert result.process_choice is not None
        picked.append((result.process_choice.process, result.process_choice.explored))
    return picked


def test_it_measures_each_plausible_candidate_twice_then_learns_what_the_graph_misses() -> None:
    # By the graph parallel is faster (3 units against 4); measured, sequential is (0.4 s
    # against 1.2 s), since two calls at once take 1 s each.
    crew = chain_and_side(Contended(fast=0.1, slow=1.0))

    results = kickoffs(crew, 6)

    # The least measured first (ties: the better prediction), twice each; then the measured
    # best. Running the best prediction is not exploring.
    assert choices(results) == [
        ("parallel", False),
        ("sequential", True),
        ("sequential", False),  # measured faster already: now the best, not an exploration
        ("parallel", True),
        ("sequential", False),
        ("sequential", False),
    ]
    last = results[-1].process_choice
    assert last is not None
    assert "measured 0.4 s against 1.2 s for parallel over 3 and 2 runs" in last.reason
    assert results[-1].process == "adaptive"
    assert [p.basis for p in last.predictions] == ["3 runs", "2 runs"]


def test_a_hopeless_candidate_is_never_tried() -> None:
    crew = fan_out(Contended(fast=0.1))

    results = kickoffs(crew, 5)

    assert [process for process, _ in choices(results)] == ["parallel"] * 5
    first = results[0].process_choice
    assert first is not None
    sequential = next(p for p in first.predictions if p.process == "sequential")
    assert sequential.hopeless
    assert sequential.lower_bound == 7.0  # in task units: nothing measured yet
    assert first.features["width"] == 6.0
    assert first.features["depth"] == 2.0
    assert "predicted 2 task units (graph) against 7 task units for sequential" in first.reason
    # Then measured: parallel's own runs, and the tasks' seconds for the graph's estimate.
    later = results[-1].process_choice
    assert later is not None
    assert later.predictions[0].basis == "4 runs"
    assert later.predictions[0].seconds == pytest.approx(0.2)


def test_without_exploration_the_best_prediction_always_runs() -> None:
    crew = chain_and_side(Contended(fast=0.1, slow=1.0), process=Adaptive(explore=False))

    results = kickoffs(crew, 3)

    # The graph says parallel, and nothing else is ever measured to say otherwise.
    assert choices(results) == [("parallel", False)] * 3


def test_after_the_warm_up_at_most_one_run_in_ten_explores() -> None:
    crew = chain_and_side(Contended(fast=0.1))  # no contention: parallel is faster

    results = kickoffs(crew, 16)

    picked = choices(results)
    explored = [index + 1 for index, (_, flag) in enumerate(picked) if flag]
    # Runs 2 and 4 measure sequential; run 14 is the first after nine runs of the best in a row.
    assert explored == [2, 4, 14]
    assert all(process == "parallel" for process, flag in picked if not flag)
    assert picked[13] == ("sequential", True)


def test_every_candidate_computes_the_same_outputs() -> None:
    llm = Contended(fast=0.1)
    crew = chain_and_side(llm)

    results = kickoffs(crew, 4)  # two of each, alternately

    assert {process for process, _ in choices(results)} == {"sequential", "parallel"}
    texts = {tuple(output.text for output in result.outputs) for result in results}
    assert texts == {("done a", "done b", "done c", "done side")}


def test_a_resumed_run_reuses_the_recorded_choice() -> None:
    llm = Contended(fast=0.1)
    store = MemoryStore()
    crew = chain_and_side(llm, store=store)

    async def main() -> tuple[str, CrewResult, CrewResult, list[ev.Event]]:
        await crew.kickoff()
        llm.fail.add("c")
        with pytest.raises(TaskFailed) as failed:
            await crew.kickoff()  # the second run: the other candidate, exploring
        run_id = failed.value.run_id or ""
        await crew.kickoff()  # another run in between changes the history
        with capture_events() as captured:
            resumed = await crew.resume(run_id)
        record = await store.get_run(run_id)
        assert record is not None
        assert record.choice is not None
        first = CrewResult.model_construct(process_choice=record.choice)
        return run_id, first, resumed, list(captured)

    _, recorded, resumed, events = run_virtual(main)

    assert resumed.process_choice == recorded.process_choice
    assert resumed.process_choice is not None
    assert resumed.process_choice.explored
    assert not [e for e in events if isinstance(e, ev.ProcessChosen)]


def test_the_choice_is_recorded_with_its_predictions() -> None:
    store = MemoryStore()
    crew = fan_out(Contended(fast=0.1), store=store)

    (result,) = kickoffs(crew, 1)

    async def read() -> Any:
        return await store.get_run(result.run_id)

    record = anyio.run(read)
    assert record.process == "adaptive"
    assert record.chosen == "parallel"
    assert record.ran == "parallel"
    assert record.process_reason == result.process_choice.reason  # type: ignore[union-attr]
    assert record.choice == result.process_choice


def test_tasks_must_declare_their_context() -> None:
    agent = Agent(role="Worker", goal="g")
    tasks = [Task("a", name="a"), Task("b", name="b"), Task("c", name="c")]
    with pytest.raises(ConfigurationError, match=r"'b', 'c' do not: give each context=\[\.\.\.\]"):
        Crew(tasks=tasks, agents=[agent], process="adaptive")
    # A later task with undeclared context might count on sequential's implicit output.
    with pytest.raises(ConfigurationError, match="'b' does not"):
        Crew(tasks=[tasks[0], tasks[1]], agents=[agent], process="adaptive")
    # The first task has no task before it: it needs nothing, under every candidate.
    Crew(tasks=[tasks[0], Task("d", name="d", context=[])], agents=[agent], process="adaptive")


def test_a_manager_is_used_only_for_a_named_hierarchical_candidate_and_given_once() -> None:
    agent = Agent(role="Worker", goal="g")
    tasks = [Task("a", name="a", agent=agent, context=[])]
    with pytest.raises(ConfigurationError, match="only for its hierarchical candidate"):
        Crew(tasks=tasks, process="adaptive", manager="offline")
    named = Adaptive(candidates=["parallel", "hierarchical"], manager="offline")
    with pytest.raises(ConfigurationError, match="given twice"):
        Crew(tasks=tasks, process=named, manager="offline")
    built = Adaptive(candidates=["parallel", Hierarchical("offline")])
    with pytest.raises(ConfigurationError, match="given twice"):
        Crew(tasks=tasks, process=built, manager="offline")


def test_a_candidate_that_cannot_run_the_crew_is_a_configuration_error() -> None:
    agent = Agent(role="Worker", goal="g")
    later = Task("later", name="later", context=[])
    first = Task("first", name="first", context=[later])  # listed before what it needs
    with pytest.raises(ConfigurationError, match="candidate 'sequential' cannot run this crew"):
        Crew(tasks=[first, later], agents=[agent], process="adaptive")
    Crew(tasks=[first, later], agents=[agent], process=Adaptive(candidates=["parallel"]))


def test_hierarchical_is_a_candidate_only_with_a_manager_and_by_name() -> None:
    workers = [Agent(role="Researcher", goal="g"), Agent(role="Writer", goal="g")]
    tasks = [
        Task("a", name="a", agent=workers[0], context=[]),
        Task("b", name="b", agent=workers[1], context=["a"]),
    ]
    named = Adaptive(candidates=["sequential", "parallel", "hierarchical"])
    with pytest.raises(ConfigurationError, match="only with a manager"):
        Crew(tasks=tasks, process=named)
    crew = Crew(tasks=tasks, process=named, manager="offline")
    process = crew._process
    assert isinstance(process, Adaptive)
    assert list(process.candidates) == ["sequential", "parallel", "hierarchical"]
    assert isinstance(process.candidates["hierarchical"], Hierarchical)
    with pytest.raises(ConfigurationError, match="distinct processes"):
        Adaptive(candidates=["parallel", "parallel"])


def test_a_hierarchical_candidate_counts_the_managers_steps() -> None:
    llm = Contended(fast=0.1)
    agents = [Agent(role=r, goal="g", llm=FunctionLLM(llm)) for r in ("One", "Two")]
    tasks = [
        Task("a", name="a", agent=agents[0], context=[]),
        Task("b", name="b", agent=agents[1], context=[]),
    ]
    crew = Crew(
        tasks=tasks,
        process=Adaptive(candidates=["parallel", "hierarchical"], explore=False),
        manager="offline",
        store=MemoryStore(),
    )

    (result,) = kickoffs(crew, 1)

    choice = result.process_choice
    assert choice is not None
    assert choice.process == "parallel"
    hierarchical = next(p for p in choice.predictions if p.process == "hierarchical")
    assert hierarchical.seconds == 4.0  # 1 unit of steps + plan, review and answer


@dataclass
class FakeEntryPoint:
    name: str
    value: str
    process: type[Process]

    def load(self) -> type[Process]:
        return self.process


class Offered(Process):
    """Runs every task in reverse order."""

    name = "offered"

    def candidate_for(self, graph: TaskGraph) -> bool:
        return len(graph) < 10

    async def run(self, ctx: ProcessContext) -> None:
        for task in reversed(ctx.graph.tasks):
            await ctx.execute(task, context=[])


def test_installed_plugins_offer_themselves_as_default_candidates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import crewflow.processes
    import crewflow.processes.adaptive

    found: Callable[[], list[Any]] = lambda: [FakeEntryPoint("offered", "x:Offered", Offered)]  # noqa: E731
    monkeypatch.setattr(crewflow.processes, "_entry_points", found)
    monkeypatch.setattr(crewflow.processes.adaptive, "_entry_points", found)
    agent = Agent(role="Worker", goal="g")
    tasks = [Task("a", name="a", context=[])]

    small = Crew(tasks=tasks, agents=[agent], process="adaptive")._process
    named = Crew(tasks=tasks, agents=[agent], process=Adaptive(["parallel"]))._process

    assert isinstance(small, Adaptive)
    assert list(small.candidates) == [
        "sequential",
        "parallel",
        "offered",
    ]
    assert isinstance(named, Adaptive)
    assert list(named.candidates) == ["parallel"]
