"""Two Crews and neither is called `crew`."""

from crewflow import Agent, Crew, Task

agent = Agent(role="Writer", goal="Write", llm="offline")
first = Crew(tasks=[Task("One", agent=agent)])
second = Crew(tasks=[Task("Two", agent=agent)])
