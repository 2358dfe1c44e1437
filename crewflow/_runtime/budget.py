"""The context budget: a task's prompt made to fit its agent's model, by cutting the task's
context outputs (docs/guides/context-budget.md).

The window is the agent's ``max_context_tokens``, else the model's in
`crewflow.llm._windows`, else there is none and nothing is cut. Of the window, 80 % is the
budget (tokens are estimated as characters / 4, so it errs by a fifth before a request is
refused), less the answer's maximum tokens when the model's client caps them, the tool
schemas, the output schema, the system message and the task's own prompt (its description,
expected output and the delimiters of its context); what is left is for the context outputs,
which `crewflow._prompts.cut_context` cuts to fit, largest first.

Only `TaskAttempts` uses it, once per agent of a task that has context outputs and a window.
A task whose model has no window pays one cached lookup (0.1 to 0.3 us); one whose request fits
pays 0.8 to 1.7 us (the lengths of the prompt, the system message and the schemas; measured on
a shared 2-core machine, quiet and loaded); neither writes to the store or awaits anything.
A 500-task chain on an instant model ran in the same time per task as before, within the
noise (84-87 us).
"""

from __future__ import annotations

import functools
import json
import sys
from typing import TYPE_CHECKING, Literal

from crewflow._prompts import cut_context, json_instruction, task_prompt
from crewflow._records import ContextCutRecord

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pydantic import BaseModel

    from crewflow.agent import Agent
    from crewflow.llm import LLM
    from crewflow.task import Task
    from crewflow.tools import Tool

__all__ = ["Fitted", "fit", "fit_budget"]

_SHARE = 0.8
"""The part of the window a request is planned to fill: the rest absorbs the estimate's error."""
_CHARS_PER_TOKEN = 4


def fit_budget(
    window: int,
    agent: Agent,
    llm: LLM,
    task: Task,
    prompt: str,
    description: str,
    expected: str,
    context: Sequence[tuple[str, str]],
) -> Fitted | None:
    """``prompt`` (made of ``description``, ``expected`` and ``context``) with its context
    outputs cut to fit ``agent``'s budget on ``llm``, or ``None`` when it fits as it is."""
    budget = (int(window * _SHARE) - _max_output(llm)) * _CHARS_PER_TOKEN
    used = len(agent.system_prompt) + len(prompt)
    if agent.tools:
        used += _tools_size(agent.tools)
    if task.output_model is not None:
        used += _schema_size(task.output_model)
    if used <= budget:
        return None
    room = budget - (used - sum(len(text) for _, text in context))
    return fit(description, expected, context, room, window, "budget")


class Fitted:
    """A prompt cut to fit: its text, how it was cut, and the characters its context outputs
    took."""

    __slots__ = ("cut", "prompt", "sent")

    def __init__(self, prompt: str, cut: ContextCutRecord, sent: int) -> None:
        self.prompt = prompt
        self.cut = cut
        self.sent = sent


def fit(
    description: str,
    expected: str,
    context: Sequence[tuple[str, str]],
    room: int,
    window: int | None,
    reason: Literal["budget", "refused"],
) -> Fitted | None:
    """The task's prompt with its context outputs cut to ``room`` characters, or ``None`` when
    they fit whole."""
    pairs, outputs = cut_context(context, room)
    if not outputs:
        return None
    record = ContextCutRecord(
        window=window,
        budget=max(0, room) // _CHARS_PER_TOKEN,
        reason=reason,
        outputs=outputs,
    )
    sent = sum(len(text) for _, text in pairs)
    return Fitted(task_prompt(description, expected, pairs), record, sent)


@functools.lru_cache(maxsize=256)
def _tools_size(tools: tuple[Tool, ...]) -> int:
    """The characters of the tools' schemas as sent (OpenAI's ``tools`` format)."""
    return len(json.dumps([tool.spec.to_openai() for tool in tools]))


@functools.lru_cache(maxsize=256)
def _schema_size(output_model: type[BaseModel]) -> int:
    """The characters of an output schema, as the JSON instruction that carries it when the
    provider cannot enforce it (about what a native schema costs too)."""
    return len(json_instruction(output_model.model_json_schema()))


def _max_output(llm: LLM) -> int:
    """The answer's maximum tokens when the client caps them (a `LiteLLM` given
    ``max_tokens=``); agents set no cap of their own, so usually 0."""
    # Not imported here: an import statement costs 2 us a task; a LiteLLM exists only once
    # its module is loaded.
    module = sys.modules.get("crewflow.llm.litellm")
    if module is not None and isinstance(llm, module.LiteLLM):
        for key in ("max_completion_tokens", "max_tokens"):
            value = llm.kwargs.get(key)
            if isinstance(value, int) and value > 0:
                return value
    return 0
