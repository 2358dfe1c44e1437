"""Test your crews without a network or an API key.

- `ScriptedLLM` / `FunctionLLM`: LLMs that answer from a script or a function, recording every
  request. `ScriptedManager` scripts a hierarchical crew's manager: its plans (valid or not),
  its reviews (accept, or `redo`) and its final answer.
- `OpenAIServer`: a real HTTP server on 127.0.0.1 speaking the OpenAI chat-completions protocol
  (plain and streaming replies, tool calls, 429 with Retry-After, 5xx, slow replies, malformed
  JSON, dropped connections, a seeded `Storm` of 429s, a hidden `Capacity`), so the real
  ``openai`` and ``litellm`` clients run over a socket.
  Scripts use the reply vocabulary below, which `ScriptedLLM` understands too.
- `capture_events`, `FakeClock` / `use_clock`, and `forbid_real_llm_calls`.
- `VirtualTimeLoop` / `run_virtual`: an event loop whose sleeps take no real time, to test
  scheduling, timeouts and rate limits exactly (offline and scripted models only).

Example:
    ```python
    from crewflow.testing import ScriptedLLM, ToolCall, ToolCalls, capture_events

    llm = ScriptedLLM([ToolCalls([ToolCall("search", {"query": "x"})]), "final answer"])
    crew = Crew(tasks=[Task("...", agent=Agent(role="R", goal="G", llm=llm, tools=[search]))])
    with capture_events() as captured:
        result = await crew.kickoff()
    assert result.output.text == "final answer"
    ```
"""

from crewflow.testing._doubles import (
    EventCapture,
    FakeClock,
    FunctionLLM,
    ScriptedLLM,
    ScriptExhausted,
    capture_events,
    forbid_real_llm_calls,
    reset_limits,
    use_clock,
)
from crewflow.testing._manager import VALID_PLAN, ScriptedManager, redo
from crewflow.testing._server import (
    Capacity,
    Cut,
    Disconnect,
    Error,
    Malformed,
    OpenAIServer,
    ReceivedRequest,
    Reply,
    Slow,
    Storm,
    Text,
    ToolCall,
    ToolCalls,
)
from crewflow.testing._virtual import VirtualTimeLoop, run_virtual

__all__ = [
    "VALID_PLAN",
    "Capacity",
    "Cut",
    "Disconnect",
    "Error",
    "EventCapture",
    "FakeClock",
    "FunctionLLM",
    "Malformed",
    "OpenAIServer",
    "ReceivedRequest",
    "Reply",
    "ScriptExhausted",
    "ScriptedLLM",
    "ScriptedManager",
    "Slow",
    "Storm",
    "Text",
    "ToolCall",
    "ToolCalls",
    "VirtualTimeLoop",
    "capture_events",
    "forbid_real_llm_calls",
    "redo",
    "reset_limits",
    "run_virtual",
    "use_clock",
]
