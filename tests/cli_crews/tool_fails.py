"""The researcher's tool raises once; the model is told, calls it again, and answers."""

from crewflow import Agent, Crew, Task, tool
from crewflow.testing import ScriptedLLM, ToolCall, ToolCalls

answers = iter(["the index is down", None])


@tool
def lookup(key: str) -> str:
    """Look KEY up."""
    problem = next(answers)
    if problem:
        raise ConnectionError(problem)
    return f"{key}: 42"


script = [
    ToolCalls([ToolCall("lookup", {"key": "tides"})]),
    ToolCalls([ToolCall("lookup", {"key": "tides"})]),
    "Tides: 42",
]
agent = Agent(role="Researcher", goal="Find facts", llm=ScriptedLLM(script), tools=[lookup])

crew = Crew(tasks=[Task("Find facts about tides", agent=agent, name="facts")])
