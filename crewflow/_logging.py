"""Logging through structlog, polite to applications that never configured it.

When the application configured structlog, crewflow logs through it like any library. When it
did not, crewflow must not flood it: only warnings and errors are written, to stderr, unless
``verbose=True`` or ``CREWFLOW_LOG_LEVEL`` asks for more. structlog is imported on first use, not
by ``import crewflow``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

LEVEL_ENV = "CREWFLOW_LOG_LEVEL"

_fallback: dict[int, Any] = {}


def get_logger(*, verbose: bool = False, **context: Any) -> Any:
    """A structlog logger bound to ``context`` (``run_id``, ``task``, ...)."""
    import structlog

    if structlog.is_configured():
        return structlog.get_logger("crewflow").bind(**context)
    level = _level(verbose)
    logger = _fallback.get(level)
    if logger is None:
        logger = structlog.wrap_logger(
            _StderrLogger(),
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                # A plain traceback: rich's would print each frame's local variables, and
                # those hold prompts, tool arguments and API keys.
                structlog.dev.ConsoleRenderer(
                    colors=False, exception_formatter=structlog.dev.plain_traceback
                ),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(level),
        )
        _fallback[level] = logger
    return logger.bind(**context)


def _level(verbose: bool) -> int:
    """WARNING by default; ``verbose`` lowers it to INFO; ``CREWFLOW_LOG_LEVEL`` (a name such as
    ``DEBUG`` or a number) sets it, though never above INFO when ``verbose`` asks for INFO."""
    default = logging.INFO if verbose else logging.WARNING
    name = os.environ.get(LEVEL_ENV, "").strip().upper()
    if not name:
        return default
    value = int(name) if name.isdigit() else logging.getLevelName(name)
    if not isinstance(value, int):
        return default
    return min(value, default) if verbose else value


class _StderrLogger:
    """Writes each rendered line to whatever ``sys.stderr`` is at the time (tests swap it)."""

    def msg(self, message: str) -> None:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg
