"""`Loop`: tasks run again, round after round, until a predicate over a round's outputs holds.

A loop is part of a crew's task list: ``Crew(tasks=[research, Loop([write, critique], until=...),
publish])``. Its tasks are the crew's tasks; each round runs them again, in order, as tasks added
to the run (``write#1``, ``critique#1``, ``write#2``, ...), and when the loop ends its tasks end
with the last round's outputs: a task after the loop sees the final draft, not the first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from crewflow._spec import Spec
from crewflow.exceptions import ConfigurationError
from crewflow.task import Task, takes_state

__all__ = ["Loop"]


class Loop(Spec):
    """Run ``tasks`` round after round until ``until`` holds over a round's outputs.

    Each round runs the loop's tasks in order, as tasks of their own: round ``n`` of task
    ``write`` is ``write#n``, with its own attempts and records. In round 2 and later the first
    task also gets the previous round's outputs (the draft and its critique, say); the others
    get their declared context, the loop's tasks in it taken from the same round. When the loop
    ends, its tasks' outputs are the last round's, and only then do the tasks that need them
    start. Every round's decision is recorded, and a resumed run replays it.

    Example:
        ```python
        draft = Task("Write a post about {topic}", name="draft", context=[])
        critique = Task("Critique the post; say APPROVED if it is ready", name="critique",
                        context=[draft])
        crew = Crew(tasks=[Loop([draft, critique], until=approved, max_rounds=3)])
        ```

    Args:
        tasks: The loop's tasks, in the order each round runs them (one task works too).
        until: The predicate (sync, in a worker thread, or async) of the round's outputs, by
            task name (``outputs["critique"]``), and, if it takes a second argument, the
            crew's state: ``True`` ends the loop.
        max_rounds: The most rounds it runs.
        on_limit: What reaching ``max_rounds`` (or ``max_tokens``) without ``until`` holding
            does: ``"raise"`` `crewflow.exceptions.LoopLimitReached` (the run stops, every
            finished output kept), or ``"accept"`` the last round's outputs.
        max_tokens: A token budget: no round starts once the loop's rounds have spent this
            many tokens (prompt and completion); then as ``on_limit`` says.
        name: Names the loop in records and errors (default: its first task's name).

    Raises:
        ConfigurationError: No task, a task listed twice, a bad predicate or bound.
    """

    tasks: tuple[Task, ...] = Field(min_length=1)
    until: Callable[..., Any]
    max_rounds: int = Field(default=3, ge=1)
    on_limit: Literal["raise", "accept"] = "raise"
    max_tokens: int | None = Field(default=None, ge=1)
    name: str | None = Field(default=None, min_length=1)

    def __init__(self, tasks: Task | Sequence[Task] | None = None, /, **data: Any) -> None:
        if tasks is not None:
            if "tasks" in data:
                raise TypeError("Loop() got its tasks both by position and by keyword")
            data["tasks"] = (tasks,) if isinstance(tasks, Task) else tasks
        super().__init__(**data)

    @field_validator("tasks", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return (value,) if isinstance(value, Task) else value

    @field_validator("until")
    @classmethod
    def _check_until(cls, value: Any) -> Any:
        takes_state(value, "until", "(outputs) or (outputs, state)")
        return value

    @model_validator(mode="after")
    def _check_tasks(self) -> Loop:
        ids = [task.id for task in self.tasks]
        if len(set(ids)) != len(ids):
            raise ConfigurationError("a task appears twice in one Loop: list each task once")
        for task in self.tasks:
            steered = [
                feature
                for feature, used in (
                    ("a condition", task.condition is not None),
                    ("a router", task.router is not None),
                    ("a map", task.map_over is not None),
                )
                if used
            ]
            if steered:
                raise ConfigurationError(
                    f"task {task!s:.60} of a Loop has {' and '.join(steered)}; a loop's tasks "
                    "run every round as they are: put the condition, router or map on a task "
                    "before or after the loop"
                )
        return self

    def __repr__(self) -> str:
        return f"Loop({[str(task) for task in self.tasks]}, max_rounds={self.max_rounds})"
