"""The task graph: names, edges, validation, analysis and drawing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from crewflow import Agent, Task
from crewflow._records import TaskKind
from crewflow.exceptions import ConfigurationError
from crewflow.graph import TaskGraph
from crewflow.processes import PlanProblem, ProblemKind

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def agent() -> Agent:
    return Agent(role="Analyst", goal="Analyse")


def names(tasks: list[Task], graph: TaskGraph) -> list[str]:
    return [graph.name_of(task) for task in tasks]


def chained(tasks: list[Task]) -> TaskGraph:
    """A graph prepared as the sequential process prepares its crew's."""
    graph = TaskGraph(tasks)
    graph.chain_undeclared()
    return graph


# -- names and lookups ----------------------------------------------------------------------------


def test_tasks_without_a_name_are_named_by_their_position(agent: Agent) -> None:
    tasks = [Task("a", agent=agent), Task("b", agent=agent, name="middle"), Task("c", agent=agent)]

    graph = TaskGraph(tasks)

    assert graph.names == ["task_1", "middle", "task_3"]
    assert graph.task("task_3") is tasks[2]


def test_looking_up_an_unknown_name_lists_the_task_names(agent: Agent) -> None:
    graph = TaskGraph([Task("a", agent=agent, name="facts")])

    with pytest.raises(KeyError, match="facts"):
        graph.task("draft")


def test_name_of_a_task_outside_the_graph_is_a_configuration_error(agent: Agent) -> None:
    graph = TaskGraph([Task("a", agent=agent)])

    with pytest.raises(ConfigurationError, match="not part of this crew"):
        graph.name_of(Task("stranger", agent=agent))


def test_membership_is_by_identity_not_by_equal_looking_content(agent: Agent) -> None:
    task = Task("same", agent=agent)
    twin = Task("same", agent=agent)

    graph = TaskGraph([task])

    assert task in graph
    assert twin not in graph
    assert len(graph) == 1


def test_a_task_without_agent_gets_the_single_agent(agent: Agent) -> None:
    task = Task("a")

    graph = TaskGraph([task], agents=[agent])

    assert graph.agent_of(task) is agent
    assert graph.agents == [agent]


def test_agents_lists_each_distinct_agent_once_in_order_of_first_use(agent: Agent) -> None:
    other = Agent(role="Writer", goal="Write")
    graph = TaskGraph([Task("a", agent=other), Task("b", agent=agent), Task("c", agent=other)])

    assert graph.agents == [other, agent]


# -- edges: declared and implicit context -------------------------------------------------------


def test_context_by_task_or_by_name_makes_a_dependency_edge(agent: Agent) -> None:
    facts = Task("facts", agent=agent, name="facts")
    notes = Task("notes", agent=agent, name="notes")
    draft = Task("draft", agent=agent, context=[facts, "notes"])

    graph = TaskGraph([facts, notes, draft])

    assert graph.dependencies(draft) == [facts, notes]
    assert graph.dependants(facts) == [draft]
    assert set(graph.nx.edges) == {("facts", "task_3"), ("notes", "task_3")}


def test_dependencies_are_in_declaration_order_whatever_the_context_order(agent: Agent) -> None:
    first = Task("1", agent=agent, name="first")
    second = Task("2", agent=agent, name="second")
    last = Task("3", agent=agent, context=[second, first])

    graph = TaskGraph([first, second, last])

    assert graph.dependency_names("task_3") == ("first", "second")


def test_context_listing_one_task_twice_makes_one_edge(agent: Agent) -> None:
    first = Task("1", agent=agent, name="first")
    last = Task("2", agent=agent, context=[first, "first"])

    graph = TaskGraph([first, last])

    assert graph.dependency_names("task_2") == ("first",)


def test_undeclared_context_chains_to_the_previous_task_as_a_real_edge(agent: Agent) -> None:
    tasks = [Task("a", agent=agent), Task("b", agent=agent), Task("c", agent=agent)]

    graph = chained(tasks)

    assert graph.dependency_names("task_2") == ("task_1",)
    assert graph.dependency_names("task_3") == ("task_2",)
    assert graph.nx.has_edge("task_1", "task_2")
    assert graph.nx.has_edge("task_2", "task_3")


