"""Tasks: what to do, for whom, with which context; and `TaskOutput`, what came of it.

A task's description and expected output may hold ``{placeholders}`` filled from the inputs given
to ``kickoff``. Only ``{identifier}`` is a placeholder, so JSON examples in a description stay as
they are; write ``{{name}}`` to keep a literal ``{name}``.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from crewflow._records import Compact
from crewflow._spec import Spec
from crewflow.agent import Agent
from crewflow.llm._types import Usage
from crewflow.retry import RetryPolicy

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["Task", "TaskOutput", "guardrail_name"]

_PLACEHOLDER = re.compile(r"\{\{([A-Za-z_]\w*)\}\}|\{([A-Za-z_]\w*)\}")


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
        guardrail: Checks each output before it is accepted: a function (sync or async) of the
            `TaskOutput` that returns ``True`` or ``None`` to accept it, or a ``str`` reason
            (or ``False``) to reject it. A rejected output is asked for again, with the reason
            (see the guardrails guide).
        guardrail_retries: How many times a rejected output is asked for again before the task
            fails with `OutputValidationError` (default 2).
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
    # Guardrails (see `crewflow._runtime.guardrail`).
    guardrail: Callable[..., Any] | None = None
    guardrail_retries: int = Field(default=2, ge=0)

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

    @field_validator("guardrail", mode="before")
    @classmethod
    def _check_guardrail(cls, value: Any) -> Any:
        if value is None:
            return None
        if not callable(value):
            raise ValueError(
                f"a guardrail must be a function of the TaskOutput, not {type(value).__name__}: "
                "write guardrail=check with def check(output: TaskOutput) -> bool | str | None"
            )
        name = guardrail_name(value)
        try:
            signature = inspect.signature(value)
        except (TypeError, ValueError):  # a builtin without a signature: taken on trust
            return value
        try:
            signature.bind(None)
        except TypeError:
            raise ValueError(
                f"guardrail {name!r} must take one argument, the TaskOutput to check "
                f"(its signature is {name.rpartition('.')[2]}{signature}): write it as "
                "def check(output: TaskOutput) -> bool | str | None"
            ) from None
        return value

    @property
    def placeholders(self) -> frozenset[str]:
        """The input names this task's templates need."""
        found = set()
        for text in (self.description, self.expected_output):
            for match in _PLACEHOLDER.finditer(text):
                if match.group(2):
                    found.add(match.group(2))
        return frozenset(found)

    def render(self, inputs: Mapping[str, Any]) -> tuple[str, str]:
        """The description and expected output with placeholders filled from ``inputs``.

        Raises:
            KeyError: A placeholder has no input (the crew checks this at kickoff).
        """
        return fill_template(self.description, inputs), fill_template(self.expected_output, inputs)

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


def guardrail_name(guardrail: Callable[..., Any]) -> str:
    """A guardrail's qualified name (``module.function``; a callable object's class), as errors
    and the crew's fingerprint give it."""
    named = guardrail if hasattr(guardrail, "__qualname__") else type(guardrail)
    module = getattr(named, "__module__", None)
    qualname: str = getattr(named, "__qualname__", repr(named))
    return f"{module}.{qualname}" if module else qualname


def literal_template(text: str) -> str:
    """``text`` as a template that renders to itself: each ``{name}`` becomes ``{{name}}``.

    For text a model wrote (a manager's instructions) that goes into a task's description:
    its braces must never be taken for placeholders.

    Example:
        >>> fill_template(literal_template("use {topic} and {{x}}"), {"topic": "t"})
        'use {topic} and {{x}}'
    """
    return _PLACEHOLDER.sub(lambda match: "{" + match.group(0) + "}", text)


def fill_template(text: str, inputs: Mapping[str, Any]) -> str:
    """Replace each ``{name}`` in ``text`` with ``inputs[name]`` (``{{name}}`` stays ``{name}``).

    Strings are inserted as they are, other values as JSON.
    """
    if "{" not in text:
        return text

    def substitute(match: re.Match[str]) -> str:
        literal, name = match.groups()
        if literal:
            return "{" + literal + "}"
        value = inputs[name]
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    return _PLACEHOLDER.sub(substitute, text)


def _shorten(text: str, width: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"
