"""Maps: a task run once per item of a list an upstream task produced.

`Run` calls these when a map's task comes up: `find_items` reads the list (from the upstream
output, or the map's function), `item_task` makes the task of one item (``summarise[0]``, ...),
and `gathered` makes the map's own output from its items' outputs, in item order. The items are
recorded as a decision before any item runs, so a resumed run maps over the same list; each item
is a task added to the run, with its own attempts and records, restored on resume like any other.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from crewflow._runtime.workflow import call_user
from crewflow._spec import new_id, short_repr
from crewflow._text import valid_json
from crewflow.exceptions import WorkflowError
from crewflow.llm._types import Usage
from crewflow.task import ITEM, Task, TaskOutput, fill_only, literal_template, takes_state

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from crewflow.graph import TaskGraph

__all__ = ["find_items", "gathered", "item_name", "item_task"]


def item_name(name: str, index: int) -> str:
    """The name of item ``index`` of the map task ``name``: ``name[index]``."""
    return f"{name}[{index}]"


async def find_items(
    graph: TaskGraph,
    name: str,
    outputs: Mapping[str, TaskOutput],
    state: BaseModel | None,
) -> list[Any]:
    """The items task ``name`` maps over, as JSON values (what is recorded and replayed).

    Raises:
        WorkflowError: The list is not there, is not a list, or the map's function failed.
    """
    task = graph.task(name)
    over = task.map_over
    source = graph.map_source(name)
    if source is None:
        args = (outputs, state) if takes_state(over, "map_over", "") else (outputs,)
        found = await call_user(over, args, task=name, step="map", limit=task.timeout)
        where = "its map_over function returned"
    else:
        upstream, path = source
        found = _follow(outputs[upstream], path, name, over)
        where = f"map_over={over!r} is"
    if isinstance(found, BaseModel) or not isinstance(found, (list, tuple)):
        raise WorkflowError(
            f"task {name!r} maps over a list, but {where} {type(found).__name__} "
            f"{short_repr(found)}: give it a list (an output model field typed list[...])",
            task=name,
            step="map",
            function=repr(over) if isinstance(over, str) else "map_over",
        )
    return list(_recordable(valid_json(to_jsonable_python(list(found), fallback=repr))))


def _recordable(value: Any) -> Any:
    """``value`` with every float JSON cannot hold (infinite, NaN) as its text: an item is
    recorded as JSON, and a model's text read as JSON may hold ``NaN``."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_recordable(item) for item in value]
    if isinstance(value, dict):
        return {key: _recordable(item) for key, item in value.items()}
    return value


def _follow(output: TaskOutput, path: Sequence[str], name: str, over: object) -> Any:
    """The value at ``path`` in an upstream output: its structured data (or its text, read as
    JSON, when it has none), then each field or key in turn."""
    value: Any = output.data
    if value is None:
        try:
            value = json.loads(output.text)
        except ValueError:
            raise WorkflowError(
                f"task {name!r} maps over {over!r}, but {output.task!r} has no structured output "
                "and its text is not JSON: give that task an output_model with a list field",
                task=name,
                step="map",
                function=repr(over),
            ) from None
    for field in path:
        if isinstance(value, dict) and field in value:
            value = value[field]
        elif isinstance(value, BaseModel) and field in type(value).model_fields:
            value = getattr(value, field)
        else:
            raise WorkflowError(
                f"task {name!r} maps over {over!r}, but the output of {output.task!r} has no "
                f"field {field!r} there",
                task=name,
                step="map",
                function=repr(over),
            )
    return value


def item_text(item: Any) -> str:
    """An item as the prompt shows it: a string as it is, anything else as JSON."""
    return item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)


def item_task(task: Task, name: str, index: int, item: Any, context: Sequence[str]) -> Task:
    """The task of item ``index`` of map task ``task`` (called ``name``): the same task, with
    the item in its description (at ``{item}``, else below it), depending on ``context``."""
    text = literal_template(item_text(item))  # an item's braces are never placeholders
    description, expected = task.description, task.expected_output
    placed = "{" + ITEM + "}"
    if placed in description or placed in expected:
        description = fill_only(description, {ITEM: text})
        expected = fill_only(expected, {ITEM: text})
    else:
        description = f"{description}\n\nItem:\n{text}"
    return task.model_copy(
        update={
            "id": new_id(),
            "name": item_name(name, index),
            "description": description,
            "expected_output": expected,
            "context": tuple(context),
            "map_over": None,
            "max_items": None,
            "max_concurrency": None,
            "condition": None,
        }
    )


def gathered(name: str, agent: str, items: Sequence[TaskOutput]) -> TaskOutput:
    """The map task ``name``'s output from its items' outputs, in item order: ``data`` lists
    each item's structured output (or text), ``text`` holds every item's text, numbered."""
    usage = Usage()
    for output in items:
        usage.add(output.usage)
    return TaskOutput(
        task=name,
        agent=agent,
        text="\n\n".join(f"[{index}] {output.text}" for index, output in enumerate(items)),
        data=[output.text if output.data is None else output.data for output in items],
        usage=usage,
        model=items[0].model if items else "",
    )
