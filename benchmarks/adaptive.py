"""The adaptive process: does choosing a process per kickoff from the store's history find the
faster one, and how much does it pay to learn it?

Four shapes, each against a loopback server of its own (its own process, as in dag.py) that
answers each task after that task's simulated latency (its description holds a key, ``[[c3]]``):

- ``chain6``: a chain of 6 tasks, 50-300 ms each (seeded): both processes take the same time;
- ``fanout12``: 12 independent tasks and a join, 50-300 ms each: parallel, by far;
- ``dag30``: 30 tasks in 6 layers of 5, each after the first layer depending on one task of the
  layer before and 0-2 of any earlier one, 50-300 ms each (seeded): parallel, by far;
- ``throttled8``: a chain of 6 whose last step also joins 2 side tasks, 200 ms each, on a server
  that answers 429 with Retry-After: 1 once more than 2 requests are in flight. By the graph
  alone parallel looks better (6 steps against 8, so sequential stays plausible: within 1.5x),
  but its first wave has 3 requests in flight, the 429 pauses the whole endpoint for 1 s, and
  sequential is faster: only the history shows it.

Every task declares its context (``context=[]`` for roots), so both processes send the same
messages and build the same graph. Per shape, in one process:

1. direct runs: ``Crew(process="sequential")`` and ``Crew(process="parallel")``, alternating,
   ``--direct`` (3) of each, on a SQLite store of their own, which adaptive never reads. *best*
   is the lower of the two medians;
2. floor: the same calls made by a bare ``openai.AsyncOpenAI`` client (made once, outside the
   timing) with plain asyncio in the best process's order (one after another; or each as soon
   as its dependencies' answers are in, driven by ``asyncio.Event``\\s), ``--direct`` runs;
3. adaptive: ``Crew(process=Adaptive(seed=--adaptive-seed))`` on a fresh SQLite store,
   ``--runs`` (8) kickoffs in a row: each run's choice (explored or not, its predictions, its
   reason) and its time against best, with its regret (time / best - 1).

Goals, per shape: the median of adaptive's last 3 runs (6-8) at most 1.05x best, and none of
them above 1.25x. Over the shapes: adaptive's total over its runs below the best constant
policy's (the one process that is fastest over all shapes together) on at least one shape. A
constant policy's total is ``--runs`` times the mean of its direct runs (it learns nothing, so
its runs are alike). Ratios, of the median of runs 6-8: to the bound (the best process's graph
bound from the simulated latencies: the total work for sequential, the critical path for
parallel) and to the floor. Each kickoff's lead-in (from the call to its first task's start:
opening the store, reading the history, choosing) shows what deciding costs against the direct
runs' own. Also shown: the first kickoff of this fresh process (an adaptive crew of ``chain6``
on an empty store of its own, after the floor's warm-up has imported openai), apart from the
measured runs.

Run: ``python benchmarks/adaptive.py [--seed 7] [--adaptive-seed 0] [--direct 3] [--runs 8]
[--only SHAPE ...] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Figures, add_json_option, counting_server, median, table, user_message

from crewflow import Agent, Crew, Task
from crewflow.llm.openai import OpenAIChat
from crewflow.processes.adaptive import Adaptive

if TYPE_CHECKING:
    from _common import CountingServer
    from openai import AsyncOpenAI

    from crewflow.crew import CrewResult

MODEL = "bench-model"
ROLE, GOAL = "Analyst", "Build on the earlier steps"
SYSTEM = f"You are {ROLE}. Your goal: {GOAL}"
CANDIDATES = ("sequential", "parallel")
LATE = 3  # the last runs the goals look at: 6-8 of 8
LATE_MEDIAN_GOAL, LATE_MAX_GOAL = 1.05, 1.25
FAST, SLOW = 0.05, 0.3
THROTTLED_STEP, BUSY_LIMIT, RETRY_AFTER = 0.2, 2, 1.0


@dataclass
class Shape:
    """A crew's graph: names in declaration (topological) order, durations, dependencies."""

    name: str
    summary: str
    names: list[str] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)
    deps: dict[str, list[str]] = field(default_factory=dict)
    busy_limit: int | None = None

    def add(self, name: str, seconds: float, deps: list[str]) -> None:
        self.names.append(name)
        self.durations[name] = round(seconds, 3)
        self.deps[name] = sorted(deps, key=self.names.index)

    def description(self, name: str) -> str:
        return f"[[{name}]] Step {name} of the {self.name} analysis"

    @property
    def work(self) -> float:
        return sum(self.durations.values())

    @property
    def critical_path(self) -> float:
        finish: dict[str, float] = {}
        for name in self.names:
            start = max((finish[dep] for dep in self.deps[name]), default=0.0)
            finish[name] = start + self.durations[name]
        return max(finish.values())

    def bound(self, process: str) -> tuple[float, str]:
        """The graph bound of ``process``, with its name."""
        if process == "sequential":
            return self.work, "work"
        return self.critical_path, "critical path"


