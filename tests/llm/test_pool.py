"""The HTTP clients kept per event loop across kickoffs: shared, keyed by settings, closed with
the loop (asyncio.run, anyio.run, pytest-asyncio), by kickoff_sync and by crewflow.aclose()."""

from __future__ import annotations

import asyncio
import gc
import ssl
import sys
import textwrap
import warnings
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import crewflow
from crewflow import Agent, Crew, Task
from crewflow.llm import openai as openai_module
from crewflow.llm.openai import OpenAIChat
from crewflow.testing import OpenAIServer
from tests import canary
from tests.imports import imported_on_main_thread
from tests.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from openai import AsyncOpenAI


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[AsyncOpenAI]:
    """Every SDK client `OpenAIChat` builds, in order."""
    clients: list[AsyncOpenAI] = []
    build = OpenAIChat._new_client

    def counting(self: OpenAIChat, base_url: str) -> AsyncOpenAI:
        client = build(self, base_url)
        clients.append(client)
        return client

    monkeypatch.setattr(OpenAIChat, "_new_client", counting)
    return clients


def crew_on(base_url: str, api_key: str = canary.KEY) -> Crew:
    """A fresh two-task crew with a fresh `OpenAIChat`, as a script would build per kickoff."""
    llm = OpenAIChat("test-model", base_url=base_url, api_key=api_key)
    agent = Agent(role="Writer", goal="Write", llm=llm)
    return Crew(tasks=[Task("One", agent=agent), Task("Two", agent=agent)], store=None)


async def test_kickoffs_in_one_loop_share_one_client_and_its_connection(
    server: OpenAIServer, made: list[AsyncOpenAI]
) -> None:
    await crew_on(server.base_url).kickoff()
    await crew_on(server.base_url).kickoff()

    assert len(made) == 1
    assert not made[0].is_closed()
    assert server.count == 4
    assert server.connections == 1


async def test_two_api_keys_never_share_a_client(
    server: OpenAIServer, made: list[AsyncOpenAI]
) -> None:
    await crew_on(server.base_url, api_key="key-one").kickoff()
    await crew_on(server.base_url, api_key="key-two").kickoff()
    await crew_on(server.base_url, api_key="key-one").kickoff()

    assert len(made) == 2
    assert [client.api_key for client in made] == ["key-one", "key-two"]


@pytest.mark.parametrize(
    "change",
    [{"timeout": 5.0}, {"default_headers": {"x-team": "b"}}, {"organization": "org-b"}],
)
async def test_other_settings_get_their_own_client(
    server: OpenAIServer, made: list[AsyncOpenAI], change: dict[str, Any]
) -> None:
    settings: dict[str, Any] = {"timeout": 10.0, "default_headers": {"x-team": "a"}}
    first = OpenAIChat("test-model", base_url=server.base_url, **settings)
    second = OpenAIChat("test-model", base_url=server.base_url, **{**settings, **change})
    same = OpenAIChat("other-model", base_url=server.base_url, **settings)

    for llm in (first, second, same):
        async with llm:
            pass

    assert len(made) == 2


async def test_the_client_key_holds_no_secret(server: OpenAIServer) -> None:
    llm = OpenAIChat("test-model", base_url=canary.with_userinfo(server.base_url))
    key = llm._client_key(llm._resolve_base_url())

    assert canary.KEY not in key
    assert all(secret not in key for secret in llm._secrets())


async def test_crewflow_aclose_closes_the_loops_clients(
    server: OpenAIServer, made: list[AsyncOpenAI]
) -> None:
    await crew_on(server.base_url).kickoff()
    await crewflow.aclose()

    assert made[0].is_closed()
    await wait_until(lambda: server.open_connections == 0)
    await crewflow.aclose()  # Nothing left: harmless.

    await crew_on(server.base_url).kickoff()
    assert len(made) == 2
    assert not made[1].is_closed()


@pytest.fixture
def threaded_server() -> Iterator[OpenAIServer]:
    with OpenAIServer().in_thread() as running:
        yield running