def test_empty_context_means_no_dependency_even_when_chaining(agent: Agent) -> None:
    tasks = [Task("a", agent=agent), Task("b", agent=agent, context=[])]

    graph = chained(tasks)

    assert graph.dependency_names("task_2") == ()
    assert not graph.nx.has_edge("task_1", "task_2")


def test_undeclared_context_has_no_edge_without_chaining(agent: Agent) -> None:
    graph = TaskGraph([Task("a", agent=agent), Task("b", agent=agent)])

    assert graph.dependency_names("task_2") == ()
    assert graph.nx.number_of_edges() == 0


def test_no_implicit_edge_to_a_previous_task_that_needs_this_one(agent: Agent) -> None:
    draft = Task("a", agent=agent, name="draft", context=["facts"])
    facts = Task("b", agent=agent, name="facts")

    graph = chained([draft, facts])

    # No cycle the user never wrote: facts simply does not follow draft.
    assert graph.dependency_names("facts") == ()
    assert graph.dependency_names("draft") == ("facts",)


def test_no_implicit_edge_closes_a_cycle_through_earlier_implicit_edges(agent: Agent) -> None:
    tasks = [
        Task("u", agent=agent, name="u", context=["v"]),
        Task("w", agent=agent, name="w", context=["z"]),
        Task("v", agent=agent, name="v"),
        Task("y", agent=agent, name="y"),
        Task("z", agent=agent, name="z"),
    ]

    graph = chained(tasks)

    # v follows w and y follows v (implicit edges); z must not follow y: z -> w -> v -> y.
    assert graph.dependency_names("v") == ("w",)
    assert graph.dependency_names("y") == ("v",)
    assert graph.dependency_names("z") == ()
    assert [graph.name_of(task) for task in graph.topological_order()] == [
        "z",
        "w",
        "v",
        "u",
        "y",
    ]


def test_dependants_are_in_declaration_order(agent: Agent) -> None:
    root = Task("a", agent=agent, name="root")
    tasks = [root, Task("b", agent=agent, name="b"), Task("c", agent=agent, context=[root])]

    graph = chained(tasks)

    assert [graph.name_of(t) for t in graph.dependants(root)] == ["b", "task_3"]


def test_declared_context_replaces_the_implicit_previous_task(agent: Agent) -> None:
    first = Task("a", agent=agent, name="first")
    tasks = [first, Task("b", agent=agent), Task("c", agent=agent, context=[first])]

    graph = chained(tasks)

    assert graph.dependency_names("task_3") == ("first",)


# -- construction errors -----------------------------------------------------------------------


def test_no_tasks_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="at least one task"):
        TaskGraph([])


def test_a_cycle_is_reported_with_every_task_on_it(agent: Agent) -> None:
    alpha = Task("a", agent=agent, name="alpha", context=["gamma"])
    beta = Task("b", agent=agent, name="beta", context=["alpha"])
    gamma = Task("c", agent=agent, name="gamma", context=["beta"])
    bystander = Task("d", agent=agent, name="bystander")

    with pytest.raises(ConfigurationError, match="cycle") as caught:
        TaskGraph([bystander, alpha, beta, gamma])

    message = str(caught.value)
    drawn = re.search(r"cycle: ([\w >-]+);", message)
    assert drawn is not None, message
    on_cycle = drawn.group(1).split(" -> ")
    assert on_cycle[0] == on_cycle[-1]
    assert sorted(on_cycle[:-1]) == ["alpha", "beta", "gamma"]
    assert "remove one" in message


def test_a_task_in_its_own_context_is_rejected(agent: Agent) -> None:
    with pytest.raises(ConfigurationError, match="'loop' lists itself"):
        TaskGraph([Task("a", agent=agent, name="loop", context=["loop"])])


def test_context_naming_no_task_lists_the_task_names(agent: Agent) -> None:
    tasks = [Task("a", agent=agent, name="facts"), Task("b", agent=agent, context=["fact"])]

    with pytest.raises(ConfigurationError) as caught:
        TaskGraph(tasks)

    message = str(caught.value)
    assert "'task_2'" in message
    assert "'fact'" in message
    assert "facts" in message


def test_context_task_outside_the_crew_says_to_add_it(agent: Agent) -> None:
    outside = Task("outside", agent=agent, name="outside")
    tasks = [Task("b", agent=agent, name="draft", context=[outside])]

    with pytest.raises(ConfigurationError, match=r"'draft'.*outside.*add it to Crew"):
        TaskGraph(tasks)


