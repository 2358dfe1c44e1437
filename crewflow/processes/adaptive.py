"""The adaptive process: for each kickoff, the candidate process predicted fastest, learned from
the crew's recorded runs.

**Features.** The crew's graph: tasks, depth, width, total work, the critical path (in measured
seconds per task where earlier runs measured them, else one unit per task) and
``max_concurrency``.

**Prediction.** Each candidate's duration: the median of its measured runs of this crew key
(``ctx.history()``: the same tasks, agents and models, under any process), else an estimate from
the graph (sequential: the total work; parallel: list scheduling under ``max_concurrency``;
hierarchical: that plus the manager's plan, review and answer). Its success rate and tokens come
from the same runs.

**Choice.** The best prediction by duration; candidates within 5 % of it are compared by success,
then tokens, then the order of the candidates.

**Exploration** (``explore=True``), a binding rule:

- a candidate whose lower bound on the graph is above 1.5x the best graph estimate is hopeless,
  never tried. Both are judged on the graph alone, each task one unit: task durations measured
  under one candidate's contention must not rule another out before it was ever measured;
- every other candidate is measured at least twice first (the least measured goes next; ties:
  the better prediction);
- then a run explores only when the 9 settled runs before it all ran the best candidate, so at
  most 1 run in 10 explores; it tries the other plausible candidate that ran least recently
  (ties: a draw seeded by ``seed`` and the number of runs).

Every candidate runs the same graph, the crew's declared context only, so the choice changes how
fast the crew runs, never what it computes. The choice is recorded (``ctx.choose``); a resumed
run reuses it.
"""

from __future__ import annotations

import random
import statistics
from typing import TYPE_CHECKING, ClassVar

from crewflow import _dag
from crewflow._records import Prediction, ProcessChoice
from crewflow.exceptions import ConfigurationError
from crewflow.processes import Process, _entry_points, get_process

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from pydantic import BaseModel, JsonValue

    from crewflow.agent import Agent
    from crewflow.graph import TaskGraph
    from crewflow.processes import ProcessContext
    from crewflow.store import History
    from crewflow.task import TaskOutput

__all__ = ["Adaptive"]

HOPELESS = 1.5
"""A candidate whose graph lower bound is above this many times the best graph estimate is
never tried."""
MEASURED_RUNS = 2
"""Settled runs of each plausible candidate before the adaptive process stops exploring."""
EXPLORE_EVERY = 10
"""After those, at most one run in this many explores."""
TIE = 0.05
"""Predictions within this fraction of the best are compared by success, then tokens."""
MANAGER_STEPS = 3
"""A hierarchical run's own steps on top of its tasks: plan, review, final answer."""


