"""Write, critique and rewrite until the critic approves, with a guardrail on every draft.

What it shows: ``Loop([write, critique], until=..., max_rounds=3)`` and ``Task(guardrail=...)``.
Each round writes a draft and has it critiqued (``write#1``, ``critique#1``, ``write#2``, ...);
from round 2 on the writer gets the previous draft and its critique. The loop ends when the
critic's structured verdict approves, or after three rounds (``on_limit="accept"`` then takes
the last draft). ``write`` and ``critique`` end with the last round's outputs, so ``publish``
sees the approved draft. The guardrail rejects a draft that is empty or too long, and the
writer is asked again with the reason (a guardrail round, not a retry). Every round's decision
is recorded; a resumed run replays them.

Run it offline (no API key; a stand-in critic rejects the first draft and approves the next,
the offline model writes):

    python examples/review_loop.py
    python examples/review_loop.py --topic "heat pumps"

Run it with a real model (needs the provider's key, e.g. OPENAI_API_KEY):

    python examples/review_loop.py --model openai/gpt-4o-mini

The module-level ``crew`` also runs from the command line:

    crewflow run examples/review_loop.py --input topic="heat pumps"
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from crewflow import Agent, Crew, Loop, Task
from crewflow.exceptions import ConfigurationError, CrewRunError
from crewflow.testing import FunctionLLM

if TYPE_CHECKING:
    from collections.abc import Mapping

    from crewflow import TaskOutput
    from crewflow.llm import LLMRequest

MAX_WORDS = 400


class Verdict(BaseModel):
    """A critic's verdict on a draft."""

    approved: bool = Field(description="whether the draft can be published as it is")
    notes: str = Field(description="what to change, or why it is ready")


def short_enough(output: TaskOutput) -> bool | str:
    """The guardrail on every draft: something to read, and not too much of it."""
    words = len(output.text.split())
    if words == 0:
        return "the draft is empty: write the post"
    if words > MAX_WORDS:
        return f"the draft has {words} words: cut it to {MAX_WORDS} at most"
    return True


def approved(outputs: Mapping[str, TaskOutput]) -> bool:
    """The loop ends when the critic approves."""
    verdict = outputs["critique"].data
    return isinstance(verdict, Verdict) and verdict.approved


def strict_critic(request: LLMRequest) -> str:
    """Offline, the critic's stand-in: it rejects a first draft and approves a rewrite."""
    rewrite = "critique#1" in (request.messages[-1].content or "")
    verdict = (
        Verdict(approved=True, notes="Clear and complete: ready to publish.")
        if rewrite
        else Verdict(approved=False, notes="Open with the main point; add one concrete example.")
    )
    return verdict.model_dump_json()


writer = Agent(role="Writer", goal="Write short, clear posts", llm="offline")
critic = Agent(role="Critic", goal="Hold posts to a high standard", llm=FunctionLLM(strict_critic))
editor = Agent(role="Editor", goal="Publish posts", llm="offline")

write = Task(
    "Write a short blog post about {topic}",
    expected_output=f"At most {MAX_WORDS} words",
    name="write",
    agent=writer,
    context=[],
    guardrail=short_enough,
)
critique = Task(
    "Critique the post about {topic}: approve it, or say what to change",
    name="critique",
    agent=critic,
    context=[write],
    output_model=Verdict,
)
publish = Task(
    "Prepare the approved post about {topic} for publishing: a title and the post",
    name="publish",
    agent=editor,
    context=[write, critique],
)

crew = Crew(
    tasks=[Loop([write, critique], until=approved, max_rounds=3, on_limit="accept"), publish],
    process="sequential",
    name="review_loop",
    default_inputs={"topic": "tidal power"},
)


def main(argv: list[str] | None = None) -> int:
    """Run the crew; print each round's verdict, then the published post."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topic", default=crew.default_inputs["topic"])
    parser.add_argument("--model", help="a real model for every agent, e.g. openai/gpt-4o-mini")
    args = parser.parse_args(argv)
    try:
        result = crew.kickoff_sync(inputs={"topic": args.topic}, llm=args.model)
    except (ConfigurationError, CrewRunError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rounds = [output for output in result.internal if output.task.startswith("critique#")]
    for output in rounds:
        verdict = output.data
        mark = "approved" if verdict.approved else "rejected"
        print(f"{output.task}: {mark}: {verdict.notes}")
    print()
    print(result["publish"].text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
