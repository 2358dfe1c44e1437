"""Shared state: a pydantic model a crew's tasks read in their templates and update from their
structured outputs, through a reducer per field.

```python
from typing import Annotated

from pydantic import BaseModel
from crewflow import Crew, Task, append, merge


class Notes(BaseModel):
    topic: str = "batteries"  # replace (the default): the last update wins
    facts: Annotated[list[str], append] = []  # every update's items, in completion order
    scores: Annotated[dict[str, float], merge] = {}  # a shallow dict update


crew = Crew(tasks=[...], state=Notes)
result = await crew.kickoff()
result.state.facts
```

A reducer is any callable ``(current, update) -> new``; `replace`, `append` and `merge` are the
three most crews need. A field's reducer is the first callable in its ``Annotated`` metadata
that is one of them or a plain function (pydantic's own metadata, ``Field(...)`` and
constraints, is left to pydantic). See the guide, ``docs/guides/state.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = ["Reducer", "append", "merge", "reducers_of", "replace"]

Reducer = Callable[[Any, Any], Any]
"""A state field's reducer: the field's current value and an update, to the new value."""


def replace(current: Any, update: Any) -> Any:
    """The update wins: the field becomes the update (the default reducer).

    Example:
        >>> replace("draft 1", "draft 2")
        'draft 2'
    """
    return update


def append(current: Any, update: Any) -> list[Any]:
    """A list field grows: by the items of a list (or tuple) update, or by a single value.

    A new list is returned; the current one is not changed.

    Example:
        >>> append(["a"], ["b", "c"])
        ['a', 'b', 'c']
        >>> append(["a"], "b")
        ['a', 'b']
    """
    items = list(current) if current is not None else []
    if isinstance(update, (list, tuple)):
        items.extend(update)
    else:
        items.append(update)
    return items


def merge(current: Any, update: Any) -> dict[Any, Any]:
    """A dict field is updated shallowly: the update's keys win, the others stay.

    A new dict is returned; the current one is not changed.

    Raises:
        TypeError: The update is not a mapping.

    Example:
        >>> merge({"a": 1, "b": 2}, {"b": 3})
        {'a': 1, 'b': 3}
    """
    if not isinstance(update, Mapping):
        raise TypeError(f"merge needs a mapping to update with, not {type(update).__name__}")
    return {**(current or {}), **update}


def reducers_of(model: type[BaseModel]) -> dict[str, Reducer]:
    """Each field of the state model ``model`` with its reducer (`replace` unless its
    ``Annotated`` metadata names another)."""
    found: dict[str, Reducer] = {}
    for name, field in model.model_fields.items():
        reducer: Reducer = replace
        for item in field.metadata:
            if _is_reducer(item):
                reducer = item
                break
        found[name] = reducer
    return found


def _is_reducer(item: Any) -> bool:
    # Pydantic keeps its own metadata (constraints, FieldInfo) as objects, some of them
    # callable (AfterValidator's instances are not, but a type may be): a reducer is a
    # function, a bound method, or an object with __call__ that is not a class.
    if isinstance(item, type) or not callable(item):
        return False
    module = getattr(type(item), "__module__", "") or ""
    return not module.startswith(("pydantic", "annotated_types"))
