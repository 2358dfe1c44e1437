"""The attempts of one task: retries under the policy, the timeout per attempt, the fallback
agent, the timeline record, usage and task events. Used by `Run.execute` only.

An attempt that ends while a sync tool's thread it abandoned still runs is not followed by
another attempt that could call that tool, unless the tool is idempotent: the tool may still
act, and a second call beside it could act twice.
"""

from __future__ import annotations

import itertools
from contextlib import nullcontext
from typing import TYPE_CHECKING

from crewflow import events
from crewflow._records import CONTEXT_CUT, AttemptRecord, TaskRecord, TaskStatus
from crewflow._runtime import budget, guardrail
from crewflow._runtime.calls import AttemptBuilder, ManagedLLM, StreamedText
from crewflow._runtime.transcript import PromptLog, tool_call_record
from crewflow.exceptions import (
    ContextLengthExceeded,
    LLMError,
    OutputValidationError,
    TaskFailed,
    TaskTimeout,
)
from crewflow.llm._types import Usage
from crewflow.llm._windows import context_window
from crewflow.task import TaskOutput, function_name
from crewflow.tools import AbandonedCalls, watch_abandoned

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from datetime import datetime

    from crewflow._runtime.cache import ReplyCache
    from crewflow._runtime.run import Run
    from crewflow.agent import Agent, AgentAnswer, ToolObserver
    from crewflow.llm import LLM
    from crewflow.retry import RetryPolicy
    from crewflow.task import Task
    from crewflow.tools import Tool

__all__ = ["TaskAttempts"]

_NONE_ABANDONED = AbandonedCalls()
"""What an attempt by an agent without sync tools abandons: nothing, ever."""


class _Exhausted(Exception):
    """One agent's attempts are used up; carries the last error and the tool calls its last
    attempt abandoned."""

    def __init__(self, error: Exception, abandoned: AbandonedCalls) -> None:
        super().__init__(str(error))
        self.error = error
        self.abandoned = abandoned


