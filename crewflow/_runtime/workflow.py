"""The decisions a run makes about its own course: a task's condition, a router's choice.

Each is a user's function, called by `Run` when the decision falls due: a condition when its
task's dependencies have ended, a router when its task has its output, before that output is
checkpointed (so a restored router task always has its decision on record). Sync functions run in
a worker thread, async ones on the loop, both within the task's timeout. What a function raises,
returns wrongly or takes too long for becomes a `WorkflowError` naming the function and its task.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import anyio

from crewflow._spec import short_repr
from crewflow.exceptions import WorkflowError
from crewflow.task import Task, function_name, takes_state

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from pydantic import BaseModel

    from crewflow.graph import TaskGraph
    from crewflow.task import TaskOutput

__all__ = ["call_user", "condition_holds", "route"]


async def call_user(
    function: Any,
    args: Sequence[Any],
    *,
    task: str,
    step: str,
    limit: float | None,
) -> Any:
    """``function(*args)``: awaited if it is async (or returns an awaitable), else run in a
    worker thread; within ``limit`` seconds (the task's timeout).

    Raises:
        WorkflowError: It raised, or took longer than ``limit``.
    """
    named = repr(function_name(function))
    try:
        with anyio.fail_after(limit):
            if inspect.iscoroutinefunction(function):
                return await function(*args)
            found = await anyio.to_thread.run_sync(lambda: function(*args), abandon_on_cancel=True)
            if inspect.isawaitable(found):
                return await found
            return found
    except TimeoutError:
        raise WorkflowError(
            f"the {step} {named} of task {task!r} took longer than the task's timeout "
            f"({limit:g} s)",
            task=task,
            step=step,
            function=named,
        ) from None
    except Exception as exc:
        raise WorkflowError(
            f"the {step} {named} of task {task!r} raised {type(exc).__name__}: {exc}",
            task=task,
            step=step,
            function=named,
        ) from exc


async def condition_holds(
    task: Task,
    name: str,
    outputs: Mapping[str, TaskOutput],
    state: BaseModel | None,
) -> bool:
    """Whether task ``name``'s condition holds over the outputs so far (and the state).

    Raises:
        WorkflowError: The condition raised, took too long, or returned something other than
            a bool.
    """
    condition = task.condition
    args = (outputs, state) if takes_state(condition, "condition", "") else (outputs,)
    found = await call_user(condition, args, task=name, step="condition", limit=task.timeout)
    if not isinstance(found, bool):
        named = repr(function_name(condition))
        raise WorkflowError(
            f"the condition {named} of task {name!r} returned {type(found).__name__} "
            f"{short_repr(found)}; a condition returns True (run the task) or False (skip it)",
            task=name,
            step="condition",
            function=named,
        )
    return found


async def route(
    graph: TaskGraph,
    name: str,
    output: TaskOutput,
    state: BaseModel | None,
) -> list[str]:
    """The direct dependants of task ``name`` its router chooses to run, in graph order.

    Raises:
        WorkflowError: The router raised or took too long, chose something that is not a
            direct dependant of the task, or (a mapping) found a value it has no branch for.
    """
    task = graph.task(name)
    router = task.router
    dependants = graph.dependant_names(name)
    routes = graph.routes(name)
    if routes is not None:
        field = task.router_field
        assert field is not None  # set when the task was made
        value = getattr(output.data, field, None)
        key = value if value in routes else getattr(value, "value", value)
        if key not in routes:
            raise WorkflowError(
                f"the router of task {name!r} read {field}={short_repr(value)}, for which it has "
                f"no branch; its branches: {', '.join(map(repr, routes))}. Map that value to a "
                "task, or narrow the field's type (a Literal or an Enum is checked when the "
                "task is made)",
                task=name,
                step="router",
                function="mapping",
            )
        chosen = {routes[key]}
    else:
        named = repr(function_name(router))
        args = (output, state) if takes_state(router, "router", "") else (output,)
        found = await call_user(router, args, task=name, step="router", limit=task.timeout)
        picked = [] if found is None else found if isinstance(found, (list, tuple)) else [found]
        chosen = set()
        for item in picked:
            target = (
                item
                if isinstance(item, str)
                else graph.name_of(item)
                if isinstance(item, Task) and item in graph
                else None
            )
            if target is None or target not in dependants:
                raise WorkflowError(
                    f"the router {named} of task {name!r} chose {short_repr(item)}, which is not a "
                    f"task that depends on {name!r}; it chooses among: "
                    f"{', '.join(dependants) or 'none'}",
                    task=name,
                    step="router",
                    function=named,
                )
            chosen.add(target)
    return [dependant for dependant in dependants if dependant in chosen]
