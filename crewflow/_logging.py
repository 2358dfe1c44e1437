"""Logging through structlog, polite to applications that never configured it.

When the application configured structlog, crewflow logs through it like any library. When it
did not, crewflow must not flood it: only warnings and errors are written, to stderr, unless
``verbose=True`` or ``CREWFLOW_LOG_LEVEL`` asks for more.

An application that never imported structlog cannot have configured it, so then crewflow does not
import it either: importing structlog imports rich (and colorama, attrs) when they are installed,
about 30 ms and 4,000 objects in a run's first kickoff. The lines are written by a small logger of
our own in structlog's console format (``timestamp [level    ] event    key=value ...``, keys
sorted), with plain tracebacks: rich's would print each frame's local variables, and those hold
prompts, tool arguments and API keys.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
import traceback
from typing import Any

LEVEL_ENV = "CREWFLOW_LOG_LEVEL"

# The characters that make structlog's console renderer quote a string value.
_QUOTED = frozenset(" \t=\r\n\"'")


def get_logger(*, verbose: bool = False, **context: Any) -> Any:
    """A logger bound to ``context`` (``run_id``, ``task``, ...): structlog's when the
    application configured it, else one that writes warnings and errors to stderr."""
    structlog = sys.modules.get("structlog")
    if structlog is not None and structlog.is_configured():
        return structlog.get_logger("crewflow").bind(**context)
    return _QuietLogger(_level(verbose), context)


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


class _QuietLogger:
    """The logger of an application that did not configure structlog: lines at or above
    ``level``, written to whatever ``sys.stderr`` is at the time (tests swap it)."""

    def __init__(self, level: int, context: dict[str, Any]) -> None:
        self._level = level
        self._context = context

    def bind(self, **context: Any) -> _QuietLogger:
        return _QuietLogger(self._level, {**self._context, **context})

    def debug(self, event: str, **fields: Any) -> None:
        self._write(logging.DEBUG, "debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._write(logging.INFO, "info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._write(logging.WARNING, "warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._write(logging.ERROR, "error", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        self._write(logging.CRITICAL, "critical", event, fields)

    def _write(self, level: int, name: str, event: str, fields: dict[str, Any]) -> None:
        if level < self._level:
            return
        error = fields.pop("exc_info", None)
        fields = {**self._context, **fields}
        stamp = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
        pairs = " ".join(f"{key}={_value(fields[key])}" for key in sorted(fields))
        line = f"{stamp} [{name:<9}] {event:<30} {pairs}".rstrip()
        if isinstance(error, BaseException):
            line += "\n" + "".join(traceback.format_exception(error)).rstrip()
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _value(value: Any) -> str:
    if isinstance(value, str) and not (_QUOTED & set(value)):
        return value
    return repr(value)
