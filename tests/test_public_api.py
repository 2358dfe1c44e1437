"""The public face: what `crewflow` exports, and that importing it stays light."""

from __future__ import annotations

import json
import subprocess
import sys
from types import ModuleType
from typing import Any

import crewflow
import crewflow.exceptions
import crewflow.llm
import crewflow.testing

HEAVY = ("openai", "litellm", "networkx", "rich", "typer", "structlog", "httpx")


def test_all_matches_what_is_exported() -> None:
    # Submodules become attributes once imported anywhere; they are not part of __all__.
    public = {
        name
        for name, value in vars(crewflow).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }
    # Every public attribute is listed; every listed name resolves (some load lazily).
    assert public <= set(crewflow.__all__)
    assert all(getattr(crewflow, name) is not None for name in crewflow.__all__)


def test_the_names_users_rely_on_are_exported() -> None:
    for name in ("Agent", "Task", "Crew", "CrewResult", "TaskOutput", "tool", "RetryPolicy"):
        assert name in crewflow.__all__
        assert getattr(crewflow, name) is not None


def test_every_public_name_has_a_docstring() -> None:
    modules = (crewflow, crewflow.llm, crewflow.exceptions, crewflow.testing)
    missing = [
        f"{module.__name__}.{name}"
        for module in modules
        for name in module.__all__
        if not name.startswith("_")
        and callable(getattr(module, name))
        and not (getattr(module, name).__doc__ or "").strip()
    ]
    assert missing == []


def test_submodule_all_lists_only_existing_names() -> None:
    for module in (crewflow.llm, crewflow.exceptions, crewflow.testing):
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"


def test_import_crewflow_loads_no_heavy_sdk() -> None:
    probe = (
        f"import sys, json, crewflow; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    assert in_fresh_interpreter(probe) == []


def test_building_a_crew_loads_no_provider_sdk() -> None:
    probe = (
        "import sys, json\n"
        "from crewflow import Agent, Crew, Task\n"
        "a = Agent(role='R', goal='G', llm='openai/gpt-4o-mini')\n"
        "b = Agent(role='S', goal='G', llm='anthropic/claude-sonnet-4')\n"
        "Crew(tasks=[Task('x', agent=a), Task('y', agent=b)])\n"
        "print(json.dumps([m for m in ('openai', 'litellm', 'httpx') if m in sys.modules]))"
    )
    assert in_fresh_interpreter(probe) == []


def test_the_events_load_with_the_first_crew_not_with_crewflow() -> None:
    # Their 29 models are a tenth of the import; a crew's hooks and health policy name them, so
    # they load when the first crew is built, or a subclass of Crew defined, and still validate.
    probe = (
        "import sys, json\n"
        "from crewflow import Agent, Crew, Task\n"
        "before = 'crewflow.events' in sys.modules\n"
        "class Mine(Crew):\n"
        "    extra: int = 1\n"
        "crew = Mine(tasks=[Task('x', agent=Agent(role='R', goal='G'))], on_alert=print,\n"
        "            health={'stall_after': 5})\n"
        "try:\n"
        "    Crew(tasks=[Task('x', agent=Agent(role='R', goal='G'))], health=3)\n"
        "except Exception as exc:\n"
        "    refused = type(exc).__name__\n"
        "print(json.dumps([before, crew.health.stall_after, refused]))"
    )
    assert in_fresh_interpreter(probe) == [False, 5.0, "ConfigurationError"]


def in_fresh_interpreter(probe: str) -> Any:
    """What ``probe`` printed (one JSON value), run in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out)