class Adaptive(Process):
    """Pick, per kickoff, the candidate process predicted fastest from the graph and past runs.

    Exploration stays within a seeded, binding bound (see the module's docs).

    Example:
        ```python
        crew = Crew(tasks=[...], process="adaptive")        # sequential or parallel
        result = await crew.kickoff()
        result.process_choice.reason   # e.g. "parallel: 12 independent tasks; ..."
        ```

    Args:
        candidates: The processes to choose from, by name or object (default: sequential,
            parallel, and installed plug-ins that offer themselves with
            `Process.candidate_for`). ``"hierarchical"`` needs the crew's manager.
        seed: Seeds the draws between equally stale candidates when exploring.
        explore: ``False``: always the best prediction, never a run to measure another.
        manager: The manager of the hierarchical candidate (``Crew(manager=...)`` sets it).

    Raises:
        ConfigurationError: An unknown candidate, one named twice, or adaptive itself.
    """

    name: ClassVar[str] = "adaptive"

    def __init__(
        self,
        candidates: Sequence[str | Process] | None = None,
        *,
        seed: int = 0,
        explore: bool = True,
        manager: Agent | str | None = None,
    ) -> None:
        self._specs = list(candidates) if candidates is not None else None
        self.seed = seed
        self.explore = explore
        self.manager = manager
        self.candidates: dict[str, Process] = {}
        self._missing_manager = False
        if manager is not None and "hierarchical" not in (self._specs or []):
            raise ConfigurationError(
                "the adaptive process uses a manager only for its hierarchical candidate: name "
                'it, Adaptive(candidates=["sequential", "parallel", "hierarchical"]), or drop '
                "manager="
            )
        for spec in self._specs or ["sequential", "parallel"]:
            if spec == "hierarchical" and manager is None:
                self._missing_manager = True  # the crew may give it: Crew(manager=...)
                continue
            if spec == "hierarchical":
                spec = get_process("hierarchical").with_manager(manager)  # type: ignore[arg-type]
            process = get_process(spec)
            if isinstance(process, Adaptive) or process.name in self.candidates:
                raise ConfigurationError(
                    f"adaptive's candidates must be distinct processes other than adaptive; "
                    f"{process.name!r} is named twice or is adaptive itself"
                )
            self.candidates[process.name] = process

    def __repr__(self) -> str:
        return f"Adaptive(candidates={list(self.candidates)}, seed={self.seed})"

    def with_manager(self, manager: Agent | str) -> Adaptive:
        if self.manager is not None or "hierarchical" in self.candidates:
            raise ConfigurationError(
                "the manager is given twice, to the adaptive process (or its hierarchical "
                "candidate) and to Crew(manager=...); give it once"
            )
        return Adaptive(self._specs, seed=self.seed, explore=self.explore, manager=manager)

    def config(self) -> dict[str, JsonValue]:
        return {
            "candidates": [{"name": n, "config": p.config()} for n, p in self.candidates.items()],
            "seed": self.seed,
            "explore": self.explore,
        }

    def validate(self, graph: TaskGraph) -> None:
        """Declared context everywhere (each candidate then runs the same graph), and a graph
        every candidate can run. Installed plug-ins that offer themselves join the default
        candidates here."""
        # The first task can need nothing else; any later one might be counting on sequential
        # handing it the task before's output, which no candidate does here.
        undeclared = [
            name
            for name, task in list(zip(graph.names, graph.tasks, strict=True))[1:]
            if task.context is None
        ]
        if undeclared:
            raise ConfigurationError(
                f"under the adaptive process every candidate runs the same graph, so tasks must "
                f"declare their context; {', '.join(map(repr, undeclared))} "
                f"{'does' if len(undeclared) == 1 else 'do'} not: give each context=[...] (the "
                "tasks whose outputs it needs) or context=[] (none)"
            )
        if self._missing_manager:
            raise ConfigurationError(
                "hierarchical is a candidate of the adaptive process only with a manager: "
                "Crew(process=Adaptive(candidates=[...]), manager=...)"
            )
        if self._specs is None:
            self._offer_plugins(graph)
        for name, process in self.candidates.items():
            try:
                process.validate(graph)
            except ConfigurationError as exc:
                raise ConfigurationError(
                    f"adaptive's candidate {name!r} cannot run this crew: {exc}"
                ) from None

    async def run(self, ctx: ProcessContext) -> None:
        """Choose (or, resumed, reuse the recorded choice), then run the chosen process."""
        choice = ctx.chosen or await self._choose(ctx)
        process = self.candidates.get(choice.process)
        if process is None:
            raise ConfigurationError(
                f"this run chose {choice.process!r}, which is not among adaptive's candidates "
                f"{list(self.candidates)}"
            )
        await process.run(ctx)

    def final_output(self, ctx: ProcessContext) -> TaskOutput | None:
        """The chosen process's final output."""
        process = self._chosen(ctx)
        return super().final_output(ctx) if process is None else process.final_output(ctx)

    def result_plan(self, ctx: ProcessContext) -> BaseModel | None:
        """The chosen process's plan, if it plans."""
        process = self._chosen(ctx)
        return None if process is None else process.result_plan(ctx)

    def _chosen(self, ctx: ProcessContext) -> Process | None:
        chosen = ctx.chosen
        return self.candidates.get(chosen.process) if chosen is not None else None

    def _offer_plugins(self, graph: TaskGraph) -> None:
        """The default candidates, and the installed plug-ins that offer themselves for
        ``graph`` (set afresh for each crew built with this object)."""
        builtin = {"sequential", "parallel", "hierarchical", "adaptive"}
        self.candidates = {name: self.candidates[name] for name in ("sequential", "parallel")}
        for entry_point in _entry_points():
            if entry_point.name in builtin or entry_point.name in self.candidates:
                continue
            try:
                process = get_process(entry_point.name)
            except ConfigurationError:
                continue  # a broken plug-in is reported when it is named, not here
            if process.candidate_for(graph):
                self.candidates[process.name] = process

    async def _choose(self, ctx: ProcessContext) -> ProcessChoice:
        history = await ctx.history()
        seconds = _task_seconds(ctx.graph, history)
        features = _features(ctx.graph, seconds, ctx.max_concurrency)
        predictions = [
            _predict(name, ctx.graph, seconds, history, ctx.max_concurrency)
            for name in self.candidates
        ]
        best = min(p.seconds for p in predictions)
        # Judged on the graph alone, each task one unit: task seconds measured under one
        # process's contention must not rule another out before it was ever measured.
        units = dict.fromkeys(ctx.graph.names, 1.0)
        least = min(
            _graph_estimate(p, ctx.graph, units, ctx.max_concurrency)[0] for p in self.candidates
        )
        predictions = [
            p.model_copy(update={"hopeless": p.lower_bound > HOPELESS * least}) for p in predictions
        ]
        ranked = sorted(predictions, key=lambda p: _rank(p, best, list(self.candidates)))
        top = ranked[0]
        chosen, explored = top, False
        if self.explore:
            trial = self._exploration(ranked, history)
            if trial is not None:
                chosen, explored = trial, True
        reason = _reason(chosen, top, ranked, features, explored)
        await ctx.choose(
            chosen.process, reason, explored=explored, features=features, predictions=ranked
        )
        recorded = ctx.chosen
        assert recorded is not None  # choose() keeps it
        return recorded

    def _exploration(self, ranked: list[Prediction], history: History) -> Prediction | None:
        """The candidate this run measures instead of the best, if the rule says to explore."""
        plausible = [ranked[0], *(p for p in ranked[1:] if not p.hopeless)]
        fewest = min(plausible, key=lambda p: p.runs)  # ties: the better prediction
        if fewest.runs < MEASURED_RUNS:
            return None if fewest is ranked[0] else fewest
        others = [p for p in plausible if p.process != ranked[0].process]
        recent = history.recent[: EXPLORE_EVERY - 1]
        if not others or len(recent) < EXPLORE_EVERY - 1:
            return None
        if any(process != ranked[0].process for process in recent):
            return None
        last_ran = {p.process: _last_ran(history.recent, p.process) for p in others}
        stalest = max(last_ran.values())
        tied = [p for p in others if last_ran[p.process] == stalest]
        return random.Random(f"{self.seed}:{len(history.recent)}").choice(tied)


