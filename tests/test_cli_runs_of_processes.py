"""What ``crewflow show``, ``runs`` and ``optimize`` say of the processes that plan and choose:
a hierarchical run's plan, an adaptive run's choice and predictions, and what adaptive learned.

The records are written straight into a `SQLiteStore`, as the hierarchical and adaptive
processes record them (the plan is the output of the manager's ``plan`` step; the choice is in
``details["choice"]``), and each command is run as a 60-, 80- and 120-column terminal runs it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest

from crewflow._records import Prediction, ProcessChoice
from crewflow.store import AddedTaskRecord, OutputRow, RunRecord
from tests.test_cli_store import T0, attempt, fill, invoke, invoke_json, on_terminal, record

if TYPE_CHECKING:
    from pathlib import Path

WIDTHS = [60, 80, 120]
HIER = "4f7d0c1e9a2b4c6d8e0f1a2b3c4d5e6f"
CHOSE = "9b8a7c6d5e4f40312233445566778899"
LONG = (
    "Search for recent, reputable sources on sodium-ion batteries: energy density, cycle life,\n"
    "cost per kWh and the main manufacturers, and note where the sources disagree."
)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ``CREWFLOW_HOME``: the default database is ``home / "runs.db"``."""
    monkeypatch.setenv("CREWFLOW_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def plan_output(run_id: str, task: str, data: dict[str, Any], at: float) -> OutputRow:
    """The manager's answer to ``task`` (``plan``, ``plan.2``...): a plan as data."""
    return OutputRow(
        run_id=run_id,
        task=task,
        text="{...}",
        data=data,
        agent="Manager",
        model="openai/gpt-4o",
        finished_at=T0 + timedelta(seconds=at),
    )


def step(worker: str, instructions: str, *after: str) -> dict[str, Any]:
    return {"worker": worker, "instructions": instructions, "after": list(after)}


def fill_hierarchical(path: Path) -> None:
    """A hierarchical run whose manager's first plan was refused (``plan``), the second
    accepted (``plan.2``): facts in two steps, draft in one after facts."""
    run = record(HIER).model_copy(update={"process": "hierarchical", "process_reason": ""})
    refused = {"facts": [step("Nobody", "do it")]}
    accepted = {
        "facts": [step("Researcher", LONG), step("Analyst", "Check each fact twice")],
        "draft": [step("Writer", "Write the post from the checked facts", "facts")],
    }
    names = ["plan", "plan.2", "facts.1", "facts.2", "draft.1", "review.1", "final_answer"]
    asked = {"plan", "plan.2", "review.1", "final_answer"}
    added = [
        AddedTaskRecord(name=name, step="ask" if name in asked else "task", added=T0)
        for name in names
    ]
    outputs = [plan_output(HIER, "plan", refused, 1), plan_output(HIER, "plan.2", accepted, 2)]
    attempts = [attempt(name, 1, index, index + 1) for index, name in enumerate(names)]
    fill(path, [run], {HIER: attempts}, outputs, added={HIER: added})


def predictions(*rows: tuple[str, float, str, float | None, bool]) -> list[Prediction]:
    # Graph estimates are in task units only before any task was measured: when none of the
    # candidates has measured runs either.
    unit = "task units" if all(row[2] == "graph" for row in rows) else "s"
    return [
        Prediction(
            process=process,
            seconds=seconds,
            lower_bound=seconds / 2,
            success=success,
            basis=basis,
            unit=unit,
            hopeless=hopeless,
            runs=3,
        )
        for process, seconds, basis, success, hopeless in rows
    ]


MEASURED = predictions(
    ("parallel", 5.0, "3 runs", 1.0, False),
    ("sequential", 12.0, "2 runs", 0.5, False),
    ("hierarchical", 30.0, "graph", None, True),
)


def adaptive_run(
    run_id: str,
    chosen: str,
    *,
    explored: bool = False,
    minute: int = 0,
    seconds: float = 6.0,
    **fields: Any,
) -> RunRecord:
    """A completed adaptive run that chose ``chosen`` on the `MEASURED` predictions."""
    choice = ProcessChoice(
        process=chosen,
        reason=f"{chosen}: 2 tasks, 2 deep and 1 wide; predicted 5 s",
        explored=explored,
        features={"tasks": 2.0},
        predictions=fields.pop("predictions", MEASURED),
    )
    update = {
        "process": "adaptive",
        "chosen": chosen,
        "process_reason": choice.reason,
        "details": {"choice": choice.model_dump(mode="json")},
        "crew_key": "sha256:1234abcd5678",
        **fields,
    }
    return record(run_id, minute=minute, seconds=seconds).model_copy(update=update)


def squeezed(lines: list[str]) -> list[str]:
    return [" ".join(line.split()) for line in lines]


# -- crewflow show: a hierarchical run's plan ---------------------------------------------------


@pytest.mark.parametrize("width", WIDTHS)
def test_show_prints_the_accepted_plan_cut_to_the_width(home: Path, width: int) -> None:
    fill_hierarchical(home / "runs.db")

    code, lines = on_terminal(width, "show", HIER)

    assert code == 0
    plan = lines[lines.index("Plan (from plan.2)") :]
    assert plan[1] == "  facts"
    assert plan[2].startswith("    1. Researcher: Search for recent")
    assert plan[2].endswith("…")  # cut: it never wraps
    assert max(len(line) for line in lines) <= width


def test_show_cuts_only_the_instructions_that_do_not_fit(home: Path) -> None:
    fill_hierarchical(home / "runs.db")

    _, lines = on_terminal(80, "show", HIER)

    start = lines.index("Plan (from plan.2)")
    assert lines[start + 1 : start + 6] == [
        "  facts",
        "    1. Researcher: Search for recent, reputable sources on sodium-ion batteries…",
        "    2. Analyst: Check each fact twice",
        "  draft",
        "    1. Writer (after facts): Write the post from the checked facts",
    ]
    assert not any("Nobody" in line for line in lines[start:])  # the refused plan


def test_show_json_holds_the_plan_whole(home: Path) -> None:
    fill_hierarchical(home / "runs.db")

    shown = invoke_json("show", HIER)

    assert shown["choice"] is None
    assert shown["plan"]["task"] == "plan.2"
    assert shown["plan"]["steps"]["facts"][0] == {
        "worker": "Researcher",
        "instructions": LONG,
        "after": [],
    }
    assert shown["plan"]["steps"]["draft"] == [
        {
            "worker": "Writer",
            "instructions": "Write the post from the checked facts",
            "after": ["facts"],
        }
    ]


def test_the_plan_asked_for_last_is_the_highest_number_not_the_last_name(home: Path) -> None:
    run = record("r").model_copy(update={"process": "hierarchical"})
    outputs = [
        plan_output("r", name, {"facts": [step("Researcher", name)]}, at)
        for at, name in enumerate(["plan", "plan.10", "plan.9"])
    ]
    fill(home / "runs.db", [run], outputs=outputs)

    assert invoke_json("show", "r")["plan"]["task"] == "plan.10"


def test_a_crew_task_named_plan_is_not_taken_for_a_managers_plan(home: Path) -> None:
    run = record("r", graph={"plan": [], "write": ["plan"]})
    data = {"write": [step("Writer", "looks like a plan step")]}
    fill(home / "runs.db", [run], outputs=[plan_output("r", "plan", data, 1)])

    shown = invoke_json("show", "r")
    lines = invoke("show", "r").stdout.splitlines()

    assert shown["plan"] is None
    assert not any(line.startswith("Plan") for line in lines)


def test_a_plan_fixed_in_the_chosen_candidates_configuration_is_shown(home: Path) -> None:
    fixed = {"facts": [step("Researcher", "Use the fixed plan")]}
    config = {
        "candidates": [
            {"name": "parallel", "config": {}},
            {"name": "hierarchical", "config": {"plan": fixed}},
        ]
    }
    run = adaptive_run("r", "hierarchical", process_config=config)
    fill(home / "runs.db", [run])

    shown = invoke_json("show", "r")
    lines = invoke("show", "r").stdout.splitlines()

    assert shown["plan"] == {
        "task": None,
        "steps": {
            "facts": [{"worker": "Researcher", "instructions": "Use the fixed plan", "after": []}]
        },
    }
    assert "Plan (fixed by the process's configuration)" in lines


# -- crewflow show: an adaptive run's choice ----------------------------------------------------


@pytest.mark.parametrize("width", WIDTHS)
def test_show_prints_the_choice_and_each_candidates_prediction(home: Path, width: int) -> None:
    fill(home / "runs.db", [adaptive_run(CHOSE, "parallel")])

    code, lines = on_terminal(width, "show", CHOSE)

    assert code == 0
    flat = squeezed(lines)
    assert "explored no: it ran the best prediction" in flat
    table = flat[flat.index("Predictions of adaptive, best first") + 1 :]
    assert table[0].split()[:5] == ["candidate", "predicted", "basis", "success", "hopeless"]
    assert table[2].startswith("parallel (ran) 5.00 s 3 runs 100 %")
    assert table[3].startswith("sequential 12.0 s 2 runs 50 %")
    assert table[4].startswith("hierarchical 30.0 s graph – yes")
    assert table[5] == "took 6.00 s, predicted 5.00 s: off by -17 %"
    assert max(len(line) for line in lines) <= width


def test_show_says_when_the_run_explored_and_what_was_best(home: Path) -> None:
    fill(home / "runs.db", [adaptive_run("r", "sequential", explored=True, seconds=10)])

    lines = squeezed(invoke("show", "r").stdout.splitlines())

    assert "explored yes: it ran sequential to measure it (best: parallel)" in lines
    assert any(line.startswith("sequential (ran) 12.0 s") for line in lines)
    assert "took 10.0 s, predicted 12.0 s: off by +20 %" in lines


def test_predictions_from_the_graph_alone_are_task_units(home: Path) -> None:
    graph_only = predictions(
        ("parallel", 2.0, "graph", None, False), ("sequential", 3.0, "graph", None, False)
    )
    fill(home / "runs.db", [adaptive_run("r", "parallel", predictions=graph_only)])

    lines = squeezed(invoke("show", "r").stdout.splitlines())

    assert "Predictions of adaptive, best first (task units: no task measured yet)" in lines
    assert any(line.startswith("parallel (ran) 2 units graph –") for line in lines)
    assert not any(line.startswith("took") for line in lines)  # units are not seconds


def test_a_run_that_did_not_settle_is_not_compared_with_its_prediction(home: Path) -> None:
    fill(home / "runs.db", [adaptive_run("r", "parallel", resumed=1)])

    lines = squeezed(invoke("show", "r").stdout.splitlines())

    assert any(line.startswith("parallel (ran) 5.00 s") for line in lines)
    assert not any(line.startswith("took") for line in lines)


def test_show_json_holds_the_choice(home: Path) -> None:
    fill(home / "runs.db", [adaptive_run("r", "parallel")])

    shown = invoke_json("show", "r")

    assert shown["plan"] is None
    assert shown["choice"]["process"] == "parallel"
    assert shown["choice"]["explored"] is False
    assert [
        (p["process"], p["seconds"], p["basis"], p["hopeless"])
        for p in shown["choice"]["predictions"]
    ] == [
        ("parallel", 5.0, "3 runs", False),
        ("sequential", 12.0, "2 runs", False),
        ("hierarchical", 30.0, "graph", True),
    ]


def test_a_choice_written_by_another_version_is_left_out(home: Path) -> None:
    run = adaptive_run("r", "parallel").model_copy(update={"details": {"choice": {"odd": 1}}})
    fill(home / "runs.db", [run])

    shown = invoke_json("show", "r")
    result = invoke("show", "r")

    assert shown["choice"] is None
    assert result.exit_code == 0
    assert "adaptive → parallel" in result.stdout
    assert "Predictions" not in result.stdout


# -- crewflow runs ------------------------------------------------------------------------------


@pytest.mark.parametrize("width", WIDTHS)
def test_runs_shows_the_process_adaptive_chose_where_it_fits(home: Path, width: int) -> None:
    fill(home / "runs.db", [adaptive_run(CHOSE, "parallel"), record(HIER, minute=1)])

    code, lines = on_terminal(width, "runs")

    assert code == 0
    row = next(line for line in lines if line.startswith(CHOSE))
    assert max(len(line) for line in lines) <= width
    if width >= 120:
        assert row.split()[1:6] == ["research", "adaptive", "→", "parallel", "completed"]


# -- crewflow optimize --------------------------------------------------------------------------


def fill_learning(path: Path) -> None:
    """Direct runs of parallel (4, 6 s) and sequential (12 s), and adaptive runs of the same
    crew key: parallel in 5 s (predicted 5 s), sequential explored in 10 s (predicted 12 s)."""
    key = {"crew_key": "sha256:1234abcd5678"}
    sequential = {**key, "process": "sequential"}
    runs = [
        record("p1", minute=0, seconds=4).model_copy(update=key),
        record("p2", minute=1, seconds=6).model_copy(update=key),
        record("s1", minute=2, seconds=12).model_copy(update=sequential),
        adaptive_run("a1", "parallel", minute=3, seconds=5),
        adaptive_run("a2", "sequential", explored=True, minute=4, seconds=10),
    ]
    fill(path, runs)


def test_optimize_json_holds_what_adaptive_learned(home: Path) -> None:
    fill_learning(home / "runs.db")

    (learning,) = invoke_json("optimize")["learning"]

    assert (learning["crew"], learning["crew_key"], learning["runs"]) == (
        "research",
        "sha256:1234abcd5678",
        5,
    )
    # parallel: 4, 5, 6 s; sequential: 10, 12 s.
    assert [(p["process"], p["p50_seconds"], p["chosen"]) for p in learning["processes"]] == [
        ("parallel", 5.0, 1),
        ("sequential", 11.0, 1),
    ]
    (stats,) = learning["choices"]
    assert (stats["best_process"], stats["regret_runs"], stats["regret_explored"]) == (
        "parallel",
        2,
        1,
    )
    assert stats["regret_mean"] == pytest.approx((0.0 + 1.0) / 2)
    assert stats["regret_max"] == pytest.approx(1.0)
    assert stats["prediction_error"] == pytest.approx((0.0 + 0.2) / 2)


@pytest.mark.parametrize("width", WIDTHS)
def test_optimize_shows_what_adaptive_learned_at_any_width(home: Path, width: int) -> None:
    fill_learning(home / "runs.db")

    code, lines = on_terminal(width, "optimize")

    assert code == 0
    flat = squeezed(lines)
    assert "Learning of research (crew key 1234abcd): 5 settled runs" in flat
    assert "parallel 3 100 % 5.0 s 1 0" in flat
    assert "sequential 2 100 % 11.0 s 1 1" in flat
    assert "regret: mean +50 %, max +100 % over 2 runs, 1 explored" in flat
    assert "prediction error: mean ±10 % over 2 runs" in flat
    assert any(line.startswith("a2") and "sequential*" in line for line in flat)
    assert max(len(line) for line in lines) <= width
