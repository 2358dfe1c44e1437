"""`Message` and `ToolCall`: one chat message, in the OpenAI chat-completions sense.

Their own module, below the LLM clients and the records (as `Usage` is): a request is made of
them, and an attempt's recorded prompts (`crewflow.store.PromptRecord`) keep them, so that the
store's commands (``crewflow show --prompts``) load nothing of the clients to read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Message", "Role", "ToolCall"]

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
