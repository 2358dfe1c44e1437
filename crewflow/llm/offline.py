"""The offline model: deterministic answers without a network, for examples, tests and benchmarks.

It is honest about what it is: every text answer says it comes from the offline model. It is
still useful end to end: it calls each offered tool once (arguments built from the tool's schema)
before answering, follows structured-output schemas (valid JSON, enums respected), mentions the
context it was given, and reports token usage (characters / 4).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
import re

from crewflow._jsonschema import example_for_schema
from crewflow.exceptions import ConfigurationError, LLMError
from crewflow.llm._base import LLM
from crewflow.llm._types import (
    LLMRequest,
    LLMResponse,
    Message,
    OutputSchema,
    ToolCall,
    Usage,
    estimate_prompt_tokens,
    estimate_tokens,
)

__all__ = ["OfflineLLM"]

_ROLE = re.compile(r"^You are (.+?)\.(?: Your goal:|$)", re.MULTILINE)
_CONTEXT = re.compile(r'<context task="([^"]+)">')
_WORD_PIECES = re.compile(r"\S+\s*|\s+")


class OfflineLLM(LLM):
    """A deterministic local model: same request, same answer; no network, no key.

    Args:
        latency: Seconds each call takes (to simulate a slow model in benchmarks).
    """

    model = "offline"

    def __init__(self, latency: float = 0.0) -> None:
        if not latency >= 0 or math.isinf(latency):  # also rejects NaN
            raise ConfigurationError(
                f"OfflineLLM latency must be a finite number of seconds >= 0, not {latency!r}"
            )
        self.latency = latency

    @property
    def supports_output_schema(self) -> bool:
        """The offline model always follows the requested schema."""
        return True

    async def complete(self, request: LLMRequest) -> LLMResponse:
        """Answer deterministically from the request (see the module docs)."""
        if self.latency:
            import anyio

            await anyio.sleep(self.latency)
        calls = _pending_tool_calls(request)
        if calls:
            content = None
        elif request.output is not None:
            content = _structured_answer(request.output, _task_line(request.messages))
        else:
            content = _text_answer(request.messages)
        if content and request.stream and request.on_delta is not None:
            for piece in _WORD_PIECES.findall(content):
                result = request.on_delta(piece)
                if inspect.isawaitable(result):
                    await result
        usage = Usage(
            requests=1,
            prompt_tokens=estimate_prompt_tokens(request.messages),
            completion_tokens=estimate_tokens(content or "".join(c.arguments for c in calls)),
        )
        return LLMResponse(
            content=content,
            tool_calls=calls,
            usage=usage,
            model=self.model,
            finish_reason="tool_calls" if calls else "stop",
        )

    def __repr__(self) -> str:
        return f"OfflineLLM(latency={self.latency!r})"


def _pending_tool_calls(request: LLMRequest) -> tuple[ToolCall, ...]:
    """One call for each offered tool that has not been called yet in this conversation."""
    if not request.tools:
        return ()
    called = {m.name for m in request.messages if m.role == "tool"}
    seed = _task_line(request.messages)
    return tuple(
        ToolCall(
            id=f"call_offline_{index}_{spec.name}",
            name=spec.name,
            arguments=json.dumps(example_for_schema(spec.parameters, seed=seed)),
        )
        for index, spec in enumerate(request.tools)
        if spec.name not in called
    )


def _structured_answer(output: OutputSchema, seed: str) -> str:
    try:
        return json.dumps(example_for_schema(output.schema, seed=seed))
    except ValueError as exc:
        raise LLMError(
            f"the offline model cannot answer with {output.name}: {exc}; simplify the model",
            model=OfflineLLM.model,
        ) from exc


def _text_answer(messages: list[Message]) -> str:
    # One pass over the messages (a benchmark's every task answers through here).
    system: str | None = None
    first_user: str | None = None
    prompt = ""
    tools: list[Message] = []
    for message in messages:
        role = message.role
        if role == "user":
            prompt = message.content or ""
            if first_user is None:
                first_user = prompt
        elif role == "system":
            if system is None:
                system = message.content or ""
        elif role == "tool":
            tools.append(message)
    digest = hashlib.sha256("\n".join([m.content or "" for m in messages]).encode()).hexdigest()
    lines = [
        f"[offline model] {_role(system or '')} on: {_first_line(first_user or '')}",
        "- Written by crewflow's offline model: deterministic, no network, no real reasoning.",
        "- Set a real model with --model or CREWFLOW_MODEL (e.g. openai/gpt-4o-mini) for "
        "real answers.",
    ]
    sources = _CONTEXT.findall(prompt)
    if sources:
        lines.append(f"- Built on the output of: {', '.join(sources)}.")
    for message in tools:
        result = " ".join((message.content or "").split())[:80]
        lines.append(f"- Tool {message.name} returned: {result}")
    lines.append(f"- Answer id: {digest[:12]}")
    return "\n".join(lines)


@functools.lru_cache(maxsize=256)
def _role(system: str) -> str:
    """The role a system prompt gives the agent (an agent's is the same every call)."""
    match = _ROLE.search(system)
    return match.group(1) if match else "an assistant"


def _task_line(messages: list[Message]) -> str:
    return _first_line(next((m.content or "" for m in messages if m.role == "user"), ""))


def _first_line(first_user: str) -> str:
    """The first line of the task's message (``first_user``), at most 100 characters."""
    stripped = first_user.strip()
    line = stripped.partition("\n")[0] if stripped else "(no task)"
    return line if len(line) <= 100 else line[:99] + "…"
