"""Two tasks per topic whose LLM calls are logged, for ``crewflow batch`` tests.

``CLI_TEST_STATE`` names a directory: every call appends ``TOPIC TASK`` to ``calls`` there. The
topic ``boom`` fails (a non-retryable HTTP 400); while a file ``kill`` exists there, the call of
``summary`` for the topic ``halt`` kills this process with SIGKILL (after ``facts`` of that
topic was checkpointed): a driver killed mid-batch, at a point the test knows.
"""

import os
import re
import signal
from pathlib import Path

from crewflow import Agent, Crew, Task
from crewflow.llm import LLMRequest
from crewflow.testing import Error, FunctionLLM


def _answer(request: LLMRequest) -> str | Error:
    prompt = str(request.messages[-1].content)
    topic = re.search(r"<<(.*?)>>", prompt)
    task = "summary" if "Summarise" in prompt else "facts"
    name = topic.group(1) if topic else "?"
    state = Path(os.environ["CLI_TEST_STATE"])
    with (state / "calls").open("a") as calls:
        calls.write(f"{name} {task}\n")
    if name == "boom":
        return Error(400, "the model refused boom")
    if name == "halt" and task == "summary" and (state / "kill").exists():
        os.kill(os.getpid(), signal.SIGKILL)
    return f"{task} of {name}"


llm = FunctionLLM(_answer, model="fn/batch")
agent = Agent(role="Writer", goal="Write", llm=llm)
facts = Task("Collect facts about <<{topic}>>", agent=agent, name="facts")
summary = Task("Summarise <<{topic}>>", agent=agent, name="summary", context=[facts])

crew = Crew(tasks=[facts, summary], name="batched")