def chain(seed: int, length: int = 6) -> Shape:
    rng = random.Random(seed)
    shape = Shape(f"chain{length}", f"a chain of {length}, 50-300 ms")
    for index in range(1, length + 1):
        shape.add(f"c{index}", rng.uniform(FAST, SLOW), [f"c{index - 1}"] if index > 1 else [])
    return shape


def fanout(seed: int, width: int = 12) -> Shape:
    rng = random.Random(seed)
    shape = Shape(f"fanout{width}", f"{width} independent tasks and a join, 50-300 ms")
    for index in range(1, width + 1):
        shape.add(f"f{index:02d}", rng.uniform(FAST, SLOW), [])
    shape.add("join", rng.uniform(FAST, SLOW), list(shape.names))
    return shape


def random_dag(seed: int, layers: int = 6, width: int = 5) -> Shape:
    rng = random.Random(seed)
    shape = Shape(
        f"dag{layers * width}",
        f"{layers * width} tasks in {layers} layers, random dependencies, 50-300 ms",
    )
    done: list[list[str]] = []
    for layer in range(layers):
        current = []
        for _ in range(width):
            name = f"t{len(shape.names) + 1:02d}"
            deps: set[str] = set()
            if layer:
                deps.add(rng.choice(done[-1]))
                earlier = [n for names in done for n in names if n not in deps]
                deps.update(rng.sample(earlier, rng.randint(0, 2)))
            shape.add(name, rng.uniform(FAST, SLOW), list(deps))
            current.append(name)
        done.append(current)
    return shape


def throttled(length: int = 6, sides: int = 2) -> Shape:
    shape = Shape(
        f"throttled{length + sides}",
        f"{sides} side tasks and a chain of {length} joining them, "
        f"{THROTTLED_STEP * 1000:.0f} ms each; 429 (Retry-After {RETRY_AFTER:g} s) "
        f"above {BUSY_LIMIT} in flight",
        busy_limit=BUSY_LIMIT,
    )
    side_names = [f"s{index}" for index in range(1, sides + 1)]
    for name in side_names:
        shape.add(name, THROTTLED_STEP, [])
    for index in range(1, length + 1):
        deps = [f"c{index - 1}"] if index > 1 else []
        shape.add(f"c{index}", THROTTLED_STEP, deps + (side_names if index == length else []))
    return shape


def build_crew(shape: Shape, base_url: str, process: Any, store: Path) -> Crew:
    agent = Agent(role=ROLE, goal=GOAL, llm=OpenAIChat(MODEL, base_url=base_url, api_key="bench"))
    tasks: dict[str, Task] = {}
    for name in shape.names:
        context = [tasks[dep] for dep in shape.deps[name]]
        tasks[name] = Task(shape.description(name), name=name, context=context)
    return Crew(tasks=list(tasks.values()), agents=[agent], process=process, store=str(store))


async def timed(crew: Crew) -> tuple[float, CrewResult, float]:
    """Seconds one kickoff takes, its result (every task produced an output), and its lead-in:
    seconds from the call to its first task's start (opening the store, reading the history,
    choosing)."""
    called = datetime.now(UTC)
    started = time.perf_counter()
    result = await crew.kickoff()
    elapsed = time.perf_counter() - started
    assert len(result.outputs) == len(crew.tasks)
    first = min(record.start for record in result.timeline if record.start is not None)
    return elapsed, result, (first - called).total_seconds()


