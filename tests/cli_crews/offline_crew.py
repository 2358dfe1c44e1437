"""A two-task crew on the offline model, with a {topic} template (crew name left default)."""

from crewflow import Agent, Crew, Task

writer = Agent(role="Writer", goal="Write short notes", llm="offline")

facts = Task("Collect facts about {topic}", agent=writer, name="facts")
summary = Task("Summarise {topic} in one line", agent=writer, name="summary")

crew = Crew(tasks=[facts, summary])
