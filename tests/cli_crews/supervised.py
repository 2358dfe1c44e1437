"""A chain of three tasks against the loopback server, killed at a point the test chooses, for
the supervisor tests (``crewflow run --restart``, ``crewflow resume --interrupted``).

The agent's model is ``openai/loop-model`` at ``OPENAI_BASE_URL`` (the test's `OpenAIServer`,
which counts requests). ``CLI_TEST_STATE`` names a directory: while the file ``kills`` there
holds a number above 0, the start of the task ``bravo`` takes one from it and kills this
process with SIGKILL. By then ``alpha`` was checkpointed (a finished output is committed before
its dependants start), so a resume must not send it again.
"""

import os
import signal
from pathlib import Path

from crewflow import Agent, Crew, Task, events


def _kill_at_bravo(event: events.Event) -> None:
    if not isinstance(event, events.TaskStarted) or event.task != "bravo":
        return
    kills = Path(os.environ["CLI_TEST_STATE"]) / "kills"
    left = int(kills.read_text()) if kills.exists() else 0
    if left > 0:
        kills.write_text(str(left - 1))
        os.kill(os.getpid(), signal.SIGKILL)


agent = Agent(role="Worker", goal="Work", llm="openai/loop-model")
alpha = Task("do alpha of {topic}", agent=agent, name="alpha")
bravo = Task("do bravo of {topic}", agent=agent, name="bravo", context=[alpha])
charlie = Task("do charlie of {topic}", agent=agent, name="charlie", context=[bravo])

crew = Crew(tasks=[alpha, bravo, charlie], name="supervised", on_event=_kill_at_bravo)
