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
os.environ["CREWFLOW_HOME"] = SESSION_HOME = tempfile.mkdtemp(prefix="crewflow-tests-")
os.environ.pop("CREWFLOW_STORE", None)  # which would name another default store

from pathlib import Path
from typing import TYPE_CHECKING

from crewflow.testing import FakeClock, OpenAIServer, reset_limits, use_clock
from tests import canary, postgres
from tests.stores import close_default_stores

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator


CANARY = canary.Canary()


@pytest.fixture(scope="session", autouse=True)
def _secrets_canary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The whole run: a unique API key and base-URL password (`tests.canary`) appear in no log,
    event, result, error, CLI output or store file; `pytest_sessionfinish` fails the run if
    they do."""
    with CANARY.install():
        yield
    CANARY.test = "(store files)"
    for root in (Path(SESSION_HOME), tmp_path_factory.getbasetemp()):
        CANARY.check_files(root)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    CANARY.test = item.nodeid


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """A test's captured output and log, and its failure report, hold no secret."""
    CANARY.test = report.nodeid
    CANARY.check(f"{report.when} report", report.longreprtext)
    for title, content in report.sections:
        CANARY.check(title, content)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if CANARY.findings:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.section("secrets canary", red=True)
            for finding in dict.fromkeys(CANARY.findings):
                reporter.line(finding)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server made for this test run (`tests.postgres`), started by the
    first test that asks for it."""
    with postgres.server() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """The URL of a new, empty database on the test run's PostgreSQL server."""
    return postgres.fresh_database(postgres_server)


@pytest.fixture
def fake_clock() -> Iterator[FakeClock]:
    """Backoff and Retry-After waits return at once; ``fake_clock.sleeps`` records them."""
    with use_clock(FakeClock()) as clock:
        yield clock


@pytest.fixture
async def server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[OpenAIServer]:
    """The loopback OpenAI-compatible server, in the test's event loop. Clients configured from
    the environment get the session's canary key, and its base URL with the canary password."""
    async with OpenAIServer() as running:
        monkeypatch.setenv("OPENAI_API_KEY", canary.KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", canary.with_userinfo(running.base_url))
        yield running