async def bare_run(client: AsyncOpenAI, shape: Shape, order: str) -> float:
    """The floor: the crew's calls in ``order`` ("sequential": one after another; "parallel":
    each as soon as its dependencies' answers are in), with the messages crewflow sends."""
    answers: dict[str, str] = {}

    async def call(name: str) -> None:
        context = [(dep, answers[dep]) for dep in shape.deps[name]]
        response = await client.chat.completions.create(
            model=MODEL,
            messages=[
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": user_message(shape.description(name), context)},
            ],
        )
        answers[name] = response.choices[0].message.content or ""

    done = {name: asyncio.Event() for name in shape.names}

    async def when_ready(name: str) -> None:
        for dep in shape.deps[name]:
            await done[dep].wait()
        await call(name)
        done[name].set()

    started = time.perf_counter()
    if order == "sequential":
        for name in shape.names:
            await call(name)
    else:
        await asyncio.gather(*(when_ready(name) for name in shape.names))
    return time.perf_counter() - started


@dataclass
class Run:
    """One measured kickoff (or floor run) and what the server saw of it."""

    seconds: float
    rejected: int
    lead_in: float | None = None  # from the kickoff call to the first task's start
    choice: Any = None  # adaptive's `result.process_choice`


@dataclass
class Outcome:
    """Everything measured on one shape."""

    shape: Shape
    direct: dict[str, list[Run]]
    floor: list[Run]
    adaptive: list[Run]
    first_kickoff: float | None = None

    def direct_median(self, process: str) -> float:
        return median([run.seconds for run in self.direct[process]])

    @property
    def best_process(self) -> str:
        return min(CANDIDATES, key=self.direct_median)

    @property
    def best(self) -> float:
        return self.direct_median(self.best_process)

    def constant_total(self, process: str) -> float:
        """A constant policy's total over as many runs as adaptive made."""
        mean = statistics.fmean(run.seconds for run in self.direct[process])
        return mean * len(self.adaptive)

    @property
    def adaptive_total(self) -> float:
        return sum(run.seconds for run in self.adaptive)

    @property
    def late(self) -> list[float]:
        return [run.seconds / self.best for run in self.adaptive[-LATE:]]

    @property
    def late_median(self) -> float:
        return median([run.seconds for run in self.adaptive[-LATE:]])

    @property
    def goal_met(self) -> bool:
        return median(self.late) <= LATE_MEDIAN_GOAL and max(self.late) <= LATE_MAX_GOAL


async def _measured(server: CountingServer, runner: Any) -> tuple[Run, Any]:
    server.reset()
    seconds, result, lead_in = await runner()
    rejected = sum(1 for status in server.stats().statuses if status == 429)
    return Run(seconds, rejected, lead_in), result


async def measure(
    shape: Shape, server: CountingServer, folder: Path, args: argparse.Namespace, *, first: bool
) -> Outcome:
    """Direct runs, floor runs and adaptive runs of ``shape``, in that order."""
    from openai import AsyncOpenAI

    url = server.base_url
    outcome = Outcome(shape, {process: [] for process in CANDIDATES}, [], [])
    async with AsyncOpenAI(base_url=url, api_key="bench", max_retries=2) as client:
        if first:
            await bare_run(client, shape, "sequential")  # imports openai, opens its connection
            warmup = build_crew(shape, url, Adaptive(seed=args.adaptive_seed), folder / "first.db")
            outcome.first_kickoff, _, _ = await timed(warmup)
        direct = {
            process: build_crew(shape, url, process, folder / "direct.db") for process in CANDIDATES
        }
        for _ in range(args.direct):
            for process, crew in direct.items():
                run, _ = await _measured(server, lambda crew=crew: timed(crew))
                outcome.direct[process].append(run)
        order = outcome.best_process
        for _ in range(args.direct):
            run, _ = await _measured(server, lambda: _floor(client, shape, order))
            outcome.floor.append(run)
        adaptive = build_crew(
            shape, url, Adaptive(seed=args.adaptive_seed), folder / f"adaptive-{shape.name}.db"
        )
        for _ in range(args.runs):
            run, result = await _measured(server, lambda: timed(adaptive))
            assert result.process == "adaptive", result.process
            run.choice = result.process_choice
            outcome.adaptive.append(run)
    return outcome


