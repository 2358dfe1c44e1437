"""A process plug-in installed as a distribution: ``crewflow processes`` lists it, and a crew file
with ``Crew(process="reverse")`` runs under it.

``tests/reverse_plugin/`` is the plug-in's source: a module with a `Process` subclass, and a
pyproject.toml that registers it in the ``crewflow.processes`` entry-point group. pip installs
it offline into a directory of the test's own (never into the environment running the tests),
and the commands run in subprocesses with that directory on their ``PYTHONPATH``, as they would
after ``pip install crewflow-reverse``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import crewflow

PLUGIN = Path(__file__).parent / "reverse_plugin"
DESCRIPTION = "Run the crew's tasks last to first, each without the others' outputs."
CREW = """\
from crewflow import Agent, Crew, Task

writer = Agent(role="Writer", goal="Write short notes", llm="offline")
crew = Crew(
    tasks=[Task(f"Write part {n}", agent=writer, name=f"part{n}") for n in (1, 2, 3)],
    process="reverse",
)
"""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory the plug-in's distribution is installed in, built from a copy of its
    source (pip builds in the source tree)."""
    source = tmp_path_factory.mktemp("source") / "crewflow-reverse"
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path_factory.mktemp("site")
    # No index, no build isolation: nothing is fetched; hatchling (a dev dependency) builds it.
    command = [sys.executable, "-m", "pip", "install", "--target", str(target), "--no-index"]
    command += ["--no-deps", "--no-build-isolation", "--no-cache-dir", "--no-compile"]
    command += ["--disable-pip-version-check", "--quiet", str(source)]
    done = subprocess.run(
        command,
        env={**os.environ, "PIP_CONFIG_FILE": os.devnull},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return target


def run_crewflow(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m crewflow ARGS`` with the plug-in installed, on the crewflow under test."""
    tested = Path(crewflow.__file__).resolve().parent.parent
    path = os.pathsep.join(filter(None, [str(site), str(tested), os.environ.get("PYTHONPATH")]))
    # The environment keeps conftest's guards: no real LLM call, a run database of this test's.
    env = {**os.environ, "PYTHONPATH": path, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "crewflow", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_crewflow_processes_lists_the_installed_plugin_with_its_description(
    site: Path, tmp_path: Path
) -> None:
    listed = run_crewflow(site, "processes", "--json", cwd=tmp_path)
    table = run_crewflow(site, "processes", cwd=tmp_path)

    assert listed.returncode == 0, listed.stderr
    by_name = {entry["name"]: entry for entry in json.loads(listed.stdout)}
    assert by_name["reverse"] == {
        "name": "reverse",
        "description": DESCRIPTION,
        "origin": "crewflow-reverse",
    }
    assert by_name["sequential"]["origin"] == "built in"
    assert table.returncode == 0, table.stderr
    (row,) = [line for line in table.stdout.splitlines() if line.startswith("reverse ")]
    assert row.split("  ")[0] == "reverse"
    assert DESCRIPTION in row
    assert row.rstrip().endswith("crewflow-reverse")


def test_a_crew_file_runs_under_the_installed_plugin_by_name(site: Path, tmp_path: Path) -> None:
    (tmp_path / "reverse_crew.py").write_text(CREW)

    done = run_crewflow(site, "run", "reverse_crew.py", cwd=tmp_path)

    assert done.returncode == 0, done.stdout + done.stderr
    assert re.findall(r"(part\d) running", done.stderr) == ["part3", "part2", "part1"]
    assert "reverse_crew (reverse)" in done.stdout  # the result's crew (process) row
