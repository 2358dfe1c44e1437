"""A crew whose only LLM call fails with a non-retryable provider error (HTTP 400)."""

from crewflow import Agent, Crew, Task
from crewflow.testing import Error, ScriptedLLM

agent = Agent(
    role="Writer",
    goal="Write",
    llm=ScriptedLLM([Error(400, "the request was rejected")], model="scripted/model"),
)

crew = Crew(tasks=[Task("Write a line", agent=agent, name="line")])
