"""The only Crew, not called `crew`, with its own name; its agent comes from a sibling module."""

from _cli_parts import make_agent

from crewflow import Crew, Task

answer = Task("Answer briefly", agent=make_agent(), name="answer")
my_crew = Crew(tasks=[answer], name="sibling-named")
