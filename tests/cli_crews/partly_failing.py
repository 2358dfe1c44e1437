"""A crew that goes on after a failure: one task fails (HTTP 400), its dependant is skipped, an
unrelated task finishes."""

from crewflow import Agent, Crew, Task
from crewflow.testing import Error, FunctionLLM


def answer(request: object) -> object:
    prompt = request.messages[1].content or ""  # type: ignore[attr-defined]
    return Error(400, "the request was rejected") if prompt.startswith("Break") else "done"


agent = Agent(role="Writer", goal="Write", llm=FunctionLLM(answer))
broken = Task("Break", agent=agent, name="broken", context=[])
after = Task("After", agent=agent, name="after", context=[broken])
fine = Task("Fine", agent=agent, name="fine", context=[])
crew = Crew(tasks=[broken, after, fine], process="parallel", on_failure="continue")
