"""crewflow: asyncio-native crews of LLM agents.

```python
from crewflow import Agent, Task, Crew

writer = Agent(role="Writer", goal="Write clearly")
crew = Crew(tasks=[Task("Write a haiku about {topic}", agent=writer)])
result = await crew.kickoff(inputs={"topic": "rivers"})
print(result.output.text)
```

The public names are below; `crewflow.llm` holds the model clients, `crewflow.exceptions` the
error tree, `crewflow.events` the run events, and `crewflow.testing` test doubles.
"""

import typing

from crewflow._version import __version__

if typing.TYPE_CHECKING:
    from crewflow._records import AttemptRecord, TaskRecord, TaskStatus
    from crewflow._runtime.handle import RunHandle
    from crewflow._runtime.limiter import set_limits
    from crewflow.agent import Agent
    from crewflow.crew import Crew, CrewResult
    from crewflow.exceptions import CrewflowWarning
    from crewflow.health import HealthPolicy
    from crewflow.limits import Auto, Breaker, Limit, Limits
    from crewflow.loop import Loop
    from crewflow.report import Report
    from crewflow.retry import RetryPolicy
    from crewflow.state import append, merge, replace
    from crewflow.task import Task, TaskOutput, optional
    from crewflow.tools import Tool, tool

__all__ = [
    "Agent",
    "AttemptRecord",
    "Auto",
    "Breaker",
    "Crew",
    "CrewResult",
    "CrewflowWarning",
    "HealthPolicy",
    "Limit",
    "Limits",
    "Loop",
    "Report",
    "RetryPolicy",
    "RunHandle",
    "Task",
    "TaskOutput",
    "TaskRecord",
    "TaskStatus",
    "Tool",
    "__version__",
    "aclose",
    "append",
    "merge",
    "optional",
    "replace",
    "set_limits",
    "tool",
]

# Each public name loads its module when first used, so that ``import crewflow`` (and tools
# that need one corner of it, like ``crewflow runs`` reading the store) load only what they use.
_WHERE = {
    "Agent": "crewflow.agent",
    "AttemptRecord": "crewflow._records",
    "Auto": "crewflow.limits",
    "Breaker": "crewflow.limits",
    "Crew": "crewflow.crew",
    "CrewResult": "crewflow.crew",
    "CrewflowWarning": "crewflow.exceptions",
    "HealthPolicy": "crewflow.health",
    "Limit": "crewflow.limits",
    "Limits": "crewflow.limits",
    "Loop": "crewflow.loop",
    "Report": "crewflow.report",
    "RetryPolicy": "crewflow.retry",
    "RunHandle": "crewflow._runtime.handle",
    "Task": "crewflow.task",
    "TaskOutput": "crewflow.task",
    "optional": "crewflow.task",
    "TaskRecord": "crewflow._records",
    "TaskStatus": "crewflow._records",
    "Tool": "crewflow.tools",
    "append": "crewflow.state",
    "merge": "crewflow.state",
    "replace": "crewflow.state",
    "set_limits": "crewflow._runtime.limiter",
    "tool": "crewflow.tools",
}


async def aclose() -> None:
    """Close the HTTP clients crewflow keeps for the running event loop.

    Model clients outlive a kickoff: every kickoff in a loop shares them (building one costs
    1-2 ms). They close by themselves when the loop shuts down through ``asyncio.run``,
    ``anyio.run`` or ``asyncio.Runner`` (and `Crew.kickoff_sync` closes its own); call this
    before closing a loop you drive by hand, or to drop connections. The next call makes new
    clients. Call it when no kickoff of this loop is running.

    Example:
        ```python
        result = await crew.kickoff()
        await crewflow.aclose()
        ```
    """
    from crewflow.llm._pool import aclose_loop_clients

    await aclose_loop_clients()


def __getattr__(name: str) -> typing.Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'crewflow' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
