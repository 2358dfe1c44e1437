"""What an attempt records of its calls: each tool call's outcome (never its arguments) and what
each LLM call sent and got back, bounded in size, as valid UTF-8, without the client's key.

Whatever a model or a tool returns is data: a lone surrogate or a NUL would make SQLite refuse
the whole row (and with it the task's checkpoint), so recorded text holds U+FFFD instead; and a
megabyte tool result is recorded cut, with a note of how much was left out.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from crewflow._records import PromptRecord, ToolCallRecord
from crewflow._text import valid_text
from crewflow.exceptions import ToolError
from crewflow.llm._types import Message

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from crewflow.llm._types import LLMRequest, LLMResponse, ToolCall

__all__ = [
    "PROMPT_LIMIT",
    "TOOL_ERROR_LIMIT",
    "PromptLog",
    "cut",
    "tool_call_record",
    "valid_reply",
    "valid_text",
]

TOOL_ERROR_LIMIT = 2_048
"""Characters of a failed tool call's error kept in its record."""
PROMPT_LIMIT = 65_536
"""Characters of one LLM call's texts (its new messages and its reply) kept in its record."""
_NAME_LIMIT = 200
"""Characters of a tool's name kept (a model may call a tool by any name)."""


def valid_reply(response: LLMResponse) -> LLMResponse:
    """``response`` with its text and tool calls valid (`valid_text`): what the agent, the
    task's output, its dependants and its record all see. ``response`` itself when it was."""
    content = None if response.content is None else valid_text(response.content)
    calls = tuple(_valid_call(call) for call in response.tool_calls)
    if content is response.content and all(
        new is old for new, old in zip(calls, response.tool_calls, strict=True)
    ):
        return response
    return replace(response, content=content, tool_calls=calls)


def _valid_call(call: ToolCall) -> ToolCall:
    id_, name, arguments = valid_text(call.id), valid_text(call.name), valid_text(call.arguments)
    if id_ is call.id and name is call.name and arguments is call.arguments:
        return call
    return replace(call, id=id_, name=name, arguments=arguments)


def cut(text: str, keep: int) -> str:
    """``text`` cut to ``keep`` characters, with a note of how many were left out."""
    if len(text) <= keep:
        return text
    return f"{text[:keep]}\n[… {len(text) - keep:,} more characters not recorded]"


def tool_call_record(
    tool: str,
    duration: float,
    error: BaseException | None,
    redact: Callable[[str], str] = str,
) -> ToolCallRecord:
    """The record of a tool call that took ``duration`` seconds and ended with ``error``
    (``None``: it returned), its message passed through ``redact``. The error's type is what
    the tool raised, not the `ToolError` that carried it to the model."""
    name = cut(valid_text(tool), _NAME_LIMIT)
    if error is None:
        return ToolCallRecord(tool=name, ok=True, duration=max(0.0, duration))
    if isinstance(error, ToolError):
        cause = error.__cause__
        error_type = type(cause).__name__ if cause is not None else "ToolError"
        message = str(error)
    else:  # cancelled: the attempt timed out, or the run stopped
        error_type = type(error).__name__
        message = "cancelled before the tool returned (the attempt timed out or the run stopped)"
    return ToolCallRecord(
        tool=name,
        ok=False,
        duration=max(0.0, duration),
        error_type=error_type,
        error=redact(cut(valid_text(message), TOOL_ERROR_LIMIT)),
    )


