"""The graph algorithms the task graph and the optimizer share (`crewflow._dag`)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from crewflow import _dag

DIAMOND = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}


def test_a_graph_keeps_declaration_order_and_leaves_out_unknown_dependencies() -> None:
    graph = _dag.digraph({"late": ["root"], "root": [], "tail": ["late", "gone", "late"]})

    assert list(graph) == ["late", "root", "tail"]
    assert list(graph.edges) == [("late", "tail"), ("root", "late")]


def test_topological_order_breaks_ties_by_declaration() -> None:
    graph = _dag.digraph({"late": ["root"], "free": [], "root": [], "tail": ["late", "free"]})

    assert _dag.topological_order(graph) == ["free", "root", "late", "tail"]


def test_topological_order_of_a_cycle_names_the_tasks_on_it() -> None:
    graph = _dag.digraph({"a": ["c"], "b": ["a"], "c": ["b"], "d": []})

    with pytest.raises(ValueError, match="cycle: a -> b -> c -> a"):
        _dag.topological_order(graph)


def test_find_cycle_is_empty_for_a_dag() -> None:
    assert _dag.find_cycle(_dag.digraph(DIAMOND)) == []


def test_reaches_follows_dependants_through_other_tasks() -> None:
    graph = _dag.digraph({"a": [], "b": ["a"], "c": ["b"], "side": []})

    assert _dag.reaches(graph, "a", "c")
    assert not _dag.reaches(graph, "c", "a")
    assert not _dag.reaches(graph, "a", "side")


def test_the_default_weight_is_what_an_unweighted_task_counts() -> None:
    graph = _dag.digraph({"a": [], "b": ["a"], "c": ["b"], "side": []})
    weights = {"side": 2.5}

    # Every task counts 1.0: the chain of three is the longest.
    assert _dag.critical_path(graph, weights, default=1.0) == (3.0, ["a", "b", "c"])
    # Unmeasured tasks count nothing: the one measured task is the chain.
    assert _dag.critical_path(graph, weights, default=0.0) == (2.5, ["side"])
    assert _dag.remaining_paths(graph.succ, list(graph), weights, default=1.0)["a"] == 3.0
    assert _dag.remaining_paths(graph.succ, list(graph), weights, default=0.0)["a"] == 0.0


def test_critical_path_follows_the_heaviest_branch() -> None:
    graph = _dag.digraph(DIAMOND)

    assert _dag.critical_path(graph, {"b": 5}, default=1.0) == (7.0, ["a", "b", "d"])
    assert _dag.critical_path(graph, {"c": 5}, default=1.0) == (7.0, ["a", "c", "d"])


def test_critical_path_keeps_zero_duration_dependencies_on_the_chain() -> None:
    graph = _dag.digraph({"a": [], "b": [], "c": ["a", "b"]})

    # a and b both end at 0 s: the first dependency counts, and a zero-duration one stays.
    assert _dag.critical_path(graph, {"c": 3.0}, default=0.0) == (3.0, ["a", "c"])


def test_critical_path_ends_at_the_first_task_that_ends_last() -> None:
    graph = _dag.digraph({"a": [], "b": ["a"], "free": []})

    # b takes no time, so a ends as late as b does, and first.
    assert _dag.critical_path(graph, {"a": 2.0, "free": 2.0}, default=0.0) == (2.0, ["a"])


def test_critical_path_of_an_empty_graph_is_empty() -> None:
    assert _dag.critical_path(_dag.digraph({}), {}, default=1.0) == (0.0, [])


def test_remaining_paths_include_the_task_and_its_longest_tail() -> None:
    graph = _dag.digraph(DIAMOND)

    remaining = _dag.remaining_paths(
        graph.succ, _dag.topological_order(graph), {"b": 5.0}, default=1.0
    )

    assert remaining == {"a": 7.0, "b": 6.0, "c": 2.0, "d": 1.0}


def test_remaining_paths_are_the_same_for_any_topological_order() -> None:
    graph = _dag.digraph(DIAMOND)
    weights = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}

    one = _dag.remaining_paths(graph.succ, ["a", "b", "c", "d"], weights, default=0.0)
    other = _dag.remaining_paths(graph.succ, ["a", "c", "b", "d"], weights, default=0.0)

    assert one == other == {"a": 8.0, "b": 6.0, "c": 7.0, "d": 4.0}


def test_importing_the_module_loads_no_networkx() -> None:
    # The optimizer imports it, and importing the optimizer must stay light.
    code = "import sys, crewflow._dag; print('networkx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
