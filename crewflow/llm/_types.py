"""The provider-neutral shapes of one LLM call: messages, tool specs, requests, responses, usage.

Plain slotted dataclasses rather than pydantic models: these are built on every call, on the hot
path, and never validated from untrusted input (each client maps its SDK's objects to them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from crewflow._usage import Usage as Usage  # re-exported: every response carries one

Role = Literal["system", "user", "assistant", "tool"]
"""Who a `Message` is from."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One function call the model asked for.

    Attributes:
        id: The provider's id of the call, echoed in the tool's result message.
        name: The tool's name.
        arguments: The arguments as the JSON text the model wrote (may be invalid JSON).
    """

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message, in the OpenAI chat-completions sense.

    Attributes:
        role: ``system``, ``user``, ``assistant`` or ``tool``.
        content: The text (``None`` for an assistant turn that only calls tools).
        tool_calls: The calls of an assistant turn.
        tool_call_id: For a ``tool`` message, the id of the call it answers.
        name: For a ``tool`` message, the tool's name.
    """

    role: Role
    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None

    def to_openai(self) -> dict[str, Any]:
        """This message as an OpenAI chat-completions message dict."""
        data: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            data["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in self.tool_calls
            ]
        if self.tool_call_id is not None:
            data["tool_call_id"] = self.tool_call_id
        return data


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool offered to the model: its name, description and JSON schema of its arguments."""

    name: str
    description: str
    parameters: dict[str, Any]

    def to_openai(self) -> dict[str, Any]:
        """This tool in OpenAI's ``tools`` format."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


@dataclass(frozen=True, slots=True)
class OutputSchema:
    """A structured-output request: the answer must be JSON matching ``schema``.

    Attributes:
        name: A short identifier for the schema (the pydantic model's name).
        schema: The JSON schema.
    """

    name: str
    schema: dict[str, Any]


DeltaCallback = Callable[[str], Awaitable[None] | None]
"""Called with each piece of a streamed answer's text, as it arrives (sync or async)."""


@dataclass(slots=True)
class LLMRequest:
    """Everything one provider call needs.

    Attributes:
        messages: The conversation so far.
        tools: Tools the model may call.
        output: When set, the answer must be JSON matching this schema.
        temperature: Sampling temperature, or ``None`` for the provider's default.
        max_tokens: Cap on the answer's length, or ``None``.
        stream: Ask the provider to stream the answer; ``on_delta`` receives text pieces.
        on_delta: Called with each piece of streamed text.
        extra: Provider-specific keyword arguments, passed through.
    """

    messages: list[Message]
    tools: list[ToolSpec] = field(default_factory=list)
    output: OutputSchema | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    stream: bool = False
    on_delta: DeltaCallback | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LLMResponse:
    """What the model answered.

    Attributes:
        content: The text answer (``None`` when the model only called tools).
        tool_calls: Function calls the model asked for.
        usage: Tokens of this call (``requests`` is 1).
        model: The model string that answered.
        finish_reason: The provider's finish reason, when given.
    """

    content: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage = field(default_factory=lambda: Usage(requests=1))
    model: str = ""
    finish_reason: str | None = None


def estimate_tokens(text: str) -> int:
    """A provider-free token estimate: characters / 4, at least 1 for non-empty text."""
    return (len(text) + 3) // 4


def estimate_prompt_tokens(messages: list[Message]) -> int:
    """Estimate the prompt tokens of ``messages`` (characters / 4)."""
    chars = 0
    for message in messages:
        chars += len(message.content or "")
        for call in message.tool_calls:
            chars += len(call.name) + len(call.arguments)
    return max(1, (chars + 3) // 4)