async def _floor(client: AsyncOpenAI, shape: Shape, order: str) -> tuple[float, None, None]:
    return await bare_run(client, shape, order), None, None


def _predictions(choice: Any) -> str:
    parts = []
    for prediction in choice.predictions:
        seconds = "?" if prediction.seconds is None else f"{prediction.seconds:.2f}"
        hopeless = ", hopeless" if getattr(prediction, "hopeless", False) else ""
        parts.append(f"{prediction.process[:3]} {seconds} ({prediction.basis}{hopeless})")
    return ", ".join(parts)


def _ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds * 1000:.1f}"


def _median_lead_in(runs: list[Run]) -> float | None:
    values = [run.lead_in for run in runs if run.lead_in is not None]
    return median(values) if values else None


def runs_table(outcomes: list[Outcome]) -> str:
    rows = []
    for outcome in outcomes:
        for index, run in enumerate(outcome.adaptive, start=1):
            choice = run.choice
            rows.append(
                [
                    outcome.shape.name,
                    index,
                    choice.process,
                    "yes" if choice.explored else "",
                    run.seconds,
                    run.seconds / outcome.best,
                    f"{run.seconds / outcome.best - 1:+.3f}",
                    run.rejected,
                    _ms(run.lead_in),
                    _predictions(choice),
                    choice.reason,
                ]
            )
    return table(
        "adaptive: each run on a fresh store, its choice and its time against best",
        [
            "shape",
            "run",
            "choice",
            "explored",
            "seconds",
            "x best",
            "regret",
            "429s",
            "lead-in ms",
            "predictions (s)",
            "reason",
        ],
        rows,
    )


def direct_table(outcomes: list[Outcome], repeats: int) -> str:
    rows = []
    for outcome in outcomes:
        shape, best = outcome.shape, outcome.best_process
        bound, kind = shape.bound(best)
        rejected = "/".join(
            str(sum(run.rejected for run in outcome.direct[process])) for process in CANDIDATES
        )
        rows.append(
            [
                shape.name,
                len(shape.names),
                outcome.direct_median("sequential"),
                outcome.direct_median("parallel"),
                best,
                f"{bound:.3f} ({kind})",
                median([run.seconds for run in outcome.floor]),
                rejected,
                "/".join(_ms(_median_lead_in(outcome.direct[process])) for process in CANDIDATES),
            ]
        )
    return table(
        f"direct runs: median of {repeats} of each process (own store), and the floor in the "
        f"best order (median of {repeats})",
        [
            "shape",
            "tasks",
            "sequential s",
            "parallel s",
            "best",
            "bound s (best's)",
            "floor s",
            "429s seq/par",
            "lead-in ms seq/par",
        ],
        rows,
    )


def summary_table(outcomes: list[Outcome], constant: str) -> str:
    rows = []
    for outcome in outcomes:
        late = outcome.late
        bound, _ = outcome.shape.bound(outcome.best_process)
        floor = median([run.seconds for run in outcome.floor])
        regrets = [run.seconds / outcome.best - 1 for run in outcome.adaptive]
        rows.append(
            [
                outcome.shape.name,
                outcome.late_median,
                median(late),
                max(late),
                outcome.late_median / bound,
                outcome.late_median / floor,
                statistics.fmean(regrets),
                outcome.constant_total("sequential"),
                outcome.constant_total("parallel"),
                outcome.adaptive_total,
                outcome.adaptive_total / outcome.constant_total(constant),
                "met" if outcome.goal_met else "MISSED",
            ]
        )
    runs = len(outcomes[0].adaptive)
    return table(
        f"adaptive: runs {runs - LATE + 1}-{runs} (median), and totals over {runs} runs "
        f"(a constant policy's: {runs} x the mean of its direct runs)",
        [
            "shape",
            "late s",
            "x best",
            "max x best",
            "x bound",
            "x floor",
            "mean regret",
            "always seq s",
            "always par s",
            "adaptive s",
            f"x always {constant[:3]}",
            f"goal (<= {LATE_MEDIAN_GOAL}x, max <= {LATE_MAX_GOAL}x)",
        ],
        rows,
    )


