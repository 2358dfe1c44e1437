"""The runtime: how tasks run, the same way for every process.

A process decides *what* runs and in what order; the runtime decides *how* (DESIGN.md, "the one
rule"). Two layers:

- Per task (`Run.execute` in `run.py`, `TaskAttempts` in `attempts.py`): a scheduling slot
  (`slots.py`: ``max_concurrency``, priority order, pause/resume, scaling), the context from
  dependencies, the prompt, attempts under the `RetryPolicy` (`crewflow.retry`), the task's
  timeout per attempt, the fallback agent, the failure policy (``on_failure``: stop, or
  continue and skip dependants), the timeline record, usage, task events.
- Per LLM call (`ManagedLLM` in `calls.py`): the LLM the agent loop is handed. It waits for the
  limits shared by every crew of the process (`crewflow.limits` declares them, `limiter.py`
  holds their state: concurrency, rpm/tpm buckets, Retry-After pauses, circuit breakers), retries
  retryable provider errors with exponential backoff and jitter, adds up usage and emits LLM
  events (token deltas when streaming). Provider clients are created with their SDK's own
  retries off: retrying happens here only.

A process sees only the run's `ProcessContext` (`context.py`; ``graph``, ``outputs``,
``inputs``, ``ready``, ``execute``, ``check_plan``, ``add_tasks``, ``ask``, ``run_ready``,
``history``, ``choose``), which forwards to the private `Run`; nothing here knows which process
called it. ``run_ready`` is the shared dependency-driven dispatcher (`dispatch.py`); the graph a
process grows is recorded as it grows, and a resumed run replays its process (`run.py`,
`recording.py`). `handle.py` is the background form of a run (``crew.start``). Waits go through
the clock of `clock.py` (the running loop's time), which tests can replace.
"""
