"""The secrets canary of the whole test run.

One API key and one base-URL password, unique to the session, reach the tests that drive real
clients (the ``server`` fixture puts them in ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL``; the
client, end-to-end and kill-and-resume tests use them as their key and URL). While the suite
runs, everything those secrets could leak into is read as it goes by: every log call of crewflow
(at any level, before the level filter), every stdlib log record, every run event, every result
and raised run error (str, repr, traceback and chained errors), every CLI output captured with
``CliRunner``, ``subprocess.run`` or ``anyio.run_process``, and each test's captured output and
failure report. At the end, every store file the tests created (databases, their journals,
reports) is read byte by byte. A secret found anywhere fails the session, naming the test and
the place.
"""

from __future__ import annotations

import logging
import os
import subprocess
import traceback
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

KEY = f"sk-canary-{uuid.uuid4().hex}"
URL_SECRET = f"canary-pw-{uuid.uuid4().hex}"
SECRETS = (KEY, URL_SECRET)
STORE_FILES = (".db", ".db-wal", ".db-shm", ".db-journal", ".html", ".jsonl")


def with_userinfo(base_url: str) -> str:
    """``base_url`` with the canary password in its userinfo."""
    parts = urlsplit(base_url)
    return urlunsplit(parts._replace(netloc=f"crew:{URL_SECRET}@{parts.netloc}"))


def exposed(error: BaseException) -> str:
    """Everything an exception shows: the formatted traceback, and the str and repr of it and
    of every error it chains (as cause, context or a ``cause`` attribute)."""
    parts = ["".join(traceback.format_exception(error))]
    pending: list[object] = [error]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        parts += [str(current), repr(current)]
        pending += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    return "\n".join(parts)


class Canary:
    """Where the secrets were found, and which test was running then."""

    def __init__(self, secrets: tuple[str, ...] = SECRETS) -> None:
        self.secrets = secrets
        self.findings: list[str] = []
        self.test = "(session)"

    def check(self, where: str, text: object) -> None:
        """Record a finding if ``text`` (str or bytes) holds a secret."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if not isinstance(text, str):
            return
        for secret in self.secrets:
            if secret in text:
                self.findings.append(f"{self.test}: {where} holds the canary {secret[:12]}...")

    def check_files(self, root: Path) -> None:
        """Read every store file under ``root``."""
        # os.walk, not rglob: another session may remove its own directories meanwhile.
        for folder, _, names in os.walk(root):
            for name in names:
                if name.endswith(STORE_FILES):
                    path = Path(folder, name)
                    try:
                        self.check(f"file {path}", path.read_bytes())
                    except OSError:
                        continue

    def install(self) -> ExitStack:
        """Watch logs, events, results, errors and CLI outputs until the stack closes."""
        stack = ExitStack()
        handler = _Handler(self)
        logging.getLogger().addHandler(handler)
        stack.callback(logging.getLogger().removeHandler, handler)
        for target, name, make in self._patches():
            original = getattr(target, name)
            setattr(target, name, make(original))
            stack.callback(setattr, target, name, original)
        return stack

    def _patches(self) -> list[tuple[Any, str, Any]]:
        import anyio
        import typer.testing

        import crewflow._runtime.cache
        import crewflow._runtime.run
        import crewflow.tools
        from crewflow.crew import Crew

        loggers = [crewflow._runtime.run, crewflow._runtime.cache, crewflow.tools]
        return [
            *[(module, "get_logger", self._logger_factory) for module in loggers],
            (crewflow._runtime.run.Run, "emit", self._emit),
            (Crew, "_finish", self._finish),
            (typer.testing.CliRunner, "invoke", self._invoke),
            (subprocess, "run", self._subprocess_run),
            (anyio, "run_process", self._run_process),
        ]

    def _logger_factory(self, original: Any) -> Any:
        def get_logger(**kwargs: Any) -> Any:
            return _ScanningLogger(self, original(**kwargs))

        return get_logger

    def _emit(self, original: Any) -> Any:
        def emit(run: Any, event: Any) -> None:
            self.check(f"event {event.kind}", repr(event))
            original(run, event)

        return emit

    def _finish(self, original: Any) -> Any:
        async def finish(crew: Any, run: Any) -> Any:
            try:
                result = await original(crew, run)
            except BaseException as error:
                self.check(f"error {type(error).__name__}", exposed(error))
                raise
            self.check("result", repr(result))
            self.check("crew", repr(crew))
            return result

        return finish

    def _invoke(self, original: Any) -> Any:
        def invoke(runner: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(runner, *args, **kwargs)
            self.check("CLI output", result.output)
            if result.exception is not None:
                self.check("CLI exception", exposed(result.exception))
            return result

        return invoke

    def _subprocess_run(self, original: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            done = original(*args, **kwargs)
            self.check("subprocess stdout", done.stdout)
            self.check("subprocess stderr", done.stderr)
            return done

        return run

    def _run_process(self, original: Any) -> Any:
        async def run_process(*args: Any, **kwargs: Any) -> Any:
            done = await original(*args, **kwargs)
            self.check("subprocess stdout", done.stdout)
            self.check("subprocess stderr", done.stderr)
            return done

        return run_process


class _Handler(logging.Handler):
    """Reads every stdlib log record that any logger lets through."""

    def __init__(self, canary: Canary) -> None:
        super().__init__(logging.DEBUG)
        self.canary = canary

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:
            text = repr((record.msg, record.args))
        self.canary.check(f"log record of {record.name}", text)


class _ScanningLogger:
    """A crewflow logger that reads each call, whatever its level, then passes it on."""

    _LEVELS = frozenset(
        "debug info warning warn error exception critical fatal msg log".split()  # noqa: SIM905
    )

    def __init__(self, canary: Canary, logger: Any) -> None:
        self._canary = canary
        self._logger = logger

    def bind(self, **context: Any) -> _ScanningLogger:
        self._canary.check("log context", repr(context))
        return _ScanningLogger(self._canary, self._logger.bind(**context))

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._logger, name)
        if name not in self._LEVELS:
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self._canary.check(f"log call {name}", repr((args, kwargs)))
            return attribute(*args, **kwargs)

        return call