def report(outcomes: list[Outcome], args: argparse.Namespace) -> Figures:
    """Print the tables and the goals; return the figures."""
    constant = min(CANDIDATES, key=lambda p: sum(o.constant_total(p) for o in outcomes))
    print(direct_table(outcomes, args.direct))
    print()
    print(runs_table(outcomes))
    print()
    print(summary_table(outcomes, constant))
    missed = [o.shape.name for o in outcomes if not o.goal_met]
    print(
        f"goal: runs {args.runs - LATE + 1}-{args.runs} median <= {LATE_MEDIAN_GOAL}x best and "
        f"none above {LATE_MAX_GOAL}x, on every shape: "
        + ("met" if not missed else f"MISSED on {', '.join(missed)}")
    )
    beaten = [o.shape.name for o in outcomes if o.adaptive_total < o.constant_total(constant)]
    print(
        f"goal: adaptive's {args.runs}-run total below the best constant policy's (always "
        f"{constant}, over all shapes together) on at least one shape: "
        + (f"met ({', '.join(beaten)})" if beaten else "MISSED")
    )
    first = outcomes[0]
    if first.first_kickoff is not None:
        print(
            f"first kickoff in this fresh process ({first.shape.name}, adaptive, empty store; "
            f"openai already imported): {first.first_kickoff:.3f} s; run 1 of the measured "
            f"adaptive runs (empty store too) {first.adaptive[0].seconds:.3f} s"
        )
    figures = Figures("adaptive")
    for outcome in outcomes:
        case = outcome.shape.name
        late = outcome.late
        bound, _ = outcome.shape.bound(outcome.best_process)
        floor = median([run.seconds for run in outcome.floor])
        # The mean ratio rather than the mean regret: a figure near 0 would make compare.py's
        # relative changes meaningless.
        ratios = [run.seconds / outcome.best for run in outcome.adaptive]
        figures.add(f"{case}.late_ratio_to_best", median(late))
        figures.add(f"{case}.late_max_ratio_to_best", max(late))
        figures.add(f"{case}.late_runs_over_1_25x_best", sum(1 for r in late if r > LATE_MAX_GOAL))
        figures.add(f"{case}.mean_ratio_to_best", statistics.fmean(ratios))
        lead_in = _median_lead_in(outcome.adaptive[-LATE:])
        if lead_in is not None:
            figures.add(f"{case}.late_lead_in_ms", lead_in * 1000)
        figures.add(f"{case}.ratio_to_bound", outcome.late_median / bound)
        figures.add(f"{case}.ratio_to_floor", outcome.late_median / floor)
        figures.add(
            f"{case}.total_ratio_to_constant",
            outcome.adaptive_total / outcome.constant_total(constant),
        )
        if outcome.first_kickoff is not None:
            figures.add(f"{case}.first_kickoff_s", outcome.first_kickoff)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7, help="durations and the random DAG")
    parser.add_argument("--adaptive-seed", type=int, default=0, help="Adaptive(seed=...)")
    parser.add_argument("--direct", type=int, default=3, help="direct and floor runs per shape")
    parser.add_argument("--runs", type=int, default=8, help="adaptive kickoffs per shape")
    parser.add_argument("--only", nargs="+", metavar="SHAPE", help="run only these shapes")
    add_json_option(parser)
    args = parser.parse_args()
    if args.runs < LATE:
        parser.error(f"--runs must be at least {LATE}")
    shapes = [chain(args.seed), fanout(args.seed), random_dag(args.seed), throttled()]
    if args.only:
        unknown = set(args.only) - {shape.name for shape in shapes}
        if unknown:
            parser.error(f"unknown shapes {sorted(unknown)}; shapes: {[s.name for s in shapes]}")
        shapes = [shape for shape in shapes if shape.name in args.only]
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="crewflow-bench-adaptive-") as folder:
        for index, shape in enumerate(shapes):
            with counting_server(
                0.0, shape.durations, busy_limit=shape.busy_limit, retry_after=RETRY_AFTER
            ) as server:
                outcome = asyncio.run(measure(shape, server, Path(folder), args, first=not index))
            outcomes.append(outcome)
    for shape in shapes:
        print(
            f"{shape.name}: {shape.summary} (work {shape.work:.3f} s, critical path "
            f"{shape.critical_path:.3f} s)"
        )
    print()
    report(outcomes, args).write(args.json)


if __name__ == "__main__":
    main()
