"""The runtime: how tasks run, the same way for every process.

A process decides *what* runs and in what order; the runtime decides *how* (DESIGN.md, "the one
rule"). Two layers:

- Per task (`Run.execute` in `run.py`): context from dependencies, the prompt, attempts under the
  `RetryPolicy`, the task's timeout per attempt, the timeline record, usage, task events.
- Per LLM call (`ManagedLLM` in `calls.py`): the LLM the agent loop is handed. It retries
  retryable provider errors (429 with Retry-After, 5xx, timeouts, connection errors) with
  exponential backoff and jitter, adds up usage and emits LLM events. Provider clients are
  created with their SDK's own retries off: retrying happens here only.

Processes are written against `Run` (``graph``, ``execute``, ``ready``, ``add_task``,
``outputs``) and `crewflow.processes.Process`; nothing here knows which process called it.
Backoff waits go through the clock of `clock.py`, which tests can replace.
"""