class PromptLog:
    """The prompts of one attempt, recorded call by call (`PromptRecord`).

    Args:
        redact: Takes the client's API key out of a text (`crewflow.llm.LLM.redact`).
    """

    __slots__ = ("_sent", "records", "redact", "repaired")

    def __init__(self, redact: Callable[[str], str]) -> None:
        self.redact = redact
        self.records: list[PromptRecord] = []
        self.repaired = False
        """Whether a recorded text (a tool's result, say) held a lone surrogate or NUL."""
        self._sent: list[Message] = []
        """The previous call's messages and reply: what the next call repeats."""

    def add(
        self,
        request: LLMRequest,
        response: LLMResponse | None,
        *,
        error: str | None = None,
        cached: bool = False,
    ) -> None:
        """Record one call: the messages of ``request`` the previous call did not send, and
        ``response`` (``None`` when the call failed with ``error``, or was cancelled)."""
        messages = request.messages
        repeated = len(self._sent) if _starts_with(messages, self._sent) else 0
        reply = None
        if response is not None:
            reply = Message("assistant", response.content, response.tool_calls)
        new = messages[repeated:]
        self._sent = [*messages, reply] if reply is not None else list(messages)
        kept, left_out = self._bounded([*new, *([reply] if reply is not None else [])])
        self.records.append(
            PromptRecord.built(  # unvalidated: each value is made here, of its field's type
                repeated=repeated,
                messages=tuple(kept[: len(new)]),
                reply=kept[-1] if reply is not None else None,
                tools=tuple([spec.name for spec in request.tools]) if request.tools else (),
                output=request.output.name if request.output is not None else None,
                cached=cached,
                error=None if error is None else cut(valid_text(error), TOOL_ERROR_LIMIT),
                cut=left_out,
            )
        )

    def _bounded(self, messages: Sequence[Message]) -> tuple[list[Message], int]:
        """``messages`` with their texts within `PROMPT_LIMIT` together (the longest cut to an
        equal share of what the others leave), valid and redacted; and the characters left
        out."""
        lengths: list[int] = []
        for message in messages:
            lengths.append(len(message.content or ""))
            if message.tool_calls:
                lengths.extend([len(call.arguments) for call in message.tool_calls])
        total = sum(lengths)
        if total <= PROMPT_LIMIT:  # the usual case: nothing to cut
            return [self._kept(message, None) for message in messages], 0
        keeps = _shares(lengths, PROMPT_LIMIT)
        shares = iter(keeps)
        return [self._kept(message, shares) for message in messages], total - sum(keeps)

    def _kept(self, message: Message, shares: Iterator[int] | None) -> Message:
        """``message`` as recorded: each text cut to its share (when ``shares`` gives them, in
        the order `_bounded` counted them), valid and redacted; ``message`` itself when that
        changes nothing."""
        content, calls = message.content, message.tool_calls
        keep = None if shares is None else next(shares)
        if content is not None:
            content = self._clean(content, keep)
        if calls:
            calls = tuple(
                _call(call, self._clean(call.arguments, None if shares is None else next(shares)))
                for call in calls
            )
            if all(new is old for new, old in zip(calls, message.tool_calls, strict=True)):
                calls = message.tool_calls
        if content is not message.content or calls is not message.tool_calls:
            message = replace(message, content=content, tool_calls=calls)
        if message.name is not None or message.tool_call_id is not None:
            message = _valid_names(message)
        return message

    def _clean(self, text: str, keep: int | None) -> str:
        kept = text if keep is None else cut(text, keep)
        valid = valid_text(kept)
        if valid is not kept:
            self.repaired = True
        return self.redact(valid)


def _starts_with(messages: Sequence[Message], sent: Sequence[Message]) -> bool:
    if not sent or len(messages) < len(sent):
        return False
    return all(new is old or new == old for new, old in zip(messages, sent, strict=False))


def _shares(lengths: Sequence[int], budget: int) -> list[int]:
    """How much of each text to keep so that together they fit ``budget``: the short ones
    whole, the long ones cut to an equal share of what the short ones leave."""
    if sum(lengths) <= budget:
        return list(lengths)
    keeps = list(lengths)
    left, count = budget, len(lengths)
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        keeps[index] = min(lengths[index], left // count)
        left -= keeps[index]
        count -= 1
    return keeps


def _call(call: ToolCall, arguments: str) -> ToolCall:
    name, id_ = valid_text(call.name), valid_text(call.id)
    if arguments is call.arguments and name is call.name and id_ is call.id:
        return call
    return replace(call, id=id_, name=cut(name, _NAME_LIMIT), arguments=arguments)


def _valid_names(message: Message) -> Message:
    """``message`` with a tool result's name and call id valid text (a model chose them)."""
    name = None if message.name is None else valid_text(message.name)
    call_id = None if message.tool_call_id is None else valid_text(message.tool_call_id)
    if name is message.name and call_id is message.tool_call_id:
        return message
    return replace(message, name=name, tool_call_id=call_id)
