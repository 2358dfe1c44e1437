"""How a run is recorded in the store: the run record, a checkpoint per finished task, the end.

`Recorder` is what `Run` calls; it knows the store's records, the run knows nothing of them.
`run_source` tells the runs started inside it how they were started (``crewflow run`` sets it,
so that ``crewflow resume`` can find the crew again).
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

    from crewflow.store import RunSource

__all__ = ["current_source", "run_source"]

_source: ContextVar[RunSource | None] = ContextVar("crewflow_run_source", default=None)


@contextmanager
def run_source(file: str, attribute: str | None = None) -> Iterator[None]:
    """Record runs started inside this block as started from ``file`` (its crew ``attribute``).

    Example:
        ```python
        with run_source("examples/research.py", "crew"):
            result = await crew.kickoff(inputs)
        ```
    """
    from crewflow.store import RunSource

    token = _source.set(RunSource(file=file, attribute=attribute))
    try:
        yield
    finally:
        _source.reset(token)


def current_source() -> RunSource | None:
    """The source set by the innermost `run_source`, if any."""
    return _source.get()
