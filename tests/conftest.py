"""Shared fixtures: no test reaches the internet, needs an API key, or waits on a real backoff."""

from __future__ import annotations

import os
import tempfile

import pytest

# Before anything imports litellm: never load a .env, never fetch a price map.
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# Crews record their runs in the default store: the tests' runs (and the examples' they start)
# go to a database of this session, never to the developer's own; each test gets its own (below).
os.environ["CREWFLOW_HOME"] = tempfile.mkdtemp(prefix="crewflow-tests-")

from typing import TYPE_CHECKING

from crewflow.testing import FakeClock, OpenAIServer, reset_limits, use_clock
from tests.stores import close_default_stores

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path


@pytest.fixture(autouse=True)
def _no_real_llm_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test: real provider calls fail loudly (loopback stays allowed), and no ambient
    model or key from the developer's shell leaks in."""
    for name in ("CREWFLOW_MODEL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "CREWFLOW_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CREWFLOW_FORBID_REAL_LLM_CALLS", "1")
    return


@pytest.fixture(autouse=True)
def _own_run_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test: the default store is a database of its own, so that what one test's runs
    recorded (measured durations, cached replies) never steers another's."""
    monkeypatch.setenv("CREWFLOW_HOME", str(tmp_path / "crewflow-home"))
    yield
    close_default_stores()


@pytest.fixture(autouse=True)
def _fresh_limits() -> Iterator[None]:
    """Limits, Retry-After pauses and breakers are process-wide: each test starts clean."""
    reset_limits()
    yield
    reset_limits()


@pytest.fixture(autouse=True)
def _logging_as_found() -> Iterator[None]:
    """Every test: structlog as the test found it. A test that configures it (structlog's own
    ``capture_logs`` does, on leaving) would otherwise send every later test's log lines to
    stdout, into the JSON other tests read there."""
    import structlog

    configured = structlog.is_configured()
    yield
    if not configured and structlog.is_configured():
        structlog.reset_defaults()


@pytest.fixture
def fake_clock() -> Iterator[FakeClock]:
    """Backoff and Retry-After waits return at once; ``fake_clock.sleeps`` records them."""
    with use_clock(FakeClock()) as clock:
        yield clock


@pytest.fixture
async def server() -> AsyncIterator[OpenAIServer]:
    """The loopback OpenAI-compatible server, in the test's event loop."""
    async with OpenAIServer() as running:
        yield running
