"""A run's health: the thresholds that judge it (`HealthPolicy`), as a plain value.

The runtime watches a run's events when its crew asks for it (``Crew(health=...)`` or
``Crew(on_alert=...)``), when the run is started in the background (`crewflow.Crew.start`, for
`crewflow.RunHandle.health`), and under ``crewflow run``'s live view. A crew that asks for none
of these pays nothing for it. What the watch finds is a `crewflow.events.RunHealth`; each change
is a `crewflow.events.RunHealthChanged` event, handed to the crew's ``on_alert`` hook too.
"""

from __future__ import annotations

from pydantic import Field

from crewflow._spec import Value
from crewflow.events import HealthIssue, RunHealth, RunHealthChanged

__all__ = ["HealthIssue", "HealthPolicy", "RunHealth", "RunHealthChanged"]


class HealthPolicy(Value):
    """When a run counts as stalled or degraded, and how long an alert hook may take.

    Example:
        ```python
        crew = Crew(
            tasks=[...],
            health=HealthPolicy(stall_after=120, error_rate=0.25),
            on_alert=notify,
        )
        ```

    Args:
        stall_after: Seconds a task in flight may go without an event of its own (an LLM call
            starting or ending, a streamed token, a tool call, a retry) before it counts as
            stalled.
        error_rate: A model's failed calls over its calls in the recent window above which it
            counts as failing (0 < rate <= 1).
        error_window: Seconds of recent calls the error rate is computed over.
        min_calls: How many calls a model must have made in the window before its error rate
            is judged (one failed call out of one is no trend).
        retries: A task in flight retried this many times is an issue.
        limit_wait_share: The share of the tasks' time spent waiting for limits above which
            the run counts as degraded (0 < share <= 1).
        alert_timeout: Seconds an ``on_alert`` hook may take; past them it is abandoned and
            logged (a sync hook's thread is left to finish on its own).

    Raises:
        ConfigurationError: A value out of range, named with what it must be.
    """

    stall_after: float = Field(default=300.0, gt=0)
    error_rate: float = Field(default=0.5, gt=0, le=1)
    error_window: float = Field(default=60.0, gt=0)
    min_calls: int = Field(default=4, ge=1)
    retries: int = Field(default=3, ge=1)
    limit_wait_share: float = Field(default=0.5, gt=0, le=1)
    alert_timeout: float = Field(default=10.0, gt=0)
