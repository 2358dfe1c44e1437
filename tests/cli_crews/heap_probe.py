"""A one-task crew whose model answers whether the garbage collector's heap is frozen."""

import gc

from crewflow import Agent, Crew, Task
from crewflow.testing import FunctionLLM

probe = Agent(
    role="Probe",
    goal="Report the heap",
    llm=FunctionLLM(lambda request: f"frozen objects: {gc.get_freeze_count() > 0}"),
)

crew = Crew(tasks=[Task("Look at the heap", agent=probe, name="heap")])
