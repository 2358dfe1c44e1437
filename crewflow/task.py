"""Tasks: what to do, for whom, with which context; and `TaskOutput`, what came of it.

A task's description and expected output may hold ``{placeholders}`` filled from the inputs given
to ``kickoff``, and ``{state.field}`` references filled from the crew's shared state (see
`crewflow.state`) as it is when the task starts. Only ``{identifier}`` and ``{state.identifier}``
are placeholders, so JSON examples in a description stay as they are; write ``{{name}}`` to keep a
literal ``{name}``.
"""

from __future__ import annotations

import enum
import inspect
import json
import re
import typing
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from crewflow._records import Compact
from crewflow._spec import Spec
from crewflow.agent import Agent
from crewflow.exceptions import ConfigurationError
from crewflow.llm._types import Usage
from crewflow.retry import RetryPolicy

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["OptionalContext", "Task", "TaskOutput", "function_name", "optional"]

# Groups: a literal ``{{name}}`` (or ``{{state.name}}``), an input ``{name}``, a state field
# ``{state.name}``.
_PLACEHOLDER = re.compile(
    r"\{\{((?:state\.)?[A-Za-z_]\w*)\}\}|\{([A-Za-z_]\w*)\}|\{state\.([A-Za-z_]\w*)\}"
)


class OptionalContext:
    """A context entry the task can do without: made by `optional`.

    Attributes:
        task: The task (or task name) whose output the task takes when it ran.
    """

    __slots__ = ("task",)

    def __init__(self, task: Task | str) -> None:
        if isinstance(task, OptionalContext):
            raise ConfigurationError("optional(optional(x)) says nothing more: write optional(x)")
        if not isinstance(task, (Task, str)):
            raise ConfigurationError(
                f"optional() takes a task or a task name, not {type(task).__name__}"
            )
        self.task = task

    def __repr__(self) -> str:
        return f"optional({self.task!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OptionalContext) and other.task == self.task

    def __hash__(self) -> int:
        return hash(("optional", self.task))