def test_two_tasks_with_one_explicit_name_are_rejected(agent: Agent) -> None:
    tasks = [Task("a", agent=agent, name="same"), Task("b", agent=agent, name="same")]

    with pytest.raises(ConfigurationError, match=r"two tasks are named 'same'.*unique name="):
        TaskGraph(tasks)


def test_an_explicit_name_colliding_with_a_default_name_is_rejected(agent: Agent) -> None:
    tasks = [Task("a", agent=agent, name="task_2"), Task("b", agent=agent)]

    with pytest.raises(ConfigurationError, match="two tasks are named 'task_2'"):
        TaskGraph(tasks)


def test_one_task_object_listed_twice_is_rejected(agent: Agent) -> None:
    task = Task("a", agent=agent, name="once")

    with pytest.raises(ConfigurationError, match=r"Task\('once'\) appears twice"):
        TaskGraph([task, task])


@pytest.mark.parametrize("count", [0, 2])
def test_a_task_without_agent_needs_exactly_one_crew_agent(count: int) -> None:
    agents = [Agent(role=f"R{i}", goal="G") for i in range(count)]

    with pytest.raises(ConfigurationError) as caught:
        TaskGraph([Task("a", name="orphan")], agents=agents)

    message = str(caught.value)
    assert "'orphan'" in message
    assert f"{count} agents" in message
    assert "Task(agent=...)" in message


# -- analysis -----------------------------------------------------------------------------------


def test_topological_order_puts_dependencies_first_and_breaks_ties_by_declaration(
    agent: Agent,
) -> None:
    late = Task("late", agent=agent, name="late", context=["root"])
    root = Task("root", agent=agent, name="root")
    free = Task("free", agent=agent, name="free")
    tail = Task("tail", agent=agent, name="tail", context=["late", "free"])

    graph = TaskGraph([late, free, root, tail])

    assert names(graph.topological_order(), graph) == ["free", "root", "late", "tail"]


def test_critical_path_counts_each_task_once_without_durations(agent: Agent) -> None:
    a = Task("a", agent=agent, name="a")
    b = Task("b", agent=agent, name="b", context=[a])
    c = Task("c", agent=agent, name="c", context=[b])
    side = Task("side", agent=agent, name="side")
    end = Task("end", agent=agent, name="end", context=[c, side])

    length, path = TaskGraph([a, b, c, side, end]).critical_path()

    assert path == ["a", "b", "c", "end"]
    assert length == pytest.approx(4.0)


def test_critical_path_follows_measured_durations(agent: Agent) -> None:
    a = Task("a", agent=agent, name="a")
    b = Task("b", agent=agent, name="b", context=[a])
    c = Task("c", agent=agent, name="c", context=[b])
    side = Task("side", agent=agent, name="side")
    end = Task("end", agent=agent, name="end", context=[c, side])
    graph = TaskGraph([a, b, c, side, end])

    length, path = graph.critical_path({"a": 1, "b": 1, "c": 1, "side": 10, "end": 2})

    assert path == ["side", "end"]
    assert length == pytest.approx(12.0)


def test_critical_path_keeps_zero_duration_dependencies_on_the_chain(agent: Agent) -> None:
    a = Task("a", agent=agent, name="a")
    b = Task("b", agent=agent, name="b", context=[a])

    length, path = TaskGraph([a, b]).critical_path({"a": 0.0, "b": 3.0})

    assert path == ["a", "b"]
    assert length == pytest.approx(3.0)


def test_placeholders_name_the_tasks_that_use_each_input(agent: Agent) -> None:
    tasks = [
        Task("About {topic}", agent=agent, name="facts"),
        Task("Write on {topic} for {audience}", agent=agent, expected_output="{{literal}}"),
    ]

    assert TaskGraph(tasks).placeholders == {
        "topic": ["facts", "task_2"],
        "audience": ["task_2"],
    }