def test_kickoff_sync_closes_the_clients_it_made(
    threaded_server: OpenAIServer, made: list[AsyncOpenAI]
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        crew_on(threaded_server.base_url).kickoff_sync()
        crew_on(threaded_server.base_url).kickoff_sync()
        gc.collect()

    # A loop per kickoff_sync, a client per loop: never one loop's client in another.
    assert len(made) == 2
    assert all(client.is_closed() for client in made)
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    anyio.run(wait_until, lambda: threaded_server.open_connections == 0)


# The script a fresh interpreter runs (-W error): a kickoff in a loop that never calls
# crewflow.aclose(); the loop's shutdown must close its client.
_SHUTDOWN_SCRIPT = """
import asyncio, gc, sys, anyio
from crewflow import Agent, Crew, Task
from crewflow.llm.openai import OpenAIChat
from crewflow.testing import OpenAIServer

made = []
build = OpenAIChat._new_client
OpenAIChat._new_client = lambda self, url: made.append(build(self, url)) or made[-1]

async def main():
    llm = OpenAIChat("test-model", base_url=server.base_url, api_key="k")
    agent = Agent(role="Writer", goal="Write", llm=llm)
    await Crew(tasks=[Task("One", agent=agent)], store=None).kickoff()
    assert not made[-1].is_closed()

with OpenAIServer().in_thread() as server:
    {run}(main)
    assert made and made[-1].is_closed(), "the loop's shutdown left the client open"
    gc.collect()
"""


@pytest.mark.parametrize("run", ["asyncio.run(main())", "anyio.run(main)"])
async def test_the_loops_shutdown_closes_its_clients(run: str) -> None:
    script = textwrap.dedent(_SHUTDOWN_SCRIPT).replace("{run}(main)", run)
    result = await anyio.run_process([sys.executable, "-W", "error", "-c", script], check=False)

    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""


async def test_an_unclosed_client_warns_nowhere_under_pytest_asyncios_loops(
    tmp_path: Any,
) -> None:
    # Two tests, each with its own loop, each leaving its client open at its end.
    test_file = tmp_path / "test_left_open.py"
    test_file.write_text(
        textwrap.dedent(
            """
            import gc
            import pytest
            from crewflow.llm import LLMRequest, Message
            from crewflow.llm.openai import OpenAIChat
            from crewflow.testing import OpenAIServer

            made = []
            build = OpenAIChat._new_client
            OpenAIChat._new_client = lambda self, url: made.append(build(self, url)) or made[-1]

            @pytest.mark.parametrize("turn", [0, 1])
            async def test_call(turn):
                gc.collect()
                assert all(client.is_closed() for client in made)
                async with OpenAIServer() as server:
                    llm = OpenAIChat("test-model", base_url=server.base_url, api_key="k")
                    await llm.complete(LLMRequest([Message("user", "hi")]))
                assert len(made) == turn + 1  # a new loop, a new client
            """
        )
    )
    result = await anyio.run_process(
        [
            *(sys.executable, "-W", "error", "-m", "pytest", "-q", "-p", "no:cacheprovider"),
            *("-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function"),
            *("-W", "error", "--rootdir", str(tmp_path)),
            str(test_file),
        ],
        check=False,
        cwd=tmp_path,
    )

    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "2 passed" in out
    assert "warning" not in out.lower()


def test_http_endpoints_build_no_ca_bundle(
    monkeypatch: pytest.MonkeyPatch, threaded_server: OpenAIServer
) -> None:
    loaded: list[str] = []
    load_verify = ssl.SSLContext.load_verify_locations
    default_certs = ssl.SSLContext.load_default_certs

    def counting_verify(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        loaded.append("verify_locations")
        load_verify(self, *args, **kwargs)

    def counting_defaults(self: ssl.SSLContext, *args: Any) -> None:
        loaded.append("default_certs")
        default_certs(self, *args)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counting_verify)
    monkeypatch.setattr(ssl.SSLContext, "load_default_certs", counting_defaults)
    openai_module._ssl_context.cache_clear()

    crew_on(threaded_server.base_url).kickoff_sync()
    assert loaded == []

    # An https:// endpoint gets the CA bundle (building a client sends nothing).
    llm = OpenAIChat("test-model", api_key="k")
    client = llm._new_client("https://example.invalid/v1")
    asyncio.run(client.close())
    assert loaded


_FIRST_OPEN = """
import asyncio
from crewflow.llm.openai import OpenAIChat


async def main():
    llm = OpenAIChat("test-model", base_url="http://127.0.0.1:9/v1", api_key="k")
    await llm.open()
    await llm.aclose()

asyncio.run(main())
"""


def test_the_first_open_imports_the_sdk_and_its_transport_off_the_event_loop(
    tmp_path: Path,
) -> None:
    watched = ("openai", "httpcore", "h11", "certifi")

    found = imported_on_main_thread(_FIRST_OPEN, watched, tmp_path)

    assert found == dict.fromkeys(watched, False)
