"""`RunState`: the shared state of one run, and the order its updates were made in.

A finished task whose output model shares field names with the crew's state model updates those
fields through their reducers (`crewflow.state`), in completion order, with no await between
reading the state and writing it: two tasks that finish together never lose each other's update.

The order is durable with the outputs: each update's sequence number is written on the
completing attempt's ``details`` (``"state_update": n``), in the same commit as the output. A
resumed run rebuilds the state by folding the restored outputs in that order, then goes on from
there; outputs finished before the resume always come before new ones. The order is recorded
rather than read off the outputs' finish times, which tie (a virtual clock, one loop tick) and
can be committed in another order than they were applied (a write that waits for another
process's lock goes to a thread).
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from crewflow.exceptions import StateUpdateError
from crewflow.state import Reducer, reducers_of
from crewflow.task import function_name

if TYPE_CHECKING:
    from crewflow._records import AttemptRecord
    from crewflow._runtime.recording import Resumption
    from crewflow.task import TaskOutput

__all__ = ["ORDER_KEY", "RunState"]

ORDER_KEY = "state_update"
"""The key of an update's sequence number in its attempt's ``details``."""

Update = tuple[tuple[str, Any], ...]
"""One output's update: each shared field with its value, in the state model's field order."""


class RunState:
    """The state of one run: its current value, and what rebuilds it on resume.

    Args:
        initial: The state the run starts from (the run's own: never shared with another run).
        resumption: What a resumed run restores (the recorded order of its updates).
    """

    def __init__(self, initial: BaseModel, resumption: Resumption | None = None) -> None:
        self._initial = initial
        self._model = type(initial)
        self._reducers = reducers_of(self._model)
        self._fields: dict[type[BaseModel], tuple[str, ...]] = {}
        self.current = initial
        """The state now."""
        self._order: dict[str, int] = {}
        self._restored: list[tuple[int, str, Update]] = []
        self._pending: list[tuple[int, str, Update]] = []
        self._live: list[tuple[str, Update]] = []
        self._next = 1
        if resumption is not None:
            for name, attempts in resumption.attempts.items():
                number = _recorded_order(attempts)
                if number is not None and name in resumption.outputs:
                    self._order[name] = number
            self._next = max(self._order.values(), default=0) + 1

    def apply(self, output: TaskOutput) -> int | None:
        """Update the state from a finished task's output.

        Returns:
            The update's sequence number (to record with the output), or ``None`` when the
            output updates no field.

        Raises:
            StateUpdateError: A reducer raised, or the state model rejected its result; the
                state is as it was.
        """
        update = self._update_of(output.data)
        if not update:
            return None
        self.settle()
        self.current = self._reduce(self.current, update, output.task)
        self._live.append((output.task, update))
        number = self._next
        self._next += 1
        return number

    def restored(self, name: str, output: TaskOutput) -> None:
        """Task ``name``'s output was restored from the run this one resumes: its recorded
        update joins the state at the next `settle`."""
        number = self._order.get(name)
        if number is None:
            return
        update = self._update_of(output.data)
        if update:
            bisect.insort(self._pending, (number, name, update))

    def settle(self) -> BaseModel:
        """Fold the restored updates not folded yet into the state, in their recorded order,
        before every update made since the resume; returns the state.

        Raises:
            StateUpdateError: A reducer no longer accepts what it accepted when the run
                recorded the update.
        """
        pending = self._pending
        if not pending:
            return self.current
        self._pending = []
        if not self._live and (not self._restored or self._restored[-1][0] < pending[0][0]):
            # Restored in their order and nothing new yet (the usual replay): fold on.
            state = self.current
            for _, name, update in pending:
                state = self._reduce(state, update, name)
            self._restored.extend(pending)
            self.current = state
            return state
        for item in pending:
            bisect.insort(self._restored, item)
        state = self._initial
        for _, name, update in self._restored:
            state = self._reduce(state, update, name)
        for name, update in self._live:
            state = self._reduce(state, update, name)
        self.current = state
        return state

    def _update_of(self, data: Any) -> Update:
        if not isinstance(data, BaseModel):
            return ()
        kind = type(data)
        fields = self._fields.get(kind)
        if fields is None:
            shared = kind.model_fields.keys() & self._reducers.keys()
            fields = self._fields[kind] = tuple(f for f in self._reducers if f in shared)
        return tuple((field, getattr(data, field)) for field in fields)

    def _reduce(self, state: BaseModel, update: Update, task: str) -> BaseModel:
        values = dict(state)
        for field, value in update:
            reducer = self._reducers[field]
            try:
                values[field] = reducer(values[field], value)
            except Exception as exc:
                what = f"raised {type(exc).__name__}: {exc}"
                raise self._error(task, field, reducer, what) from exc
        try:
            return self._model.model_validate(values)
        except ValidationError as exc:
            location = exc.errors()[0]["loc"]
            field = str(location[0]) if location else update[0][0]
            reducer = self._reducers.get(field, self._reducers[update[0][0]])
            raise self._error(
                task,
                field,
                reducer,
                f"gave a value the state model {self._model.__name__} rejects: {exc}",
            ) from exc

    @staticmethod
    def _error(task: str, field: str, reducer: Reducer, what: str) -> StateUpdateError:
        name = function_name(reducer)
        return StateUpdateError(
            f"task {task!r} could not update state field {field!r}: its reducer {name!r} {what}. "
            "Fix the reducer, or the output model's field of that name",
            field=field,
            reducer=name,
        )


def _recorded_order(attempts: list[AttemptRecord]) -> int | None:
    """The sequence number of the update a task's completing attempt recorded, if any."""
    for attempt in reversed(attempts):
        number = attempt.details.get(ORDER_KEY)
        if isinstance(number, int):
            return number
    return None


def with_order(attempts: list[AttemptRecord], number: int) -> None:
    """Write update ``number`` on the last of a finished task's ``attempts`` (the completing
    one), so that it is checkpointed with the output."""
    last = attempts[-1]
    attempts[-1] = last.model_copy(update={"details": {**last.details, ORDER_KEY: number}})
