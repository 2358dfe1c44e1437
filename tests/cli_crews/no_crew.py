"""Defines an agent and a task but no Crew."""

from crewflow import Agent, Task

agent = Agent(role="Writer", goal="Write", llm="offline")
task = Task("Write a line", agent=agent)
