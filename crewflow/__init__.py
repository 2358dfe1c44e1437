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

from crewflow._runtime.limits import Breaker, Limit, Limits, set_limits
from crewflow._runtime.records import AttemptRecord, TaskRecord, TaskStatus
from crewflow._runtime.retry import RetryPolicy
from crewflow._version import __version__
from crewflow.agent import Agent
from crewflow.crew import Crew, CrewResult
from crewflow.task import Task, TaskOutput
from crewflow.tools import Tool, tool

if typing.TYPE_CHECKING:
    from crewflow._runtime.handle import RunHandle

__all__ = [
    "Agent",
    "AttemptRecord",
    "Breaker",
    "Crew",
    "CrewResult",
    "Limit",
    "Limits",
    "RetryPolicy",
    "RunHandle",
    "Task",
    "TaskOutput",
    "TaskRecord",
    "TaskStatus",
    "Tool",
    "__version__",
    "set_limits",
    "tool",
]


def __getattr__(name: str) -> typing.Any:
    # RunHandle needs anyio at import; it loads when first asked for, not with crewflow.
    if name == "RunHandle":
        from crewflow._runtime.handle import RunHandle

        return RunHandle
    raise AttributeError(f"module 'crewflow' has no attribute {name!r}")