def test_to_mermaid_draws_every_task_with_its_agent_and_every_edge(agent: Agent) -> None:
    writer = Agent(role='The "Writer"', goal="Write")
    facts = Task("a", agent=agent, name="facts")
    draft = Task("b", agent=writer, name="draft", context=[facts])
    free = Task("c", agent=agent, name="free", context=[])

    mermaid = TaskGraph([facts, draft, free]).to_mermaid()

    lines = mermaid.splitlines()
    assert lines[0] == "flowchart TD"
    assert '    t0["facts<br/>Analyst"]' in lines
    assert '    t1["draft<br/>The #quot;Writer#quot;"]' in lines
    assert '    t2["free<br/>Analyst"]' in lines
    edges = [line for line in lines if "-->" in line]
    assert edges == ["    t0 --> t1"]


# -- adding tasks: plans checked as a whole ----------------------------------------------------


def kinds(problems: list[PlanProblem]) -> list[tuple[ProblemKind, str]]:
    return [(problem.kind, problem.task) for problem in problems]


def test_a_plan_is_added_after_its_dependencies_as_internal_tasks(agent: Agent) -> None:
    first = Task("a", agent=agent, name="first")
    graph = TaskGraph([first])
    step = Task("step", agent=agent, name="plan.1", context=[first])
    later = Task("later", agent=agent, name="plan.2", context=["plan.1"])

    added = graph._extend([later, step])  # in any order: a plan is checked as a whole

    assert added == ["plan.2", "plan.1"]
    assert graph.names == ["first", "plan.2", "plan.1"]
    assert graph.deliverables == ["first"]
    assert graph.kind("plan.1") == TaskKind.INTERNAL
    assert graph.kind("first") == TaskKind.DELIVERABLE
    assert graph.dependencies(step) == [first]
    assert graph.dependency_names("plan.2") == ("plan.1",)
    assert graph.nx.has_edge("first", "plan.1")
    assert graph.remaining_paths()["first"] == 3.0  # the added tasks lengthen its path


def test_a_valid_plan_has_no_problems(agent: Agent) -> None:
    graph = TaskGraph([Task("a", agent=agent, name="first")], agents=[agent])

    plan = [Task("b", agent=agent, name="x.1", context=["first"]), Task("c {topic}", name="x.2")]

    assert graph.check_tasks(plan, inputs={"topic": "tides"}) == []


def test_every_problem_of_a_plan_is_found_at_once(agent: Agent) -> None:
    other = Agent(role="Other", goal="g")
    graph = TaskGraph([Task("a", agent=agent, name="first"), Task("b", agent=other)])
    stranger = Task("not in the run", agent=agent)

    problems = graph.check_tasks(
        [
            Task("no name", agent=agent),
            Task("taken", agent=agent, name="first"),
            Task("no agent", name="p.1"),
            Task("unknown", agent=agent, name="p.2", context=["missing", stranger]),
            Task("itself", agent=agent, name="p.3", context=["p.3"]),
            Task("needs {topic}", agent=agent, name="p.4"),
        ],
        inputs={},
    )

    assert kinds(problems) == [
        (ProblemKind.UNNAMED, "'no name'"),
        (ProblemKind.DUPLICATE, "first"),
        (ProblemKind.NO_AGENT, "p.1"),
        (ProblemKind.UNKNOWN_DEPENDENCY, "p.2"),
        (ProblemKind.UNKNOWN_DEPENDENCY, "p.2"),
        (ProblemKind.SELF_DEPENDENCY, "p.3"),
        (ProblemKind.MISSING_INPUT, "p.4"),
    ]
    assert "'missing'" in problems[3].message
    assert problems[6].describe() == (
        "- p.4: its templates need inputs the run was not given: topic; write {{name}} for a "
        "literal brace"
    )


def test_a_cycle_inside_a_plan_is_a_problem_naming_it(agent: Agent) -> None:
    graph = TaskGraph([Task("a", agent=agent, name="first")])

    problems = graph.check_tasks(
        [
            Task("x", agent=agent, name="p.1", context=["p.2"]),
            Task("y", agent=agent, name="p.2", context=["p.1"]),
        ]
    )

    assert [problem.kind for problem in problems] == [ProblemKind.CYCLE]
    assert "p.1" in problems[0].message
    assert "p.2" in problems[0].message


def test_a_task_or_name_twice_in_one_plan_is_a_duplicate(agent: Agent) -> None:
    graph = TaskGraph([Task("a", agent=agent, name="first")])
    step = Task("x", agent=agent, name="p.1")

    problems = graph.check_tasks([step, Task("y", agent=agent, name="p.1"), step])

    assert [problem.kind for problem in problems] == [ProblemKind.DUPLICATE] * 3


