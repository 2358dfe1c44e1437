"""Tasks: what to do, for whom, with which context; and `TaskOutput`, what came of it.

A task's description and expected output may hold ``{placeholders}`` filled from the inputs given
to ``kickoff``, and ``{state.field}`` references filled from the crew's shared state (see
`crewflow.state`) as it is when the task starts. Only ``{identifier}`` and ``{state.identifier}``
are placeholders, so JSON examples in a description stay as they are; write ``{{name}}`` to keep a
literal ``{name}``.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from crewflow._records import Compact
from crewflow._spec import Spec
from crewflow.agent import Agent
from crewflow.llm._types import Usage
from crewflow.retry import RetryPolicy

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["Task", "TaskOutput"]

# Groups: a literal ``{{name}}`` (or ``{{state.name}}``), an input ``{name}``, a state field
# ``{state.name}``.
_PLACEHOLDER = re.compile(
    r"\{\{((?:state\.)?[A-Za-z_]\w*)\}\}|\{([A-Za-z_]\w*)\}|\{state\.([A-Za-z_]\w*)\}"
)


class Task(Spec):
    """One piece of work for an agent.

    Example:
        ```python
        facts = Task("Collect facts about {topic}", expected_output="5 bullets", name="facts")
        draft = Task("Write a post about {topic}", context=[facts], output_model=Post)
        ```

    Args:
        description: What to do. ``{placeholders}`` are filled from kickoff inputs.
        expected_output: What a good answer looks like (also templated).
        agent: Who does it. Optional when the crew has exactly one agent.
        context: Tasks (or task names) whose outputs this task needs; they become dependencies.
            ``None`` (the default) means "not declared": in a sequential crew the task then
            receives the previous task's output. ``[]`` means explicitly no context.
        name: How results, logs and the CLI refer to it; defaults to ``task_<position>``.
        output_model: A pydantic model the answer must match; the parsed object is
            `TaskOutput.data`.
        timeout: Seconds one attempt may take before it is cancelled (``None``: no limit).
        retry: This task's retry policy (default: the crew's).
        fallback_agent: Takes over when the agent's attempts are used up (e.g. another model).
        group: A limit group for this task's LLM calls (see `crewflow.Limits`).
        priority: Among ready tasks competing for slots, higher runs first (default 0; the
            parallel process then prefers the longest remaining path).
        cache: Reuse an LLM reply when the model, messages, tools, output schema and sampling
            settings are identical to an earlier call's (``None``: the crew's ``cache``).
    """

    description: str = Field(min_length=1)
    expected_output: str = ""
    agent: Agent | None = None
    context: tuple[Task | str, ...] | None = None
    name: str | None = None
    output_model: type[BaseModel] | None = None
    timeout: float | None = Field(default=None, gt=0)
    retry: RetryPolicy | None = None
    fallback_agent: Agent | None = None
    group: str | None = Field(default=None, min_length=1)
    priority: int = 0
    cache: bool | None = None

    def __init__(self, description: str | None = None, /, **data: Any) -> None:
        if description is not None:
            if "description" in data:
                raise TypeError("Task() got the description both by position and by keyword")
            data["description"] = description
        super().__init__(**data)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or value != value.strip()):
            raise ValueError("a task name must be non-empty, without surrounding blanks")
        return value

    @field_validator("context", mode="before")
    @classmethod
    def _check_context(cls, value: Any) -> Any:
        if isinstance(value, (str, Task)):
            raise ValueError("context must be a list of tasks or task names, e.g. context=[facts]")
        return value

    @property
    def placeholders(self) -> frozenset[str]:
        """The input names this task's templates need (``{state.field}`` references are not
        inputs: see `state_fields`)."""
        return self._found(2)

    @property
    def state_fields(self) -> frozenset[str]:
        """The state fields this task's templates read (``{state.field}``)."""
        return self._found(3)

    def _found(self, group: int) -> frozenset[str]:
        found = set()
        for text in (self.description, self.expected_output):
            if "{" in text:
                for match in _PLACEHOLDER.finditer(text):
                    if match.group(group):
                        found.add(match.group(group))
        return frozenset(found)

    def render(self, inputs: Mapping[str, Any], state: BaseModel | None = None) -> tuple[str, str]:
        """The description and expected output with placeholders filled from ``inputs``, and
        ``{state.field}`` references from ``state``.

        Raises:
            KeyError: A placeholder has no input (the crew checks this at kickoff), or a state
                reference no state field (checked when the crew is built).
        """
        return (
            fill_template(self.description, inputs, state),
            fill_template(self.expected_output, inputs, state),
        )

    def __repr__(self) -> str:
        label = self.name or _shorten(self.description, 40)
        return f"Task({label!r})"

    def __str__(self) -> str:
        return self.name or _shorten(self.description, 60)


class TaskOutput(Compact):
    """What one task produced.

    Attributes:
        task: The task's name.
        agent: The role of the agent that did it.
        text: The final answer as text (JSON text when the task has an ``output_model``).
        data: The parsed `output_model` instance, or ``None``.
        usage: Requests and tokens this task spent (all attempts).
        model: The model string that answered.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, defer_build=True)

    task: str
    agent: str
    text: str
    data: Any = None
    usage: Usage = Field(default_factory=Usage)
    model: str = ""

    def __str__(self) -> str:
        return self.text


def literal_template(text: str) -> str:
    """``text`` as a template that renders to itself: each ``{name}`` becomes ``{{name}}``.

    For text a model wrote (a manager's instructions) that goes into a task's description:
    its braces must never be taken for placeholders.

    Example:
        >>> fill_template(literal_template("use {topic} and {{x}}"), {"topic": "t"})
        'use {topic} and {{x}}'
    """
    return _PLACEHOLDER.sub(lambda match: "{" + match.group(0) + "}", text)


def fill_template(text: str, inputs: Mapping[str, Any], state: BaseModel | None = None) -> str:
    """Replace each ``{name}`` in ``text`` with ``inputs[name]``, and each ``{state.field}``
    with that field of ``state`` (``{{name}}`` stays ``{name}``).

    Strings are inserted as they are, other values as JSON.

    Raises:
        KeyError: An input is missing, or a state field (or the state itself).
    """
    if "{" not in text:
        return text

    def substitute(match: re.Match[str]) -> str:
        literal, name, field = match.groups()
        if name:
            value = inputs[name]
        elif literal:
            return "{" + literal + "}"
        else:
            value = _state_value(state, field)
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    return _PLACEHOLDER.sub(substitute, text)


def _state_value(state: BaseModel | None, field: str) -> Any:
    """State field ``field`` as a template shows it: a string as it is, else its JSON value."""
    if state is None or field not in type(state).model_fields:
        raise KeyError(f"state.{field}")
    value = getattr(state, field)
    if isinstance(value, str):
        return value
    return state.model_dump(mode="json", include={field})[field]


def _shorten(text: str, width: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"
