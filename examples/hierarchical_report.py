"""A hierarchical crew: a manager plans a report for a researcher, an analyst and a writer,
reviews their work, asks for one revision, and writes the final answer.

What it shows: ``process=Hierarchical(manager, max_review_rounds=2)``. The crew's three tasks
name no agent: the manager's plan splits each into steps for the crew's workers (by role), the
steps run on the shared dispatcher (``research.1``, ``analysis.1``, ``analysis.2``, ...), and
each crew task is delegated to its last step, whose output becomes the task's. The run is
watched through its events (``crew.start(...)`` and ``handle.events()``): the manager's steps
as they are asked, the plan's steps as they are added, each crew task as it is delegated, and
each step as it finishes. ``review.1`` sends the analysis back with feedback: its steps run
again (``analysis.1.r1``, ``analysis.2.r1``), and so do the report's, which need it; ``review.2``
accepts. Then the plan (``result.plan``), each review's outcome, and the manager's final answer
(``result.output``).

Offline by default (no API key, well under a second): the workers are catalogue agents on the
offline model; the manager is a stand-in that answers the plan and the reviews from a script
and writes its final answer with the offline model. Run it with:

    python examples/hierarchical_report.py
    python examples/hierarchical_report.py --topic "heat pumps"

Run it with a real model for every agent, the manager included (needs the provider's key, e.g.
OPENAI_API_KEY); the manager then makes its own plan and reviews, and may ask for revisions:

    python examples/hierarchical_report.py --model openai/gpt-4o-mini

The module-level ``crew`` also runs from the command line:

    crewflow run examples/hierarchical_report.py --input topic="heat pumps"
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

import anyio

from crewflow import Agent, Crew, Task
from crewflow import events as ev
from crewflow.exceptions import ConfigurationError, CrewRunError
from crewflow.llm import OfflineLLM
from crewflow.processes.hierarchical import Hierarchical, Plan, Review
from crewflow.testing import FunctionLLM

if TYPE_CHECKING:
    from crewflow import CrewResult
    from crewflow.llm._types import LLMRequest, LLMResponse

# What the stand-in manager plans: each crew task's steps, each for a worker, by role.
PLAN = Plan(
    {
        "research": [
            {"worker": "Researcher", "instructions": "Collect the key facts and recent figures."}
        ],
        "analysis": [
            {"worker": "Researcher", "instructions": "Gather the cost and output figures."},
            {"worker": "Analyst", "instructions": "Weigh the figures: strengths, risks, trends."},
        ],
        "report": [
            {"worker": "Writer", "instructions": "Draft the report from the analysis."},
            {"worker": "Writer", "instructions": "Tighten the draft into the final report."},
        ],
    }
)
REDO = Review(
    accept=False,
    redo=[{"task": "analysis", "feedback": "Quantify the risks; give a number for each."}],
)


async def stand_in_manager(request: LLMRequest) -> LLMResponse | Plan | Review:
    """The offline manager: the plan above; a first review that sends the analysis back, and
    acceptance once the results are revisions (built on the ``.r1`` steps); the final answer
    from the offline model."""
    if request.output is not None and request.output.name == "Plan":
        return PLAN
    if request.output is not None:
        revised = ".r1" in (request.messages[-1].content or "")
        return Review(accept=True) if revised else REDO
    return await OfflineLLM().complete(request)


researcher = Agent.from_yaml("researcher")
analyst = Agent.from_yaml("analyst")
writer = Agent.from_yaml("writer")
manager = Agent.from_yaml("manager", llm=FunctionLLM(stand_in_manager, model="offline stand-in"))

# No task names an agent: the manager's plan assigns every step.
research = Task(
    "Research {topic}: how it works, what it costs, where it is used.",
    expected_output="Six to ten factual bullet points with figures.",
    name="research",
    context=[],
)
analysis = Task(
    "Analyse the research on {topic} for a city council deciding whether to invest.",
    expected_output="Strengths, risks and trends, each with a number.",
    name="analysis",
    context=[research],
)
report = Task(
    "Write a one-page report on {topic} for the council.",
    expected_output="A title, a summary paragraph and three short sections.",
    name="report",
    context=[research, analysis],
)

crew = Crew(
    tasks=[research, analysis, report],
    agents=[researcher, analyst, writer],
    process=Hierarchical(manager, max_review_rounds=2),
    name="hierarchical_report",
    default_inputs={"topic": "tidal power"},
)


def show(event: ev.Event) -> None:
    """One line per step: added by the plan (or a redo), delegated, finished."""
    if isinstance(event, ev.TaskAdded) and event.step == "task":
        after = f" after {', '.join(event.depends_on)}" if event.depends_on else ""
        print(f"  + {event.task:<14} {event.agent}{after}")
    elif isinstance(event, ev.TaskAdded):
        print(f"  ? {event.task:<14} asked of {event.agent}")
    elif isinstance(event, ev.TaskDelegated):
        print(f"  → {event.task:<14} delivered by {event.to}")
    elif isinstance(event, ev.TaskFinished):
        print(f"  ✓ {event.task}")


async def watch(inputs: dict[str, Any], model: str | None) -> CrewResult:
    """Run the crew in the background and print its events until it ends."""
    async with crew.start(inputs, llm=model) as handle:
        async for event in handle.events():
            show(event)
        return await handle.result()


def print_result(result: CrewResult) -> None:
    """The plan, each review's outcome, and the final answer."""
    print(f"\nthe plan ({result.process}, result.plan):")
    plan = result.plan
    assert isinstance(plan, Plan)
    for task in plan.tasks:
        for number, step in enumerate(plan[task], start=1):
            print(f"  {f'{task}.{number}':<12} {step.worker:<11} {step.instructions}")
    print("\nreviews:")
    for output in result.internal:
        if output.task.startswith("review."):
            review = output.data
            assert isinstance(review, Review)
            redo = "; ".join(f"redo {r.task}: {r.feedback}" for r in review.redo)
            print(f"  {output.task}: {'accepted' if review.accept else redo}")
    print(f"\nfinal answer ({result.final_task}):\n{result.text}")


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the crew, print what the manager did."""
    parser = argparse.ArgumentParser(description="A manager, three workers, one report.")
    parser.add_argument("--topic", default="tidal power", help="what the report is about")
    parser.add_argument(
        "--model",
        default=None,
        help="a model string such as openai/gpt-4o-mini for every agent (default: offline)",
    )
    args = parser.parse_args(argv)
    print(f"steps of the crew {crew.name!r} as the manager adds them:")
    try:
        result = anyio.run(watch, {"topic": args.topic}, args.model)
    except ConfigurationError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except CrewRunError as exc:
        print(f"the run failed: {exc}", file=sys.stderr)
        return 1
    print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
