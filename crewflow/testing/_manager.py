"""`ScriptedManager`: the LLM of a hierarchical crew's manager, scripted for tests."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from crewflow._jsonschema import example_for_schema
from crewflow.llm._base import LLM
from crewflow.testing._doubles import _respond

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from crewflow.llm._types import LLMRequest, LLMResponse

__all__ = ["VALID_PLAN", "ScriptedManager", "redo"]

VALID_PLAN = "valid plan"
"""A `ScriptedManager` plan item: a plan built from the crew's plan schema (as the offline
model would answer), so always valid."""


def redo(tasks: Mapping[str, str]) -> dict[str, Any]:
    """A review item that asks to redo ``tasks`` (each crew task's name with its feedback).

    Example:
        ```python
        ScriptedManager(reviews=[redo({"analysis": "cite the sources"}), "accept"])
        ```
    """
    return {
        "accept": False,
        "redo": [{"task": task, "feedback": feedback} for task, feedback in tasks.items()],
    }


class ScriptedManager(LLM):
    """The LLM of a hierarchical crew's manager, scripted: its plans, its reviews and its final
    answer, each from its own list (the last item of a list answers every later request).

    Requests are told apart by what they ask for: a ``Plan`` (plan and re-plan), a ``Review``,
    or text (the final answer). Every request is recorded, by kind.

    Example:
        ```python
        manager = Agent(role="Manager", goal="Lead", llm=ScriptedManager(
            plans=[{"research": [{"worker": "Nobody", "instructions": "x"}]}, VALID_PLAN],
            reviews=[redo({"research": "add sources"}), "accept"],
        ))
        ```

    Args:
        plans: Plan answers: `VALID_PLAN`, a mapping or a pydantic model (sent as its JSON),
            or any reply `crewflow.testing.ScriptedLLM` takes (e.g. an `Error`). A plan that does
            not fit the crew makes the process ask again, listing its problems; one that never
            fits ends the run with `crewflow.exceptions.InvalidPlan`.
        reviews: Review answers: ``"accept"``, `redo` (...), a mapping or a model.
        answer: The final answer's text.
    """

    model = "scripted-manager"

    def __init__(
        self,
        *,
        plans: Sequence[Any] = (VALID_PLAN,),
        reviews: Sequence[Any] = ("accept",),
        answer: str = "The final answer, from the manager.",
    ) -> None:
        if not plans or not reviews:
            raise ValueError("give at least one plan and one review")
        self._plans = list(plans)
        self._reviews = list(reviews)
        self._answer = answer
        self.requests: list[LLMRequest] = []
        self.asked: dict[str, list[LLMRequest]] = {"plan": [], "review": [], "answer": []}

    @property
    def supports_output_schema(self) -> bool:
        """The manager is asked for plans and reviews as native structured output."""
        return True

    async def complete(self, request: LLMRequest) -> LLMResponse:
        """Answer the next plan, review or final answer."""
        self.requests.append(request)
        output = request.output
        kind = "answer" if output is None else "plan" if output.name == "Plan" else "review"
        asked = self.asked[kind]
        asked.append(request)
        item: Any
        if kind == "answer":
            item = self._answer
        else:
            script = self._plans if kind == "plan" else self._reviews
            item = script[min(len(asked), len(script)) - 1]
            if item == VALID_PLAN and output is not None:
                item = example_for_schema(output.schema, seed="scripted manager")
            elif item == "accept":
                item = {"accept": True, "redo": []}
            elif isinstance(item, BaseModel):
                item = json.loads(item.model_dump_json())
        return await _respond(self.model, request, item, len(self.requests) - 1)

    def __repr__(self) -> str:
        return f"ScriptedManager(plans={len(self._plans)}, reviews={len(self._reviews)})"
