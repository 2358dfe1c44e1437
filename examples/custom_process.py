"""Write your own process: a planner that asks for steps, runs them side by side, and answers.

What it shows: a process plug-in written against the public `crewflow.processes.ProcessContext`
alone, getting every runtime feature for free.

- ``ctx.ask("plan", ...)`` asks a planner agent for a structured plan: a recorded, checkpointed
  internal step. ``ctx.check_plan`` checks the steps, ``ctx.add_tasks`` adds them to the run as
  internal tasks (``step.1``, ``step.2``, ... each after the crew's ``brief``), and
  ``ctx.run_ready()`` runs them as their dependencies allow, within ``max_concurrency`` and a
  ``Limit``. ``ctx.ask("answer", ...)`` writes the final answer, which ``final_output`` makes
  ``result.output``.
- The runtime retries a provider's 503 (``LLMCallRetrying``), and every event (``TaskAdded``
  for each step as the plan arrives) reaches ``on_event``.
- Records and resume: a first run fails when one step's provider is down; ``crew.resume(run_id)``
  replays the process: the plan and the finished steps come back from the store, only the rest
  runs. A run killed at any moment (``kill -9``) resumes the same way, with
  ``crewflow resume RUN_ID``.

As a plug-in, so that ``Crew(process="planner")`` finds it by name and ``crewflow processes``
lists it, a package registers the class in its pyproject.toml:

    [project.entry-points."crewflow.processes"]
    planner = "my_package.processes:Planner"

A process named by a string is built with no arguments, so ``Planner`` would then need default
agents; configured as here, it is passed as an object (``process=Planner(planner, worker)``).

Offline, no API key, about a second:

    python examples/custom_process.py
    crewflow run examples/custom_process.py    # the module's `crew`, on the offline model
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, Field

from crewflow import Agent, Crew, Limit, Limits, RetryPolicy, Task
from crewflow import events as ev
from crewflow.exceptions import InvalidPlan, TaskFailed
from crewflow.processes import Process, ProcessContext
from crewflow.store import SQLiteStore
from crewflow.testing import Error, FunctionLLM

if TYPE_CHECKING:
    from crewflow.llm._types import LLMRequest
    from crewflow.task import TaskOutput


class Plan(BaseModel):
    """What the planner answers: the steps of the work, one instruction each."""

    steps: list[str] = Field(min_length=1, max_length=6)


class Planner(Process):
    """Plan, run the plan's steps as they become ready, then answer from their outputs."""

    name: ClassVar[str] = "planner"

    def __init__(self, planner: Agent, worker: Agent, *, max_plans: int = 2) -> None:
        self.planner = planner
        self.worker = worker
        self.max_plans = max_plans

    def config(self) -> dict[str, Any]:
        # Part of the crew's fingerprint: a run resumes only under the same planner.
        return {"planner": self.planner.role, "max_plans": self.max_plans}

    async def run(self, ctx: ProcessContext) -> None:
        brief = ctx.graph.deliverables[0]
        prompt = f"Plan the work for: {ctx.graph.task(brief).description}"
        for attempt in range(1, self.max_plans + 1):
            # Names depend only on what the run got back: a resumed run replays them exactly.
            plan = await ctx.ask(f"plan.{attempt}", self.planner, prompt, output_model=Plan)
            steps = [
                Task(text, name=f"step.{index}", agent=self.worker, context=[brief])
                for index, text in enumerate(plan.data.steps, start=1)
            ]
            problems = ctx.check_plan(steps)
            if not problems:
                break
            prompt += "\nThat plan had problems:\n" + "\n".join(p.describe() for p in problems)
        else:
            raise InvalidPlan("no valid plan", problems=problems, plan=steps)
        await ctx.add_tasks(steps)
        await ctx.run_ready()
        findings = "\n".join(f"- {ctx.outputs[step.name or ''].text}" for step in steps)
        await ctx.ask("answer", self.planner, f"Answer the brief from these findings:\n{findings}")

    def final_output(self, ctx: ProcessContext) -> TaskOutput | None:
        return ctx.outputs.get("answer")


def make_crew(planner: Agent, worker: Agent, **options: Any) -> Crew:
    brief = Task("Survey tidal power for {audience}", agent=worker, name="brief")
    return Crew(
        tasks=[brief],
        name="tidal-survey",
        process=Planner(planner, worker),
        max_concurrency=2,
        limits=Limits(workers=Limit(concurrency=2)),
        retry=RetryPolicy(max_attempts=3, initial=0.01, jitter=False),
        default_inputs={"audience": "a city council"},
        **options,
    )


# What `crewflow run examples/custom_process.py` runs: the same process on the offline model.
crew = make_crew(
    Agent(role="Planner", goal="Plan the work"),
    Agent(role="Researcher", goal="Find facts", group="workers"),
)


class Providers:
    """The planner's and the worker's providers, scripted: the worker answers one 503 for the
    costs step (the runtime retries it), then, while ``down`` names that step, a 400: it fails.
    """

    def __init__(self) -> None:
        self.down = "costs"
        self.calls: dict[str, int] = {}
        self.hiccup = True

    def planner(self, request: LLMRequest) -> Plan | str:
        kind = "plan" if request.output is not None else "answer"
        self.calls[kind] = self.calls.get(kind, 0) + 1
        if kind == "plan":
            return Plan(steps=["sites", "costs", "ecology"])
        return "Tidal power suits a few coasts; costs fall; ecology needs care."

    def worker(self, request: LLMRequest) -> str | Error:
        text = request.messages[1].content or ""
        step = text.split()[0]
        self.calls[step] = self.calls.get(step, 0) + 1
        if step == "costs" and self.hiccup:
            self.hiccup = False
            return Error(503, "busy, try again")
        if step == self.down:
            return Error(400, f"the {step} source is offline")
        return f"notes on {step}"


def show(event: ev.Event) -> None:
    if isinstance(event, ev.TaskAdded):
        print(f"  + {event.task} ({event.step}, {event.agent})")
    elif isinstance(event, ev.LLMCallRetrying):
        print(f"  ~ {event.task}: HTTP {event.status_code}, retrying")


async def main() -> None:
    with tempfile.TemporaryDirectory() as home:
        store = SQLiteStore(Path(home) / "runs.db")
        providers = Providers()
        planner = Agent(role="Planner", goal="Plan the work", llm=FunctionLLM(providers.planner))
        worker = Agent(
            role="Researcher", goal="Find facts", llm=FunctionLLM(providers.worker), group="workers"
        )
        survey = make_crew(planner, worker, store=store, on_event=show)
        inputs = {"audience": "a city council"}

        print("first run:")
        try:
            await survey.kickoff(inputs)
        except TaskFailed as failure:
            run_id = failure.run_id or ""
            print(f"failed at {failure.task!r}; finished: {sorted(failure.outputs)}")

        providers.down = ""
        print("resumed:")
        result = await survey.resume(run_id)
        print(f"restored {result.restored}")
        print(f"calls per step, both runs: {providers.calls}")
        print(f"answer: {result.text}")
        print(f"internal steps: {[output.task for output in result.internal]}")
        added = [task.name for task in await store.added_tasks(run_id)]
        print(f"recorded as added: {added}")
        await store.close()

    offline = await crew.kickoff({"audience": "a city council"})
    steps = len(offline.internal)
    print(f"offline model: {steps} internal steps, final output from {offline.output.task!r}")


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