class _Stop(Exception):
    """The task fails at once with ``error``: no other attempt, no fallback agent (its
    guardrail rejected every output, or broke)."""

    def __init__(self, error: Exception, message: str | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.message = message


class TaskAttempts:
    """Runs one task to an output: the agent's attempts, then the fallback agent's.

    With a guardrail, each output is checked within its attempt; a rejected one is asked for
    again (a guardrail round: an attempt of kind ``guardrail``, not counted by the retry
    policy) until ``guardrail_retries`` rounds are spent.

    Args:
        run: The run the task belongs to.
        task: The task.
        name: Its name in the run.
        prompt: The rendered user message.
        agent: The agent that does it (the fallback agent takes over after it).
        description: The rendered description the prompt was made of.
        expected: The rendered expected output the prompt was made of.
        context: The context outputs the prompt was made of, ``(task name, text)``; given,
            they are cut to fit each agent's context budget (a prompt made without them, by a
            process, is sent as it is).
    """

    # A guardrail's state, set on the instance only for a task that has one.
    _reasons: list[str] | None = None
    """Every reason the guardrail gave, in order (the last goes into the next request)."""
    _checked: TaskOutput | None = None
    """The output of the last attempt, as the guardrail saw it."""
    _verdict: str | None = None
    """The guardrail's reason to reject ``_checked``, ``None`` when it accepted it."""

    # Set only once a prompt is cut: a task that is not pays nothing for them.
    _fitted: budget.Fitted | None = None
    """The cut of the agent's prompt, if it was cut."""
    _announce = False
    """Whether the next attempt is the first to send the cut prompt (announce it)."""
    _whole = ""
    """The prompt before it was cut."""

    def __init__(
        self,
        run: Run,
        task: Task,
        name: str,
        prompt: str,
        agent: Agent,
        *,
        description: str = "",
        expected: str = "",
        context: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.run = run
        self.task = task
        self.name = name
        self.prompt = prompt
        self.agent = agent
        self._description = description
        self._expected = expected
        self._context = context
        self.policy: RetryPolicy = task.retry or run.retry
        self.records: list[AttemptRecord] = []
        self.usage = Usage()
        self.began = run.now()
        self.start = run.wall(self.began)
        self._numbers = itertools.count(run.attempts_before(name) + 1)
        self._streamed = StreamedText()

    async def run_to_output(self) -> TaskOutput:
        """Attempts until an output; the fallback agent takes over when the agent's are spent.

        Raises:
            TaskFailed: Every attempt of every agent failed.
        """
        primary = self.agent
        agents = (
            [primary] if self.task.fallback_agent is None else [primary, self.task.fallback_agent]
        )
        last: Exception | None = None
        for index, agent in enumerate(agents):
            if index:
                self._falling_back(agents[index - 1], agent, last)
            try:
                return await self._with(agent)
            except _Stop as stop:
                raise self._failed(agent, stop.error, stop.message) from stop.error
            except _Exhausted as exhausted:
                last = exhausted.error
                if index + 1 < len(agents) and _unsafe(exhausted.abandoned, agents[index + 1]):
                    break
        assert last is not None
        raise self._failed(agents[index], last) from last

    # -- one agent's attempts ------------------------------------------------------------------

    async def _with(self, agent: Agent) -> TaskOutput:
        run, name = self.run, self.name
        llm = await run.llm_for(agent)
        # Inline, not in _fit: most tasks' agents have no known window (a call a task saved).
        if self._fitted is not None or (
            self._context and (agent.max_context_tokens or context_window(llm.model))
        ):
            self._fit(agent, llm)
        failures = 0
        refused = False
        while True:
            number = next(self._numbers)
            if self._announce:
                self._announce_cut(agent, number)
            state = AttemptBuilder(
                name,
                number,
                agent.role,
                llm.model,
                self.policy,
                self._groups(agent),
                self._cache(number),
                prompts=PromptLog(llm.redact) if run.record_prompts else None,
                streamed=self._streamed,
            )
            began = state.began = run.now()
            began_at = run.wall(began)
            run.log.info("task started", task=name, agent=agent.role, attempt=number)
            run.publish(events.TaskStarted, task=name, agent=agent.role, attempt=number, at=began)
            # Only an agent with a sync tool can leave a thread behind.
            watching = (
                watch_abandoned(run.log, task=name, agent=agent.role, attempt=number)
                if agent.tools and any(not tool.is_async for tool in agent.tools)
                else nullcontext(_NONE_ABANDONED)
            )
            try:
                with watching as abandoned:
                    answer = await self._attempt(
                        agent, ManagedLLM(llm, run, state), state, abandoned
                    )
            except guardrail.GuardrailBroke as broke:
                self._close(state, began, began_at, broke)
                message = (
                    f"task {name!r} failed: {broke}; fix the guardrail (its errors are not retried)"
                )
                raise _Stop(broke.error, message) from broke.error
            except Exception as exc:
                self._close(state, began, began_at, exc)
                if (
                    isinstance(exc, ContextLengthExceeded)
                    and not refused
                    and not _unsafe(abandoned, agent)
                    and self._refit()
                ):
                    refused = True  # once per agent, and not one of the policy's attempts
                    self._retrying(agent, number, exc, 0.0)
                    continue
                failures += 1
                delay = None if _unsafe(abandoned, agent) else self._retry_delay(exc, failures)
                if delay is None:
                    raise _Exhausted(exc, abandoned) from exc
                self._retrying(agent, number, exc, delay)
                try:
                    await run.clock.sleep(delay)
                except BaseException:
                    self._record(agent, TaskStatus.CANCELLED)
                    raise
                continue
            except BaseException as exc:
                self._close(state, began, began_at, exc)
                self._record(agent, TaskStatus.CANCELLED)
                raise
            if self._verdict is not None:
                self._rejected(agent, state, began, began_at, number)
                continue
            self._close(state, began, began_at, None)
            return self._finished(agent, llm.model, answer, number)

    async def _attempt(
        self, agent: Agent, llm: ManagedLLM, state: AttemptBuilder, abandoned: AbandonedCalls
    ) -> AgentAnswer:
        task = self.task
        on_tool = self._tool_observer(agent, state, llm.redact)
        if task.timeout is None:
            if task.guardrail is None:  # inline: the common case pays no call of its own
                return await agent.run(
                    self.prompt, llm=llm, output_model=task.output_model, on_tool=on_tool
                )
            return await self._guarded(agent, llm, on_tool)
        import anyio

        try:
            with anyio.fail_after(task.timeout):
                return await self._answer(agent, llm, on_tool)
        except TimeoutError as exc:
            running = abandoned.running()
            raise TaskTimeout(
                f"task {self.name!r} took longer than its timeout of {task.timeout:g} s; raise "
                f"Task(timeout=...) or make the task smaller{_still_running(running)}",
                task=self.name,
                timeout=task.timeout,
                running_tools=tuple(tool.name for tool in running),
            ) from exc

    def _answer(
        self, agent: Agent, llm: ManagedLLM, on_tool: ToolObserver
    ) -> Awaitable[AgentAnswer]:
        """The agent's answer; checked by the task's guardrail, when it has one."""
        task = self.task
        if task.guardrail is None:
            return agent.run(self.prompt, llm=llm, output_model=task.output_model, on_tool=on_tool)
        return self._guarded(agent, llm, on_tool)

    async def _guarded(self, agent: Agent, llm: ManagedLLM, on_tool: ToolObserver) -> AgentAnswer:
        """The agent's answer, asked with the guardrail's last reason (if any), then checked:
        `_checked` is the output, `_verdict` why it was rejected (``None``: accepted)."""
        task = self.task
        assert task.guardrail is not None
        reasons = self._reasons
        if reasons is None:
            reasons = self._reasons = []
        prompt = guardrail.feedback(self.prompt, reasons[-1]) if reasons else self.prompt
        self._verdict = None
        answer = await agent.run(prompt, llm=llm, output_model=task.output_model, on_tool=on_tool)
        # The task's usage so far: attempts add to it as they close, so the accepted output
        # carries every attempt's.
        output = self._checked = self._output(agent, llm.model, answer)
        self._verdict = await guardrail.check(task.guardrail, output)
        return answer

    def _rejected(
        self, agent: Agent, state: AttemptBuilder, began: float, began_at: datetime, number: int
    ) -> None:
        """Close an attempt whose output the guardrail rejected; stop the task when that was
        the last round."""
        task, reason, reasons = self.task, self._verdict, self._reasons
        assert task.guardrail is not None
        assert reason is not None
        assert reasons is not None
        name = function_name(task.guardrail)
        self._close(
            state,
            began,
            began_at,
            OutputValidationError(f"guardrail {name!r} rejected the output: {reason}"),
        )
        reasons.append(reason)
        run = self.run
        run.log.warning(
            "guardrail rejected the output",
            task=self.name,
            agent=agent.role,
            attempt=number,
            guardrail=name,
            round=len(reasons),
        )
        run.publish(
            events.GuardrailFailed,
            task=self.name,
            attempt=number,
            round=len(reasons),
            reason=reason,
        )
        if len(reasons) > task.guardrail_retries:
            assert self._checked is not None
            raise _Stop(guardrail.exhausted(task.guardrail, reasons, self._checked))

    # -- the context budget --------------------------------------------------------------------

    def _fit(self, agent: Agent, llm: LLM) -> None:
        """Cut the context outputs to fit ``agent``'s context budget, if it has one (see
        `crewflow._runtime.budget`): each agent of a task has its own."""
        if self._fitted is not None:  # the previous agent's: start again from the whole prompt
            self.prompt, self._fitted, self._announce = self._whole, None, False
        context = self._context
        if not context:
            return
        window = agent.max_context_tokens or context_window(llm.model)
        if window is None:
            return
        self._cut_to(
            budget.fit_budget(
                window,
                agent,
                llm,
                self.task,
                self.prompt,
                self._description,
                self._expected,
                context,
            )
        )

    def _refit(self) -> bool:
        """After the provider refused a request as too long: cut the context outputs to half
        of what they took in it. Whether the prompt changed (another attempt is worth it)."""
        context = self._context
        if not context:
            return False
        fitted = self._fitted
        sent = sum(len(text) for _, text in context) if fitted is None else fitted.sent
        window = None if fitted is None else fitted.cut.window
        refitted = budget.fit(
            self._description, self._expected, context, sent // 2, window, "refused"
        )
        if refitted is None or refitted.prompt == self.prompt:
            return False
        self._cut_to(refitted)
        return True

    def _cut_to(self, fitted: budget.Fitted | None) -> None:
        if fitted is None:
            return
        if self._fitted is None:
            self._whole = self.prompt
        self.prompt, self._fitted, self._announce = fitted.prompt, fitted, True

    def _announce_cut(self, agent: Agent, number: int) -> None:
        """Log and announce the cut the attempt ``number`` is the first to send."""
        self._announce = False
        assert self._fitted is not None
        cut = self._fitted.cut
        self.run.log.info(
            "context cut to fit the model's window",
            task=self.name,
            agent=agent.role,
            attempt=number,
            budget=cut.budget,
            outputs=list(cut.outputs),
        )
        self.run.publish(
            events.ContextCut,
            task=self.name,
            agent=agent.role,
            attempt=number,
            window=cut.window,
            budget=cut.budget,
            reason=cut.reason,
            outputs=cut.outputs,
        )

    def _retry_delay(self, error: Exception, failures: int) -> float | None:
        """Seconds before the next attempt, or ``None`` when this agent is done.

        Provider errors were already retried per call (keeping the conversation), so they end
        the agent's attempts here rather than multiplying them.
        """
        policy = self.policy
        if isinstance(error, LLMError) or failures >= policy.max_attempts:
            return None
        if not policy.should_retry(error):
            return None
        return policy.delay(failures)

    def _cache(self, number: int) -> ReplyCache | None:
        """The reply cache for attempt ``number``: only a task's first attempt in a run reads
        it (a retry after a failure must not be served the replies that led to it)."""
        run = self.run
        wanted = self.task.cache if self.task.cache is not None else run.cache
        if not wanted or run.replies is None or number != run.attempts_before(self.name) + 1:
            return None
        return run.replies

    def _groups(self, agent: Agent) -> tuple[str, ...]:
        groups = (self.task.group, agent.group)
        return () if groups == (None, None) else tuple(g for g in groups if g)

    # -- records and events --------------------------------------------------------------------

    def _close(
        self,
        state: AttemptBuilder,
        began: float,
        began_at: datetime,
        error: BaseException | None,
    ) -> None:
        """Account an ended attempt's usage (task and run) and record it."""
        self.usage.add(state.usage)
        self.run.usage.add(state.usage)
        if error is None:
            status = TaskStatus.COMPLETED
        elif isinstance(error, Exception):
            status = TaskStatus.FAILED
        else:
            status = TaskStatus.CANCELLED
        now = self.run.now()
        record = state.finish(
            start=began_at,
            end=self.run.wall(now),
            duration=now - began,
            status=status,
            error=error,
        )
        if self._reasons is not None:
            record = self._guardrail_record(record, error)
        if self._fitted is not None:
            cut = self._fitted.cut.model_dump(mode="json")
            record = record.model_copy(update={"details": {**record.details, CONTEXT_CUT: cut}})
        self.records.append(record)

    def _guardrail_record(
        self, record: AttemptRecord, error: BaseException | None
    ) -> AttemptRecord:
        """``record`` as a guardrail's task records it: a round once an output was rejected;
        a broken guardrail's error as the guardrail raised it, named."""
        update: dict[str, object] = {}
        if self._reasons:
            update["kind"] = "guardrail"
        if isinstance(error, guardrail.GuardrailBroke):
            update["error_type"] = type(error.error).__name__
        return record.model_copy(update=update) if update else record

    def _record(self, agent: Agent, status: TaskStatus) -> None:
        now = self.run.now()
        self.run.record(
            TaskRecord.built(  # unvalidated: each value is made here, of its field's type
                task=self.name,
                agent=agent.role,
                status=status,
                kind=self.run.graph.kind(self.name),
                start=self.start,
                end=self.run.wall(now),
                duration=now - self.began,
                attempts=tuple(self.records),
            )
        )

    def _output(self, agent: Agent, model: str, answer: AgentAnswer) -> TaskOutput:
        return TaskOutput.built(  # unvalidated: each value is made here, of its field's type
            task=self.name,
            agent=agent.role,
            text=answer.text,
            data=answer.data,
            usage=self.usage,
            model=model,
        )

    def _finished(self, agent: Agent, model: str, answer: AgentAnswer, number: int) -> TaskOutput:
        run = self.run
        output = self._checked
        if output is None:
            output = self._output(agent, model, answer)
        self._record(agent, TaskStatus.COMPLETED)
        run.log.info("task finished", task=self.name, agent=agent.role, attempt=number)
        run.publish(
            events.TaskFinished,
            task=self.name,
            attempt=number,
            duration=run.now() - self.began,
            prompt_tokens=self.usage.prompt_tokens,
            completion_tokens=self.usage.completion_tokens,
        )
        return output

    def _retrying(self, agent: Agent, number: int, error: Exception, delay: float) -> None:
        run = self.run
        text = f"{type(error).__name__}: {error}"
        run.log.warning(
            "task attempt failed, retrying",
            task=self.name,
            agent=agent.role,
            attempt=number,
            error=text,
            delay=round(delay, 3),
        )
        run.publish(events.TaskRetrying, task=self.name, attempt=number, error=text, delay=delay)

    def _falling_back(self, failed: Agent, fallback: Agent, error: Exception | None) -> None:
        run = self.run
        text = f"{type(error).__name__}: {error}" if error else ""
        run.log.warning(
            "task falls back to another agent",
            task=self.name,
            agent=failed.role,
            fallback=fallback.role,
            error=text,
        )
        run.publish(
            events.TaskFallback,
            task=self.name,
            agent=failed.role,
            fallback=fallback.role,
            error=text,
        )

    def failed(self, error: Exception) -> TaskFailed:
        """The task's failure after its output, for an ``error`` that keeps the output from
        counting (its state update failed): recorded, logged and announced as any failure."""
        fallback = self.task.fallback_agent
        used = self.records[-1].agent if self.records else self.agent.role
        agent = fallback if fallback is not None and used == fallback.role else self.agent
        return self._failed(agent, error)

    def _failed(self, agent: Agent, error: Exception, message: str | None = None) -> TaskFailed:
        run = self.run
        self._record(agent, TaskStatus.FAILED)
        attempts = len(self.records)
        run.log.error(
            "task failed",
            task=self.name,
            agent=agent.role,
            attempt=attempts,
            error=f"{type(error).__name__}: {error}",
        )
        run.publish(
            events.TaskFailed,
            task=self.name,
            attempts=attempts,
            error_type=type(error).__name__,
            error=str(error),
        )
        plural = "s" if attempts > 1 else ""
        retries = sum(record.llm_retries for record in self.records)
        retried = f", {retries} provider call(s) retried" if retries else ""
        return TaskFailed(
            message
            or f"task {self.name!r} failed after {attempts} attempt{plural}{retried}: "
            f"{type(error).__name__}: {error}",
            task=self.name,
            attempts=attempts,
            cause=error,
            outputs=run.outputs,
        )

    def _tool_observer(
        self, agent: Agent, state: AttemptBuilder, redact: Callable[[str], str]
    ) -> ToolObserver:
        """Records each tool call on the attempt; a failed one is logged at WARNING with its
        traceback (the tool's; a call of a tool the agent lacks has none), and each is a
        `ToolCalled` event."""
        run, name = self.run, self.name

        def observe(tool: str, *, duration: float, error: BaseException | None) -> None:
            record = tool_call_record(tool, duration, error, redact)
            state.tool_calls.append(record)
            if isinstance(error, Exception):
                run.log.warning(
                    "tool call failed",
                    task=name,
                    agent=agent.role,
                    attempt=state.number,
                    tool=record.tool,
                    error_type=record.error_type,
                    error=record.error,
                    exc_info=error if error.__cause__ is not None else None,
                )
            if run.listening:
                run.emit(
                    events.ToolCalled(
                        run_id=run.run_id,
                        time=run.now(),
                        task=name,
                        tool=record.tool,
                        ok=record.ok,
                        duration=record.duration,
                        error_type=record.error_type,
                        error=record.error,
                    )
                )

        return observe


def _unsafe(abandoned: AbandonedCalls, agent: Agent) -> bool:
    """Whether another attempt by ``agent`` could call a tool that is not idempotent while an
    abandoned call of it still runs."""
    return any(not tool.idempotent and tool in agent.tools for tool in abandoned.running())


def _still_running(tools: tuple[Tool, ...]) -> str:
    if not tools:
        return ""
    names = ", ".join(repr(tool.name) for tool in tools)
    text = (
        f". Tool {names} was still running: its thread cannot be stopped and runs on"
        if len(tools) == 1
        else f". Tools {names} were still running: their threads cannot be stopped and run on"
    )
    if any(not tool.idempotent for tool in tools):
        text += (
            "; so that it cannot run twice at once, no other attempt that could call it is "
            "made, unless the tool is marked @tool(idempotent=True)"
        )
    return text