def _last_ran(recent: list[str], process: str) -> int:
    """How many runs ago ``process`` last ran (never: more than all of them)."""
    return recent.index(process) if process in recent else len(recent) + 1


def _task_seconds(graph: TaskGraph, history: History) -> dict[str, float]:
    """Each task's duration: measured, else the median measured one, else 1 (a task unit)."""
    measured = {
        name: history.task_seconds[name] for name in graph.names if name in history.task_seconds
    }
    typical = statistics.median(measured.values()) if measured else 1.0
    return {name: measured.get(name, typical) for name in graph.names}


def _features(
    graph: TaskGraph, seconds: Mapping[str, float], slots: int | None
) -> dict[str, float]:
    dag = graph.nx
    depth: dict[str, int] = {}
    for name in _dag.topological_order(dag):
        depth[name] = 1 + max((depth[d] for d in dag.pred[name]), default=0)
    levels = [list(depth.values()).count(level) for level in set(depth.values())]
    work = sum(seconds.values())
    critical, _ = _dag.critical_path(dag, seconds, default=1.0)
    features = {
        "tasks": float(len(graph)),
        "depth": float(max(depth.values(), default=0)),
        "width": float(max(levels, default=0)),
        "independent": float(
            sum(1 for name in graph.names if not dag.pred[name] and not dag.succ[name])
        ),
        "work": work,
        "critical_path": critical,
        "parallelism": work / critical if critical else 1.0,
        "agents": float(len(graph.agents)),
    }
    if slots is not None:
        features["max_concurrency"] = float(slots)
    return features


