"""A crew stopped by Ctrl-C during its second task (the LLM raises KeyboardInterrupt)."""

from crewflow import Agent, Crew, Task
from crewflow.testing import FunctionLLM


def answer(request: object) -> str:
    prompt = request.messages[1].content or ""  # type: ignore[attr-defined]
    if prompt.startswith("Second"):
        raise KeyboardInterrupt
    return "first done"


agent = Agent(role="Writer", goal="Write", llm=FunctionLLM(answer))
crew = Crew(
    tasks=[Task("First", agent=agent, name="first"), Task("Second", agent=agent, name="second")]
)
