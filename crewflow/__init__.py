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

from crewflow._runtime.records import AttemptRecord, TaskRecord, TaskStatus
from crewflow._runtime.retry import RetryPolicy
from crewflow._version import __version__
from crewflow.agent import Agent
from crewflow.crew import Crew, CrewResult
from crewflow.task import Task, TaskOutput
from crewflow.tools import Tool, tool

__all__ = [
    # specs
    "Agent",
    # results
    "AttemptRecord",
    "Crew",
    "CrewResult",
    "RetryPolicy",
    "Task",
    "TaskOutput",
    "TaskRecord",
    "TaskStatus",
    # tools
    "Tool",
    # metadata
    "__version__",
    "tool",
]
