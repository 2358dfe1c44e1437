"""The LLM fails once with a retryable 503, then answers."""

from crewflow import Agent, Crew, Task
from crewflow.testing import Error, ScriptedLLM

agent = Agent(role="Writer", goal="Write", llm=ScriptedLLM([Error(503), "recovered answer"]))

crew = Crew(tasks=[Task("Write a line", agent=agent, name="line")])