def _graph_estimate(
    process: str, graph: TaskGraph, weights: Mapping[str, float], slots: int | None
) -> tuple[float, float]:
    """``process``'s duration on ``graph`` by the graph alone, and its lower bound."""
    dag = graph.nx
    work = sum(weights.values())
    critical, _ = _dag.critical_path(dag, weights, default=1.0)
    spread = max(critical, work / slots) if slots else critical
    if process == "sequential":
        return work, work
    if process in ("parallel", "hierarchical"):
        estimate = _dag.list_schedule(dag, weights, capacity=slots, default=1.0)
        if process == "parallel":
            return estimate, spread
        manager = MANAGER_STEPS * (work / len(weights) if weights else 1.0)
        return estimate + manager, spread + manager
    return work, critical  # a plug-in: the graph says only that it cannot beat the critical path


def _predict(
    process: str,
    graph: TaskGraph,
    seconds: Mapping[str, float],
    history: History,
    slots: int | None,
) -> Prediction:
    """What ``process`` should take: its measured runs' median, else the graph's estimate (in
    measured task seconds); its lower bound in task units (see `Prediction`)."""
    estimate, _ = _graph_estimate(process, graph, seconds, slots)
    _, bound = _graph_estimate(process, graph, dict.fromkeys(graph.names, 1.0), slots)
    measured = history.processes.get(process)
    runs = measured.settled if measured is not None else 0
    if measured is not None and measured.p50_seconds is not None:
        return Prediction(
            process=process,
            seconds=measured.p50_seconds,
            lower_bound=bound,
            success=measured.success_rate,
            tokens=measured.tokens,
            runs=runs,
            basis=f"{measured.runs} run{'s' if measured.runs != 1 else ''}",
        )
    success = measured.success_rate if measured is not None else None
    unit = "s" if history.task_seconds else "task units"
    return Prediction(
        process=process,
        seconds=estimate,
        unit=unit,
        lower_bound=bound,
        success=success,
        runs=runs,
    )


def _rank(prediction: Prediction, best: float, order: list[str]) -> tuple[bool, float, float, int]:
    """Duration first (within `TIE` of the best counts as a tie), then success, then tokens."""
    near = prediction.seconds <= best * (1 + TIE)
    success = prediction.success if prediction.success is not None else 1.0
    return (
        not near,
        prediction.seconds if not near else -success,
        prediction.tokens or 0.0,
        order.index(prediction.process),
    )


def _reason(
    chosen: Prediction,
    best: Prediction,
    ranked: list[Prediction],
    features: Mapping[str, float],
    explored: bool,
) -> str:
    shape = _shape(features)
    if explored:
        return (
            f"{chosen.process}: exploring, to measure it ({chosen.runs} settled "
            f"run{'s' if chosen.runs != 1 else ''} so far); the best prediction is {best.process}"
        )
    others = [p for p in ranked if p.process != chosen.process]
    if not others:
        return f"{chosen.process}: the only candidate; {shape}"
    other = others[0]
    if chosen.basis != "graph" and other.basis != "graph":
        mine, theirs = chosen.basis.split()[0], other.basis.split()[0]
        plural = "" if mine == theirs == "1" else "s"
        runs = f"{mine} run{plural} each" if mine == theirs else f"{mine} and {theirs} runs"
        return (
            f"{chosen.process}: {shape}; measured {_amount(chosen)} against "
            f"{_amount(other)} for {other.process} over {runs}"
        )
    return (
        f"{chosen.process}: {shape}; predicted {_amount(chosen)} ({chosen.basis}) "
        f"against {_amount(other)} for {other.process} ({other.basis})"
    )


def _amount(prediction: Prediction) -> str:
    value = f"{prediction.seconds:.3g}"
    if prediction.unit == "s":
        return f"{value} s"
    return f"{value} task unit{'' if value == '1' else 's'}"


def _shape(features: Mapping[str, float]) -> str:
    tasks, depth = int(features["tasks"]), int(features["depth"])
    if depth == tasks and tasks > 1:
        return f"a chain of {tasks} tasks"
    independent = int(features["independent"])
    if independent == tasks:
        return f"{tasks} independent tasks"
    return f"{tasks} tasks, {depth} deep and {int(features['width'])} wide"