def test_a_plan_with_problems_leaves_the_graph_unchanged(agent: Agent) -> None:
    first = Task("a", agent=agent, name="first")
    graph = TaskGraph([first])

    with pytest.raises(ValueError, match="neither a task of the run nor of this plan"):
        graph._extend([Task("x", agent=agent, name="ok"), Task("y", agent=agent, context=["z"])])

    assert graph.names == ["first"]
    assert list(graph.nx.nodes) == ["first"]
    assert graph.dependants(first) == []
    assert graph._extend([Task("x", agent=agent, name="ok")]) == ["ok"]


def test_copy_is_independent_of_the_original(agent: Agent) -> None:
    first = Task("a", agent=agent, name="first")
    graph = TaskGraph([first], agents=[agent])

    copy = graph.copy()
    copy._extend([Task("b", name="second", context=["first"])])

    assert graph.names == ["first"]
    assert graph.dependants(first) == []
    assert copy.names == ["first", "second"]
    assert copy.agent_of(copy.task("second")) is agent
    assert copy.kind("second") == TaskKind.INTERNAL


def test_a_copy_shares_the_networkx_graph_until_it_changes(agent: Agent) -> None:
    first = Task("a", agent=agent, name="first")
    graph = TaskGraph([first], agents=[agent])
    built = graph.nx

    copy = graph.copy()
    assert copy.nx is built
    copy._extend([Task("b", name="second", context=["first"])])

    assert list(copy.nx.edges) == [("first", "second")]
    assert graph.nx is built
    assert list(built.nodes) == ["first"]


def test_a_copy_shares_the_dependency_tuples_and_each_graph_changes_its_own(
    agent: Agent,
) -> None:
    first = Task("a", agent=agent, name="first")
    second = Task("b", agent=agent, name="second", context=[first])
    graph = TaskGraph([first, second], agents=[agent])

    copy, other = graph.copy(), graph.copy()
    assert copy.dependant_names("first") is graph.dependant_names("first")
    copy._extend([Task("c", name="third", context=["first", "second"])])
    other._extend([Task("d", name="fourth", context=["second"])])

    assert graph.dependant_names("first") == ("second",)
    assert graph.dependant_names("second") == ()
    assert copy.dependant_names("first") == ("second", "third")
    assert copy.dependant_names("second") == ("third",)
    assert other.dependant_names("first") == ("second",)
    assert other.dependant_names("second") == ("fourth",)
    assert other.dependency_names("fourth") == ("second",)


CREWS_WITHOUT_PLANS = """
import sys
from crewflow import Agent, Crew, Task
from crewflow.llm.offline import OfflineLLM

agent = Agent(role="Researcher", goal="G", llm=OfflineLLM())
facts = Task("Find facts", name="facts")
notes = Task("Take notes", name="notes")
draft = Task("Write", context=[facts, notes], name="draft")
Crew(tasks=[facts, notes, draft], agents=[agent], process="parallel").kickoff_sync()
Crew(tasks=[Task("One"), Task("Two")], agents=[agent]).kickoff_sync()
print("networkx" in sys.modules)
"""


def test_crews_are_built_and_run_without_loading_networkx(tmp_path: Path) -> None:
    # Importing networkx takes about 115 ms, most of a first kickoff's own cost: the checks of
    # every construction and the dispatcher's ranking work on the graph's dicts.
    env = {**os.environ, "CREWFLOW_HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", CREWS_WITHOUT_PLANS], capture_output=True, text=True, env=env
    )

    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_dependants_stay_in_declaration_order_when_an_edge_comes_later(agent: Agent) -> None:
    # The sequential process chains "second" after "first" once "third" already depends on
    # "first": "second" goes before "third", as declared, not at the end.
    first = Task("a", agent=agent, name="first")
    second = Task("b", agent=agent, name="second")
    third = Task("c", agent=agent, name="third", context=[first, first])
    graph = TaskGraph([first, second, third], agents=[agent])
    assert graph.dependency_names("third") == ("first",)  # listed twice, one edge

    graph.chain_undeclared()

    assert graph.dependant_names("first") == ("second", "third")
    assert graph.dependency_names("second") == ("first",)
    assert graph.dependencies(third) == [first]
