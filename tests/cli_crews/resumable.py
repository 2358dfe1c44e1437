"""Two offline tasks whose LLM calls are logged to a file, for ``crewflow resume`` tests.

``CLI_TEST_STATE`` names a directory: every call appends its task's name to ``calls`` there,
and while a file ``fail`` exists there, ``draft`` fails with a non-retryable HTTP 400.
``CLI_TEST_DRAFT`` changes draft's description (and so the crew's fingerprint).
"""

import os
from pathlib import Path

from crewflow import Agent, Crew, Task
from crewflow.testing import Error, FunctionLLM


def _state() -> Path:
    return Path(os.environ["CLI_TEST_STATE"])


def _log(task: str) -> None:
    with (_state() / "calls").open("a") as calls:
        calls.write(task + "\n")


def _facts(request: object) -> str:
    _log("facts")
    return "three facts"


def _draft(request: object) -> str | Error:
    _log("draft")
    if (_state() / "fail").exists():
        return Error(400, "the writer is out")
    return "a draft"


researcher = Agent(role="Researcher", goal="Find facts", llm=FunctionLLM(_facts, model="fn/facts"))
writer = Agent(role="Writer", goal="Write", llm=FunctionLLM(_draft, model="fn/draft"))

facts = Task("Collect facts about {topic}", agent=researcher, name="facts")
draft = Task(os.environ.get("CLI_TEST_DRAFT", "Write it up"), agent=writer, name="draft")

resumable = Crew(tasks=[facts, draft], name="resumable")
