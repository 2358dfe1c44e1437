"""Shared fixtures: no test reaches the internet, needs an API key, or waits on a real backoff."""

from __future__ import annotations

import os

import pytest

# Before anything imports litellm: never load a .env, never fetch a price map.
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from typing import TYPE_CHECKING

from crewflow.testing import FakeClock, OpenAIServer, reset_limits, use_clock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator


@pytest.fixture(autouse=True)
def _no_real_llm_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test: real provider calls fail loudly (loopback stays allowed), and no ambient
    model or key from the developer's shell leaks in."""
    for name in ("CREWFLOW_MODEL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "CREWFLOW_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CREWFLOW_FORBID_REAL_LLM_CALLS", "1")
    return


@pytest.fixture(autouse=True)
def _fresh_limits() -> Iterator[None]:
    """Limits, Retry-After pauses and breakers are process-wide: each test starts clean."""
    reset_limits()
    yield
    reset_limits()


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