def optional(task: Task | str) -> OptionalContext:
    """Mark a context entry as optional: the task still runs when ``task`` was skipped (a
    condition that was false, a branch a router did not choose), without that output.

    A task that joins the branches of a router lists them as optional; a required entry that
    was skipped skips the task too. A task that *failed* is never optional: with
    ``on_failure="continue"``, what needs it is skipped.

    Example:
        ```python
        answer = Task("Answer the customer", context=[optional(billing), optional(tech)])
        ```
    """
    return OptionalContext(task)


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
        condition: Whether the task runs, decided when its dependencies have ended: a
            function (sync or async) of the outputs so far (a mapping by task name) and,
            if it takes a second argument, the crew's state. False skips the task, and the
            tasks that need it (unless they take it as `optional`). Recorded, and replayed on
            resume.
        router: Which of the tasks that list this one in their ``context`` run, chosen from
            its output: a function (sync or async) of the `TaskOutput` (and the state, if it
            takes a second argument) returning a task, a task name, a list of them, or
            ``None`` for none (the dependants not chosen are skipped); or a mapping from values
            of a field of the ``output_model`` (``router_field``) to tasks (the mapped tasks
            not chosen are skipped; dependants it does not name run as usual). Recorded, and
            replayed on resume.
        router_field: The ``output_model`` field a mapping ``router`` reads (default: the
            model's only field).
        map_over: Run the task once per item of a list an upstream task produced:
            ``"upstream"`` (its structured output, or its text as a JSON list),
            ``"upstream.field"`` (a field of its structured output, dotted for nested ones),
            or a function (sync or async) of the outputs so far (and the state) returning the
            list. The upstream task must be in ``context``. Each item is a task of its own,
            ``name[0]``, ``name[1]``, ...; ``{item}`` in the description is the item (else
            the item is added below it). The task's output lists every item's result in item
            order (``data``: a list). An empty list runs nothing and gives an empty result.
        max_items: The most items a map runs; a longer list is cut to it (recorded, with a
            warning).
        max_concurrency: The most items of this map that run at once (they also take the
            crew's slots and limits). Under ``sequential`` items run one at a time.
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
    context: tuple[Task | str | OptionalContext, ...] | None = None
    name: str | None = None
    output_model: type[BaseModel] | None = None
    timeout: float | None = Field(default=None, gt=0)
    retry: RetryPolicy | None = None
    fallback_agent: Agent | None = None
    group: str | None = Field(default=None, min_length=1)
    priority: int = 0
    cache: bool | None = None
    condition: Callable[..., Any] | None = None
    router: Callable[..., Any] | dict[Any, Task | str] | None = None
    router_field: str | None = None
    # Guardrails (see `crewflow._runtime.guardrail`).
    guardrail: Callable[..., Any] | None = None
    guardrail_retries: int = Field(default=2, ge=0)
    # Maps (see `crewflow._runtime.mapping`).
    map_over: str | Callable[..., Any] | None = None
    max_items: int | None = Field(default=None, ge=0)
    max_concurrency: int | None = Field(default=None, ge=1)

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
        if isinstance(value, (str, Task, OptionalContext)):
            raise ValueError("context must be a list of tasks or task names, e.g. context=[facts]")
        return value

    @field_validator("condition")
    @classmethod
    def _check_condition(cls, value: Any) -> Any:
        if value is not None:
            takes_state(value, "condition", "(outputs) or (outputs, state)")
        return value

    @model_validator(mode="after")
    def _check_router(self) -> Task:
        router, field = self.router, self.router_field
        if router is None:
            if field is not None:
                raise ConfigurationError(
                    f"task {self!s:.60}: router_field={field!r} without a router; give "
                    "router={value: task, ...} too, or drop router_field"
                )
            return self
        if not isinstance(router, Mapping):
            takes_state(router, "router", "(output) or (output, state)")
            if field is not None:
                raise ConfigurationError(
                    f"task {self!s:.60}: router_field is for a mapping router; a function "
                    "router reads the output itself: drop router_field"
                )
            return self
        _check_mapping_router(self, router, field)
        return self

    @property
    def optional_context(self) -> frozenset[str]:
        """The ids (tasks) and names (strings) of the context entries marked `optional`."""
        return frozenset(
            ref.task if isinstance(ref.task, str) else ref.task.id
            for ref in self.context or ()
            if isinstance(ref, OptionalContext)
        )

    def context_refs(self) -> Iterator[Task | str]:
        """The context's tasks and task names, `optional` or not, in order."""
        for ref in self.context or ():
            yield ref.task if isinstance(ref, OptionalContext) else ref

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
        name = function_name(value)
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

    @model_validator(mode="after")
    def _check_map(self) -> Task:
        over = self.map_over
        if over is None:
            for field in ("max_items", "max_concurrency"):
                if getattr(self, field) is not None:
                    raise ConfigurationError(
                        f"task {self!s:.60}: {field} is for a map; set map_over= too, or drop it"
                    )
            return self
        if isinstance(over, str):
            if not over or any(not part.strip() for part in over.split(".")):
                raise ConfigurationError(
                    f"task {self!s:.60}: map_over={over!r} names no list; write the upstream "
                    "task's name, with the field holding the list: map_over='docs.items'"
                )
        else:
            takes_state(over, "map_over", "(outputs) or (outputs, state)")
        if self.router is not None:
            raise ConfigurationError(
                f"task {self!s:.60}: a map cannot have a router (which item's output would it "
                "read?); route from a task after the map"
            )
        return self

    @property
    def placeholders(self) -> frozenset[str]:
        """The input names this task's templates need (``{state.field}`` references are not
        inputs: see `state_fields`; a map's ``{item}`` is its own)."""
        found = self._found(2)
        return found - {ITEM} if self.map_over is not None else found

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


def _check_mapping_router(task: Task, router: Mapping[Any, Any], field: str | None) -> None:
    """A mapping router must name branches for values of a field of the task's output model,
    and map each to a task; sets ``router_field`` when the model has one field."""
    if not router:
        raise ConfigurationError(
            f"task {task!s:.60}: router={{}} names no branch; map values of a field of "
            "the output model to the tasks to run, e.g. router={'billing': billing}"
        )
    model = task.output_model
    if model is None:
        raise ConfigurationError(
            f"task {task!s:.60}: a mapping router reads a field of the task's structured "
            "output: set output_model= (and router_field= unless the model has one field), "
            "or make the router a function of the output"
        )
    fields = model.model_fields
    if field is None:
        if len(fields) != 1:
            raise ConfigurationError(
                f"task {task!s:.60}: which field of {model.__name__} does the router "
                f"read? set router_field= to one of {', '.join(fields)}"
            )
        field = next(iter(fields))
        object.__setattr__(task, "router_field", field)
    elif field not in fields:
        raise ConfigurationError(
            f"task {task!s:.60}: router_field={field!r} is not a field of "
            f"{model.__name__}; its fields: {', '.join(fields)}"
        )
    allowed = _allowed_values(fields[field].annotation)
    if allowed is not None:
        unknown = [key for key in router if key not in allowed]
        if unknown:
            raise ConfigurationError(
                f"task {task!s:.60}: the router maps {', '.join(map(repr, unknown))}, "
                f"which {model.__name__}.{field} never takes; its values: "
                f"{', '.join(map(repr, allowed))}"
            )
    for target in router.values():
        if not isinstance(target, (Task, str)):
            raise ConfigurationError(
                f"task {task!s:.60}: the router maps to {target!r}; map each value to a "
                "task (or a task name) that lists this task in its context"
            )


def takes_state(function: Any, what: str, forms: str) -> bool:
    """Whether ``function`` (a condition, router or similar) takes the state as a second
    argument; checks that it can be called with one or two.

    Raises:
        ConfigurationError: Not callable, or it cannot take one or two positional arguments.
    """
    if not callable(function):
        raise ConfigurationError(f"{what} must be a function {forms}, not {function!r}")
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return False  # a builtin without a signature: given the one argument
    positional = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    varargs = any(p.kind == p.VAR_POSITIONAL for p in signature.parameters.values())
    required = [p for p in positional if p.default is p.empty]
    if len(required) > 2 or (not positional and not varargs):
        raise ConfigurationError(
            f"{what} {function_name(function)!r} takes {signature}; it must take {forms}"
        )
    return varargs or len(positional) >= 2


def _allowed_values(annotation: Any) -> tuple[Any, ...] | None:
    """The values a field of this type may take when they are few and known (a ``Literal``,
    an ``Enum``, ``bool``), else ``None``."""
    if annotation is bool:
        return (True, False)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return tuple(member for member in annotation) + tuple(m.value for m in annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    return None


def function_name(function: object) -> str:
    """A user's function's qualified name (``module.function``; a callable object's class), as
    errors and the crew's fingerprint name a guardrail, condition or router."""
    named = function if hasattr(function, "__qualname__") else type(function)
    module = getattr(named, "__module__", None)
    qualname: str = getattr(named, "__qualname__", repr(named))
    return f"{module}.{qualname}" if module else qualname


ITEM = "item"
"""The placeholder a map's task writes for its item: ``{item}``."""


def fill_only(text: str, values: Mapping[str, str]) -> str:
    """Replace each ``{name}`` of ``values`` in ``text``; every other placeholder, and every
    ``{{literal}}``, stays as it is (for a later `fill_template`)."""
    if "{" not in text:
        return text

    def substitute(match: re.Match[str]) -> str:
        name = match.group(2)
        return values[name] if name in values else match.group(0)

    return _PLACEHOLDER.sub(substitute, text)


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
