"""The first task finishes on the offline model; the second one's LLM fails (HTTP 400)."""

from crewflow import Agent, Crew, Task
from crewflow.testing import Error, ScriptedLLM

steady = Agent(role="Researcher", goal="Find facts", llm="offline")
broken = Agent(role="Writer", goal="Write", llm=ScriptedLLM([Error(400, "bad request")]))

crew = Crew(
    tasks=[
        Task("Collect facts", agent=steady, name="first"),
        Task("Write it up", agent=broken, name="second"),
    ]
)
