"""``crewflow processes``: the built-in and plug-in processes, as a table that fits the terminal
or as JSON, with a broken plug-in listed rather than fatal.

The plug-ins here are entry points made by hand; ``test_plugins.py`` installs a real one.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from typing import TYPE_CHECKING, ClassVar

import pytest
from rich.text import Text
from typer.testing import CliRunner, Result

from crewflow import cli
from crewflow.processes import ENTRY_POINT_GROUP, Process
from tests.entry_points import install_entry_points
from tests.test_cli_store import loaded_modules_script

if TYPE_CHECKING:
    from pathlib import Path

    from crewflow.processes import ProcessContext

LONG_NAME = "a-rather-long-plug-in-process-name"
LONG_DESCRIPTION = (
    "Run every task twice over, compare both outputs word by word, and keep the one the judge "
    "prefers."
)


class Twice(Process):
    """Run every task twice over, compare both outputs word by word, and keep the one the
    judge prefers.

    Only the summary, up to the blank line, is the description.
    """

    name: ClassVar[str] = LONG_NAME

    async def run(self, ctx: ProcessContext) -> None:  # pragma: no cover - never run
        pass


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plug-in with a long name and description, and one that fails to load."""
    installed = [
        importlib.metadata.EntryPoint(LONG_NAME, f"{__name__}:Twice", ENTRY_POINT_GROUP),
        importlib.metadata.EntryPoint("broken", "no_such_module_xyz:Thing", ENTRY_POINT_GROUP),
    ]
    install_entry_points(monkeypatch, installed)


def invoke(*args: str, columns: int = 200, terminal: bool = False) -> Result:
    # TTY_COMPATIBLE tells rich whether stdout is a terminal (what a narrow table depends on).
    env = {"COLUMNS": str(columns), "TTY_COMPATIBLE": "1" if terminal else "0"}
    return CliRunner().invoke(cli.app, ["processes", *args], env=env)


@pytest.mark.usefixtures("plugins")
@pytest.mark.parametrize("columns", [60, 80, 120])
def test_the_table_fits_a_terminal_of_60_80_or_120_columns(columns: int) -> None:
    result = invoke(columns=columns, terminal=True)

    assert result.exit_code == 0, result.output
    lines = [Text.from_ansi(line) for line in result.stdout.splitlines()]
    assert max(line.cell_len for line in lines) <= columns
    shown = " ".join(" ".join(line.plain.split()) for line in lines)
    for name in ("sequential", "parallel", LONG_NAME, "broken", "built in", "plug-in"):
        assert name in shown
    # Wrapped descriptions keep every word.
    assert all(word in shown for word in LONG_DESCRIPTION.split())


@pytest.mark.usefixtures("plugins")
def test_piped_each_process_is_one_whole_line() -> None:
    result = invoke(columns=60)

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["process", "description", "from"]
    rows = {line.split()[0]: line for line in lines[2:]}
    # The built-in processes first, then the plug-ins by name.
    assert list(rows)[:2] == ["sequential", "parallel"]
    assert list(rows)[-2:] == [LONG_NAME, "broken"]
    assert LONG_DESCRIPTION in rows[LONG_NAME]
    assert rows[LONG_NAME].rstrip().endswith("plug-in")
    assert "Run tasks in list order, one at a time." in rows["sequential"]
    assert "failed to load no_such_module_xyz:Thing: ModuleNotFoundError" in rows["broken"]


@pytest.mark.usefixtures("plugins")
def test_json_lists_name_description_and_origin() -> None:
    result = invoke("--json")

    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    by_name = {entry["name"]: entry for entry in listed}
    assert by_name["sequential"] == {
        "name": "sequential",
        "description": "Run tasks in list order, one at a time.",
        "origin": "built in",
    }
    assert by_name[LONG_NAME]["description"] == LONG_DESCRIPTION
    builtins = [entry for entry in listed if entry["origin"] == "built in"]
    assert not [entry for entry in builtins if "failed to load" in entry["description"]]
    assert by_name["broken"]["description"].startswith("failed to load no_such_module_xyz:Thing")
    assert [entry["name"] for entry in listed][-2:] == [LONG_NAME, "broken"]


# What no process class needs: the built-in ones' modules may load specs (agent, task) to define
# their own, but the crew, the store, the optimizer and the provider SDKs are loaded by running.
HEAVY = (
    "crewflow.crew",
    "crewflow.optimizer",
    "crewflow.store",
    "httpx",
    "litellm",
    "networkx",
    "openai",
)
LOADED = loaded_modules_script(HEAVY)


@pytest.mark.slow
def test_listing_loads_the_process_classes_and_no_run_machinery(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", LOADED, "processes"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert "sequential" in done.stdout, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "exit 0 loaded []", done.stdout + done.stderr
