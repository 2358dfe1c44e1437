"""Any OpenAI-compatible endpoint: a crew talking to a chat-completions server over HTTP.

What it shows: ``crewflow.llm.OpenAIChat`` with a ``base_url`` plugs in any server that speaks
OpenAI's chat-completions protocol (vLLM, llama.cpp, Ollama, LM Studio, LiteLLM's proxy, or
OpenAI itself). Here the server is crewflow's loopback test server, `OpenAIServer`, started on
127.0.0.1 in the same event loop, so the real ``openai`` SDK runs over a real socket with no
network and no key. The server is told to fail the first call with a 503: the runtime retries
it (the SDK's own retries are off) and the run still succeeds.

Run it:

    python examples/openai_compatible.py

With a real local server, only the LLM line changes, e.g. for Ollama:
``OpenAIChat("qwen2.5:7b", base_url="http://127.0.0.1:11434/v1")``.
"""

from __future__ import annotations

import sys

import anyio

from crewflow import Agent, Crew, RetryPolicy, Task
from crewflow.events import Event, LLMCallRetrying
from crewflow.llm import OpenAIChat
from crewflow.testing import Error, OpenAIServer, Text


def report_retries(event: Event) -> None:
    """Print the runtime's retries as they happen."""
    if isinstance(event, LLMCallRetrying):
        print(f"HTTP {event.status_code} from the server; retrying in {event.delay:.2f} s")


async def main() -> int:
    """Start the loopback server, run a two-task crew against it, show what it received."""
    async with OpenAIServer() as server:
        server.enqueue(
            Error(503, "the model is loading"),
            Text("Tides: two highs and two lows a day, driven mostly by the moon."),
            Text("The moon pulls the oceans, and twice a day the sea comes in."),
        )
        llm = OpenAIChat("test-model", base_url=server.base_url, api_key="unused")
        researcher = Agent(role="Researcher", goal="Find facts", llm=llm)
        writer = Agent(role="Writer", goal="Explain simply", llm=llm)
        crew = Crew(
            tasks=[
                Task("Collect facts about {topic}", agent=researcher, name="facts"),
                Task("Explain {topic} to a child in one sentence", agent=writer, name="answer"),
            ],
            retry=RetryPolicy(initial=0.1),  # short backoff, to keep the example quick
            on_event=report_retries,
        )
        result = await crew.kickoff(inputs={"topic": "tides"})

        print(f"server: {server.base_url}")
        print(f"facts:  {result['facts'].text}")
        print(f"answer: {result.text}")
        statuses = [request.status for request in server.requests]
        print(f"the server received {server.count} requests (HTTP statuses {statuses})")
        print(f"model {result.output.model}, {result.usage.total_tokens} tokens reported")
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))
