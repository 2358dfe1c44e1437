"""How ``crewflow show RUN --prompts`` draws what each LLM call sent and got back: per attempt,
each call's messages (those it repeats from the call before are not drawn again) and its reply,
the text as recorded, wrapped to the width."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.padding import Padding
from rich.rule import Rule
from rich.text import Text

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from rich.console import Console

    from crewflow._messages import Message
    from crewflow.store import AttemptRecord, PromptRecord

_ROLE_STYLES = {"system": "dim", "user": "cyan", "assistant": "green", "tool": "magenta"}


def show_prompts(
    console: Console,
    attempts: Sequence[AttemptRecord],
    prompts: Mapping[tuple[str, int], Sequence[PromptRecord]],
) -> None:
    """Each attempt's LLM calls, in the order of ``attempts``; an attempt without recorded
    prompts says so (the crew had ``record_prompts=False``, or made no call)."""
    console.print(Text("Prompts", style="bold"))
    if not prompts:
        console.print(Text("none recorded (the crew had record_prompts=False, or made no call)"))
        return
    for attempt in attempts:
        calls = prompts.get((attempt.task, attempt.number), ())
        heading = f"{attempt.task} · attempt {attempt.number} · {attempt.agent} · {attempt.model}"
        console.print(Rule(Text(heading), align="left", style="dim"))
        if not calls:
            console.print(Text("no prompt recorded"))
        tools: tuple[str, ...] = ()
        for number, call in enumerate(calls, start=1):
            _show_call(console, number, call, tools_shown=call.tools == tools)
            tools = call.tools


def _show_call(console: Console, number: int, call: PromptRecord, *, tools_shown: bool) -> None:
    notes = [f"call {number}"]
    if call.repeated:
        plural = "s" if call.repeated != 1 else ""
        notes.append(f"after the {call.repeated} message{plural} above")
    if call.output:
        notes.append(f"answer as {call.output}")
    if call.cached:
        notes.append("from the cache")
    if call.cut:
        notes.append(f"{call.cut:,} characters not recorded")
    console.print(Text(" · ".join(notes), style="bold"))
    if call.tools and not tools_shown:  # the same tools on every call: said once
        console.print(Text(f"  tools: {', '.join(call.tools)}", style="dim"))
    for message in call.messages:
        _show_message(console, message, reply=False)
    if call.reply is not None:
        _show_message(console, call.reply, reply=True)
    if call.error is not None:
        console.print(Text.assemble("  no reply: ", (call.error, "red")))


def _show_message(console: Console, message: Message, *, reply: bool) -> None:
    label: str = message.role
    if message.role == "tool" and message.name:
        label = f"tool {message.name}"
    if reply:
        label = f"reply ({label})"
    console.print(Text(f"  {label}", style=_ROLE_STYLES.get(message.role, "")))
    if message.content:
        console.print(_indented(Text(message.content)))
    for call in message.tool_calls:
        console.print(_indented(Text(f"calls {call.name}({call.arguments})")))


def _indented(text: Text) -> Padding:
    """``text`` four columns in, wrapped to what is left of the width."""
    return Padding(text, (0, 0, 0, 4), expand=False)
